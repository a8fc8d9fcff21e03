"""Theorems 1-3 and Remark 1 of arXiv 2505.02391 (theory/convergence.md), evaluated on recorded EM runs.

Notation: E-step ``t = 1..T`` is followed by ``k`` M-steps at ``θ_{kt−k+r}``, ``r = 0..k−1``;
``L_t`` is the E-step bound with ``Q^t`` fixed and ``g`` the Lemma-1 stochastic gradient. A
trajectory is a :class:`gvm_mini.synthetic.Trajectory` (anything with ``grad_bound`` (T, k, d),
``variance`` (T, k), ``loss``, ``eta``, ``gamma``, ``k`` works). Its arrays are 0-based: the
paper's ``(t, r)`` is ``[t − 1, r]``.

Per run, the functions below return the *realised* sums; the expectations ``E`` in the theorems
are taken by averaging over independent runs (seeds), which :func:`check_theorem` does and turns
into a margin with a standard error.

===================  ==============================================================  ==================
quantity             definition (theory/convergence.md)                                           function
===================  ==============================================================  ==================
Δ1(k, T)             ``Σ_t Σ_{r<k} ‖∇L_t(θ_{kt−k+r})‖²``                              :func:`delta1`
Δ2(k, T)             ``Σ_t ‖Σ_{r<k} ∇L_t(θ_{kt−k+r})‖²``                              :func:`delta2`
Δ3(k, T)             ``Σ_t Σ_{r=1..k} ‖Σ_{j<r} ∇L_t(θ_{kt−k+j})‖²``                   :func:`delta3`
Ω(k, T)              ``Σ_t Σ_{r<k} V(g_{kt−k+r})``                                     :func:`omega`
Theorem 1 RHS        ``−(η/2) Δ1 + (η²/(2γ)) Ω``, ``0 < η ≤ γ``                          :func:`theorem1_rhs`
Theorem 2 RHS        ``−(η/(2k)) Δ2 − (η/(4k)) Δ1 + (η/(4k)) Ω``, ``0 < η ≤ γ/2``, convex :func:`theorem2_rhs`
Theorem 3 RHS        ``−(Hη²/(2k)) Δ3 − (η/(4k)) Δ1 + (η/(8k)) Ω``, H-strongly convex  :func:`theorem3_rhs`
Eq. C1 (sharp)       ``−η(1 − η/(2γ)) Δ1 + (η²/(2γ)) Ω``, any ``η > 0``, smooth only  :func:`descent_rhs`
Eq. C2 (Thm 2 fixed) ``−(η/(2k)) Δ2 − (η/(4k)) Δ1 + (η²/(2γ)) Ω``, ``0 < η ≤ γ/2``     :func:`theorem2_corrected_rhs`
Eq. C3 (step range)  reconstructed Theorem 2 holds verbatim for ``0 < η ≤ γ/(2k)``      :func:`theorem2_step_limit`
negativity           ``Ω < (γ/η) Δ1`` ⇔ Theorem 1 RHS < 0                              :func:`negativity_condition`
Remark 1             lower bound on ``Σ_i n_i p_i`` under Proposition 1                  :func:`remark1_lower_bound`
===================  ==============================================================  ==================

Caveat (documented in ``theory/convergence.md``): the Theorem-2 and Theorem-3 right-hand sides are
this project's reconstruction (theory/convergence.md) from a garbled extraction. For ``k ≥ 2`` the reconstructed Theorem 2 is
not a valid bound for every smooth convex loss (a one-dimensional quadratic with additive gradient
noise violates it, see :func:`quadratic_counterexample`); on the synthetic models it holds with a
wide margin because ``1/γ = max D²/4`` is a loose smoothness constant. Theorem 1 is tight (equality
for that quadratic at ``η = γ``). The corrected Theorem 2 (Eqs. C1-C3, proved in
``theory/convergence.md``) replaces the Ω coefficient ``η/(4k)`` by ``η²/(2γ)``, or keeps it and
shrinks the step range to ``η ≤ γ/(2k)``; Eq. C1 holds with equality on the quadratic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "delta1",
    "delta2",
    "delta3",
    "omega",
    "loss_change",
    "theorem1_rhs",
    "theorem2_rhs",
    "theorem3_rhs",
    "descent_rhs",
    "theorem2_corrected_rhs",
    "theorem2_step_limit",
    "omega_threshold",
    "negativity_condition",
    "remark1_constant",
    "remark1_lower_bound",
    "TheoremCheck",
    "check_theorem",
    "quadratic_counterexample",
]


def _grads(traj) -> np.ndarray:
    g = np.asarray(traj.grad_bound, dtype=np.float64)
    if g.ndim != 3:
        raise ValueError(f"trajectory.grad_bound must have shape (T, k, d), got {g.shape}")
    return g


def delta1(traj) -> float:
    """Δ1(k, T) = Σ_t Σ_{r=0..k−1} ‖∇L_t(θ_{kt−k+r})‖² (theory/convergence.md; one run, no expectation)."""
    return float((_grads(traj) ** 2).sum())


def delta2(traj) -> float:
    """Δ2(k, T) = Σ_t ‖Σ_{r=0..k−1} ∇L_t(θ_{kt−k+r})‖² (Theorem 2's extra decrease; one run)."""
    return float((_grads(traj).sum(axis=1) ** 2).sum())


def delta3(traj) -> float:
    """Δ3(k, T) = Σ_t Σ_{r=1..k} ‖Σ_{j=0..r−1} ∇L_t(θ_{kt−k+j})‖² (Theorem 3; one run)."""
    return float((np.cumsum(_grads(traj), axis=1) ** 2).sum())


def omega(traj) -> float:
    """Ω(k, T) = Σ_t Σ_{r=0..k−1} V(g_{kt−k+r}), the variance term that GVM shrinks (theory/convergence.md)."""
    v = np.asarray(traj.variance, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"trajectory.variance must have shape (T, k), got {v.shape}")
    return float(v.sum())


def loss_change(traj) -> float:
    """Left-hand side of Theorems 1-3 for one run: ``L(θ_kT) − L(θ_0)`` (``L(θ*)`` cancels)."""
    L = np.asarray(traj.loss, dtype=np.float64)
    return float(L[-1] - L[0])


def _check_step(eta: float, gamma: float, limit: float, name: str) -> None:
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    if eta > limit * gamma * (1 + 1e-12):
        raise ValueError(f"{name} needs 0 < eta <= {limit:g}*gamma = {limit * gamma:.6g}, got eta = {eta!r}")


def _check_k(k) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def theorem1_rhs(delta1: float, omega: float, *, eta: float, gamma: float) -> float:
    """Theorem 1 (``−ln P(y,z|x,θ)`` 1/γ-smooth, ``0 < η ≤ γ``)::

        E[L(θ_kT) − L(θ*)] − E[L(θ_0) − L(θ*)] ≤ −(η/2) Δ1(k,T) + (η²/(2γ)) Ω(k,T)
    """
    _check_step(eta, gamma, 1.0, "Theorem 1")
    return float(-0.5 * eta * delta1 + eta**2 / (2.0 * gamma) * omega)


def theorem2_rhs(delta1: float, delta2: float, omega: float, *, eta: float, gamma: float, k: int) -> float:
    """Theorem 2 (1/γ-smooth and convex, ``0 < η ≤ γ/2``; the reconstruction in theory/convergence.md)::

        E[L(θ_kT) − L(θ*)] − E[L(θ_0) − L(θ*)] ≤ −(η/(2k)) Δ2 − (η/(4k)) Δ1 + (η/(4k)) Ω
    """
    _check_step(eta, gamma, 0.5, "Theorem 2")
    k = _check_k(k)
    return float(-eta / (2 * k) * delta2 - eta / (4 * k) * delta1 + eta / (4 * k) * omega)


def theorem3_rhs(
    delta1: float, delta3: float, omega: float, *, eta: float, gamma: float, k: int, H: float
) -> float:
    """Theorem 3 (App. D; 1/γ-smooth and H-strongly convex, ``0 < η ≤ min{γ/2, 1/(4kH)}``)::

        ... ≤ −(H η²/(2k)) Δ3 − (η/(4k)) Δ1 + (η/(8k)) Ω
    """
    _check_step(eta, gamma, 0.5, "Theorem 3")
    k = _check_k(k)
    if not (np.isfinite(H) and H > 0):
        raise ValueError(f"H must be a finite number > 0, got {H!r}")
    if eta > 1.0 / (4 * k * H) * (1 + 1e-12):
        raise ValueError(f"Theorem 3 needs eta <= 1/(4kH) = {1 / (4 * k * H):.6g}, got {eta!r}")
    return float(-H * eta**2 / (2 * k) * delta3 - eta / (4 * k) * delta1 + eta / (8 * k) * omega)


def descent_rhs(delta1: float, omega: float, *, eta: float, gamma: float) -> float:
    """Eq. C1 of ``theory/convergence.md`` (the summed descent lemma; sharp form of Theorem 1)::

        E[L(θ_kT)] − E[L(θ_0)] ≤ −η (1 − η/(2γ)) Δ1(k,T) + (η²/(2γ)) Ω(k,T)

    Needs only ``1/γ``-smoothness and an unbiased gradient, and holds for every ``η > 0`` (for
    ``η ≥ 2γ`` the Δ1 coefficient is ``≥ 0`` and no decrease is promised). For ``η ≤ γ`` it implies
    Theorem 1; for ``η ≤ γ/2`` it implies the corrected Theorem 2 (:func:`theorem2_corrected_rhs`).
    Equality holds for the 1-D quadratic with additive noise (:func:`quadratic_counterexample`)."""
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    return float(-eta * (1.0 - eta / (2.0 * gamma)) * delta1 + eta**2 / (2.0 * gamma) * omega)


def theorem2_corrected_rhs(
    delta1: float, delta2: float, omega: float, *, eta: float, gamma: float, k: int
) -> float:
    """Corrected Theorem 2, Eq. C2 of ``theory/convergence.md`` (1/γ-smooth; ``0 < η ≤ γ/2``)::

        E[L(θ_kT) − L(θ*)] − E[L(θ_0) − L(θ*)] ≤ −(η/(2k)) Δ2 − (η/(4k)) Δ1 + (η²/(2γ)) Ω

    The reconstructed Theorem 2 (:func:`theorem2_rhs`) with the Ω coefficient ``η/(4k)`` replaced by
    ``η²/(2γ)`` (``≤ η/4``). Proof: Eq. C1 (:func:`descent_rhs`) and ``Δ2 ≤ k Δ1`` (Cauchy-Schwarz)
    give ``η(1 − η/(2γ)) Δ1 ≥ (3η/4) Δ1 ≥ (η/(2k)) Δ2 + (η/(4k)) Δ1``. With ``η ≤ γ/(2k)``
    (:func:`theorem2_step_limit`) ``η²/(2γ) ≤ η/(4k)``, so the reconstructed RHS then holds too."""
    _check_step(eta, gamma, 0.5, "the corrected Theorem 2")
    k = _check_k(k)
    return float(-eta / (2 * k) * delta2 - eta / (4 * k) * delta1 + eta**2 / (2.0 * gamma) * omega)


def theorem2_step_limit(k: int, gamma: float) -> float:
    """Eq. C3 of ``theory/convergence.md``: ``γ/(2k)``, the step size up to which the reconstructed
    Theorem 2 (:func:`theorem2_rhs`, Ω coefficient ``η/(4k)``) is proved. On the 1-D quadratic it
    first fails at ``η ≈ 0.58γ/k`` (k = 2) to ``≈ 0.74γ/k`` (k = 50), so ``η = O(γ/k)`` is needed."""
    k = _check_k(k)
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    return float(gamma / (2 * k))


def omega_threshold(delta1: float, *, eta: float, gamma: float) -> float:
    """``(γ/η) Δ1``: Theorem 1's RHS is negative iff ``Ω < (γ/η) Δ1`` [INFERRED explicit form of
    the paper's "with large enough sample size the RHS is negative"]."""
    _check_step(eta, gamma, 1.0, "Theorem 1")
    return float(gamma / eta * delta1)


def negativity_condition(delta1: float, omega: float, *, eta: float, gamma: float) -> bool:
    """``Ω < (γ/η) Δ1`` — Theorem 1 then guarantees an expected decrease of ``L``."""
    return bool(omega < omega_threshold(delta1, eta=eta, gamma=gamma))


def remark1_constant(alpha: float, beta: float) -> float:
    """``sqrt(c*)`` with ``c* = min_{0<p≤1} (p + α p^{1−β})``.

    For ``α(β−1) < 1`` the minimum is at ``p* = (α(β−1))^{1/β}`` with value ``p* β/(β−1)``, so
    ``sqrt(c*) = sqrt(β/(β−1)) (α(β−1))^{1/(2β)}`` (``= √2 α^{1/4}`` for β = 2); otherwise it is at
    ``p = 1``, ``c* = 1 + α``. [INFERRED: the paper's §3.1; theory/variance_and_prop1.md only says the constant "involves √2 and
    (α(β−1))^{1/(2β)}".]"""
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if not (np.isfinite(beta) and beta > 1):
        raise ValueError(f"beta must be a finite number > 1, got {beta!r}")
    a = alpha * (beta - 1.0)
    if a < 1.0:
        return float(math.sqrt(beta / (beta - 1.0)) * a ** (1.0 / (2.0 * beta)))
    return float(math.sqrt(1.0 + alpha))


def remark1_lower_bound(p, G, budget: float, *, alpha: float = 1e-3, beta: float = 2.0) -> float:
    """Remark 1: under the (real-valued) Proposition-1 allocation, the expected number of accepted
    samples satisfies [reconstructed, see :func:`remark1_constant`]::

        Σ_i n_i p_i  ≥  N · sqrt(c*) · Σ_i (G_i / Σ_l G_l) · p_i / sqrt(p_i + α / p_i^{β−1})

    Proof: ``Σ_i n_i p_i = N Σ_i w_i p_i / Σ_l w_l`` and ``w_l = G_l / sqrt(p_l + α p_l^{1−β}) ≤
    G_l / sqrt(c*)``. Prompts with ``p_i = 0`` contribute 0. Compare with
    ``allocation.expected_accepted(allocation.continuous_allocation(p, G, N), p)``."""
    p = np.asarray(p, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    if p.ndim != 1 or p.shape != G.shape:
        raise ValueError(f"p and G must be 1-D of the same length, got {p.shape} and {G.shape}")
    if not (np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))):
        raise ValueError("p must be finite and in [0, 1]")
    if not (np.all(np.isfinite(G)) and np.all(G >= 0)) or G.sum() <= 0:
        raise ValueError("G must be finite, >= 0, and not all 0")
    if not (np.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a finite number >= 0, got {budget!r}")
    c = remark1_constant(alpha, beta)
    ok = p > 0
    terms = np.zeros_like(p)
    with np.errstate(over="ignore"):  # p**(1-beta) -> inf for tiny p: the term is then 0
        terms[ok] = G[ok] * p[ok] / np.sqrt(p[ok] + alpha * p[ok] ** (1.0 - beta))
    return float(budget * c * terms.sum() / G.sum())


# ----------------------------------------------------------------------------------------------
# checking a theorem over seeds
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TheoremCheck:
    """Result of :func:`check_theorem`. ``lhs``/``rhs`` are means over seeds of ``L(θ_kT) − L(θ_0)``
    and of the theorem's right-hand side; ``margin = rhs − lhs`` (the theorem says ``E margin ≥ 0``)
    with standard error ``margin_se`` over ``n_seeds`` runs. ``consistent``: the runs do not
    contradict the theorem at ``z`` standard errors (``margin ≥ −z·se``); ``confirmed``: they show
    it holds at that level (``margin ≥ z·se``)."""

    theorem: int | str
    lhs: float
    rhs: float
    margin: float
    margin_se: float
    n_seeds: int
    z: float

    @property
    def consistent(self) -> bool:
        return self.margin >= -self.z * self.margin_se

    @property
    def confirmed(self) -> bool:
        return self.margin >= self.z * self.margin_se


def check_theorem(trajs: Sequence, theorem: int | str = 1, *, H: float | None = None, z: float = 3.0) -> TheoremCheck:
    """Evaluate Theorem ``theorem`` on runs that differ only in their seed: 1, 2, 3 (theory/convergence.md as
    reconstructed), ``"2c"`` (corrected Theorem 2, :func:`theorem2_corrected_rhs`) or ``"C1"``
    (:func:`descent_rhs`).

    Per run ``s``: ``margin_s = RHS_s − (L_s(θ_kT) − L_s(θ_0))`` with ``RHS_s`` from the run's own
    Δ's and Ω; by linearity the mean over runs estimates ``E RHS − E LHS`` and the standard error is
    ``std(margin_s, ddof=1)/sqrt(S)``."""
    trajs = list(trajs)
    if len(trajs) < 2:
        raise ValueError("check_theorem needs at least 2 runs (seeds) to estimate a standard error")
    if theorem not in (1, 2, 3, "2c", "C1"):
        raise ValueError(f"theorem must be 1, 2, 3, '2c' or 'C1', got {theorem!r}")
    if theorem == 3 and H is None:
        raise ValueError("Theorem 3 needs the strong-convexity constant H")
    keys = {(t.eta, t.gamma, t.k, np.shape(t.variance)) for t in trajs}
    if len(keys) != 1:
        raise ValueError("all runs must share eta, gamma, k and T")
    eta, gam, k = trajs[0].eta, trajs[0].gamma, trajs[0].k
    lhs, rhs = [], []
    for tr in trajs:
        d1, om = delta1(tr), omega(tr)
        if theorem == 1:
            r = theorem1_rhs(d1, om, eta=eta, gamma=gam)
        elif theorem == 2:
            r = theorem2_rhs(d1, delta2(tr), om, eta=eta, gamma=gam, k=k)
        elif theorem == "2c":
            r = theorem2_corrected_rhs(d1, delta2(tr), om, eta=eta, gamma=gam, k=k)
        elif theorem == "C1":
            r = descent_rhs(d1, om, eta=eta, gamma=gam)
        else:
            r = theorem3_rhs(d1, delta3(tr), om, eta=eta, gamma=gam, k=k, H=H)
        lhs.append(loss_change(tr))
        rhs.append(r)
    lhs, rhs = np.array(lhs), np.array(rhs)
    margins = rhs - lhs
    return TheoremCheck(
        theorem=theorem, lhs=float(lhs.mean()), rhs=float(rhs.mean()), margin=float(margins.mean()),
        margin_se=float(margins.std(ddof=1) / np.sqrt(margins.size)), n_seeds=int(margins.size), z=float(z),
    )


def quadratic_counterexample(k: int, *, gamma: float = 1.0, eta: float | None = None, V: float = 1.0) -> dict:
    """Exact expectations for ``L(θ) = θ²/(2γ)`` in one dimension (1/γ-smooth, convex), one E-step
    with ``L_t = L``, start ``θ_0 = 0``, ``k`` SGD steps ``θ ← θ − η(θ/γ + ξ)``, ``E ξ = 0``,
    ``Var ξ = V``. Returns ``lhs = E L(θ_k) − L(θ_0)``, ``delta1``, ``delta2``, ``omega`` and the
    Theorem-1/2 right-hand sides, the corrected Theorem 2 (Eq. C2) and Eq. C1. Shows that the
    reconstructed Theorem 2 fails for ``k ≥ 2`` (e.g. ``k = 2``, ``η = γ/2``: lhs = 5γV/32 > rhs =
    5γV/64) while Theorem 1 holds (with equality at ``η = γ``) and Eq. C1 holds with equality for
    every ``η`` and ``k`` (the quadratic's descent lemma is an identity)."""
    k = _check_k(k)
    eta = gamma / 2 if eta is None else float(eta)
    a = 1.0 - eta / gamma
    # E θ_r θ_s for r <= s: θ_s = a^{s-r} θ_r + noise independent of θ_r
    var = np.array([eta**2 * V * sum(a ** (2 * j) for j in range(r)) for r in range(k + 1)])
    cov = np.array([[var[min(r, s)] * a ** abs(r - s) for s in range(k)] for r in range(k)])
    d1 = float(np.trace(cov)) / gamma**2
    d2 = float(cov.sum()) / gamma**2
    om = k * V
    out = {"lhs": float(var[k] / (2 * gamma)), "delta1": d1, "delta2": d2, "omega": om,
           "descent_rhs": descent_rhs(d1, om, eta=eta, gamma=gamma)}
    if eta <= gamma:
        out["theorem1_rhs"] = theorem1_rhs(d1, om, eta=eta, gamma=gamma)
    if eta <= gamma / 2:
        out["theorem2_rhs"] = theorem2_rhs(d1, d2, om, eta=eta, gamma=gamma, k=k)
        out["theorem2_corrected_rhs"] = theorem2_corrected_rhs(d1, d2, om, eta=eta, gamma=gamma, k=k)
    return out
