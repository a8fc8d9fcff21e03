"""The E-step of one iteration: Algorithm 2's estimates, then the allocation of Proposition 1.

For the iteration's prompts ``i = 1..m`` (paper §3, Algorithms 1-2; ``theory/em_view.md``)::

    pilot:     N' = num_pilot samples per prompt from the current policy
               (pilot: history - a prompt seen before uses its last visit's counts instead)
    estimate:  p_i = accepted_i / N'                                  (estimator: paper)
               G_i = mean over accepted pilots of ||grad_theta -sum_t log pi(y_t | x_i)||  (0 if none)
               c_i = mean completion tokens per pilot sample                (token-budget rules)
    allocate:  n_i = rule(p, G, N = samples_per_prompt * m)         (allocation: gvm = Proposition 1)

Uniform allocation draws no pilot. ``e_step`` and ``allocate_budget`` are what ``train`` runs each
iteration, what ``python -m gvm_mini allocate`` runs to hand sample sizes to the official verl
pipeline, and what notebook 03 steps through by hand.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import allocation as alloc
from . import estimators
from . import gradnorm
from .rewards import accepted, score_rollout
from .rollout import Rollout, sample_policy, to_batch

__all__ = ["Counts", "Estimates", "Allocation", "accepted_grad_norms", "e_step", "allocate_budget"]


@dataclass
class Counts:
    """Per prompt of an iteration: accepted samples ``k``, samples ``n`` and completion tokens."""

    k: np.ndarray
    n: np.ndarray
    tokens: np.ndarray

    @classmethod
    def zeros(cls, m: int) -> "Counts":
        return cls(np.zeros(m), np.zeros(m), np.zeros(m))

    def add(self, positions: np.ndarray, rollout: Rollout, rewards: np.ndarray) -> None:
        """Count ``rollout`` (its ``prompt_index`` indexes ``positions``) into these prompts' counts."""
        k, n, tok = estimators.counts_by_prompt(rollout.prompt_index, accepted(rewards),
                                                [len(c) for c in rollout.completion_ids], len(positions))
        self.k[positions] += k
        self.n[positions] += n
        self.tokens[positions] += tok


@dataclass
class Estimates:
    """What the E-step knows about each of the iteration's ``m`` prompts.

    ``p``, ``G``: the estimates the allocation uses (NaN under uniform allocation, which draws no
    pilot); ``cost``: ``c_i`` (None without a pilot); ``G_raw``: the unshrunk accepted-pilot mean
    (what the history keeps); ``from_history``: the prompts whose estimate came from their last visit;
    ``pilot`` and ``pilot_rewards``: this iteration's pilot samples (None if none were drawn);
    ``visit``: every sample drawn for each prompt this iteration (pilots now, training samples added
    by the loop), the record ``pilot: history`` keeps; ``G_count``: how many accepted pilots measured
    ``G_raw`` (this iteration's for piloted prompts, the history's ``gn`` for the others; None
    without a pilot); ``G_new``: the accepted pilots *this* iteration (0 for history prompts), the
    weight this visit's ``G`` gets when ``estimator: robust`` adds it to the history."""

    p: np.ndarray
    G: np.ndarray
    cost: np.ndarray | None
    G_raw: np.ndarray | None
    from_history: np.ndarray
    pilot: Rollout | None
    pilot_rewards: np.ndarray | None
    visit: Counts
    G_count: np.ndarray | None = None
    G_new: np.ndarray | None = None


@dataclass
class Allocation:
    """``n``: samples per prompt (after GRPO's rounding to whole groups); ``fallback_uniform``: every
    weight was 0 and the rule spread the budget evenly; ``expected_tokens``: ``sum_i n_i c_i`` of the
    rule's own allocation (None without costs)."""

    n: np.ndarray
    fallback_uniform: bool
    expected_tokens: float | None


def accepted_grad_norms(cfg, model, tokenizer, pilot: Rollout, rewards: np.ndarray, m: int) -> np.ndarray:
    """Algorithm 2's ``G_i``: the mean over prompt ``i``'s accepted pilots of the gradient norm of
    ``-sum_t log pi(y_t | x_i)`` w.r.t. ``cfg.gradnorm_params`` (0 for a prompt with no accepted pilot),
    computed ``cfg.mini_batch_size`` samples at a time, in length-sorted micro-batches of
    ``cfg.micro_batch_size`` (the update's memory bound; :func:`gvm_mini.gradnorm.per_sample_grad_norms`)."""
    rows = np.flatnonzero(accepted(rewards))
    if not rows.size:
        return np.zeros(m)
    dev = next(model.parameters()).device
    norms = []
    for s in range(0, rows.size, cfg.mini_batch_size):
        ids, attn, cmask, _ = to_batch(pilot, tokenizer.pad_token_id, rows[s : s + cfg.mini_batch_size])
        norms.append(gradnorm.per_sample_grad_norms(model, ids.to(dev), attn.to(dev), cmask.to(dev),
                                           params=cfg.gradnorm_params,
                                           batch_size=cfg.micro_batch_size or cfg.mini_batch_size).float().cpu())
    norms = torch.cat(norms).numpy().astype(np.float64)
    norms = np.where(np.isfinite(norms), norms, 0.0)
    sums = np.bincount(pilot.prompt_index[rows], weights=norms, minlength=m)
    n_acc = np.bincount(pilot.prompt_index[rows], minlength=m)
    return np.where(n_acc > 0, sums / np.maximum(n_acc, 1), 0.0)


