"""Degenerate batches: all pilots wrong / all right, GRPO groups of one, zero (or non-finite)
gradient norms, NaN / infinite losses and gradients, empty steps and empty completions. The loop
never crashes on them, never lets a NaN reach the weights, skips a non-finite update (leaving the
weights exactly as they were) and records what happened in the metrics."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import gvm_mini.allocation as alloc  # noqa: E402
import gvm_mini.gradnorm  # noqa: E402
import gvm_mini.losses as losses  # noqa: E402
import gvm_mini.rewards  # noqa: E402
from gvm_mini.config import Config  # noqa: E402
from gvm_mini.em import run  # noqa: E402
from gvm_mini.mstep import m_step  # noqa: E402
from gvm_mini.models import add_lora, load_model  # noqa: E402
from gvm_mini.rollout import Rollout  # noqa: E402
from gvm_mini.rundir import read_checkpoint  # noqa: E402


def _cfg(**kw) -> Config:
    base = dict(model="tiny-qwen2", train_size=16, test_size=2, prompts_per_step=2, steps_per_iteration=2,
                num_pilot=2, samples_per_prompt=2, max_completion_length=6, iterations=1, mini_batch_size=4,
                eval_every=0, eval_samples=1, lora_r=4, lora_alpha=8, system_prompt=None, instruction="",
                progress=False, seed=0)
    base.update(kw)
    return Config(**base)


@pytest.fixture
def policy():
    model, tok = load_model("tiny-qwen2")
    model = add_lora(model, r=4, lora_alpha=8, seed=0)
    return model, tok


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _all_finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def _rollout(sizes, *, completion_len=5, vocab=400, seed=0) -> Rollout:
    """``sizes[i]`` samples of prompt ``i`` with random prompt/completion token ids."""
    g = np.random.default_rng(seed)
    idx = np.repeat(np.arange(len(sizes)), sizes)
    prompts = {i: g.integers(5, vocab, size=4).tolist() for i in range(len(sizes))}
    comps = [g.integers(5, vocab, size=completion_len).tolist() for _ in idx]
    return Rollout(idx, [prompts[int(i)] for i in idx], comps, [np.zeros(len(c), np.float32) for c in comps],
                   [""] * len(idx), np.zeros(len(idx), bool))


def _m_step(cfg, model, tok, rollout, rewards):
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ref = [p.detach().clone() for p in trainable]
    return m_step(cfg, model, opt, rollout, np.asarray(rewards, float), tok.pad_token_id, ref, seed=0), opt


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _const_verifier(monkeypatch, value: float):
    monkeypatch.setattr(gvm_mini.rewards, "get_verifier", lambda name: (lambda text, answer: value))


# ---------------------------------------------------------------------------------------------
# E-step degenerate cases through em.run
# ---------------------------------------------------------------------------------------------


def test_every_pilot_wrong_falls_back_to_uniform(tmp_path, monkeypatch):
    _const_verifier(monkeypatch, 0.0)
    cfg = _cfg()
    state = run(cfg, tmp_path)
    it = [r for r in _records(tmp_path) if r["kind"] == "iteration"]
    assert it and it[0]["fallback_uniform"] is True and it[0]["mean_p"] == 0.0
    al = json.loads((tmp_path / "allocations.jsonl").read_text().splitlines()[0])
    assert al["n"] == [cfg.samples_per_prompt] * cfg.prompts_per_iteration and al["G"] == [0.0] * 4
    steps = [r for r in _records(tmp_path) if r["kind"] == "step"]
    assert all(r["accepted"] == 0 and r["zero_signal_frac"] == 1.0 for r in steps)
    assert state.iteration == 1
    ck = read_checkpoint(tmp_path / "checkpoint")
    assert all(torch.isfinite(t).all() for t in ck["trainable"].values())


@pytest.mark.parametrize("algorithm", ["raftpp", "grpo"])
def test_every_pilot_right(tmp_path, monkeypatch, algorithm):
    _const_verifier(monkeypatch, 1.0)
    cfg = _cfg(algorithm=algorithm)
    run(cfg, tmp_path)
    it = [r for r in _records(tmp_path) if r["kind"] == "iteration"][0]
    # every p_i is 1: Proposition 1 weights are G_i / sqrt(1 + alpha), so the budget follows G_i
    assert it["mean_p"] == 1.0 and it["fallback_uniform"] is False
    al = json.loads((tmp_path / "allocations.jsonl").read_text().splitlines()[0])
    assert sum(al["n"]) == cfg.samples_per_prompt * cfg.prompts_per_iteration and all(g > 0 for g in al["G"])
    steps = [r for r in _records(tmp_path) if r["kind"] == "step"]
    assert all(r["skipped_updates"] == 0 and np.isfinite(r["loss"]) for r in steps)
    if algorithm == "grpo":  # all-correct groups carry no GRPO signal
        assert all(r["zero_signal_frac"] == 1.0 for r in steps)
    ck = read_checkpoint(tmp_path / "checkpoint")
    assert all(torch.isfinite(t).all() for t in ck["trainable"].values())


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_zero_or_nonfinite_gradient_norms_fall_back_to_uniform(tmp_path, monkeypatch, bad):
    """G_i = 0 for every prompt (or a norm that is not finite, treated as 0) -> uniform budget."""
    _const_verifier(monkeypatch, 1.0)
    monkeypatch.setattr(gvm_mini.gradnorm, "per_sample_grad_norms",
                        lambda model, ids, *a, **k: torch.full((ids.shape[0],), bad))
    monkeypatch.setattr(alloc, "get_rule", lambda name: alloc.allocate)  # the Proposition 1 rule itself
    cfg = _cfg()
    run(cfg, tmp_path)
    it = [r for r in _records(tmp_path) if r["kind"] == "iteration"][0]
    assert it["fallback_uniform"] is True
    al = json.loads((tmp_path / "allocations.jsonl").read_text().splitlines()[0])
    assert al["G"] == [0.0] * 4 and al["n"] == [cfg.samples_per_prompt] * 4


def test_a_step_whose_prompts_all_get_zero_samples(tmp_path, monkeypatch):
    """The allocation gives the whole budget to the first M-step's prompts: the second step has an
    empty batch and is recorded with no updates instead of crashing."""
    _const_verifier(monkeypatch, 1.0)

    def lopsided(p, G, budget, **kw):
        n = np.zeros(len(p), dtype=np.int64)
        n[:2] = budget // 2
        return n

    monkeypatch.setattr(alloc, "get_rule", lambda name: lopsided)
    cfg = _cfg()
    run(cfg, tmp_path)
    steps = [r for r in _records(tmp_path) if r["kind"] == "step"]
    assert steps[0]["step_samples"] == 8 and steps[0]["updates"] >= 1
    assert steps[1]["step_samples"] == 0 and steps[1]["skipped_updates"] == 0 and steps[1]["reward_mean"] is None
    it = [r for r in _records(tmp_path) if r["kind"] == "iteration"][0]
    assert it["dropped_prompts"] == 2


def test_nan_loss_in_the_loop_is_skipped_and_recorded(tmp_path, monkeypatch):
    _const_verifier(monkeypatch, 1.0)
    real = losses.policy_objective
    calls = {"n": 0}

    def nan_once(*a, **k):
        loss, st = real(*a, **k)
        calls["n"] += 1
        return (loss * float("nan"), st) if calls["n"] == 1 else (loss, st)

    monkeypatch.setattr(losses, "policy_objective", nan_once)
    run(_cfg(), tmp_path)
    steps = [r for r in _records(tmp_path) if r["kind"] == "step"]
    assert steps[0]["skipped_updates"] == 1 and steps[1]["skipped_updates"] == 0
    ck = read_checkpoint(tmp_path / "checkpoint")
    assert all(torch.isfinite(t).all() for t in ck["trainable"].values())


# ---------------------------------------------------------------------------------------------
# M-step degenerate cases, called directly
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_std", [True, False])
def test_grpo_group_of_one_sample(policy, scale_std):
    model, tok = policy
    cfg = _cfg(algorithm="grpo", grpo_scale_std=scale_std, mini_batch_size=8)
    ro = _rollout([1, 3, 1])  # two singleton groups beside a group of three
    st, _ = _m_step(cfg, model, tok, ro, [1.0, 1.0, 0.0, 0.0, 0.0])
    assert st["skipped_updates"] == 0 and st["updates"] == 1
    assert np.isfinite(st["loss"]) and np.isfinite(st["grad_norm"])
    assert st["zero_signal_frac"] == pytest.approx(2 / 3)  # the singletons carry no signal
    assert _all_finite(model)
    adv = losses.grpo_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 1, 1, 1, 2]))
    assert torch.isfinite(adv).all() and adv[0] == 0 and adv[4] == 0


def test_zero_gradient_leaves_the_weights_alone(policy):
    """RAFT with nothing accepted, no KL and no weight decay: the gradient is exactly zero, the update
    is taken (nothing is non-finite) and the weights do not move."""
    model, tok = policy
    cfg = _cfg(algorithm="raft", kl_coef=0.0, weight_decay=0.0, mini_batch_size=4)
    before = _trainable(model)
    st, _ = _m_step(cfg, model, tok, _rollout([3, 3]), [0.0] * 6)
    assert st["skipped_updates"] == 0 and st["updates"] == 2 and st["grad_norm"] == 0.0
    after = _trainable(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _nan_grad_objective(real):
    """A loss that is finite but whose gradient is NaN: 0 * sqrt(x) at x = 0."""

    def f(logp, *a, **k):
        loss, st = real(logp, *a, **k)
        return loss + 0.0 * torch.sqrt((logp * 0.0).sum()), st

    return f


@pytest.mark.parametrize("kind", ["nan_loss", "inf_loss", "neg_inf_loss", "nan_grad"])
def test_non_finite_update_is_skipped_and_weights_are_unchanged(policy, monkeypatch, kind):
    model, tok = policy
    real = losses.policy_objective
    if kind == "nan_grad":
        monkeypatch.setattr(losses, "policy_objective", _nan_grad_objective(real))
    else:
        bad = {"nan_loss": float("nan"), "inf_loss": float("inf"), "neg_inf_loss": float("-inf")}[kind]
        monkeypatch.setattr(losses, "policy_objective", lambda *a, **k: (real(*a, **k)[0] + bad, real(*a, **k)[1]))
    cfg = _cfg(algorithm="raftpp", mini_batch_size=8)
    before = _trainable(model)
    st, opt = _m_step(cfg, model, tok, _rollout([2, 2]), [1.0, 0.0, 1.0, 1.0])
    assert st["skipped_updates"] == 1 and st["updates"] == 0 and st["loss"] is None
    after = _trainable(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped update changed the weights"
    assert _all_finite(model)
    assert all(p.grad is None for p in model.parameters())  # nothing left over for the next step
    assert not opt.state  # AdamW moments never saw the bad gradient


def test_nan_once_among_micro_batches(policy, monkeypatch):
    """A NaN in the second micro-batch of the first mini-batch skips that whole update (the first
    micro-batch's gradient is discarded too), and the next mini-batch still trains."""
    model, tok = policy
    real = losses.policy_objective
    calls = {"n": 0}

    def nan_second(*a, **k):
        loss, st = real(*a, **k)
        calls["n"] += 1
        return (loss * float("nan"), st) if calls["n"] == 2 else (loss, st)

    monkeypatch.setattr(losses, "policy_objective", nan_second)
    cfg = _cfg(algorithm="raftpp", mini_batch_size=4, micro_batch_size=2)
    before = _trainable(model)
    st, _ = _m_step(cfg, model, tok, _rollout([4, 4]), [1.0, 0.0] * 4)
    assert st["skipped_updates"] == 1 and st["updates"] == 1 and np.isfinite(st["loss"])
    after = _trainable(model)
    assert _all_finite(model) and any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("algorithm", ["raft", "raftpp", "grpo"])
def test_empty_completions(policy, algorithm):
    """Completions of zero tokens (an immediate end of sequence that was cut): no token carries a
    loss; nothing may become NaN."""
    model, tok = policy
    cfg = _cfg(algorithm=algorithm, mini_batch_size=8, weight_decay=0.0)
    ro = _rollout([2, 2], completion_len=0)
    before = _trainable(model)
    st, _ = _m_step(cfg, model, tok, ro, [1.0, 0.0, 1.0, 1.0])
    # the token mean over no tokens is 0 (its normaliser is clamped to 1): a finite, zero loss with a zero
    # gradient, so the update is made (not skipped as non-finite) and, with weight_decay 0, moves nothing
    assert st["updates"] == 1 and st["skipped_updates"] == 0
    assert st["loss"] == 0.0 and st["grad_norm"] == 0.0
    assert _all_finite(model)
    after = _trainable(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
