"""Per-sample gradient norms ``||grad_theta (-sum_t log pi(y_t | x, y_<t))||_2``: the ``G_i`` estimate.

Proposition 1 weighs prompt ``i`` by ``G_i = E_{y ~ Q_i} ||grad ln P(y, z | x_i)||`` (the paper's §3.1; theory/variance_and_prop1.md).
The official code (``em/stage_2_calc_acceptRates_grads.py``, theory/algorithm.md) estimates it per
accepted pilot response, one response at a time, as the Frobenius norm of the gradient of the
SUMMED (not length-normalised) completion NLL with respect to ``model.embed_tokens.weight`` only,
and averages over the prompt's accepted responses (``G_i = 0`` if none).

Parameter sets (:func:`select_params`):

* ``"embed_tokens"`` (official): the input embedding matrix. With tied embeddings (Qwen2.5-Math-1.5B,
  SmolLM2, Llama-3.2-1B) this one tensor is also the output head, and its gradient is the sum of the
  input-embedding term and the output-projection term.
* ``"lm_head"``: the output projection (weight, and bias if any). If tied it is the same tensor as
  ``embed_tokens`` and gives the same norms.
* ``"lora"``: every peft LoRA adapter parameter (names containing ``lora_``).
* ``"trainable"``: the parameters that require grad when called (what the optimizer updates).
* ``"all"``: every parameter of the model (tied tensors once), frozen ones included.

Two exact computations, chosen by ``method``:

* ``"loop"``: the official algorithm. Each sample alone (padding stripped, batch 1), one forward,
  ``torch.autograd.grad`` w.r.t. the chosen tensors, norm over all of them. S backward passes.
* ``"ghost"``: one batched forward + backward per chunk. A causal LM treats the samples of a batch
  independently, so the gradient of the batch loss ``sum_s L_s`` w.r.t. a module's *output* at sample
  ``s`` is ``dL_s/d out_s``. Each per-sample weight gradient is then a sum of outer products that are
  never formed for the whole batch (the "ghost norm" trick, Goodfellow 2015; Li et al. 2022)::

      nn.Linear   W [o, i]:  G_s = sum_t g_t a_t^T   ->  ||G_s||^2 = sum_{t,t'} (a_t . a_t')(g_t . g_t')
      nn.Linear   bias:      G_s = sum_t g_t
      nn.Embedding E [V, d]: G_s[v] = sum_{t: x_t = v} g_t   ->  ||G_s||^2 = sum_{t,t': x_t = x_t'} g_t . g_t'
      tied E = W (both):     ||G_emb + G_lin||^2 adds 2 <G_emb, G_lin> = 2 sum_{t,t'} g^lin_t'[x_t] (g^emb_t . a_t')

  (``a`` = module input, ``g`` = gradient w.r.t. its output.) A small Linear (LoRA ``A``/``B``) is
  instantiated per sample instead when ``i * o <= T^2`` (cheaper than the ``T x T`` Gram matrices).
  Cost: one backward instead of S, plus ``O(S T^2 (i + o))`` for the Gram products.
  It needs every chosen tensor to be used only as the weight/bias of ``nn.Linear`` or the weight of a
  plain ``nn.Embedding`` (true for HF Llama/Qwen2 and peft LoRA Linear adapters) and samples that do
  not interact (no MoE capacity limits, no batch norm).

``method="auto"`` takes ``ghost`` when it applies (``embed_tokens``, ``lm_head``, ``lora`` on Linear
adapters) and ``loop`` otherwise (``all``: RMSNorm weights are not Linear/Embedding).

Temperature 1 log-probs, as the official code. The model is put in eval mode (no dropout) during the
computation; its train/eval flags, ``requires_grad`` flags and ``.grad`` are left as they were.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from gvm_mini.losses import token_logprobs

__all__ = [
    "PARAM_SETS",
    "select_params",
    "is_tied",
    "ghost_supported",
    "per_sample_grad_norms",
    "timed_grad_norms",
]

PARAM_SETS = ("embed_tokens", "lm_head", "lora", "trainable", "all")


def _unwrap(module):
    """peft wraps adapted layers; the plain layer holding the base weight is ``.base_layer``."""
    while module is not None and hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def is_tied(model) -> bool:
    """True when the input embedding and the output head share one weight tensor."""
    inp, out = _unwrap(model.get_input_embeddings()), _unwrap(model.get_output_embeddings())
    return inp is not None and out is not None and inp.weight is out.weight


def select_params(model, name: str) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of parameter set ``name`` (one of :data:`PARAM_SETS`; see the
    module docstring). A tied head is reported under the name ``named_parameters`` gives it (the
    embedding's). Raises ``ValueError`` for an unknown name, a model without the requested part, or
    ``"lora"`` / ``"trainable"`` when nothing matches."""
    named = list(model.named_parameters())  # tied tensors appear once
    by_id = {id(p): (n, p) for n, p in named}

    def pick(tensors):
        return [by_id[id(t)] for t in tensors if t is not None and id(t) in by_id]

    if name == "embed_tokens":
        emb = _unwrap(model.get_input_embeddings())
        if emb is None or not hasattr(emb, "weight"):
            raise ValueError("params='embed_tokens': the model has no input embedding")
        return pick([emb.weight])
    if name == "lm_head":
        head = _unwrap(model.get_output_embeddings())
        if head is None:
            raise ValueError("params='lm_head': the model has no output embedding (lm_head)")
        return pick(list(head.parameters(recurse=False)))
    if name == "lora":
        out = [(n, p) for n, p in named if "lora_" in n]
        if not out:
            raise ValueError("params='lora': the model has no LoRA adapter parameters (wrap it with peft first)")
        return out
    if name == "trainable":
        out = [(n, p) for n, p in named if p.requires_grad]
        if not out:
            raise ValueError("params='trainable': no parameter requires grad")
        return out
    if name == "all":
        return named
    raise ValueError(f"params must be one of {PARAM_SETS}, got {name!r}")