def e_step(cfg, model, tokenizer, texts: list[str], problems, prompt_ids, history: dict, verifier, seed: int,
           rec) -> Estimates:
    """Algorithm 2 for one iteration's prompts (``texts``, ``problems``; training-set ids ``prompt_ids``).

    ``history`` is the ``pilot: history`` record (:func:`gvm_mini.estimators.history_lookup`); ``seed``
    draws the pilot; ``rec`` (:class:`gvm_mini.rundir.Recorder`) times the phases and counts the pilot's
    samples and tokens. ``p``/``G`` are :func:`gvm_mini.estimators.iteration_estimates` of the counts
    (``estimator: paper`` gives the plain ``accepted / N'`` and the accepted-pilot mean)."""
    m = len(texts)
    visit = Counts.zeros(m)
    if not cfg.uses_pilot:
        return Estimates(np.full(m, np.nan), np.full(m, np.nan), None, None, np.zeros(m, dtype=bool), None, None, visit)
    basis, G_raw, G_count, G_new = Counts.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m)
    from_history = np.zeros(m, dtype=bool)
    if cfg.uses_history:
        from_history, basis.k, basis.n, basis.tokens, G_raw, G_count = estimators.history_lookup(
            history, prompt_ids, cfg.num_pilot, with_G_count=True)
    need = np.flatnonzero(~from_history)
    pilot = rewards = None
    if need.size:
        with rec.phase("pilot"):
            pilot = sample_policy(cfg, model, tokenizer, [texts[i] for i in need], [cfg.num_pilot] * need.size, seed, "pilot")
            pilot.prompt_index = need[pilot.prompt_index]  # the iteration's prompt positions
        with rec.phase("reward", crash=False):
            rewards = score_rollout(pilot, problems, verifier)
        rec.generated(pilot, pilot=True)
        with rec.phase("gradnorm"):
            G_pilot = accepted_grad_norms(cfg, model, tokenizer, pilot, rewards, m)
        visit.add(np.arange(m), pilot, rewards)
        basis.k[need], basis.n[need], basis.tokens[need] = visit.k[need], visit.n[need], visit.tokens[need]
        G_raw[need] = G_pilot[need]
        G_new[need] = G_count[need] = visit.k[need]  # the accepted pilots that measured G_pilot
    p, G = estimators.iteration_estimates(basis.k, basis.n, G_raw, from_history, estimator=cfg.estimator,
                                          G_count=G_count)
    cost = np.maximum(basis.tokens / np.maximum(basis.n, 1), 1.0)  # c_i: mean completion tokens per sample
    return Estimates(p, G, cost, G_raw, from_history, pilot, rewards, visit, G_count, G_new)


def _rule_options(cfg, est: Estimates) -> dict:
    """What a rule needs beyond ``p, G, budget``: per-prompt costs, or gvm_robust's floor and cap."""
    if cfg.allocation in alloc.COST_AWARE:
        return {"cost": est.cost}
    if cfg.allocation == "gvm_robust":
        return {"floor": cfg.robust_floor, "cap_factor": cfg.robust_cap_factor}
    return {}


def allocate_budget(cfg, est: Estimates, budget: int) -> Allocation:
    """``n_i`` for ``budget`` samples by the rule ``cfg.allocation`` (:data:`gvm_mini.allocation.RULES`;
    ``gvm`` is Proposition 1, Eq. 6) on the estimates, with the bounds ``min_per_prompt`` /
    ``max_per_prompt``; for GRPO with ``grpo_group_size = g`` each ``n_i`` is then rounded up to whole
    groups (the paper's App. B: ``ceil(n_i / g)`` copies of the prompt with ``g`` rollouts each)."""
    rule = alloc.get_rule(cfg.allocation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", alloc.AllocationFallbackWarning)
        n = rule(np.nan_to_num(est.p), np.nan_to_num(est.G), budget, alpha=cfg.alpha, beta=cfg.beta,
                 min_per_prompt=cfg.min_per_prompt, max_per_prompt=cfg.max_per_prompt, **_rule_options(cfg, est))
    expected = None if est.cost is None else float(n @ est.cost)
    if cfg.algorithm == "grpo" and cfg.grpo_group_size:
        g = cfg.grpo_group_size
        n = ((n + g - 1) // g) * g
    fallback = any(issubclass(w.category, alloc.AllocationFallbackWarning) for w in caught)
    return Allocation(n, fallback, expected)
