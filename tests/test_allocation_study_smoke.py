"""``python bench/allocation_study.py --smoke``: one tiny cell of the study runs end to end, and what it
writes is consistent (uniform's paired difference is 0 by construction; every run stopped at the
budget; the table lists each rule)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_study_smoke(tmp_path):
    out = tmp_path / "study"
    r = subprocess.run([sys.executable, "bench/allocation_study.py", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "allocation_study.json").read_text())
    assert set(res["tasks"]) == {"rules", "synthetic"}
    rules = res["tasks"]["rules"]["by_algorithm"]["RAFT++"]
    assert set(rules) == {"uniform", "gvm_robust"}
    assert rules["uniform"]["paired_diff"] == 0.0  # the baseline against itself
    for label, row in rules.items():
        assert len(row["finals"]) == 1 and 0.0 <= row["final_mean"] <= 1.0
        assert row["paired_diff"] == row["final_mean"] - rules["uniform"]["final_mean"]
    assert rules["uniform"]["pilot_token_share"] == 0.0 and rules["gvm_robust"]["pilot_token_share"] > 0.0
    for run in (out / "rules").iterdir():  # every run spent its budget (4,000 tokens), overshoot < one M-step
        last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
        assert 4_000 <= last["tokens"] < 8_000, (run.name, last["tokens"])
    synth = res["tasks"]["synthetic"]["by_algorithm"]["Lemma-1 SGD"]
    assert synth["uniform"]["paired_diff"] == 0.0 and len(synth["gvm_robust"]["finals"]) == 2
    md = (out / "allocation_study.md").read_text()
    assert "| RAFT++ | gvm_robust |" in md and "Pre-registration" in md
    assert (out / "allocation_study.png").stat().st_size > 10_000


def test_demo_robust_arm_uses_the_preregistered_settings():
    """The demo's gvm_robust arms run with exactly the settings the study pre-registered."""
    sys.path.insert(0, str(ROOT / "bench"))
    import allocation_study

    from gvm_mini.demo.runner import ROBUST_OPTIONS

    assert ROBUST_OPTIONS == {**allocation_study.ROBUST, **allocation_study.PREREGISTERED}
