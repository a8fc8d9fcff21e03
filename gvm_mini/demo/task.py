"""The demo's rule task: prompts ``rule X: a b`` in families, one correct named procedure each.

What a policy must learn per family is *which* procedure to write, a skill that does not transfer
between families. Registered in :data:`gvm_mini.data.TASKS` as ``dataset: rules``; the loop reaches it
through that registry and scores it per family through ``group_key: family``.
"""

from __future__ import annotations

import random
from typing import Sequence

from ..data import Problem

__all__ = ["TASK", "RULE_PROCEDURES", "RULE_FAMILIES", "RULES_TEST_PER_FAMILY", "RULES_DATA_SEED", "rule_solution",
           "rule_pairs", "rule_problems", "rule_task"]

#: the chains task (``--task chains``, the counter-example; arguments of ``arithmetic_problems``)
TASK = dict(min_operands=2, max_operands=8, max_digits=1, ops=("+", "-"))

#: the rule task's split: held-out prompts per family and the seed of the split (also the runs' data_seed)
RULES_TEST_PER_FAMILY, RULES_DATA_SEED = 16, 1234

#: procedure name -> (value of (a, b), how the solution writes the computation)
RULE_PROCEDURES: dict[str, tuple] = {
    "add": (lambda a, b: a + b, "{a}+{b}"),
    "sub": (lambda a, b: a - b, "{a}-{b}"),
    "rsub": (lambda a, b: b - a, "{b}-{a}"),
    "inc": (lambda a, b: a + b + 1, "{a}+{b}+1"),
    "dec": (lambda a, b: a + b - 1, "{a}+{b}-1"),
    "neg": (lambda a, b: -a - b, "-{a}-{b}"),
    "dbl": (lambda a, b: 2 * a + b, "2*{a}+{b}"),
    "mul": (lambda a, b: a * b, "{a}*{b}"),
}

#: family letter -> its correct procedure (the demo's warm start decides how often each is written)
RULE_FAMILIES: dict[str, str] = {"A": "add", "B": "sub", "C": "rsub", "D": "inc", "E": "dec", "F": "neg", "G": "dbl", "H": "mul"}


def rule_solution(procedure: str, a: int, b: int) -> str:
    """The worked solution of procedure ``procedure`` on ``(a, b)``: ``"dbl: 2*7+3=17. \\boxed{17}"``."""
    fn, fmt = RULE_PROCEDURES[procedure]
    value = fn(a, b)
    return f"{procedure}: {fmt.format(a=a, b=b)}={value}. \\boxed{{{value}}}"


def rule_pairs() -> list[tuple[int, int]]:
    """Operand pairs on which the eight procedures give eight different answers: a, b in 2..9, a != b
    (sub = rsub at a = b), {a, b} != {2, 3} (mul = inc there) and (a, b) != (2, 4) (mul = dbl there).
    53 pairs; checked in tests/test_data.py."""
    return [(a, b) for a in range(2, 10) for b in range(2, 10) if a != b and {a, b} != {2, 3} and (a, b) != (2, 4)]


def rule_problems(test_per_family: int, seed: int, families: Sequence[str] | None = None) -> tuple[list[Problem], list[Problem]]:
    """(train, test) of the rule task: every family of :data:`RULE_FAMILIES` on every pair of
    :func:`rule_pairs` (53 pairs), problem ``"rule G: 7 3"``, answer the value of the family's
    procedure (``dbl``: 2*7+3 = 17). ``test_per_family`` pairs per family (drawn with ``seed``) are held out.

    Since the eight procedures disagree on every pair, a completion is correct exactly when it writes
    the family's procedure and computes it right. ``meta``: ``family``, ``procedure``, ``a``, ``b``
    and ``difficulty`` (the family's index, A = 0).
    """
    families = list(RULE_FAMILIES) if families is None else list(families)
    pairs = rule_pairs()
    if not 0 <= test_per_family < len(pairs):
        raise ValueError(f"test_per_family must be in 0..{len(pairs) - 1}, got {test_per_family}")
    unknown = [f for f in families if f not in RULE_FAMILIES]
    if unknown:
        raise ValueError(f"unknown rule families {unknown}; choose from {list(RULE_FAMILIES)}")
    rng = random.Random(seed)
    train, test = [], []
    for fam in families:
        proc = RULE_FAMILIES[fam]
        order = list(pairs)
        rng.shuffle(order)
        for j, (a, b) in enumerate(order):
            prob = Problem(
                problem=f"rule {fam}: {a} {b}", answer=str(RULE_PROCEDURES[proc][0](a, b)),
                solution=rule_solution(proc, a, b),
                meta={"source": "rules", "family": fam, "procedure": proc, "a": a, "b": b,
                      "difficulty": list(RULE_FAMILIES).index(fam)},
            )
            (test if j < test_per_family else train).append(prob)
    rng.shuffle(train)
    return train, test


def rule_task(cfg) -> tuple[list[Problem], list[Problem]]:
    """The ``dataset: rules`` loader of :data:`gvm_mini.data.TASKS`: ``cfg.test_size`` held-out prompts
    spread evenly over the families (split by ``cfg.data_seed``), the first ``cfg.train_size`` of the rest."""
    train, test = rule_problems(cfg.test_size // len(RULE_FAMILIES), seed=cfg.data_seed)
    return train[: cfg.train_size], test
