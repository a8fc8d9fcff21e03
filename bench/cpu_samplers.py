"""CPU samplers side by side: the HF decode loop (float32, bfloat16) and vLLM's CPU engine, with a roofline.

The bfloat16 HF row is the trainer's own bf16 path (``sample_dtype: bfloat16``,
``gvm_mini.rollout.sampling_model``: the adapter merged into a bf16 copy of the policy).

All on SmolLM2-135M-Instruct + a LoRA adapter (r=16, its B drawn at random so it is not the identity), the
real-model task's chat prompts (``configs/smollm2_cpu.yaml``), ``--prompts`` x ``--group`` samples of at
most ``--max-new-tokens`` tokens at T=1, top-p 0.9, one sampler after another in one process (the HF loops
first: vLLM's in-process engine binds threads to cores). Printed per sampler: generated tokens per second,
its ratio to the roofline of its dtype, and the mean |log p| gap between the log-probs it reports and the
trainer's float32 recompute of the same tokens (0 for an exact sampler; vLLM's are after top-p, so they are
compared with the recompute after top-p too).

Roofline: the matrix products of one decode step at the sampler's batch width (every linear layer with its
LoRA pair, the output head, and attention over a ``prompt + max_new_tokens / 2`` context), run back to back
as plain ``torch.matmul`` calls on random tensors of the same shapes; tokens/s = batch / time per step. It
is the speed of the same arithmetic with no framework around it, not a hardware peak.

``--equivalence``: at one adapter, ``--eq-prompts`` x ``--eq-group`` (default 64 x 8 = 512) samples from
HF float32, from the trainer's bf16 sampler (HF, merged bf16 copy) and from vLLM (bfloat16), scored by the
task's verifier; mean reward and mean length with standard errors over prompts, and each bf16 sampler's
paired difference from float32 with its standard error (``*_diff``: vLLM; ``hf_bfloat16_*_diff``: HF bf16).

    python bench/cpu_samplers.py                    # the speed table (bench/README.md)
    python bench/cpu_samplers.py --equivalence      # backend equivalence (bench/README.md)
    python bench/cpu_samplers.py --smoke            # seconds: 4 prompts x 2, 8 tokens
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import record  # noqa: E402
from gvm_mini.config import load_config, replace, validate  # noqa: E402


def _setup(args, n_prompts: int):
    from gvm_mini import em

    cfg = load_config(HERE.parent / "configs" / "smollm2_cpu.yaml")
    cfg = validate(replace(cfg, lora_r=16, lora_alpha=32, max_completion_length=args.max_new_tokens, top_p=0.9,
                           temperature=1.0, sample_batch_size=max(args.batches), train_size=max(n_prompts, 4),
                           prompts_per_step=4, progress=False, seed=0))
    train, _ = em.load_problems(cfg)
    em.seed_all(0)
    model, tok = em.build_policy(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.eval()
    problems = train[:n_prompts]
    return cfg, model, tok, problems, em.prompt_texts(cfg, tok, problems)


def _gap(model, tok, r, top_p) -> float:
    """Mean |reported log p - float32 recompute| over the sampled tokens, both after top-p (what
    sample_hf and vllm_engine's processed log-probs report); a token outside the float32 nucleus (a
    bfloat16 sampler can draw one) is left out of the mean."""
    from gvm_mini.rollout import process_scores, to_batch

    gaps = []
    for s in range(0, len(r), 32):
        ids, attn, cmask, blogp = to_batch(r, tok.pad_token_id, range(s, min(s + 32, len(r))))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        B, T, V = logits.shape
        lp = process_scores(logits.reshape(-1, V), 1.0, top_p).log_softmax(-1).reshape(B, T, V)
        lp = lp.gather(2, ids[:, 1:, None]).squeeze(2)
        m = cmask[:, 1:] > 0
        gaps.append((lp[m] - blogp[:, 1:][m]).abs())
    gaps = torch.cat(gaps)
    return float(gaps[torch.isfinite(gaps)].mean())


def roofline(model, batch: int, context: int, dtype: torch.dtype, lora_r: int, seconds: float = 2.0) -> dict:
    """tokens/s of one decode step's matrix products as plain matmuls (module docstring)."""
    import torch.nn.functional as F

    c = model.config
    h, L, V = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    hd = getattr(c, "head_dim", None) or h // heads
    inter = c.intermediate_size
    shapes = [(h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h), (h, inter), (h, inter), (inter, h)]
    g = torch.Generator().manual_seed(0)

    def w(i, o):  # nn.Linear's layout: [out, in], applied as F.linear
        return torch.randn(o, i, generator=g).to(dtype)

    layers = [[(w(i, o), w(i, lora_r), w(lora_r, o)) for i, o in shapes] for _ in range(L)]
    head = w(h, V)
    k = torch.randn(batch, heads, hd, context, generator=g).to(dtype)
    v = torch.randn(batch, heads, context, hd, generator=g).to(dtype)
    xs = {n: torch.randn(batch, n, generator=g).to(dtype) for n in {i for i, _ in shapes}}
    q = torch.randn(batch, heads, 1, hd, generator=g).to(dtype)
    flops = 2 * batch * (L * sum(i * o + lora_r * (i + o) for i, o in shapes) + h * V + L * 2 * heads * hd * context)

    def step():
        for layer in layers:
            for (W, A, B), (i, _) in zip(layer, shapes):
                x = xs[i]
                F.linear(x, W)
                F.linear(F.linear(x, A), B)
            torch.matmul(torch.matmul(q, k), v)
        F.linear(xs[h], head)

    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    dt = (time.perf_counter() - t0) / n
    return {"tokens_per_s": batch / dt, "gflop_per_s": flops / dt / 1e9, "gflop_per_token": flops / batch / 1e9}


