"""The M-step without dead work against the M-step that forwards every sample, side by side in one run.

One realistic RAFT++ step on SmolLM2-135M-Instruct + LoRA (r 16, all linear layers; the real-model
curve's settings, ``bench/realmodel_curve.py``) on this CPU, one torch thread: ``--prompts`` prompts of
two-digit addition/subtraction x ``--group`` samples drawn by the model itself, ``--accept`` of them
accepted (chosen at random: the rate, not the verifier, is what the cost depends on), ``kl_coef`` 0,
``mini_batch_size`` ``--mini-batch`` (so the later mini-batches recompute pi_old). The same rollout,
rewards, seed and starting weights go through ``gvm_mini.mstep.m_step`` with ``skip_dead=True`` (the
rejected samples are not forwarded) and ``skip_dead=False`` (they are, as before), alternately
``--repeats`` times so machine noise falls on both; printed and recorded
(``bench/results/mstep_deadwork.jsonl``): the median seconds of each, their ratio, the rows
forwarded, and a check that the two updates agree (LoRA weights after the M-step, loss statistics).

    python bench/mstep_deadwork.py             # ~2 min on one shared core
    python bench/mstep_deadwork.py --smoke     # seconds: random tiny model
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="seconds: random tiny model, nothing recorded")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8, help="samples per prompt")
    ap.add_argument("--accept", type=float, default=0.3, help="fraction of the samples accepted")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--mini-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from _common import record
    from realmodel_curve import BASE

    from gvm_mini import data, models
    from gvm_mini.config import Config
    from gvm_mini.mstep import m_step
    from gvm_mini.rollout import sample_hf

    if args.smoke:
        args.prompts, args.group, args.max_new_tokens, args.repeats = 2, 4, 8, 1
        model, tok = models.load_model("tiny-qwen2")
    else:
        model, tok = models.load_smollm2()
    model = models.add_lora(model, r=BASE["lora_r"], lora_alpha=BASE["lora_alpha"],
                            target_modules=BASE["lora_target_modules"], seed=0)
    probs = data.arithmetic_problems(args.prompts, seed=1234, min_operands=2, max_operands=2, max_digits=2, ops=("+", "-"))
    texts = [data.format_chat(tok, p.problem, system=None, instruction=BASE["instruction"]) for p in probs]
    n = args.prompts * args.group
    t0 = time.perf_counter()
    ro = sample_hf(model, tok, texts, [args.group] * args.prompts, temperature=1.0, max_new_tokens=args.max_new_tokens,
                   batch_size=n, seed=0)
    sample_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rewards = np.zeros(n)
    rewards[rng.choice(n, size=round(args.accept * n), replace=False)] = 1.0
    cfg = Config(lora=True, algorithm="raftpp", mini_batch_size=args.mini_batch, learning_rate=BASE["learning_rate"],
                 weight_decay=0.01, kl_coef=0.0, epsilon=0.2, epsilon_high=0.28)

    from gvm_mini import losses

    # rows through the model: every forward of the M-step goes through one of these two
    real_plain, real_shared = losses.token_logprobs, losses.token_logprobs_shared_prompts
    count = [0]

    def plain(model_, ids, *a, **k):
        count[0] += ids.shape[0]
        return real_plain(model_, ids, *a, **k)

    def shared(model_, prompts, completions, *a, **k):
        count[0] += len(completions)
        return real_shared(model_, prompts, completions, *a, **k)

    rows, times, out = {}, {True: [], False: []}, {}
    for rep in range(args.repeats):
        for skip in (True, False) if rep % 2 == 0 else (False, True):
            m = copy.deepcopy(model)
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                    weight_decay=cfg.weight_decay)
            count[0] = 0
            losses.token_logprobs, losses.token_logprobs_shared_prompts = plain, shared
            try:
                t = time.perf_counter()
                st = m_step(cfg, m, opt, ro, rewards, tok.pad_token_id, None, seed=0, skip_dead=skip)
                times[skip].append(time.perf_counter() - t)
            finally:
                losses.token_logprobs, losses.token_logprobs_shared_prompts = real_plain, real_shared
            rows[skip] = count[0]
            out.setdefault(skip, (st, torch.cat([p.detach().flatten() for p in m.parameters() if p.requires_grad])))
    (sk, wk), (sf, wf) = out[True], out[False]
    w0 = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    # AdamW turns the float rounding of near-zero gradient entries into full-size steps on those
    # entries, so the weights are compared in norm: |after_skip - after_all| / |after_all - before|
    moved = float((wf - w0).norm())
    weight_rel_diff = float((wk - wf).norm()) / moved if moved else 0.0
    stat_diff = {k: abs(sk[k] - sf[k]) for k in ("loss", "pg_loss", "clip_frac", "grad_norm")}
    ok = weight_rel_diff < 1e-2 and all(d <= 1e-5 + 1e-4 * abs(sf[k]) for k, d in stat_diff.items())
    before, after = statistics.median(times[False]), statistics.median(times[True])
    res = {
        "model": "tiny-qwen2 (random)" if args.smoke else "SmolLM2-135M-Instruct + LoRA r16 all-linear",
        "samples": n, "accepted": int(rewards.sum()), "generated_tokens": int(ro.num_tokens),
        "mean_completion_len": ro.num_tokens / n, "truncated_frac": float(ro.truncated.mean()),
        "mini_batch_size": args.mini_batch, "updates": sk["updates"], "sample_s": round(sample_s, 2),
        "rows_forwarded_before": rows[False], "rows_forwarded_after": rows[True],
        "mstep_s_before": [round(x, 2) for x in times[False]], "mstep_s_after": [round(x, 2) for x in times[True]],
        "median_before_s": round(before, 2), "median_after_s": round(after, 2), "speedup": round(before / after, 2),
        "check": {"weights_max_rel_diff": weight_rel_diff, "stat_abs_diff": stat_diff, "agree": ok},
        "torch_threads": 1,
    }
    print(f"M-step of {n} samples ({int(rewards.sum())} accepted, {ro.num_tokens} generated tokens, "
          f"{sk['updates']} updates): forwarding every sample {before:.1f} s, without the dead ones {after:.1f} s "
          f"-> {before / after:.2f}x ({rows[False]} -> {rows[True]} rows forwarded)")
    print(f"check: weights agree to {weight_rel_diff:.1e} of the update (norm), statistics {stat_diff} -> {'ok' if ok else 'DIFFER'}")
    if not args.smoke:
        record("mstep_deadwork", res)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
