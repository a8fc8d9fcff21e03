"""M-step losses: RAFT, RAFT++ (Eq. 8 of arXiv 2505.02391), GRPO on ragged groups, and the k3 KL.

All functions are plain PyTorch on right-padded training tensors of a FLAT, ragged rollout batch:

* ``input_ids [S, T]`` (prompt + completion), ``attention_mask [S, T]``;
* ``mask [S, T]`` = the completion mask: 1 on the completion tokens whose log-prob is trained;
* per-token log-probs ``logp [S, T]`` aligned to ``input_ids``: ``logp[s, t] = log pi(x_t | x_<t)``,
  ``logp[s, 0] = 0`` (see :func:`token_logprobs`);
* a sample's group is ``prompt_index[s]``; nothing assumes a fixed number of samples per prompt.

Losses are *minimised* (the paper writes objectives that are maximised; signs are flipped here).
Aggregation follows verl (the official code, theory/algorithm.md) and is chosen by ``loss_type``:

* ``"token_mean"`` (default, verl ``token-mean``): sum over every completion token of the
  mini-batch / number of completion tokens. Long answers weigh more; rejected samples (A = 0) still
  count in the denominator.
* ``"seq_mean_token_mean"`` (paper Eq. 8 and the GRPO formula, the ``1/|a|`` inside the sum): mean
  over each sequence's tokens, then mean over sequences.

The one-line map from algorithm to loss (theory/algorithm.md)::

    RAFT          raft_loss(logp, mask, accepted)                  -A log pi,   A = 1(accepted)
    RAFT++        raftpp_loss(logp, old_logp, accepted, mask)      PPO-clip,    A = 1(accepted)
    GRPO          clipped_policy_loss(..., grpo_advantages(r, idx)) PPO-clip,   A = (r - mean_g)/(std_g + eps)
    Reinforce-Rej clipped_policy_loss(..., r * informative_mask(r, idx))   raw reward, uninformative groups dropped
    + KL          policy_objective(..., kl_coef=0.001, ref_logp=ref)      + kl_coef * agg(k3)
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_TYPES",
    "SelectedLogProb",
    "selected_logprobs",
    "token_logprobs",
    "token_logprobs_shared_prompts",
    "position_ids_from_mask",
    "masked_token_mean",
    "seq_mean_token_mean",
    "aggregate",
    "raft_loss",
    "clipped_policy_loss",
    "raftpp_loss",
    "grpo_advantages",
    "informative_mask",
    "zero_signal_fraction",
    "k3_kl",
    "policy_objective",
    "PROMPT_WEIGHTINGS",
    "prompt_weights",
]

LOSS_TYPES = ("token_mean", "seq_mean_token_mean")


# ----------------------------------------------------------------------------------------------
# per-token log-probabilities
# ----------------------------------------------------------------------------------------------


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``cumsum(mask) - 1`` (clamped at 0), so left- and right-padded copies of a sample
    see the same positions (HF ``generate`` does the same; a plain forward would use ``arange``)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


#: Rows of logits turned into log-probs at a time by :class:`SelectedLogProb` (its float32 temporaries
#: are a few ``[LOGPROB_CHUNK_TOKENS, V]`` tensors, whatever the batch).
LOGPROB_CHUNK_TOKENS = 64


class SelectedLogProb(torch.autograd.Function):
    """``log_softmax(logits / temperature)[target]`` per row of ``logits [N, V]``, in float32, a chunk
    of :data:`LOGPROB_CHUNK_TOKENS` rows at a time, as ``x[target] - logsumexp(x)``.

    The plain expression (``logits.float()``, ``gather``, ``logsumexp``) keeps a float32 copy of the
    logits for the backward and makes more full-size temporaries there (4 float32 ``[N, V]`` tensors
    at its peak, measured). Here only the logits themselves (their own dtype) and the ``[N]``
    log-sum-exp are saved; the backward ``d lp / d x = onehot(target) - softmax(x)`` is recomputed
    chunk by chunk into one gradient tensor of the logits' dtype. Peak: the logits, their gradient,
    and a few float32 ``[chunk, V]`` temporaries."""

    @staticmethod
    def forward(ctx, logits, target, temperature=1.0):
        N = logits.shape[0]
        out = torch.empty(N, dtype=torch.float32, device=logits.device)
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)
        for i in range(0, N, LOGPROB_CHUNK_TOKENS):
            x = logits[i : i + LOGPROB_CHUNK_TOKENS].float()
            if temperature != 1.0:
                x = x / temperature
            lse[i : i + LOGPROB_CHUNK_TOKENS] = torch.logsumexp(x, dim=-1)
            out[i : i + LOGPROB_CHUNK_TOKENS] = x.gather(-1, target[i : i + LOGPROB_CHUNK_TOKENS, None])[:, 0] \
                - lse[i : i + LOGPROB_CHUNK_TOKENS]
        ctx.save_for_backward(logits, target, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, target, lse = ctx.saved_tensors
        t = ctx.temperature
        out = torch.empty_like(logits)
        for i in range(0, logits.shape[0], LOGPROB_CHUNK_TOKENS):
            sl = slice(i, i + LOGPROB_CHUNK_TOKENS)
            x = logits[sl].float()
            if t != 1.0:
                x = x / t
            g = grad[sl, None].float()
            d = torch.exp(x - lse[sl, None]).mul_(-g)  # -g * softmax(x)
            d.scatter_add_(-1, target[sl, None], g)
            if t != 1.0:
                d = d / t
            out[sl] = d
        return out, None, None


def selected_logprobs(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / temperature, -1).gather(-1, target[..., None])[..., 0]`` in float32 for
    ``logits [..., V]`` and ``target [...]``, through :class:`SelectedLogProb` (bounded temporaries)."""
    shape = target.shape
    flat = SelectedLogProb.apply(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), float(temperature))
    return flat.view(shape)


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    logits_from: int | None = None,
) -> torch.Tensor:
    """Per-token log-probabilities ``log pi(x_t | x_<t)`` of a causal LM at ``temperature``.

    ``out[s, t] = log_softmax(logits[s, t-1] / temperature)[x_{s,t}]`` for ``t >= 1``; ``out[:, 0] = 0``,
    and so is every position that is padding or whose previous position is padding (the first real
    token of a left-padded row has no context either). Computed in float32 by
    :func:`selected_logprobs` (no full-size float32 copy of the logits), one chunk of ``chunk_size``
    samples at a time if given. ``logits_from = j`` asks for positions ``t >= j`` only (the completion
    tokens of a right-padded batch start at the shortest prompt's length): the model computes logits at
    positions ``j - 1 ..`` only (``logits_to_keep``) and ``out[:, :j] = 0``. Gradients flow; wrap in
    ``torch.no_grad()`` for the old-policy / reference log-probs. Positions come from
    :func:`position_ids_from_mask`, so the result does not depend on the padding side.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    S, T = input_ids.shape
    j = min(max(int(logits_from or 1), 1), T)
    params = inspect.signature(model.forward).parameters
    hf = "logits_to_keep" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    step = S if not chunk_size else int(chunk_size)
    outs = []
    for i in range(0, S, step):
        ids, am = input_ids[i : i + step], attention_mask[i : i + step]
        # logits at positions j-1 .. T-2 (those predicting tokens j .. T-1) and no others, as an index
        # tensor: HF gathers those hidden states into a contiguous tensor, so the logits need no slicing
        # (a sliced copy and its full-size gradient cost two more [S, T, V] tensors), and torch.matmul
        # folds the batch (an int logits_to_keep leaves a strided slice, for which it copies the [h, V]
        # head once per row)
        kw = {"logits_to_keep": torch.arange(j - 1, T - 1, device=ids.device), "use_cache": False} if hf else {}
        logits = model(input_ids=ids, attention_mask=am, position_ids=position_ids_from_mask(am), **kw).logits
        if logits.shape[1] == T:  # a model without logits_to_keep
            logits = logits[:, j - 1 : T - 1]
        lp = selected_logprobs(logits, ids[:, j:], temperature)  # predicts tokens j .. T-1
        del logits
        has_ctx = am[:, j:].bool() & am[:, j - 1 : -1].bool()  # a real token after a real token
        lp = torch.where(has_ctx, lp, torch.zeros_like(lp))
        outs.append(F.pad(lp, (j, 0)))  # positions before j: no prediction asked for
    return torch.cat(outs, dim=0)


def token_logprobs_shared_prompts(
    model,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    width: int,
) -> torch.Tensor:
    """:func:`token_logprobs` of ``prompt + completion`` rows, laid out as a right-padded ``[S, width]``
    batch (completion token ``j`` of row ``s`` at column ``len(prompt_s) + j``, 0 elsewhere), with
    each distinct prompt encoded once: one left-padded forward pass over the distinct prompts keeps
    their KV cache (with gradients), its rows are repeated for the samples of each prompt, and one
    forward pass over the completions attends to it. The same numbers as the plain forward up to
    float rounding, for ``n_i`` samples per prompt at about ``1/n_i`` of the prompt tokens' compute.
    Temperature 1. Needs a model that honours ``past_key_values`` (not under gradient checkpointing in
    train mode, where HF layers drop the cache).
    """
    device = next(model.parameters()).device
    S = len(prompt_ids)
    keys, inverse = {}, []
    for p in prompt_ids:
        inverse.append(keys.setdefault(tuple(p), len(keys)))
    uniq = list(keys)
    U, Wp = len(uniq), max(len(p) for p in uniq)
    ids_p = torch.zeros((U, Wp), dtype=torch.long)
    am_p = torch.zeros((U, Wp), dtype=torch.long)
    for r, p in enumerate(uniq):
        ids_p[r, Wp - len(p) :] = torch.tensor(p, dtype=torch.long)
        am_p[r, Wp - len(p) :] = 1
    ids_p, am_p = ids_p.to(device), am_p.to(device)
    out = model(input_ids=ids_p, attention_mask=am_p, position_ids=position_ids_from_mask(am_p), use_cache=True,
                logits_to_keep=torch.tensor([Wp - 1], device=device))  # by index: see token_logprobs
    cache = out.past_key_values
    if cache is None:
        raise RuntimeError("the model returned no KV cache; use token_logprobs (gradient checkpointing in train mode?)")
    idx = torch.tensor(inverse, dtype=torch.long, device=device)
    cache.reorder_cache(idx)
    first = out.logits[:, -1].index_select(0, idx)  # predicts each row's first completion token
    Wc = max((len(c) for c in completion_ids), default=0)
    if Wc == 0:
        return torch.zeros((S, width), device=device) + first.sum() * 0.0  # keeps the graph
    ids_c = torch.zeros((S, Wc), dtype=torch.long)
    am_c = torch.zeros((S, Wc), dtype=torch.long)
    for r, c in enumerate(completion_ids):
        ids_c[r, : len(c)] = torch.tensor(c, dtype=torch.long)
        am_c[r, : len(c)] = 1
    ids_c, am_c = ids_c.to(device), am_c.to(device)
    lens_p = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long, device=device)
    pos_c = lens_p[:, None] + torch.arange(Wc, device=device)[None, :]
    attn = torch.cat([am_p.index_select(0, idx), am_c], dim=1)
    logits_c = model(input_ids=ids_c, attention_mask=attn, position_ids=pos_c, past_key_values=cache,
                     use_cache=True).logits
    logits = torch.cat([first[:, None], logits_c[:, :-1]], dim=1)  # [S, Wc, V]: position j predicts token j
    del logits_c
    lp = selected_logprobs(logits, ids_c)
    del logits
    lp = lp * am_c.to(lp.dtype)
    col = (lens_p[:, None] + torch.arange(Wc, device=device)[None, :]).clamp_max(width - 1)
    return torch.zeros((S, width), device=device, dtype=lp.dtype).scatter_add(1, col, lp)


# ----------------------------------------------------------------------------------------------
# aggregation (verl's loss_agg_mode)
# ----------------------------------------------------------------------------------------------


def masked_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl ``token-mean``: ``sum_{s,t} x * mask / sum_{s,t} mask`` (0 if the mask is empty)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl ``seq-mean-token-mean`` = the ``1/|a|`` of paper Eq. 8: per-sequence token mean, then the
    mean over sequences. Sequences with no masked token (empty completion) are left out of the outer
    mean (verl would produce NaN); 0 if there are none."""
    m = mask.to(x.dtype)
    n = m.sum(-1)
    per_seq = (x * m).sum(-1) / n.clamp_min(1.0)
    has = (n > 0).to(x.dtype)
    return (per_seq * has).sum() / has.sum().clamp_min(1.0)


