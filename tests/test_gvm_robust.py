"""Tests for the gvm_robust rule (allocation.gvm_robust and friends) and its estimates
(estimators.robust_estimates): the box-constrained KKT solution of Eq. 7 against a numerical solver,
hand-computed examples, integer rounding, Beta-posterior pass rates and the closed-form cost of a floor.
Derivations: theory/gvm_robust.md."""


import numpy as np
import pytest
from scipy.optimize import minimize

from gvm_mini import allocation as A
from gvm_mini import estimators as E


def _slsqp(w, N, lo, hi):
    """Numerical minimiser of sum_i w_i^2 / n_i s.t. sum n = N, lo <= n <= hi (SLSQP, analytic gradient)."""
    m = w.size
    x0 = np.full(m, N / m)
    s = float(np.sum(w**2 / x0))  # scale the objective to ~1 so that ftol is relative
    res = minimize(
        lambda n: float(np.sum(w**2 / n)) / s, x0, jac=lambda n: -(w**2) / n**2 / s, method="SLSQP",
        bounds=[(lo, hi)] * m,
        constraints=[{"type": "eq", "fun": lambda n: n.sum() - N, "jac": lambda n: np.ones(m)}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    # status 8 ("positive directional derivative for linesearch") = stopped at float precision
    assert res.status in (0, 8), res.message
    return res.x


# ---------------------------------------------------------------------------------------------
# (a) the continuous solution is the optimum: compare with SLSQP on random instances
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_continuous_matches_slsqp(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(3, 9))
    N = int(rng.integers(3 * m, 12 * m))
    p = rng.uniform(0.02, 0.98, m)
    G = rng.lognormal(0.0, 1.0, m)  # wide spread, so floors and caps bind on many instances
    floor = int(rng.integers(1, 3))
    cap_factor = float(rng.uniform(1.2, 2.5))
    x = A.continuous_robust_allocation(p, G, N, floor=floor, cap_factor=cap_factor)
    lo, hi = A.robust_bounds(m, N, floor=floor, cap_factor=cap_factor)
    assert x.sum() == pytest.approx(N, rel=1e-12)
    assert np.all(x >= lo - 1e-12) and np.all(x <= hi + 1e-12)
    w = A.allocation_weights(p, G)
    ref = _slsqp(w, float(N), float(lo), float(hi))
    v_ours = A.variance_objective(x, p, G)
    v_ref = A.variance_objective(ref, p, G)
    assert v_ours <= v_ref * (1 + 1e-9)  # never worse than the solver
    assert v_ours == pytest.approx(v_ref, rel=1e-6)
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-6 * N)


def test_some_random_instances_have_binding_floor_and_cap():
    """Guard for test (a): the random instances do exercise both bounds, not only the interior."""
    hits_lo = hits_hi = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        m = int(rng.integers(3, 9))
        N = int(rng.integers(3 * m, 12 * m))
        p = rng.uniform(0.02, 0.98, m)
        G = rng.lognormal(0.0, 1.0, m)
        floor = int(rng.integers(1, 3))
        cap_factor = float(rng.uniform(1.2, 2.5))
        x = A.continuous_robust_allocation(p, G, N, floor=floor, cap_factor=cap_factor)
        lo, hi = A.robust_bounds(m, N, floor=floor, cap_factor=cap_factor)
        hits_lo += int(np.any(np.isclose(x, lo)))
        hits_hi += int(np.any(np.isclose(x, hi)))
    assert hits_lo >= 3 and hits_hi >= 3


# ---------------------------------------------------------------------------------------------
# (b) a hand-computed example with a binding floor and a binding cap
# ---------------------------------------------------------------------------------------------


def test_hand_example_floor_and_cap_bind():
    # p = 1/2 for all three, so w_i = G_i / sqrt(0.5 + 0.001 * 0.5**-1) = G_i / sqrt(0.502) ∝ G = (1, 10, 40).
    # N = 30, m = 3: uniform share 10; floor 2; cap_factor 1.5 -> hi = ceil(1.5 * 10) = 15.
    # Unconstrained Prop. 1: 30 * (1, 10, 40) / 51 = (0.59, 5.88, 23.53): below the floor and above the cap.
    # Box KKT: prompt 1 at 2, prompt 3 at 15, prompt 2 takes the rest 30 - 2 - 15 = 13 (free).
    # Consistency: the free prompt fixes 1/sqrt(lambda) = 13 / 10 = 1.3 (in units of G), so
    #   prompt 1 would want 1.3 * 1 = 1.3 <= 2 (floor binds) and prompt 3 1.3 * 40 = 52 >= 15 (cap binds).
    # Eq. 7 = sum w_i^2 / n_i = (1/2 + 100/13 + 1600/15) / 0.502.
    p, G, N = [0.5, 0.5, 0.5], [1.0, 10.0, 40.0], 30
    assert A.robust_bounds(3, N, floor=2, cap_factor=1.5) == (2, 15)
    x = A.continuous_robust_allocation(p, G, N, floor=2, cap_factor=1.5)
    np.testing.assert_allclose(x, [2.0, 13.0, 15.0], rtol=1e-12)
    assert A.gvm_robust(p, G, N, floor=2, cap_factor=1.5).tolist() == [2, 13, 15]
    assert A.variance_objective(x, p, G) == pytest.approx((1 / 2 + 100 / 13 + 1600 / 15) / 0.502, rel=1e-12)
    # with floor and cap off it is the paper's rule (Proposition 1) again
    np.testing.assert_allclose(A.continuous_robust_allocation(p, G, N, floor=0, cap_factor=None),
                               np.array([1, 10, 40]) * 30 / 51, rtol=1e-12)


def test_registered_and_same_call_shape():
    assert A.get_rule("gvm_robust") is A.gvm_robust
    # the E-step calls every rule as rule(p, G, budget, alpha=, beta=, min_per_prompt=, max_per_prompt=)
    n = A.get_rule("gvm_robust")([0.5, 0.1, 0.0], [1.0, 1.0, 0.0], 12, alpha=1e-3, beta=2.0,
                                 min_per_prompt=0, max_per_prompt=None)
    assert n.sum() == 12 and n.min() >= 2


# ---------------------------------------------------------------------------------------------
# (c) integer rounding keeps the sum and the bounds; p in {0, 1} still gets the floor
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_integer_sum_and_bounds(seed):
    rng = np.random.default_rng(100 + seed)
    m = int(rng.integers(2, 40))
    N = int(rng.integers(2 * m, 16 * m))
    p = rng.uniform(0, 1, m)
    p[rng.random(m) < 0.2] = 0.0  # all-wrong pilots
    p[rng.random(m) < 0.1] = 1.0  # all-right pilots
    G = rng.lognormal(0, 1, m) * (rng.random(m) > 0.1)
    n = A.gvm_robust(p, G, N)
    lo, hi = A.robust_bounds(m, N)
    assert n.dtype.kind == "i"
    assert int(n.sum()) == N
    assert n.min() >= lo and n.max() <= hi
    assert lo == min(2, N // m)
    x = A.continuous_robust_allocation(p, G, N)
    assert np.all(np.abs(n - x) < 1.0)  # each count is the floor or the ceiling of its real value
    w = A.allocation_weights(p, G)
    assert np.all(n[w == 0] == lo) or np.all(n[w > 0] == hi)  # zero-weight prompts get exactly the floor


def test_p0_gets_the_floor_and_p1_its_weight():
    # p = 0 has weight 0: the floor, 2. The other 14 go by the weights G / sqrt(p + alpha p^-1) =
    # (0.9995, 1.4114, 1.9842) for p = (1, 1/2, 1/4): 14 w / sum w = (3.18, 4.50, 6.32), all inside
    # [2, cap 2 * 16/4 = 8]; rounding gives (3, 5, 6) (the remainder goes to the largest fraction .50).
    # So p = 1 is not held at the floor: it gets its Proposition-1 share.
    p, G, N = [0.0, 1.0, 0.5, 0.25], [1.0, 1.0, 1.0, 1.0], 16
    assert A.allocate(p, G, N).tolist()[0] == 0  # the paper's rule: p = 0 gets nothing
    assert A.gvm_robust(p, G, N).tolist() == [2, 3, 5, 6]


def test_water_filling_cannot_lose_samples_at_extreme_weight_scales():
    # w = (1e70, ~1.4, ~1.4): a bisection bracketed in [0, 1] never reached lam ~ 1e-69 and returned 44
    # samples for a budget of 30 (clipped to [39, 2, 2]). Exact, without a cap: the small weights sit at
    # the floor 2 and the large one takes the other 26.
    n = A.gvm_robust([0.5] * 3, [1e70, 1.0, 1.0], 30, cap_factor=None)
    assert n.tolist() == [26, 2, 2]
    n = A.gvm_robust([0.5] * 3, [1e70, 1.0, 1.0], 30)  # cap 20 binds: the other two share 10 equally
    assert n.tolist() == [20, 5, 5]
    for scale in (1e-300, 1e-30, 1.0, 1e30, 1e300):
        n = A.gvm_robust([0.5, 0.2, 0.9, 0.05], np.array([1.0, 3.0, 0.5, 2.0]) * scale, 40)
        assert n.sum() == 40 and n.tolist() == A.gvm_robust([0.5, 0.2, 0.9, 0.05], [1.0, 3.0, 0.5, 2.0], 40).tolist()
        x = A.continuous_allocation([0.5, 0.2, 0.9, 0.05], np.array([1.0, 3.0, 0.5, 2.0]) * scale, 40)
        assert x.sum() == pytest.approx(40, rel=1e-12)



def test_water_filling_with_weights_more_than_1e308_apart():
    # G = (1e300, 1e-10, 3e-10) at equal p: the small weights' kinks lo / w_i and hi / w_i overflow to inf.
    # The large prompt is full at the cap 2 * 30 / 3 = 20 and the other two share 10 in the ratio 1 : 3
    # (2.5, 7.5, both above the floor 2); the earlier code returned 60 samples and failed its assertion.
    x = A._water_fill(np.array([1e300, 1e-10, 3e-10]), 14.0, 0.0, 10.0)
    assert x.tolist() == pytest.approx([10.0, 1.0, 3.0], rel=1e-12)
    x = A._water_fill(np.array([1.0, 1e-310, 3e-310]), 14.0, 0.0, 10.0)  # subnormal weights: the same split
    assert x.tolist() == pytest.approx([10.0, 1.0, 3.0], rel=1e-9)
    n = A.gvm_robust([0.5] * 3, [1e300, 1e-10, 1e-10], 30)
    assert n.tolist() == [20, 5, 5]


def test_floor_lowered_when_the_budget_cannot_pay_it_but_explicit_minimum_is_strict():
    # 5 prompts, 7 samples: 7 // 5 = 1, so the default floor 2 drops to 1
    n = A.gvm_robust([0.5, 0.0, 0.0, 0.0, 0.0], [1, 0, 0, 0, 0], 7)
    assert n.tolist() == [3, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="min_per_prompt"):
        A.gvm_robust([0.5] * 5, [1] * 5, 7, min_per_prompt=2)
    with pytest.raises(ValueError, match="cap_factor"):
        A.gvm_robust([0.5] * 5, [1] * 5, 10, cap_factor=0.5)
    with pytest.raises(ValueError, match="floor"):
        A.gvm_robust([0.5] * 5, [1] * 5, 10, floor=-1)
    with pytest.raises(ValueError, match="budget"):
        A.gvm_robust([0.5] * 5, [1] * 5, 10.5)


def test_all_zero_weights_spread_evenly_without_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert A.gvm_robust([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 10).tolist() == [4, 3, 3]


# ---------------------------------------------------------------------------------------------
# (d) p estimates: Beta posterior, never 0 or 1, hand-computed
# ---------------------------------------------------------------------------------------------


def test_posterior_mean_hand_example_with_moment_prior():
    # k = (0, 2, 2, 4) of n = 4: mu = 1/2; raw rates (0, 1/2, 1/2, 1), s2 = (1/4 + 0 + 0 + 1/4)/4 = 1/8;
    # h = 1/4; rho = (s2 / (mu (1 - mu)) - h) / (1 - h) = (1/2 - 1/4) / (3/4) = 1/3; a + b = 2 >= 1 (no
    # raise), a = b = 1. Posterior means (k + 1) / (4 + 2) = (1/6, 1/2, 1/2, 5/6).
    p, _ = E.robust_estimates([0, 2, 2, 4], [4, 4, 4, 4], np.zeros(4))
    np.testing.assert_allclose(p, [1 / 6, 1 / 2, 1 / 2, 5 / 6], rtol=1e-12)


def test_weak_moment_prior_is_raised_to_one_observation():
    # k = (0, 2, 4) of n = (4, 4, 4): mu = 1/2, s2 = 1/6, h = 1/4, rho = (2/3 - 1/4) / (3/4) = 5/9, so the fit
    # has a + b = 4/5 < 1: raised to a = b = 1/2 (mean kept). Posterior (k + 1/2) / 5 = (0.1, 0.5, 0.9).
    a, b = E.fit_beta_prior([0, 2, 4], [4, 4, 4])
    assert (a, b) == pytest.approx((0.4, 0.4), rel=1e-12)
    p, _ = E.robust_estimates([0, 2, 4], [4, 4, 4], np.zeros(3))
    np.testing.assert_allclose(p, [0.1, 0.5, 0.9], rtol=1e-12)
    # asymmetric: k = (0, 1, 4): mu = 5/12, rho = 23/35, a + b = 12/23 < 1 -> a = 5/12, b = 7/12;
    # posterior (k + 5/12) / 5 = (1/12, 17/60, 53/60)
    p, _ = E.robust_estimates([0, 1, 4], [4, 4, 4], np.zeros(3))
    np.testing.assert_allclose(p, [1 / 12, 17 / 60, 53 / 60], rtol=1e-12)
    p_off, _ = E.robust_estimates([0, 1, 4], [4, 4, 4], np.zeros(3), min_prior_strength=0)
    np.testing.assert_allclose(p_off, np.array([5, 28, 97]) / 104, rtol=1e-12)  # the bare fit, a + b = 12/23


@pytest.mark.parametrize("k", [[0, 0, 0, 8, 8, 8], [0, 8, 0, 8]])
def test_bimodal_batch_does_not_collapse_to_a_point_mass(k):
    # every prompt all-right or all-wrong: the moment fit gives rho -> 1, a + b ~ 1e-6 and p ~ 6e-8 after 0/8
    # (a point mass at 0). With the strength raised to 1 (mean 1/2: a = b = 1/2): 0.5 / 9 and 8.5 / 9.
    n = [8] * len(k)
    p, _ = E.robust_estimates(k, n, np.zeros(len(k)))
    expect = np.where(np.array(k) == 0, 0.5 / 9, 8.5 / 9)
    np.testing.assert_allclose(p, expect, rtol=1e-12)
    a, b = E.fit_beta_prior(k, n)
    assert a + b < 1e-5  # the bare fit does collapse: the raise is what keeps p away from 0


def test_history_counts_are_summed_into_the_posterior():
    # pilot 1/4 then 3/8 training samples on the next visit (no pilot): the posterior sees 4/12; G keeps the
    # first visit's pilot evidence (one accepted pilot) and the second visit adds none
    h = {}
    E.history_accumulate(h, [7, 8], [1, 0], [4, 4], [40, 40], [2.0, 0.0], 0, G_count=[1, 0])
    E.history_accumulate(h, [7, 8], [3, 0], [8, 4], [80, 40], [2.0, 0.0], 1, G_count=[0, 0])
    assert (h["7"]["k"], h["7"]["n"], h["7"]["tok"]) == (4, 12, 120)
    assert (h["7"]["G"], h["7"]["gn"]) == (2.0, 1)
    assert (h["8"]["k"], h["8"]["n"], h["8"]["G"], h["8"]["gn"]) == (0, 8, 0.0, 0)
    known, k, n, tok, G, gn = E.history_lookup(h, [7, 8], min_samples=4, with_G_count=True)
    p, Gh = E.robust_estimates(k, n, G, G_count=gn, prior=(1.0, 1.0))
    np.testing.assert_allclose(p, [5 / 14, 1 / 10])  # (4 + 1)/(12 + 2), (0 + 1)/(8 + 2)
    np.testing.assert_allclose(Gh, [2.0, 2.0])  # pool = 2 (one pilot); prompt 7: (1*2 + 1*2)/2; prompt 8: the pool


def test_G_is_weighted_by_the_accepted_pilots_that_measured_it():
    # the reproduction: prompt 7 had no accepted pilot (G = 0) but 3 accepted training samples;
    # prompt 8 had 2 accepted pilots with G = 2 (4 accepted in all). Weighting G by all accepted samples gave
    # next-visit G-hat (0.286, 1.829) and a pooled G of 8/7 = 1.14. Weighted by accepted pilots: pool = 2,
    # prompt 7 (no evidence) -> 2, prompt 8 -> (2*2 + 1*2)/3 = 2.
    h = {}
    E.history_accumulate(h, [7, 8], [3, 4], [12, 12], [120, 120], [0.0, 2.0], 0, G_count=[0, 2])
    known, k, n, tok, G, gn = E.history_lookup(h, [7, 8], min_samples=8, with_G_count=True)
    assert known.all() and gn.tolist() == [0.0, 2.0]
    _, Gh = E.iteration_estimates(k, n, G, known, estimator="robust", G_count=gn)
    np.testing.assert_allclose(Gh, [2.0, 2.0])
    # a second visit from the history adds no G evidence: prompt 7 stays at the pool, not 0.118
    E.history_accumulate(h, [7, 8], [5, 1], [8, 8], [80, 80], G, 1, G_count=[0, 0])
    known, k, n, tok, G, gn = E.history_lookup(h, [7, 8], min_samples=8, with_G_count=True)
    _, Gh = E.iteration_estimates(k, n, G, known, estimator="robust", G_count=gn)
    np.testing.assert_allclose(Gh, [2.0, 2.0])


def test_history_accumulate_needs_the_pilot_count():
    with pytest.raises(TypeError):
        E.history_accumulate({}, [7], [3], [12], [120], [0.0], 0)  # G_count has no safe default
    with pytest.raises(ValueError, match="G_count"):
        E.history_accumulate({}, [7], [3], [12], [120], [0.0], 0, G_count=[-1])


@pytest.mark.parametrize(
    "k,n",
    [([0, 0, 0], [4, 4, 8]), ([4, 4, 8], [4, 4, 8]), ([0, 0], [0, 0]), ([0, 1, 0, 4], [4, 4, 4, 4]),
     ([0, 8, 0, 8], [8, 8, 8, 8])],
)
def test_p_stays_a_pseudo_observation_away_from_0_and_1(k, n):
    # a prior of mean mu worth at least one observation keeps p_i >= min(mu, 1 - mu) / (n_i + 1) away from
    # 0 and 1 (mu: the pooled rate; the Jeffreys 1/2 when it is 0 or 1 or there is no sample). 0/8 in the
    # bimodal batch: 1/18; the bare moment fit put [0, 8, 0, 8]'s zeros at 6e-8.
    p, _ = E.robust_estimates(k, n, np.zeros(len(k)))
    tot = sum(n)
    mu = sum(k) / tot if tot and 0 < sum(k) < tot else 0.5
    bound = min(mu, 1 - mu) / (np.asarray(n, float) + 1) - 1e-12
    assert np.all(p >= bound) and np.all(1 - p >= bound), p


def test_degenerate_batch_uses_jeffreys():
    # every pilot failed: no moment fit, Beta(1/2, 1/2) -> 0.5 / (n + 1)
    p, _ = E.robust_estimates([0, 0], [4, 9], [0.0, 0.0])
    np.testing.assert_allclose(p, [0.1, 0.05])
    p, _ = E.robust_estimates([4, 9], [4, 9], [1.0, 1.0])
    np.testing.assert_allclose(p, [0.9, 0.95])


def test_shrink_p_off_is_the_raw_rate():
    p, _ = E.robust_estimates([0, 1, 4, 0], [4, 4, 4, 0], np.zeros(4), shrink_p=False)
    np.testing.assert_allclose(p, [0.0, 0.25, 1.0, 5 / 12])  # n = 0: pooled 5/12


def test_G_shrinkage_hand_example():
    # c = k = (0, 2, 4), G = (0, 2, 1): Gbar = (2*2 + 4*1) / 6 = 4/3; kappa = 1:
    # G_1 = (0 + 4/3) / 1 = 4/3, G_2 = (4 + 4/3) / 3 = 16/9, G_3 = (4 + 4/3) / 5 = 16/15
    _, G = E.robust_estimates([0, 2, 4], [4, 4, 4], [0.0, 2.0, 1.0], prior=(1, 1))
    np.testing.assert_allclose(G, [4 / 3, 16 / 9, 16 / 15])
    _, G0 = E.robust_estimates([0, 2, 4], [4, 4, 4], [0.0, 2.0, 1.0], G_strength=0.0)
    np.testing.assert_allclose(G0, [4 / 3, 2.0, 1.0])  # kappa = 0: the `bayes` estimator's G
    _, Gr = E.robust_estimates([0, 2, 4], [4, 4, 4], [0.0, 2.0, 1.0], pool_G=False)
    np.testing.assert_allclose(Gr, [0.0, 2.0, 1.0])
    _, Gc = E.robust_estimates([0, 2, 4], [4, 4, 4], [0.0, 2.0, 1.0], G_count=[0, 1, 1], G_strength=0.0)
    np.testing.assert_allclose(Gc, [1.5, 2.0, 1.0])  # pool over G_count: (2 + 1) / 2


def test_one_unlucky_pilot_is_pulled_back():
    # 20 prompts at 2..6 of 8 and one at 1/8. The paper's rule reads 1/8 as a hard prompt and gives it
    # 14 samples, twice the others'. The moment fit (a, b) = (20.89, 22.43) says the batch's rates are
    # close together, so the posterior puts that prompt at (1 + a) / (8 + a + b) = 0.426 and gvm_robust,
    # with the floor and the cap OFF, gives it 8 like its neighbours: the shrinkage does it.
    k = [2, 3, 4, 5, 6] * 4 + [1]
    n = [8] * 21
    p, G = E.robust_estimates(k, n, [1.0] * 21)
    a, b = E.fit_beta_prior(k, n)
    assert (a, b) == pytest.approx((20.8868, 22.4340), abs=1e-4)
    assert p[-1] == pytest.approx((1 + a) / (8 + a + b), rel=1e-12)
    assert A.allocate(np.array(k) / 8, [1.0] * 21, 8 * 21)[-1] == 14
    assert A.gvm_robust(p, G, 8 * 21, floor=0, cap_factor=None)[-1] == 8


def test_zero_of_four_is_not_starved_by_its_estimate():
    # the 0/4 prompt: the paper's p = 0 gives weight 0 and n = 0 whatever the floor; the posterior gives
    # it a positive p and G (the pool), so even with the floor OFF gvm_robust draws samples for it
    k = [2] * 20 + [0]
    n = [8] * 20 + [4]
    p, G = E.robust_estimates(k, n, [1.0] * 20 + [0.0])
    assert p[-1] > 0 and G[-1] > 0
    assert A.gvm_robust(p, G, 8 * 21, floor=0)[-1] >= 1
    assert A.allocate([ki / ni for ki, ni in zip(k, n)], [1.0] * 20 + [0.0], 8 * 21)[-1] == 0


def test_robust_estimates_bad_input():
    with pytest.raises(ValueError, match="G_count"):
        E.robust_estimates([0, 1], [2, 2], [0, 1], G_count=[1])
    with pytest.raises(ValueError, match="G_strength"):
        E.robust_estimates([0, 1], [2, 2], [0, 1], G_strength=-1)
    with pytest.raises(ValueError, match="prior"):
        E.robust_estimates([0, 1], [2, 2], [0, 1], prior=(0, 1))
    with pytest.raises(ValueError, match="k_i <= n_i"):
        E.robust_estimates([3, 1], [2, 2], [0, 1])


# ---------------------------------------------------------------------------------------------
# (e) the closed-form cost of a floor equals Eq. 7 evaluated directly
# ---------------------------------------------------------------------------------------------


def test_floor_cost_hand_example():
    # p = 1/2: w ∝ G = (1, 1, 8) (common factor 1/0.502 in Eq. 7), N = 10, floor 2.
    # Unconstrained: n = 10 * (1, 1, 8) / 10 = (1, 1, 8), V* = W^2 / N = 100 / 10 = 10.
    # Floor: F = {1, 2} at 2, the third takes 6: V = 1/2 + 1/2 + 64/6 = 11.667; cost = 5/3 (/ 0.502).
    p, G = [0.5, 0.5, 0.5], [1.0, 1.0, 8.0]
    assert A.floor_cost(p, G, 10, floor=2) == pytest.approx((5 / 3) / 0.502, rel=1e-12)
    x = A.continuous_robust_allocation(p, G, 10, floor=2, cap_factor=None)
    np.testing.assert_allclose(x, [2, 2, 6])


@pytest.mark.parametrize("seed", range(15))
def test_floor_cost_matches_eq7(seed):
    rng = np.random.default_rng(200 + seed)
    m = int(rng.integers(2, 12))
    N = int(rng.integers(2 * m, 10 * m))
    f = int(rng.integers(0, N // m + 1))
    p = rng.uniform(0, 1, m)
    p[rng.random(m) < 0.2] = 0.0  # zero-weight prompts: they cost only the samples they take
    G = rng.lognormal(0, 1.5, m)
    if A.allocation_weights(p, G).sum() == 0:
        p[0], G[0] = 0.5, 1.0
    direct = A.variance_objective(A.continuous_robust_allocation(p, G, N, floor=f, cap_factor=None), p, G) \
        - A.variance_objective(A.continuous_allocation(p, G, N), p, G)
    assert A.floor_cost(p, G, N, floor=f) == pytest.approx(direct, rel=1e-9, abs=1e-12)
    assert A.floor_cost(p, G, N, floor=f) >= -1e-12


def test_floor_cost_of_zero_weight_prompts_only():
    # two weighted prompts (w ∝ 1, 1) and two p = 0 prompts; N = 12, floor 3: the p = 0 prompts take 6,
    # the others share 6: V = W^2/6 vs W^2/12 -> cost = W^2 (1/6 - 1/12) = W^2 / 12, W^2 = 4 / 0.502
    p, G = [0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]
    assert A.floor_cost(p, G, 12, floor=3) == pytest.approx((4 / 0.502) / 12, rel=1e-12)
