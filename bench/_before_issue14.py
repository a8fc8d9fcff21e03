"""The sampler and the M-step as they were before issue 14 (commit d4c5bf4), frozen: the references
that ``bench/sampler_speed.py`` times the current ones against and that
``tests/test_update_equivalence.py`` checks the current M-step against. Not used by the package.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from gvm_mini.config import Config
from gvm_mini.em import _crash_point, _group_index, _swapped
from gvm_mini.rollout import Rollout, expand_counts, to_batch


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
def sample_hf_generate(
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
    """The former :func:`sample_hf`, through HF ``generate`` with a logits processor that records
    the behaviour log-probabilities (a full log-softmax per step). Kept as the reference that
    ``bench/sampler_speed.py`` measures the decode loop against; same arguments and result type.

    Draw ``counts[i]`` completions of ``prompts[i]`` (already chat-formatted text) with HF
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


def m_step_before(cfg: Config, model, optimizer, rollout: Rollout, rewards: np.ndarray, pad_id: int,
           ref_values, seed: int) -> dict:
    """One M-step: one epoch of mini-batch updates over the step's samples. Returns its metrics.

    old log-probs (and the KL reference's) are computed once, before the first update, as verl does.
    A non-finite loss or gradient skips that update (the weights never see a NaN) and is counted.
    """
    from gvm_mini import losses

    S = len(rollout)
    dev = next(model.parameters()).device
    accepted = torch.as_tensor(rewards > 0.5, dtype=torch.float32)
    r = torch.as_tensor(rewards, dtype=torch.float32)
    groups = torch.as_tensor(_group_index(rollout.prompt_index, cfg.grpo_group_size))
    if cfg.algorithm == "grpo":
        adv = losses.grpo_advantages(r, groups, scale="std" if cfg.grpo_scale_std else "none")
    else:
        adv = accepted
    stats = {"zero_signal_frac": losses.zero_signal_fraction(r, groups), "loss": [], "pg_loss": [], "kl": [],
             "clip_frac": [], "grad_norm": [], "skipped_updates": 0, "updates": 0}
    trainable = [p for p in model.parameters() if p.requires_grad]
    use_kl = cfg.kl_coef > 0
    chunks = [list(range(s, min(s + cfg.mini_batch_size, S))) for s in range(0, S, cfg.mini_batch_size)]
    # behaviour (old) and reference log-probs, before any update. old_logprobs="behaviour" takes the
    # log-probs the sampler recorded (exact for HF sampling at temperature 1, top_p 1: the samples were
    # drawn by this very policy just before the M-step), which saves a forward pass over every sample.
    old, ref = [None] * len(chunks), [None] * len(chunks)
    perm = np.random.default_rng(seed).permutation(S)
    chunks = [perm[c].tolist() for c in chunks]
    model.eval()  # no dropout in the forward passes that define the losses (tiny models have none)
    with torch.no_grad():
        for j, c in enumerate(chunks):
            ids, attn, cmask, blogp = to_batch(rollout, pad_id, c)
            ids, attn = ids.to(dev), attn.to(dev)
            if cfg.algorithm != "raft" and cfg.old_logprobs == "behaviour":
                old[j] = blogp.to(dev)
            elif cfg.algorithm != "raft":
                old[j] = losses.token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
            if use_kl:
                if cfg.kl_reference == "initial" and cfg.lora:
                    from gvm_mini.models import reference_logits_context

                    with reference_logits_context(model):
                        ref[j] = losses.token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
                else:
                    with _swapped(trainable, ref_values):
                        ref[j] = losses.token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
    model.train()  # LoRA dropout (if any) is on for the update itself
    micro = cfg.micro_batch_size or cfg.mini_batch_size
    for j, c in enumerate(chunks):
        # gradient accumulation over micro-batches; each micro loss is weighted by its share of the
        # mini-batch's tokens (token_mean) or sequences (seq_mean_token_mean), so the accumulated
        # gradient equals that of the whole mini-batch in one piece.
        ids_all, attn_all, cmask_all, _ = to_batch(rollout, pad_id, c)
        unit = cmask_all.sum() if cfg.loss_type == "token_mean" else (cmask_all.sum(-1) > 0).sum()
        optimizer.zero_grad(set_to_none=True)
        acc_loss, acc_st, ok = 0.0, {}, True
        for s0 in range(0, len(c), micro):
            sl = slice(s0, s0 + micro)
            ids, attn, cmask = ids_all[sl].to(dev), attn_all[sl].to(dev), cmask_all[sl].to(dev)
            share = (cmask.sum() if cfg.loss_type == "token_mean" else (cmask.sum(-1) > 0).sum()) / unit.clamp_min(1)
            logp = losses.token_logprobs(model, ids, attn)
            loss, st = losses.policy_objective(
                logp, None if old[j] is None else old[j][sl], adv[c][sl].to(dev), cmask,
                epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                kl_coef=cfg.kl_coef if use_kl else 0.0, ref_logp=None if ref[j] is None else ref[j][sl],
                policy_loss="vanilla" if cfg.algorithm == "raft" else "clip",
            )
            if not torch.isfinite(loss):
                ok = False
                break
            (loss * share.to(loss.device)).backward()
            acc_loss += float(loss.detach()) * float(share)
            for k in ("pg_loss", "kl", "clip_frac"):
                acc_st[k] = acc_st.get(k, 0.0) + float(st.get(k, loss if k == "pg_loss" else 0.0)) * float(share)
        if not ok:
            optimizer.zero_grad(set_to_none=True)
            stats["skipped_updates"] += 1
            continue
        gn = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        if not torch.isfinite(gn):
            optimizer.zero_grad(set_to_none=True)
            stats["skipped_updates"] += 1
            continue
        optimizer.step()
        _crash_point("optimizer_step")
        stats["updates"] += 1
        stats["loss"].append(acc_loss)
        stats["grad_norm"].append(float(gn))
        for k in ("pg_loss", "kl", "clip_frac"):
            stats[k].append(acc_st[k])
    optimizer.zero_grad(set_to_none=True)
    for k in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm"):
        stats[k] = float(np.mean(stats[k])) if stats[k] else None
    return stats
