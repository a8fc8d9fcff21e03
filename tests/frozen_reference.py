"""The sampler and the M-step as they were at commit d4c5bf4, frozen, with every helper they compute
with: the "before" side that ``tests/test_update_equivalence.py`` and ``tests/test_sampler.py`` check
the current code against and that ``bench/sampler_speed.py`` times it against. Not used by the package.

Frozen means self-contained: the per-token log-probabilities, the losses, the GRPO advantages, the
GRPO groups, the padded training tensors, the KL reference's weight swap and the adapter switch are
copies of the d4c5bf4 code below, not imports, so a change to ``gvm_mini`` moves only the "after" side
of a comparison. From ``gvm_mini`` this module takes only data containers: the :class:`Rollout`
dataclass (the result type both sides share) and :class:`Config` (read for its fields). The crash
point of the original M-step (a test hook with no computational effect) is left out.

``sample_hf_generate``: the former ``gvm_mini.rollout.sample_hf`` (HF ``generate`` with a logits
processor that records the behaviour log-probabilities). ``m_step_before``: the former
``gvm_mini.em.m_step`` (mini-batch-wide padding, a separate pi_old forward with
``old_logprobs=recompute``).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig

from gvm_mini.config import Config
from gvm_mini.rollout import Rollout

__all__ = ["sample_hf_generate", "m_step_before"]

ACCEPT_ABOVE = 0.5  # the frozen rejection step: a sample is accepted when its reward is above this


# ---------------------------------------------------------------------------------------------
# helpers, copied from d4c5bf4 (gvm_mini/rollout.py, gvm_mini/em.py, gvm_mini/models.py, gvm_mini/losses.py)
# ---------------------------------------------------------------------------------------------


def expand_counts(counts: Sequence[int]) -> np.ndarray:
    """``[2, 0, 3] -> [0, 0, 2, 2, 2]``: the prompt index of every sample."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-D sequence of non-negative integers, got {counts}")
    return np.repeat(np.arange(counts.size), counts)


def to_batch(rollout: Rollout, pad_id: int, idx: Sequence[int] | None = None):
    """Right-padded ``input_ids``, ``attention_mask``, ``completion_mask`` and ``behaviour_logp``
    ``[S, T]`` for (a subset of) a rollout, padded to the longest row."""
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


def group_index(prompt_index: np.ndarray, group_size: int | None) -> np.ndarray:
    """GRPO group of each sample: the prompt, or sub-groups of ``group_size`` consecutive samples of
    the same prompt."""
    if group_size is None:
        return prompt_index
    out = np.empty_like(prompt_index)
    seen: dict[int, int] = {}
    for s, i in enumerate(prompt_index):
        j = seen.get(int(i), 0)
        seen[int(i)] = j + 1
        out[s] = int(i) * 1_000_000 + j // group_size
    return out


@contextlib.contextmanager
def swapped(params: list[torch.nn.Parameter], values: list[torch.Tensor] | None):
    """Temporarily give ``params`` the ``values`` (the KL reference's weights)."""
    if values is None:
        yield
        return
    saved = [p.data for p in params]
    try:
        for p, v in zip(params, values):
            p.data = v
        yield
    finally:
        for p, v in zip(params, saved):
            p.data = v


@contextlib.contextmanager
def reference_logits_context(model):
    """The LoRA adapter of a ``PeftModel`` switched off inside the block (the KL reference)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError("reference_logits_context needs a PeftModel")
    with model.disable_adapter():
        yield model


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, temperature: float = 1.0,
                   chunk_size: int | None = None) -> torch.Tensor:
    """``out[s, t] = log_softmax(logits[s, t-1] / temperature)[x_{s,t}]`` for ``t >= 1``; 0 at ``t = 0``
    and wherever the token or the one before it is padding; ``chunk_size`` samples per forward."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    S = input_ids.shape[0]
    step = S if not chunk_size else int(chunk_size)
    outs = []
    for i in range(0, S, step):
        ids, am = input_ids[i : i + step], attention_mask[i : i + step]
        logits = model(input_ids=ids, attention_mask=am, position_ids=position_ids_from_mask(am)).logits
        logits = logits[:, :-1].float()
        if temperature != 1.0:
            logits = logits / temperature
        tgt = ids[:, 1:].unsqueeze(-1)
        lp = logits.gather(-1, tgt).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        del logits
        has_ctx = am[:, 1:].bool() & am[:, :-1].bool()
        lp = torch.where(has_ctx, lp, torch.zeros_like(lp))
        outs.append(F.pad(lp, (1, 0)))
    return torch.cat(outs, dim=0)


def masked_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    n = m.sum(-1)
    per_seq = (x * m).sum(-1) / n.clamp_min(1.0)
    has = (n > 0).to(x.dtype)
    return (per_seq * has).sum() / has.sum().clamp_min(1.0)