def _load() -> float | None:
    """The 1-minute load average (the benchmark's machine may be shared: a load above the thread count
    means the timings are slower than on an idle machine)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def speed(args) -> int:
    from gvm_mini.rollout import sample_hf, sample_policy, sampling_model, vllm_engine

    cfg, model, tok, problems, texts = _setup(args, args.prompts)
    counts = [args.group] * len(texts)
    context = cfg.max_prompt_length // 2 + args.max_new_tokens // 2  # a typical prompt + half the completion
    rows = []
    # the trainer's own bf16 sampler: a copy with the adapter merged, in bfloat16 (sample_dtype: bfloat16)
    bf16 = sampling_model(replace(cfg, sample_dtype="bfloat16"), model)
    for name, policy, dtype in (("HF float32", model, torch.float32), ("HF bfloat16", bf16, torch.bfloat16)):
        for b in args.batches:
            t0, c0 = time.perf_counter(), time.process_time()
            r = sample_hf(policy, tok, texts, counts, temperature=1.0, top_p=0.9, max_new_tokens=args.max_new_tokens,
                          batch_size=b, seed=0)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append({"load_1min": _load(), "sampler": name, "batch": b, "dtype": str(dtype).split(".")[-1],
                         "tokens": r.num_tokens, "seconds": dt, "cpu_seconds": cpu, "tokens_per_s": r.num_tokens / dt,
                         "logp_gap": _gap(model, tok, r, 0.9)})
            print(rows[-1], flush=True)
    del bf16
    for vdtype in args.vllm_dtypes:
        vcfg = replace(cfg, backend="vllm", vllm_dtype=vdtype, sample_batch_size=max(args.batches))
        t0 = time.perf_counter()
        engine = vllm_engine(vcfg)
        start = time.perf_counter() - t0
        sample_policy(vcfg, model, tok, texts[:2], [1, 1], seed=0)  # first call: adapter load, warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        r = sample_policy(vcfg, model, tok, texts, counts, seed=0)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append({"load_1min": _load(), "sampler": "vLLM CPU", "batch": max(args.batches), "dtype": vdtype,
                     "tokens": r.num_tokens, "seconds": dt, "cpu_seconds": cpu, "tokens_per_s": r.num_tokens / dt, "engine_start_s": start,
                     "logp_gap": _gap(model, tok, r, 0.9)})
        print(rows[-1], flush=True)
        del engine
    roof = {}
    for dtype in sorted({row["dtype"] for row in rows}):
        for b in sorted({row["batch"] for row in rows if row["dtype"] == dtype}):
            roof[(dtype, b)] = roofline(model, b, context, getattr(torch, dtype), cfg.lora_r)
    for row in rows:
        rl = roof[(row["dtype"], row["batch"])]
        row.update(roofline_tokens_per_s=rl["tokens_per_s"], roofline_gflop_per_s=rl["gflop_per_s"],
                   ratio_to_roofline=row["tokens_per_s"] / rl["tokens_per_s"])
    print(f"\n{len(texts)} prompts x {args.group}, <= {args.max_new_tokens} new tokens, T=1, top-p 0.9, "
          f"{torch.get_num_threads()} threads; roofline: {next(iter(roof.values()))['gflop_per_token']:.3f} GFLOP/token")
    print(f"{'sampler':<12} {'dtype':<9} {'batch':>5} {'tokens/s':>9} {'roofline':>9} {'ratio':>6} {'|dlogp|':>8}")
    for row in rows:
        print(f"{row['sampler']:<12} {row['dtype']:<9} {row['batch']:>5} {row['tokens_per_s']:>9.1f} "
              f"{row['roofline_tokens_per_s']:>9.1f} {row['ratio_to_roofline']:>6.2f} {row['logp_gap']:>8.4f}")
    path = record("cpu_samplers", {"kind": "speed", "prompts": len(texts), "group": args.group,
                                   "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
                                   "cpu": _cpu_name(), "rows": rows}, smoke=args.smoke)
    print(f"recorded in {path}")
    return 0


def _prompt_stats(values: np.ndarray, index: np.ndarray, P: int) -> tuple[float, float, np.ndarray]:
    per = np.array([values[index == i].mean() for i in range(P)])
    return float(per.mean()), float(per.std(ddof=1) / np.sqrt(P)), per


def equivalence(args) -> int:
    from gvm_mini.rewards import get_verifier, score_rollout
    from gvm_mini.rollout import sample_hf, sample_policy, sampling_model

    args.batches = [args.eq_batch]
    cfg, model, tok, problems, texts = _setup(args, args.eq_prompts)
    verifier = get_verifier(cfg.verifier)
    counts = [args.eq_group] * len(texts)
    P = len(texts)
    out, per = {}, {}
    for name in ("hf_float32", "hf_bfloat16", "vllm_bfloat16"):
        t0 = time.perf_counter()
        if name.startswith("hf"):  # the float32 policy, or the trainer's bf16 sampler (its merged bf16 copy)
            policy = model if name == "hf_float32" else sampling_model(replace(cfg, sample_dtype="bfloat16"), model)
            r = sample_hf(policy, tok, texts, counts, temperature=1.0, top_p=0.9, max_new_tokens=args.max_new_tokens,
                          batch_size=args.eq_batch, seed=0)
        else:
            vcfg = replace(cfg, backend="vllm", vllm_dtype="bfloat16", sample_batch_size=args.eq_batch)
            r = sample_policy(vcfg, model, tok, texts, counts, seed=0)
        dt = time.perf_counter() - t0
        rewards = np.asarray(score_rollout(r, problems, verifier), dtype=float)
        lengths = np.array([len(c) for c in r.completion_ids], dtype=float)
        rm, rse, rper = _prompt_stats(rewards, r.prompt_index, P)
        lm, lse, lper = _prompt_stats(lengths, r.prompt_index, P)
        per[name] = (rper, lper)
        out[name] = {"samples": len(r), "reward": rm, "reward_se": rse, "length": lm, "length_se": lse,
                     "truncated": float(r.truncated.mean()), "seconds": dt}
        print(name, out[name], flush=True)
    for other in ("hf_bfloat16", "vllm_bfloat16"):  # each bf16 sampler against the float32 policy, paired by prompt
        for k, key in ((0, "reward"), (1, "length")):
            d = per[other][k] - per["hf_float32"][k]
            tag = "" if other == "vllm_bfloat16" else "hf_bfloat16_"
            out[f"{tag}{key}_diff"] = float(d.mean())
            out[f"{tag}{key}_diff_se"] = float(d.std(ddof=1) / np.sqrt(P))
    print({k: v for k, v in out.items() if "diff" in k})
    path = record("cpu_samplers", {"kind": "equivalence", "prompts": P, "group": args.eq_group,
                                   "max_new_tokens": args.max_new_tokens, "top_p": 0.9, "cpu": _cpu_name(), **out},
                  smoke=args.smoke)
    print(f"recorded in {path}")
    return 0


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[32, 128],
                    help="HF batch widths (vLLM runs at the largest: its max_num_seqs)")
    ap.add_argument("--vllm-dtypes", type=lambda s: s.split(","), default=["bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--equivalence", action="store_true")
    ap.add_argument("--eq-prompts", type=int, default=64)
    ap.add_argument("--eq-group", type=int, default=8)
    ap.add_argument("--eq-batch", type=int, default=128)
    ap.add_argument("--smoke", action="store_true", help="seconds: 4 prompts x 2, 8 tokens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.prompts, args.group, args.max_new_tokens, args.batches = 4, 2, 8, [8]
        args.eq_prompts, args.eq_group, args.eq_batch = 4, 2, 8
    return equivalence(args) if args.equivalence else speed(args)


if __name__ == "__main__":
    sys.exit(main())
