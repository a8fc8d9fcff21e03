"""Figures from run directories: accuracy against compute, and the allocation picture (paper Fig. 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_savefig

__all__ = ["read_jsonl", "eval_curve", "plot_runs", "plot_allocation"]

X_AXES = {
    "tokens": ("tokens", "generated tokens (pilots included)"),
    "samples": ("samples", "generated samples (pilots included)"),
    "steps": ("global_step", "M-steps (paper's x-axis)"),
    "updates": ("updates", "optimizer updates"),
    "wall": ("wall_train", "training wall time (s, evaluation excluded)"),
}


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (a run killed mid-write) is ignored."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def eval_curve(run_dir: str | Path, x: str = "tokens", metric: str = "avg_at_k") -> tuple[np.ndarray, np.ndarray]:
    """(x, accuracy) of the ``eval`` records of a run directory."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {sorted(X_AXES)}, got {x!r}")
    recs = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r.get("kind") == "eval"]
    key = X_AXES[x][0]
    return np.array([r[key] for r in recs], dtype=float), np.array([r[metric] for r in recs], dtype=float)


def plot_runs(run_dirs, out: str | Path, *, x: str = "tokens", metric: str = "avg_at_k", labels=None, title=None):
    """One accuracy-vs-``x`` line per run directory; saved to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, d in enumerate(run_dirs):
        xs, ys = eval_curve(d, x, metric)
        ax.plot(xs, ys, marker="o", label=(labels[i] if labels else Path(d).name))
    ax.set_xlabel(X_AXES[x][1])
    ax.set_ylabel(metric.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=120)  # temporary file + rename: a kill never leaves a torn PNG
    plt.close(fig)
    return out


def plot_allocation(run_dir: str | Path, out: str | Path, *, iteration: int | None = None):
    """n_i against p_i, coloured by G_i (paper Figure 2), from ``allocations.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_jsonl(Path(run_dir) / "allocations.jsonl")
    if iteration is not None:
        recs = [r for r in recs if r["iteration"] == iteration]
    p = np.concatenate([np.asarray(r["p"], dtype=float) for r in recs])
    G = np.concatenate([np.asarray(r["G"], dtype=float) for r in recs])
    n = np.concatenate([np.asarray(r["n"], dtype=float) for r in recs])
    fig, ax = plt.subplots(figsize=(6, 4))
    jitter = np.random.default_rng(0).uniform(-0.01, 0.01, p.size)
    sc = ax.scatter(p + jitter, n, c=G, cmap="viridis", s=18)
    fig.colorbar(sc, ax=ax, label="G_i (mean gradient norm of accepted pilots)")
    ax.set_xlabel("pilot acceptance rate p_i")
    ax.set_ylabel("allocated samples n_i")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=120)  # temporary file + rename: a kill never leaves a torn PNG
    plt.close(fig)
    return out
