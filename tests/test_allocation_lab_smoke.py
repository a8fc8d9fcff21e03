"""`bench/allocation_lab.py --smoke` runs end to end (warm start, three arms in worker processes, summary)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_allocation_lab_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "allocation_lab.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "allocation_lab.json").read_text())
    assert list(summary["methods"]) == ["uniform", "GVM-bayes", "GVM-tokens+reuse"]
    assert summary["options"]["GVM-tokens+reuse"] == {"allocation": "gvm_tokens", "pilot": "reuse"}
    for label, s in summary["methods"].items():
        assert s["tokens"] >= 6000  # every arm spent the budget, pilots counted
        assert (s["pilot_tokens"] > 0) == (label != "uniform")
    assert "| GVM-bayes |" in (tmp_path / "allocation_lab.md").read_text()
    assert (tmp_path / "allocation_lab.png").stat().st_size > 0
