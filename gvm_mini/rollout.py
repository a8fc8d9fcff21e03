"""Sampling ``n_i`` completions for prompt ``i`` (ragged groups), with HF ``generate`` or vLLM.

A :class:`Rollout` is flat: sample ``s`` answers prompt ``prompt_index[s]``; no code assumes a fixed
number of samples per prompt. Each sample carries its prompt and completion token ids, its text and
the per-token log-probabilities of the distribution it was actually drawn from (after temperature
and top-p), which is the behaviour policy of the importance ratios in RAFT++ / GRPO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

__all__ = ["Rollout", "sample_hf", "sample_vllm", "to_batch", "expand_counts"]


@dataclass
class Rollout:
    """A flat batch of S samples answering P prompts (see module docstring)."""

    prompt_index: np.ndarray  # [S] int
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[np.ndarray]  # [len(completion)] float32, behaviour policy
    texts: list[str]
    truncated: np.ndarray  # [S] bool: hit max_new_tokens without an end-of-sequence token
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


class _SampleAndRecord:
    """Logits processor placed last in ``generate``: applies temperature and top-p itself (so the
    recorded log-probabilities are those of the distribution sampled from) and records, at each
    step, the log-probability of the token chosen at the previous step. Memory is O(batch x vocab)
    for one step, never the whole ``scores`` history."""

    def __init__(self, temperature: float, top_p: float):
        self.temperature = temperature
        self.top_p = top_p
        self.prev: torch.Tensor | None = None
        self.out: list[torch.Tensor] = []

    def _gather(self, tokens: torch.Tensor) -> None:
        self.out.append(self.prev.gather(1, tokens[:, None]).squeeze(1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self._gather(input_ids[:, -1])
        scores = scores.float()
        if self.temperature > 0:
            scores = scores / self.temperature
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            cum = sorted_scores.softmax(-1).cumsum(-1)
            drop_sorted = cum - sorted_scores.softmax(-1) >= self.top_p  # keep the token crossing top_p
            drop = drop_sorted.scatter(1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        self.prev = scores.log_softmax(-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self._gather(last_tokens)
        return torch.stack(self.out, 1) if self.out else torch.zeros(last_tokens.shape[0], 0)


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
    """Draw ``counts[i]`` completions of ``prompts[i]`` (already chat-formatted text) with HF
    ``generate``: batched, left-padded, KV cache, ``temperature`` (0 = greedy) and ``top_p``.

    Sequences are processed in chunks of at most ``batch_size``; if ``max_batch_tokens`` is given a
    chunk also holds at most ``max_batch_tokens // (prompt_len + max_new_tokens)`` sequences, which
    bounds the KV-cache memory. ``seed`` seeds torch's global generator (``generate`` draws from it),
    so CPU sampling is reproducible. The model's train/eval mode is left as it was (DESIGN.md: 4-bit
    CPU kernels break after eval-mode inference), and dropout-free models sample the same either way.
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
    device = next(model.parameters()).device
    out_prompt, out_comp, out_lp, out_txt, out_trunc = [], [], [], [], []
    order = np.arange(index.size)
    chunks: list[np.ndarray] = []
    start = 0
    while start < index.size:
        size = batch_size
        if max_batch_tokens:
            longest = max(len(encoded[i]) for i in index[start : start + batch_size])
            size = max(1, min(batch_size, max_batch_tokens // (longest + max_new_tokens)))
        chunks.append(order[start : start + size])
        start += size
    # An explicit config, so that a checkpoint's own generation_config.json (Qwen ships top_k=20,
    # repetition_penalty=1.05, ...) cannot change the distribution behind our back. Temperature and
    # top-p are applied by the recorder, which must see the final distribution.
    gen_config = GenerationConfig(
        do_sample=temperature > 0, temperature=1.0, top_p=1.0, repetition_penalty=1.0,
        max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
        **({"top_k": 0} if temperature > 0 else {}),  # 0 disables top-k (greedy needs no flag)
    )
    bar = tqdm(total=int(index.size), desc=desc, disable=not progress, leave=False)
    for chunk in chunks:
        ids = [encoded[index[s]] for s in chunk]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            attn[r, width - len(x) :] = 1
        recorder = _SampleAndRecord(temperature, top_p)
        gen = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attn.to(device),
            generation_config=gen_config,
            logits_processor=[recorder],
        )
        new = gen[:, width:].cpu()
        lp = recorder.finish(gen[:, -1]).cpu() if new.shape[1] else torch.zeros(len(ids), 0)
        for r, x in enumerate(ids):
            toks = new[r].tolist()
            n_keep = len(toks)
            if eos in toks:
                n_keep = toks.index(eos) + 1  # the end token is part of what the model learns
            toks = toks[:n_keep]
            out_prompt.append(list(x))
            out_comp.append(toks)
            out_lp.append(lp[r, :n_keep].numpy().astype(np.float32))
            out_txt.append(tokenizer.decode(toks, skip_special_tokens=True))
            out_trunc.append(not toks or toks[-1] != eos)
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
    progress: bool = False,
) -> Rollout:
    """vLLM backend (GPU extra, imported lazily): one ``SamplingParams(n=counts[i])`` per prompt,
    and the LoRA adapter passed as a ``LoRARequest`` (saved with ``save_pretrained`` to
    ``lora_path``) rather than merged into the base weights every step.

    Log-probabilities are vLLM's sampled-token log-probabilities (``logprobs=0``); with vLLM's
    default ``logprobs_mode`` they are of the unscaled logits, so the M-step recomputes the
    behaviour log-probabilities with the training model anyway (as verl does).
    """
    try:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as e:  # pragma: no cover - exercised only where vLLM is installed
        raise RuntimeError(
            "the vLLM backend needs the GPU extra: pip install 'gvm-mini[vllm]' (and a CUDA GPU)"
        ) from e
    if len(prompts) != len(counts):
        raise ValueError(f"prompts and counts differ in length: {len(prompts)} vs {len(counts)}")
    keep = [i for i, c in enumerate(counts) if c > 0]
    params = [
        SamplingParams(
            n=int(counts[i]), temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
            logprobs=0, seed=None if seed is None else seed + i,
        )
        for i in keep
    ]
    lora = LoRARequest("gvm_mini", lora_id, lora_path) if lora_path else None
    outs = llm.generate([prompts[i] for i in keep], params, lora_request=lora, use_tqdm=progress)
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
