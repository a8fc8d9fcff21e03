"""Tests for gvm_mini.theory: Δ/Ω by hand, Theorems 1-2 on EM runs over seeds (margin from the
seeds' standard error), GVM's Ω below uniform's at equal budget, Remark 1."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gvm_mini import allocation as A
from gvm_mini import synthetic as S
from gvm_mini import theory as Th

Z = 3.0
SEEDS = range(16)


def hand_traj():
    """T = 1 E-step, k = 2 M-steps, d = 1: ∇L_1 at the two iterates = 1 and 2, V(g) = 0.5, 0.25,
    L along the run 3.0 -> 2.5 -> 2.0, η = 0.5, γ = 1."""
    return SimpleNamespace(
        grad_bound=np.array([[[1.0], [2.0]]]), variance=np.array([[0.5, 0.25]]),
        loss=np.array([3.0, 2.5, 2.0]), eta=0.5, gamma=1.0, k=2,
    )


def test_deltas_and_omega_by_hand():
    tr = hand_traj()
    assert Th.delta1(tr) == 5.0  # 1² + 2²
    assert Th.delta2(tr) == 9.0  # (1 + 2)²
    assert Th.delta3(tr) == 10.0  # 1² + (1 + 2)²
    assert Th.omega(tr) == 0.75
    assert Th.loss_change(tr) == -1.0
    # Theorem 1: −(0.5/2)·5 + (0.25/2)·0.75 = −1.15625
    assert Th.theorem1_rhs(5.0, 0.75, eta=0.5, gamma=1.0) == pytest.approx(-1.15625)
    # Theorem 2 (k = 2): −(0.5/4)·9 − (0.5/8)·5 + (0.5/8)·0.75 = −1.390625
    assert Th.theorem2_rhs(5.0, 9.0, 0.75, eta=0.5, gamma=1.0, k=2) == pytest.approx(-1.390625)
    # Theorem 3 (H = 0.25, η ≤ 1/(4kH) = 0.5): −(0.25·0.25/4)·10 − 0.3125 + (0.5/16)·0.75
    assert Th.theorem3_rhs(5.0, 10.0, 0.75, eta=0.5, gamma=1.0, k=2, H=0.25) == pytest.approx(
        -0.15625 - 0.3125 + 0.0234375
    )
    assert Th.omega_threshold(5.0, eta=0.5, gamma=1.0) == 10.0
    assert Th.negativity_condition(5.0, 9.99, eta=0.5, gamma=1.0)
    assert not Th.negativity_condition(5.0, 10.0, eta=0.5, gamma=1.0)


def test_deltas_on_tiny_model_one_step_by_hand():
    # tiny 2x2 model (see test_synthetic.tiny): at θ0 = 0, ∇L_1(θ0) = −1/12 and V(g) = 27.5/144 for n = (2, 4)
    phi = np.array([[[0.0], [1.0]], [[0.0], [2.0]]])
    mod = S.LatentCoTModel(phi=phi, c=np.array([[0.0, 1.0], [0.5, 0.25]]), theta0=np.zeros(1))
    rule = lambda p, G, N, **kw: np.array([2, 4])  # noqa: E731
    tr = S.run_em(mod, rule, 6, T=1, k=1, eta=0.5, seed=0)
    assert Th.delta1(tr) == pytest.approx(1 / 144)
    assert Th.omega(tr) == pytest.approx(27.5 / 144)
    assert Th.theorem1_rhs(Th.delta1(tr), Th.omega(tr), eta=0.5, gamma=1.0) == pytest.approx(
        -0.25 / 144 + 0.125 * 27.5 / 144
    )


def runs(model, rule, eta, k, T=8, budget=64):
    return [S.run_em(model, rule, budget, T=T, k=k, eta=eta, seed=s) for s in SEEDS]


@pytest.fixture(scope="module")
def model():
    return S.make_model(8, 6, 4, seed=0)


@pytest.mark.parametrize("rule", ["uniform", "gvm"])
@pytest.mark.parametrize("frac", [1.0, 0.5])
def test_theorem1_holds_over_seeds(model, rule, frac):
    trs = runs(model, rule, frac * S.gamma(model), k=5)
    chk = Th.check_theorem(trs, 1, z=Z)
    assert chk.confirmed, chk  # E[RHS − LHS] > 3 standard errors above 0


@pytest.mark.parametrize("rule", ["uniform", "gvm"])
@pytest.mark.parametrize("k", [1, 5])
def test_theorem2_holds_over_seeds(model, rule, k):
    # −ln P(y,z|x,θ) is convex here (log-sum-exp minus linear), so Theorem 2 applies for η ≤ γ/2
    trs = runs(model, rule, 0.5 * S.gamma(model), k=k)
    chk = Th.check_theorem(trs, 2, z=Z)
    assert chk.confirmed, chk


def test_theorem1_is_tight_and_reconstructed_theorem2_is_not_universal():
    # 1-D quadratic, additive noise: Theorem 1 holds with equality at η = γ ...
    q = Th.quadratic_counterexample(2, eta=1.0)
    assert q["lhs"] == pytest.approx(0.5) and q["theorem1_rhs"] == pytest.approx(0.5)
    # ... and at k = 1 Theorem 2 is exact too (lhs = η²V/(2γ) = 1/8)
    q1 = Th.quadratic_counterexample(1)
    assert q1["lhs"] == pytest.approx(0.125) and q1["theorem2_rhs"] == pytest.approx(0.125)
    # for k = 2, η = γ/2: lhs = 5/32, Theorem 1 RHS = 3/16 (holds), reconstructed Theorem 2 RHS = 5/64 (fails)
    q2 = Th.quadratic_counterexample(2)
    assert q2["lhs"] == pytest.approx(5 / 32)
    assert q2["theorem1_rhs"] == pytest.approx(3 / 16)
    assert q2["theorem2_rhs"] == pytest.approx(5 / 64)


def test_quadratic_counterexample_matches_simulation():
    # the exact expectations of quadratic_counterexample agree with simulated SGD (Z standard errors)
    rng = np.random.default_rng(0)
    R, k, gam, eta = 200000, 3, 1.0, 0.5
    th = np.zeros(R)
    for _ in range(k):
        th = th - eta * (th / gam + rng.standard_normal(R))
    L = th**2 / (2 * gam)
    q = Th.quadratic_counterexample(k, gamma=gam, eta=eta)
    assert abs(L.mean() - q["lhs"]) <= 4 * L.std(ddof=1) / math.sqrt(R)


def test_gvm_omega_below_uniform_at_equal_budget():
    for seed in (0, 1):
        mod = S.make_model(8, 6, 4, seed=seed)
        eta = S.gamma(mod)
        om_u = np.array([Th.omega(t) for t in runs(mod, "uniform", eta, k=5, T=6)])
        g = runs(mod, "gvm", eta, k=5, T=6)
        om_g = np.array([Th.omega(t) for t in g])
        assert all(t.n.sum(axis=1).tolist() == [64] * 6 for t in g)
        diff = om_g - om_u  # paired by seed
        assert diff.mean() + Z * diff.std(ddof=1) / math.sqrt(diff.size) < 0, (om_g.mean(), om_u.mean())


def test_corrected_theorem2_by_hand_on_the_counterexample():
    # k = 2, η = γ/2 = 1/2, V = 1: Δ1 = Δ2 = 1/4, Ω = 2, E L(θ_2) − L(θ_0) = 5/32.
    # C2: −(0.5/4)(1/4) − (0.5/8)(1/4) + (0.25/2)(2) = −2/64 − 1/64 + 16/64 = 13/64 ≥ 10/64 (holds)
    # C1: −0.5(1 − 0.25)(1/4) + (0.25/2)(2) = −6/64 + 16/64 = 10/64 = lhs (equality)
    q = Th.quadratic_counterexample(2)
    assert q["theorem2_corrected_rhs"] == pytest.approx(13 / 64)
    assert q["descent_rhs"] == pytest.approx(10 / 64) and q["lhs"] == pytest.approx(10 / 64)
    assert Th.theorem2_corrected_rhs(0.25, 0.25, 2.0, eta=0.5, gamma=1.0, k=2) == pytest.approx(13 / 64)
    assert Th.descent_rhs(0.25, 2.0, eta=0.5, gamma=1.0) == pytest.approx(10 / 64)
    assert Th.theorem2_step_limit(5, 1.0) == pytest.approx(0.1)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
def test_corrected_theorem2_on_the_quadratic_exact(k):
    # exact expectations, no sampling: C1 is an identity for the quadratic, C2 holds on the whole range
    # η ≤ γ/2, the reconstructed bound holds for η ≤ γ/(2k) (C3) and fails at η = γ/2 when k ≥ 2
    for gam in (1.0, 0.3):
        for frac in np.linspace(0.01, 0.5, 50):
            q = Th.quadratic_counterexample(k, gamma=gam, eta=frac * gam, V=2.0)
            assert q["descent_rhs"] == pytest.approx(q["lhs"], rel=1e-12, abs=1e-15)
            assert q["theorem2_corrected_rhs"] >= q["lhs"] * (1 - 1e-12)
            if frac * gam <= Th.theorem2_step_limit(k, gam):
                assert q["theorem2_rhs"] >= q["lhs"] * (1 - 1e-12), (k, frac)
        if k >= 2:
            q = Th.quadratic_counterexample(k, gamma=gam, eta=gam / 2)
            assert q["theorem2_rhs"] < q["lhs"]


def test_step_limit_is_needed_up_to_a_constant_on_the_quadratic():
    # the reconstructed bound fails on the quadratic above ≈ 0.58γ/k (k = 2) .. 0.74γ/k (k = 50): so a
    # range η = O(γ/k) is necessary for the Ω coefficient η/(4k), and C3's γ/(2k) is within 1.5x of it
    for k, first_fail in [(2, 0.29054), (5, 0.13357), (50, 0.014847)]:
        ok = Th.quadratic_counterexample(k, eta=0.99 * first_fail)
        bad = Th.quadratic_counterexample(k, eta=1.01 * first_fail)
        assert ok["theorem2_rhs"] >= ok["lhs"] and bad["theorem2_rhs"] < bad["lhs"], k


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20), st.floats(1e-3, 1.0), st.floats(0.0, 10.0), st.floats(0.0, 1.0), st.floats(0.0, 10.0))
def test_proof_chain_C1_implies_C2_implies_C3(k, frac, d1, align, om):
    # the algebra of the proof in theory/convergence.md, on any numbers with Δ2 ≤ k Δ1 (Cauchy-Schwarz):
    # for η ≤ γ/2, C1's RHS ≤ C2's RHS; for η ≤ γ/(2k), C2's RHS ≤ the reconstructed Theorem 2's RHS
    gam = 2.0
    d2 = align * k * d1
    eta = frac * gam / 2
    c1 = Th.descent_rhs(d1, om, eta=eta, gamma=gam)
    c2 = Th.theorem2_corrected_rhs(d1, d2, om, eta=eta, gamma=gam, k=k)
    assert c1 <= c2 + 1e-12
    eta_s = frac * Th.theorem2_step_limit(k, gam)
    c2s = Th.theorem2_corrected_rhs(d1, d2, om, eta=eta_s, gamma=gam, k=k)
    assert c2s <= Th.theorem2_rhs(d1, d2, om, eta=eta_s, gamma=gam, k=k) + 1e-12


@pytest.mark.parametrize("rule", ["uniform", "gvm"])
@pytest.mark.parametrize("k", [1, 5])
def test_corrected_theorem2_holds_over_seeds(model, rule, k):
    gam = S.gamma(model)
    chk = Th.check_theorem(runs(model, rule, 0.5 * gam, k=k), "2c", z=Z)  # C2 on its whole range
    assert chk.confirmed, chk
    chk = Th.check_theorem(runs(model, rule, Th.theorem2_step_limit(k, gam), k=k), 2, z=Z)  # C3
    assert chk.confirmed, chk


@pytest.mark.parametrize("rule", ["uniform", "gvm"])
@pytest.mark.parametrize("frac", [1.0, 4.0, 16.0])
def test_descent_bound_holds_outside_the_theorems_step_range(model, rule, frac):
    # C1 needs only smoothness, for every η > 0: also at 4γ and 16γ, where Theorems 1-2 say nothing
    chk = Th.check_theorem(runs(model, rule, frac * S.gamma(model), k=5), "C1", z=Z)
    assert chk.confirmed, chk


def test_check_theorem_margin_by_hand():
    a, b = hand_traj(), hand_traj()
    b.loss = np.array([3.0, 2.5, 2.5])  # LHS −0.5 instead of −1.0
    chk = Th.check_theorem([a, b], 1)
    # RHS −1.15625 for both; margins RHS − LHS = −0.15625 and −0.65625, mean −0.40625, se 0.25
    assert chk.rhs == pytest.approx(-1.15625) and chk.lhs == pytest.approx(-0.75)
    assert chk.margin == pytest.approx(-0.40625)
    assert chk.margin_se == pytest.approx(0.25)
    assert chk.consistent and not chk.confirmed


def test_remark1_by_hand():
    # p = (1/2, 1/8), G = (1, 1), N = 16, α = 1e-3, β = 2: sqrt(c*) = √2 · α^(1/4)
    c = math.sqrt(2) * 1e-3**0.25
    assert Th.remark1_constant(1e-3, 2.0) == pytest.approx(c)
    t = 0.5 / math.sqrt(0.5 + 1e-3 / 0.5) + 0.125 / math.sqrt(0.125 + 1e-3 / 0.125)
    bound = Th.remark1_lower_bound([0.5, 0.125], [1, 1], 16)
    assert bound == pytest.approx(16 * c * t / 2)  # ≈ 2.109
    actual = A.expected_accepted(A.continuous_allocation([0.5, 0.125], [1, 1], 16), [0.5, 0.125])
    assert actual == pytest.approx(4.039, abs=1e-3) and bound <= actual
    # c* is the minimum of p + α p^(1−β): at p* = (α(β−1))^(1/β) it equals c*²
    for a, b in [(1e-3, 2.0), (1e-2, 3.5), (1e-4, 5.0)]:
        ps = (a * (b - 1)) ** (1 / b)
        assert ps + a * ps ** (1 - b) == pytest.approx(Th.remark1_constant(a, b) ** 2)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.01, 10.0)), min_size=1, max_size=12),
    st.sampled_from([(1e-4, 2.0), (1e-3, 2.0), (1e-2, 3.5), (1e-3, 5.0)]),
)
def test_remark1_bound_holds(pg, ab):
    p = np.array([x for x, _ in pg])
    G = np.array([g for _, g in pg])
    alpha, beta = ab
    if not np.any(p > 0):
        return
    n = A.continuous_allocation(p, G, 1000, alpha=alpha, beta=beta)
    assert Th.remark1_lower_bound(p, G, 1000, alpha=alpha, beta=beta) <= A.expected_accepted(n, p) * (1 + 1e-9)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="Theorem 1 needs"):
        Th.theorem1_rhs(1.0, 1.0, eta=2.0, gamma=1.0)
    with pytest.raises(ValueError, match="Theorem 2 needs"):
        Th.theorem2_rhs(1.0, 1.0, 1.0, eta=0.6, gamma=1.0, k=1)
    with pytest.raises(ValueError, match="1/\\(4kH\\)"):
        Th.theorem3_rhs(1.0, 1.0, 1.0, eta=0.5, gamma=1.0, k=2, H=1.0)
    with pytest.raises(ValueError, match="k must be"):
        Th.theorem2_rhs(1.0, 1.0, 1.0, eta=0.1, gamma=1.0, k=0)
    with pytest.raises(ValueError, match="at least 2 runs"):
        Th.check_theorem([hand_traj()], 1)
    with pytest.raises(ValueError, match="needs the strong-convexity"):
        Th.check_theorem([hand_traj(), hand_traj()], 3)
    with pytest.raises(ValueError, match="alpha"):
        Th.remark1_lower_bound([0.5], [1.0], 8, alpha=0.0)
    with pytest.raises(ValueError, match="corrected Theorem 2 needs"):
        Th.theorem2_corrected_rhs(1.0, 1.0, 1.0, eta=0.6, gamma=1.0, k=1)
    with pytest.raises(ValueError, match="eta must be"):
        Th.descent_rhs(1.0, 1.0, eta=0.0, gamma=1.0)
    with pytest.raises(ValueError, match="theorem must be"):
        Th.check_theorem([hand_traj(), hand_traj()], "2b")
