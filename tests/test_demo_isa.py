"""``bench/demo_isa.py``: the comparison of two demo tables is per seed and says so in numbers a reader can
check by hand; the AVX2 restriction it relies on is visible to PyTorch and in the recorded machine."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("demo_isa", ROOT / "bench" / "demo_isa.py")
demo_isa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_isa)


def _summary(machine, raft, gvm, grpo=(0.3, 0.3, 0.3)):
    arm = lambda xs, alg, rule: {"start_acc": 0.2, "final_acc_seeds": list(xs), "final_acc_mean": sum(xs) / len(xs),  # noqa: E731
                                 "final_acc_std": 0.0, "algorithm": alg, "allocation": rule}
    return {"machine": machine, "seeds": [0, 1, 2], "budget_tokens": 1000,
            "methods": {"RAFT++": arm(raft, "raftpp", "uniform"), "GVM-RAFT++": arm(gvm, "raftpp", "gvm"),
                        "GRPO": arm(grpo, "grpo", "uniform")}}


def test_compare_by_hand():
    a = _summary("A", [0.50, 0.60, 0.70], [0.40, 0.40, 0.40])
    b = _summary("B", [0.52, 0.56, 0.70], [0.40, 0.46, 0.40])
    cmp = demo_isa.compare(a, b)
    r = cmp["arms"]["RAFT++"]
    assert r["diff_seeds"] == pytest.approx([0.02, -0.04, 0.0])
    assert r["diff_mean"] == pytest.approx(-0.02 / 3)
    # sample std of (0.02, -0.04, 0) is sqrt(((0.02+0.02/3)^2 + (-0.04+0.02/3)^2 + (0.02/3)^2) / 2)
    sd = ((0.02 + 0.02 / 3) ** 2 + (-0.04 + 0.02 / 3) ** 2 + (0.02 / 3) ** 2) / 2
    assert r["diff_se"] == pytest.approx((sd / 3) ** 0.5)
    assert r["diff_max_abs"] == pytest.approx(0.04)
    g = cmp["arms"]["GVM-RAFT++"]["gap_to_uniform"]
    assert g == pytest.approx([0.40 - 0.60, (0.40 + 0.46 + 0.40) / 3 - (0.52 + 0.56 + 0.70) / 3])
    assert cmp["arms"]["GRPO"]["gap_to_uniform"] == [0.0, 0.0]  # GRPO against GRPO, not against RAFT++
    assert "| GVM-RAFT++ | 0.200 / 0.200 |" in demo_isa.table(cmp)
    with pytest.raises(ValueError, match="seeds or budget"):
        demo_isa.compare(a, {**b, "seeds": [0, 1]})


def test_avx2_restriction_is_seen():
    code = ("import torch; from gvm_mini.demo.report import machine; "
            "print(torch.backends.cpu.get_cpu_capability()); print(machine())")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **demo_isa.AVX2_ENV}, capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    cap, machine = r.stdout.strip().splitlines()
    assert cap in ("AVX2", "DEFAULT")  # never above AVX2 once restricted
    if "(AVX-512)" in machine:
        assert machine.endswith("torch kernels restricted to " + cap)