# ----------------------------------------------------------------------------------------------
# which modules use the chosen tensors
# ----------------------------------------------------------------------------------------------


def _plain_embedding(m) -> bool:
    return (type(m).forward is nn.Embedding.forward and m.max_norm is None
            and not m.sparse and not m.scale_grad_by_freq)


def _users(model, params) -> dict[nn.Module, list[tuple[str, nn.Parameter]]] | None:
    """Modules holding a chosen tensor -> [(role, param)], role in {weight, bias}; None if some
    chosen tensor is held by a module the ghost path cannot handle."""
    ids = {id(p) for p in params}
    found, users = set(), {}
    for m in model.modules():
        for pname, p in m._parameters.items():
            if p is None or id(p) not in ids:
                continue
            ok = (isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward) or (
                isinstance(m, nn.Embedding) and _plain_embedding(m) and pname == "weight")
            if not ok:
                return None
            users.setdefault(m, []).append((pname, p))
            found.add(id(p))
    return users if found == ids else None


def ghost_supported(model, params: str = "embed_tokens") -> bool:
    """Whether ``method="ghost"`` can compute the norms of parameter set ``params`` for ``model``."""
    return _users(model, [p for _, p in select_params(model, params)]) is not None


# ----------------------------------------------------------------------------------------------
# the two computations
# ----------------------------------------------------------------------------------------------


