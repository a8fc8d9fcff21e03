"""The M-step: one epoch of mini-batch policy-gradient updates on one step's samples.

In reading order (paper §3-4; the losses are :mod:`gvm_mini.losses`, ``theory/em_view.md``)::

    advantages      RAFT / RAFT++: A_s = 1(sample s accepted); GRPO: group-normalised rewards
    prompt weights  prompt_weighting != tokens: a per-sample factor on A_s (Algorithm 1's 1/|D_i|,
                    Lemma 1's 1/(n_i p_i)), scaled so the step size stays comparable
    mini-batches    a seeded permutation of the samples cut into mini_batch_size pieces, each cut
                    into micro-batches that pad little and encode each shared prompt once
    old / ref       pi_old log-probs (sampler's, recomputed, or the first update's own forward) and
                    the KL reference's, all before the first update (as verl does)
    update          per mini-batch: micro-batch losses accumulated with their share of the
                    normaliser, gradient clipped, one optimizer step (skipped if not finite)

The gradient of a mini-batch is the same sum as in one piece, in another order (equal up to float
rounding).

No dead work: with ``kl_coef == 0`` a sample whose final advantage is exactly 0 (a rejected sample
of RAFT / RAFT++, a sample of an all-equal GRPO group, a zero prompt weight) has a loss term and a
gradient of exactly 0, so it is never forwarded (neither for pi_old nor in the update): the
micro-batches are planned over the live samples only, while the normaliser (the mini-batch's tokens
under ``token_mean``, its non-empty sequences under ``seq_mean_token_mean``) still counts every
sample, so the update is the same to float rounding. A mini-batch with no live sample still makes
its optimizer step, with a zero gradient, as it did when its samples were forwarded (AdamW's
momentum and weight decay move the weights even then). With KL on, every sample is forwarded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import losses
from .atomic import crash_point
from .models import reference_logits_context
from .rewards import accepted
from .rollout import Rollout, to_batch

__all__ = ["group_index", "make_optimizer", "initial_reference", "kl_reference", "advantages", "live_samples",
           "MicroBatch", "MiniBatch", "length_buckets", "plan_micro_batches", "mini_batch_responses", "plan",
           "old_and_ref_logprobs", "micro_batch_logprobs", "update", "m_step"]


# ---------------------------------------------------------------------------------------------
# the optimizer and the KL reference
# ---------------------------------------------------------------------------------------------


def make_optimizer(cfg, model) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (``learning_rate``, ``weight_decay``)."""
    from .config import ConfigError

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def initial_reference(cfg, model) -> list[torch.Tensor] | None:
    """The KL reference ``kl_reference: initial`` without LoRA: a copy of the starting trainable
    weights (with LoRA the adapter is switched off instead, so nothing is copied)."""
    if cfg.kl_coef > 0 and cfg.kl_reference == "initial" and not cfg.lora:
        return [p.detach().clone() for p in model.parameters() if p.requires_grad]
    return None


