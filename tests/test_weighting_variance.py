"""bench/weighting_variance.py: the M-step estimator's error per rule x weighting on exact models."""

import importlib.util
from pathlib import Path

import numpy as np

from gvm_mini import synthetic as S

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("weighting_variance", ROOT / "bench" / "weighting_variance.py")
wv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wv)


def test_monte_carlo_lemma1_matches_the_exact_mse():
    # the same draws that estimate the prompt and token-mean estimators' MSE give the Lemma-1 estimator's,
    # which is known exactly: they must agree within a few Monte Carlo SEs (here with a prompt at n_i = 0,
    # whose dropped term is a squared bias)
    model = S.make_model(m=4, seed=3, p_range=(0.1, 0.8))
    n = np.array([3, 0, 5, 2])
    mc, se = wv.mse(model, n, 20_000, seed=0)["lemma1"]
    exact = wv.exact_lemma1_mse(model, n)
    assert abs(mc - exact) < 4 * se, (mc, exact, se)
    assert wv.exact_lemma1_mse(model, n) > S.estimator_variance(model, n, model.theta0)  # the bias counts


def test_exact_neyman_minimises_the_exact_lemma1_variance():
    # n_i proportional to sqrt(G2_i / p_i - ||mu_i||^2) minimises sum_i v_i / n_i; moving one sample between any
    # two prompts cannot lower the exact variance (integer optimum up to rounding)
    model = S.make_model(m=5, seed=1, p_range=(0.05, 0.9))
    N = 60
    n = wv.allocations(model, N)["exact_neyman"]
    assert n.sum() == N and (n > 0).all()
    best = S.estimator_variance(model, n, model.theta0)
    for i in range(5):
        for j in range(5):
            if i != j and n[i] > 1:
                m = n.copy()
                m[i] -= 1
                m[j] += 1
                assert S.estimator_variance(model, m, model.theta0) >= best * (1 - 1e-12)


def test_one_prompt_makes_the_prompt_weighting_the_token_mean():
    # with a single prompt, 1/(m |D_i|) and 1/sum_i |D_i| are the same weight: the two estimators coincide on
    # every draw, so their Monte Carlo MSEs are equal to the last bit
    model = S.make_model(m=1, seed=0, p_range=(0.3, 0.3))
    r = wv.mse(model, np.array([6]), 5_000, seed=1)
    assert r["prompt"] == r["tokens"]
