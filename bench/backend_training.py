"""Do the two samplers train alike? A short SmolLM2 run with ``backend: hf`` and with ``backend: vllm``, same seeds.

    python bench/backend_training.py                 # 3 seeds x 2 backends (README of bench/, "vLLM on CPU")
    python bench/backend_training.py --seeds 2 --iterations 2    # quicker, noisier
    python bench/backend_training.py --smoke         # one tiny run per backend (the code path)

Each run is ``python -m gvm_mini train --config configs/smollm2_cpu.yaml`` in its own process (the CLI a user
runs; one vLLM engine per process) with ``--set backend=hf`` (the trainer's bf16 sampler: a merged bfloat16
copy of the policy, ``sample_dtype: bfloat16``) or ``--set backend=vllm`` (vLLM's CPU engine, bfloat16, the
adapter as a LoRA request), everything else equal: the config's GVM-RAFT++ iteration on one-digit addition,
``--iterations`` iterations of ``--prompts`` prompts, an evaluation (Average@``--k`` on ``--test`` held-out
prompts, T = 1) before the first and after the last iteration. Both samplers are bf16 and the trainer
recomputes pi_old in float32, so the runs differ only in which bf16 sampler drew the samples (and in the
random streams, which the two engines do not share: a seed fixes the prompt order and the LoRA init, not the
same draws). "Alike" means the difference between backends is within the spread between seeds: the
script prints, per backend, the mean and the standard deviation over seeds of the final accuracy, of the
mean training reward and of the completion length, and the difference between backends with its standard
error (seed-paired).

Writes ``bench/results/backend_training.json`` (``--smoke``: under ``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import record  # noqa: E402

BACKENDS = ("hf", "vllm")


def run(backend: str, seed: int, out: Path, args) -> dict:
    """One ``train`` run (a subprocess); returns its summary from ``metrics.jsonl``."""
    d = out / backend / f"seed{seed}"
    if not (d / "metrics.jsonl").exists() or not any('"kind": "eval"' in line for line in
                                                       (d / "metrics.jsonl").read_text().splitlines()[-3:]):
        sets = {"backend": backend, "seed": seed, "iterations": args.iterations, "prompts_per_step": args.prompts,
                "test_size": args.test, "eval_samples": args.k, "eval_every": args.iterations,
                "progress": "false", "save_weights": "false"}
        cmd = [sys.executable, "-m", "gvm_mini", "train", "--config", str(ROOT / "configs" / "smollm2_cpu.yaml"),
               "--out", str(d)] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        (d / "bench_wall.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in recs if r["kind"] == "eval"]
    steps = [r for r in recs if r["kind"] == "step"]
    samples = sum(s["step_samples"] for s in steps)
    return {
        "start_acc": evals[0]["avg_at_k"], "final_acc": evals[-1]["avg_at_k"],
        "train_reward": float(np.average([s["reward_mean"] for s in steps], weights=[s["step_samples"] for s in steps])),
        "mean_len": sum(s["step_tokens"] for s in steps) / max(samples, 1),
        "tokens": recs[-1].get("tokens"), "wall_s": float((d / "bench_wall.txt").read_text()),
    }


def summarize(runs: dict) -> dict:
    """Per backend: mean and sd over seeds; between backends: the seed-paired difference and its SE."""
    out = {}
    seeds = sorted(set(runs["hf"]) & set(runs["vllm"]))
    for key in ("start_acc", "final_acc", "train_reward", "mean_len", "wall_s"):
        row = {}
        for b in BACKENDS:
            x = np.array([runs[b][s][key] for s in seeds], float)
            row[b] = {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if len(x) > 1 else None}
        dlt = np.array([runs["vllm"][s][key] - runs["hf"][s][key] for s in seeds], float)
        row["vllm_minus_hf"] = {"mean": float(dlt.mean()),
                                "se": float(dlt.std(ddof=1) / np.sqrt(len(dlt))) if len(dlt) > 1 else None}
        out[key] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    ap.add_argument("--test", type=int, default=32, help="held-out prompts")
    ap.add_argument("--k", type=int, default=4, help="samples per held-out prompt (Average@k)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "backend_training")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.iterations, args.prompts, args.test, args.k = 1, 1, 2, 2, 1
    runs = {b: {} for b in BACKENDS}
    for s in range(args.seeds):
        for b in BACKENDS:
            runs[b][s] = run(b, s, args.out, args)
            print(b, s, runs[b][s], flush=True)
    summary = summarize(runs) if args.seeds > 1 else {}
    for key, row in summary.items():
        d = row["vllm_minus_hf"]
        print(f"{key:<13} hf {row['hf']['mean']:.3f} (sd {row['hf']['sd']:.3f})  vllm {row['vllm']['mean']:.3f} "
              f"(sd {row['vllm']['sd']:.3f})  vllm - hf {d['mean']:+.3f} ± {d['se']:.3f}")
    path = record("backend_training", {"seeds": args.seeds, "iterations": args.iterations, "prompts": args.prompts,
                                       "test": args.test, "k": args.k, "runs": runs, "summary": summary},
                  smoke=args.smoke)
    print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