def kl_reference(cfg, model, initial: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """The reference weights of this iteration's KL term: the iteration-start snapshot
    (``kl_reference: iteration_start``) or :func:`initial_reference`'s copy."""
    if cfg.kl_coef > 0 and cfg.kl_reference == "iteration_start":
        return [p.detach().clone() for p in model.parameters() if p.requires_grad]
    return initial


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


# ---------------------------------------------------------------------------------------------
# advantages and prompt weights
# ---------------------------------------------------------------------------------------------


def group_index(prompt_index: np.ndarray, group_size: int | None) -> np.ndarray:
    """GRPO group of each sample: the prompt (the official code) or sub-groups of ``group_size``
    consecutive samples of the same prompt (paper App. B: copies of the prompt with 4 rollouts)."""
    if group_size is None:
        return prompt_index
    out = np.empty_like(prompt_index)
    seen: dict[int, int] = {}
    for s, i in enumerate(prompt_index):
        j = seen.get(int(i), 0)
        seen[int(i)] = j + 1
        out[s] = int(i) * 1_000_000 + j // group_size
    return out


def advantages(cfg, rollout: Rollout, rewards: np.ndarray, prompt_p=None) -> torch.Tensor:
    """Per-sample advantage ``A_s``: ``1(accepted)`` for RAFT / RAFT++ (Eq. 8), the group-normalised
    reward for GRPO; times the prompt weight when ``prompt_weighting`` is not ``tokens``.

    Prompt weights (:func:`gvm_mini.losses.prompt_weights`; ``prompt``: Algorithm 1's ``1/|D_i|``,
    ``lemma1``: ``1/(n_i p_i)`` with ``p_i = prompt_p``) enter as a factor on ``A_s`` relative to the
    sample's weight under the token mean, scaled by one constant so that the counted samples carry
    the same total weight as under ``tokens`` (Algorithm 1's direction, a comparable step size; the
    KL term is not re-weighted)."""
    S = len(rollout)
    acc = torch.as_tensor(accepted(rewards), dtype=torch.float32)
    if cfg.algorithm == "grpo":
        groups = torch.as_tensor(group_index(rollout.prompt_index, cfg.grpo_group_size))
        adv = losses.grpo_advantages(torch.as_tensor(rewards, dtype=torch.float32), groups,
                                     scale="std" if cfg.grpo_scale_std else "none")
    else:
        adv = acc
    if cfg.prompt_weighting == "tokens":
        return adv
    lengths = torch.tensor([len(c) for c in rollout.completion_ids], dtype=torch.float64)
    counted = torch.ones(S) if cfg.algorithm == "grpo" else acc  # D_i: the samples that carry signal
    w = losses.prompt_weights(rollout.prompt_index, counted, lengths, cfg.prompt_weighting, p=prompt_p)
    token_mean = cfg.loss_type == "token_mean"
    factor = w * (lengths.sum() if token_mean else S * lengths)  # weight w_s relative to today's
    mass_today = lengths if token_mean else torch.ones_like(lengths)  # each sample's mass under `tokens`
    cnt = counted.to(torch.float64)
    mass = float((cnt * factor * mass_today).sum())
    factor = factor * (float((cnt * mass_today).sum()) / mass if mass > 0 else 1.0)
    return adv * factor.float()


def live_samples(cfg, adv: torch.Tensor) -> np.ndarray:
    """The samples the M-step must forward: all of them with a KL term (``kl_coef > 0``: every
    completion token carries one), else those whose final advantage (prompt weight included) is not
    exactly 0. A dead sample's policy-loss term is ``-0 * ratio`` (or ``-0 * log pi``): 0 in value and
    in gradient; it still counts in the normaliser. A NaN advantage is live (the update then sees it)."""
    if cfg.kl_coef > 0:
        return np.ones(len(adv), dtype=bool)
    return (adv != 0).numpy()


# ---------------------------------------------------------------------------------------------
# mini-batches and micro-batches
# ---------------------------------------------------------------------------------------------


def length_buckets(lengths: Sequence[int], max_size: int | None = None, *, overhead_tokens: int = 64,
                   max_pieces: int = 8) -> list[np.ndarray]:
    """Cut a batch into micro-batches of similar length, so that each is padded only to its own longest.

    Returns index arrays into ``lengths`` covering every position once, longest first (a stable sort).
    With ``max_size`` the pieces hold at most ``max_size`` sequences each (the user's micro-batch, a
    memory bound). Without it the number of equal-count pieces ``K <= max_pieces`` is the one that
    minimises ``padded tokens + K * overhead_tokens`` (one more forward/backward call costs about
    ``overhead_tokens`` tokens' worth of compute on small models), so a batch of equal lengths stays in
    one piece. Example: lengths ``[10, 100, 12, 98]`` -> ``[[1, 3], [2, 0]]`` (396 padded tokens in
    one piece, 200 + 24 + 64 in two).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    n = order.size
    if n == 0:
        return []
    if max_size:
        return [order[s : s + max_size] for s in range(0, n, max_size)]
    srt = lengths[order]
    best, best_cost = [order], float(n * srt[0])
    for k in range(2, min(max_pieces, n) + 1):
        cuts = np.linspace(0, n, k + 1).round().astype(int)
        cost = sum(float((b - a) * srt[a]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a) + (k - 1) * overhead_tokens
        if cost < best_cost:
            best, best_cost = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a], cost
    return best


def plan_micro_batches(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                       max_size: int | None = None, *, share_prompts: bool = False, overhead_tokens: int = 64,
                       max_pieces: int = 8) -> list[tuple[np.ndarray, bool]]:
    """Micro-batches of one mini-batch as ``(indices, shared)`` pairs, the cheaper of two layouts in
    tokens processed (a forward/backward call counted as ``overhead_tokens`` more):

    * plain (``shared=False``): :func:`length_buckets` of the total lengths, each piece padded to its
      own longest ``prompt + completion``;
    * shared prompts (``shared=True``, only if ``share_prompts``): pieces of samples sorted by
      completion length, each encoding its distinct prompts once and its completions against their
      cache (:func:`gvm_mini.losses.token_logprobs_shared_prompts`): a piece costs ``distinct prompts x
      longest prompt + samples x longest completion`` (two calls).

    ``max_size`` bounds the samples per piece in both. Example: 8 samples of one 30-token prompt with
    10-token completions cost 320 tokens plain and 30 + 80 + 64 shared.
    """
    P = np.array([len(p) for p in prompt_ids], dtype=np.int64)
    C = np.array([len(c) for c in completion_ids], dtype=np.int64)
    n = P.size
    if n == 0:
        return []
    plain = length_buckets(P + C, max_size, overhead_tokens=overhead_tokens, max_pieces=max_pieces)
    best = [(b, False) for b in plain]
    best_cost = sum(float(len(b) * (P + C)[b].max()) for b in plain) + (len(plain) - 1) * overhead_tokens
    if not share_prompts:
        return best
    keys = np.unique([hash(tuple(p)) for p in prompt_ids], return_inverse=True)[1].reshape(-1)
    order = np.argsort(-C, kind="stable")
    options = [max(1, -(-n // max_size))] if max_size else range(1, min(max_pieces, n) + 1)
    for k in options:
        cuts = np.linspace(0, n, k + 1).round().astype(int) if not max_size else np.r_[np.arange(0, n, max_size), n]
        pieces = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        cost = sum(float(np.unique(keys[b]).size * P[b].max() + len(b) * max(C[b].max(), 1)) for b in pieces)
        cost += (2 * len(pieces) - 1) * overhead_tokens
        if cost < best_cost:
            best, best_cost = [(b, True) for b in pieces], cost
    return best


@dataclass
class MicroBatch:
    """Rows of the rollout, their padded tensors ``(ids, attn, completion_mask, behaviour_logp)``, and
    whether its samples share prompts encoded once (:func:`gvm_mini.losses.token_logprobs_shared_prompts`)."""

    rows: list[int]
    tensors: tuple
    shared: bool


@dataclass
class MiniBatch:
    """One optimizer update's samples: ``rows`` (all of them), ``micro`` (the live ones, in
    micro-batches: only these are forwarded), ``normaliser`` (the denominator of the loss over ALL
    ``rows``: completion tokens under ``token_mean``, non-empty completions under
    ``seq_mean_token_mean``; at least 1) and ``tokens`` (all ``rows``' completion tokens, at least 1;
    the denominator of the token-fraction statistics such as ``clip_frac``)."""

    rows: list[int]
    micro: list[MicroBatch]
    normaliser: float
    tokens: float


def mini_batch_responses(cfg) -> int:
    """Responses per optimizer update: ``mini_batch_size`` (``mini_batch_unit: responses``, the fair
    count), or under ``mini_batch_unit: fork`` the official fork's count for a non-uniform arm,
    ``mini_batch_size / samples_per_prompt``: verl counts its mini-batch in prompts times
    ``rollout.n``, and the fork's GVM runs use ``rollout.n = 1`` with each prompt repeated ``n_i`` times
    (``theory/official_code.md``)."""
    if cfg.mini_batch_unit == "fork" and cfg.allocation != "uniform":
        return max(1, cfg.mini_batch_size // cfg.samples_per_prompt)
    return cfg.mini_batch_size


def plan(cfg, model, rollout: Rollout, pad_id: int, seed: int, live: np.ndarray | None = None) -> list[MiniBatch]:
    """The M-step's mini-batches (a ``seed``-ed permutation cut into :func:`mini_batch_responses`
    samples), the ``live`` ones of each (default: all) cut by :func:`plan_micro_batches` (shared prompts
    not under gradient checkpointing, where HF layers drop the cache). The permutation and the
    normalisers cover every sample, live or not, so they do not depend on ``live``. Tensors are built
    once and reused by every forward pass."""
    S, size = len(rollout), mini_batch_responses(cfg)
    perm = np.random.default_rng(seed).permutation(S)
    minis = [perm[s : min(s + size, S)].tolist() for s in range(0, S, size)]
    can_share = not any(getattr(mod, "gradient_checkpointing", False) is True for mod in model.modules())
    lengths = np.array([len(c) for c in rollout.completion_ids], dtype=np.int64)
    out = []
    for rows in minis:
        kept = rows if live is None else [i for i in rows if live[i]]
        pieces = plan_micro_batches([rollout.prompt_ids[i] for i in kept], [rollout.completion_ids[i] for i in kept],
                                    cfg.micro_batch_size, share_prompts=can_share)
        tokens = int(lengths[rows].sum())
        normaliser = tokens if cfg.loss_type == "token_mean" else int((lengths[rows] > 0).sum())
        out.append(MiniBatch(rows, [MicroBatch(sel, to_batch(rollout, pad_id, sel), shared)
                                    for sel, shared in (([kept[k] for k in b], shared) for b, shared in pieces)],
                             float(max(normaliser, 1)), float(max(tokens, 1))))
    return out


def micro_batch_logprobs(model, rollout: Rollout, mb: MicroBatch, ids, attn) -> torch.Tensor:
    """Per-token log-probs of one micro-batch's completions (``[S, T-1]``, the M-step's log pi): one shared
    prompt forward when the micro-batch shares a prompt, else logits from the first completion position on."""
    if mb.shared:
        return losses.token_logprobs_shared_prompts(
            model, [rollout.prompt_ids[i] for i in mb.rows], [rollout.completion_ids[i] for i in mb.rows], ids.shape[1])
    # logits only from the first completion position on (the shortest prompt's length)
    return losses.token_logprobs(model, ids, attn, logits_from=min(len(rollout.prompt_ids[i]) for i in mb.rows))


def _dropout_free(model) -> bool:
    conf = getattr(model, "config", None)
    return not any(isinstance(mod, torch.nn.Dropout) and mod.p > 0 for mod in model.modules()) and not any(
        float(getattr(conf, k, 0.0) or 0.0) > 0 for k in ("attention_dropout", "hidden_dropout", "dropout"))


def old_and_ref_logprobs(cfg, model, rollout: Rollout, minis: list[MiniBatch], ref_values, first_from_update: bool):
    """pi_old's and the KL reference's per-token log-probs of every (live) micro-batch, before any update.

    pi_old (RAFT++ and GRPO): the sampler's own log-probs with ``old_logprobs: behaviour`` (exact for
    HF sampling at temperature 1, top_p 1), else a forward pass in eval mode; with
    ``first_from_update`` the first mini-batch's is left None and taken from its update's own
    forward (detached: no update has happened yet). The reference: the LoRA adapter switched off
    (``kl_reference: initial`` with LoRA) or the weights ``ref_values`` swapped in."""
    dev = next(model.parameters()).device
    trainable = [p for p in model.parameters() if p.requires_grad]
    needs_old = cfg.algorithm != "raft"
    old = [[None] * len(m.micro) for m in minis]
    ref = [[None] * len(m.micro) for m in minis]
    model.eval()  # no dropout in the forward passes that define the losses
    with torch.no_grad():
        for j, mini in enumerate(minis):
            for k, mb in enumerate(mini.micro):
                ids, attn, _, blogp = mb.tensors
                ids, attn = ids.to(dev), attn.to(dev)
                if needs_old and cfg.old_logprobs == "behaviour":
                    old[j][k] = blogp.to(dev)
                elif needs_old and not (first_from_update and j == 0):
                    old[j][k] = micro_batch_logprobs(model, rollout, mb, ids, attn)
                if cfg.kl_coef > 0:
                    if cfg.kl_reference == "initial" and cfg.lora:
                        with reference_logits_context(model):
                            ref[j][k] = micro_batch_logprobs(model, rollout, mb, ids, attn)
                    else:
                        with swapped(trainable, ref_values):
                            ref[j][k] = micro_batch_logprobs(model, rollout, mb, ids, attn)
    return old, ref


def update(cfg, model, optimizer, rollout: Rollout, mini: MiniBatch, adv: torch.Tensor, old: list, ref: list,
           first_from_update: bool) -> dict | None:
    """One optimizer step on one mini-batch: gradients accumulated over its (live) micro-batches, each
    loss weighted by its share of the mini-batch's normaliser (tokens under ``token_mean``, sequences
    otherwise; dead samples count in it), so the sum equals the mini-batch's gradient in one piece;
    clipped to ``max_grad_norm``. With no live micro-batch the gradient is exactly 0 and the step is
    still taken, as when the dead samples were forwarded. Returns the step's loss statistics
    (``clip_frac``: the fraction of the mini-batch's completion tokens whose clipped branch was taken,
    whatever ``loss_type``), or None when a loss or the gradient is not finite (the weights never see
    a NaN)."""
    dev = next(model.parameters()).device
    token_mean = cfg.loss_type == "token_mean"
    optimizer.zero_grad(set_to_none=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    for k, mb in enumerate(mini.micro):
        ids, attn, cmask, _ = (t.to(dev) for t in mb.tensors)
        units = cmask.sum() if token_mean else (cmask.sum(-1) > 0).sum()
        weight = float(units) / mini.normaliser
        logp = micro_batch_logprobs(model, rollout, mb, ids, attn)
        old_k = old[k] if old[k] is not None or not first_from_update else logp.detach()  # pi_old = pi_theta here
        loss, st = losses.policy_objective(
            logp, old_k, adv[mb.rows].to(dev), cmask, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
            loss_type=cfg.loss_type, kl_coef=cfg.kl_coef, ref_logp=ref[k],
            policy_loss="vanilla" if cfg.algorithm == "raft" else "clip",
        )
        if not torch.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            return None
        (loss * weight).backward()
        total["loss"] += float(loss.detach()) * weight
        total["pg_loss"] += float(st.get("pg_loss", loss)) * weight
        total["kl"] += float(st.get("kl", 0.0)) * weight
        total["clip_frac"] += float(st.get("clip_frac", 0.0)) * float(cmask.sum()) / mini.tokens
    if not mini.micro:  # no live sample: the zero gradient the forwarded dead samples would have given
        for p in trainable:
            p.grad = torch.zeros_like(p)
    gn = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
    if not torch.isfinite(gn):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    crash_point("optimizer_step")
    return {**total, "grad_norm": float(gn)}


# ---------------------------------------------------------------------------------------------
# the M-step
# ---------------------------------------------------------------------------------------------


def m_step(cfg, model, optimizer, rollout: Rollout, rewards: np.ndarray, pad_id: int, ref_values, seed: int, *,
           prompt_p=None, skip_dead: bool = True) -> dict:
    """One M-step on ``rollout`` with ``rewards`` (module docstring); returns its statistics: updates
    made and skipped (non-finite loss or gradient), zero-signal fraction, samples not forwarded
    (``dead_samples``), mean loss, policy loss, KL, clip fraction and gradient norm over the updates.
    ``ref_values``: the KL reference weights (:func:`kl_reference`); ``prompt_p``: the allocation's
    ``p_i`` per sample's prompt (``lemma1``); ``skip_dead=False`` forwards the dead samples too (the
    same update, slower; for tests and benchmarks)."""
    adv = advantages(cfg, rollout, rewards, prompt_p)
    groups = torch.as_tensor(group_index(rollout.prompt_index, cfg.grpo_group_size))
    live = live_samples(cfg, adv) if skip_dead else np.ones(len(rollout), dtype=bool)
    stats = {"zero_signal_frac": losses.zero_signal_fraction(torch.as_tensor(rewards, dtype=torch.float32), groups),
             "skipped_updates": 0, "updates": 0, "dead_samples": int((~live).sum())}
    minis = plan(cfg, model, rollout, pad_id, seed, live)
    # pi_old from the first update's own forward: only when train- and eval-mode forwards agree
    first_from_update = cfg.algorithm != "raft" and cfg.old_logprobs == "recompute" and _dropout_free(model)
    old, ref = old_and_ref_logprobs(cfg, model, rollout, minis, ref_values, first_from_update)
    model.train()  # LoRA dropout (if any) is on for the update itself
    steps = []
    for j, mini in enumerate(minis):
        st = update(cfg, model, optimizer, rollout, mini, adv, old[j], ref[j], first_from_update and j == 0)
        stats["skipped_updates" if st is None else "updates"] += 1
        if st is not None:
            steps.append(st)
    optimizer.zero_grad(set_to_none=True)
    for key in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm"):
        stats[key] = float(np.mean([st[key] for st in steps])) if steps else None
    return stats
