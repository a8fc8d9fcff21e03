"""``train --dry-run``: what a config will do and roughly what it needs, without training.

The memory figures are *estimates* from the architecture (parameter counts are exact, built on the
``meta`` device); measured figures, where a GPU was available, are in ``bench/results/``.
"""

from __future__ import annotations

import math

import torch

from .config import Config

__all__ = ["HUB_TWINS", "NF4_BYTES", "peak_tensor_bytes", "resolve_shape", "estimate_memory", "make_plan", "print_plan"]

#: Hub ids whose shape twin stands in for the weights when they cannot be downloaded.
HUB_TWINS = {
    "Qwen/Qwen2.5-Math-1.5B": "qwen2.5-math-1.5b",
    "Qwen/Qwen2.5-Math-1.5B-Instruct": "qwen2.5-math-1.5b",
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b",
}

_GB = 1024**3


def peak_tensor_bytes(fn, *args, **kwargs):
    """``(peak, result)`` of ``fn(*args, **kwargs)``: the largest amount of CPU tensor memory live at
    once during the call, in bytes above what was live when it started (allocations and frees as
    the CPU allocator reports them to ``torch.profiler`` with ``profile_memory=True``, in order).
    The CPU counterpart of ``torch.cuda.max_memory_allocated`` after a reset; what the plan's
    per-phase terms are checked against (``bench/memory_check.py``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn(*args, **kwargs)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak, result


def resolve_shape(cfg: Config):
    """(model built on the meta device, source) for ``cfg.model``: the real config when it is local
    or a built-in, the shape twin for the known hub ids, else None."""
    from . import models

    name = cfg.model
    try:
        if name in HUB_TWINS or name.startswith("twin:"):
            twin = HUB_TWINS.get(name, name.split(":", 1)[-1])
            return models.shape_twin(twin, device="meta"), f"shape twin {twin}"
        if name in ("tiny-qwen2", "tiny-llama", "smollm2"):
            model, _ = models.load_model(name)
            return model, "built-in"
        from transformers import AutoConfig, AutoModelForCausalLM

        conf = AutoConfig.from_pretrained(name, local_files_only=True)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(conf), "local config"
    except Exception as e:  # noqa: BLE001 - the plan says what it could not resolve
        return None, f"unresolved ({type(e).__name__}: {e})"


def _lora_params(model, r: int) -> int:
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            n += r * (mod.in_features + mod.out_features)
    return n


#: Bytes per 4-bit NF4 weight with double quantization (bitsandbytes, blocks of 64): 4 bits, one uint8
#: scale per block, one float32 scale per 256 blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


def _quantized_linear_params(model) -> int:
    """Weights that bitsandbytes stores in 4 bits: every ``nn.Linear`` weight except the output head."""
    return sum(mod.weight.numel() for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"))


def estimate_memory(cfg: Config, model) -> dict:
    """Peak-memory estimate (GiB) for training and for HF sampling.

    weights: bf16/fp16 2 B/param, fp32 4 B; 4-bit NF4 with double quantisation :data:`NF4_BYTES`
    (0.516 B) per linear weight, and everything else (embeddings, an untied head, norms, biases) in
    float32, because ``peft.prepare_model_for_kbit_training`` upcasts every non-quantized tensor (on
    CPU and CUDA alike; measured within 1% of :func:`gvm_mini.models.weight_bytes` for the two twins
    on CPU, ``bench/results/qlora_footprint.jsonl``). LoRA: adapter in fp32 + AdamW's two fp32 moments + grad
    (16 B/param). Training activations for one micro-batch of ``micro_batch_size`` sequences of
    ``max_prompt_length + max_completion_length`` tokens: without gradient checkpointing about
    ``34 * h * L`` bytes per token (the usual transformer estimate), with it ``2 * h * L`` plus one
    layer; fp32 logits and their log-softmax, ``8 * V`` bytes per token. Sampling: the KV cache,
    ``4 * L * kv_heads * head_dim`` bytes per token (bf16 K and V) for ``sample_batch_size``
    sequences, plus one step of fp32 logits. With ``backend=vllm`` also the colocated engine's share
    (``vllm_gpu_memory_utilization``), its weights, its KV-cache tokens per GiB and ``min_gpu_gb``, the
    smallest GPU on which trainer and engine fit side by side.
    """
    c = model.config
    h, L, V = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", heads) or heads
    head_dim = getattr(c, "head_dim", None) or h // heads
    n_params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    tied = bool(getattr(c, "tie_word_embeddings", False))
    head = 0 if tied else V * h
    linear = n_params - embed - head
    wbytes = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}[cfg.dtype]
    if cfg.load_in_4bit:
        quantized = _quantized_linear_params(model)
        weights = quantized * NF4_BYTES + (n_params - quantized) * 4
    else:
        weights = n_params * wbytes
    lora = _lora_params(model, cfg.lora_r) if cfg.lora else n_params
    optim = lora * 16
    T = cfg.max_prompt_length + cfg.max_completion_length
    micro = cfg.micro_batch_size or cfg.mini_batch_size
    per_tok = (2 * h * L + 34 * h) if cfg.gradient_checkpointing else 34 * h * L
    act = micro * T * per_tok * (wbytes if not cfg.load_in_4bit else 2)
    logits = micro * T * V * 8
    train = weights + optim + act + logits
    kv_cache = cfg.sample_batch_size * T * 4 * L * kv * head_dim
    sample = weights + kv_cache + cfg.sample_batch_size * V * 8
    out = {
        "parameters": n_params, "trainable": lora, "weights_gb": weights / _GB, "optimizer_gb": optim / _GB,
        "activations_gb": act / _GB, "logits_gb": logits / _GB, "train_peak_gb": train / _GB,
        "kv_cache_gb": kv_cache / _GB, "sample_peak_gb": sample / _GB,
    }
    if cfg.backend == "vllm":
        # one colocated engine: vLLM takes `u = vllm_gpu_memory_utilization` of the GPU for its own copy
        # of the base weights (bf16, or ~0.53 B per linear weight with bitsandbytes 4-bit), the adapter
        # and its KV cache; the trainer (and HF sampling for evaluation) gets the rest, 1 - u. The
        # smallest GPU that holds both: max(trainer peak / (1 - u), (vLLM weights + one full-length
        # batch of KV cache) / u).
        u = cfg.vllm_gpu_memory_utilization
        vw = (linear * 0.53 + (embed + head) * 2) if cfg.load_in_4bit else n_params * 2
        vw += _lora_params(model, cfg.lora_r) * 2
        kv_tok = 4 * L * kv * head_dim  # bytes per token of bf16 K and V
        need = max(train, sample) / (1 - u)
        need_vllm = (vw + cfg.sample_batch_size * T * kv_tok) / u
        out.update({
            "vllm_gpu_memory_utilization": u, "vllm_weights_gb": vw / _GB,
            "vllm_kv_tokens_per_gb": int(_GB / kv_tok), "min_gpu_gb": max(need, need_vllm) / _GB,
        })
    return out


def make_plan(cfg: Config) -> dict:
    """The numbers ``--dry-run`` prints: prompts, budget, samples and tokens per iteration, memory."""
    m = cfg.prompts_per_iteration
    pilot = cfg.num_pilot * m if cfg.uses_pilot else 0
    budget = cfg.samples_per_prompt * m
    per_it = pilot + budget
    plan = {
        "algorithm": f"{'GVM-' if cfg.allocation == 'gvm' else ''}{ {'raft': 'RAFT', 'raftpp': 'RAFT++', 'grpo': 'GRPO'}[cfg.algorithm]}"
                     + (f" (allocation={cfg.allocation})" if cfg.allocation not in ("gvm", "uniform") else ""),
        "iterations": cfg.iterations, "prompts_per_iteration": m, "m_steps_per_iteration": cfg.steps_per_iteration,
        "pilot_samples_per_iteration": pilot, "training_samples_per_iteration": budget,
        "samples_per_iteration": per_it,
        "max_generated_tokens_per_iteration": per_it * cfg.max_completion_length,
        "updates_per_m_step": math.ceil(cfg.samples_per_prompt * cfg.prompts_per_step / cfg.mini_batch_size),
        "eval_samples": (cfg.eval_size or cfg.test_size) * cfg.eval_samples if cfg.eval_every else 0,
    }
    model, source = resolve_shape(cfg)
    plan["model_source"] = source
    if model is not None:
        plan.update({k: (round(v, 2) if isinstance(v, float) else v) for k, v in estimate_memory(cfg, model).items()})
    return plan


def print_plan(cfg: Config) -> dict:
    plan = make_plan(cfg)
    width = max(len(k) for k in plan)
    print(f"plan for {cfg.model} ({'4-bit QLoRA' if cfg.load_in_4bit else 'LoRA' if cfg.lora else 'full'}), estimates marked *_gb:")
    for k, v in plan.items():
        print(f"  {k:<{width}}  {v}")
    return plan
