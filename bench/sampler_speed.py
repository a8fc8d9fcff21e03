"""The sampler and the M-step of issue 14 against the ones before it, side by side in one run.

Same model, prompts, counts and seeds on both sides; the two are run alternately ``--repeats`` times
(so machine noise falls on both) and the median of each is compared. Printed: time per 1k generated
tokens for sampling (old: HF ``generate`` with a log-softmax recorder, the prompt encoded once per
sample; new: ``gvm_mini.rollout.sample_hf``'s decode loop with one prefill per prompt), time per
M-step on the same rollout (old: mini-batch-wide padding and, with ``old_logprobs=recompute``, a
separate pi_old forward; new: ``gvm_mini.em.m_step``), and the ratios old / new.

    python bench/sampler_speed.py                    # the demo's warm start (built and cached if missing)
    python bench/sampler_speed.py --model DIR        # any local HF model dir with a chat template
    python bench/sampler_speed.py --smoke            # seconds: random tiny model (CI)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="local HF model dir (default: the demo's warm start)")
    ap.add_argument("--smoke", action="store_true", help="seconds: random tiny model, small batch (CI)")
    ap.add_argument("--task", choices=("rules", "chains"), default="rules", help="the demo task's prompts")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--mini-batch", type=int, default=None, help="M-step mini-batch (default: all samples, one update)")
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--old-logprobs", default="recompute", choices=("recompute", "behaviour"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo-run", default=None, metavar="ALGO:ALLOC",
                    help="instead: one quick demo run (e.g. grpo:gvm) with the old code paths, then with the new, "
                         "and their wall times (train phases and total)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from _before_issue14 import m_step_before, sample_hf_generate
    from _common import record

    from gvm_mini.config import Config
    from gvm_mini.data import arithmetic_problems, format_chat
    from gvm_mini.em import m_step
    from gvm_mini.models import load_model
    from gvm_mini.rollout import sample_hf

    if args.demo_run:
        return demo_run(args)
    if args.smoke:
        args.prompts, args.group, args.max_new_tokens, args.repeats = 4, 4, 16, 1
        model, tok = load_model("tiny-qwen2")
        source = "tiny-qwen2 (random)"
    else:
        from gvm_mini import demo

        if args.model is None:
            sft = demo.SFT() if args.task == "chains" else demo.RuleSFT()
            args.model = demo.warm_start(Path.home() / ".cache" / "gvm_mini", sft, progress=True)
        model, tok = load_model(str(args.model), dtype="float32")
        source = f"{args.model} ({args.task} task)"
    if args.smoke:
        problems = arithmetic_problems(args.prompts, seed=1234, min_operands=2, max_operands=3, max_digits=2)
    else:
        from gvm_mini.em import load_problems

        problems = load_problems(demo.demo_config(args.model, "grpo", "uniform", 0, quick=True, task=args.task))[0][: args.prompts]
    prompts = [format_chat(tok, p.problem, system=None, instruction="") for p in problems]
    counts = [args.group] * len(prompts)
    n = len(prompts) * args.group
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, batch_size=n)

    times = {"sample_old": [], "sample_new": [], "update_old": [], "update_new": []}
    tokens = {}
    ro = None
    for rep in range(args.repeats):
        for name, fn in (("old", sample_hf_generate), ("new", sample_hf)):
            t0 = time.perf_counter()
            r = fn(model, tok, prompts, counts, seed=rep, **kw)
            times[f"sample_{name}"].append(time.perf_counter() - t0)
            tokens.setdefault(name, []).append(r.num_tokens)
            if name == "new" and ro is None:
                ro = r
    rewards = [float(i % 3 == 0) for i in range(len(ro))]
    cfg = Config(lora=False, algorithm="grpo", mini_batch_size=args.mini_batch or n, micro_batch_size=args.micro_batch,
                 learning_rate=1e-4, weight_decay=0.0, kl_coef=0.0, old_logprobs=args.old_logprobs)
    import numpy as np

    for rep in range(args.repeats):
        for name, fn in (("old", m_step_before), ("new", m_step)):
            m = copy.deepcopy(model)
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=cfg.learning_rate)
            t0 = time.perf_counter()
            fn(cfg, m, opt, ro, np.asarray(rewards), tok.pad_token_id, None, seed=rep)
            times[f"update_{name}"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tok_old, tok_new = statistics.mean(tokens["old"]), statistics.mean(tokens["new"])
    per1k = {"sample_old": med["sample_old"] / tok_old * 1000, "sample_new": med["sample_new"] / tok_new * 1000,
             "update_old": med["update_old"] / ro.num_tokens * 1000, "update_new": med["update_new"] / ro.num_tokens * 1000}
    ratio_sample = per1k["sample_old"] / per1k["sample_new"]
    ratio_update = per1k["update_old"] / per1k["update_new"]
    ratio_total = (per1k["sample_old"] + per1k["update_old"]) / (per1k["sample_new"] + per1k["update_new"])
    print(f"model: {source}; {len(prompts)} prompts x {args.group} samples, <= {args.max_new_tokens} new tokens, "
          f"{args.repeats} alternating repeats, {args.threads} torch thread(s)")
    print(f"{'':28s}{'before':>10s}{'after':>10s}{'before/after':>14s}")
    print(f"{'sampling s / 1k tokens':28s}{per1k['sample_old']:10.4f}{per1k['sample_new']:10.4f}{ratio_sample:13.2f}x")
    print(f"{'M-step s / 1k tokens':28s}{per1k['update_old']:10.4f}{per1k['update_new']:10.4f}{ratio_update:13.2f}x")
    print(f"{'both s / 1k tokens':28s}{per1k['sample_old'] + per1k['update_old']:10.4f}"
          f"{per1k['sample_new'] + per1k['update_new']:10.4f}{ratio_total:13.2f}x")
    print(f"generated tokens per batch: before {tok_old:.0f}, after {tok_new:.0f} (different draws, same distribution)")
    path = record("sampler_speed", {
        "model": source, "prompts": len(prompts), "group": args.group, "max_new_tokens": args.max_new_tokens,
        "mini_batch": cfg.mini_batch_size, "micro_batch": args.micro_batch, "old_logprobs": args.old_logprobs,
        "repeats": args.repeats, "times": times, "tokens": tokens, "per_1k_tokens": per1k,
        "ratio_sampling": ratio_sample, "ratio_update": ratio_update, "ratio_total": ratio_total,
    }, smoke=args.smoke)
    print(f"results -> {path}")


def demo_run(args) -> None:
    """One ``demo --quick`` run (seed 0) through ``em.run`` with the former sampler and M-step patched
    in, then the same run with the current ones; the same config, data and seeds."""
    import json
    import tempfile

    import torch

    import gvm_mini.em as em
    import gvm_mini.rollout as rollout
    from _before_issue14 import m_step_before, sample_hf_generate
    from _common import record
    from gvm_mini import demo

    torch.set_num_threads(args.threads)
    if args.model is None:
        sft = demo.SFT() if args.task == "chains" else demo.RuleSFT()
        args.model = demo.warm_start(Path.home() / ".cache" / "gvm_mini", sft, progress=True)
    algo, alloc = args.demo_run.split(":")
    cfg = demo.demo_config(args.model, algo, alloc, 0, quick=True, task=args.task)
    # warm-up outside the timed runs (imports, model load, verifier), which the first run would pay
    from gvm_mini.rewards import get_verifier

    em.build_policy(cfg)
    get_verifier(cfg.verifier)
    new = (em.sample_hf, rollout.sample_hf, em.m_step)
    old = (sample_hf_generate, sample_hf_generate, lambda *a, prompt_p=None, **k: m_step_before(*a, **k))
    out = {}
    for name, (s_em, s_ro, m) in (("before", old), ("after", new)):
        em.sample_hf, rollout.sample_hf, em.m_step = s_em, s_ro, m
        try:
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                state = em.run(cfg, Path(d) / "run")
                total = time.perf_counter() - t0
                evals = [json.loads(x) for x in open(Path(d) / "run" / "metrics.jsonl") if '"kind": "eval"' in x]
        finally:
            em.sample_hf, rollout.sample_hf, em.m_step = new
        out[name] = {"total_s": total, "wall": state.wall, "tokens": state.tokens, "updates": state.updates,
                     "final_avg_at_k": evals[-1]["avg_at_k"] if evals else None}
        train = sum(v for k, v in state.wall.items() if k not in ("eval", "checkpoint"))
        print(f"{name:>6}: total {total:6.1f} s, training phases {train:6.1f} s "
              f"(rollout {state.wall['rollout']:.1f}, pilot {state.wall['pilot']:.1f}, update {state.wall['update']:.1f}), "
              f"eval {state.wall['eval']:.1f} s; {state.tokens} tokens, final Avg@k {out[name]['final_avg_at_k']}", flush=True)
    tb, ta = out["before"]["total_s"], out["after"]["total_s"]
    trb, tra = (sum(v for k, v in out[n]["wall"].items() if k not in ("eval", "checkpoint")) for n in ("before", "after"))
    print(f"demo run {args.task} {args.demo_run} --quick: before/after {tb / ta:.2f}x in total wall time, "
          f"{trb / tra:.2f}x in the training phases")
    path = record("sampler_speed", {"demo_run": args.demo_run, "task": args.task, "model": str(args.model),
                                    "runs": out, "ratio_total": tb / ta, "ratio_train_phases": trb / tra})
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
