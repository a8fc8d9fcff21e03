"""No dead work in the M-step: with ``kl_coef == 0`` the samples whose final advantage is exactly 0
(RAFT / RAFT++ rejected samples, GRPO's all-equal groups, zero prompt weights) are not forwarded, and
the update is the same as forwarding them (``m_step(..., skip_dead=False)``) to float rounding: the
weights after the M-step and the loss statistics, over several mini-batches and micro-batches, under
``token_mean`` and ``seq_mean_token_mean``; fewer rows go through the model. With KL on nothing is
skipped. A mini-batch with no live sample still makes its (zero-gradient) optimizer step, so AdamW's
weight decay and momentum move the weights exactly as before.
"""

import copy

import numpy as np
import pytest
import torch

from gvm_mini import mstep
from gvm_mini.config import Config
from gvm_mini.models import load_model
from gvm_mini.mstep import advantages, live_samples, m_step
from gvm_mini.rollout import Rollout, sample_hf

COUNTS = [3, 1, 4, 2, 3, 3]  # samples per prompt: prompt 1 is a GRPO singleton
#: RAFT / RAFT++: 6 of 16 accepted
REWARDS_RAFT = (np.arange(16) % 3 == 0).astype(float)
#: GRPO: prompt 0 all right, prompt 1 a singleton, prompt 3 all wrong (all advantages 0), the rest mixed
REWARDS_GRPO = np.array([1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0], dtype=float)


@pytest.fixture(scope="module")
def batch():
    model, tok = load_model("tiny-qwen2")
    prompts = [f"Compute {a}+{a * 7 + 1}." + " ok" * (a % 3) for a in range(len(COUNTS))]
    ro = sample_hf(model, tok, prompts, COUNTS, temperature=1.0, max_new_tokens=10, seed=0)
    cut = [2 + (7 * s) % 9 for s in range(len(ro))]  # ragged completions
    ro = Rollout(ro.prompt_index, ro.prompt_ids, [c[:n] for c, n in zip(ro.completion_ids, cut)],
                 [lp[:n] for lp, n in zip(ro.logprobs, cut)], ro.texts, ro.truncated)
    return model, tok, ro


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _run(cfg, model, tok, ro, rewards, skip_dead, monkeypatch, opt_factory=None, seed=3):
    """One M-step on a copy of ``model``: (stats, weights after, rows forwarded, model forward calls)."""
    m = copy.deepcopy(model)
    ref_values = [p.detach().clone() for p in m.parameters() if p.requires_grad] if cfg.kl_coef > 0 else None
    # plain SGD: the weight change is the gradient itself (Adam would blow ~1e-9 rounding up to a step)
    opt = (opt_factory or (lambda ps: torch.optim.SGD(ps, lr=0.5)))(m.parameters())
    rows, calls = [0], [0]
    real = mstep.micro_batch_logprobs

    def counting(model_, rollout, mb, ids, attn):
        rows[0] += len(mb.rows)
        return real(model_, rollout, mb, ids, attn)

    monkeypatch.setattr(mstep, "micro_batch_logprobs", counting)
    h = m.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        st = m_step(cfg, m, opt, ro, rewards, tok.pad_token_id, ref_values, seed=seed, skip_dead=skip_dead)
    finally:
        h.remove()
        monkeypatch.setattr(mstep, "micro_batch_logprobs", real)
    return st, _flat(m), rows[0], calls[0], opt, m


