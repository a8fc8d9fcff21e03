"""Per-sample gradient norms: batched (ghost) path vs the official batch-1 loop vs a naive autograd
computation, the SUM-over-tokens convention on a hand-checkable bigram model, state restoration,
padding invariance."""

import math
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from gvm_mini.gradnorm import (
    ghost_supported,
    is_tied,
    per_sample_grad_norms,
    select_params,
    timed_grad_norms,
)

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)


def _llama(tied):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=tied))


def _qwen(tied):
    torch.manual_seed(1)
    return Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=tied))


def _lora(model):
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                          target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    with torch.no_grad():  # peft initialises B = 0, which would make every A-gradient vanish
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return pm


def _batch(S=5, T=12, seed=0):
    """Right-padded ragged batch; token 0 (the embedding's padding_idx) also occurs inside samples."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (S, T), generator=g)
    lens = [T, T - 3, 7, T - 1, 5][:S] + [T] * max(0, S - 5)
    am = torch.zeros(S, T, dtype=torch.long)
    cm = torch.zeros(S, T, dtype=torch.long)
    for s, n in enumerate(lens):
        am[s, :n] = 1
        cm[s, 3:n] = 1
    ids = ids * am
    ids[0, 5] = 0
    return ids, am, cm


def _naive(model, names, ids, am, cm):
    """Independent reference: per sample, explicit log-softmax of the logits, autograd.grad."""
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    for n in names:
        params[n].requires_grad_(True)
    out = []
    for s in range(ids.shape[0]):
        seq = ids[s][am[s].bool()][None]
        c = cm[s][am[s].bool()][1:].float()
        logp = torch.log_softmax(model(input_ids=seq).logits[0, :-1].float(), -1)
        loss = -(logp.gather(-1, seq[0, 1:, None])[:, 0] * c).sum()
        gs = torch.autograd.grad(loss, [params[n] for n in names])
        out.append(math.sqrt(sum(float(g.pow(2).sum()) for g in gs)))
    for n, f in flags.items():
        params[n].requires_grad_(f)
    return torch.tensor(out)


# ---------------------------------------------------------------- batched == loop == naive


@pytest.mark.parametrize("make", [_llama, _qwen], ids=["llama", "qwen2"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("which", ["embed_tokens", "lm_head"])
def test_ghost_equals_loop_equals_naive(make, tied, which):
    model = make(tied).eval()
    ids, am, cm = _batch()
    names = [n for n, _ in select_params(model, which)]
    ghost = per_sample_grad_norms(model, ids, am, cm, params=which, method="ghost", batch_size=3)
    loop = per_sample_grad_norms(model, ids, am, cm, params=which, method="loop")
    naive = _naive(model, names, ids, am, cm)
    assert (naive > 0).all()
    torch.testing.assert_close(loop, naive, rtol=1e-5, atol=0)
    torch.testing.assert_close(ghost, loop, rtol=1e-5, atol=0)


def test_tied_head_is_the_embedding():
    tied, untied = _llama(True), _llama(False)
    assert is_tied(tied) and not is_tied(untied)
    assert select_params(tied, "lm_head") == select_params(tied, "embed_tokens")
    assert select_params(untied, "lm_head")[0][0] == "lm_head.weight"
    ids, am, cm = _batch()
    a = per_sample_grad_norms(tied, ids, am, cm, params="lm_head")
    b = per_sample_grad_norms(tied, ids, am, cm, params="embed_tokens")
    torch.testing.assert_close(a, b)


def test_lora_ghost_equals_loop_and_naive():
    model = _lora(_llama(True))
    ids, am, cm = _batch()
    names = [n for n, _ in select_params(model, "lora")]
    assert names and all("lora_" in n for n in names)
    assert ghost_supported(model, "lora")
    ghost = per_sample_grad_norms(model, ids, am, cm, params="lora")
    loop = per_sample_grad_norms(model, ids, am, cm, params="lora", method="loop")
    model.eval()
    naive = _naive(model, names, ids, am, cm)
    torch.testing.assert_close(loop, naive, rtol=1e-5, atol=0)
    torch.testing.assert_close(ghost, loop, rtol=1e-5, atol=0)
    # "trainable" on a LoRA model is the adapter set
    torch.testing.assert_close(per_sample_grad_norms(model, ids, am, cm, params="trainable"), ghost)


def test_lora_module_called_twice_keeps_its_cross_terms():
    """A decoder layer used twice (layers[1] is layers[0]): each LoRA tensor gets two gradient terms per
    sample, and the ghost norm must add 2 <G_1, G_2> as the per-sample gradient does."""
    base = _llama(False)
    base.model.layers[1] = base.model.layers[0]
    model = _lora(base)
    ids, am, cm = _batch()
    got = per_sample_grad_norms(model, ids, am, cm, params="lora", method="ghost")
    # the reference: the official loop, one sample at a time, autograd w.r.t. the tensors themselves
    # (_naive's cached forward would see the shared layer's cache twice)
    want = per_sample_grad_norms(model, ids, am, cm, params="lora", method="loop")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def test_all_params_uses_loop_and_matches_naive():
    model = _qwen(False).eval()
    ids, am, cm = _batch(S=3)
    assert not ghost_supported(model, "all")  # RMSNorm weights are neither Linear nor Embedding
    with pytest.raises(ValueError, match="ghost"):
        per_sample_grad_norms(model, ids, am, cm, params="all", method="ghost")
    got = per_sample_grad_norms(model, ids, am, cm, params="all")
    names = [n for n, _ in model.named_parameters()]
    torch.testing.assert_close(got, _naive(model, names, ids, am, cm), rtol=1e-5, atol=0)


# ---------------------------------------------------------------- SUM convention, by hand


class Bigram(nn.Module):
    """logits_t = W E[x_t]: an embedding and an untied linear head, nothing else."""

    def __init__(self, V, D):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, D)
        self.lm_head = nn.Linear(D, V, bias=False)

    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.lm_head(self.embed_tokens(input_ids)))


@pytest.mark.parametrize("method", ["ghost", "loop"])
def test_sum_over_tokens_on_bigram_by_hand(method):
    # V = 2, D = 1, E = [[1], [1]], W = 0: every prediction is uniform (1/2, 1/2).
    # d(-log p(y))/dW = (p - e_y) E[x] = (-1/2, +1/2) for y = 0, so n completion tokens equal to 0
    # give grad_W = n (-1/2, 1/2) and ||grad_W|| = n / sqrt(2): the norm grows with the length
    # (a token-mean would keep it at 1/sqrt(2)).
    m = Bigram(2, 1)
    with torch.no_grad():
        m.embed_tokens.weight.fill_(1.0)
        m.lm_head.weight.zero_()
    ids = torch.zeros(2, 5, dtype=torch.long)
    am = torch.ones(2, 5, dtype=torch.long)
    cm = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 1]])  # 2 and 4 completion tokens
    got = per_sample_grad_norms(m, ids, am, cm, params="lm_head", method=method)
    torch.testing.assert_close(got, torch.tensor([2 / math.sqrt(2), 4 / math.sqrt(2)]))
    # grad_E is zero here (W = 0 means the loss does not depend on E)
    assert per_sample_grad_norms(m, ids, am, cm, params="embed_tokens", method=method).abs().max() == 0


def test_bigram_analytic_gradient():
    # Random bigram: grad_W = sum_t (softmax(W e_{x_{t-1}}) - onehot(x_t)) e_{x_{t-1}}^T over completion t;
    # grad_E[v] = sum_{t: x_{t-1} = v} W^T (softmax - onehot(x_t)).
    torch.manual_seed(3)
    m = Bigram(7, 3)
    ids = torch.tensor([[1, 2, 2, 5, 2, 6], [4, 4, 4, 0, 3, 1]])
    am = torch.ones_like(ids)
    cm = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]])
    E, W = m.embed_tokens.weight.detach(), m.lm_head.weight.detach()
    want_w, want_e = [], []
    for s in range(2):
        gW, gE = torch.zeros_like(W), torch.zeros_like(E)
        for t in range(1, 6):
            if cm[s, t]:
                x, y = ids[s, t - 1], ids[s, t]
                delta = torch.softmax(W @ E[x], -1) - torch.nn.functional.one_hot(y, 7)
                gW += torch.outer(delta, E[x])
                gE[x] += W.T @ delta
        want_w.append(gW.norm())
        want_e.append(gE.norm())
    for method in ("ghost", "loop"):
        torch.testing.assert_close(per_sample_grad_norms(m, ids, am, cm, params="lm_head", method=method),
                                   torch.stack(want_w), rtol=1e-5, atol=0)
        torch.testing.assert_close(per_sample_grad_norms(m, ids, am, cm, params="embed_tokens", method=method),
                                   torch.stack(want_e), rtol=1e-5, atol=0)


# ---------------------------------------------------------------- no side effects, padding


def test_flags_grads_and_mode_restored():
    model = _lora(_llama(True))
    model.train()
    model.base_model.model.model.layers[0].eval()  # a mixed state must come back as it was
    sentinel = {n: torch.full_like(p, 0.25) for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        if n in sentinel:
            p.grad = sentinel[n].clone()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    ids, am, cm = _batch(S=2)
    for which, method in [("embed_tokens", "ghost"), ("lora", "ghost"), ("lora", "loop"), ("all", "loop")]:
        norms = per_sample_grad_norms(model, ids, am, cm, params=which, method=method)
        assert (norms > 0).all()
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert {n: m.training for n, m in model.named_modules()} == modes
        for n, p in model.named_parameters():
            if n in sentinel:
                assert torch.equal(p.grad, sentinel[n])
            else:
                assert p.grad is None


@pytest.mark.parametrize("which", ["embed_tokens", "lm_head", "lora"])
def test_left_and_right_padding_give_the_same_norms(which):
    model = _lora(_qwen(True)) if which == "lora" else _qwen(False)
    ids, am, cm = _batch()
    T = ids.shape[1]
    lids, lam, lcm = torch.zeros_like(ids), torch.zeros_like(am), torch.zeros_like(cm)
    for s in range(ids.shape[0]):
        n = int(am[s].sum())
        lids[s, T - n:], lam[s, T - n:], lcm[s, T - n:] = ids[s, :n], 1, cm[s, :n]
    right = per_sample_grad_norms(model, ids, am, cm, params=which)
    left = per_sample_grad_norms(model, lids, lam, lcm, params=which)
    loop = per_sample_grad_norms(model, lids, lam, lcm, params=which, method="loop")
    torch.testing.assert_close(left, right, rtol=1e-5, atol=0)
    torch.testing.assert_close(left, loop, rtol=1e-5, atol=0)


def test_empty_completion_has_zero_norm_and_timing():
    model = _llama(False)
    ids, am, cm = _batch(S=3)
    cm[1] = 0
    norms, seconds = timed_grad_norms(model, ids, am, cm)
    assert norms[1].item() == 0.0 and (norms[[0, 2]] > 0).all()
    assert seconds > 0


def test_select_params_errors():
    model = _llama(False)
    with pytest.raises(ValueError, match="params must be one of"):
        select_params(model, "embeddings")
    with pytest.raises(ValueError, match="LoRA"):
        select_params(model, "lora")
    ids, am, cm = _batch(S=2)
    with pytest.raises(ValueError, match="method"):
        per_sample_grad_norms(model, ids, am, cm, method="vmap")
    with pytest.raises(ValueError, match="same shape"):
        per_sample_grad_norms(model, ids, am, cm[:, :-1])
