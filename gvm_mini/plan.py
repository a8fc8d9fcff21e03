"""``train --dry-run``: what a config will do and roughly what it needs, without training.

The memory figures are *estimates* from the architecture (parameter counts are exact, built on the
``meta`` device); measured figures, where a GPU was available, are in ``bench/results/``.
"""

from __future__ import annotations

import math

import torch

from .config import Config
from .models import kv_bytes_per_token

__all__ = ["HUB_TWINS", "NF4_BYTES", "peak_tensor_bytes", "weight_memory", "phase_memory", "resolve_shape", "estimate_memory", "make_plan", "print_plan"]

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


def _shape(model) -> dict:
    c = model.config
    heads = c.num_attention_heads
    return {"h": c.hidden_size, "L": c.num_hidden_layers, "V": c.vocab_size, "I": c.intermediate_size,
            "kv": getattr(c, "num_key_value_heads", heads) or heads, "heads": heads,
            "hd": getattr(c, "head_dim", None) or c.hidden_size // heads}


def _act_bytes(cfg: Config) -> int:
    """Bytes per activation element: the compute dtype (bf16 / fp16: 2, fp32: 4; 4-bit layers compute
    in bf16 on CUDA, fp32 elsewhere, and since the hand-made QLoRA preparation leaves the rest in it,
    so do the residual stream, the KV cache and the logits)."""
    if cfg.load_in_4bit:
        return 2 if str(cfg.device).startswith("cuda") else 4
    return {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}[cfg.dtype]


def weight_memory(cfg: Config, model) -> float:
    """Bytes of the base weights (without LoRA): 2 or 4 per parameter, or under 4-bit :data:`NF4_BYTES`
    per quantized linear weight and the compute dtype's bytes for the rest (:func:`_act_bytes`)."""
    n_params = sum(p.numel() for p in model.parameters())
    if cfg.load_in_4bit:
        quantized = _quantized_linear_params(model)
        return quantized * NF4_BYTES + (n_params - quantized) * _act_bytes(cfg)
    return n_params * {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}[cfg.dtype]




def phase_memory(cfg: Config, model, phase: str, *, rows: int, tokens: int, prompts: int | None = None,
                 prompt_tokens: int | None = None) -> float:
    """Planned peak bytes of one ``phase`` of an iteration for ``rows`` sequences of ``tokens`` tokens
    (sampling: prompts of ``tokens / 2``, as many new tokens), per term (``h`` hidden size, ``I``
    MLP width, ``L`` layers, ``V`` vocabulary, ``a`` bytes per activation, ``N = rows * tokens``;
    LoRA adapters are float32):

    * every phase: the weights (:func:`weight_memory`) and the adapter (4 B/param);
    * ``update``: + AdamW's two moments (8 B/param) and the largest of three moments: the backward's
      start (each layer's checkpointed input, ``h a`` per token and layer, and the logits with their
      gradient, ``2 V a`` per token, :class:`gvm_mini.losses.SelectedLogProb`), its end (the
      adapter's gradient, 4 B/param, the checkpoints and the first layer recomputed with its LoRA
      inputs in float32, ``layer``) and the optimizer step (the gradient and AdamW's temporaries,
      :data:`STEP_BYTES` per parameter); without checkpointing every layer is kept;
    * ``gradnorm``: the backward's start or end, without parameter gradients (the ghost norms
      differentiate module outputs, keep the head's gradient in its dtype and form only ``T x T``
      Gram products, chunked);
    * ``logprobs`` (pi_old / reference, no gradient): the larger of one layer's transient and the
      logits (``V a`` per token) with the float32 chunk temporaries;
    * ``sampling`` / ``evaluation``: the larger of the prefill of the ``prompts`` distinct prompts of
      ``prompt_tokens`` (one layer's transient, their KV cache, the last position's logits) and
      the decoding: the KV cache ``2 L kv hd a`` per token of every row, one layer's copy of it (the
      cache grows by concatenation), and per row a few float32 vocabulary-wide vectors for the draw.

    The coefficients were measured on CPU at the shape twins' shapes (``bench/memory_check.py``,
    ``bench/results/gpu_memory_check.json``); a GPU adds its CUDA context and the allocator's slack.
    """
    d = _shape(model)
    h, L, V, I, kv, hd = d["h"], d["L"], d["V"], d["I"], d["kv"], d["hd"]
    a = _act_bytes(cfg)
    lora = _lora_params(model, cfg.lora_r) if cfg.lora else sum(p.numel() for p in model.parameters())
    base = weight_memory(cfg, model) + 4 * lora
    if phase == "weights":  # what build_policy leaves: the weights and the adapter
        return base
    N = rows * tokens
    q = d["heads"] * hd
    # one decoder layer's saved activations per token in a backward (attention and MLP inputs and
    # outputs in the compute dtype, the float32 copies of the inputs LoRA's A matrices see)
    layer = a * (LAYER_H * h + LAYER_I * I + 2 * q) + (4 * (5 * h + q + I) if cfg.lora else 0)
    forward_layer = a * (FWD_H * h + FWD_I * I)  # one layer's transient without gradients
    from .losses import LOGPROB_CHUNK_TOKENS  # a few float32 [chunk, V] temporaries of the log-probs

    chunks = min(N, LOGPROB_CHUNK_TOKENS) * V * 4 * CHUNK_TEMPS
    if phase in ("update", "gradnorm"):
        ck = cfg.gradient_checkpointing or cfg.load_in_4bit  # QLoRA's preparation switches it on
        keep = h * L * a if ck else layer * L
        head = N * (keep + 2 * V * a) + chunks  # the backward starts: logits and their gradient
        layers = N * (keep + layer)  # it ends: the first layer recomputed
        if phase == "gradnorm":  # gradients w.r.t. module outputs only: no parameter gradient
            return base + max(head, layers)
        # AdamW's two moments (8 B/param) throughout; the adapter's gradient (4 B/param) exists from the
        # backward's end on, and the step adds AdamW's temporaries (STEP_BYTES per parameter)
        return base + 8 * lora + max(head, 4 * lora + layers, (4 + STEP_BYTES) * lora)
    if phase == "logprobs":
        return base + max(N * forward_layer, N * V * a + chunks)
    if phase in ("sampling", "evaluation"):
        sample_dtype = getattr(cfg, "sample_dtype", "auto")
        if sample_dtype != "auto" and cfg.backend == "hf" and not cfg.load_in_4bit and sample_dtype != cfg.dtype:
            # the HF sampler runs a merged copy of the policy in sample_dtype (rollout.sampling_model): its
            # weights beside the trainer's, and activations, KV cache and logits in its dtype
            a = {"float32": 4, "bfloat16": 2, "float16": 2}[sample_dtype]
            n = sum(p.numel() for p in model.parameters()) - (lora if cfg.lora else 0)
            base += n * a
            forward_layer = a * (FWD_H * h + FWD_I * I)
        per_prompt = cfg.num_pilot if phase == "sampling" else cfg.eval_samples
        U = prompts if prompts is not None else (max(1, math.ceil(rows / max(per_prompt, 1))) if rows else 0)
        P = prompt_tokens if prompt_tokens is not None else min(cfg.max_prompt_length, tokens)
        kv_tok = 2 * L * kv * hd * a
        # prefill of the U distinct prompts: one layer's transient, their cache, and the last position's
        # logits (the sampler passes ``logits_to_keep`` as an index tensor: an int would make a peft model
        # copy the [h, V] head once per prompt, torch.matmul's unfolded path on a strided slice)
        prefill = U * P * (forward_layer + kv_tok) + U * V * (a + 4)  # the logits and their float32 copy
        # decoding: every row's cache (the prompt's repeated, then grown a token at a time by
        # concatenation, which briefly holds one layer twice) and a few float32 [rows, V] vectors
        decode = N * kv_tok * (1 + 1 / L) + rows * V * 4 * DRAW_TEMPS
        return base + max(prefill, decode)
    raise ValueError(f"phase must be one of update, gradnorm, logprobs, sampling, evaluation; got {phase!r}")


# measured coefficients (bench/memory_check.py)
LAYER_H, LAYER_I, FWD_H, FWD_I, CHUNK_TEMPS, DRAW_TEMPS, STEP_BYTES = 12, 4, 4, 3, 3, 4, 0.25


def estimate_memory(cfg: Config, model) -> dict:
    """Peak-memory plan (GiB) of each phase at the config's shapes (:func:`phase_memory`): the update
    and the gradient norms on one micro-batch of ``micro_batch_size`` sequences of
    ``max_prompt_length + max_completion_length`` tokens, the pi_old / reference log-probs on the
    same, sampling and evaluation on ``sample_batch_size`` rows (bounded by ``max_batch_tokens``).
    ``train_peak_gb`` is the largest of the training phases, ``sample_peak_gb`` of sampling and
    evaluation. With ``backend=vllm`` also the colocated engine's share
    (``vllm_gpu_memory_utilization``), its weights, its KV-cache tokens per GiB, ``min_gpu_gb`` (the
    smallest GPU on which trainer and engine fit with the engine asleep during the trainer's phases, as
    on CUDA) and ``min_gpu_gb_awake`` (side by side throughout: a platform without sleep mode).
    """
    d = _shape(model)
    L, kv, head_dim = d["L"], d["kv"], d["hd"]
    n_params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = 0 if tied else d["V"] * d["h"]
    linear = n_params - embed - head
    weights = weight_memory(cfg, model)
    lora = _lora_params(model, cfg.lora_r) if cfg.lora else n_params
    T = cfg.max_prompt_length + cfg.max_completion_length
    micro = cfg.micro_batch_size or cfg.mini_batch_size
    rows = cfg.sample_batch_size
    if cfg.max_batch_tokens:
        rows = max(1, min(rows, cfg.max_batch_tokens // T))
    phases = {p: phase_memory(cfg, model, p, rows=micro, tokens=T) for p in ("update", "gradnorm", "logprobs")}
    phases.update({p: phase_memory(cfg, model, p, rows=rows, tokens=T, prompt_tokens=cfg.max_prompt_length)
                   for p in ("sampling", "evaluation")})
    train = max(phases["update"], phases["gradnorm"], phases["logprobs"])
    sample = max(phases["sampling"], phases["evaluation"])
    kv_cache = rows * T * 2 * L * kv * head_dim * _act_bytes(cfg)
    out = {
        "parameters": n_params, "trainable": lora, "weights_gb": weights / _GB, "optimizer_gb": lora * 16 / _GB,
        **{f"{p}_peak_gb": v / _GB for p, v in phases.items()},
        "train_peak_gb": train / _GB, "kv_cache_gb": kv_cache / _GB, "sample_peak_gb": sample / _GB,
    }
    if cfg.backend == "vllm":
        # one colocated engine: vLLM takes `u = vllm_gpu_memory_utilization` of the GPU for its own copy
        # of the base weights (bf16, or ~0.53 B per linear weight with bitsandbytes 4-bit), the adapter
        # and its KV cache; it samples the pilots, the rollouts and the evaluations, so the trainer's
        # phases are the update, the gradient norms and the log-probs. On CUDA the engine sleeps between
        # samplings (rollout.vllm_engine: weights offloaded, KV cache freed), so the trainer's phases have
        # the whole GPU and only its resident state (weights, adapter, AdamW's moments) shares the GPU
        # with the awake engine: min_gpu_gb = max(trainer peak, resident / (1 - u), engine / u). Without
        # sleep mode both stay side by side all the time: min_gpu_gb_awake = max(trainer / (1 - u), engine / u).
        u = cfg.vllm_gpu_memory_utilization
        vw = (linear * 0.53 + (embed + head) * 2) if cfg.load_in_4bit else n_params * 2
        vw += _lora_params(model, cfg.lora_r) * 2
        kv_tok = kv_bytes_per_token(model.config)  # bytes per token of bf16 K and V (= 4 L kv head_dim)
        resident = weights + 12 * lora  # the adapter in float32 and AdamW's two moments
        need_vllm = (vw + cfg.sample_batch_size * T * kv_tok) / u
        out.update({
            "vllm_gpu_memory_utilization": u, "vllm_weights_gb": vw / _GB,
            "vllm_kv_tokens_per_gb": int(_GB / kv_tok), "trainer_resident_gb": resident / _GB,
            "min_gpu_gb": max(train, resident / (1 - u), need_vllm) / _GB,
            "min_gpu_gb_awake": max(train / (1 - u), need_vllm) / _GB,
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
