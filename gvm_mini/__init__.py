"""gvm-mini: a small, single-GPU reference implementation of GVM-RAFT (arXiv 2505.02391).

Modules (one concept each): ``allocation`` (Proposition 1), ``theory`` (Theorems 1-3),
``synthetic`` (exact log-linear CoT models), ``data``, ``rewards``, ``models``, ``rollout``,
``losses``, ``gradnorm``, ``em`` (the EM loop), ``evaluate``, ``config``, ``cli``.
Heavy modules are not imported here, so ``import gvm_mini`` stays cheap.
"""

__version__ = "0.1.0"
