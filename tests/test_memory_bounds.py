"""Memory bounds of the training phases, measured as peak CPU tensor memory
(:func:`gvm_mini.plan.peak_tensor_bytes`):

* the E-step's gradient-norm pass runs in length-sorted micro-batches of ``micro_batch_size``: its
  norms equal the unbatched ones, with gradient checkpointing too, and its peak does not grow with
  ``mini_batch_size`` (it did when the whole mini-batch went through one forward);
* the log-probs of the selected tokens (:func:`gvm_mini.losses.selected_logprobs`) equal the plain
  ``gather - logsumexp`` formula in value and gradient, at about half its peak;
* ``logits_from`` computes logits at the completion positions only, with the same log-probs there.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gvm_mini import losses
from gvm_mini.estep import accepted_grad_norms
from gvm_mini.gradnorm import per_sample_grad_norms
from gvm_mini.plan import peak_tensor_bytes
from gvm_mini.rollout import Rollout

V = 2048  # a wide head, so that logits dominate the activations as in the real models


def _model(vocab=V, seed=0):
    torch.manual_seed(seed)
    conf = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, tie_word_embeddings=True)
    return LlamaForCausalLM(conf)


def _rollout(S, prompt_len=6, lens=(20, 9, 14, 3, 17), seed=0):
    g = np.random.default_rng(seed)
    comp = [g.integers(1, V, lens[s % len(lens)]).tolist() for s in range(S)]
    prompts = [g.integers(1, V, prompt_len + s % 3).tolist() for s in range(S)]
    return Rollout(np.arange(S) // 2, prompts, comp, [np.zeros(len(c), np.float32) for c in comp], [""] * S,
                   np.zeros(S, bool))


def _batch(S=7, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (S, T), generator=g)
    am = torch.zeros(S, T, dtype=torch.long)
    cm = torch.zeros(S, T, dtype=torch.long)
    for s, n in enumerate([24, 10, 17, 24, 5, 13, 20][:S]):
        am[s, :n] = 1
        cm[s, 4 + s % 3 : n] = 1
    return ids * am, am, cm


# ---------------------------------------------------------------------------- gradient norms


@pytest.mark.parametrize("checkpointing", [False, True])
def test_micro_batched_norms_equal_the_unbatched(checkpointing):
    model = _model().eval()
    ids, am, cm = _batch()
    whole = per_sample_grad_norms(model, ids, am, cm)
    if checkpointing:
        model.gradient_checkpointing_enable()
    for bs in (1, 2, 3):
        torch.testing.assert_close(per_sample_grad_norms(model, ids, am, cm, batch_size=bs), whole,
                                   rtol=1e-5, atol=1e-6)
    assert ((whole > 0) == cm.bool().any(1)).all()  # 0 exactly for the row without completion tokens (row 4)


def test_checkpointing_is_in_force_during_the_norms():
    """With gradient checkpointing on, the decoder layers run in training mode (HF checkpoints only
    then) during the norms: the backward recomputes each layer's forward."""
    model = _model().eval()
    model.gradient_checkpointing_enable()
    calls = []
    layer = model.model.layers[0]
    h = layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(layer.training))
    ids, am, cm = _batch(S=2)
    per_sample_grad_norms(model, ids, am, cm)
    h.remove()
    assert calls == [True, True]  # the forward, then its recomputation in the backward
    assert not layer.training and not model.training  # restored


