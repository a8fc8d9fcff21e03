"""Seconds-long smoke runs of every benchmark script (issue 5): each runs from the repo and prints its ratio."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, expect",
    [
        ("overhead.py", "lowest GVM-stage share"),
        ("sample_efficiency.py", "synthetic: target L="),
        ("shape_twin_memory.py", "qwen2.5-math-1.5b"),
    ],
)
def test_bench_smoke(script, expect, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert expect in res.stdout
    assert "results ->" in res.stdout
