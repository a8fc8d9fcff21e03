"""Seconds-long smoke runs of benchmark scripts: each runs from the repo, prints its numbers and
records them; the printed numbers must be finite, agree with the record, and agree with each other
(a printed share or ratio is the one its printed or recorded parts give, within rounding)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

OVERHEAD_ROW = re.compile(
    r"^gradnorm=(\S+)\s+reuse_pilot=(True|False)\s+GVM stage\s+(\d+\.\d)% of train wall "
    r"\(pilot\s+(\d+\.\d)%, gradnorm\s+(\d+\.\d)%\)\s+pilot tokens (\d+)/(\d+)$", re.MULTILINE)
SYNTHETIC = re.compile(
    r"^synthetic: target L=(\d+\.\d{4}); E-steps to reach it: uniform (\d+|None), gvm (\d+|None) -> ratio (\S+); "
    r"final L uniform (\d+\.\d{4}) gvm (\d+\.\d{4})$", re.MULTILINE)
TWIN_ROW = re.compile(
    r"^(\S+)\s+(lora|qlora)\s+(\S+)\s+(\d+)x(\d+) \(micro (\d+), (\d+) layers\): step\s+(\d+\.\d\d) s, "
    r"(\w+)\s+(\d+\.\d\d)$", re.MULTILINE)


def _record(stdout: str, name: str) -> dict:
    m = re.search(r"^results -> (.+)$", stdout, re.MULTILINE)
    assert m, stdout[-2000:]
    path = Path(m.group(1).strip())
    assert path.name == f"{name}.smoke.jsonl"
    return json.loads(path.read_text().splitlines()[-1])


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def check_overhead(out: str) -> None:
    rows = OVERHEAD_ROW.findall(out)
    rec = _record(out, "overhead")["rows"]
    assert len(rows) == len(rec) == 6, out
    for (params, reuse, share, pilot, gradnorm, pilot_tok, tok), r in zip(rows, rec):
        assert (params, reuse == "True") == (r["gradnorm_params"], r["reuse_pilot"])
        w = r["wall"]
        assert _finite(*w.values()) and all(v >= 0 for v in w.values())
        assert w["pilot"] > 0 and w["rollout"] > 0 and w["update"] > 0
        # the recorded shares are the phase times' shares of the training wall (eval and checkpoints excluded)
        train = sum(v for k, v in w.items() if k not in ("eval", "checkpoint"))
        assert math.isclose(r["train_wall"], train, rel_tol=1e-9)
        assert math.isclose(r["gvm_share"], (w["pilot"] + w["gradnorm"] + w["allocate"]) / train, rel_tol=1e-9)
        assert math.isclose(r["pilot_share"], w["pilot"] / train, rel_tol=1e-9)
        assert math.isclose(r["gradnorm_share"], w["gradnorm"] / train, rel_tol=1e-9)
        assert 0 < r["pilot_share"] <= r["gvm_share"] < 1 and r["gradnorm_share"] <= r["gvm_share"]
        # what is printed is what is recorded
        assert abs(float(share) - 100 * r["gvm_share"]) <= 0.0501
        assert abs(float(pilot) - 100 * r["pilot_share"]) <= 0.0501
        assert abs(float(gradnorm) - 100 * r["gradnorm_share"]) <= 0.0501
        assert float(pilot) + float(gradnorm) <= float(share) + 0.1001  # the GVM stage holds both, within rounding
        assert (int(pilot_tok), int(tok)) == (r["pilot_tokens"], r["tokens"])
        assert 0 < r["pilot_tokens"] < r["tokens"]
    lowest = re.search(r"^lowest GVM-stage share: (\d+\.\d)% \(goal <= 10%\)$", out, re.MULTILINE)
    assert lowest and lowest.group(1) == min((row[2] for row in rows), key=float)


def check_sample_efficiency(out: str) -> None:
    m = SYNTHETIC.search(out)
    assert m, out
    target, u, g, ratio, final_u, final_g = m.groups()
    syn = _record(out, "sample_efficiency")["synthetic"]
    assert _finite(syn["target_L"], *syn["final_L"]["uniform"], *syn["final_L"]["gvm"])
    assert float(target) == pytest.approx(syn["target_L"], abs=5.1e-5)
    assert float(final_u) == pytest.approx(syn["final_L"]["uniform"][0], abs=5.1e-5)
    assert float(final_g) == pytest.approx(syn["final_L"]["gvm"][0], abs=5.1e-5)
    its = syn["iterations_to_target"]
    assert (u, g) == (str(its["uniform"]), str(its["gvm"]))
    if its["uniform"] and its["gvm"]:
        # the ratio is uniform's E-steps over GVM's, printed to two decimals
        assert syn["ratio"] == pytest.approx(its["uniform"] / its["gvm"])
        assert float(ratio) == pytest.approx(round(its["uniform"] / its["gvm"], 2), abs=1e-9)
    else:
        assert ratio == "None" and syn["ratio"] is None
    # uniform reaches its own target (its mean L after half its E-steps) by then at the latest
    assert its["uniform"] is not None and its["uniform"] <= 6 // 2  # smoke: 6 E-steps


def check_shape_twin_memory(out: str) -> None:
    rows = TWIN_ROW.findall(out)
    rec = _record(out, "shape_twin_memory")["rows"]
    assert len(rows) == len(rec) >= 2, out
    assert {r[0] for r in rows} == {"qwen2.5-math-1.5b", "llama-3.2-1b"}
    for (twin, mode, dtype, batch, length, micro, layers, step, kind, peak), r in zip(rows, rec):
        assert (twin, mode, dtype) == (r["twin"], r["mode"], r["dtype"])
        assert (int(batch), int(length), int(micro), int(layers)) == (r["batch"], r["length"], r["micro"], r["layers"])
        assert _finite(r["step_s"], r[kind]) and r["step_s"] > 0 and r[kind] > 0
        assert float(step) == pytest.approx(r["step_s"], abs=0.0051)
        assert float(peak) == pytest.approx(r[kind], abs=0.0051)
    rss = [r["peak_rss_gb_process"] for r in rec if "peak_rss_gb_process" in r]
    assert rss == sorted(rss)  # the process's peak RSS never goes down


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, check",
    [
        ("overhead.py", check_overhead),
        ("sample_efficiency.py", check_sample_efficiency),
        ("shape_twin_memory.py", check_shape_twin_memory),
    ],
    ids=["overhead", "sample_efficiency", "shape_twin_memory"],
)
def test_bench_smoke(script, check, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], cwd=BENCH, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    check(res.stdout)