def aggregate(x: torch.Tensor, mask: torch.Tensor, loss_type: str = "token_mean") -> torch.Tensor:
    if loss_type == "token_mean":
        return masked_token_mean(x, mask)
    if loss_type == "seq_mean_token_mean":
        return seq_mean_token_mean(x, mask)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def per_token(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sequence ``[S]`` quantity broadcast over tokens; ``[S, T]`` passed through."""
    a = a.to(device=like.device, dtype=like.dtype)
    if a.dim() == 1:
        if a.shape[0] != like.shape[0]:
            raise ValueError(f"per-sequence tensor has {a.shape[0]} rows, batch has {like.shape[0]}")
        return a[:, None].expand_as(like)
    if a.shape != like.shape:
        raise ValueError(f"per-token tensor has shape {tuple(a.shape)}, expected {tuple(like.shape)}")
    return a


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def clipped_policy_loss(logp, old_logp, advantages, mask, *, epsilon=0.2, epsilon_high=None, loss_type="token_mean",
                        clip_ratio_c=None):
    """PPO-clip surrogate, per token ``max(-A rho, -A clip(rho, 1 - eps, 1 + eps_high))``, and its stats."""
    eps_low = float(epsilon)
    eps_high = eps_low if epsilon_high is None else float(epsilon_high)
    A = per_token(advantages, logp)
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_tok = torch.maximum(pg1, pg2)
    if clip_ratio_c is not None:
        per_tok = torch.where(A < 0, torch.minimum(per_tok, -A * float(clip_ratio_c)), per_tok)
    loss = aggregate(per_tok, mask, loss_type)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_token_mean((pg2 > pg1).float(), mask),
            "ratio_mean": masked_token_mean(ratio, mask),
            "approx_kl": masked_token_mean(k3_kl(old_logp, logp), mask),
            "ppo_kl": masked_token_mean(-log_ratio, mask),
        }
    return loss, stats


def policy_objective(logp, old_logp, advantages, mask, *, epsilon=0.2, epsilon_high=None, loss_type="token_mean",
                     kl_coef=0.001, ref_logp=None, policy_loss="clip", clip_ratio_c=None):
    """``agg(policy term) + kl_coef * agg(k3_kl(logp, ref_logp))``; ``policy_loss``: clip or vanilla."""
    if policy_loss == "clip":
        if old_logp is None:
            raise ValueError("policy_loss='clip' needs old_logp")
        pg, stats = clipped_policy_loss(logp, old_logp, advantages, mask, epsilon=epsilon, epsilon_high=epsilon_high,
                                        loss_type=loss_type, clip_ratio_c=clip_ratio_c)
    elif policy_loss == "vanilla":
        pg, stats = aggregate(-per_token(advantages, logp) * logp, mask, loss_type), {}
    else:
        raise ValueError(f"policy_loss must be 'clip' or 'vanilla', got {policy_loss!r}")
    stats["pg_loss"] = pg.detach()
    loss = pg
    if ref_logp is not None and kl_coef:
        kl = aggregate(k3_kl(logp, ref_logp), mask, loss_type)
        stats["kl"] = kl.detach()
        loss = loss + float(kl_coef) * kl
    return loss, stats


def group_stats(rewards: torch.Tensor, prompt_index):
    """Per-sample group id, group size, mean, unbiased std and an all-equal flag."""
    r = rewards.float().reshape(-1)
    idx = torch.as_tensor(prompt_index, device=r.device).reshape(-1)
    if idx.shape[0] != r.shape[0]:
        raise ValueError(f"rewards has {r.shape[0]} entries, prompt_index has {idx.shape[0]}")
    _, g = torch.unique(idx, return_inverse=True)
    G = int(g.max()) + 1 if g.numel() else 0
    n = torch.zeros(G, device=r.device).index_add_(0, g, torch.ones_like(r))
    mean = torch.zeros(G, device=r.device).index_add_(0, g, r) / n
    ss = torch.zeros(G, device=r.device).index_add_(0, g, (r - mean[g]) ** 2)
    std = torch.sqrt(ss / (n - 1).clamp_min(1.0))
    hi = torch.full((G,), -torch.inf, device=r.device).scatter_reduce(0, g, r, "amax")
    lo = torch.full((G,), torch.inf, device=r.device).scatter_reduce(0, g, r, "amin")
    return r, g, n[g], mean[g], std[g], (hi == lo)[g]


def grpo_advantages(rewards: torch.Tensor, prompt_index, *, eps: float = 1e-6, scale: str = "std",
                    singleton: str = "zero") -> torch.Tensor:
    """``(r - mean_g) / (std_g + eps)`` over ragged groups; 0 for all-equal groups and lone samples."""
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    if singleton not in ("zero", "raw"):
        raise ValueError(f"singleton must be 'zero' or 'raw', got {singleton!r}")
    r, _, n, mean, std, equal = group_stats(rewards, prompt_index)
    single = n == 1
    if singleton == "raw":
        mean = torch.where(single, torch.zeros_like(mean), mean)
        std = torch.where(single, torch.ones_like(std), std)
    adv = r - mean
    if scale == "std":
        adv = adv / (std + eps)
    dead = (equal & ~single) | (single & (singleton == "zero"))
    return torch.where(dead, torch.zeros_like(adv), adv)


def zero_signal_fraction(rewards: torch.Tensor, prompt_index) -> float:
    """Fraction of groups whose rewards are all equal."""
    r, g, *_, equal = group_stats(rewards, prompt_index)
    if r.numel() == 0:
        return 0.0
    G = int(g.max()) + 1
    per_group = torch.zeros(G, dtype=torch.bool, device=r.device).scatter_(0, g, equal)
    return float(per_group.float().mean())


# ---------------------------------------------------------------------------------------------
# the former sampler
# ---------------------------------------------------------------------------------------------


class SampleAndRecord:
    """Logits processor placed last in ``generate``: applies temperature and top-p itself (so the
    recorded log-probabilities are those of the distribution sampled from) and records, at each
    step, the log-probability of the token chosen at the previous step."""

    def __init__(self, temperature: float, top_p: float):
        self.temperature = temperature
        self.top_p = top_p
        self.prev: torch.Tensor | None = None
        self.out: list[torch.Tensor] = []

    def gather(self, tokens: torch.Tensor) -> None:
        self.out.append(self.prev.gather(1, tokens[:, None]).squeeze(1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.gather(input_ids[:, -1])
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
            self.gather(last_tokens)
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
    """The former ``sample_hf``: ``counts[i]`` completions of ``prompts[i]`` (chat-formatted text)
    through HF ``generate`` (batched, left-padded, KV cache; ``temperature`` 0 = greedy, ``top_p``),
    the prompt encoded once per sample, with a full log-softmax per step for the behaviour
    log-probabilities. Chunks of at most ``batch_size`` sequences (and ``max_batch_tokens //
    (prompt_len + max_new_tokens)`` if given); ``seed`` seeds torch's global generator."""
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
    # An explicit config, so that a checkpoint's own generation_config.json cannot change the
    # distribution; temperature and top-p are applied by the recorder, which must see the final one.
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
        recorder = SampleAndRecord(temperature, top_p)
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


# ---------------------------------------------------------------------------------------------
# the former M-step
# ---------------------------------------------------------------------------------------------


def m_step_before(cfg: Config, model, optimizer, rollout: Rollout, rewards: np.ndarray, pad_id: int,
                  ref_values, seed: int) -> dict:
    """One M-step: one epoch of mini-batch updates over the step's samples. Returns its metrics.

    old log-probs (and the KL reference's) are computed once, before the first update, as verl does.
    A non-finite loss or gradient skips that update (the weights never see a NaN) and is counted.
    """
    S = len(rollout)
    dev = next(model.parameters()).device
    accepted = torch.as_tensor(np.asarray(rewards) > ACCEPT_ABOVE, dtype=torch.float32)
    r = torch.as_tensor(rewards, dtype=torch.float32)
    groups = torch.as_tensor(group_index(rollout.prompt_index, cfg.grpo_group_size))
    if cfg.algorithm == "grpo":
        adv = grpo_advantages(r, groups, scale="std" if cfg.grpo_scale_std else "none")
    else:
        adv = accepted
    stats = {"zero_signal_frac": zero_signal_fraction(r, groups), "loss": [], "pg_loss": [], "kl": [],
             "clip_frac": [], "grad_norm": [], "skipped_updates": 0, "updates": 0}
    trainable = [p for p in model.parameters() if p.requires_grad]
    use_kl = cfg.kl_coef > 0
    chunks = [list(range(s, min(s + cfg.mini_batch_size, S))) for s in range(0, S, cfg.mini_batch_size)]
    # behaviour (old) and reference log-probs, before any update. old_logprobs="behaviour" takes the
    # log-probs the sampler recorded, which saves a forward pass over every sample.
    old, ref = [None] * len(chunks), [None] * len(chunks)
    perm = np.random.default_rng(seed).permutation(S)
    chunks = [perm[c].tolist() for c in chunks]
    model.eval()  # no dropout in the forward passes that define the losses
    with torch.no_grad():
        for j, c in enumerate(chunks):
            ids, attn, cmask, blogp = to_batch(rollout, pad_id, c)
            ids, attn = ids.to(dev), attn.to(dev)
            if cfg.algorithm != "raft" and cfg.old_logprobs == "behaviour":
                old[j] = blogp.to(dev)
            elif cfg.algorithm != "raft":
                old[j] = token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
            if use_kl:
                if cfg.kl_reference == "initial" and cfg.lora:
                    with reference_logits_context(model):
                        ref[j] = token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
                else:
                    with swapped(trainable, ref_values):
                        ref[j] = token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
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
            logp = token_logprobs(model, ids, attn)
            loss, st = policy_objective(
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
        stats["updates"] += 1
        stats["loss"].append(acc_loss)
        stats["grad_norm"].append(float(gn))
        for k in ("pg_loss", "kl", "clip_frac"):
            stats[k].append(acc_st[k])
    optimizer.zero_grad(set_to_none=True)
    for k in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm"):
        stats[k] = float(np.mean(stats[k])) if stats[k] else None
    return stats
