"""``python -m gvm_mini allocate``: the E-step alone, exported for the official verl pipeline.

For a user who outgrows one GPU: compute the pilot statistics (``p_i``, ``G_i``) and the
Proposition-1 allocation for a whole prompt set here, then hand the per-prompt sample sizes to the
official multi-GPU trainer. The format is the one ``em/stage_2_calc_sample_size.py`` writes and
``ray_trainer.fit`` (``use_em=True``) reads (METHOD.md §9.4-9.5): a JSON list of integers indexed by
the dataset row (``extra_info.index``), file name ``sample_sizes_sample{N/n}_a{alpha}_b{beta}.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import allocation as alloc
from .config import Config

__all__ = ["pilot_statistics", "export_allocation", "official_filename"]


def official_filename(cfg: Config) -> str:
    """``sample_sizes_sample8_a0.001_b2.0.json`` for N/n = 8, alpha = 1e-3, beta = 2 (official naming)."""
    return f"sample_sizes_sample{cfg.samples_per_prompt}_a{cfg.alpha}_b{cfg.beta}.json"


def pilot_statistics(cfg: Config, model, tokenizer, problems, *, chunk: int | None = None):
    """Algorithm 2's estimates for every problem: N' pilots each -> ``p_i``, ``G_i`` (``gradnorm_params``).
    Returns ``(p, G, pilot_tokens)``; processed ``chunk`` prompts at a time (default prompts_per_step)."""
    from .em import _phase_seed, _prompt_texts, _sample, _score, estimate_p_G

    chunk = chunk or cfg.prompts_per_step
    p, G, tokens = np.zeros(len(problems)), np.zeros(len(problems)), 0
    for s in tqdm(range(0, len(problems), chunk), desc="pilot statistics", disable=not cfg.progress):
        part = problems[s : s + chunk]
        texts = _prompt_texts(cfg, tokenizer, part)
        pilot = _sample(cfg, model, tokenizer, texts, [cfg.num_pilot] * len(part), _phase_seed(cfg.seed, "export", s), "pilot")
        rewards = _score(pilot, part, _verifier(cfg))
        p[s : s + chunk], G[s : s + chunk] = estimate_p_G(cfg, model, tokenizer, pilot, rewards, len(part))
        tokens += pilot.num_tokens
    return p, G, tokens


def _verifier(cfg: Config):
    from .rewards import get_verifier

    return get_verifier(cfg.verifier)


def export_allocation(cfg: Config, p, G, out_dir: str | Path, rows=None) -> dict:
    """Allocate ``N = samples_per_prompt * len(p)`` samples by ``cfg.allocation`` and write the official
    sample-size list plus ``pilot_stats.jsonl`` (row, p, G, n). ``rows`` are the dataset row indices of
    the prompts (hub loaders keep them in ``meta["index"]``; rows skipped for lacking an answer get 0);
    by default prompt ``i`` is row ``i``. Returns a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = cfg.samples_per_prompt * len(p)
    n = alloc.get_rule(cfg.allocation)(p, G, budget, alpha=cfg.alpha, beta=cfg.beta,
                                       min_per_prompt=cfg.min_per_prompt, max_per_prompt=cfg.max_per_prompt)
    rows = list(range(len(p))) if rows is None else [int(r) for r in rows]
    sizes = [0] * (max(rows) + 1 if rows else 0)
    for r, ni in zip(rows, n):
        sizes[r] = int(ni)
    path = out_dir / official_filename(cfg)
    path.write_text(json.dumps(sizes))
    with open(out_dir / "pilot_stats.jsonl", "w") as f:
        for r, pi, gi, ni in zip(rows, p, G, n):
            f.write(json.dumps({"index": r, "p": float(pi), "G": float(gi), "n": int(ni)}) + "\n")
    return {"sample_sizes": str(path), "prompts": len(p), "budget": budget, "dropped": int((n == 0).sum()),
            "max_n": int(n.max()) if len(n) else 0}
