"""``bench/gpu_check.py --dry-run``: the GPU check's code paths (one GVM-RAFT++ iteration through
``em.run`` on each twin's architecture, one ``m_step`` update), LoRA and, with bitsandbytes installed,
4-bit QLoRA on bitsandbytes' CPU backend, on tiny CPU shapes, in seconds."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_gpu_check_dry_run():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout
    assert "--dry-run (CPU, tiny shapes)" in out and "0 failed" in out
    path = Path(out.strip().splitlines()[-1].removeprefix("results -> "))
    assert path.name == "gpu_check.smoke.jsonl"
    rec = json.loads(path.read_text().splitlines()[-1])
    assert rec["dry_run"] is True
    rows = {(r["part"], r["twin"], r["mode"]): r for r in rec["rows"]}
    for twin in ("qwen2.5-math-1.5b", "llama-3.2-1b"):
        it = rows[("iteration", twin, "lora")]
        assert it["updates"] >= 2 and it["skipped_updates"] == 0 and it["samples"] > 0
        assert sum(it["n"]) == 32  # samples_per_prompt x prompts: the allocation spent the budget
        assert set(it["phases_s"]) >= {"pilot", "gradnorm", "allocate", "rollout", "update"}
        # the phases (the run's RunState.wall) lie inside the iteration's wall time
        assert all(v >= 0 for v in it["phases_s"].values()) and it["phases_s"]["update"] > 0
        assert sum(it["phases_s"].values()) <= it["wall_s"]
        # the stand-in verifier was the one used (random twins never answer: an exact verifier accepts nothing)
        assert it["accepted"] > 0 and any(0 < p < 1 for p in it["p"])
        up = rows[("update", twin, "lora")]
        assert up["updates"] == 1 and up["step_s"] > 0 and up["batch"] == 2 and up["length"] == 64
        # the training code's own phases at the shipped config's micro-batch, beside the plan's peaks
        ph = rows[("phases", twin, "lora")]
        assert ph["micro"] == 4 and ph["length"] == 64 and ph["config"].startswith("configs/")
        assert set(ph["phases"]) == {"build_policy", "gradnorm", "update"}
        for v in ph["phases"].values():
            assert v["measured_gb"] > 0 and v["planned_gb"] > 0
            assert v["ratio"] == pytest.approx(v["planned_gb"] / v["measured_gb"])
        # the passes need more than the weights they start from
        assert ph["phases"]["update"]["measured_gb"] > ph["phases"]["build_policy"]["measured_gb"]
    if importlib.util.find_spec("bitsandbytes") is None:  # the QLoRA parts are skipped, with the reason
        assert {(s["part"], s["mode"]) for s in rec["skipped"]} == {("iteration", "qlora"), ("update", "qlora")}
        assert all(s["why"].startswith("bitsandbytes: ") for s in rec["skipped"])
        return
    # bitsandbytes' CPU backend: the same 4-bit QLoRA iteration and update ran, and trained
    assert rec["bitsandbytes"] == "ok" and rec["skipped"] == []
    it = rows[("iteration", "qwen2.5-math-1.5b", "qlora")]
    assert it["updates"] >= 2 and it["skipped_updates"] == 0 and sum(it["n"]) == 32
    for twin in ("qwen2.5-math-1.5b", "llama-3.2-1b"):
        up = rows[("update", twin, "qlora")]
        assert up["updates"] == 1 and up["loss"] is not None and math.isfinite(up["loss"])
