"""Per-prompt sample budgets: Proposition 1 of arXiv 2505.02391 and the baselines it is compared with.

The E-step draws ``n_i`` responses for prompt ``i`` and keeps the accepted ones. The variance of the
Lemma-1 gradient estimator is bounded by ``sum_i G_i^2 / (p_i n_i)``; Eq. 7 regularises each term by
``1 / (1 + alpha / p_i^beta)`` so that prompts that are (almost) never solved do not swallow the budget.
Minimising Eq. 7 subject to ``sum_i n_i = N`` by a Lagrange multiplier gives Proposition 1::

    n_i = N * w_i / sum_l w_l,        w_i = G_i / sqrt(p_i + alpha * p_i**(1 - beta))

Integer budgets follow the official code (``em/stage_2_calc_sample_size.py``): weight 0 where
``p_i == 0`` or ``G_i == 0``, then largest-remainder rounding so that the counts sum to ``N`` exactly.

Beyond the paper (theory/variance_and_prop1.md): :func:`allocate_tokens` minimises Eq. 7 for a budget in
generated *tokens* (``n_i ∝ w_i / sqrt(c_i)``), and :func:`knapsack` is the Knapsack-RL rule of
Li et al. 2025 (maximise the chance of a non-zero GRPO gradient times an information gain).

Every rule here has the call shape ``rule(p, G, budget, *, min_per_prompt=0, max_per_prompt=None,
**kw) -> np.ndarray[int]`` so that experiments can swap them (see :data:`RULES`); the rules in
:data:`COST_AWARE` (``gvm_tokens``) also take ``cost=``, the mean generated tokens per sample of each
prompt, and spend ``budget * mean(cost)`` tokens instead of exactly ``budget`` samples.
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
    "continuous_token_allocation",
    "allocate_tokens",
    "gvm_tokens",
    "knapsack_value",
    "knapsack",
    "ROBUST_FLOOR",
    "ROBUST_CAP_FACTOR",
    "robust_bounds",
    "continuous_robust_allocation",
    "gvm_robust",
    "floor_cost",
    "COST_AWARE",
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
    if pos.any():  # normalised weights: lam is then found for any scale of w (1e-300 .. 1e300)
        with np.errstate(under="ignore"):
            pos = w / w.max() > 0
    if not pos.any():
        return _even_fill(m, budget, lo, hi)
    cap = hi * pos.sum() + lo * (~pos).sum()
    if cap <= budget:  # weighted prompts saturate: give them hi, spread the rest over the others
        n[pos] = hi
        if (~pos).any():
            n[~pos] = _even_fill(int((~pos).sum()), budget - hi * pos.sum(), lo, hi)
        return n
    wp = w[pos] / w[pos].max()
    target = budget - lo * (~pos).sum()
    # f(lam) = sum clip(lam * wp, lo, hi) is continuous, piecewise linear and non-decreasing, with kinks
    # at lam = lo / wp_i and hi / wp_i: find the piece that holds the target and solve it exactly.
    with np.errstate(over="ignore"):  # wp_i < ~1e-308 * hi: its kinks overflow to inf (handled below)
        kinks = np.unique(np.concatenate([lo / wp, hi / wp]))
        f = np.array([np.clip(k * wp, lo, hi).sum() for k in kinks])
    j = int(np.searchsorted(f, target))  # first kink with f >= target (f[-1] = hi * len(wp) > target)
    if not np.isfinite(kinks[j]):
        # lam lies beyond every finite kink: the prompts with a finite hi / wp_i are full, and those whose
        # weights are over ~1e308 times smaller share the rest, solved on their own scale (same clip, lam
        # rescaled by their largest weight)
        with np.errstate(over="ignore"):
            full = np.isfinite(hi / wp)
        x = np.full(wp.size, hi, dtype=np.float64)
        x[~full] = _water_fill(wp[~full], target - hi * full.sum(), lo, hi)
    else:
        lam = kinks[0] if j == 0 else kinks[j - 1] + (target - f[j - 1]) * (kinks[j] - kinks[j - 1]) / (f[j] - f[j - 1])
        x = np.clip(lam * wp, lo, hi)
        free = (x > lo) & (x < hi)
        if free.any():  # remove the last rounding error on the free set
            x[free] *= (target - x[~free].sum()) / x[free].sum()
    n[pos] = x
    assert abs(n.sum() - budget) <= 1e-6 * max(1.0, budget), f"water-filling lost samples: {n.sum()} != {budget}"
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


# ----------------------------------------------------------------------------------------------
# beyond the paper: a budget in tokens, and the Knapsack-RL rule
# ----------------------------------------------------------------------------------------------


def _cost_vector(cost, m: int) -> np.ndarray:
    c = _vector("cost", cost)
    if c.size != m:
        raise ValueError(f"cost and p must have the same length, got {c.size} and {m}")
    if np.any(c <= 0):
        bad = int(np.flatnonzero(c <= 0)[0])
        raise ValueError(f"cost must be > 0 (tokens per sample); cost[{bad}] = {c[bad]}")
    return c


def _token_bounds(c: np.ndarray, token_budget, min_per_prompt, max_per_prompt) -> tuple[float, int, int | None]:
    try:
        B = float(token_budget)
    except (TypeError, ValueError):
        raise ValueError(f"token_budget must be a number, got {token_budget!r}") from None
    if not np.isfinite(B) or B < 0:
        raise ValueError(f"token_budget must be a finite number >= 0, got {token_budget!r}")
    lo = _int_arg("min_per_prompt", min_per_prompt)
    hi = None if max_per_prompt is None else _int_arg("max_per_prompt", max_per_prompt)
    if hi is not None and hi < lo:
        raise ValueError(f"max_per_prompt ({hi}) must be >= min_per_prompt ({lo})")
    if lo * c.sum() > B * (1 + 1e-12):
        raise ValueError(
            f"min_per_prompt={lo} cannot be met: {c.size} prompts at that count cost {lo * c.sum():g} tokens "
            f"but token_budget={B:g}"
        )
    if hi is not None and c.size and hi * c.sum() < B * (1 - 1e-12):
        raise ValueError(
            f"max_per_prompt={hi} cannot be met: {c.size} prompts hold at most {hi * c.sum():g} tokens "
            f"but token_budget={B:g}"
        )
    return B, lo, hi


def _water_fill_cost(v: np.ndarray, c: np.ndarray, B: float, lo: float, hi: float) -> np.ndarray:
    """Real ``n_i = clip(lam * v_i, lo, hi)`` with ``sum_i c_i n_i = B`` (KKT of the token-budget
    problem with box constraints; ``v_i = w_i / sqrt(c_i)``). Zero-``v`` prompts sit at ``lo`` unless
    the others are all full, then the rest is spread over them as equal sample counts."""
    n = np.full(v.size, lo, dtype=np.float64)
    pos = v > 0
    if not pos.any():
        return np.clip(np.full(v.size, B / c.sum()), lo, hi)
    if hi * c[pos].sum() + lo * c[~pos].sum() <= B:
        n[pos] = hi
        if (~pos).any():
            n[~pos] = np.clip((B - hi * c[pos].sum()) / c[~pos].sum(), lo, hi)
        return n
    vp, cp = v[pos], c[pos]
    target = B - lo * c[~pos].sum()
    a, b = 0.0, 1.0
    while (cp * np.clip(b * vp, lo, hi)).sum() < target:
        b *= 2.0
    for _ in range(200):
        mid = 0.5 * (a + b)
        if (cp * np.clip(mid * vp, lo, hi)).sum() < target:
            a = mid
        else:
            b = mid
    x = np.clip(b * vp, lo, hi)
    free = (x > lo) & (x < hi)
    if free.any():  # exact on the linear piece
        lam = (target - (cp * x)[~free].sum()) / (cp * vp)[free].sum()
        x[free] = lam * vp[free]
    n[pos] = x
    return n


def continuous_token_allocation(
    p, G, token_budget, cost, *, alpha: float = 1e-3, beta: float = 2.0, min_per_prompt=0, max_per_prompt=None
) -> np.ndarray:
    """Token-budget Proposition 1 (theory/variance_and_prop1.md, theory/variance_and_prop1.md), real-valued.

    Minimises Eq. 7, ``sum_i w_i^2 / n_i`` with ``w_i`` from :func:`allocation_weights`, subject to
    ``sum_i c_i n_i = B`` (``c_i`` = expected generated tokens per sample of prompt ``i``)::

        n_i = B * (w_i / sqrt(c_i)) / sum_l w_l sqrt(c_l)        optimum (sum_i w_i sqrt(c_i))^2 / B

    Box constraints ``[min_per_prompt, max_per_prompt]`` by water-filling. If every weight is zero,
    every prompt gets the same count ``B / sum_i c_i`` (uniform at the same token cost).
    """
    w = allocation_weights(p, G, alpha=alpha, beta=beta)
    c = _cost_vector(cost, w.size)
    B, lo, hi = _token_bounds(c, token_budget, min_per_prompt, max_per_prompt)
    if w.size == 0:
        return np.zeros(0)
    return _water_fill_cost(w / np.sqrt(c), c, B, float(lo), float(np.inf if hi is None else hi))


def allocate_tokens(
    p, G, token_budget, cost, *, alpha: float = 1e-3, beta: float = 2.0, min_per_prompt=0, max_per_prompt=None
) -> np.ndarray:
    """Integer token-budget Proposition 1 (theory/variance_and_prop1.md): minimise Eq. 7 s.t. ``sum_i c_i n_i <= B``.

    Continuous optimum (:func:`continuous_token_allocation`)::

        n_i = B * (w_i / sqrt(c_i)) / sum_l w_l sqrt(c_l),   w_i = G_i / sqrt(p_i + alpha p_i^(1-beta))

    By Cauchy-Schwarz its Eq. 7 value ``(sum w sqrt(c))^2 / B`` is never above that of Proposition 1
    scaled to the same tokens, ``(sum w)(sum w c) / B``; with equal costs the two coincide.

    Rounding rule (stated, deterministic): (1) floor the continuous solution; (2) one pass over the
    *candidates* in order of decreasing fractional part (ties to the lower index), giving each one more
    sample if its cost still fits in the unspent tokens; (3) while some candidate below
    ``max_per_prompt`` still fits, give one more sample to the fitting candidate with the largest Eq. 7
    decrease per token, ``w_i^2 / (n_i (n_i + 1) c_i)`` (ties to the lower index). Candidates are the
    prompts with positive weight below ``max_per_prompt``; if there are none (every weight is zero, or
    every weighted prompt is full) every prompt below ``max_per_prompt`` is a candidate with ``w_i = 1``.
    So the tokens spent ``sum c_i n_i`` are never above ``B`` (up to 1e-9 relative float error) and
    less than ``max_i c_i`` below it. With equal costs step (2) is largest-remainder rounding, step (3)
    adds nothing, and the result equals :func:`allocate` with ``budget = B / c``.

    Zero-weight prompts (``p_i == 0`` or ``G_i == 0``) get ``min_per_prompt`` (more only once every
    weighted prompt is at ``max_per_prompt``, as in :func:`allocate`); if every weight is zero
    the tokens are spread as equal sample counts and an :class:`AllocationFallbackWarning` is issued.
    Bad input raises ``ValueError`` naming the argument (``cost`` must be > 0).

    >>> allocate_tokens([0.5, 0.5], [1, 1], 300, [10, 40]).tolist()
    [10, 5]
    """
    import heapq

    w = allocation_weights(p, G, alpha=alpha, beta=beta)
    c = _cost_vector(cost, w.size)
    B, lo, hi = _token_bounds(c, token_budget, min_per_prompt, max_per_prompt)
    if w.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not (w > 0).any():
        warnings.warn(
            "every allocation weight is zero (no prompt has p_i > 0 and G_i > 0); "
            "spreading the token budget as equal sample counts",
            AllocationFallbackWarning,
            stacklevel=2,
        )
    hi_f = float(np.inf if hi is None else hi)
    x = _water_fill_cost(w / np.sqrt(c), c, B, float(lo), hi_f)
    n = np.floor(x + 1e-9).astype(np.int64)
    tol = 1e-9 * max(B, 1.0)
    while (n * c).sum() > B + tol:  # only from float error: take back the most over-rounded sample
        over = np.flatnonzero(n > lo)
        n[over[np.argmin((x - n)[over])]] -= 1
    left = B - float((n * c).sum())
    cand = (w > 0) & (n < hi_f)
    wt = w
    if not cand.any():
        cand, wt = n < hi_f, np.ones_like(w)
    # (2) largest fractional part first, one sample each, if it fits
    frac = x - n
    for i in np.lexsort((np.arange(w.size), -frac)):
        if cand[i] and frac[i] > 1e-9 and c[i] <= left + tol and n[i] < hi_f:
            n[i] += 1
            left -= c[i]
    # (3) greedy on the Eq. 7 decrease per token while anything still fits
    def greedy(idx: np.ndarray, wt: np.ndarray) -> None:
        nonlocal left
        heap = [(-(wt[i] ** 2) / (max(n[i], 1e-300) * (n[i] + 1) * c[i]), i) for i in idx]
        heapq.heapify(heap)
        while heap:
            _, i = heapq.heappop(heap)
            if c[i] > left + tol or n[i] >= hi_f:
                continue  # it never fits again: the unspent tokens only shrink
            n[i] += 1
            left -= c[i]
            heapq.heappush(heap, (-(wt[i] ** 2) / (n[i] * (n[i] + 1) * c[i]), i))

    greedy(np.flatnonzero(cand), wt)
    pos = w > 0
    if pos.any() and np.all(n[pos] >= hi_f) and (n < hi_f).any():  # weighted prompts full (float edge of step 1)
        greedy(np.flatnonzero(n < hi_f), np.ones_like(w))
    return n


def gvm_tokens(
    p, G, budget, *, cost, token_budget=None, alpha: float = 1e-3, beta: float = 2.0,
    min_per_prompt=0, max_per_prompt=None,
) -> np.ndarray:
    """The ``gvm_tokens`` rule of :data:`RULES`: :func:`allocate_tokens` with the token budget of the
    uniform allocation of ``budget`` samples, ``B = budget * mean_i(c_i)`` (so both spend the same
    expected tokens), unless ``token_budget`` is given. ``cost`` is required (see :data:`COST_AWARE`)."""
    c = _cost_vector(cost, np.asarray(p).size)
    budget = _int_arg("budget", budget)
    B = budget * float(c.mean()) if token_budget is None else token_budget
    if c.size == 0:
        B = 0.0
    return allocate_tokens(p, G, B, c, alpha=alpha, beta=beta, min_per_prompt=min_per_prompt,
                           max_per_prompt=max_per_prompt)


def knapsack_value(n, p) -> np.ndarray:
    """Knapsack-RL value of ``n`` samples of a prompt with pass rate ``p`` (Li et al. 2025,
    arXiv 2509.25849): ``(1 - p^n - (1 - p)^n) * p * (1 - p)^2`` = P(the group has both a correct
    and a wrong answer, so GRPO gets a non-zero gradient) x InfoGain(p). 0 for ``n <= 1`` (at ``n = 0`` by
    definition: the formula would give ``-p (1 - p)^2``) and for
    ``p`` in {0, 1}. Broadcasts over ``n`` and ``p``."""
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    v = (1.0 - p**n - (1.0 - p) ** n) * p * (1.0 - p) ** 2
    return np.where(n >= 1, v, 0.0)  # the formula gives -p(1-p)^2 at n = 0; no samples, no value


def knapsack(
    p, G, budget, *, min_per_prompt=0, max_per_prompt=None, fallback: bool = True,
    fallback_confidence: float = 0.9, **_,
) -> np.ndarray:
    """Knapsack-RL allocation (Li et al. 2025, arXiv 2509.25849): maximise
    ``sum_i knapsack_value(n_i, p_i)`` subject to ``sum_i n_i = budget`` and
    ``min_per_prompt <= n_i <= max_per_prompt``, solved exactly by dynamic programming over the budget
    (``O(m * budget * max_per_prompt)``; the value is not concave at ``n = 0, 1``, so greedy is not
    exact). ``G`` is only checked: the rule uses the pass rates alone.

    Details checked against the authors' public implementation (``sampling_budget_by_knapsack`` in
    their verl fork) and where we chose:

    * Prompts with ``p_i`` in {0, 1} have value 0 for every ``n``; they get ``min_per_prompt`` (the
      public code gives them its floor ``min_n = 2``; set ``min_per_prompt=2`` to match).
    * ``fallback=True`` (the public code's default ``allow_fallback``): an informative prompt is worth
      at most ``ceil_i = min(max_per_prompt, floor(log(1 - fallback_confidence) / log(max(p_i, 1 - p_i))))``
      samples (enough for a non-zero gradient with probability ``fallback_confidence``, 0.9 there); if
      the informative prompts' ``sum ceil_i`` leaves budget over, the surplus is spread evenly over the
      prompts with ``p_i = 0`` (unsolved: more samples may find a first success) and the DP gets the
      rest. We deviate in one place: with no ``p_i = 0`` prompt there is no fallback (the public code
      then spreads the surplus over the ``p_i = 1`` prompts, which carry no signal). ``fallback=False``
      is the plain knapsack.
    * If the informative prompts are all full (at ``max_per_prompt``), the rest goes evenly to
      ``p_i = 0`` prompts, then ``p_i = 1`` prompts; if every prompt has ``p_i`` in {0, 1} the budget
      goes to the ``p_i = 0`` prompts (public code) or, if none, uniformly, with an
      :class:`AllocationFallbackWarning`.
    * Prompts never seen get a uniform share in the public code (their ``p`` comes from the previous
      epoch, with no pilot); in gvm-mini every prompt has an estimate (a pilot or, with
      ``pilot: history``, its earlier samples), so that case does not arise.
    * Ties in the DP go to the smallest count for the later prompt (deterministic).

    >>> knapsack([0.5, 0.5, 0.0, 1.0], [1, 1, 1, 1], 8, fallback=False).tolist()
    [4, 4, 0, 0]
    """
    p, _G = _p_and_G(p, G)
    budget, lo, hi = _bounds(p.size, budget, min_per_prompt, max_per_prompt)
    m = p.size
    n = np.full(m, lo, dtype=np.int64)
    if m == 0:
        return n
    if not (0 < fallback_confidence < 1):
        raise ValueError(f"fallback_confidence must be in (0, 1), got {fallback_confidence!r}")
    inf_ = np.flatnonzero((p > 0) & (p < 1))
    zero, one = np.flatnonzero(p == 0), np.flatnonzero(p == 1)
    left = budget - lo * m

    def spread(idx: np.ndarray, amount: int) -> int:
        """Even shares (remainder to the lower indices), capped at ``hi``; returns what did not fit."""
        while amount > 0 and idx.size:
            room = idx[n[idx] < hi]
            if not room.size:
                break
            share, rem = divmod(amount, room.size)
            add = np.minimum(np.full(room.size, share) + (np.arange(room.size) < rem), hi - n[room])
            n[room] += add
            amount -= int(add.sum())
            if add.sum() == 0:
                break
        return amount

    if inf_.size == 0:
        if zero.size == 0:
            warnings.warn("every p_i is 1; spreading the budget uniformly", AllocationFallbackWarning, stacklevel=2)
            spread(np.arange(m), left)
            return n
        warnings.warn("no prompt has 0 < p_i < 1; spreading the budget over the p_i = 0 prompts",
                      AllocationFallbackWarning, stacklevel=2)
        rest = spread(zero, left)
        spread(one, rest)
        return n
    dp_budget = min(left, (hi - lo) * inf_.size)
    if fallback and zero.size:
        with np.errstate(divide="ignore"):
            need = np.floor(np.log(1.0 - fallback_confidence) / np.log(np.maximum(p[inf_], 1.0 - p[inf_])))
        cap = int(np.clip(need, lo, hi).sum()) - lo * inf_.size
        if cap < dp_budget:
            dp_budget = cap + spread(zero, dp_budget - cap)  # what the p=0 prompts cannot hold returns
    rest = budget - int(n.sum()) - dp_budget  # after any fallback shares (already in n)
    # exact DP over the informative prompts: best[b] = max value of extra samples summing to b
    K = min(hi - lo, dp_budget)
    ks = np.arange(lo, lo + K + 1)
    best = np.full(dp_budget + 1, -np.inf)
    best[0] = 0.0
    choice = np.zeros((inf_.size, dp_budget + 1), dtype=np.int64)
    from numpy.lib.stride_tricks import sliding_window_view

    for j, i in enumerate(inf_):
        vals = knapsack_value(ks, p[i])
        # cand[b, k] = best[b - k] + vals[k] for all b, k at once (a (max, +) convolution)
        padded = np.concatenate([np.full(K, -np.inf), best])
        cand = sliding_window_view(padded, K + 1)[:, ::-1] + vals[None, :]
        arg = np.argmax(cand, axis=1)  # first maximum: the smallest count wins ties
        best, choice[j] = cand[np.arange(dp_budget + 1), arg], arg
    b = dp_budget
    for j in range(inf_.size - 1, -1, -1):
        k = int(choice[j, b])
        n[inf_[j]] += k
        b -= k
    rest = spread(zero, rest)
    rest = spread(one, rest)
    return n


# ----------------------------------------------------------------------------------------------
# gvm_robust: Proposition 1 inside a box [floor, cap] (theory/gvm_robust.md)
# ----------------------------------------------------------------------------------------------

ROBUST_FLOOR = 2
"""Default floor of :func:`gvm_robust`: samples every prompt gets, whatever its estimated ``p_i``
or ``G_i`` (two samples are the fewest that can disagree); chosen with the cap on the tuning task."""

ROBUST_CAP_FACTOR = 2.0
"""Default cap of :func:`gvm_robust` as a multiple of the uniform share: ``cap = ceil(2 N / m)``.
Chosen, with the floor, on the demo's rule task before any other task was run
(``bench/allocation_study.py --tune``); ``allocation: gvm_robust`` in a config uses the same value."""


def robust_bounds(
    m: int, budget, *, floor=ROBUST_FLOOR, cap_factor=ROBUST_CAP_FACTOR, min_per_prompt=0, max_per_prompt=None
) -> tuple[int, int]:
    """Integer box ``(lo, hi)`` of :func:`gvm_robust` for ``m`` prompts and ``budget`` samples.

    * ``lo = max(min_per_prompt, min(floor, budget // m))``: the floor is lowered to the uniform
      share ``budget // m`` when the budget cannot pay it (then every prompt gets about the same), but
      an explicit ``min_per_prompt`` the budget cannot pay is a ``ValueError``. ``floor=0`` or
      ``None`` turns the floor off.
    * ``hi = ceil(cap_factor * budget / m)``, at least ``lo``, and at most ``max_per_prompt`` when
      that is given. ``cap_factor=None`` turns the cap off (``hi = budget``). ``cap_factor`` must be
      ``>= 1`` so that ``m * hi >= budget``.

    >>> robust_bounds(4, 32)      # uniform share 8: floor 2, cap 2 * 8
    (2, 16)
    >>> robust_bounds(4, 6)       # budget // m = 1 < 2: the floor drops to 1; cap ceil(2 * 1.5)
    (1, 3)
    """
    m = _int_arg("m", m)
    budget = _int_arg("budget", budget)
    fl = 0 if floor is None else _int_arg("floor", floor)
    if cap_factor is not None and (not np.isfinite(cap_factor) or cap_factor < 1):
        raise ValueError(f"cap_factor must be a finite number >= 1 (or None for no cap), got {cap_factor!r}")
    if m == 0:
        return 0, budget
    lo = max(_int_arg("min_per_prompt", min_per_prompt), min(fl, budget // m))
    hi = budget if cap_factor is None else int(np.ceil(cap_factor * budget / m - 1e-9))
    hi = max(hi, lo)
    if max_per_prompt is not None:
        hi = min(hi, _int_arg("max_per_prompt", max_per_prompt))
    _bounds(m, budget, lo, hi)  # ValueError if the caller's own min/max cannot be met
    return lo, hi


def continuous_robust_allocation(
    p, G, budget, *, alpha: float = 1e-3, beta: float = 2.0, min_per_prompt=0, max_per_prompt=None,
    floor=ROBUST_FLOOR, cap_factor=ROBUST_CAP_FACTOR,
) -> np.ndarray:
    """Real-valued minimiser of Eq. 7 subject to ``sum_i n_i = budget`` and ``lo <= n_i <= hi``
    (``(lo, hi)`` from :func:`robust_bounds`): the KKT solution

        n_i = clip(w_i / sqrt(lambda), lo, hi),    w_i = G_i / sqrt(p_i + alpha p_i^(1-beta))  (Prop. 1)

    with ``lambda`` the multiplier of the budget, found by water-filling. Prompts with ``w_i = 0``
    (``p_i = 0`` or ``G_i = 0``) sit at ``lo``. Derivation: theory/gvm_robust.md §1."""
    w = allocation_weights(p, G, alpha=alpha, beta=beta)
    lo, hi = robust_bounds(w.size, budget, floor=floor, cap_factor=cap_factor,
                           min_per_prompt=min_per_prompt, max_per_prompt=max_per_prompt)
    if w.size == 0:
        return np.zeros(0)
    return _water_fill(w, float(budget), float(lo), float(hi))


def gvm_robust(
    p, G, budget, *, alpha: float = 1e-3, beta: float = 2.0, min_per_prompt=0, max_per_prompt=None,
    floor=ROBUST_FLOOR, cap_factor=ROBUST_CAP_FACTOR, **_,
) -> np.ndarray:
    """The ``gvm_robust`` rule: Proposition 1 with a floor and a cap, integer, summing to ``budget``.

    1. Box ``lo <= n_i <= hi`` from :func:`robust_bounds` (defaults :data:`ROBUST_FLOOR` = 2 samples
       and :data:`ROBUST_CAP_FACTOR` = 2 x the uniform share ``budget / m``; the caller's
       ``min_per_prompt`` / ``max_per_prompt`` tighten it).
    2. The exact minimiser of Eq. 7 in that box (:func:`continuous_robust_allocation`,
       ``n_i = clip(w_i / sqrt(lambda), lo, hi)``).
    3. Largest-remainder rounding: the counts sum to ``budget`` and stay in ``[lo, hi]`` (each count
       is the floor or the ceiling of its real value, and ``lo``, ``hi`` are integers).

    Why: under the paper's rule a prompt whose pilots all failed (``p_i = 0``) gets ``n_i = 0`` and
    so never new evidence (starvation), and a prompt with one lucky accepted pilot out of a few can
    take a large share. The floor keeps every prompt observed (a zero weight, ``p_i = 0`` or
    ``G_i = 0``, gets exactly ``lo``; ``p_i = 1`` has the positive weight ``G_i / sqrt(1 + alpha)``
    and is allocated by it, as the doctest's last prompt shows); the cap bounds what one noisy
    estimate can take. Feed it the shrunk estimates of
    :func:`gvm_mini.estimators.robust_estimates`. Ablations: ``floor=0`` (no floor),
    ``cap_factor=None`` (no cap); with both off this is :func:`allocate`. ``p`` and ``G`` are
    checked as in :func:`allocate`; bad arguments raise ``ValueError`` naming them. No
    :class:`AllocationFallbackWarning`: with every weight zero the box-constrained optimum is an even
    spread, which is what it returns.

    >>> gvm_robust([0.5, 0.125, 0.0, 1.0], [1, 1, 1, 1], 16).tolist()  # allocate() gives [4, 9, 0, 3]
    [4, 7, 2, 3]
    """
    w = allocation_weights(p, G, alpha=alpha, beta=beta)
    lo, hi = robust_bounds(w.size, budget, floor=floor, cap_factor=cap_factor,
                           min_per_prompt=min_per_prompt, max_per_prompt=max_per_prompt)
    budget = _int_arg("budget", budget)
    if w.size == 0:
        return np.zeros(0, dtype=np.int64)
    x = _water_fill(w, float(budget), float(lo), float(hi))
    n = _round_preserving_sum(x, budget)
    assert n.sum() == budget and n.min() >= lo and n.max() <= hi, f"gvm_robust broke its box or budget: {n}"
    return n


def floor_cost(p, G, budget, *, floor, alpha: float = 1e-3, beta: float = 2.0) -> float:
    """Increase of Eq. 7 caused by a floor ``n_i >= floor`` (no cap), in closed form.

    With ``w_i`` the Proposition-1 weights and ``W = sum_i w_i``, the unconstrained optimum is
    ``V* = W^2 / N``. With the floor, the prompts whose weight is below the water level sit at the
    floor (set ``F``, found by sorting the weights) and the rest share ``N - f |F|`` in proportion to
    ``w_i``, so::

        V_floor = sum_{i in F} w_i^2 / f  +  W_R^2 / (N - f |F|),      W_R = W - sum_{i in F} w_i
        cost    = V_floor - V*  >= 0

    ``F`` is the smallest set of lowest-weight prompts for which every other prompt's share
    ``(N - f |F|) w_i / W_R`` is at least ``f``. Zero-weight prompts (``p_i = 0`` or ``G_i = 0``)
    are always in ``F`` and cost only through the samples they take: ``W^2 / (N - f |F|) - W^2 / N``
    when nothing else binds. Returns 0 if no weight is positive. See theory/gvm_robust.md §2.
    """
    w = allocation_weights(p, G, alpha=alpha, beta=beta)
    N = _int_arg("budget", budget)
    f = _int_arg("floor", floor)
    _bounds(w.size, N, f, None)
    W = float(w.sum())
    if W == 0.0:
        return 0.0
    order = np.argsort(w, kind="stable")
    ws = w[order]
    suffix = np.cumsum(ws[::-1])[::-1]  # suffix[j] = sum of ws[j:]
    for j in range(w.size):  # j = |F|, the j smallest weights at the floor
        WR = float(suffix[j])
        rest = N - f * j
        if WR > 0 and rest * ws[j] / WR >= f * (1 - 1e-12):
            V_floor = float((ws[:j] ** 2).sum()) / f + WR * WR / rest if f > 0 else WR * WR / rest
            return V_floor - W * W / N
    raise AssertionError("unreachable: the largest weight always clears the floor")  # pragma: no cover


COST_AWARE = frozenset({"gvm_tokens"})
"""Rules that need the per-prompt cost ``cost=`` (mean tokens per sample) besides ``p, G, budget``."""


RULES: dict[str, Callable[..., np.ndarray]] = {
    "gvm": allocate,
    "uniform": uniform,
    "acceptance_only": acceptance_only,
    "reward_variance": reward_variance,
    "filter_extremes": filter_extremes,
    "gvm_tokens": gvm_tokens,
    "knapsack": knapsack,
    "gvm_robust": gvm_robust,
}


def get_rule(name: str) -> Callable[..., np.ndarray]:
    """Look up an allocation rule by name (``gvm``, ``uniform``, ``acceptance_only``,
    ``reward_variance``, ``filter_extremes``, ``gvm_tokens``, ``knapsack``, ``gvm_robust``). Rules in
    :data:`COST_AWARE` also need ``cost=`` (mean generated tokens per sample of each prompt)."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown allocation rule {name!r}; choose one of {sorted(RULES)}") from None
