"""``python -m gvm_mini allocate``: the E-step alone, exported for the official verl pipeline.

For a user who outgrows one GPU: compute the pilot statistics (``p_i``, ``G_i``) and the allocation
for a whole prompt set here, then hand the per-prompt sample sizes to the official multi-GPU trainer
(RLHFlow/GVM, a verl fork; ``theory/official_code.md``). The format is the one the fork's
``em/stage_2_calc_sample_size.py`` writes and its trainer reads with ``use_em=True``: a JSON list of
integers indexed by the dataset row (``extra_info.index``), named
``sample_sizes_sample{N/n}_a{alpha}_b{beta}.json``.

The allocation is the one ``train`` makes: the prompts are visited in the order of ``train``'s first
epoch, in chunks of ``prompts_per_iteration`` (chunk ``t`` is iteration ``t``'s prompts, with its
pilot seed and its budget ``samples_per_prompt * chunk``), through the same
:func:`gvm_mini.estep.e_step` and :func:`gvm_mini.estep.allocate_budget` (so ``estimator``,
``pilot``, the per-prompt costs of ``gvm_tokens`` and GRPO's rounding all apply). Only the policy
differs from ``train`` after its first iteration: here every chunk is estimated with the starting
policy. Chunk 0 equals ``train``'s first iteration exactly (a test checks it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .atomic import atomic_write_text
from .config import Config
from .em import phase_seed, prompt_texts
from .estep import allocate_budget, e_step
from . import rewards
from .rundir import Recorder, RunState

__all__ = ["PromptSetAllocation", "official_filename", "allocate_prompt_set", "write_sample_sizes"]


@dataclass
class PromptSetAllocation:
    """Per prompt of the set (in the set's order): ``p``, ``G``, ``cost`` (mean pilot tokens) and ``n``;
    ``pilot_tokens`` generated; ``fallback_chunks``: chunks whose weights were all 0 (spread evenly)."""

    p: np.ndarray
    G: np.ndarray
    cost: np.ndarray
    n: np.ndarray
    pilot_tokens: int
    fallback_chunks: int


def official_filename(cfg: Config) -> str:
    """``sample_sizes_sample8_a0.001_b2.0.json`` for N/n = 8, alpha = 1e-3, beta = 2 (official naming)."""
    return f"sample_sizes_sample{cfg.samples_per_prompt}_a{cfg.alpha}_b{cfg.beta}.json"


def first_epoch_order(n_prompts: int, cfg: Config) -> np.ndarray:
    """The order in which ``train`` visits the prompt set in its first epoch
    (:func:`gvm_mini.em.iteration_prompt_indices` for iterations ``0, 1, ...``)."""
    return np.random.default_rng(phase_seed(cfg.seed, "epoch", 0)).permutation(n_prompts)


def allocate_prompt_set(cfg: Config, model, tokenizer, problems) -> PromptSetAllocation:
    """``train``'s E-step and allocation over every prompt of ``problems`` (module docstring)."""
    verifier = rewards.get_verifier(cfg.verifier)
    m = len(problems)
    p, G, cost, n = np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m, dtype=np.int64)
    rec = Recorder(RunState())  # counts the pilot tokens; no run directory
    fallback = 0
    order, per_it = first_epoch_order(m, cfg), cfg.prompts_per_iteration
    for t, start in enumerate(tqdm(range(0, m, per_it), desc="pilot statistics", disable=not cfg.progress)):
        ids = order[start : start + per_it]
        chunk = [problems[i] for i in ids]
        est = e_step(cfg, model, tokenizer, prompt_texts(cfg, tokenizer, chunk), chunk, ids, {}, verifier,
                     phase_seed(cfg.seed, "pilot", t), rec)
        allocation = allocate_budget(cfg, est, cfg.samples_per_prompt * len(ids))
        p[ids], G[ids], cost[ids], n[ids] = est.p, est.G, est.cost, allocation.n
        fallback += allocation.fallback_uniform
    return PromptSetAllocation(p, G, cost, n, rec.state.pilot_tokens, fallback)


def write_sample_sizes(cfg: Config, result: PromptSetAllocation, out_dir: str | Path, rows=None) -> dict:
    """Write the official sample-size list and ``pilot_stats.jsonl`` (row, p, G, cost, n), each
    atomically. ``rows`` are the dataset row indices of the prompts (hub loaders keep them in
    ``meta["index"]``; rows skipped for lacking an answer get 0); by default prompt ``i`` is row ``i``.
    Returns a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = np.asarray(result.n)
    rows = list(range(len(n))) if rows is None else [int(r) for r in rows]
    sizes = [0] * (max(rows) + 1 if rows else 0)
    for r, ni in zip(rows, n):
        sizes[r] = int(ni)
    path = atomic_write_text(out_dir / official_filename(cfg), json.dumps(sizes))
    stats = [json.dumps({"index": r, "p": float(pi), "G": float(gi), "cost": float(ci), "n": int(ni)})
             for r, pi, gi, ci, ni in zip(rows, result.p, result.G, result.cost, n)]
    atomic_write_text(out_dir / "pilot_stats.jsonl", "".join(s + "\n" for s in stats))
    return {"sample_sizes": str(path), "prompts": len(n), "budget": int(n.sum()), "dropped": int((n == 0).sum()),
            "max_n": int(n.max()) if len(n) else 0, "pilot_tokens": result.pilot_tokens,
            "fallback_chunks": result.fallback_chunks}
