"""Plots read run directories (torn last lines included) and write PNGs."""

import json

import numpy as np
import pytest

from gvm_mini.plots import eval_curve, plot_allocation, plot_runs, read_jsonl


def _fake_run(d, accs):
    d.mkdir()
    with open(d / "metrics.jsonl", "w") as f:
        for i, a in enumerate(accs):
            f.write(json.dumps({"kind": "eval", "avg_at_k": a, "tokens": 100 * i, "global_step": 2 * i,
                                "wall_train": 1.5 * i, "samples": 10 * i, "updates": 4 * i}) + "\n")
            f.write(json.dumps({"kind": "step", "tokens": 100 * i + 50}) + "\n")
        f.write('{"kind": "eval", "avg_at_k": 0.9')  # a run killed mid-write
    with open(d / "allocations.jsonl", "w") as f:
        f.write(json.dumps({"iteration": 0, "p": [0.0, 0.5, 1.0], "G": [0.0, 2.0, 1.0], "n": [0, 10, 6]}) + "\n")


def test_curves_and_figures(tmp_path):
    _fake_run(tmp_path / "a", [0.1, 0.2, 0.4])
    _fake_run(tmp_path / "b", [0.1, 0.3])
    assert len(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == 6  # the torn line is dropped
    x, y = eval_curve(tmp_path / "a", "tokens")
    assert x.tolist() == [0, 100, 200] and y.tolist() == [0.1, 0.2, 0.4]
    x, _ = eval_curve(tmp_path / "a", "wall")
    assert np.allclose(x, [0, 1.5, 3.0])
    out = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "c.png", x="steps")
    assert (tmp_path / "c.png").stat().st_size > 1000 and out == tmp_path / "c.png"
    plot_allocation(tmp_path / "a", tmp_path / "alloc.png")
    assert (tmp_path / "alloc.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="x must be one of"):
        eval_curve(tmp_path / "a", "epochs")
