"""Per-prompt sample budgets: Proposition 1 of arXiv 2505.02391 and the baselines it is compared with.

The E-step draws ``n_i`` responses for prompt ``i`` and keeps the accepted ones. The variance of the
Lemma-1 gradient estimator is bounded by ``sum_i G_i^2 / (p_i n_i)``; Eq. 7 regularises each term by
``1 / (1 + alpha / p_i^beta)`` so that prompts that are (almost) never solved do not swallow the budget.
Minimising Eq. 7 subject to ``sum_i n_i = N`` by a Lagrange multiplier gives Proposition 1::

    n_i = N * w_i / sum_l w_l,        w_i = G_i / sqrt(p_i + alpha * p_i**(1 - beta))

Integer budgets follow the official code (``em/stage_2_calc_sample_size.py``): weight 0 where
``p_i == 0`` or ``G_i == 0``, then largest-remainder rounding so that the counts sum to ``N`` exactly.

Every rule here has the call shape ``rule(p, G, budget, *, min_per_prompt=0, max_per_prompt=None,
**kw) -> np.ndarray[int]`` so that experiments can swap them (see :data:`RULES`).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

__all__ = [
    "AllocationFallbackWarning",
    "allocation_weights",
    "continuous_allocation",
    "allocate",
    "variance_objective",
    "expected_accepted",
    "uniform",
    "acceptance_only",
    "reward_variance",
    "filter_extremes",
    "RULES",
    "get_rule",
]


class AllocationFallbackWarning(UserWarning):
    """Every weight was zero (no prompt had an accepted pilot), so the budget was spread uniformly."""


# ----------------------------------------------------------------------------------------------
# input checks: one clear ValueError naming the argument, before any arithmetic
# ----------------------------------------------------------------------------------------------


def _vector(name: str, x, *, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of numbers ({e})") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{name} must be finite; {name}[{bad}] = {a[bad]}")
    if lo is not None and np.any(a < lo):
        bad = int(np.flatnonzero(a < lo)[0])
        raise ValueError(f"{name} must be >= {lo}; {name}[{bad}] = {a[bad]}")
    if hi is not None and np.any(a > hi):
        bad = int(np.flatnonzero(a > hi)[0])
        raise ValueError(f"{name} must be <= {hi}; {name}[{bad}] = {a[bad]}")
    return a


def _p_and_G(p, G) -> tuple[np.ndarray, np.ndarray]:
    p = _vector("p", p, lo=0.0, hi=1.0)
    G = _vector("G", G, lo=0.0)
    if p.shape != G.shape:
        raise ValueError(f"p and G must have the same length, got {p.size} and {G.size}")
    return p, G


def _alpha_beta(alpha, beta) -> tuple[float, float]:
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if not np.isfinite(beta) or beta < 1:
        raise ValueError(
            f"beta must be a finite number >= 1 (the paper uses beta >= 2), got {beta!r}"
        )
    return float(alpha), float(beta)


def _int_arg(name: str, v, *, lo: int = 0) -> int:
    if isinstance(v, bool) or not float(v).is_integer():
        raise ValueError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def _bounds(m: int, budget, min_per_prompt, max_per_prompt) -> tuple[int, int, int]:
    budget = _int_arg("budget", budget)
    lo = _int_arg("min_per_prompt", min_per_prompt)
    hi = budget if max_per_prompt is None else _int_arg("max_per_prompt", max_per_prompt)
    if hi < lo:
        raise ValueError(f"max_per_prompt ({hi}) must be >= min_per_prompt ({lo})")
    if m == 0:
        if budget != 0:
            raise ValueError(f"budget must be 0 when there are no prompts, got {budget}")
        return budget, lo, hi
    if lo * m > budget:
        raise ValueError(
            f"min_per_prompt={lo} cannot be met: {m} prompts need {lo * m} samples but budget={budget}"
        )
    if hi * m < budget:
        raise ValueError(
            f"max_per_prompt={hi} cannot be met: {m} prompts hold at most {hi * m} samples "
            f"but budget={budget}"
        )
    return budget, lo, hi


# ----------------------------------------------------------------------------------------------
# Proposition 1
# ----------------------------------------------------------------------------------------------


def allocation_weights(p, G, *, alpha: float = 1e-3, beta: float = 2.0) -> np.ndarray:
    """Unnormalised Proposition-1 weights ``w_i = G_i / sqrt(p_i + alpha * p_i**(1 - beta))``.

    ``p_i (1 + alpha / p_i^beta) = p_i + alpha p_i^(1-beta)`` is the Eq. 7 denominator, so
    ``n_i ∝ w_i`` minimises Eq. 7. ``w_i = 0`` where ``p_i == 0`` or ``G_i == 0`` (official code).
    """
    p, G = _p_and_G(p, G)
    alpha, beta = _alpha_beta(alpha, beta)
    w = np.zeros_like(p)
    ok = (p > 0) & (G > 0)
    with np.errstate(over="ignore"):  # p**(1-beta) -> inf for tiny p gives the limit w -> 0
        w[ok] = G[ok] / np.sqrt(p[ok] + alpha * p[ok] ** (1.0 - beta))
    return w


def _water_fill(w: np.ndarray, budget: float, lo: float, hi: float) -> np.ndarray:
    """Real ``n`` with ``n_i = clip(lam * w_i, lo, hi)`` and ``sum(n) = budget`` (KKT of Eq. 7 with
    box constraints). Prompts with ``w_i = 0`` sit at ``lo``; if the weighted prompts are all full
    (at ``hi``), the rest is spread evenly over the zero-weight prompts."""
    m = w.size
    n = np.full(m, lo, dtype=np.float64)
    pos = w > 0
    if not pos.any():
        return _even_fill(m, budget, lo, hi)
    cap = hi * pos.sum() + lo * (~pos).sum()
    if cap <= budget:  # weighted prompts saturate: give them hi, spread the rest over the others
        n[pos] = hi
        if (~pos).any():
            n[~pos] = _even_fill(int((~pos).sum()), budget - hi * pos.sum(), lo, hi)
        return n
    wp = w[pos]
    target = budget - lo * (~pos).sum()
    # f(lam) = sum clip(lam * w, lo, hi) is continuous, piecewise linear and non-decreasing.
    a, b = 0.0, 1.0
    while np.clip(b * wp, lo, hi).sum() < target:
        b *= 2.0
    for _ in range(200):
        mid = 0.5 * (a + b)
        if np.clip(mid * wp, lo, hi).sum() < target:
            a = mid
        else:
            b = mid
    x = np.clip(b * wp, lo, hi)
    free = (x > lo) & (x < hi)
    if free.any():  # solve the linear piece exactly on the free set
        lam = (target - x[~free].sum()) / wp[free].sum()
        x[free] = lam * wp[free]
    n[pos] = x
    return n


def _even_fill(m: int, budget: float, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.full(m, budget / m if m else 0.0), lo, hi)


def _round_preserving_sum(x: np.ndarray, budget: int) -> np.ndarray:
    """Largest-remainder (Hamilton) rounding: floor, then +1 to the largest fractional parts (ties
    to the lower index). Equals the official ``float_to_int_preserve_sum`` up to tie-breaking, keeps
    every count within one sample of ``x`` and inside integer bounds that ``x`` respects."""
    base = np.floor(x + 1e-9).astype(np.int64)
    short = int(budget - base.sum())
    if short > 0:
        frac = x - base
        order = np.lexsort((np.arange(x.size), -frac))
        base[order[:short]] += 1
    elif short < 0:  # only possible from float error; take from the smallest fractional parts
        frac = x - base
        order = np.lexsort((np.arange(x.size), frac))
        base[order[: -short]] -= 1
    return base


def continuous_allocation(
    p, G, budget, *, alpha: float = 1e-3, beta: float = 2.0, min_per_prompt=0, max_per_prompt=None
) -> np.ndarray:
    """The real-valued Proposition-1 allocation ``N w_i / sum_l w_l`` (Eq. 7's minimiser), with
    optional box constraints handled by water-filling. Uniform when every weight is zero."""
    w = allocation_weights(p, G, alpha=alpha, beta=beta)
    budget, lo, hi = _bounds(w.size, budget, min_per_prompt, max_per_prompt)
    if w.size == 0:
        return np.zeros(0)
    return _water_fill(w, float(budget), float(lo), float(hi))


def allocate(
    p, G, budget, *, alpha: float = 1e-3, beta: float = 2.0, min_per_prompt=0, max_per_prompt=None
) -> np.ndarray:
    """Integer Proposition-1 allocation (GVM, Algorithm 2) that sums to ``budget`` exactly.

    ``n_i ≈ budget * w_i / sum_l w_l`` with ``w_i`` from :func:`allocation_weights` (Prop. 1),
    clamped to ``[min_per_prompt, max_per_prompt]`` by water-filling and rounded by largest
    remainder. Prompts with ``p_i == 0`` or ``G_i == 0`` get ``min_per_prompt`` (0 by default: they
    are dropped this iteration, as in the official code). If every weight is zero the budget is
    spread uniformly and an :class:`AllocationFallbackWarning` is issued.

    >>> allocate([0.5, 0.125, 0, 1], [1, 1, 1, 1], 16).tolist()
    [4, 9, 0, 3]
    """
    w = allocation_weights(p, G, alpha=alpha, beta=beta)
    budget, lo, hi = _bounds(w.size, budget, min_per_prompt, max_per_prompt)
    if w.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not (w > 0).any():
        warnings.warn(
            "every allocation weight is zero (no prompt has p_i > 0 and G_i > 0); "
            "spreading the budget uniformly",
            AllocationFallbackWarning,
            stacklevel=2,
        )
    x = _water_fill(w, float(budget), float(lo), float(hi))
    return _round_preserving_sum(x, budget)


def variance_objective(n, p, G, *, alpha: float = 1e-3, beta: float = 2.0) -> float:
    """Eq. 7: ``sum_i G_i^2 / (p_i n_i) * 1 / (1 + alpha / p_i^beta)``.

    With ``alpha = 0`` this is the Lemma-1 variance bound ``sum_i G_i^2 / (p_i n_i)``. Terms with
    ``G_i = 0`` are 0; terms with ``p_i = 0`` are 0 when ``alpha > 0`` (their limit) and ``inf``
    when ``alpha = 0``; a term with positive weight and ``n_i = 0`` is ``inf``.
    """
    p, G = _p_and_G(p, G)
    n = _vector("n", n, lo=0.0)
    if n.shape != p.shape:
        raise ValueError(f"n and p must have the same length, got {n.size} and {p.size}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not np.isfinite(beta) or beta < 1:
        raise ValueError(f"beta must be a finite number >= 1, got {beta!r}")
    total = 0.0
    for ni, pi, gi in zip(n, p, G):
        if gi == 0:
            continue
        if pi == 0:
            if alpha > 0:
                continue
            return float("inf")
        if ni == 0:
            return float("inf")
        total += gi * gi / (pi * ni) / (1.0 + alpha / pi**beta)
    return float(total)


def expected_accepted(n, p) -> float:
    """Expected number of accepted samples ``sum_i n_i p_i`` (the quantity Remark 1 bounds)."""
    n = _vector("n", n, lo=0.0)
    p = _vector("p", p, lo=0.0, hi=1.0)
    if n.shape != p.shape:
        raise ValueError(f"n and p must have the same length, got {n.size} and {p.size}")
    return float(n @ p)


# ----------------------------------------------------------------------------------------------
# baselines with the same call shape
# ----------------------------------------------------------------------------------------------


def _from_weights(w: np.ndarray, budget, min_per_prompt, max_per_prompt) -> np.ndarray:
    budget, lo, hi = _bounds(w.size, budget, min_per_prompt, max_per_prompt)
    if w.size == 0:
        return np.zeros(0, dtype=np.int64)
    return _round_preserving_sum(_water_fill(w, float(budget), float(lo), float(hi)), budget)


def uniform(p, G, budget, *, min_per_prompt=0, max_per_prompt=None, **_) -> np.ndarray:
    """The vanilla RAFT / RAFT++ / GRPO budget: ``budget / m`` per prompt (the remainder goes to the
    lowest indices). ``p`` and ``G`` are only checked, not used."""
    p, _G = _p_and_G(p, G)
    return _from_weights(np.ones_like(p), budget, min_per_prompt, max_per_prompt)


def acceptance_only(
    p, G, budget, *, alpha: float = 1e-3, beta: float = 2.0, min_per_prompt=0, max_per_prompt=None
) -> np.ndarray:
    """Proposition 1 with ``G_i`` ignored (every ``G_i = 1``): ``n_i ∝ 1/sqrt(p_i + alpha p_i^(1-beta))``.
    Isolates how much of GVM comes from the acceptance rate alone."""
    p, G = _p_and_G(p, G)
    return allocate(
        p, np.ones_like(p), budget, alpha=alpha, beta=beta,
        min_per_prompt=min_per_prompt, max_per_prompt=max_per_prompt,
    )


def reward_variance(p, G, budget, *, min_per_prompt=0, max_per_prompt=None, **_) -> np.ndarray:
    """``n_i ∝ p_i (1 - p_i)``, the variance of a Bernoulli(p_i) reward: spend where a group's
    rewards disagree most (the signal GRPO's advantage needs). All-correct and all-wrong prompts get
    ``min_per_prompt``; uniform (with a warning) if every prompt is all-correct or all-wrong."""
    p, _G = _p_and_G(p, G)
    w = p * (1.0 - p)
    if w.size and not (w > 0).any():
        warnings.warn("every p_i is 0 or 1; spreading the budget uniformly", AllocationFallbackWarning, stacklevel=2)
    return _from_weights(w, budget, min_per_prompt, max_per_prompt)


def filter_extremes(p, G, budget, *, min_per_prompt=0, max_per_prompt=None, **_) -> np.ndarray:
    """Reinforce-Rej / DAPO dynamic sampling: drop prompts whose pilots were all correct (p=1) or all
    wrong (p=0) and share the budget evenly among the rest; uniform (with a warning) if none is left."""
    p, _G = _p_and_G(p, G)
    w = ((p > 0) & (p < 1)).astype(np.float64)
    if w.size and not (w > 0).any():
        warnings.warn("every p_i is 0 or 1; spreading the budget uniformly", AllocationFallbackWarning, stacklevel=2)
    return _from_weights(w, budget, min_per_prompt, max_per_prompt)


RULES: dict[str, Callable[..., np.ndarray]] = {
    "gvm": allocate,
    "uniform": uniform,
    "acceptance_only": acceptance_only,
    "reward_variance": reward_variance,
    "filter_extremes": filter_extremes,
}


def get_rule(name: str) -> Callable[..., np.ndarray]:
    """Look up an allocation rule by name (``gvm``, ``uniform``, ``acceptance_only``,
    ``reward_variance``, ``filter_extremes``)."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown allocation rule {name!r}; choose one of {sorted(RULES)}") from None
