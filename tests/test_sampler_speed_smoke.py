"""Seconds-long smoke of bench/sampler_speed.py (the decode-loop sampler and the M-step against the frozen
former ones, tests/frozen_reference.py): the two sides must agree before their times mean anything, and
the printed table must be the recorded numbers."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
ROW = re.compile(r"^(sampling|M-step|both) s / 1k tokens\s+(\d+\.\d{4})\s+(\d+\.\d{4})\s+(\d+\.\d{2})x$", re.MULTILINE)


def test_sampler_speed_smoke():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, str(BENCH / "sampler_speed.py"), "--smoke"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    path = Path(res.stdout.strip().splitlines()[-1].removeprefix("results -> "))
    assert path.name == "sampler_speed.smoke.jsonl"
    rec = json.loads(path.read_text().splitlines()[-1])

    # the old and new paths compute the same thing: greedy completions token for token with the same
    # behaviour log-probs, and the same M-step (loss, gradient norm, ...) on the same rollout and seed
    check = rec["check"]
    assert check["ok"] is True and "check: ok:" in res.stdout
    assert check["greedy_samples"] == rec["prompts"] == 4 and check["greedy_identical"] == 4
    assert check["greedy_logprob_max_abs_diff"] < 1e-4
    assert check["mstep_differs"] == []
    old, new = check["mstep_old"], check["mstep_new"]
    assert new["updates"] == old["updates"] == 1 and new["skipped_updates"] == old["skipped_updates"] == 0
    assert new["grad_norm"] > 0 and math.isclose(new["grad_norm"], old["grad_norm"], rel_tol=1e-4)
    assert math.isclose(new["loss"], old["loss"], rel_tol=1e-4, abs_tol=1e-6)
    assert 0 < check["accepted"] < rec["prompts"] * rec["group"]  # GRPO had a signal to learn from

    # tokens counted: at most prompts x group x max_new_tokens, and the M-step's rollout is the new side's first batch
    cap = rec["prompts"] * rec["group"] * rec["max_new_tokens"]
    assert all(0 < t <= cap for side in ("old", "new") for t in rec["tokens"][side])
    assert rec["update_tokens"] == check["rollout_tokens"] == rec["tokens"]["new"][0]

    # the printed table is the recorded numbers, and each ratio is the ratio of the two printed times
    rows = {m.group(1): tuple(float(x) for x in m.groups()[1:]) for m in ROW.finditer(res.stdout)}
    assert set(rows) == {"sampling", "M-step", "both"}, res.stdout
    per1k = rec["per_1k_tokens"]
    expect = {"sampling": (per1k["sample_old"], per1k["sample_new"], rec["ratio_sampling"]),
              "M-step": (per1k["update_old"], per1k["update_new"], rec["ratio_update"]),
              "both": (per1k["sample_old"] + per1k["update_old"], per1k["sample_new"] + per1k["update_new"], rec["ratio_total"])}
    for row, (before, after, ratio) in rows.items():
        e_before, e_after, e_ratio = expect[row]
        assert all(math.isfinite(x) and x > 0 for x in (before, after, ratio, e_before, e_after, e_ratio))
        assert abs(before - e_before) <= 5.1e-5 and abs(after - e_after) <= 5.1e-5 and abs(ratio - e_ratio) <= 0.0051
        assert math.isclose(e_ratio, e_before / e_after, rel_tol=1e-9)
        # the printed ratio from the printed times, within the rounding of the three
        bound = 0.0051 + (before / after) * 5.1e-5 * (1 / before + 1 / after)
        assert abs(ratio - before / after) <= bound, (row, before, after, ratio)
    # the times behind the medians: one repeat each in a smoke run
    assert all(len(v) == rec["repeats"] == 1 and v[0] > 0 for v in rec["times"].values())
    assert math.isclose(per1k["sample_new"], rec["times"]["sample_new"][0] / rec["tokens"]["new"][0] * 1000)
    assert math.isclose(per1k["update_old"], rec["times"]["update_old"][0] / rec["update_tokens"] * 1000)
