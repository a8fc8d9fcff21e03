"""The current sampler and M-step against the frozen ones of commit d4c5bf4, side by side in one run.

Same model, prompts, counts and seeds on both sides; the two are run alternately ``--repeats`` times
(so machine noise falls on both) and the median of each is compared. Printed: time per 1k generated
tokens for sampling (old: HF ``generate`` with a log-softmax recorder, the prompt encoded once per
sample; new: ``gvm_mini.rollout.sample_hf``'s decode loop with one prefill per prompt), time per
M-step on the same rollout (old: mini-batch-wide padding and, with ``old_logprobs=recompute``, a
separate pi_old forward; new: ``gvm_mini.mstep.m_step``), and the ratios old / new.

Before the timings count, the two sides must agree (a ``check:`` line; the script exits with 1 when
they do not): greedy completions token for token, with the same behaviour log-probabilities, and the
first repeat's M-step statistics (loss, policy loss, gradient norm, zero-signal fraction, updates) on
the same rollout and seed.

The "old" side is ``tests/frozen_reference.py``, a self-contained copy of the former sampler and
M-step that the tests check the current code against; this script puts ``tests/`` on ``sys.path``
(after everything else) to import it.

    python bench/sampler_speed.py                    # the demo's warm start (built and cached if missing)
    python bench/sampler_speed.py --model DIR        # any local HF model dir with a chat template
    python bench/sampler_speed.py --smoke            # seconds: random tiny model (CI)
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "tests"))  # frozen_reference.py: the frozen "old" side

#: M-step statistics compared between the two sides, and the tolerance (float rounding; with several
#: mini-batches the later updates start from weights that already differ by rounding)
MSTEP_KEYS = ("loss", "pg_loss", "grad_norm", "zero_signal_frac")
MSTEP_RTOL, MSTEP_ATOL = 1e-3, 1e-6
LOGPROB_ATOL = 1e-4


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= MSTEP_ATOL + MSTEP_RTOL * abs(b)


def main() -> int:
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
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from _common import record
    from frozen_reference import m_step_before, sample_hf_generate

    from gvm_mini.config import Config
    from gvm_mini.data import arithmetic_problems, format_chat
    from gvm_mini.models import load_model
    from gvm_mini.mstep import m_step
    from gvm_mini.rewards import accepted
    from gvm_mini.rollout import sample_hf

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

    # the two sides agree: greedy completions token for token, with the same log-probabilities
    greedy = {name: fn(model, tok, prompts, [1] * len(prompts), temperature=0.0, max_new_tokens=args.max_new_tokens,
                       batch_size=len(prompts), seed=0)
              for name, fn in (("old", sample_hf_generate), ("new", sample_hf))}
    same = [a == b for a, b in zip(greedy["old"].completion_ids, greedy["new"].completion_ids)]
    lp_diff = max((float(np.abs(a - b).max()) for a, b, s in zip(greedy["old"].logprobs, greedy["new"].logprobs, same)
                   if s and len(a)), default=0.0)

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
    rewards = np.array([float(i % 3 == 0) for i in range(len(ro))])
    cfg = Config(lora=False, algorithm="grpo", mini_batch_size=args.mini_batch or n, micro_batch_size=args.micro_batch,
                 learning_rate=1e-4, weight_decay=0.0, kl_coef=0.0, old_logprobs=args.old_logprobs)
    mstats = {}
    for rep in range(args.repeats):
        for name, fn in (("old", m_step_before), ("new", m_step)):
            m = copy.deepcopy(model)
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=cfg.learning_rate)
            t0 = time.perf_counter()
            st = fn(cfg, m, opt, ro, rewards, tok.pad_token_id, None, seed=rep)
            times[f"update_{name}"].append(time.perf_counter() - t0)
            mstats.setdefault(name, st)
    check = {
        "greedy_samples": len(same), "greedy_identical": int(sum(same)), "greedy_logprob_max_abs_diff": lp_diff,
        "mstep_old": {k: mstats["old"][k] for k in (*MSTEP_KEYS, "updates", "skipped_updates")},
        "mstep_new": {k: mstats["new"][k] for k in (*MSTEP_KEYS, "updates", "skipped_updates")},
        "mstep_differs": [k for k in MSTEP_KEYS if not _close(mstats["new"][k], mstats["old"][k])]
        + [k for k in ("updates", "skipped_updates") if mstats["new"][k] != mstats["old"][k]],
        "accepted": int(accepted(rewards).sum()), "rollout_tokens": ro.num_tokens,
    }
    check["ok"] = (all(same) and lp_diff <= LOGPROB_ATOL and not check["mstep_differs"]
                   and mstats["new"]["updates"] >= 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    tok_old, tok_new = statistics.mean(tokens["old"]), statistics.mean(tokens["new"])
    per1k = {"sample_old": med["sample_old"] / tok_old * 1000, "sample_new": med["sample_new"] / tok_new * 1000,
             "update_old": med["update_old"] / ro.num_tokens * 1000, "update_new": med["update_new"] / ro.num_tokens * 1000}
    ratio_sample = per1k["sample_old"] / per1k["sample_new"]
    ratio_update = per1k["update_old"] / per1k["update_new"]
    ratio_total = (per1k["sample_old"] + per1k["update_old"]) / (per1k["sample_new"] + per1k["update_new"])
    print(f"model: {source}; {len(prompts)} prompts x {args.group} samples, <= {args.max_new_tokens} new tokens, "
          f"{args.repeats} alternating repeats, {args.threads} torch thread(s)")
    print(f"check: {'ok' if check['ok'] else 'MISMATCH'}: greedy completions identical {check['greedy_identical']}/"
          f"{check['greedy_samples']} (log-prob max diff {lp_diff:.1e}); M-step statistics "
          + (f"equal to rel {MSTEP_RTOL:g}" if not check["mstep_differs"] else f"differ in {', '.join(check['mstep_differs'])}")
          + f" (grad norm before {mstats['old']['grad_norm']}, after {mstats['new']['grad_norm']})")
    print(f"{'':28s}{'before':>10s}{'after':>10s}{'before/after':>14s}")
    print(f"{'sampling s / 1k tokens':28s}{per1k['sample_old']:10.4f}{per1k['sample_new']:10.4f}{ratio_sample:13.2f}x")
    print(f"{'M-step s / 1k tokens':28s}{per1k['update_old']:10.4f}{per1k['update_new']:10.4f}{ratio_update:13.2f}x")
    print(f"{'both s / 1k tokens':28s}{per1k['sample_old'] + per1k['update_old']:10.4f}"
          f"{per1k['sample_new'] + per1k['update_new']:10.4f}{ratio_total:13.2f}x")
    print(f"generated tokens per batch: before {tok_old:.0f}, after {tok_new:.0f} (different draws, same distribution); "
          f"M-step rollout {ro.num_tokens} tokens")
    path = record("sampler_speed", {
        "model": source, "prompts": len(prompts), "group": args.group, "max_new_tokens": args.max_new_tokens,
        "mini_batch": cfg.mini_batch_size, "micro_batch": args.micro_batch, "old_logprobs": args.old_logprobs,
        "repeats": args.repeats, "times": times, "tokens": tokens, "update_tokens": ro.num_tokens, "per_1k_tokens": per1k,
        "ratio_sampling": ratio_sample, "ratio_update": ratio_update, "ratio_total": ratio_total, "check": check,
    }, smoke=args.smoke)
    print(f"results -> {path}")
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
