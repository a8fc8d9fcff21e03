"""The GVM stage (pilot sampling, gradient norms, allocation) as a share of iteration wall time.

For each gradnorm parameter set (lora, embed_tokens, lm_head) and with/without pilot reuse, one
GVM-RAFT++ run on the tiny arithmetic setup; every configuration runs in this one process, side by
side. Share = (pilot + gradnorm + allocate) / (all training phases, evaluation excluded).
Goal (issue 5): at most 10% (the paper reports about 20%).

    python bench/overhead.py            # about a minute on 2 CPU cores
    python bench/overhead.py --smoke    # seconds (CI)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import record

from gvm_mini.config import Config, validate
from gvm_mini.em import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--model", default="tiny-qwen2", help="a model name or a local dir (e.g. the demo's warm start)")
    args = ap.parse_args()
    rows = []
    for reuse in (False, True):
        for params in ("lora", "embed_tokens", "lm_head"):
            cfg = validate(Config(
                model=args.model, lora=True, lora_r=8, dataset="arithmetic", train_size=256, test_size=8,
                system_prompt=None, instruction="", algorithm="raftpp", allocation="gvm", num_pilot=4,
                samples_per_prompt=8, gradnorm_params=params, pilot="reuse" if reuse else "fresh", max_completion_length=16 if args.smoke else 48,
                iterations=1 if args.smoke else 3, prompts_per_step=8 if args.smoke else 32, steps_per_iteration=2,
                mini_batch_size=64, eval_every=0, progress=False, seed=0,
            ))
            with tempfile.TemporaryDirectory() as d:
                state = run(cfg, Path(d))
            w = dict(state.wall)
            train = sum(v for k, v in w.items() if k not in ("eval", "checkpoint"))
            share = (w["pilot"] + w["gradnorm"] + w["allocate"]) / train
            rows.append({"gradnorm_params": params, "reuse_pilot": reuse, "gvm_share": share,
                         "gradnorm_share": w["gradnorm"] / train, "pilot_share": w["pilot"] / train,
                         "tokens": state.tokens, "pilot_tokens": state.pilot_tokens, "wall": w, "train_wall": train})
            print(f"gradnorm={params:<12} reuse_pilot={reuse!s:<5}  GVM stage {100 * share:5.1f}% of train wall "
                  f"(pilot {100 * w['pilot'] / train:4.1f}%, gradnorm {100 * w['gradnorm'] / train:4.1f}%)  "
                  f"pilot tokens {state.pilot_tokens}/{state.tokens}")
    best = min(r["gvm_share"] for r in rows)
    print(f"lowest GVM-stage share: {100 * best:.1f}% (goal <= 10%)")
    print(f"results -> {record('overhead', {'model': args.model, 'rows': rows}, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