def aggregate(x: torch.Tensor, mask: torch.Tensor, loss_type: str = "token_mean") -> torch.Tensor:
    """Reduce a per-token loss ``[S, T]`` to a scalar by ``loss_type`` (one of :data:`LOSS_TYPES`)."""
    if loss_type == "token_mean":
        return masked_token_mean(x, mask)
    if loss_type == "seq_mean_token_mean":
        return seq_mean_token_mean(x, mask)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def _per_token(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sequence ``[S]`` quantity over tokens; pass ``[S, T]`` through."""
    a = a.to(device=like.device, dtype=like.dtype)
    if a.dim() == 1:
        if a.shape[0] != like.shape[0]:
            raise ValueError(f"per-sequence tensor has {a.shape[0]} rows, batch has {like.shape[0]}")
        return a[:, None].expand_as(like)
    if a.shape != like.shape:
        raise ValueError(f"per-token tensor has shape {tuple(a.shape)}, expected {tuple(like.shape)}")
    return a


# ----------------------------------------------------------------------------------------------
# RAFT, RAFT++, PPO-clip
# ----------------------------------------------------------------------------------------------


def raft_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    accepted: torch.Tensor,
    loss_type: str = "token_mean",
    *,
    over: str = "all",
) -> torch.Tensor:
    """RAFT (Dong et al. 2023; theory/algorithm.md; verl ``policy_loss=vanilla``): NLL on accepted samples,
    per token ``-A * log pi(a_t | x, a_<t)`` with ``A = 1(accepted)``.

    ``over="all"`` (official code): the aggregation runs over every completion token of the batch, so
    with ``token_mean`` the rejected samples still count in the denominator and the loss is
    ``-sum_{accepted tokens} log pi / (all completion tokens)``. ``over="accepted"``: normalise by the
    accepted samples' tokens only (plain SFT on the accepted set; its scale does not shrink when few
    samples are accepted).
    """
    acc = _per_token(accepted.float(), logp)
    if over == "accepted":
        mask = mask * (acc > 0).to(mask.dtype)
    elif over != "all":
        raise ValueError(f"over must be 'all' or 'accepted', got {over!r}")
    return aggregate(-acc * logp, mask, loss_type)


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "token_mean",
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip surrogate (paper Eq. 8 for RAFT++, the GRPO objective of §5, verl ``compute_policy_loss``).

    Per token, with ``rho = exp(logp - old_logp)`` and advantage ``A`` (``[S]`` broadcast over tokens,
    or ``[S, T]``)::

        l_t = max(-A * rho, -A * clip(rho, 1 - epsilon, 1 + epsilon_high))   # = -min(rho A, clip(rho) A)

    ``epsilon_high=None`` means symmetric (``epsilon``); clip-higher (DAPO) uses e.g. 0.28.
    ``clip_ratio_c`` (verl dual-clip, 3.0 there; off by default here as in TRL) caps the loss of
    negative-advantage tokens at ``-A * clip_ratio_c``. The log-ratio is clamped to [-20, 20] before
    ``exp`` (as verl does) so a diverged token cannot overflow.

    Returns ``(loss, stats)``; stats are detached 0-d tensors, token-means over ``mask``:
    ``clip_frac`` (tokens where the clipped branch is strictly the one taken, so its gradient is zero;
    verl ``pg_clipfrac``), ``ratio_mean``, ``approx_kl`` (k3 estimate of KL(pi_old || pi) from tokens
    sampled by pi_old, nonnegative; :func:`k3_kl`) and ``ppo_kl`` (k1 ``mean(old_logp - logp)``, verl ``ppo_kl``).
    """
    eps_low = float(epsilon)
    eps_high = eps_low if epsilon_high is None else float(epsilon_high)
    A = _per_token(advantages, logp)
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