def _loop_norms(model, params, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Official algorithm: one sample at a time, padding stripped, ``autograd.grad`` of the summed NLL."""
    S = input_ids.shape[0]
    out = torch.zeros(S, dtype=torch.float32, device=input_ids.device)
    for s in range(S):
        keep = attention_mask[s].bool()
        ids = input_ids[s][keep][None]
        cm = completion_mask[s][keep][None]
        lp = token_logprobs(model, ids, torch.ones_like(ids))
        loss = -(lp * cm.to(lp.dtype)).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        sq = sum((g.float().pow(2).sum() for g in grads if g is not None), torch.zeros((), device=out.device))
        out[s] = sq.sqrt()
    return out


#: Columns of a low-precision tensor converted to float32 at a time by :func:`_gram` (the output
#: head's gradient is ``[S, T, V]``: a float32 copy of it would triple the pass's peak).
GRAM_CHUNK = 4096


def _gram(x, y):
    """[S, T, d] x [S, T', d] -> [S, T, T'] float32 inner products; a bf16/fp16 operand is converted
    to float32 :data:`GRAM_CHUNK` columns at a time."""
    if x.dtype == y.dtype == torch.float32:
        return torch.bmm(x, y.transpose(1, 2))
    out = None
    for c in range(0, x.shape[-1], GRAM_CHUNK):
        part = torch.bmm(x[..., c : c + GRAM_CHUNK].float(), y[..., c : c + GRAM_CHUNK].float().transpose(1, 2))
        out = part if out is None else out.add_(part)
    return out


def _inner(u, v) -> torch.Tensor:
    """``<G_u, G_v>`` per sample for two uses of one tensor (see the module docstring)."""
    ku, kv = u["kind"], v["kind"]
    if ku == "bias":
        return (u["g"].float().sum(1) * v["g"].float().sum(1)).sum(-1)
    if ku == "lin" and kv == "lin":
        if u is v:
            i, o, T = u["a"].shape[-1], u["g"].shape[-1], u["a"].shape[1]
            if i * o <= T * T:  # instantiate the per-sample gradient, it is smaller than the Gram matrices
                return torch.einsum("sto,sti->soi", u["g"].float(), u["a"].float()).pow(2).sum((1, 2))
        return (_gram(u["a"], v["a"]) * _gram(u["g"], v["g"])).sum((1, 2))
    if ku == "emb" and kv == "emb":
        same = u["ids"][:, :, None] == v["ids"][:, None, :]
        return (_gram(u["g"], v["g"]) * same).sum((1, 2))
    if ku == "lin":  # make u the embedding use
        u, v = v, u
    # <G_emb, G_lin> = sum_{t,t'} g_lin[t', x_t] * (g_emb[t] . a[t'])
    S, T = u["ids"].shape
    Tl = v["g"].shape[1]
    c = v["g"].gather(-1, u["ids"][:, None, :].expand(S, Tl, T)).float()  # [S, T', T]
    return (c.transpose(1, 2) * _gram(u["g"], v["a"])).sum((1, 2))


def _ghost_norms(model, params, users, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """One batched forward/backward; per-sample norms from module inputs and output gradients.

    A module whose tensors have no other use (LoRA's ``A`` and ``B``, an untied head) has its part computed
    inside the backward, by a hook on its output, as soon as that output's gradient exists; the gradient
    then goes on with the backward and is not kept (holding every module's output gradient until the end
    costs about as much again as the activations of the pass). Tensors with several uses (a tied embedding
    and head; a module called twice) need their uses together for the cross terms: their outputs'
    gradients are asked of ``autograd.grad`` and combined at the end. The backward also asks for the input
    embedding's output (a leaf cut from the frozen embedding, or its own output when its weight is chosen):
    every module lies between it and the loss, so every hook fires; no parameter's ``.grad`` is touched."""
    S, T = input_ids.shape
    keep = attention_mask.bool()
    has = completion_mask.bool().any(0)
    first = int(torch.nonzero(has).flatten()[0]) if bool(has.any()) else T - 1
    j = min(max(first, 1), T)  # the head sees positions j - 1 .. T - 2 only (token_logprobs' logits_from)
    n_uses: dict[int, int] = {}
    for m in users:
        for _, p in users[m]:
            n_uses[id(p)] = n_uses.get(id(p), 0) + 1
    shared_modules = {m for m in users if any(n_uses[id(p)] > 1 for _, p in users[m])}
    uses = {id(p): [] for p in params}  # the uses kept for the end (cross terms)
    sq = torch.zeros(S, dtype=torch.float32, device=input_ids.device)
    anchor, kept, handles, calls = [], [], [], {}

    def tokens(x, own=False):  # [S, T, ...], or the head's [S, T - j, ...] (positions j-1 ..), padding zeroed
        W = x.shape[1] if x.dim() >= 2 else -1
        if x.shape[0] != S or W not in (T, T - j):
            raise RuntimeError(f"ghost norms expect module tensors shaped [S, T, ...], got {tuple(x.shape)}; "
                               "use method='loop'")
        start = 0 if W == T else j - 1
        k = keep[:, start : start + W].reshape(S, W, *([1] * (x.dim() - 2)))
        return x.masked_fill_(~k, 0) if own else torch.where(k, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def use(m, role, inp, g, g_masked):
        """One use of a tensor: its output gradient g (padding zeroed when g_masked) and input."""
        if isinstance(m, nn.Embedding):
            g = g if g_masked else tokens(g)
            if m.padding_idx is not None:  # nn.Embedding never updates the padding row
                g = torch.where((inp == m.padding_idx)[..., None], torch.zeros_like(g), g)
            return {"kind": "emb", "ids": inp, "g": g}
        if role == "bias":
            return {"kind": "bias", "g": g if g_masked else tokens(g)}
        # the input's padding zeroed is enough: every term pairs a_t with g_t
        return {"kind": "lin", "a": tokens(inp.detach()), "g": g}

    def in_backward(m, inp, g):  # a single-use module's output gradient, inside the backward
        for role, p in users[m]:
            u = use(m, role, inp, g, g_masked=False)
            if calls[m] > 1:  # called twice: its uses are summed with the cross terms at the end
                uses[id(p)].append(u)
            else:
                sq.add_(_inner(u, u))

    def on_output(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        if not output.requires_grad:
            return
        if module in shared_modules:
            kept.append((module, inputs[0], output))
        else:
            inp = inputs[0]
            output.register_hook(lambda g: in_backward(module, inp, g))

    def on_embedding(module, inputs, output):
        if output.requires_grad:  # the embedding weight is chosen: its own output is in the graph
            anchor.append(output)
            return None
        out = output.detach().requires_grad_()  # the frozen embedding: a leaf every module depends on
        anchor.append(out)
        return out

    try:
        for m in users:
            handles.append(m.register_forward_hook(on_output))
        handles.append(model.get_input_embeddings().register_forward_hook(on_embedding))
        lp = token_logprobs(model, input_ids, attention_mask, logits_from=j)
    finally:
        for h in handles:
            h.remove()
    loss = -(lp * completion_mask.to(lp.dtype)).sum()
    outs = [o for _, _, o in kept]
    extra = [a for a in anchor[:1] if not any(a is o for o in outs)]
    grads = torch.autograd.grad(loss, outs + extra, allow_unused=True)[: len(outs)]
    kept = [(m, inp) for m, inp, _ in kept]  # the outputs (the logits among them) are no longer needed
    del outs, extra, anchor, lp, loss
    for (m, inp), g in zip(kept, grads):
        if g is None:
            continue
        g = tokens(g, own=True)  # gradients returned to us: masked in place
        for role, p in users[m]:
            uses[id(p)].append(use(m, role, inp, g, g_masked=True))
    for us in uses.values():
        for i, u in enumerate(us):
            sq = sq + _inner(u, u)
            for v in us[i + 1:]:
                sq = sq + 2.0 * _inner(u, v)
    return sq.clamp_min(0.0).sqrt()


def _checkpointed_layers(model, users) -> list[nn.Module]:
    """The modules with gradient checkpointing switched on (HF layers check ``self.gradient_checkpointing
    and self.training``), if none of the hooked ``users`` lies inside one (a checkpointed layer runs its
    inner modules twice, and the hooks' first-forward outputs are not in the graph): those layers are
    kept in training mode during the norms so that they recompute their activations as in training."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    # the innermost flagged modules (the decoder layers; the model that holds them carries the flag too)
    layers = [m for m in flagged if not any(o is not m and any(sub is o for sub in m.modules()) for o in flagged)]
    if users:
        inside = {id(sub) for m in layers for sub in m.modules()}
        if any(id(u) in inside for u in users):
            return []
    return layers


def _micro_batches(attention_mask: torch.Tensor, batch_size: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, columns)`` of each micro-batch: rows sorted by length (longest first) in pieces of
    ``batch_size``, each cut to the columns where one of its rows has a token (its own longest, on
    either padding side)."""
    S = attention_mask.shape[0]
    lengths = attention_mask.sum(-1)
    order = torch.argsort(lengths, descending=True, stable=True)
    step = S if not batch_size else int(batch_size)
    out = []
    for i in range(0, S, step):
        rows = order[i : i + step]
        cols = torch.nonzero(attention_mask[rows].any(0)).flatten()
        if cols.numel():
            cols = torch.arange(int(cols[0]), int(cols[-1]) + 1, device=cols.device)
        out.append((rows, cols))
    return out


def per_sample_grad_norms(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    params: str = "embed_tokens",
    batch_size: int | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Per-sample ``||grad_theta L_s||_2`` with ``L_s = -sum_t completion_mask[s, t] log pi(x_{s,t} | x_{s,<t})``
    (summed over completion tokens, temperature 1; theory/algorithm.md), ``theta`` = parameter set ``params``
    (norm over all its tensors jointly). Returns float32 ``[S]`` on the input device.

    ``method``: ``"auto"`` | ``"ghost"`` (batched) | ``"loop"`` (batch 1, the official algorithm;
    ``batch_size`` unused). Padding may be on either side.

    Memory is that of one training micro-batch, whatever ``S``: the ghost path runs micro-batches of
    ``batch_size`` samples (all at once if None), sorted by length and each cut to its own longest
    row; logits are computed from the earliest completion position on only; and where the model has
    gradient checkpointing on, the checkpointed layers stay in training mode (HF checkpoints only in
    training mode) while everything else is in eval mode (no dropout), so activations are recomputed
    in the backward as in training. The norms do not depend on ``batch_size`` (up to float rounding).
    """
    if method not in ("auto", "ghost", "loop"):
        raise ValueError(f"method must be 'auto', 'ghost' or 'loop', got {method!r}")
    if input_ids.shape != attention_mask.shape or input_ids.shape != completion_mask.shape:
        raise ValueError("input_ids, attention_mask and completion_mask must have the same shape")
    chosen = [p for _, p in select_params(model, params)]
    users = _users(model, chosen) if method != "loop" else None
    if method == "ghost" and users is None:
        raise ValueError(f"method='ghost' does not apply to params={params!r} of this model "
                         "(a chosen tensor is used by a module other than nn.Linear / nn.Embedding)")
    all_params = list(model.parameters())
    flags = [p.requires_grad for p in all_params]
    modes = [(m, m.training) for m in model.modules()]
    chosen_ids = {id(p) for p in chosen}
    try:
        model.eval()
        for p in all_params:
            p.requires_grad_(id(p) in chosen_ids)
        with torch.enable_grad():
            if users is None:
                return _loop_norms(model, chosen, input_ids, attention_mask, completion_mask)
            for layer in _checkpointed_layers(model, users):
                layer.training = True  # the layer itself only: its dropout submodules stay in eval mode
            out = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
            for rows, cols in _micro_batches(attention_mask, batch_size):
                if not cols.numel():
                    continue  # rows without tokens: norm 0
                sub = [t.index_select(0, rows).index_select(1, cols) for t in (input_ids, attention_mask, completion_mask)]
                out[rows] = _ghost_norms(model, chosen, users, *sub)
            return out
    finally:
        for p, f in zip(all_params, flags):
            p.requires_grad_(f)
        for m, t in modes:
            m.training = t


def timed_grad_norms(model, input_ids, attention_mask, completion_mask, **kwargs) -> tuple[torch.Tensor, float]:
    """:func:`per_sample_grad_norms` and its wall time in seconds (CUDA synchronised), for the
    ``grad-norm`` phase of the compute accounting."""
    cuda = input_ids.is_cuda
    if cuda:
        torch.cuda.synchronize(input_ids.device)
    t0 = time.perf_counter()
    norms = per_sample_grad_norms(model, input_ids, attention_mask, completion_mask, **kwargs)
    if cuda:
        torch.cuda.synchronize(input_ids.device)
    return norms, time.perf_counter() - t0
