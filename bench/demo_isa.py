"""How far the demo's table moves between an AVX-512 and an AVX2 machine, now that every machine starts
from the shipped warm start.

Before the warm start was shipped, a user on an AVX2 CPU trained a different warm start (the SFT's last
digits differ, and then everything sampled from it) and got a different table. Now the starting weights
are the same file everywhere, so what is left is the RL runs themselves: the same seeds, the same
weights, kernels that round differently. This script measures that on one machine: it runs
``python -m gvm_mini demo`` twice, once as the machine is and once with PyTorch's own kernels restricted
to their AVX2 versions (``ATEN_CPU_CAPABILITY=avx2``, plus ``ONEDNN_MAX_CPU_ISA=AVX2`` and
``MKL_ENABLE_INSTRUCTIONS=AVX2`` for the libraries), and compares the two tables arm by arm and seed by
seed. It is an emulation: on the development machine (AMD EPYC) the AVX2 path changes softmax's last
digits but not MKL's matmul, so a real AVX2 CPU may differ in more places; the effect, an RL run that
samples differently from the first divergent draw on, is the same kind.

    python bench/demo_isa.py                       # two full demos (~5 min each on 2 idle cores)
    python bench/demo_isa.py --native runs/demo    # reuse a finished native run
    python bench/demo_isa.py --quick               # one seed, 50k tokens each (~1 min each)

Writes ``bench/results/demo_isa.json`` and ``.md`` (``--quick``: under ``--out`` only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gvm_mini.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
#: the environment that makes PyTorch (and oneDNN, MKL) take their AVX2 code paths on an AVX-512 CPU
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def run_demo(out: Path, quick: bool, env: dict[str, str]) -> dict:
    """``python -m gvm_mini demo`` into ``out`` (skipped when its summary.json exists); its summary."""
    summary = out / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "gvm_mini", "demo", "--out", str(out)] + (["--quick"] if quick else [])
        print(" ".join(f"{k}={v}" for k, v in env.items()), " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, check=True)
    return json.loads(summary.read_text())


def _mean_se(xs: list[float]) -> tuple[float, float | None]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def compare(a: dict, b: dict) -> dict:
    """Arm by arm: both tables' start and final accuracy, and the per-seed difference b - a (same seed,
    same warm start) with its mean, standard error and largest size; plus each table's gap to the uniform
    arm of the same algorithm (the comparison README draws), so one sees whether the conclusion moves."""
    if a["seeds"] != b["seeds"] or a["budget_tokens"] != b["budget_tokens"]:
        raise ValueError(f"the two demos differ in seeds or budget: {a['seeds']}/{a['budget_tokens']} vs "
                         f"{b['seeds']}/{b['budget_tokens']}")
    def baseline(summary: dict, lab: str) -> dict:  # the uniform arm of the same algorithm
        alg = summary["methods"][lab]["algorithm"]
        return next(m for m in summary["methods"].values() if m["algorithm"] == alg and m["allocation"] == "uniform")

    arms = {}
    for lab, ma in a["methods"].items():
        mb = b["methods"][lab]
        d = [y - x for x, y in zip(ma["final_acc_seeds"], mb["final_acc_seeds"])]
        mean, se = _mean_se(d)
        arms[lab] = {"start": [ma["start_acc"], mb["start_acc"]],
                     "final_mean": [ma["final_acc_mean"], mb["final_acc_mean"]],
                     "final_std": [ma["final_acc_std"], mb["final_acc_std"]],
                     "diff_seeds": d, "diff_mean": mean, "diff_se": se, "diff_max_abs": max(abs(x) for x in d),
                     "gap_to_uniform": [ma["final_acc_mean"] - baseline(a, lab)["final_acc_mean"],
                                        mb["final_acc_mean"] - baseline(b, lab)["final_acc_mean"]]}
    return {"machines": [a["machine"], b["machine"]], "seeds": a["seeds"], "budget_tokens": a["budget_tokens"],
            "arms": arms}


def table(cmp: dict) -> str:
    rows = ["| arm | start (native / AVX2 path) | final, mean ± std over seeds: native | final: AVX2 path | "
            "per-seed difference (AVX2 − native): mean ± SE, largest | gap to uniform (same algorithm): native / AVX2 |",
            "|---|---|---|---|---|---|"]
    for lab, r in cmp["arms"].items():
        se = f" ± {r['diff_se']:.3f}" if r["diff_se"] is not None else ""
        rows.append(f"| {lab} | {r['start'][0]:.3f} / {r['start'][1]:.3f} | {r['final_mean'][0]:.3f} ± {r['final_std'][0]:.3f} | "
                    f"{r['final_mean'][1]:.3f} ± {r['final_std'][1]:.3f} | {r['diff_mean']:+.3f}{se}, {r['diff_max_abs']:.3f} | "
                    f"{r['gap_to_uniform'][0]:+.3f} / {r['gap_to_uniform'][1]:+.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 50k tokens per run (results under --out only)")
    ap.add_argument("--native", type=Path, default=None, help="a finished `python -m gvm_mini demo` run to reuse")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo_isa")
    args = ap.parse_args(argv)
    native = run_demo(args.native or args.out / "native", args.quick, {})
    avx2 = run_demo(args.out / "avx2", args.quick, AVX2_ENV)
    if "torch kernels restricted" not in avx2["machine"]:
        raise SystemExit(f"demo_isa: the AVX2 run reports '{avx2['machine']}': the restriction did not take "
                         "(a CPU without AVX-512 has nothing to restrict)")
    cmp = compare(native, avx2)
    cmp["command"] = "python bench/demo_isa.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ("# The demo on two kernel paths (`" + cmp["command"].strip() + "`)\n\n"
          f"{len(cmp['seeds'])} seeds, {cmp['budget_tokens']:,} generated tokens per run, the shipped warm start on both; "
          f"native: {cmp['machines'][0]}; AVX2 path: {cmp['machines'][1]} "
          f"(`{' '.join(f'{k}={v}' for k, v in AVX2_ENV.items())}`).\n\n" + table(cmp) + "\n")
    dest = args.out if args.quick else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "demo_isa.json", json.dumps(cmp, indent=1))
    atomic_write_text(dest / "demo_isa.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