def raftpp_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    accepted: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RAFT++ (paper Eq. 8; Minimal-RL Eq. 6): :func:`clipped_policy_loss` with ``A = 1(accepted)``.

    With A in {0, 1} only accepted tokens get a gradient, and only the upper clip ``1 + epsilon_high``
    can bind. Eq. 8 writes the ``1/|a|`` per sequence (``loss_type="seq_mean_token_mean"``); the
    official code uses ``token_mean``.
    """
    return clipped_policy_loss(
        logp, old_logp, accepted.float(), mask,
        epsilon=epsilon, epsilon_high=epsilon_high, loss_type=loss_type,
    )


# ----------------------------------------------------------------------------------------------
# GRPO advantages on ragged groups
# ----------------------------------------------------------------------------------------------


def _group_stats(rewards: torch.Tensor, prompt_index: torch.Tensor):
    """Per-sample group id, group size, mean, unbiased std and an all-equal flag (all ``[S]``)."""
    r = rewards.float().reshape(-1)
    idx = torch.as_tensor(prompt_index, device=r.device).reshape(-1)
    if idx.shape[0] != r.shape[0]:
        raise ValueError(f"rewards has {r.shape[0]} entries, prompt_index has {idx.shape[0]}")
    _, g = torch.unique(idx, return_inverse=True)
    G = int(g.max()) + 1 if g.numel() else 0
    n = torch.zeros(G, device=r.device).index_add_(0, g, torch.ones_like(r))
    mean = torch.zeros(G, device=r.device).index_add_(0, g, r) / n
    ss = torch.zeros(G, device=r.device).index_add_(0, g, (r - mean[g]) ** 2)
    std = torch.sqrt(ss / (n - 1).clamp_min(1.0))  # torch.std (unbiased); size-1 groups handled by caller
    hi = torch.full((G,), -torch.inf, device=r.device).scatter_reduce(0, g, r, "amax")
    lo = torch.full((G,), torch.inf, device=r.device).scatter_reduce(0, g, r, "amin")
    return r, g, n[g], mean[g], std[g], (hi == lo)[g]


def grpo_advantages(
    rewards: torch.Tensor,
    prompt_index: torch.Tensor,
    *,
    eps: float = 1e-6,
    scale: str = "std",
    singleton: str = "zero",
) -> torch.Tensor:
    """GRPO group-relative advantages (paper §5; verl ``compute_grpo_outcome_advantage``) over RAGGED
    groups keyed by ``prompt_index``: ``A_s = (r_s - mean_g) / (std_g + eps)`` with the unbiased std
    (``torch.std``) and ``eps = 1e-6`` as in verl; ``scale="none"`` gives ``r_s - mean_g`` (Dr. GRPO /
    Reinforce with a group-mean baseline). Returns ``[S]`` float32.

    * Groups whose rewards are all equal (zero std) get exactly 0, never NaN or ``0/eps`` noise.
    * Groups of size 1: ``singleton="zero"`` (default) gives 0, because one sample carries no relative
      signal (its "std" is undefined); ``singleton="raw"`` reproduces verl (mean 0, std 1, so
      ``A = r / (1 + eps)``, or ``r`` with ``scale="none"``), which trains a lone sample on its raw
      reward. Under GVM allocation a prompt can get ``n_i = 1``, so the choice matters.

    Vectorised (``index_add`` / ``scatter_reduce``), no Python loop over groups.
    """
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    if singleton not in ("zero", "raw"):
        raise ValueError(f"singleton must be 'zero' or 'raw', got {singleton!r}")
    r, _, n, mean, std, equal = _group_stats(rewards, prompt_index)
    single = n == 1
    if singleton == "raw":
        mean = torch.where(single, torch.zeros_like(mean), mean)
        std = torch.where(single, torch.ones_like(std), std)
    adv = r - mean
    if scale == "std":
        adv = adv / (std + eps)
    dead = (equal & ~single) | (single & (singleton == "zero"))
    return torch.where(dead, torch.zeros_like(adv), adv)


def informative_mask(rewards: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
    """``[S]`` bool: True where the sample's group has at least two different rewards. Multiply the
    raw reward by it for Reinforce-Rej (Minimal-RL: drop all-correct and all-wrong prompts)."""
    return ~_group_stats(rewards, prompt_index)[5]


def zero_signal_fraction(rewards: torch.Tensor, prompt_index: torch.Tensor) -> float:
    """Fraction of prompts whose group rewards are all equal (all correct, all wrong, or a single
    sample): those prompts give GRPO no gradient (its group-normalised advantage is 0 for every
    sample; paper §3.3, theory/algorithm.md).
    Logged with every M-step as ``zero_signal_frac`` in ``metrics.jsonl``."""
    r, g, *_, equal = _group_stats(rewards, prompt_index)
    if r.numel() == 0:
        return 0.0
    G = int(g.max()) + 1
    per_group = torch.zeros(G, dtype=torch.bool, device=r.device).scatter_(0, g, equal)
    return float(per_group.float().mean())


# ----------------------------------------------------------------------------------------------
# KL to the reference policy and the total objective
# ----------------------------------------------------------------------------------------------


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman 2020; verl ``low_var_kl``)::

        d = ref_logp - logp;   kl = exp(d) - d - 1,   clamped to [-10, 10]

    ``d`` is clamped to [-20, 20] before ``exp`` as in current verl. Zero when the two agree,
    nonnegative otherwise (before the clamp)."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def policy_objective(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "token_mean",
    kl_coef: float = 0.001,
    ref_logp: torch.Tensor | None = None,
    policy_loss: str = "clip",
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The M-step loss of the official code (theory/algorithm.md)::

        loss = agg(policy term) + kl_coef * agg(k3_kl(logp, ref_logp))

    ``policy_loss="clip"`` (verl ``plusplus``): :func:`clipped_policy_loss` (RAFT++ with A = 1(accepted),
    GRPO with group advantages); ``"vanilla"``: ``-A log pi`` (RAFT; ``old_logp`` unused). The KL term is
    aggregated with the same ``loss_type`` as verl does (token-mean by default) and counts every
    completion token, rejected samples included. No KL when ``ref_logp`` is None or ``kl_coef == 0``.
    ``kl_coef`` is TRL's ``beta``. Stats gain ``pg_loss`` and ``kl``.
    """
    if policy_loss == "clip":
        if old_logp is None:
            raise ValueError("policy_loss='clip' needs old_logp (use logp.detach() for on-policy)")
        pg, stats = clipped_policy_loss(
            logp, old_logp, advantages, mask, epsilon=epsilon, epsilon_high=epsilon_high,
            loss_type=loss_type, clip_ratio_c=clip_ratio_c,
        )
    elif policy_loss == "vanilla":
        pg, stats = aggregate(-_per_token(advantages, logp) * logp, mask, loss_type), {}
    else:
        raise ValueError(f"policy_loss must be 'clip' or 'vanilla', got {policy_loss!r}")
    stats["pg_loss"] = pg.detach()
    loss = pg
    if ref_logp is not None and kl_coef:
        kl = aggregate(k3_kl(logp, ref_logp), mask, loss_type)
        stats["kl"] = kl.detach()
        loss = loss + float(kl_coef) * kl
    return loss, stats


