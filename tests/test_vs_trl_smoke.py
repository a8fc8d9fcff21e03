"""Seconds-long smoke of bench/vs_trl.py (gvm-mini GRPO vs TRL's GRPOTrainer).

TRL is not a gvm-mini dependency: the benchmark installs it into bench/.trl-site with
``vs_trl.py --setup`` (done here when missing; skipped when pip cannot reach the registry).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPT = BENCH / "vs_trl.py"
EXIT_PIP_FAILED = 3  # vs_trl.py --setup: pip could not install the pinned TRL set


@pytest.mark.slow
def test_vs_trl_smoke():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not (BENCH / ".trl-site" / "site-packages" / "trl").is_dir():
        setup = subprocess.run([sys.executable, str(SCRIPT), "--setup"], cwd=BENCH, env=env,
                               capture_output=True, text=True, timeout=900)
        if setup.returncode == EXIT_PIP_FAILED:
            pytest.skip(f"TRL could not be installed from the package registry: {setup.stderr.strip()[-500:]}")
        assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]

    results = BENCH / "results" / "vs_trl.smoke.jsonl"
    before = results.read_text().count("\n") if results.exists() else 0
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert re.search(r"gvm-mini is \d+\.\d\dx faster per generated token than TRL GRPOTrainer \(goal >= 1\.5x\)",
                     res.stdout), res.stdout[-2000:]
    m = re.search(r"^results -> (.+)$", res.stdout, re.MULTILINE)
    assert m, res.stdout[-2000:]
    path = Path(m.group(1).strip())
    assert path == results
    lines = path.read_text().splitlines()
    assert len(lines) == before + 1
    rec = json.loads(lines[-1])
    for side in ("gvm", "trl"):
        r = rec[side]
        assert r["tokens"] > 0 and r["samples"] > 0 and r["steps"] == rec["matched"]["steps"]
        assert r["wall"] > 0 and r["time_per_token"] > 0 and r["time_per_step"] > 0 and r["rss_peak_mb"] > 0
        assert 0.0 <= rec["accuracy"][side]["avg_at_k"] <= 1.0
        # the loop lies inside the whole call, and generation inside the loop
        assert 0 < r["generation_wall"] < r["wall"] <= r["call_wall"]
        assert r["time_per_token"] == pytest.approx(r["wall"] / r["tokens"])
    # gvm-mini's phases come from the run's RunState.wall: rollout is the generation time, and the
    # training phases hold the rollout, reward and update phases
    g = rec["gvm"]
    assert g["phases"]["rollout"] == g["generation_wall"] and g["phases"]["update"] > 0
    assert sum(g["phases"].values()) <= g["train_phases_wall"] + 1e-9
    # the same budget on both sides: steps x prompts x group completions
    m_ = rec["matched"]
    assert rec["gvm"]["samples"] == rec["trl"]["samples"] == m_["steps"] * m_["prompts_per_step"] * m_["group"]
    assert rec["ratio_time_per_token"] > 0 and rec["trl_version"] == "1.16.0"
    assert rec["ratio_time_per_token"] == pytest.approx(rec["trl"]["time_per_token"] / rec["gvm"]["time_per_token"])
