"""bench/regime_map.py: the speed-up arithmetic by hand, and the CI smoke run with numbers a reader can
verify (at one sample per prompt GVM has no budget to move, so its runs are uniform's, bit for bit)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import regime_map as RM  # noqa: E402


def test_crossing_and_speedup_by_hand():
    assert RM.crossing(np.array([3.0, 2.0, 1.0]), 1.5) == pytest.approx(1.5)  # halfway between E-steps 1 and 2
    assert RM.crossing(np.array([3.0, 2.0]), 1.0) == float("inf")
    assert RM.crossing(np.array([3.0, 2.0]), 3.0) == 0.0
    # uniform: 4 E-steps 3, 2, 1.5, 1.25, 1.25 -> final level = mean of E-steps 3..4 = 1.25, reached at 3.0;
    # GVM: 3, 1.5, 1.0 -> reaches 1.25 halfway between E-steps 1 and 2 = 1.5  => speed-up 3.0 / 1.5 = 2
    uni = np.array([[3.0, 2.0, 1.5, 1.25, 1.25]] * 2)
    gvm = np.array([[3.0, 1.5, 1.0]] * 2)
    assert RM.final_level(uni.mean(0)) == pytest.approx(1.25)
    assert RM.speedup(uni, gvm) == pytest.approx(2.0)
    assert RM.speedup(uni, np.array([[3.0, 2.9, 2.8]])) == 0.0  # never reached within GVM's horizon


@pytest.mark.slow
def test_regime_map_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, str(BENCH / "regime_map.py"), "--smoke"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "results ->" in res.stdout and "best (exact p, G)" in res.stdout
    d = json.loads((BENCH / "results" / "regime_map.smoke.json").read_text())
    assert len(d["cells"]) == 2 * 2 * 2
    for c in d["cells"]:
        g, p = c["gvm"], c["gvm_pilot"]
        if c["budget_per_prompt"] == 1:  # min 1 per prompt and N = m: the same allocation, the same runs
            assert g["n_at_theta0"] == [1] * 8
            assert g["omega_ratio"] == 1.0 and g["speedup"] == 1.0
        # pilot counted: N' = 8 pilots per prompt per E-step against k * b = 5 b training samples
        f = 5 * c["budget_per_prompt"] / (5 * c["budget_per_prompt"] + 8)
        assert p["speedup_samples"] == pytest.approx(p["speedup"] * f)
        assert c["in_theorem_range"] == (c["step"] <= 1.0)
    assert (BENCH / "results" / "regime_map.smoke.png").stat().st_size > 10_000