def _peak_grad_norms(mini, micro, S=16):
    model = _model()
    ro = _rollout(S)
    cfg = SimpleNamespace(mini_batch_size=mini, micro_batch_size=micro, gradnorm_params="embed_tokens")
    rewards = np.ones(S)
    accepted_grad_norms(cfg, model, SimpleNamespace(pad_token_id=0), ro, rewards, S // 2)  # warm-up
    peak, G = peak_tensor_bytes(accepted_grad_norms, cfg, model, SimpleNamespace(pad_token_id=0), ro, rewards, S // 2)
    return peak, G


def test_grad_norm_peak_does_not_grow_with_mini_batch_size():
    p4, G4 = _peak_grad_norms(mini=4, micro=2)
    p16, G16 = _peak_grad_norms(mini=16, micro=2)
    np.testing.assert_allclose(G16, G4, rtol=1e-5)
    # the same micro-batches of 2 samples: the same peak whatever the mini-batch (the [S] norms and
    # the padded id tensors are all that grows, a few hundred bytes here)
    assert p16 <= 1.05 * p4, (p4, p16)
    # what it was before: the whole mini-batch in one forward, the peak grows with it
    q16, _ = _peak_grad_norms(mini=16, micro=None)
    assert q16 > 3 * p16, (p16, q16)


# ---------------------------------------------------------------------------- log-probs


def _plain(logits, target, temperature=1.0):
    x = logits.float() / temperature
    return x.gather(-1, target[..., None])[..., 0] - torch.logsumexp(x, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_selected_logprobs_equal_the_plain_formula(monkeypatch, dtype, temperature):
    monkeypatch.setattr(losses, "LOGPROB_CHUNK_TOKENS", 7)  # several chunks, a ragged last one
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 11, 50, generator=g) * 3).to(dtype)
    target = torch.randint(0, 50, (3, 11), generator=g)
    w = torch.randn(3, 11, generator=g)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got, want = losses.selected_logprobs(a, target, temperature), _plain(b, target, temperature)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    (got * w).sum().backward()
    (want * w).sum().backward()
    assert a.grad.dtype == dtype
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)


def test_selected_logprobs_peak_is_about_two_logits():
    """Forward and backward of the selected log-probs over ``[N, V]`` float32 logits: the plain
    formula peaks at 4 logits-sized tensors (its float32 copy, the softmax of logsumexp's backward,
    the gradient...), :class:`gvm_mini.losses.SelectedLogProb` at the gradient plus chunk temporaries."""
    N, Vw = 2048, 4096
    size = N * Vw * 4
    target = torch.randint(0, Vw, (N,))

    def run(f):
        logits = torch.randn(N, Vw, requires_grad=True)  # counted: the logits themselves
        f(logits, target).sum().backward()

    new, _ = peak_tensor_bytes(run, losses.selected_logprobs)
    old, _ = peak_tensor_bytes(run, _plain)
    assert old >= 3.5 * size  # what the plan had to assume before (measured 4.05 on the real shapes)
    chunk = losses.LOGPROB_CHUNK_TOKENS * Vw * 4
    assert new <= 2 * size + 4 * chunk, new / size  # the logits, their gradient, a few [chunk, V] float32 temporaries


def test_logits_from_keeps_the_completion_logprobs():
    model = _model()
    ids, am, _ = _batch()
    full = losses.token_logprobs(model, ids, am)
    part = losses.token_logprobs(model, ids, am, logits_from=6)
    assert part.shape == full.shape and (part[:, :6] == 0).all()
    torch.testing.assert_close(part[:, 6:], full[:, 6:], rtol=1e-5, atol=1e-6)


def test_bf16_norms_with_chunked_gram_match_float32(monkeypatch):
    """In bf16 the head's gradient stays bf16 and its Gram products are formed in float32 a few
    columns at a time (:data:`gvm_mini.gradnorm.GRAM_CHUNK`): the norms equal the float32 model's to
    bf16 precision, and do not depend on the chunking."""
    from gvm_mini import gradnorm

    model = _model().eval()
    ids, am, cm = _batch()
    ref = per_sample_grad_norms(model, ids, am, cm)
    half = _model().eval().to(torch.bfloat16)
    whole = per_sample_grad_norms(half, ids, am, cm)
    monkeypatch.setattr(gradnorm, "GRAM_CHUNK", 100)  # 21 column chunks of the 2048-wide head
    chunked = per_sample_grad_norms(half, ids, am, cm, batch_size=3)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(whole, ref, rtol=3e-2, atol=1e-3)
