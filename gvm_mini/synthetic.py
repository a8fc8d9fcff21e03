"""Exact log-linear latent chain-of-thought models for checking the GVM theory (arXiv 2505.02391).

Model (the paper's §2, Eq. 1; theory/em_view.md, Eq. 1). Prompt ``x_i`` (``i = 1..m``) has ``K`` candidate rationales ``y`` with
features ``phi[i, y] ∈ R^d``; the policy is log-linear and the answer model is fixed::

    P(y | x_i, θ)   = softmax_y(θ · phi[i, y])
    P(z_i | y)      = c[i, y] ∈ [0, 1]          (independent of θ: "is rationale y correct?")

so every quantity in the paper has a closed form here:

=====================================  =====================================================  =======================
quantity                               formula                                                function
=====================================  =====================================================  =======================
pass rate / acceptance rate            ``p_i(θ) = Σ_y P(y|x_i,θ) c_iy``                       :func:`pass_rates`
posterior (E-step, Eq. 4)              ``Q_i(y) = P(y|x_i,θ) c_iy / p_i(θ)``                  :func:`posterior`
per-sample gradient                    ``∇ ln P(y,z_i|x_i,θ) = phi_iy − E_{P(·|x_i,θ)} phi_i`` :func:`scores`
G_i (Alg. 2, first moment)/2nd moment  ``E_{Q_i}‖∇‖``, ``E_{Q_i}‖∇‖²``                       :func:`grad_moments`
marginal loss (Eq. 2)                  ``L(θ) = −(1/m) Σ_i ln p_i(θ)``                        :func:`loss`
E-step bound ``L_t`` (Eq. 3)           ``−(1/m) Σ_i E_{Q_i^t} ln[P(y,z_i|x_i,θ)/Q_i^t(y)]``   :func:`bound_loss`
Lemma-1 estimator (Eq. 6)              one draw                                               :func:`sample_gradient`
M-step weightings (Eq. 6, Alg. 1,      ``1/(n_i p_i)``, ``1/|D_i|``, token mean                   :func:`weighted_gradient`
token mean)
its exact mean / variance              ``E ĝ``, ``tr Cov ĝ``                                  :func:`estimator_mean`,
                                                                                               :func:`estimator_variance`
Lemma-1 variance bound                 ``(1/m²) Σ_i E_{Q_i}‖∇‖² / (p_i n_i)``                 :func:`lemma1_bound`
smoothness constant ``1/γ``            ``max_i D_i² / 4``                                     :func:`smoothness`
Algorithm 1 (GVM-EM)                   E-step + k M-steps with rejection sampling             :func:`run_em`
=====================================  =====================================================  =======================

Normalisation: the data distribution ``d0`` is uniform over the ``m`` prompts, so ``L``, ``L_t`` and
the stochastic gradient carry a ``1/m`` (as in theory/convergence.md); Eq. 6 as printed has no ``1/m``, so
our variances are the paper's divided by ``m²``.

Smoothness (derivation, [INFERRED]). ``−ln P(y|x_i,θ) = logsumexp_y'(θ·phi_iy') − θ·phi_iy`` has
Hessian ``Cov_{P(·|x_i,θ)}(phi_i)`` (``ln c_iy`` does not depend on θ). For a unit vector ``u``,
``u·phi_iy`` takes values in an interval of length at most ``D_i = max_{y,y'} ‖phi_iy − phi_iy'‖``,
and a random variable confined to an interval of length ``D`` has variance ``≤ D²/4``
(Popoviciu). Hence ``0 ⪯ ∇² (−ln P(y,z_i|x_i,θ)) ⪯ (D_i²/4) I`` for every ``θ``: each per-sample
loss is convex and ``1/γ``-smooth with ``1/γ = max_i D_i²/4``. The same constant bounds the
Hessians of ``L_t`` (an average of them) and of ``L`` (``∇²(−ln p_i) = Cov_P − Cov_{Q_i}``, between
``−D_i²/4`` and ``D_i²/4``). ``L`` itself is not convex in general; ``L_t`` is.

Everything is plain NumPy on small arrays; a whole EM run of the size used in the tests takes
milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logit, logsumexp

from .allocation import get_rule

__all__ = [
    "LatentCoTModel",
    "make_model",
    "probs",
    "pass_rates",
    "posterior",
    "scores",
    "grad_moments",
    "loss",
    "grad_loss",
    "bound_loss",
    "grad_bound_loss",
    "estimator_mean",
    "estimator_variance",
    "lemma1_bound",
    "sample_gradient",
    "WEIGHTINGS",
    "weighted_gradient",
    "pilot_estimates",
    "diameters",
    "smoothness",
    "gamma",
    "Trajectory",
    "run_em",
]


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LatentCoTModel:
    """Arrays of a log-linear latent-CoT model: ``phi`` (m, K, d) features, ``c`` (m, K) per-rationale
    correctness ``P(z_i|y)``, ``theta0`` (d,) the initial parameters. Checked on construction."""

    phi: np.ndarray
    c: np.ndarray
    theta0: np.ndarray

    def __post_init__(self):
        phi = np.asarray(self.phi, dtype=np.float64)
        c = np.asarray(self.c, dtype=np.float64)
        theta0 = np.asarray(self.theta0, dtype=np.float64)
        if phi.ndim != 3:
            raise ValueError(f"phi must have shape (m, K, d), got {phi.shape}")
        m, K, d = phi.shape
        if m < 1 or K < 1 or d < 1:
            raise ValueError(f"phi must have m, K, d >= 1, got shape {phi.shape}")
        if c.shape != (m, K):
            raise ValueError(f"c must have shape (m, K) = {(m, K)}, got {c.shape}")
        if theta0.shape != (d,):
            raise ValueError(f"theta0 must have shape (d,) = {(d,)}, got {theta0.shape}")
        for name, a in (("phi", phi), ("c", c), ("theta0", theta0)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} must be finite")
        if np.any(c < 0) or np.any(c > 1):
            raise ValueError("c must lie in [0, 1] (it is the probability P(z_i | y))")
        dead = np.flatnonzero(c.max(axis=1) == 0)
        if dead.size:
            raise ValueError(
                f"prompt {int(dead[0])} has c[i, :] == 0: p_i = 0 for every θ and its posterior "
                "(Eq. 4) is undefined"
            )
        for name, a in (("phi", phi), ("c", c), ("theta0", theta0)):
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    @property
    def m(self) -> int:
        return self.phi.shape[0]

    @property
    def K(self) -> int:
        return self.phi.shape[1]

    @property
    def d(self) -> int:
        return self.phi.shape[2]


def make_model(
    m: int = 8,
    K: int = 6,
    d: int = 4,
    seed: int = 0,
    *,
    p_range: tuple[float, float] = (0.01, 0.9),
    sharpness: float = 2.0,
    feature_scale: float = 1.0,
) -> LatentCoTModel:
    """A model with graded difficulty: ``p_i(theta0)`` is exactly ``p_range[0]`` for prompt 0 up to
    ``p_range[1]`` for prompt ``m-1``, equally spaced in logit (so several prompts sit near 0).

    ``phi ~ N(0, feature_scale²)``; a hidden unit direction ``u`` decides which rationales are right:
    ``c_iy = sigmoid(sharpness · u·phi_iy + b_i)`` with the offset ``b_i`` solved so that
    ``p_i(0) = mean_y c_iy`` hits its target. ``theta0 = 0`` (uniform policy), and moving ``θ``
    along ``u`` raises every ``p_i``, so EM has something to learn.
    """
    for name, v, lo in (("m", m, 1), ("K", K, 1), ("d", d, 1)):
        if isinstance(v, bool) or int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    lo_p, hi_p = map(float, p_range)
    if not (0.0 < lo_p <= hi_p < 1.0):
        raise ValueError(f"p_range must satisfy 0 < low <= high < 1, got {p_range!r}")
    if not np.isfinite(sharpness) or sharpness < 0:
        raise ValueError(f"sharpness must be finite and >= 0, got {sharpness!r}")
    if not np.isfinite(feature_scale) or feature_scale <= 0:
        raise ValueError(f"feature_scale must be finite and > 0, got {feature_scale!r}")
    rng = np.random.default_rng(seed)
    phi = feature_scale * rng.standard_normal((m, K, d))
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    base = sharpness * (phi @ u)  # (m, K)
    targets = expit(np.linspace(logit(lo_p), logit(hi_p), m)) if m > 1 else np.array([lo_p])
    c = np.empty((m, K))
    for i in range(m):
        f = lambda b: expit(base[i] + b).mean() - targets[i]  # noqa: E731  (increasing in b)
        b = brentq(f, -60.0 - base[i].max(), 60.0 - base[i].min(), xtol=1e-14, rtol=1e-14)
        c[i] = expit(base[i] + b)
    return LatentCoTModel(phi=phi, c=c, theta0=np.zeros(d))


def _theta(model: LatentCoTModel, theta, name: str = "theta") -> np.ndarray:
    t = np.asarray(theta, dtype=np.float64)
    if t.shape != (model.d,):
        raise ValueError(f"{name} must have shape ({model.d},), got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{name} must be finite")
    return t


def _counts(model: LatentCoTModel, n, name: str = "n") -> np.ndarray:
    a = np.asarray(n, dtype=np.float64)
    if a.shape != (model.m,):
        raise ValueError(f"{name} must have shape ({model.m},), got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a != np.round(a)):
        raise ValueError(f"{name} must hold non-negative integers, got {a.tolist()}")
    return a.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# exact quantities
# ----------------------------------------------------------------------------------------------


def _log_probs(model: LatentCoTModel, theta: np.ndarray) -> np.ndarray:
    logits = model.phi @ theta
    return logits - logsumexp(logits, axis=1, keepdims=True)


def probs(model: LatentCoTModel, theta) -> np.ndarray:
    """Policy ``P(y|x_i,θ) = softmax_y(θ·phi_iy)``, shape (m, K) (Eq. 1, first factor)."""
    return np.exp(_log_probs(model, _theta(model, theta)))


def pass_rates(model: LatentCoTModel, theta) -> np.ndarray:
    """Acceptance rate ``p_i(θ) = Σ_y P(y|x_i,θ) c_iy = P(z_i|x_i,θ)`` (the paper's §2, Eq. 1; theory/em_view.md), shape (m,)."""
    return (probs(model, theta) * model.c).sum(axis=1)


def posterior(model: LatentCoTModel, theta) -> np.ndarray:
    """E-step posterior, Eq. 4: ``Q_i(y) = P(y|x_i,θ) c_iy / p_i(θ)``, shape (m, K)."""
    joint = probs(model, theta) * model.c
    return joint / joint.sum(axis=1, keepdims=True)


def scores(model: LatentCoTModel, theta) -> np.ndarray:
    """Per-sample gradients ``∇_θ ln P(y, z_i|x_i, θ) = phi_iy − E_{P(·|x_i,θ)} phi_i``, shape (m, K, d).

    (``ln c_iy`` does not depend on θ, so only the policy factor contributes.)"""
    P = probs(model, theta)
    mean = np.einsum("ik,ikd->id", P, model.phi)
    return model.phi - mean[:, None, :]


def grad_moments(model: LatentCoTModel, theta, theta_old=None) -> tuple[np.ndarray, np.ndarray]:
    """``(G1, G2)`` with ``G1_i = E_{y~Q_i}‖∇ ln P(y,z_i|x_i,θ)‖`` (the ``G_i`` of Algorithm 2) and
    ``G2_i = E_{y~Q_i}‖∇ ln P(y,z_i|x_i,θ)‖²`` (the second moment in Lemma 1's bound).

    ``Q_i`` is the posterior at ``theta_old`` (default: ``theta``), the gradients are at ``theta``."""
    theta = _theta(model, theta)
    theta_old = theta if theta_old is None else _theta(model, theta_old, "theta_old")
    Q = posterior(model, theta_old)
    sq = (scores(model, theta) ** 2).sum(axis=2)
    return (Q * np.sqrt(sq)).sum(axis=1), (Q * sq).sum(axis=1)


def loss(model: LatentCoTModel, theta) -> float:
    """Eq. 2 with ``d0`` uniform over the prompts: ``L(θ) = −(1/m) Σ_i ln p_i(θ)``."""
    return float(-np.mean(np.log(pass_rates(model, theta))))


def grad_loss(model: LatentCoTModel, theta) -> np.ndarray:
    """``∇L(θ) = −(1/m) Σ_i E_{Q_i(θ)} ∇ ln P(y,z_i|x_i,θ)`` (Fisher's identity; Eq. 5 at ``θ_old = θ``)."""
    return grad_bound_loss(model, theta, theta)


def bound_loss(model: LatentCoTModel, theta, theta_old, *, include_entropy: bool = True) -> float:
    """The E-step upper bound ``L_t`` of Eq. 3 with ``Q^t = Q(θ_old)`` fixed.

    ``include_entropy=True`` (default): ``L_t(θ) = −(1/m) Σ_i Σ_y Q_i^t(y) ln[P(y,z_i|x_i,θ)/Q_i^t(y)]``,
    the negative ELBO, which is ``>= L(θ)`` for all θ and ``= L(θ_old)`` at ``θ = θ_old``; this is the
    ``L_t`` that the proof of Theorem 1 chains (``L(θ_kt) ≤ L_t(θ_kt)``, ``L_t(θ_kt−k) = L(θ_kt−k)``).
    ``include_entropy=False``: ``J_Q(θ) = −(1/m) Σ_i E_{Q_i^t} ln P(y,z_i|x_i,θ)``, theory/convergence.md's
    ``L_t`` as printed; it exceeds the full bound by the constant ``(1/m) Σ_i H(Q_i^t)``, so the gradients agree.
    Terms with ``Q_i^t(y) = 0`` (``c_iy = 0``) contribute 0."""
    theta = _theta(model, theta)
    Q = posterior(model, _theta(model, theta_old, "theta_old"))
    with np.errstate(divide="ignore"):
        log_joint = _log_probs(model, theta) + np.log(model.c)
        log_q = np.log(Q)
    pos = Q > 0
    terms = np.where(pos, Q * (log_joint - (log_q if include_entropy else 0.0)), 0.0)
    return float(-terms.sum() / model.m)


def grad_bound_loss(model: LatentCoTModel, theta, theta_old) -> np.ndarray:
    """Eq. 5 (with ``1/m``): ``∇L_t(θ) = −(1/m) Σ_i E_{y~Q_i^t} ∇ ln P(y,z_i|x_i,θ)``, ``Q^t = Q(θ_old)``."""
    Q = posterior(model, _theta(model, theta_old, "theta_old"))
    S = scores(model, theta)
    return -np.einsum("ik,ikd->d", Q, S) / model.m


def estimator_mean(model: LatentCoTModel, n, theta, theta_old) -> np.ndarray:
    """Exact ``E ĝ`` of the Lemma-1 estimator (Eq. 6): ``∇L_t(θ)`` minus the terms of prompts with
    ``n_i = 0`` (those are dropped, so the estimator is unbiased iff every ``n_i >= 1``)."""
    n = _counts(model, n)
    Q = posterior(model, _theta(model, theta_old, "theta_old"))
    S = scores(model, theta)
    per = np.einsum("ik,ikd->id", Q, S)
    return -(per * (n > 0)[:, None]).sum(axis=0) / model.m


def estimator_variance(model: LatentCoTModel, n, theta, theta_old=None) -> float:
    """Exact ``V(ĝ) = tr Cov(ĝ)`` of the Lemma-1 estimator (Eq. 6, with ``1/m``).

    ``ĝ = −(1/m) Σ_i (1/(n_i p_i)) Σ_{j=1..n_i} a_j ∇ln P(y_j,z_i|x_i,θ)``, ``y_j ~ P(·|x_i,θ_old)``,
    ``a_j ~ Bernoulli(c_{i y_j})``, ``p_i = p_i(θ_old)``. The summands are i.i.d. with
    ``E[a∇] = p_i μ_i`` and ``E‖a∇‖² = p_i G2_i`` (``μ_i = E_{Q_i}∇``, ``G2_i = E_{Q_i}‖∇‖²``), so::

        V(ĝ) = (1/m²) Σ_{i: n_i>0} (1/n_i) (G2_i / p_i − ‖μ_i‖²)
             ≤ (1/m²) Σ_i G2_i / (p_i n_i)          (Lemma 1's bound, :func:`lemma1_bound`)

    ``theta_old`` defaults to ``theta`` (gradient taken at the sampling point)."""
    theta = _theta(model, theta)
    theta_old = theta if theta_old is None else _theta(model, theta_old, "theta_old")
    n = _counts(model, n)
    p = pass_rates(model, theta_old)
    Q = posterior(model, theta_old)
    S = scores(model, theta)
    mu = np.einsum("ik,ikd->id", Q, S)
    G2 = np.einsum("ik,ik->i", Q, (S**2).sum(axis=2))
    pos = n > 0
    per = (G2[pos] / p[pos] - (mu[pos] ** 2).sum(axis=1)) / n[pos]
    return float(per.sum() / model.m**2)


def lemma1_bound(model: LatentCoTModel, n, theta) -> float:
    """Lemma 1's variance bound ``(1/m²) Σ_i G2_i / (p_i n_i)`` at ``θ = θ_old`` (``inf`` if some
    ``n_i = 0``). Equals ``variance_objective(n, p, sqrt(G2), alpha=0) / m²`` of ``allocation``."""
    n = _counts(model, n)
    if np.any(n == 0):
        return float("inf")
    p = pass_rates(model, theta)
    _, G2 = grad_moments(model, theta)
    return float((G2 / (p * n)).sum() / model.m**2)


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------


def _draw(model: LatentCoTModel, n: np.ndarray, theta_old: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Rejection sampling: for each prompt draw ``n_i`` rationales from ``P(·|x_i,θ_old)`` and accept
    each with probability ``c_iy``. Returns per-(i, y) draw counts and accepted counts, (m, K).
    (Multinomial then binomial thinning: the same distribution as sampling one by one.)"""
    P = probs(model, theta_old)
    drawn = rng.multinomial(n, P)
    accepted = rng.binomial(drawn, model.c)
    return drawn, accepted


def sample_gradient(model: LatentCoTModel, n, theta, theta_old, rng) -> tuple[np.ndarray, np.ndarray]:
    """One draw of the Lemma-1 estimator, Eq. 6 (with ``1/m``):
    ``ĝ = −(1/m) Σ_i (1/(n_i p_i)) Σ_{y_j ∈ D_i} ∇ ln P(y_j, z_i|x_i, θ)``.

    ``D_i`` comes from real rejection sampling at ``theta_old`` (``p_i = p_i(θ_old)`` exact); the
    gradients are evaluated at ``theta``. Prompts with ``n_i = 0`` contribute nothing.
    Returns ``(g, accepted)`` with ``accepted`` the (m,) number of accepted rationales."""
    theta = _theta(model, theta)
    theta_old = _theta(model, theta_old, "theta_old")
    n = _counts(model, n)
    rng = np.random.default_rng(rng)
    _, acc = _draw(model, n, theta_old, rng)
    p = pass_rates(model, theta_old)
    g = weighted_gradient(acc, scores(model, theta), n, p)
    return g, acc.sum(axis=1)


#: the M-step weightings :func:`weighted_gradient` implements (the names of ``Config.prompt_weighting``)
WEIGHTINGS = ("lemma1", "prompt", "tokens")


def weighted_gradient(acc, S, n, p, weighting: str = "lemma1") -> np.ndarray:
    """The M-step's gradient estimate from the accepted counts ``acc`` (``(..., m, K)``; leading axes are
    independent draws) and the per-sample gradients ``S = scores(θ)`` (``(m, K, d)``), under one weighting:

    * ``lemma1`` (Eq. 6 with ``1/m``): ``−(1/m) Σ_i (1/(n_i p_i)) Σ_{j∈D_i} ∇ ln P(y_j, z_i|x_i, θ)``, the
      unbiased estimator of Lemma 1 (``p_i`` the exact pass rate at the sampling point; ``n_i = 0`` adds 0);
    * ``prompt`` (Algorithm 1's ``1/|D_i|``): ``−(1/m) Σ_i (1/|D_i|) Σ_{j∈D_i} ∇``; a prompt with no
      accepted sample adds nothing;
    * ``tokens`` (the official code's token mean, one token per sample): ``−(Σ_i Σ_{j∈D_i} ∇) / Σ_i |D_i|``;
      0 when nothing was accepted.

    ``prompt`` and ``tokens`` are ratio estimators: biased, and not what Proposition 1 optimises.
    Returns ``(..., d)``."""
    acc = np.asarray(acc)
    m = acc.shape[-2]
    if weighting == "lemma1":
        n = np.asarray(n)
        wts = np.where(n > 0, 1.0 / (np.maximum(n, 1) * np.asarray(p)), 0.0)
        return -np.einsum("i,...ik,ikd->...d", wts, acc, S) / m
    k = acc.sum(axis=-1)  # |D_i|
    if weighting == "prompt":
        return -np.einsum("...i,...ik,ikd->...d", np.where(k > 0, 1.0 / np.maximum(k, 1), 0.0), acc, S) / m
    if weighting == "tokens":
        return -np.einsum("...ik,ikd->...d", acc, S) / np.maximum(k.sum(axis=-1), 1)[..., None]
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def pilot_estimates(
    model: LatentCoTModel, theta, n_pilot: int, rng, *, moment: str = "first"
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 2's estimates from ``N' = n_pilot`` pilot samples per prompt at ``theta``:
    ``p̂_i = (#accepted)/N'`` and ``Ĝ_i = mean over accepted pilots of ‖∇ ln P(y,z_i|x_i,θ)‖``
    (``moment="second"``: the root of the mean of ``‖∇‖²``); ``Ĝ_i = 0`` when no pilot is
    accepted, as in the official code."""
    if moment not in ("first", "second"):
        raise ValueError(f"moment must be 'first' or 'second', got {moment!r}")
    if isinstance(n_pilot, bool) or int(n_pilot) != n_pilot or n_pilot < 1:
        raise ValueError(f"n_pilot must be an integer >= 1, got {n_pilot!r}")
    theta = _theta(model, theta)
    rng = np.random.default_rng(rng)
    _, acc = _draw(model, np.full(model.m, int(n_pilot)), theta, rng)
    norms = np.sqrt((scores(model, theta) ** 2).sum(axis=2))
    k = acc.sum(axis=1)
    h = norms if moment == "first" else norms**2
    G = np.where(k > 0, (acc * h).sum(axis=1) / np.maximum(k, 1), 0.0)
    if moment == "second":
        G = np.sqrt(G)
    return k / n_pilot, G


# ----------------------------------------------------------------------------------------------
# smoothness
# ----------------------------------------------------------------------------------------------


def diameters(model: LatentCoTModel) -> np.ndarray:
    """``D_i = max_{y,y'} ‖phi_iy − phi_iy'‖``, shape (m,)."""
    diff = model.phi[:, :, None, :] - model.phi[:, None, :, :]
    return np.sqrt((diff**2).sum(axis=3)).max(axis=(1, 2))


def smoothness(model: LatentCoTModel) -> float:
    """``1/γ = max_i D_i² / 4``: ``∇²(−ln P(y,z_i|x_i,θ)) = Cov_P(phi_i) ⪯ (D_i²/4) I`` (Popoviciu;
    derivation in the module docstring). The smoothness assumption of Theorems 1-3."""
    return float((diameters(model) ** 2).max() / 4.0)


def gamma(model: LatentCoTModel) -> float:
    """``γ = 4 / max_i D_i²``: Theorem 1 allows ``η ≤ γ``, Theorem 2 ``η ≤ γ/2``."""
    L = smoothness(model)
    if L == 0:
        raise ValueError("every prompt has identical rationale features: the loss is constant")
    return 1.0 / L


# ----------------------------------------------------------------------------------------------
# Algorithm 1
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Trajectory:
    """What one :func:`run_em` run records (``t`` = E-step 0..T-1, ``r`` = M-step 0..k-1).

    ``theta`` (T·k+1, d) and ``loss`` (T·k+1,) = ``L(θ)`` (Eq. 2) at every iterate ``θ_{kt+r}``;
    per E-step: ``p``/``G`` used by the rule (pilot estimates if ``n_pilot``), ``p_exact``/``G_exact``
    (exact ``p_i``, first-moment ``G_i`` at ``θ_old``), ``n`` (T, m) the allocation, ``samples`` (T,)
    drawn per M-step plus pilots; per M-step: ``grad_bound`` (T, k, d) = exact ``∇L_t(θ_{kt+r})``,
    ``variance`` (T, k) = exact ``V(g_{kt+r})``, ``bias_sq`` (T, k) = ``‖E g − ∇L_t‖²`` (0 when every
    ``n_i ≥ 1``), ``accepted`` (T, k) accepted rationales, ``bound_start`` (T,) = ``L_t(θ_old)``;
    ``weighting``: the M-step's estimator (:func:`weighted_gradient`).
    """

    rule: str
    budget: int
    T: int
    k: int
    eta: float
    gamma: float
    seed: int
    theta: np.ndarray
    loss: np.ndarray
    p: np.ndarray
    G: np.ndarray
    p_exact: np.ndarray
    G_exact: np.ndarray
    n: np.ndarray
    samples: np.ndarray
    grad_bound: np.ndarray
    variance: np.ndarray
    bias_sq: np.ndarray
    accepted: np.ndarray
    weighting: str = "lemma1"


def run_em(
    model: LatentCoTModel,
    rule: str | Callable[..., np.ndarray],
    budget: int,
    T: int,
    k: int,
    eta: float,
    seed: int,
    *,
    alpha: float = 1e-3,
    beta: float = 2.0,
    n_pilot: int | None = None,
    G_moment: str = "first",
    min_per_prompt: int = 1,
    max_per_prompt: int | None = None,
    theta0=None,
    weighting: str = "lemma1",
) -> Trajectory:
    """Algorithm 1 (GVM-EM) on a synthetic model, with the allocation ``rule`` at a fixed ``budget``.

    For ``t = 0..T-1``: E-step at ``θ_old = θ_{kt}``: exact ``p_i`` and ``G_i`` (``G_moment="first"``:
    ``E_Q‖∇‖`` as Algorithm 2; ``"second"``: ``sqrt(E_Q‖∇‖²)``, the quantity Lemma 1's bound
    contains), or with ``n_pilot = N'`` their Algorithm-2 estimates from ``N'`` pilot samples (extra
    cost, counted in ``samples``); ``n = rule(p, G, budget, alpha=, beta=, min_per_prompt=,
    max_per_prompt=)``. Then ``k`` M-steps ``θ ← θ − η ĝ``, each ``ĝ`` a fresh Lemma-1 estimate (real
    rejection sampling from ``P(·|θ_old)``, gradients at the current ``θ``, exact ``p_i(θ_old)`` in the
    ``1/(n_i p_i)`` weight so that ``E ĝ = ∇L_t(θ)``).

    ``min_per_prompt=1`` (default) keeps every prompt in the estimator, so it is unbiased as the
    theorems assume; with 0 a rule may drop prompts and ``bias_sq`` records the bias.
    ``weighting``: the M-step's estimator (:func:`weighted_gradient`): ``lemma1`` (the theorems'), or
    ``prompt`` (Algorithm 1's ``1/|D_i|``) or ``tokens`` (the official code's token mean), biased ratio
    estimators for which ``variance`` and ``bias_sq`` (Lemma 1's exact values) are not defined: NaN.
    ``rule``: a name from ``allocation.RULES`` or a callable with that call shape.
    """
    rule_fn = get_rule(rule) if isinstance(rule, str) else rule
    if not callable(rule_fn):
        raise ValueError(f"rule must be a rule name or a callable, got {rule!r}")
    rule_name = rule if isinstance(rule, str) else getattr(rule, "__name__", "custom")
    for name, v in (("T", T), ("k", k)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    T, k = int(T), int(k)
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    if not np.isfinite(eta) or eta <= 0:
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if G_moment not in ("first", "second"):
        raise ValueError(f"G_moment must be 'first' or 'second', got {G_moment!r}")
    if n_pilot is not None and (isinstance(n_pilot, bool) or int(n_pilot) != n_pilot or n_pilot < 1):
        raise ValueError(f"n_pilot must be None or an integer >= 1, got {n_pilot!r}")
    theta = _theta(model, model.theta0 if theta0 is None else theta0, "theta0").copy()
    rng = np.random.default_rng(seed)
    m, d = model.m, model.d

    thetas = np.empty((T * k + 1, d))
    losses = np.empty(T * k + 1)
    P_used, G_used, P_ex, G_ex = (np.empty((T, m)) for _ in range(4))
    N = np.empty((T, m), dtype=np.int64)
    samples = np.empty(T, dtype=np.int64)
    grads = np.empty((T, k, d))
    var, bias, acc_tot = np.empty((T, k)), np.empty((T, k)), np.empty((T, k), dtype=np.int64)
    thetas[0], losses[0] = theta, loss(model, theta)

    for t in range(T):
        theta_old = theta.copy()
        p = pass_rates(model, theta_old)
        G1, G2 = grad_moments(model, theta_old)
        G = G1 if G_moment == "first" else np.sqrt(G2)
        P_ex[t], G_ex[t] = p, G1
        if n_pilot is not None:
            p_alloc, G_alloc = pilot_estimates(model, theta_old, int(n_pilot), rng, moment=G_moment)
        else:
            p_alloc, G_alloc = p, G
        P_used[t], G_used[t] = p_alloc, G_alloc
        n = np.asarray(
            rule_fn(p_alloc, G_alloc, int(budget), alpha=alpha, beta=beta,
                    min_per_prompt=min_per_prompt, max_per_prompt=max_per_prompt),
            dtype=np.int64,
        )
        N[t] = n
        samples[t] = k * int(n.sum()) + (m * int(n_pilot) if n_pilot is not None else 0)
        p_old, Q_old = p, posterior(model, theta_old)
        P_old = probs(model, theta_old)
        keep = (n > 0)[:, None]
        for r in range(k):
            # exact quantities at the current θ (same formulas as grad_bound_loss, estimator_mean,
            # estimator_variance; inlined so that Q, p at θ_old are computed once per E-step)
            S = scores(model, theta)
            mu = np.einsum("ik,ikd->id", Q_old, S)
            gL = -mu.sum(axis=0) / m
            grads[t, r] = gL
            sec = np.einsum("ik,ik->i", Q_old, (S**2).sum(axis=2))
            pos = n > 0
            var[t, r] = float(((sec[pos] / p_old[pos] - (mu[pos] ** 2).sum(axis=1)) / n[pos]).sum() / m**2)
            bias[t, r] = float(((-(mu * keep).sum(axis=0) / m - gL) ** 2).sum())
            # one draw: real rejection sampling from P(.|θ_old), gradients at θ, the run's weighting
            acc = rng.binomial(rng.multinomial(n, P_old), model.c)
            g = weighted_gradient(acc, S, n, p_old, weighting)
            acc_tot[t, r] = int(acc.sum())
            theta = theta - eta * g
            thetas[t * k + r + 1] = theta
            losses[t * k + r + 1] = loss(model, theta)

    if weighting != "lemma1":  # Lemma 1's exact variance and bias describe another estimator
        var[:], bias[:] = np.nan, np.nan
    return Trajectory(
        rule=rule_name, budget=int(budget), T=T, k=k, eta=float(eta), gamma=gamma(model),
        seed=int(seed), theta=thetas, loss=losses, p=P_used, G=G_used, p_exact=P_ex, G_exact=G_ex,
        n=N, samples=samples, grad_bound=grads, variance=var, bias_sq=bias, accepted=acc_tot,
        weighting=weighting,
    )
