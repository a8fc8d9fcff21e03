"""Proposition 1 and the baseline rules (gvm_mini.allocation)."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from gvm_mini.allocation import (
    AllocationFallbackWarning,
    acceptance_only,
    allocate,
    allocation_weights,
    continuous_allocation,
    expected_accepted,
    filter_extremes,
    get_rule,
    reward_variance,
    uniform,
    variance_objective,
)


def test_weights_by_hand():
    # w = G / sqrt(p + alpha / p^(beta-1)), alpha=1e-3, beta=2:
    # p=1/2: 1/sqrt(0.5 + 0.002) = 1.41139...; p=1/8: 1/sqrt(0.125 + 0.008) = 2.74204...
    w = allocation_weights([0.5, 0.125, 0.0, 1.0], [1.0, 2.0, 5.0, 0.0])
    assert w[0] == pytest.approx(1 / math.sqrt(0.502), rel=1e-12)
    assert w[1] == pytest.approx(2 / math.sqrt(0.133), rel=1e-12)
    assert w[2] == 0.0  # p = 0: dropped, as the official code
    assert w[3] == 0.0  # G = 0: dropped


def test_weight_profile_matches_method_table():
    # theory/variance_and_prop1.md table (the alpha/beta regulariser) for alpha=1e-3, beta=2, N'=8 (G ignored).
    p = np.arange(1, 9) / 8
    expected = [2.742, 1.984, 1.627, 1.411, 1.263, 1.154, 1.068, 0.9995]
    assert allocation_weights(p, np.ones(8)) == pytest.approx(expected, abs=6e-4)


def test_allocate_hand_example():
    # continuous: 16 * w / sum(w) = [4.382, 8.514, 0, 3.103] -> floors [4, 8, 0, 3] (15),
    # the one left over goes to the largest remainder (0.514, prompt 1).
    n = allocate([0.5, 0.125, 0, 1], [1, 1, 1, 1], 16)
    assert n.tolist() == [4, 9, 0, 3]
    assert n.dtype.kind == "i"


def test_g_matters():
    # equal p, G doubled => twice the samples
    n = allocate([0.5, 0.5], [1.0, 2.0], 30)
    assert n.tolist() == [10, 20]


def test_bounds_by_hand():
    # prompt 2 (p=0) gets min 2; prompt 1 hits the cap 6; the other 8 split 1.4114 : 0.9995
    # -> 4.68, 3.32 -> [5, 3].
    n = allocate([0.5, 0.125, 0, 1], [1, 1, 1, 1], 16, min_per_prompt=2, max_per_prompt=6)
    assert n.tolist() == [5, 6, 2, 3]


def test_saturated_weighted_prompts_spill_to_zero_weight_prompts():
    n = allocate([0.5, 0.0, 0.0], [1, 1, 1], 10, max_per_prompt=4)
    assert n.tolist() == [4, 3, 3]


def test_all_zero_weights_fall_back_to_uniform_with_warning():
    with pytest.warns(AllocationFallbackWarning):
        n = allocate([0, 0, 0], [1, 1, 1], 10)
    assert n.tolist() == [4, 3, 3]


def test_empty_and_zero_budget():
    assert allocate([], [], 0).tolist() == []
    assert allocate([0.5, 0.2], [1, 1], 0).tolist() == [0, 0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.floats(0, 100)), min_size=1, max_size=40
    ),
    st.integers(0, 5000),
    st.sampled_from([1e-4, 1e-3, 1e-2]),
    st.sampled_from([1.0, 2.0, 3.5, 5.0]),
)
def test_sum_equals_budget_and_within_one_sample(pairs, budget, alpha, beta):
    p = np.array([a for a, _ in pairs])
    G = np.array([b for _, b in pairs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AllocationFallbackWarning)
        n = allocate(p, G, budget, alpha=alpha, beta=beta)
        x = continuous_allocation(p, G, budget, alpha=alpha, beta=beta)
    assert n.sum() == budget
    assert (n >= 0).all()
    assert np.all(np.abs(n - x) < 1.0 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.01, 1), st.floats(0.01, 10)), min_size=2, max_size=12),
    st.integers(1, 4),
    st.integers(0, 3),
)
def test_bounded_allocation_respects_bounds(pairs, lo, extra):
    p = np.array([a for a, _ in pairs])
    G = np.array([b for _, b in pairs])
    m = len(p)
    hi = lo + extra + 1
    budget = (lo * m + hi * m) // 2
    n = allocate(p, G, budget, min_per_prompt=lo, max_per_prompt=hi)
    assert n.sum() == budget
    assert n.min() >= lo and n.max() <= hi


@pytest.mark.parametrize("seed", range(5))
def test_continuous_allocation_minimises_eq7(seed):
    rng = np.random.default_rng(seed)
    m = 8
    p = rng.uniform(0.02, 1.0, m)
    G = rng.uniform(0.1, 5.0, m)
    N = 64.0
    x = continuous_allocation(p, G, 64)
    # numerical minimisation of Eq. 7 on the simplex sum n = N, via softmax parametrisation
    def f(z):
        n = N * np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        return variance_objective(n, p, G)

    res = minimize(f, np.zeros(m), method="BFGS", options={"gtol": 1e-12, "maxiter": 10000})
    n_num = N * np.exp(res.x - res.x.max()) / np.exp(res.x - res.x.max()).sum()
    assert variance_objective(x, p, G) <= res.fun * (1 + 1e-9)
    assert x == pytest.approx(n_num, rel=1e-4)  # argmin agrees (flat objective near optimum)
    assert variance_objective(x, p, G) == pytest.approx(res.fun, rel=1e-6)


def test_gvm_beats_uniform_on_eq7():
    p = np.array([0.9, 0.5, 0.1, 0.05])
    G = np.array([1.0, 2.0, 3.0, 1.0])
    v_gvm = variance_objective(allocate(p, G, 80), p, G)
    v_uni = variance_objective(uniform(p, G, 80), p, G)
    assert v_gvm < v_uni


def test_variance_objective_by_hand():
    # one prompt: G^2 / (p n) / (1 + alpha / p^beta) = 4 / (0.5 * 8) / (1 + 1e-3 / 0.25) = 1/1.004
    assert variance_objective([8], [0.5], [2.0]) == pytest.approx(1 / 1.004, rel=1e-12)
    assert variance_objective([8], [0.5], [2.0], alpha=0.0) == pytest.approx(1.0)
    assert variance_objective([0, 3], [0.0, 0.5], [1.0, 0.0]) == 0.0
    assert variance_objective([0], [0.5], [1.0]) == math.inf
    assert expected_accepted([4, 9, 0, 3], [0.5, 0.125, 0, 1]) == pytest.approx(2 + 1.125 + 3)


def test_baselines_by_hand():
    p = [0.5, 0.125, 0.0, 1.0]
    G = [1, 1, 1, 1]
    assert uniform(p, G, 18).tolist() == [5, 5, 4, 4]
    # p(1-p) = 0.25, 0.109375, 0, 0 -> 16 * [0.6957, 0.3043] = [11.13, 4.87] -> [11, 5]
    assert reward_variance(p, G, 16).tolist() == [11, 5, 0, 0]
    assert filter_extremes(p, G, 16).tolist() == [8, 8, 0, 0]
    assert acceptance_only(p, [7, 1, 1, 3], 16).tolist() == allocate(p, G, 16).tolist()
    assert get_rule("gvm") is allocate
    with pytest.raises(ValueError, match="unknown allocation rule"):
        get_rule("gvn")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(p=[0.5, 0.5], G=[1], budget=4), "same length"),
        (dict(p=[0.5, float("nan")], G=[1, 1], budget=4), "p must be finite"),
        (dict(p=[0.5, 1.5], G=[1, 1], budget=4), "p must be <= 1"),
        (dict(p=[0.5, -0.1], G=[1, 1], budget=4), "p must be >= 0"),
        (dict(p=[0.5, 0.5], G=[1, -1], budget=4), "G must be >= 0"),
        (dict(p=[0.5, 0.5], G=[1, float("inf")], budget=4), "G must be finite"),
        (dict(p=[[0.5]], G=[[1]], budget=4), "one-dimensional"),
        (dict(p=["a"], G=[1], budget=4), "p must be a sequence of numbers"),
        (dict(p=[0.5, 0.5], G=[1, 1], budget=-1), "budget must be >= 0"),
        (dict(p=[0.5, 0.5], G=[1, 1], budget=4.5), "budget must be an integer"),
        (dict(p=[0.5, 0.5], G=[1, 1], budget=4, alpha=0), "alpha"),
        (dict(p=[0.5, 0.5], G=[1, 1], budget=4, alpha=-1), "alpha"),
        (dict(p=[0.5, 0.5], G=[1, 1], budget=4, beta=0.5), "beta"),
        (dict(p=[0.5, 0.5], G=[1, 1], budget=4, min_per_prompt=3), "min_per_prompt=3 cannot be met"),
        (dict(p=[0.5, 0.5], G=[1, 1], budget=4, max_per_prompt=1), "max_per_prompt=1 cannot be met"),
        (dict(p=[0.5, 0.5], G=[1, 1], budget=4, min_per_prompt=2, max_per_prompt=1), "max_per_prompt"),
        (dict(p=[], G=[], budget=3), "no prompts"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        allocate(**kwargs)


# ----------------------------------------------------------------------------------------------
# token-budget Proposition 1 and the Knapsack-RL rule
# ----------------------------------------------------------------------------------------------

from gvm_mini.allocation import (  # noqa: E402
    COST_AWARE,
    RULES,
    allocate_tokens,
    continuous_token_allocation,
    gvm_tokens,
    knapsack,
    knapsack_value,
)


def test_allocate_tokens_worked_example():
    # theory/variance_and_prop1.md, token-budget Proposition 1 example: w = (1, 1), c = (10, 40), B = 300: n_i = 300 * (1/sqrt(c_i)) / (sqrt(10) + sqrt(40))
    # = (10, 5) exactly, and 10*10 + 5*40 = 300
    assert continuous_token_allocation([0.5, 0.5], [1, 1], 300, [10, 40]) == pytest.approx([10, 5], rel=1e-12)
    assert allocate_tokens([0.5, 0.5], [1, 1], 300, [10, 40]).tolist() == [10, 5]
    # the rule of RULES spends budget * mean(c) = 6 * 25 = 150 tokens: half of the above, (5, 2.5)
    # -> floor (5, 2) = 130 tokens, then +1 to prompt 1 does not fit (40 > 20), prompt 0 does (10 <= 20)
    assert gvm_tokens([0.5, 0.5], [1, 1], 6, cost=[10, 40]).tolist() == [7, 2]
    assert "gvm_tokens" in COST_AWARE and RULES["gvm_tokens"] is gvm_tokens and RULES["knapsack"] is knapsack


def test_token_optimum_matches_a_numerical_minimiser():
    scipy_opt = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    for _ in range(5):
        m = 6
        p, G, c = rng.uniform(0.05, 1, m), rng.uniform(0.5, 3, m), rng.uniform(5, 80, m)
        B = 40.0 * c.mean()
        w2 = allocation_weights(p, G) ** 2
        cons = {"type": "eq", "fun": lambda n: c @ n - B, "jac": lambda n: c}
        res = scipy_opt.minimize(lambda n: (w2 / n).sum(), np.full(m, B / c.sum()), jac=lambda n: -w2 / n**2,
                                 constraints=[cons], bounds=[(1e-6, None)] * m, method="SLSQP",
                                 options={"ftol": 1e-15, "maxiter": 500})
        x = continuous_token_allocation(p, G, B, c)
        assert c @ x == pytest.approx(B, rel=1e-12)
        assert variance_objective(x, p, G) == pytest.approx(res.fun, rel=1e-6)
        assert variance_objective(x, p, G) <= res.fun * (1 + 1e-12)
        # the closed form's optimum value (sum w sqrt c)^2 / B
        w = allocation_weights(p, G)
        assert variance_objective(x, p, G) == pytest.approx((w @ np.sqrt(c)) ** 2 / B, rel=1e-10)


def test_equal_costs_reduce_to_allocate():
    rng = np.random.default_rng(5)
    for _ in range(50):
        m = int(rng.integers(1, 9))
        p = rng.choice([0.0, 0.125, 0.25, 0.5, 0.75, 1.0], m)
        G = rng.uniform(0, 2, m) * (rng.random(m) > 0.2)
        N = int(rng.integers(0, 40))
        cst = float(rng.choice([1.0, 7.0, 33.0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AllocationFallbackWarning)
            assert allocate_tokens(p, G, N * cst, np.full(m, cst)).tolist() == allocate(p, G, N).tolist()


def test_cauchy_schwarz_token_rule_never_worse_at_equal_tokens():
    rng = np.random.default_rng(7)
    for _ in range(200):
        m = int(rng.integers(2, 10))
        p, G, c = rng.uniform(0.02, 1, m), rng.uniform(0.1, 3, m), rng.uniform(1, 100, m)
        B = float(rng.uniform(10, 1000))
        w = allocation_weights(p, G)
        tok = continuous_token_allocation(p, G, B, c)
        N = B * w.sum() / (w @ c)  # Proposition 1 scaled to spend the same tokens
        prop1 = N * w / w.sum()
        assert c @ prop1 == pytest.approx(B)
        v_tok, v_p1 = variance_objective(tok, p, G), variance_objective(prop1, p, G)
        assert v_tok <= v_p1 * (1 + 1e-12)
        assert v_p1 == pytest.approx(w.sum() * (w @ c) / B, rel=1e-10)


def test_token_integers_never_over_budget_and_less_than_max_cost_under_it():
    rng = np.random.default_rng(11)
    for _ in range(300):
        m = int(rng.integers(1, 9))
        p = rng.choice([0.0, 0.1, 0.3, 0.5, 0.9, 1.0], m)
        G = rng.uniform(0, 2, m) * (rng.random(m) > 0.15)
        c = rng.integers(1, 60, m).astype(float) if rng.random() < 0.5 else rng.uniform(0.5, 60, m)
        lo = int(rng.integers(0, 3))
        B = float(lo * c.sum() + rng.uniform(0, 40) * c.mean())
        hi = None if rng.random() < 0.5 else int(np.ceil(B / c.sum())) + int(rng.integers(0, 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AllocationFallbackWarning)
            n = allocate_tokens(p, G, B, c, min_per_prompt=lo, max_per_prompt=hi)
        spent = float(n @ c)
        assert spent <= B * (1 + 1e-9) + 1e-9
        assert B - spent < c.max()
        assert n.min() >= lo and (hi is None or n.max() <= hi)
        w = allocation_weights(p, G)
        if (w > 0).any() and hi is None:
            assert np.all(n[w == 0] == lo)  # zero-weight prompts stay at the floor (dropped)


def test_token_rule_fallback_and_bad_input():
    with pytest.warns(AllocationFallbackWarning):
        n = allocate_tokens([0.0, 0.0], [1, 1], 100, [10, 40])  # equal counts: 2 each = 100 tokens
    assert n.tolist() == [2, 2]
    for kwargs, msg in [
        (dict(cost=[10, 0]), "cost must be > 0"),
        (dict(cost=[10]), "cost and p must have the same length"),
        (dict(cost=[10, float("nan")]), "cost must be finite"),
        (dict(token_budget=-1), "token_budget must be a finite number >= 0"),
        (dict(token_budget="x"), "token_budget must be a number"),
        (dict(min_per_prompt=7), "min_per_prompt=7 cannot be met"),
        (dict(max_per_prompt=1), "max_per_prompt=1 cannot be met"),
        (dict(alpha=0), "alpha"),
    ]:
        args = dict(p=[0.5, 0.5], G=[1, 1], token_budget=300, cost=[10, 40]) | kwargs
        with pytest.raises(ValueError, match=msg):
            allocate_tokens(**args)


def test_knapsack_value_by_hand():
    # p = 1/2, n = 2: (1 - 1/4 - 1/4) * 1/2 * 1/4 = 1/16;  n = 1: 0;  p in {0, 1}: 0
    assert knapsack_value(2, 0.5) == pytest.approx(1 / 16)
    assert knapsack_value(1, 0.3) == 0.0 and knapsack_value(5, 0.0) == 0.0 and knapsack_value(5, 1.0) == 0.0
    assert knapsack_value(0, 0.5) == 0.0  # the formula would say -1/8 (the public code never evaluates n = 0)


def test_knapsack_hand_solvable():
    # two equal prompts p = 1/2, budget 8: the value 1/8 (1 - 2^(1-n)) is concave for n >= 1, so 4 + 4;
    # p = 0 and p = 1 prompts are worth nothing and keep min_per_prompt = 0 (plain knapsack)
    assert knapsack([0.5, 0.5, 0.0, 1.0], [1] * 4, 8, fallback=False).tolist() == [4, 4, 0, 0]
    # budget 3 over two prompts: (2, 1) is worth 1/16 + 0; (3, 0) is worth 3/32 > 1/16: all on one prompt
    assert sorted(knapsack([0.5, 0.5], [1, 1], 3, fallback=False).tolist()) == [0, 3]
    # fallback (public code): p = 1/2 needs floor(log 0.1 / log 0.5) = 3 samples for a non-zero gradient
    # with probability 0.9, so 3 + 3 go to the two prompts and the surplus 2 to the unsolved p = 0 prompt
    assert knapsack([0.5, 0.5, 0.0, 1.0], [1] * 4, 8).tolist() == [3, 3, 2, 0]
    # informative prompts full at max_per_prompt: the rest goes to p = 0, then p = 1
    assert knapsack([0.5, 0.0, 1.0], [1] * 3, 9, max_per_prompt=4, fallback=False).tolist() == [4, 4, 1]
    with pytest.warns(AllocationFallbackWarning):
        assert knapsack([0.0, 1.0], [1, 1], 5).tolist() == [5, 0]


def test_knapsack_matches_brute_force():
    import itertools

    rng = np.random.default_rng(13)
    for _ in range(60):
        m = int(rng.integers(1, 5))
        p = rng.uniform(0.02, 0.98, m)
        N = int(rng.integers(0, 11))
        lo = int(rng.integers(0, 2)) if N >= m else 0
        hi = int(rng.integers(max(lo, -(-N // m)), N + 1)) if N else None
        best = -1.0
        for ns in itertools.product(range(lo, (hi if hi is not None else N) + 1), repeat=m):
            if sum(ns) == N:
                best = max(best, float(knapsack_value(np.array(ns), p).sum()))
        n = knapsack(p, np.ones(m), N, min_per_prompt=lo, max_per_prompt=hi, fallback=False)
        assert n.sum() == N and n.min() >= lo and (hi is None or n.max() <= hi)
        assert knapsack_value(n, p).sum() == pytest.approx(best, abs=1e-12)


def test_knapsack_bad_input():
    with pytest.raises(ValueError, match="p must be <= 1"):
        knapsack([1.5], [1], 4)
    with pytest.raises(ValueError, match="budget must be >= 0"):
        knapsack([0.5], [1], -1)
    with pytest.raises(ValueError, match="fallback_confidence"):
        knapsack([0.5], [1], 4, fallback_confidence=1.0)
