"""Losses checked against numbers computed by hand (comments show the arithmetic)."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gvm_mini.losses import (
    aggregate,
    clipped_policy_loss,
    grpo_advantages,
    informative_mask,
    k3_kl,
    masked_token_mean,
    policy_objective,
    raft_loss,
    raftpp_loss,
    seq_mean_token_mean,
    token_logprobs,
    zero_signal_fraction,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def _lp(*ratios):
    """One sequence whose tokens have the given ratios rho = exp(logp - old_logp), old_logp = 0."""
    return torch.log(torch.tensor([list(ratios)])), torch.zeros(1, len(ratios))


# ---------------------------------------------------------------- aggregation


def test_token_mean_vs_seq_mean_unequal_lengths():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5 ; seq-mean: ((1 + 2 + 3)/3 + 4/1) / 2 = (2 + 4) / 2 = 3
    assert masked_token_mean(x, mask).item() == pytest.approx(2.5)
    assert seq_mean_token_mean(x, mask).item() == pytest.approx(3.0)
    assert aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)
    # an empty completion is left out of the sequence mean instead of producing NaN
    empty = torch.tensor([[1, 1, 1], [0, 0, 0]])
    assert seq_mean_token_mean(x, empty).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="loss_type"):
        aggregate(x, mask, "sum")


# ---------------------------------------------------------------- RAFT


def test_raft_loss_hand_values():
    # sample 0 accepted, completion log-probs -1, -2 ; sample 1 rejected, completion log-prob -3
    logp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -3.0, 0.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    acc = torch.tensor([True, False])
    # official token-mean: rejected tokens stay in the denominator: (1 + 2) / 3 = 1.0
    assert raft_loss(logp, mask, acc).item() == pytest.approx(1.0)
    # only accepted tokens in the denominator: (1 + 2) / 2 = 1.5
    assert raft_loss(logp, mask, acc, over="accepted").item() == pytest.approx(1.5)
    # Eq. 8 style 1/|a|: ((1 + 2)/2 + 0/1) / 2 = 0.75
    assert raft_loss(logp, mask, acc, "seq_mean_token_mean").item() == pytest.approx(0.75)


def _batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [3, 4, 10, 11, 0, 0], [1, 2, 12, 13, 14, 15]])
    am = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    cm = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    return ids, am, cm


def test_raft_gradient_is_nll_on_accepted_over_token_count(tiny):
    ids, am, cm = _batch()
    acc = torch.tensor([1.0, 0.0, 1.0])
    params = [p for p in tiny.parameters()]
    lp = token_logprobs(tiny, ids, am)
    g1 = torch.autograd.grad(raft_loss(lp, cm, acc), params)
    lp = token_logprobs(tiny, ids, am)
    n_tokens = cm.sum()  # 9 completion tokens, rejected ones included (token-mean)
    ref = -(lp * cm * acc[:, None]).sum() / n_tokens
    g2 = torch.autograd.grad(ref, params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # on-policy (old = current) RAFT++ has the same gradient: d rho / d theta = grad log pi at rho = 1
    lp = token_logprobs(tiny, ids, am)
    g3 = torch.autograd.grad(raftpp_loss(lp, lp.detach(), acc, cm)[0], params)
    for a, b in zip(g3, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- PPO-clip / RAFT++ / clip-higher


def test_clipped_policy_loss_three_tokens_by_hand():
    logp, old = _lp(1.3, 0.7, 1.1)
    A = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, st = clipped_policy_loss(logp, old, A, mask, epsilon=0.2)
    # t1: rho 1.3, A +1: -min(1.3, 1.2)     = -1.2  (clipped)
    # t2: rho 0.7, A -1: -min(-0.7, -0.8)   = +0.8  (clipped)
    # t3: rho 1.1, A +2: -min(2.2, 2.2)     = -2.2  (inside the band)
    # token-mean: (-1.2 + 0.8 - 2.2) / 3 = -0.866667
    assert loss.item() == pytest.approx(-2.6 / 3, abs=1e-6)
    assert st["clip_frac"].item() == pytest.approx(2 / 3)
    assert st["ratio_mean"].item() == pytest.approx((1.3 + 0.7 + 1.1) / 3, abs=1e-6)
    # ppo_kl = mean(old - logp) = -(ln 1.3 + ln 0.7 + ln 1.1) / 3
    assert st["ppo_kl"].item() == pytest.approx(-(math.log(1.3) + math.log(0.7) + math.log(1.1)) / 3, abs=1e-6)
    # approx_kl (k3 for KL(old || new)) = mean(rho - 1 - ln rho)
    k3 = sum(r - 1 - math.log(r) for r in (1.3, 0.7, 1.1)) / 3
    assert st["approx_kl"].item() == pytest.approx(k3, abs=1e-6)


def test_clip_fraction_counts_only_the_active_clip():
    # rho 1.3 A+ (clipped) | rho 1.3 A- (unclipped branch is larger loss) | rho 0.7 A+ (unclipped)
    # rho 0.7 A- (clipped) | rho 1.0 A+ (inside) | A = 0 (neither) | masked-out token with rho 1.3 A+
    logp, old = _lp(1.3, 1.3, 0.7, 0.7, 1.0, 1.5, 1.3)
    A = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 0.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    _, st = clipped_policy_loss(logp, old, A, mask, epsilon=0.2)
    assert st["clip_frac"].item() == pytest.approx(2 / 6)


def test_clip_higher_asymmetry():
    logp, old = _lp(1.3)
    logp.requires_grad_(True)
    A, mask = torch.tensor([1.0]), torch.ones(1, 1)
    # eps_high = 0.28: 1.3 > 1.28 -> loss -1.28, clipped, no gradient
    loss, st = clipped_policy_loss(logp, old, A, mask, epsilon=0.2, epsilon_high=0.28)
    assert loss.item() == pytest.approx(-1.28, abs=1e-6) and st["clip_frac"].item() == 1.0
    assert torch.autograd.grad(loss, logp)[0].item() == 0.0
    # eps_high = 0.35: 1.3 < 1.35 -> loss -1.3, gradient d(-rho A)/d logp = -rho A = -1.3
    loss, st = clipped_policy_loss(logp, old, A, mask, epsilon=0.2, epsilon_high=0.35)
    assert loss.item() == pytest.approx(-1.3, abs=1e-6) and st["clip_frac"].item() == 0.0
    assert torch.autograd.grad(loss, logp)[0].item() == pytest.approx(-1.3, abs=1e-6)
    # the lower bound still uses epsilon: rho 0.7, A -1 -> +0.8 whatever epsilon_high is
    logp, old = _lp(0.7)
    loss, _ = clipped_policy_loss(logp, old, torch.tensor([-1.0]), mask, epsilon=0.2, epsilon_high=0.35)
    assert loss.item() == pytest.approx(0.8, abs=1e-6)


def test_dual_clip_caps_negative_advantage_loss():
    logp, old = _lp(5.0)
    mask = torch.ones(1, 1)
    # A = -1, rho = 5: max(5, 1.2) = 5 ; dual clip c = 3: min(5, 3) = 3
    assert clipped_policy_loss(logp, old, torch.tensor([-1.0]), mask)[0].item() == pytest.approx(5.0, rel=1e-6)
    loss, _ = clipped_policy_loss(logp, old, torch.tensor([-1.0]), mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(3.0)


def test_raftpp_uses_accepted_indicator():
    logp = torch.log(torch.tensor([[1.3, 1.1], [0.5, 2.0]]))
    old = torch.zeros(2, 2)
    mask = torch.ones(2, 2)
    # accepted sample: -(1.2 + 1.1) ; rejected sample: A = 0 contributes 0 but counts in the denominator
    loss, _ = raftpp_loss(logp, old, torch.tensor([True, False]), mask)
    assert loss.item() == pytest.approx(-(1.2 + 1.1) / 4, abs=1e-6)


# ---------------------------------------------------------------- GRPO on ragged groups


def test_grpo_advantages_ragged_groups():
    # prompt 5: rewards (1, 0, 0) ; prompt 2: a single sample (1) ; prompt 9: two equal rewards (1, 1)
    # samples are interleaved and the prompt ids are not contiguous
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    idx = torch.tensor([5, 2, 5, 9, 5, 9])
    # group 5: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3) = 0.577350
    #          A = (2/3)/0.577350 = 1.154700, (-1/3)/0.577350 = -0.577350
    s = math.sqrt(1 / 3) + 1e-6
    want = torch.tensor([(2 / 3) / s, 0.0, (-1 / 3) / s, 0.0, (-1 / 3) / s, 0.0])
    torch.testing.assert_close(grpo_advantages(r, idx), want)
    assert grpo_advantages(r, idx)[0].item() == pytest.approx(1.154700, abs=1e-5)
    # verl's singleton rule: mean 0, std 1 -> A = r / (1 + eps)
    raw = grpo_advantages(r, idx, singleton="raw")
    assert raw[1].item() == pytest.approx(1 / (1 + 1e-6))
    torch.testing.assert_close(raw[[0, 2, 3, 4, 5]], want[[0, 2, 3, 4, 5]])
    # mean baseline only
    torch.testing.assert_close(grpo_advantages(r, idx, scale="none"),
                               torch.tensor([2 / 3, 0.0, -1 / 3, 0.0, -1 / 3, 0.0]))
    # zero-signal prompts: the singleton and the all-equal group = 2 of 3
    assert zero_signal_fraction(r, idx) == pytest.approx(2 / 3)
    assert informative_mask(r, idx).tolist() == [True, False, True, False, True, False]


def test_grpo_equal_nonbinary_rewards_give_exact_zero():
    r = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.7])
    idx = torch.tensor([0, 0, 0, 1, 1])
    a = grpo_advantages(r, idx)
    assert torch.isfinite(a).all()
    assert a[:3].tolist() == [0.0, 0.0, 0.0]
    # group 1: mean 0.5, unbiased std sqrt(2 * 0.04 / 1) = 0.282843 -> A = -/+ 0.707105
    assert a[3].item() == pytest.approx(-0.2 / (math.sqrt(0.08) + 1e-6), abs=1e-5)


# ---------------------------------------------------------------- KL


def test_k3_kl_hand_values():
    x = torch.tensor([-1.0, -2.0, -1.0, -20.0])
    ref = torch.tensor([-1.0, -1.0, -2.0, -1.0])
    kl = k3_kl(x, ref)
    assert kl[0].item() == 0.0  # equal log-probs
    assert kl[1].item() == pytest.approx(math.e - 2, abs=1e-6)  # d = +1: e - 1 - 1 = 0.718282
    assert kl[2].item() == pytest.approx(math.exp(-1), abs=1e-6)  # d = -1: e^-1 + 1 - 1 = 0.367879
    assert kl[3].item() == 10.0  # d = 19: clamped to 10


def test_policy_objective_adds_token_mean_k3():
    logp, old = _lp(1.3, 0.7, 1.1)
    A = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    ref = logp - 1.0  # d = ref - logp = -1 on every token: k3 = e^-1
    loss, st = policy_objective(logp, old, A, mask, kl_coef=0.5, ref_logp=ref)
    # -0.866667 + 0.5 * 0.367879 = -0.682727
    assert loss.item() == pytest.approx(-2.6 / 3 + 0.5 * math.exp(-1), abs=1e-6)
    assert st["kl"].item() == pytest.approx(math.exp(-1), abs=1e-6)
    assert "clip_frac" in st and st["pg_loss"].item() == pytest.approx(-2.6 / 3, abs=1e-6)
    # vanilla = RAFT: -A log pi ; no reference -> no KL term
    van, st = policy_objective(logp, None, A, mask, policy_loss="vanilla")
    want = -(math.log(1.3) - math.log(0.7) + 2 * math.log(1.1)) / 3
    assert van.item() == pytest.approx(want, abs=1e-6) and "kl" not in st
    with pytest.raises(ValueError, match="old_logp"):
        policy_objective(logp, None, A, mask)


# ---------------------------------------------------------------- token log-probs


def _naive_logprobs(model, ids, am, temperature=1.0):
    out = torch.zeros(ids.shape)
    for s in range(ids.shape[0]):
        seq = ids[s][am[s].bool()]
        pos = am[s].nonzero().flatten()
        for k in range(1, len(seq)):
            logits = model(input_ids=seq[None, :k]).logits[0, -1] / temperature
            out[s, pos[k]] = torch.log_softmax(logits, -1)[seq[k]]
    return out


def test_token_logprobs_matches_naive_loop(tiny):
    ids, am, _ = _batch()
    with torch.no_grad():
        want = _naive_logprobs(tiny, ids, am, temperature=0.7)
        got = token_logprobs(tiny, ids, am, temperature=0.7)
        chunked = token_logprobs(tiny, ids, am, temperature=0.7, chunk_size=2)
    assert got.dtype == torch.float32 and got.shape == ids.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, got)
    assert (got[:, 0] == 0).all() and (got[am == 0] == 0).all()


def test_token_logprobs_left_padding_matches_right(tiny):
    ids, am, _ = _batch()
    # move every sample's padding to the left
    lids, lam = torch.zeros_like(ids), torch.zeros_like(am)
    for s in range(ids.shape[0]):
        n = int(am[s].sum())
        lids[s, -n:], lam[s, -n:] = ids[s, :n], 1
    with torch.no_grad():
        right = token_logprobs(tiny, ids, am)
        left = token_logprobs(tiny, lids, lam)
    for s in range(ids.shape[0]):
        torch.testing.assert_close(left[s][lam[s].bool()], right[s][am[s].bool()], rtol=1e-5, atol=1e-5)


def test_prompt_weighting_on_a_hand_computed_three_sample_batch():
    """Three accepted samples: prompt 0 has s0 (2 tokens, log pi = -1 each) and s1 (3 tokens, -2 each),
    prompt 1 has s2 (1 token, -4). Summed RAFT losses l = (2, 6, 4), 6 tokens in all."""
    from gvm_mini.losses import policy_objective, prompt_weights

    logp = torch.tensor([[0.0, -1, -1, 0], [0.0, -2, -2, -2], [0.0, -4, 0, 0]])
    mask = torch.tensor([[0.0, 1, 1, 0], [0.0, 1, 1, 1], [0.0, 1, 0, 0]])
    idx, acc, L = [0, 0, 1], [1, 1, 1], [2, 3, 1]
    expected = {
        "tokens": ([1 / 6] * 3, (2 + 6 + 4) / 6),  # token mean: 12 / 6 = 2
        "prompt": ([1 / 4, 1 / 4, 1 / 2], 0.5 * ((2 + 6) / 2 + 4)),  # (1/m) sum_i mean over D_i = 4
        # lemma1 with n = (2, 1) samples and p = (1/2, 1/2): 1/(m n_i p_i) = 1/(2*1), 1/(2*0.5) -> (8 + 2*4)/2 = 8
        "lemma1": ([1 / 2, 1 / 2, 1.0], 0.5 * ((2 + 6) / 1 + 4 / 0.5)),
    }
    for mode, (w_hand, loss_hand) in expected.items():
        w = prompt_weights(idx, acc, L, mode, p=[0.5, 0.5])
        assert w.tolist() == pytest.approx(w_hand)
        # applied as in the M-step: advantage x (w_s * total tokens) under token_mean
        adv = torch.tensor(acc, dtype=torch.float64) * w * sum(L)
        loss, _ = policy_objective(logp, None, adv.float(), mask, policy_loss="vanilla", kl_coef=0.0)
        assert float(loss) == pytest.approx(loss_hand, rel=1e-6)
    # a rejected sample counts nowhere; a prompt with p_i = 0 falls back to |D_i| / n_i (= "prompt")
    assert prompt_weights([0, 0, 1], [1, 0, 1], L, "prompt").tolist() == [0.5, 0.0, 0.5]
    assert prompt_weights([0, 0, 1], [1, 1, 1], L, "lemma1", p=[0.0, 1.0]).tolist() == [0.25, 0.25, 0.5]
    with pytest.raises(ValueError, match="prompt_weighting must be one of"):
        prompt_weights(idx, acc, L, "sample")
    with pytest.raises(ValueError, match="needs p"):
        prompt_weights(idx, acc, L, "lemma1")
