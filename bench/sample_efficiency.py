"""Sample efficiency of GVM against uniform budgets, side by side in one run.

1. Demo task (tiny SFT-warmed policy, graded arithmetic; `gvm_mini.demo`): for X in {RAFT++, GRPO},
   the generated tokens (pilots included) and M-steps GVM-X needs to reach uniform-X's final test
   accuracy, over several seeds (mean curves), and the ratio. Goal (issue 5): >= 2x in tokens.
2. Synthetic exact models (`gvm_mini.synthetic`): the iterations (E-steps) GVM and uniform need to
   bring L(theta) to a target (the uniform run's mean L after half its iterations), and the ratio;
   equal budget per M-step, pilots priced at N' samples per prompt where estimated.

    python bench/sample_efficiency.py --seeds 5       # the demo part dominates: about 1 min per seed
    python bench/sample_efficiency.py --smoke         # seconds (CI): synthetic part only, 2 seeds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import record

from gvm_mini.synthetic import make_model, run_em


def synthetic_part(seeds: int, T: int) -> dict:
    model = make_model(8, 6, 4, seed=0)
    from gvm_mini.synthetic import gamma

    eta = gamma(model)
    curves = {}
    for rule in ("uniform", "gvm"):
        curves[rule] = np.array([run_em(model, rule, 64, T, 5, eta, s).loss[::5] for s in range(seeds)])  # per E-step
    mean = {r: c.mean(0) for r, c in curves.items()}
    target = mean["uniform"][T // 2]

    def first(m):
        hit = np.flatnonzero(m <= target)
        return int(hit[0]) if hit.size else None

    it = {r: first(m) for r, m in mean.items()}
    ratio = it["uniform"] / it["gvm"] if it["uniform"] and it["gvm"] else None
    out = {"target_L": float(target), "iterations_to_target": it, "ratio": ratio,
           "final_L": {r: [float(c[:, -1].mean()), float(c[:, -1].std())] for r, c in curves.items()}}
    print(f"synthetic: target L={target:.4f}; E-steps to reach it: uniform {it['uniform']}, gvm {it['gvm']}"
          f" -> ratio {ratio if ratio is None else round(ratio, 2)}; final L uniform {out['final_L']['uniform'][0]:.4f}"
          f" gvm {out['final_L']['gvm'][0]:.4f}")
    return out


def demo_part(seeds: int, quick: bool, out: Path | None) -> dict:
    from gvm_mini.demo import run_demo

    out = out or Path(tempfile.mkdtemp(prefix="gvm-bench-"))
    summary = run_demo(out, quick=quick, seeds=seeds)
    return {"out": str(out), "methods": summary["methods"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="the demo's quick budget per run")
    ap.add_argument("--out", type=Path, default=None, help="keep the demo runs here")
    ap.add_argument("--skip-demo", action="store_true", help="synthetic part only")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    payload = {"synthetic": synthetic_part(2 if args.smoke else max(args.seeds, 8), 6 if args.smoke else 12)}
    if not args.smoke and not args.skip_demo:
        payload["demo"] = demo_part(args.seeds, args.quick, args.out)
        methods = payload["demo"]["methods"]
        for x, base in (("GVM-RAFT++", "RAFT++"), ("GVM-GRPO", "GRPO")):
            g, b = methods[x], methods[base]
            acc = (f"final acc {g['final_acc_mean']:.3f} ± {g['final_acc_std']:.3f} vs {b['final_acc_mean']:.3f} ± "
                   f"{b['final_acc_std']:.3f} (start {b['start_acc']:.3f})")
            if "note" in b:
                print(f"demo: {x}: {acc}; no ratio: {base} did not end above its start (goal >= 2x in tokens)")
                continue
            rt, rs = g.get("tokens_ratio_vs_baseline"), g.get("m_steps_ratio_vs_baseline")
            fmt = lambda r: "not reached" if r is None else f"{r:.2f}x"
            print(f"demo: {x}: {acc}; tokens ratio vs {base} {fmt(rt)} (goal >= 2x), M-steps ratio {fmt(rs)}")
    print(f"results -> {record('sample_efficiency', payload, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
