"""Tests for gvm_mini.evaluate: Average@k, unbiased pass@k (hand-computed), score matrices, benchmark summary."""

import math

import numpy as np
import pytest

from gvm_mini.evaluate import BENCHMARKS, average_at_k, pass_at_k, score_matrix, summarize

# 3 problems x 4 samples; correct counts c = 0, 1, 3
SCORES = np.array(
    [
        [0, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 1, 0, 1],
    ],
    dtype=float,
)


def test_average_at_k_by_hand():
    # per-problem means 0, 1/4, 3/4 -> mean 1/3
    assert average_at_k(SCORES) == pytest.approx(1 / 3)
    assert average_at_k([[1, 0], [1, 1]]) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "k, expected",
    [
        # pass@1 = c/n averaged: (0 + 1/4 + 3/4) / 3
        (1, (0 + 0.25 + 0.75) / 3),
        # pass@2: 1 - C(n-c,2)/C(4,2) with C(4,2)=6 -> 0, 1 - 3/6, 1 - 0/6
        (2, (0 + 0.5 + 1.0) / 3),
        # pass@3: C(4,3)=4 -> 0, 1 - 1/4, 1
        (3, (0 + 0.75 + 1.0) / 3),
        # pass@4 = "any correct"
        (4, 2 / 3),
    ],
)
def test_pass_at_k_by_hand(k, expected):
    assert pass_at_k(SCORES, k) == pytest.approx(expected)


def test_pass_at_k_matches_binomial_formula():
    rng = np.random.default_rng(0)
    scores = (rng.random((20, 8)) < 0.3).astype(float)
    for k in range(1, 9):
        direct = np.mean(
            [1 - math.comb(8 - int(c), k) / math.comb(8, k) for c in scores.sum(axis=1)]
        )
        assert pass_at_k(scores, k) == pytest.approx(direct)


@pytest.mark.parametrize(
    "scores, k, message",
    [
        (SCORES, 0, "k must be an integer in [1, 4]"),
        (SCORES, 5, "k must be an integer in [1, 4]"),
        (SCORES, 1.5, "k must be an integer in [1, 4]"),
        (np.zeros((0, 4)), 1, "non-empty [problems, samples] matrix"),
        (np.zeros(4), 1, "non-empty [problems, samples] matrix"),
        ([[np.nan, 1.0]], 1, "scores must be finite"),
    ],
)
def test_pass_at_k_errors(scores, k, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pass_at_k(scores, k)


def test_score_matrix_with_math_verify():
    completions = [
        ["\\boxed{0.5}", "\\boxed{1}", None],
        ["\\boxed{7}", "The answer is 7", "\\boxed{10^{10^{10}}}"],
    ]
    scores = score_matrix(completions, ["\\frac{1}{2}", "7"], "math_verify")
    np.testing.assert_array_equal(scores, [[1, 0, 0], [1, 1, 0]])
    assert scores.shape == (2, 3) and scores.dtype == np.float64


def test_score_matrix_with_callable_and_exact():
    completions = [["\\boxed{1,000}", "\\boxed{999}"]]
    np.testing.assert_array_equal(score_matrix(completions, ["1000"], "exact"), [[1, 0]])
    np.testing.assert_array_equal(score_matrix(completions, ["1000"], lambda c, a: 0.5), [[0.5, 0.5]])


@pytest.mark.parametrize(
    "completions, answers, message",
    [
        ([["a"], ["b"]], ["1"], "completions has 2 problems but answers has 1"),
        ([["a"], ["b", "c"]], ["1", "2"], r"same number of samples, got \[1, 2\]"),
    ],
)
def test_score_matrix_errors(completions, answers, message):
    with pytest.raises(ValueError, match=message):
        score_matrix(completions, answers, "exact")


def test_score_matrix_unknown_verifier():
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        score_matrix([["a"]], ["1"], "nope")


def test_benchmarks_table():
    assert {n: (b.hub_id, b.split, b.size) for n, b in BENCHMARKS.items()} == {
        "math500": ("HuggingFaceH4/MATH-500", "test", 500),
        "minerva_math": ("math-ai/minervamath", "test", 272),
        "olympiad_bench": ("Hothan/OlympiadBench", "train", 675),
        "aime24": ("HuggingFaceH4/aime_2024", "train", 30),
        "amc23": ("math-ai/amc23", "test", 40),
    }


def test_summarize_three_and_five_average():
    # Average@2 per benchmark: 0.5, 0.25, 0.0, 1.0, 0.75 ; pass@2: 1, 0.5, 0, 1, 1
    results = {
        "math500": [[1, 0], [0, 1]],
        "minerva_math": [[1, 0], [0, 0]],
        "olympiad_bench": [[0, 0], [0, 0]],
        "aime24": [[1, 1]],
        "amc23": [[1, 1], [1, 0]],
    }
    out = summarize(results)
    assert out["math500"] == {
        "average@k": 0.5, "pass@k": 1.0, "k": 2, "n_problems": 2, "samples": 2, "expected_size": 500,
    }
    assert out["3 average"]["average@k"] == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert out["3 average"]["pass@k"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert out["5 average"]["average@k"] == pytest.approx((0.5 + 0.25 + 0 + 1 + 0.75) / 5)
    assert out["5 average"]["pass@k"] == pytest.approx((1 + 0.5 + 0 + 1 + 1) / 5)
    assert summarize(results, k=1)["minerva_math"]["pass@k"] == pytest.approx(0.25)


def test_summarize_partial_and_custom_benchmarks():
    out = summarize({"math500": [[1, 0]], "my_set": [[1, 1]]})
    assert "3 average" not in out and "5 average" not in out
    assert out["my_set"]["expected_size"] is None and out["my_set"]["average@k"] == 1.0


def test_evaluate_policy_reports_the_accuracy_of_each_draw():
    """per_draw[j] = accuracy of the j-th sample of every problem (the spread over evaluation draws of a
    one-seed run); their mean is Average@k. A verifier that accepts exactly the second sample of each
    problem (the sampler returns each problem's k samples together) gives per_draw = [0, 1, 0, 0]."""
    from gvm_mini.evaluate import evaluate_policy
    from gvm_mini.models import load_model

    model, tok = load_model("tiny-qwen2")
    calls = []

    def second_draw_only(text, answer):
        calls.append(answer)
        return 1.0 if (len(calls) - 1) % 4 == 1 else 0.0

    res = evaluate_policy(model, tok, ["Compute 1+2.", "Compute 3+4.", "Compute 5+6."], ["3", "7", "11"],
                          second_draw_only, k=4, max_new_tokens=4, seed=0)
    assert calls == ["3"] * 4 + ["7"] * 4 + ["11"] * 4
    assert res["per_draw"] == [0.0, 1.0, 0.0, 0.0]
    assert res["per_problem"] == [0.25, 0.25, 0.25]
    assert res["avg_at_k"] == pytest.approx(np.mean(res["per_draw"])) == pytest.approx(0.25)