# ----------------------------------------------------------------------------------------------
# how much each prompt counts in the M-step
# ----------------------------------------------------------------------------------------------

PROMPT_WEIGHTINGS = ("tokens", "prompt", "lemma1")


def prompt_weights(
    prompt_index,
    counted,
    lengths,
    mode: str = "tokens",
    *,
    p=None,
) -> torch.Tensor:
    """Per-sample weights ``w_s`` such that the M-step's policy loss is ``sum_s w_s * l_s``, where ``l_s``
    is sample ``s``'s summed per-token loss (``-sum_t log pi`` for RAFT). ``m`` = number of prompts in
    the batch, ``D_i`` = prompt ``i``'s *counted* samples (``counted``: the accepted ones for RAFT /
    RAFT++, every sample for GRPO), ``n_i`` = its samples in the batch, ``L_s`` = completion lengths.

    * ``tokens`` (official code, verl token-mean; the default): ``w_s = 1 / sum_s L_s``. A prompt's
      weight grows with its accepted tokens, i.e. with ``n_i p_i``.
    * ``prompt`` (Algorithm 1's M-step): ``w_s = 1 / (m |D_i|)`` on counted samples: each prompt counts
      once, ``-(1/m) sum_i (1/|D_i|) sum_{y in D_i} grad log P``; prompts with ``D_i`` empty add nothing.
    * ``lemma1`` (Lemma 1, Eq. 6, divided by ``m``): ``w_s = 1 / (m n_i p_i)`` on counted samples, the
      unbiased estimator whose variance Proposition 1 minimises. ``p`` maps a prompt index to the
      ``p_i`` used for the allocation; where ``p_i <= 0`` (a sample was drawn although the estimate was
      0, e.g. under ``min_per_prompt``) the realised ``|D_i| / n_i`` is used instead (= ``prompt``).

    To apply them under ``token_mean`` aggregation, multiply each sample's advantage by
    ``w_s * sum_s L_s`` (exactly 1 for ``tokens``): PPO-clip and ``-A log pi`` are positively
    homogeneous in ``A``, so scaling ``A`` scales that sample's loss and leaves clipping unchanged.

    >>> prompt_weights([0, 0, 1], [1, 1, 1], [2, 3, 1], "prompt").tolist()
    [0.25, 0.25, 0.5]
    """
    if mode not in PROMPT_WEIGHTINGS:
        raise ValueError(f"prompt_weighting must be one of {PROMPT_WEIGHTINGS}, got {mode!r}")
    idx = torch.as_tensor(prompt_index).reshape(-1).long()
    cnt = torch.as_tensor(counted).reshape(-1).to(torch.float64)
    L = torch.as_tensor(lengths).reshape(-1).to(torch.float64)
    if not (idx.shape == cnt.shape == L.shape):
        raise ValueError(f"prompt_index, counted and lengths must have the same length, got "
                         f"{idx.numel()}, {cnt.numel()} and {L.numel()}")
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    if mode == "tokens":
        return torch.full_like(L, 1.0 / max(float(L.sum()), 1.0))
    cnt = (cnt > 0).to(torch.float64)
    _, g = torch.unique(idx, return_inverse=True)
    G = int(g.max()) + 1
    d = torch.zeros(G, dtype=torch.float64).index_add_(0, g, cnt)  # |D_i|
    if mode == "prompt":
        denom = d[g]
    else:
        if p is None:
            raise ValueError("prompt_weighting='lemma1' needs p (the p_i used for the allocation)")
        n = torch.zeros(G, dtype=torch.float64).index_add_(0, g, torch.ones_like(cnt))
        p_s = torch.as_tensor(p, dtype=torch.float64)[idx]
        if not torch.all(torch.isfinite(p_s)) or torch.any((p_s < 0) | (p_s > 1)):
            raise ValueError("p must be finite and in [0, 1]")
        denom = torch.where(p_s > 0, n[g] * p_s, d[g])
    return torch.where(cnt > 0, 1.0 / (G * denom.clamp_min(1e-300)), torch.zeros_like(cnt))
