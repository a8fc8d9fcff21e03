"""Pilot estimates of (p_i, G_i): the paper's raw fractions and the empirical-Bayes alternative."""

import numpy as np
import pytest

from gvm_mini.allocation import allocate
from gvm_mini.estimators import estimate, fit_beta_prior, pooled_G, posterior_mean


def test_beta_prior_by_hand():
    # counts 0/4, 2/4, 2/4, 4/4: mu = 8/16 = 1/2, raw rates (0, 1/2, 1/2, 1), s2 = (1/4 + 0 + 0 + 1/4)/4 = 1/8,
    # h = 1/4, rho = (s2 / (mu (1 - mu)) - h) / (1 - h) = (1/2 - 1/4) / (3/4) = 1/3 -> a + b = 2, a = b = 1
    a, b = fit_beta_prior([0, 2, 2, 4], [4, 4, 4, 4])
    assert (a, b) == pytest.approx((1.0, 1.0), rel=1e-12)
    assert posterior_mean([0, 2, 2, 4], [4, 4, 4, 4], a, b) == pytest.approx([1 / 6, 1 / 2, 1 / 2, 5 / 6])


def test_beta_prior_limits():
    # all prompts alike (every one 2/4): s2 = 0 -> rho clipped to 1e-6 -> a + b = 1e6 - 1, p_i ~ mu
    a, b = fit_beta_prior([2, 2, 2], [4, 4, 4])
    assert a + b == pytest.approx(1e6 - 1) and a / (a + b) == pytest.approx(0.5)
    # every prompt all-right or all-wrong: rho = (1 - 1/4)/(3/4) = 1 -> clipped, a + b ~ 1e-6: raw rates
    a, b = fit_beta_prior([0, 4], [4, 4])
    assert a + b == pytest.approx(1e-6, rel=1e-3)
    # nothing accepted anywhere: degenerate prior at 0
    assert fit_beta_prior([0, 0], [4, 4]) == (0.0, float("inf"))
    assert posterior_mean([0, 0], [4, 4], 0.0, float("inf")).tolist() == [0.0, 0.0]


def test_pooled_G_by_hand():
    # prompt 0: 1 accepted pilot, mean norm 2; prompt 1: 3 accepted, mean norm 6 -> (2 + 18) / 4 = 5
    assert pooled_G([1, 3, 0], [2.0, 6.0, 0.0]) == 5.0
    assert pooled_G([0, 0], [0.0, 0.0]) == 0.0


def test_estimate_paper_and_bayes_by_hand():
    k, n, G = [0, 2, 2, 4], [4, 4, 4, 4], [0.0, 1.0, 3.0, 2.0]
    p, Gh = estimate(k, n, G)  # paper: raw fractions, G untouched
    assert p.tolist() == [0.0, 0.5, 0.5, 1.0] and Gh.tolist() == G
    p, Gh = estimate(k, n, G, estimator="bayes")
    assert p == pytest.approx([1 / 6, 1 / 2, 1 / 2, 5 / 6])
    # pooled G = (2*1 + 2*3 + 4*2) / 8 = 2 for the prompt with no accepted pilot
    assert Gh.tolist() == [2.0, 1.0, 3.0, 2.0]
    # the paper drops the all-wrong prompt; bayes gives it samples
    assert allocate(*estimate(k, n, G), 32)[0] == 0
    assert allocate(*estimate(k, n, G, estimator="bayes"), 32)[0] > 0


def test_estimate_bad_input():
    with pytest.raises(ValueError, match="estimator must be one of"):
        estimate([1], [2], [1.0], estimator="mle")
    with pytest.raises(ValueError, match="0 <= k_i <= n_i"):
        estimate([3], [2], [1.0])
    with pytest.raises(ValueError, match="G and k must have the same length"):
        estimate([1, 1], [2, 2], [1.0])
    with pytest.raises(ValueError, match="G must be finite"):
        estimate([1], [2], [np.nan])


def test_history_round_trip_and_shrinkage_by_hand():
    import json

    from gvm_mini.estimators import history_lookup, history_update, iteration_estimates

    h: dict = {}
    # visit of prompts 7 and 9: prompt 7 had 0 of 4 accepted (G 0), prompt 9 had 4 of 4 (G 2)
    history_update(h, [7, 9], [0, 4], [4, 4], [40, 12], [0.0, 2.0], iteration=0)
    h = json.loads(json.dumps(h))  # what the checkpoint stores and gives back
    known, k, n, tok, G = history_lookup(h, [9, 7, 3], min_samples=4)
    assert known.tolist() == [True, True, False] and k.tolist() == [4, 0, 0] and tok.tolist() == [12, 40, 0]
    assert history_lookup(h, [7], min_samples=5)[0].tolist() == [False]  # too few samples: fresh pilot
    # prompt 3 gets a fresh pilot: 2 of 4 accepted, G 1. All counts 4/4, 0/4, 2/4: mu = 1/2, s2 = 1/6,
    # h = 1/4, rho = (2/3 - 1/4) / (3/4) = 5/9, a + b = 4/5, a = b = 2/5
    k[2], n[2], G[2] = 2, 4, 1.0
    p, Gh = iteration_estimates(k, n, G, known)  # estimator=paper: the fresh prompt keeps its raw 1/2
    assert p == pytest.approx([(4 + 0.4) / 4.8, 0.4 / 4.8, 0.5])
    assert Gh.tolist() == [2.0, 0.0, 1.0]  # k = 0 and G = 0: the paper's zero stays
    assert iteration_estimates(k, n, G, [False] * 3)[0].tolist() == [1.0, 0.0, 0.5]  # = estimate()