CASES = [
    dict(algorithm="raft", mini_batch_size=6, micro_batch_size=2),
    dict(algorithm="raft", mini_batch_size=8, loss_type="seq_mean_token_mean"),
    dict(algorithm="raftpp", mini_batch_size=6),
    dict(algorithm="raftpp", mini_batch_size=5, micro_batch_size=2, loss_type="seq_mean_token_mean"),
    dict(algorithm="raftpp", mini_batch_size=4, old_logprobs="behaviour"),
    dict(algorithm="raftpp", mini_batch_size=6, micro_batch_size=3, prompt_weighting="prompt"),
    dict(algorithm="grpo", mini_batch_size=6, micro_batch_size=2),
    dict(algorithm="grpo", mini_batch_size=5, loss_type="seq_mean_token_mean"),
    dict(algorithm="grpo", mini_batch_size=8, micro_batch_size=3, prompt_weighting="prompt"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_skipping_dead_samples_gives_the_same_update(batch, monkeypatch, case):
    model, tok, ro = batch
    cfg = Config(lora=False, learning_rate=1e-3, weight_decay=0.0, kl_coef=0.0, **case)
    rewards = REWARDS_GRPO if cfg.algorithm == "grpo" else REWARDS_RAFT
    adv = advantages(cfg, ro, rewards)
    dead = int((adv == 0).sum())
    assert dead >= 5  # the case has dead samples (GRPO: prompts 0, 1 and 3, 6 samples)
    sk, wk, rows_k, calls_k, *_ = _run(cfg, model, tok, ro, rewards, True, monkeypatch)
    fw, wf, rows_f, calls_f, *_ = _run(cfg, model, tok, ro, rewards, False, monkeypatch)
    moved = (wf - _flat(model)).abs().max()
    assert moved > 1e-5  # the updates did something
    assert (wk - wf).abs().max() < 1e-4 * moved
    assert sk["updates"] == fw["updates"] == -(-16 // mstep.mini_batch_responses(cfg))
    assert sk["skipped_updates"] == fw["skipped_updates"] == 0
    for k in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm", "zero_signal_frac"):
        assert sk[k] == pytest.approx(fw[k], rel=1e-4, abs=1e-7), k
    assert sk["dead_samples"] == dead and fw["dead_samples"] == 0
    # fewer rows forwarded: a live row once per forward it takes, a dead row never
    live = (adv != 0).numpy()
    assert rows_k == _rows_forwarded(cfg, live) < rows_f == _rows_forwarded(cfg, np.ones(16, bool))
    assert calls_k <= calls_f


def _rows_forwarded(cfg, live):
    """Rows through the model: each live row in the update, and once more for pi_old when it is
    recomputed (RAFT++ / GRPO with ``old_logprobs: recompute``), except in the first mini-batch, which
    takes pi_old from its update's own forward."""
    perm = np.random.default_rng(3).permutation(16)  # plan()'s permutation for seed 3
    size = mstep.mini_batch_responses(cfg)
    recompute = cfg.algorithm != "raft" and cfg.old_logprobs == "recompute"
    return sum(int(live[perm[s : s + size]].sum()) * (2 if recompute and s > 0 else 1) for s in range(0, 16, size))


def test_clip_fraction_is_measured_somewhere(batch, monkeypatch):
    """The cases above compare a clip fraction that is not always 0: later mini-batches are off-policy."""
    model, tok, ro = batch
    cfg = Config(lora=False, algorithm="grpo", mini_batch_size=4, kl_coef=0.0, loss_type="seq_mean_token_mean")
    sk, *_ = _run(cfg, model, tok, ro, REWARDS_GRPO, True, monkeypatch)
    fw, *_ = _run(cfg, model, tok, ro, REWARDS_GRPO, False, monkeypatch)
    assert fw["clip_frac"] > 0
    assert sk["clip_frac"] == pytest.approx(fw["clip_frac"], rel=1e-4)


@pytest.mark.parametrize("algorithm", ["raft", "raftpp", "grpo"])
def test_with_kl_nothing_is_skipped(batch, monkeypatch, algorithm):
    model, tok, ro = batch
    cfg = Config(lora=False, algorithm=algorithm, mini_batch_size=6, micro_batch_size=4, kl_coef=0.05,
                 kl_reference="iteration_start")
    rewards = REWARDS_GRPO if algorithm == "grpo" else REWARDS_RAFT
    assert live_samples(cfg, advantages(cfg, ro, rewards)).all()
    sk, wk, rows_k, calls_k, *_ = _run(cfg, model, tok, ro, rewards, True, monkeypatch)
    fw, wf, rows_f, calls_f, *_ = _run(cfg, model, tok, ro, rewards, False, monkeypatch)
    assert sk["dead_samples"] == 0 and rows_k == rows_f and calls_k == calls_f
    assert torch.equal(wk, wf)  # the very same computation
    assert sk["kl"] == fw["kl"] and sk["kl"] is not None


def test_all_dead_mini_batches_still_step(batch, monkeypatch):
    """RAFT++ with nothing accepted and no KL: nothing is forwarded at all, yet every mini-batch makes
    its optimizer step with a zero gradient, as when the rejected samples were forwarded: AdamW's weight
    decay moves the weights on a fresh optimizer, and its momentum from an earlier M-step keeps moving
    them; both exactly as without skipping."""
    model, tok, ro = batch
    cfg = Config(lora=False, algorithm="raftpp", mini_batch_size=6, kl_coef=0.0, weight_decay=0.1, learning_rate=1e-2)
    zeros = np.zeros(16)

    def adamw(ps):
        return torch.optim.AdamW(ps, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    # a fresh AdamW: weight decay alone moves the weights
    sk, wk, rows_k, calls_k, opt_k, _ = _run(cfg, model, tok, ro, zeros, True, monkeypatch, adamw)
    fw, wf, rows_f, calls_f, opt_f, _ = _run(cfg, model, tok, ro, zeros, False, monkeypatch, adamw)
    assert rows_k == 0 and calls_k == 0 and rows_f > 0
    assert sk["updates"] == fw["updates"] == 3 and sk["skipped_updates"] == 0
    assert sk["grad_norm"] == fw["grad_norm"] == 0.0
    assert sk["loss"] == fw["loss"] == 0.0 and sk["clip_frac"] == fw["clip_frac"] == 0.0
    assert (wf - _flat(model)).abs().max() > 0  # weight decay moved them
    assert torch.equal(wk, wf)
    steps = lambda opt: sorted(int(s["step"]) for s in opt.state.values())  # noqa: E731
    assert steps(opt_k) == steps(opt_f) and steps(opt_k)[0] == 3

    # momentum: an M-step with accepted samples (identical in both copies), then one with none
    cfg0 = Config(**{**cfg.__dict__, "weight_decay": 0.0})
    out = {}
    for skip in (True, False):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=cfg0.learning_rate, weight_decay=0.0)
        m_step(cfg0, m, opt, ro, REWARDS_RAFT, tok.pad_token_id, None, seed=1, skip_dead=False)
        mid = _flat(m)
        st = m_step(cfg0, m, opt, ro, zeros, tok.pad_token_id, None, seed=2, skip_dead=skip)
        assert st["updates"] == 3 and st["grad_norm"] == 0.0
        out[skip] = (mid, _flat(m))
    assert torch.equal(out[True][0], out[False][0])
    assert (out[True][1] - out[True][0]).abs().max() > 0  # momentum moved them with a zero gradient
    assert torch.equal(out[True][1], out[False][1])


def test_a_mini_batch_of_dead_samples_among_live_ones(batch, monkeypatch):
    """Mixed: the accepted samples all fall in one mini-batch, the others' mini-batches are all dead."""
    model, tok, ro = batch
    cfg = Config(lora=False, algorithm="raftpp", mini_batch_size=4, kl_coef=0.0, weight_decay=0.0)
    perm = np.random.default_rng(3).permutation(16)  # plan()'s permutation for seed 3
    rewards = np.zeros(16)
    rewards[perm[4:8]] = 1.0  # the second mini-batch only
    sk, wk, rows_k, _, _, _ = _run(cfg, model, tok, ro, rewards, True, monkeypatch)
    fw, wf, rows_f, _, _, _ = _run(cfg, model, tok, ro, rewards, False, monkeypatch)
    assert sk["updates"] == fw["updates"] == 4 and sk["dead_samples"] == 12
    assert rows_k == 8  # pi_old (recomputed: not the first mini-batch) and the update, 4 rows each
    moved = (wf - _flat(model)).abs().max()
    assert moved > 1e-5 and (wk - wf).abs().max() < 1e-4 * moved
    for k in ("loss", "pg_loss", "clip_frac", "grad_norm"):
        assert sk[k] == pytest.approx(fw[k], rel=1e-4, abs=1e-7), k


def test_a_nan_advantage_is_not_dead():
    cfg = Config(lora=False, algorithm="raftpp", kl_coef=0.0)
    assert live_samples(cfg, torch.tensor([0.0, -0.0, float("nan"), 1.0, -0.5])).tolist() == [False, False, True, True, True]
