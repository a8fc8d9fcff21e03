"""bench/backend_training.py's summary on hand-made runs: per backend the mean and sd over seeds, and the
seed-paired vLLM - HF difference with its standard error (a reader can redo these by hand)."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from backend_training import summarize  # noqa: E402


def _run(acc):
    return {"start_acc": 0.1, "final_acc": acc, "train_reward": 0.5, "mean_len": 10.0, "wall_s": 1.0}


def test_paired_difference_and_spread_by_hand():
    runs = {"hf": {0: _run(0.30), 1: _run(0.40), 2: _run(0.50)},
            "vllm": {0: _run(0.35), 1: _run(0.40), 2: _run(0.60)}}
    s = summarize(runs)["final_acc"]
    assert s["hf"]["mean"] == pytest.approx(0.40) and s["hf"]["sd"] == pytest.approx(0.10)
    assert s["vllm"]["mean"] == pytest.approx(0.45)
    # differences 0.05, 0.00, 0.10: mean 0.05, sd 0.05, SE 0.05 / sqrt(3)
    assert s["vllm_minus_hf"]["mean"] == pytest.approx(0.05)
    assert s["vllm_minus_hf"]["se"] == pytest.approx(0.05 / math.sqrt(3))
