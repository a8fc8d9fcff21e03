"""Estimates of the pass rate ``p_i`` and the gradient scale ``G_i`` from pilot counts.

The paper (Algorithm 2) uses the raw pilot fraction ``p_i = k_i / N'_i`` and the mean gradient norm over
the accepted pilots, ``G_i = 0`` when none was accepted. A prompt whose few pilots all failed then gets
``p_i = 0`` and, under Proposition 1, no samples at all, although its true pass rate may be small but
positive and learnable. ``estimator: bayes`` replaces both by empirical-Bayes estimates:

* ``p_i``: the posterior mean ``(k_i + a) / (N_i + a + b)`` under a ``Beta(a, b)`` prior fitted to the
  batch's pilot counts by the **method of moments** (:func:`fit_beta_prior`, beta-binomial model);
* ``G_i`` of a prompt with no accepted pilot: the **pooled** mean gradient norm over every accepted
  pilot of the batch, ``sum_j k_j G_j / sum_j k_j`` (each accepted pilot counts once), because
  ``G_i`` is a property of the accepted rationales and the batch's are the best guess we have.

``pilot: history`` (:func:`history_lookup`, :func:`history_update`, :func:`iteration_estimates`): a
prompt seen in an earlier epoch takes its counts from the samples of its last visit (pilot and
rollouts; no new pilot, so no new gradient norms: its ``G_i`` is the one estimated then), shrunk
towards the same empirical-Bayes Beta prior; prompts never seen, or whose last visit drew fewer than
``N'`` samples, get a fresh pilot. Those earlier samples were counted in the token totals when drawn.

All functions are pure NumPy; :func:`estimate` dispatches on the name (``paper`` | ``bayes``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ESTIMATORS", "fit_beta_prior", "posterior_mean", "pooled_G", "estimate", "counts_by_prompt",
           "history_lookup", "history_update", "iteration_estimates", "ROBUST_G_STRENGTH",
           "ROBUST_FALLBACK_PRIOR", "ROBUST_MIN_PRIOR_STRENGTH", "robust_estimates", "history_accumulate"]

ESTIMATORS = ("paper", "bayes", "robust")

_RHO_MIN = 1e-6  # intra-class correlation 1/(a+b+1) is clipped to [_RHO_MIN, 1 - _RHO_MIN]


def _counts(k, n, G=None):
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if k.ndim != 1 or n.shape != k.shape:
        raise ValueError(f"k and n must be one-dimensional and of the same length, got {k.shape} and {n.shape}")
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(n))):
        raise ValueError("k and n must be finite")
    if np.any(n < 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= k_i <= n_i (accepted of drawn) for every prompt")
    if G is None:
        return k, n
    G = np.asarray(G, dtype=np.float64)
    if G.shape != k.shape:
        raise ValueError(f"G and k must have the same length, got {G.size} and {k.size}")
    if not np.all(np.isfinite(G)) or np.any(G < 0):
        raise ValueError("G must be finite and >= 0")
    return k, n, G


def fit_beta_prior(k, n) -> tuple[float, float]:
    """Method-of-moments ``Beta(a, b)`` prior for the pass rates of a batch from counts ``k_i`` of ``n_i``.

    Under the beta-binomial model ``p_i ~ Beta(a, b)``, ``k_i ~ Bin(n_i, p_i)``, the raw rates
    ``r_i = k_i / n_i`` have mean ``mu = a / (a + b)`` and
    ``E (r_i - mu)^2 = mu (1 - mu) [rho + (1 - rho) / n_i]`` with ``rho = 1 / (a + b + 1)``. Matching
    ``mu`` to the pooled rate ``sum k / sum n`` and the mean squared deviation ``s2 = mean_i (r_i - mu)^2``
    gives ``rho = (s2 / (mu (1 - mu)) - h) / (1 - h)``, ``h = mean_i 1 / n_i``, clipped to
    ``[1e-6, 1 - 1e-6]`` (under-dispersion, ``rho <= 0``: all prompts alike, a prior of strength
    ``a + b ~ 1e6``; ``rho -> 1``: every prompt all-right or all-wrong, a prior of strength ~1e-6).
    Then ``a + b = 1 / rho - 1``. Prompts with ``n_i = 0`` are ignored. If ``mu`` is 0 or 1 the prior
    is degenerate and ``(0, inf)`` / ``(inf, 0)`` is returned (every posterior mean is then ``mu``).

    >>> a, b = fit_beta_prior([0, 2, 2, 4], [4, 4, 4, 4]); round(a, 12), round(b, 12)
    (1.0, 1.0)
    """
    k, n = _counts(k, n)
    seen = n > 0
    if not seen.any():
        raise ValueError("fit_beta_prior needs at least one prompt with n_i > 0")
    k, n = k[seen], n[seen]
    mu = k.sum() / n.sum()
    if mu <= 0:
        return 0.0, float("inf")
    if mu >= 1:
        return float("inf"), 0.0
    r = k / n
    s2 = float(np.mean((r - mu) ** 2))
    h = float(np.mean(1.0 / n))
    rho = (s2 / (mu * (1 - mu)) - h) / (1 - h) if h < 1 else 1.0  # h = 1: every n_i = 1, rho not identified
    rho = float(np.clip(rho, _RHO_MIN, 1 - _RHO_MIN))
    strength = 1.0 / rho - 1.0
    return float(mu * strength), float((1 - mu) * strength)


def posterior_mean(k, n, a: float, b: float) -> np.ndarray:
    """Posterior mean ``(k_i + a) / (n_i + a + b)`` of ``p_i`` under a ``Beta(a, b)`` prior (the prior
    mean ``a / (a + b)`` where ``n_i = 0``). Degenerate priors from :func:`fit_beta_prior`
    (``a`` or ``b`` infinite) give the prior mean 0 or 1 everywhere."""
    k, n = _counts(k, n)
    if np.isinf(b):
        return np.zeros_like(k)
    if np.isinf(a):
        return np.ones_like(k)
    if a < 0 or b < 0 or a + b <= 0:
        raise ValueError(f"need a, b >= 0 and a + b > 0, got a={a}, b={b}")
    return (k + a) / (n + a + b)


def pooled_G(k, G) -> float:
    """Mean gradient norm over every accepted pilot of the batch: ``sum_i k_i G_i / sum_i k_i`` (``G_i``
    is the mean over prompt ``i``'s ``k_i`` accepted pilots). 0 if no pilot was accepted."""
    k = np.asarray(k, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    tot = k.sum()
    return float(k @ G / tot) if tot > 0 else 0.0


def estimate(k, n, G, *, estimator: str = "paper") -> tuple[np.ndarray, np.ndarray]:
    """``(p_hat, G_hat)`` from pilot counts (``k_i`` accepted of ``n_i``) and the per-prompt mean gradient
    norms ``G_i`` over the accepted pilots (0 where ``k_i = 0``).

    * ``paper`` (Algorithm 2, the default): ``p_i = k_i / n_i`` (0 where ``n_i = 0``), ``G`` unchanged.
    * ``robust``: :func:`robust_estimates` (per-prompt Beta posterior, ``G`` shrunk to the pool).
    * ``bayes``: ``p_i`` = :func:`posterior_mean` under :func:`fit_beta_prior`; prompts with
      ``k_i = 0`` get ``G_i`` = :func:`pooled_G`. Their Proposition-1 weight is then small but
      positive (it reflects the posterior's uncertainty instead of being zero).

    Worked example (``bayes``): counts 0/4, 2/4, 2/4, 4/4 give ``mu = 1/2``, ``s2 = 1/8``, ``h = 1/4``,
    ``rho = (1/2 - 1/4) / (3/4) = 1/3``, so ``a + b = 2``, ``a = b = 1`` and ``p = (1/6, 1/2, 1/2, 5/6)``:
    the all-wrong prompt keeps ``p = 1/6`` instead of 0 and gets the pooled ``G``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "robust":
        return robust_estimates(k, n, G)
    k, n, G = _counts(k, n, G)
    if estimator == "paper":
        return np.where(n > 0, k / np.maximum(n, 1), 0.0), G.copy()
    if not (n > 0).any():
        return np.zeros_like(k), G.copy()
    a, b = fit_beta_prior(k, n)
    p = posterior_mean(k, n, a, b)
    G_hat = np.where(k > 0, G, pooled_G(k, G))
    return p, G_hat


# ----------------------------------------------------------------------------------------------
# pilot: history — estimates from a prompt's samples in an earlier epoch (no pilot for it)
# ----------------------------------------------------------------------------------------------


def counts_by_prompt(prompt_index, accepted, lengths, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt ``0..m-1``: accepted samples ``k``, samples ``n`` and generated tokens ``tok``."""
    idx = np.asarray(prompt_index, dtype=np.int64)
    acc = np.asarray(accepted, dtype=np.float64)
    L = np.asarray(lengths, dtype=np.float64)
    return (np.bincount(idx, weights=acc, minlength=m)[:m], np.bincount(idx, minlength=m)[:m].astype(np.float64),
            np.bincount(idx, weights=L, minlength=m)[:m])


def history_lookup(history: dict, prompt_ids, min_samples: int, *, with_G_count: bool = False):
    """``(known, k, n, tok, G)`` for the prompts ``prompt_ids`` (training-set ids) from ``history``
    (``{str(id): {"k", "n", "tok", "G", "it"}}``, the counts of each prompt's last visit). A prompt is
    *known* if its last visit drew at least ``min_samples`` samples (``num_pilot``: as much evidence as
    a pilot); the others (never seen, or dropped with ``n_i = 0`` last time) get a fresh pilot, so a
    prompt cannot starve for ever on a stale record.

    ``with_G_count=True`` appends ``gn``: how many accepted pilots measured each known prompt's stored
    ``G`` (the ``"gn"`` field :func:`history_accumulate` writes; 0 for unknown prompts), the weight
    :func:`robust_estimates` gives that ``G``."""
    ids = [str(int(i)) for i in prompt_ids]
    m = len(ids)
    known = np.zeros(m, dtype=bool)
    k, n, tok, G, gn = (np.zeros(m) for _ in range(5))
    for j, key in enumerate(ids):
        rec = history.get(key)
        if rec is not None and rec["n"] >= max(min_samples, 1):
            known[j] = True
            k[j], n[j], tok[j], G[j] = rec["k"], rec["n"], rec["tok"], rec["G"]
            gn[j] = rec.get("gn", 0)
    return (known, k, n, tok, G, gn) if with_G_count else (known, k, n, tok, G)


def history_update(history: dict, prompt_ids, k, n, tok, G, iteration: int) -> None:
    """Replace each prompt's record by the counts of this visit (pilot and rollout samples drawn for
    it in this iteration; older visits are dropped because the policy has moved). ``G`` is the raw
    mean gradient norm this visit's estimate used (0 if it had no accepted pilot). Plain JSON types."""
    for j, i in enumerate(prompt_ids):
        history[str(int(i))] = {"k": int(k[j]), "n": int(n[j]), "tok": int(tok[j]), "G": float(G[j]),
                                "it": int(iteration)}


def iteration_estimates(k, n, G, known, *, estimator: str = "paper", G_count=None) -> tuple[np.ndarray, np.ndarray]:
    """``(p_hat, G_hat)`` of one iteration whose counts come from fresh pilots (``known`` False) or from
    the history (``known`` True). Fresh prompts: :func:`estimate` with ``estimator``. Known prompts
    (``pilot: history``) are always shrunk: ``p_i`` is the posterior mean under the empirical-Bayes
    ``Beta(a, b)`` prior that :func:`fit_beta_prior` fits to *all* the iteration's counts (so a prompt
    that failed its last ``n_i`` attempts keeps a small positive ``p_i``), and a known prompt with
    accepted samples but ``G_i = 0`` (its last pilot had none accepted, its rollouts did) gets the
    pooled ``G`` of the batch. With ``known`` all False this is exactly :func:`estimate`.
    ``robust`` treats every prompt alike: :func:`robust_estimates` on the counts, whatever their
    source, with ``G_count`` (how many accepted pilots measured each ``G_i``) as ``G``'s weight."""
    if estimator == "robust":
        return robust_estimates(k, n, G, G_count=G_count)
    k, n, G = _counts(k, n, G)
    known = np.asarray(known, dtype=bool)
    p, Gh = estimate(k, n, G, estimator=estimator)
    if known.any():
        a, b = fit_beta_prior(k, n)
        p[known] = posterior_mean(k[known], n[known], a, b)
        pool = pooled_G(k * (G > 0), G)
        Gh[known & (G == 0) & (k > 0)] = pool
    return p, Gh


# ----------------------------------------------------------------------------------------------
# robust estimates for the gvm_robust rule (theory/gvm_robust.md §3)
# ----------------------------------------------------------------------------------------------

ROBUST_G_STRENGTH = 1.0
"""Default pseudo-count ``kappa`` of :func:`robust_estimates`' shrinkage of ``G_i`` towards the pool:
the pooled mean counts as ``kappa`` extra samples. A tuning default, not a derived value."""

ROBUST_FALLBACK_PRIOR = (0.5, 0.5)
"""Prior of :func:`robust_estimates` when the method of moments has nothing to fit (every sample of
the batch accepted, or none, or no samples at all): the Jeffreys ``Beta(1/2, 1/2)``."""

ROBUST_MIN_PRIOR_STRENGTH = 1.0
"""Least ``a + b`` of :func:`robust_estimates`' fitted prior (the Jeffreys prior's strength, one
pseudo-observation). A bimodal batch (every prompt all-right or all-wrong) fits ``rho -> 1`` and
``a + b -> 0``, a prior that puts its mass on 0 and 1 and a posterior of ``p ~ 1e-7`` after 0/8:
the point mass the paper's raw fraction gives. The fit's mean is kept and its strength raised to this."""


def robust_estimates(
    k, n, G, *, G_count=None, shrink_p: bool = True, pool_G: bool = True,
    G_strength: float = ROBUST_G_STRENGTH, prior=None, fallback_prior=ROBUST_FALLBACK_PRIOR,
    min_prior_strength: float = ROBUST_MIN_PRIOR_STRENGTH,
) -> tuple[np.ndarray, np.ndarray]:
    """``(p_hat, G_hat)`` for :func:`gvm_mini.allocation.gvm_robust` from everything seen so far.

    Inputs, per prompt ``i``: ``k_i`` accepted of ``n_i`` samples, counting **all** its samples so far
    (pilot and the training samples of earlier visits, e.g. from :func:`history_accumulate`); ``G_i``
    the raw mean gradient norm over the ``c_i`` accepted *pilots* it was measured on (``G_count``;
    ``G_i`` is ignored where ``c_i = 0``). ``G_count`` defaults to ``k``, right only when the counts
    are one fresh pilot; with a history (``k`` summing training samples too) pass the ``"gn"`` of
    :func:`history_accumulate`, or a prompt with accepted training samples but no accepted pilot
    would carry ``G = 0`` with weight ``k`` and be pulled towards 0.

    * ``p_i`` (``shrink_p=True``): the Beta-binomial posterior mean

          p_i = (k_i + a) / (n_i + a + b)

      with ``(a, b)`` = :func:`fit_beta_prior` (method of moments across the prompts), its strength
      ``a + b`` raised to at least ``min_prior_strength`` (:data:`ROBUST_MIN_PRIOR_STRENGTH`, mean
      kept), or ``prior`` if given. If the batch gives no usable fit (no sample, or every sample
      accepted, or none) ``fallback_prior`` (Jeffreys ``Beta(1/2, 1/2)``) is used. So
      ``p_i >= a / (n_i + a + b)`` is bounded away from 0 (and from 1) by a prior worth at least one
      observation: a prompt with 0/8 in a bimodal batch keeps ``p ~ 1/18``, not ``1e-7``.
      ``shrink_p=False`` (ablation): the raw ``k_i / n_i``, which can be 0 or 1; prompts with
      ``n_i = 0`` get the pooled rate ``sum k / sum n``.
    * ``G_i`` (``pool_G=True``): shrinkage towards the pool ``Gbar`` = :func:`pooled_G` (weights ``c``)

          G_i = (c_i G_i + kappa Gbar) / (c_i + kappa),      kappa = G_strength >= 0

      ``kappa = 0`` keeps the raw ``G_i`` where ``c_i > 0`` and gives ``Gbar`` where ``c_i = 0`` (the
      ``bayes`` estimator of :func:`estimate`); ``kappa -> inf`` gives every prompt ``Gbar``.
      ``pool_G=False`` (ablation): the raw ``G_i``, 0 where ``c_i = 0``.

    Worked examples: ``k = (0, 0, 8, 8)`` of ``n = 8`` each (bimodal) fits ``rho -> 1``; the prior is
    raised to ``Beta(1/2, 1/2)`` and ``p = (1/18, 1/18, 17/18, 17/18)``. ``k = (0, 2, 4)``,
    ``n = (4, 4, 4)`` with ``prior=(1, 1)`` give
    ``p = (1/6, 1/2, 5/6)``; ``G = (0, 2, 1)``, ``c = k``, ``kappa = 1`` give ``Gbar = 8/6 = 4/3``
    and ``G = (4/3, 16/9, 16/15)``.

    Bad input raises ``ValueError`` naming the argument.
    """
    k, n, G = _counts(k, n, G)
    if G_count is None:
        c = k.copy()
    else:
        c = np.asarray(G_count, dtype=np.float64)
        if c.shape != k.shape:
            raise ValueError(f"G_count and k must have the same length, got {c.size} and {k.size}")
        if not np.all(np.isfinite(c)) or np.any(c < 0):
            raise ValueError("G_count must be finite and >= 0")
    if not np.isfinite(G_strength) or G_strength < 0:
        raise ValueError(f"G_strength must be a finite number >= 0, got {G_strength!r}")
    if not np.isfinite(min_prior_strength) or min_prior_strength < 0:
        raise ValueError(f"min_prior_strength must be a finite number >= 0, got {min_prior_strength!r}")

    def _check_prior(name, ab):
        try:
            a, b = (float(v) for v in ab)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a pair (a, b) of numbers, got {ab!r}") from None
        if not (np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0):
            raise ValueError(f"{name} must have finite a > 0 and b > 0, got {ab!r}")
        return a, b

    fa, fb = _check_prior("fallback_prior", fallback_prior)
    if shrink_p:
        if prior is not None:
            a, b = _check_prior("prior", prior)
        elif (n > 0).any():
            a, b = fit_beta_prior(k, n)
            if not (np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0):
                a, b = fa, fb
            elif a + b < min_prior_strength:
                a, b = (v * min_prior_strength / (a + b) for v in (a, b))
        else:
            a, b = fa, fb
        p = posterior_mean(k, n, a, b)
    else:
        tot = n.sum()
        p = np.where(n > 0, k / np.maximum(n, 1), k.sum() / tot if tot > 0 else 0.0)

    if pool_G:
        Gbar = pooled_G(c, G)
        if G_strength == 0:
            G_hat = np.where(c > 0, G, Gbar)
        else:
            G_hat = (c * G + G_strength * Gbar) / (c + G_strength)
    else:
        G_hat = np.where(c > 0, G, 0.0)
    return p, G_hat


def history_accumulate(history: dict, prompt_ids, k, n, tok, G, iteration: int, *, G_count) -> None:
    """Like :func:`history_update`, but **adds** this visit to each prompt's record instead of replacing
    it, so that :func:`robust_estimates` sees every sample drawn for the prompt so far: ``k``, ``n``,
    ``tok`` are summed over visits (pilot and training samples).

    ``G`` is evidence of another kind: the mean gradient norm over the accepted *pilots* of this
    visit, ``G_count`` of them (0 for a prompt whose estimate came from the history, which drew no
    pilot and so adds no new ``G``, and for one with no accepted pilot). The stored ``G`` is the
    ``G_count``-weighted mean over visits and ``"gn"`` its weight (:func:`history_lookup` hands it
    back for :func:`robust_estimates`); a visit with ``G_count = 0`` leaves both unchanged. Plain
    JSON types.

    >>> h = {}; history_accumulate(h, [7, 8], [3, 4], [12, 12], [120, 120], [0.0, 2.0], 0, G_count=[0, 2])
    >>> h["7"]["G"], h["7"]["gn"], h["8"]["G"], h["8"]["gn"]
    (0.0, 0, 2.0, 2)
    """
    k = np.asarray(k, dtype=np.float64)
    c = np.asarray(G_count, dtype=np.float64)
    if c.shape != k.shape or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"G_count must be finite, >= 0 and as long as k ({k.size}), got {G_count!r}")
    for j, i in enumerate(prompt_ids):
        key = str(int(i))
        old = history.get(key, {"k": 0, "n": 0, "tok": 0, "G": 0.0, "gn": 0})
        gn_old = float(old.get("gn", 0))
        gn = gn_old + float(c[j])
        g = (gn_old * float(old["G"]) + float(c[j]) * float(G[j])) / gn if gn > 0 else float(old["G"])
        history[key] = {"k": int(old["k"] + k[j]), "n": int(old["n"] + n[j]), "tok": int(old["tok"] + tok[j]),
                        "G": float(g), "gn": int(round(gn)), "it": int(iteration)}
