"""The faster M-step (length-sorted micro-batches padded to their own width, pi_old from the update's
own forward on the first mini-batch) gives the same update as the M-step before it, on the same
batch, up to float rounding: RAFT, RAFT++ and GRPO, with and without micro-batches and KL.

``m_step_before`` (tests/frozen_reference.py) is a frozen, self-contained copy of the M-step as of
commit d4c5bf4, with its own copies of the losses and helpers it computes with. It forwards every
sample; the M-step today does not forward the samples with advantage 0 when there is no KL term (the
cases with ``kl_coef=0`` below), so these cases also compare that against forwarding them
(tests/test_mstep_deadwork.py compares the two paths of today's M-step directly).
"""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gvm_mini.config import Config
from gvm_mini.models import load_model
from gvm_mini.mstep import m_step
from gvm_mini.rollout import Rollout, sample_hf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frozen_reference import m_step_before  # noqa: E402


@pytest.fixture(scope="module")
def batch():
    model, tok = load_model("tiny-qwen2")
    prompts = [f"Compute {a}+{a * 7 + 1}." + " ok" * (a % 3) for a in range(6)]
    ro = sample_hf(model, tok, prompts, [3, 1, 4, 2, 3, 3], temperature=1.0, max_new_tokens=10, seed=0)
    # ragged completions (the random model never ends on its own): cut each to its own length
    cut = [2 + (7 * s) % 9 for s in range(len(ro))]
    ro = Rollout(ro.prompt_index, ro.prompt_ids, [c[:n] for c, n in zip(ro.completion_ids, cut)],
                 [lp[:n] for lp, n in zip(ro.logprobs, cut)], ro.texts, ro.truncated)
    rewards = (np.arange(len(ro)) % 3 == 0).astype(float)
    return model, tok, ro, rewards


CASES = [
    dict(algorithm="raftpp", mini_batch_size=16),
    dict(algorithm="raftpp", mini_batch_size=6, micro_batch_size=4),
    dict(algorithm="grpo", mini_batch_size=6, micro_batch_size=2),
    dict(algorithm="grpo", mini_batch_size=16, old_logprobs="behaviour"),
    dict(algorithm="grpo", mini_batch_size=5, loss_type="seq_mean_token_mean", kl_coef=0.05,
         kl_reference="iteration_start"),
    dict(algorithm="raft", mini_batch_size=8, micro_batch_size=3),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_faster_m_step_matches_the_one_before(batch, case):
    model, tok, ro, rewards = batch
    cfg = Config(lora=False, learning_rate=1e-3, weight_decay=0.0, **{"kl_coef": 0.0, **case})
    out = {}
    for name, fn in (("before", m_step_before), ("after", m_step)):
        m = copy.deepcopy(model)
        ref_values = [p.detach().clone() for p in m.parameters() if p.requires_grad] if cfg.kl_coef > 0 else None
        # plain SGD: the weight change is the gradient itself (Adam's normalisation would blow the
        # ~1e-9 rounding of near-zero gradient entries up to a full step)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        st = fn(cfg, m, opt, ro, rewards, tok.pad_token_id, ref_values, seed=3)
        out[name] = (st, torch.cat([p.detach().flatten() for p in m.parameters()]))
    (sb, wb), (sa, wa) = out["before"], out["after"]
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = (wb - before).abs().max()
    assert moved > 1e-5  # the updates did something
    assert sa["updates"] == sb["updates"] and sa["skipped_updates"] == sb["skipped_updates"] == 0
    for k in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm", "zero_signal_frac"):
        assert sa[k] == pytest.approx(sb[k], rel=1e-4, abs=1e-6), k
    assert (wa - wb).abs().max() < 1e-4 * moved


def test_the_shared_prompt_path_is_taken_and_plain_under_gradient_checkpointing(batch, monkeypatch):
    """The cases above do go through ``token_logprobs_shared_prompts`` (samples share prompts), and a
    model with gradient checkpointing on falls back to the plain forward, with the same update."""
    from gvm_mini import losses

    model, tok, ro, rewards = batch
    real = losses.token_logprobs_shared_prompts
    calls = []
    monkeypatch.setattr(losses, "token_logprobs_shared_prompts", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = Config(lora=False, algorithm="grpo", mini_batch_size=16, learning_rate=1e-3, weight_decay=0.0, kl_coef=0.0)
    out = []
    for checkpointing in (False, True):
        m = copy.deepcopy(model)
        if checkpointing:
            m.gradient_checkpointing_enable()
        n0 = len(calls)
        m_step(cfg, m, torch.optim.SGD(m.parameters(), lr=0.5), ro, rewards, tok.pad_token_id, None, seed=3)
        assert (len(calls) > n0) != checkpointing
        out.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    moved = (out[0] - torch.cat([p.detach().flatten() for p in model.parameters()])).abs().max()
    assert (out[0] - out[1]).abs().max() < 1e-4 * moved


def test_the_frozen_reference_computes_with_its_own_copies():
    """The "before" side stays frozen: from gvm_mini it takes only the data containers (Config, Rollout),
    never a function that computes, so a change to the package cannot move both sides of the comparison."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parent / "frozen_reference.py").read_text())
    taken = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "gvm_mini" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gvm_mini":
            taken |= {a.name for a in node.names}
    assert taken == {"Config", "Rollout"}
