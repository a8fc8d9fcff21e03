"""Seconds-long smoke of bench/sampler_speed.py (issue 14: the decode-loop sampler and the faster
M-step against the ones before, side by side); prints the ratios and records them."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_sampler_speed_smoke():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, str(BENCH / "sampler_speed.py"), "--smoke"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for row in ("sampling s / 1k tokens", "M-step s / 1k tokens", "both s / 1k tokens"):
        assert row in res.stdout
    path = Path(res.stdout.strip().splitlines()[-1].removeprefix("results -> "))
    rec = json.loads(path.read_text().splitlines()[-1])
    assert path.name == "sampler_speed.smoke.jsonl"
    assert rec["ratio_sampling"] > 0 and rec["ratio_update"] > 0 and rec["ratio_total"] > 0
