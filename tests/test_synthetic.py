"""Tests for gvm_mini.synthetic: exact quantities by hand, against finite differences, and against
Monte Carlo (within a stated number of standard errors)."""

import math

import numpy as np
import pytest

from gvm_mini import allocation as A
from gvm_mini import synthetic as S

Z = 4.0  # Monte Carlo checks: |estimate - exact| <= Z standard errors (two-sided p ~ 6e-5 each)


def tiny():
    """2 prompts, 2 rationales, d = 1. At θ = 0 the policy is (1/2, 1/2) for both prompts.

    prompt 0: phi = (0, 1), c = (0, 1)     -> p = 1/2,  Q = (0, 1),     scores (−1/2, 1/2)
    prompt 1: phi = (0, 2), c = (1/2, 1/4) -> p = 3/8,  Q = (2/3, 1/3), scores (−1, 1)
    """
    phi = np.array([[[0.0], [1.0]], [[0.0], [2.0]]])
    c = np.array([[0.0, 1.0], [0.5, 0.25]])
    return S.LatentCoTModel(phi=phi, c=c, theta0=np.zeros(1))


# ----------------------------------------------------------------------------------------------
# hand-checkable numbers
# ----------------------------------------------------------------------------------------------


def test_tiny_model_by_hand():
    mod, th = tiny(), np.zeros(1)
    np.testing.assert_allclose(S.probs(mod, th), [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(S.pass_rates(mod, th), [1 / 2, 3 / 8])
    np.testing.assert_allclose(S.posterior(mod, th), [[0, 1], [2 / 3, 1 / 3]])
    np.testing.assert_allclose(S.scores(mod, th)[:, :, 0], [[-0.5, 0.5], [-1, 1]])
    G1, G2 = S.grad_moments(mod, th)
    np.testing.assert_allclose(G1, [0.5, 1.0])
    np.testing.assert_allclose(G2, [0.25, 1.0])
    assert S.loss(mod, th) == pytest.approx(-(math.log(1 / 2) + math.log(3 / 8)) / 2)
    # ∇L = −(1/m) Σ_i E_Q s_i = −(1/2)(1/2 − 1/3) = −1/12
    np.testing.assert_allclose(S.grad_loss(mod, th), [-1 / 12])
    # V = (1/m²) Σ_i (1/n_i)(G2_i/p_i − μ_i²), n = (2, 4):
    #   (1/4)[(1/2)(1/2 − 1/4) + (1/4)(8/3 − 1/9)] = 27.5/144
    assert S.estimator_variance(mod, [2, 4], th) == pytest.approx(27.5 / 144)
    # Lemma-1 bound (1/4)[ (1/4)/(1/2·2) + 1/(3/8·4) ] = 11/48
    assert S.lemma1_bound(mod, [2, 4], th) == pytest.approx(11 / 48)
    # D = (1, 2) -> 1/γ = max D²/4 = 1
    np.testing.assert_allclose(S.diameters(mod), [1, 2])
    assert S.smoothness(mod) == pytest.approx(1.0) and S.gamma(mod) == pytest.approx(1.0)


def test_weighted_gradient_by_hand():
    """The three M-step weightings on the tiny model at θ = 0 (scores (−1/2, 1/2) and (−1, 1), p = (1/2, 3/8)),
    n = (2, 4), two draws. Draw 1 accepts (0, 2) and (1, 2): per-prompt score sums 1 and 1.
    lemma1: −(1/2)[1/(2·1/2)·1 + 1/(4·3/8)·1] = −5/6; prompt: −(1/2)[1/2 + 1/3] = −5/12; tokens: −2/5.
    Draw 2 accepts nothing for prompt 0 and (1, 0) for prompt 1 (score sum −1):
    lemma1: −(1/2)(2/3)(−1) = 1/3; prompt: −(1/2)(−1) = 1/2; tokens: −(−1)/1 = 1."""
    mod = tiny()
    sc = S.scores(mod, np.zeros(1))
    acc = np.array([[[0, 2], [1, 2]], [[0, 0], [1, 0]]])
    n, p = np.array([2, 4]), S.pass_rates(mod, np.zeros(1))
    want = {"lemma1": (-5 / 6, 1 / 3), "prompt": (-5 / 12, 1 / 2), "tokens": (-2 / 5, 1.0)}
    for w, (g1, g2) in want.items():
        np.testing.assert_allclose(S.weighted_gradient(acc, sc, n, p, w)[:, 0], [g1, g2], rtol=0, atol=1e-15)
        np.testing.assert_allclose(S.weighted_gradient(acc[1], sc, n, p, w), [g2], rtol=0, atol=1e-15)  # one draw
    assert S.weighted_gradient(np.zeros((2, 2), int), sc, n, p, "tokens")[0] == 0.0  # nothing accepted: no step
    with pytest.raises(ValueError, match="weighting must be one of"):
        S.weighted_gradient(acc, sc, n, p, "token")


def test_run_em_steps_with_its_weighting():
    """One E-step, one M-step: θ_1 = θ_0 − η ĝ with ĝ the run's weighting applied to the draw the run made
    (replayed from its seed); the weightings share that draw and differ only in the step. Lemma 1's exact
    variance is recorded only for its own estimator."""
    mod = S.make_model(6, 5, 3, seed=8)
    n = A.uniform(S.pass_rates(mod, mod.theta0), np.ones(6), 30)
    rng = np.random.default_rng(4)
    acc = rng.binomial(rng.multinomial(n, S.probs(mod, mod.theta0)), mod.c)
    steps = {}
    for w in S.WEIGHTINGS:
        tr = S.run_em(mod, "uniform", 30, T=1, k=1, eta=0.3, seed=4, weighting=w)
        g = S.weighted_gradient(acc, S.scores(mod, mod.theta0), n, S.pass_rates(mod, mod.theta0), w)
        np.testing.assert_allclose(tr.theta[1], mod.theta0 - 0.3 * g, rtol=0, atol=1e-14)
        assert tr.weighting == w and tr.accepted[0, 0] == acc.sum()
        assert np.isfinite(tr.variance).all() == (w == "lemma1")
        steps[w] = tr.theta[1]
    assert not np.allclose(steps["lemma1"], steps["tokens"]) and not np.allclose(steps["prompt"], steps["tokens"])
    with pytest.raises(ValueError, match="weighting must be one of"):
        S.run_em(mod, "uniform", 30, T=1, k=1, eta=0.3, seed=4, weighting="mean")


def test_smoothness_constant_is_attained_by_two_point_policy():
    # Hessian of −ln P(y|x,θ) is Var_P(phi); for prompt 1 at θ = 0 it is Var of {0, 2} = 1 = D²/4
    mod = tiny()
    P = S.probs(mod, np.zeros(1))[1]
    x = mod.phi[1, :, 0]
    assert P @ x**2 - (P @ x) ** 2 == pytest.approx(S.smoothness(mod))


def test_covariance_never_exceeds_smoothness():
    mod = S.make_model(5, 7, 3, seed=3)
    rng = np.random.default_rng(0)
    L = S.smoothness(mod)
    for _ in range(20):
        th = 2 * rng.standard_normal(3)
        P = S.probs(mod, th)
        for i in range(mod.m):
            C = np.cov(mod.phi[i].T, aweights=P[i], bias=True)
            assert np.linalg.eigvalsh(C).max() <= L + 1e-12


def test_make_model_graded_difficulty():
    mod = S.make_model(8, 6, 4, seed=0, p_range=(0.01, 0.9))
    p = S.pass_rates(mod, mod.theta0)
    # targets equally spaced in logit between 0.01 and 0.9
    targets = 1 / (1 + np.exp(-np.linspace(math.log(0.01 / 0.99), math.log(0.9 / 0.1), 8)))
    np.testing.assert_allclose(p, targets, rtol=1e-9)
    assert np.all(np.diff(p) > 0) and p[0] < 0.02 and p[1] < 0.05
    assert mod.c.min() >= 0 and mod.c.max() <= 1


def test_bound_loss_is_tight_at_theta_old_and_above_L_elsewhere():
    mod = S.make_model(6, 5, 3, seed=1)
    rng = np.random.default_rng(1)
    th_old = rng.standard_normal(3)
    assert S.bound_loss(mod, th_old, th_old) == pytest.approx(S.loss(mod, th_old), abs=1e-12)
    for _ in range(10):
        th = th_old + rng.standard_normal(3)
        assert S.bound_loss(mod, th, th_old) >= S.loss(mod, th) - 1e-12
        # the two conventions differ by the constant (1/m) Σ H(Q_i)
        Q = S.posterior(mod, th_old)
        H = -(np.where(Q > 0, Q * np.log(np.where(Q > 0, Q, 1)), 0)).sum() / mod.m
        assert S.bound_loss(mod, th, th_old, include_entropy=False) - S.bound_loss(mod, th, th_old) == pytest.approx(H)


# ----------------------------------------------------------------------------------------------
# gradients vs central finite differences
# ----------------------------------------------------------------------------------------------


def _fd(f, x, h=1e-6):
    g = np.zeros_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = h
        g[j] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_match_finite_differences(seed):
    mod = S.make_model(5, 4, 3, seed=seed)
    rng = np.random.default_rng(seed)
    th, th_old = rng.standard_normal(3), rng.standard_normal(3)
    np.testing.assert_allclose(S.grad_loss(mod, th), _fd(lambda t: S.loss(mod, t), th), atol=1e-7)
    np.testing.assert_allclose(
        S.grad_bound_loss(mod, th, th_old), _fd(lambda t: S.bound_loss(mod, t, th_old), th), atol=1e-7
    )
    # per-sample score ∇ ln P(y, z_i | x_i, θ) = ∇ ln P(y | x_i, θ)
    sc = S.scores(mod, th)
    for i, y in [(0, 0), (2, 3), (4, 1)]:
        fd = _fd(lambda t: math.log(S.probs(mod, t)[i, y] * mod.c[i, y]), th)
        np.testing.assert_allclose(sc[i, y], fd, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# exact vs Monte Carlo
# ----------------------------------------------------------------------------------------------


def test_pass_rates_match_rejection_sampling():
    mod = S.make_model(6, 5, 3, seed=4)
    th = np.array([0.3, -0.2, 0.5])
    R = 20000
    p_hat, _ = S.pilot_estimates(mod, th, R, np.random.default_rng(0))
    p = S.pass_rates(mod, th)
    se = np.sqrt(p * (1 - p) / R)
    assert np.all(np.abs(p_hat - p) <= Z * se), (p_hat - p) / se


def test_pilot_G_matches_first_moment():
    mod = S.make_model(4, 5, 3, seed=5, p_range=(0.2, 0.8))
    th = np.zeros(3)
    R = 20000
    _, G_hat = S.pilot_estimates(mod, th, R, np.random.default_rng(1))
    G1, G2 = S.grad_moments(mod, th)
    p = S.pass_rates(mod, th)
    se = np.sqrt((G2 - G1**2) / (p * R))  # sd of ‖∇‖ under Q over ~pR accepted pilots
    assert np.all(np.abs(G_hat - G1) <= Z * se), (G_hat - G1) / se


def test_estimator_mean_and_variance_match_monte_carlo():
    mod = S.make_model(5, 4, 3, seed=6)
    rng = np.random.default_rng(2)
    th_old = np.zeros(3)
    th = 0.3 * rng.standard_normal(3)  # gradient point differs from the sampling point
    n = np.array([3, 1, 4, 2, 5])
    R = 4000
    draws = np.array([S.sample_gradient(mod, n, th, th_old, rng)[0] for _ in range(R)])
    mu = S.estimator_mean(mod, n, th, th_old)
    np.testing.assert_allclose(mu, S.grad_bound_loss(mod, th, th_old))  # unbiased: every n_i >= 1
    se_mean = draws.std(axis=0, ddof=1) / math.sqrt(R)
    assert np.all(np.abs(draws.mean(axis=0) - mu) <= Z * se_mean)
    dev = ((draws - mu) ** 2).sum(axis=1)  # E dev = tr Cov = V exactly
    V = S.estimator_variance(mod, n, th, th_old)
    assert abs(dev.mean() - V) <= Z * dev.std(ddof=1) / math.sqrt(R), (dev.mean(), V)


def test_variance_below_lemma1_bound_at_sampling_point():
    mod = S.make_model(6, 5, 3, seed=7)
    th = np.zeros(3)
    for n in ([1] * 6, [5, 4, 3, 2, 1, 9], [20] * 6):
        assert S.estimator_variance(mod, n, th) <= S.lemma1_bound(mod, n, th)
    # bound = variance_objective(n, p, sqrt(G2), alpha=0) / m²
    n = np.array([5, 4, 3, 2, 1, 9])
    _, G2 = S.grad_moments(mod, th)
    ref = A.variance_objective(n, S.pass_rates(mod, th), np.sqrt(G2), alpha=0.0) / 36
    assert S.lemma1_bound(mod, n, th) == pytest.approx(ref)


def test_dropped_prompt_biases_estimator():
    mod, th = tiny(), np.zeros(1)
    # with n_0 = 0 only prompt 1 contributes: E g = −(1/2) μ_1 = 1/6 instead of −1/12
    np.testing.assert_allclose(S.estimator_mean(mod, [0, 3], th, th), [1 / 6])
    assert S.estimator_variance(mod, [0, 3], th) == pytest.approx((1 / 4) * (1 / 3) * (8 / 3 - 1 / 9))


# ----------------------------------------------------------------------------------------------
# the EM driver
# ----------------------------------------------------------------------------------------------


def test_run_em_records_match_exact_functions():
    mod = S.make_model(6, 5, 3, seed=8)
    tr = S.run_em(mod, "gvm", 30, T=3, k=4, eta=0.5 * S.gamma(mod), seed=0)
    assert tr.theta.shape == (13, 3) and tr.variance.shape == (3, 4) and tr.n.shape == (3, 6)
    assert np.all(tr.n.sum(axis=1) == 30) and np.all(tr.n >= 1)
    np.testing.assert_array_equal(tr.samples, [120, 120, 120])
    np.testing.assert_allclose(tr.bias_sq, 0, atol=1e-30)
    for t in range(3):
        th_old = tr.theta[4 * t]
        np.testing.assert_allclose(tr.p_exact[t], S.pass_rates(mod, th_old))
        np.testing.assert_array_equal(tr.n[t], A.allocate(tr.p[t], tr.G[t], 30, min_per_prompt=1))
        for r in range(4):
            th = tr.theta[4 * t + r]
            np.testing.assert_allclose(tr.grad_bound[t, r], S.grad_bound_loss(mod, th, th_old), atol=1e-14)
            assert tr.variance[t, r] == pytest.approx(S.estimator_variance(mod, tr.n[t], th, th_old))
    np.testing.assert_allclose(tr.loss, [S.loss(mod, th) for th in tr.theta])


def test_run_em_is_reproducible_and_learns():
    mod = S.make_model(8, 6, 4, seed=0)
    a = S.run_em(mod, "uniform", 64, T=6, k=5, eta=S.gamma(mod), seed=3)
    b = S.run_em(mod, "uniform", 64, T=6, k=5, eta=S.gamma(mod), seed=3)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.loss[-1] < a.loss[0] - 0.3  # L(θ0) = 1.86 here; EM reaches about 1.3


def test_run_em_with_pilots_counts_pilot_samples():
    mod = S.make_model(5, 4, 3, seed=9)
    tr = S.run_em(mod, "gvm", 25, T=2, k=3, eta=0.1, seed=0, n_pilot=8)
    np.testing.assert_array_equal(tr.samples, [3 * 25 + 5 * 8] * 2)
    assert np.all(np.isin(tr.p * 8, np.arange(9)))  # p̂ is a multiple of 1/N'


def test_gvm_variance_below_uniform_at_theta0():
    # deterministic: exact V(g) at θ0 for the two allocations of the same budget
    for seed in range(3):
        mod = S.make_model(8, 6, 4, seed=seed)
        th = mod.theta0
        p = S.pass_rates(mod, th)
        G1, _ = S.grad_moments(mod, th)
        n_u = A.uniform(p, G1, 64)
        n_g = A.allocate(p, G1, 64, min_per_prompt=1)
        assert n_g.sum() == n_u.sum() == 64
        assert S.estimator_variance(mod, n_g, th) < 0.9 * S.estimator_variance(mod, n_u, th)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    mod = tiny()
    with pytest.raises(ValueError, match="c must have shape"):
        S.LatentCoTModel(phi=np.zeros((2, 2, 1)), c=np.zeros(2), theta0=np.zeros(1))
    with pytest.raises(ValueError, match="prompt 1"):
        S.LatentCoTModel(phi=np.zeros((2, 2, 1)), c=[[1, 0], [0, 0]], theta0=np.zeros(1))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        S.LatentCoTModel(phi=np.zeros((1, 2, 1)), c=[[1.5, 0]], theta0=np.zeros(1))
    with pytest.raises(ValueError, match="theta must have shape"):
        S.pass_rates(mod, np.zeros(2))
    with pytest.raises(ValueError, match="non-negative integers"):
        S.estimator_variance(mod, [1.5, 2], np.zeros(1))
    with pytest.raises(ValueError, match="p_range"):
        S.make_model(p_range=(0.0, 0.5))
    with pytest.raises(ValueError, match="unknown allocation rule"):
        S.run_em(mod, "nope", 4, T=1, k=1, eta=0.1, seed=0)
    with pytest.raises(ValueError, match="eta"):
        S.run_em(mod, "gvm", 4, T=1, k=1, eta=-1, seed=0)
    with pytest.raises(ValueError, match="n_pilot"):
        S.pilot_estimates(mod, np.zeros(1), 0, 0)
