"""The allocation lab: every budget rule on the demo's task, at equal generated tokens, pilots counted.

    python bench/allocation_lab.py            # 26 arms x 2 seeds of RAFT++ on the demo task (CPU, ~15-25 min)
    python bench/allocation_lab.py --seeds 3  # more seeds
    python bench/allocation_lab.py --smoke    # seconds: a 30-step warm start, 3 arms, a tiny budget (CI)

Arms (all RAFT++, the demo's warm start, settings and budget; only the named options change):

- ``uniform``: n_i = 8, no pilot (the baseline every ratio is taken against);
- ``GVM-paper``: Proposition 1 with the paper's estimates (p_i = 0 -> n_i = 0);
- ``GVM-bayes``: Proposition 1 with the empirical-Bayes estimates (``estimator: bayes``);
- ``GVM-tokens``: the token-budget Proposition 1 (``allocation: gvm_tokens``, theory/variance_and_prop1.md);
- ``Knapsack``: Knapsack-RL's value (1 - p^n - (1-p)^n) p (1-p)^2 (``allocation: knapsack``);
- ``Filter``: DAPO-style dynamic sampling (``allocation: filter_extremes``);

each with a fresh pilot (the paper), with ``+history`` (``pilot: history``: a prompt seen in an earlier
epoch is estimated from its earlier samples, shrunk towards a Beta prior, and draws no pilot), with
``+reuse`` (``pilot: reuse``: the pilot samples count towards n_i and are trained on) and with ``+prompt``
(``prompt_weighting: prompt``: Algorithm 1's M-step, each prompt counts once, instead of the official
code's token mean, which weights a prompt by its number of accepted samples); ``uniform+prompt`` is the
baseline of the ``+prompt`` arms. ``-small``: 16 training prompts per family instead of 37, so the budget
covers about five epochs and ``history`` replaces most pilots (baseline ``uniform-small``).

Writes ``bench/results/allocation_lab.{md,json,png}`` (the run directories go to ``runs/allocation_lab``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RULES = [  # (label, allocation, extra options)
    ("GVM-paper", "gvm", {}),
    ("GVM-bayes", "gvm", {"estimator": "bayes"}),
    ("GVM-tokens", "gvm_tokens", {}),
    ("Knapsack", "knapsack", {}),
    ("Filter", "filter_extremes", {}),
]


#: the small-set variant: 16 training prompts per family, so the budget covers about five epochs and
#: ``pilot: history`` can replace most pilots by earlier epochs' samples
SMALL = {"train_size": 128}


def arms(smoke: bool) -> list[tuple[str, str, dict, str]]:
    """(label, allocation, options, baseline label)."""
    out = [("uniform", "uniform", {}, "uniform"), ("uniform+prompt", "uniform", {"prompt_weighting": "prompt"}, "uniform+prompt")]
    for label, allocation, extra in RULES:
        out.append((label, allocation, dict(extra), "uniform"))
        out.append((f"{label}+history", allocation, {**extra, "pilot": "history"}, "uniform"))
        out.append((f"{label}+reuse", allocation, {**extra, "pilot": "reuse"}, "uniform"))
        out.append((f"{label}+prompt", allocation, {**extra, "prompt_weighting": "prompt"}, "uniform+prompt"))
    out.append(("uniform-small", "uniform", dict(SMALL), "uniform-small"))
    for label, allocation, extra in RULES[1:4]:
        out.append((f"{label}+history-small", allocation, {**extra, **SMALL, "pilot": "history"}, "uniform-small"))
    if smoke:
        keep = {"uniform", "GVM-bayes", "GVM-tokens+reuse"}
        out = [a for a in out if a[0] in keep]
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _figure(out: Path, summary: dict, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gvm_mini.rundir import atomic_savefig

    fams = summary["families"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.38 * len(labels) + 1.6), gridspec_kw={"width_ratios": [1, 1.6]})
    y = np.arange(len(labels))[::-1]
    m = [summary["methods"][lab] for lab in labels]
    axes[0].barh(y, [s["final_acc_mean"] for s in m], xerr=[s["final_acc_std"] for s in m], color=[
        "tab:blue" if lab.startswith("uniform") else "tab:red" if lab.startswith("GVM") else "tab:green" for lab in labels], alpha=0.8)
    axes[0].axvline(m[0]["start_acc"], color="gray", ls=":", label="start")
    axes[0].axvline(summary["methods"]["uniform"]["final_acc_mean"], color="tab:blue", ls="--", lw=1, label="uniform's final")
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].set_xlabel(f"test Average@4 at {summary['budget_tokens'] / 1000:.0f}k generated tokens (pilots counted)")
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].grid(alpha=0.3, axis="x")
    grid = np.array([[s["final_by_family"][f] for f in fams] for s in m])
    im = axes[1].imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes[1].set_xticks(range(len(fams)), [f"{f}\n(start {m[0]['start_by_family'][f]:.2f})" for f in fams], fontsize=8)
    axes[1].set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(fams)):
            axes[1].text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if grid[i, j] < 0.5 else "black")
    axes[1].set_title("per family at equal tokens (mean over seeds)", fontsize=10)
    fig.colorbar(im, ax=axes[1], fraction=0.03)
    fig.suptitle(f"Allocation lab: RAFT++ on the demo task, {len(summary['seeds'])} seeds, mean ± std")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="seconds: 30-step warm start, 3 arms, 6k tokens, results under --out only")
    ap.add_argument("--out", type=Path, default=None, help="run directories (default: runs/allocation_lab)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be a positive integer")

    from gvm_mini import demo
    from gvm_mini.rundir import atomic_write_text

    out = args.out or (ROOT / "runs" / ("allocation_lab-smoke" if args.smoke else "allocation_lab"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = [0] if args.smoke else list(range(args.seeds))
    sft = demo.RuleSFT(steps=30) if args.smoke else demo.RuleSFT()
    cache = (out / "cache") if args.smoke else Path.home() / ".cache" / "gvm_mini"
    t0 = time.perf_counter()
    model_dir = demo.warm_start(cache, sft, progress=not args.smoke)
    lab = arms(args.smoke)
    budget = 6_000 if args.smoke else demo.BUDGET
    jobs = []
    for s in seeds:
        for label, allocation, extra, _ in lab:
            opts = {**extra, "token_budget": budget}
            if args.smoke:
                opts.update(test_size=16, prompts_per_step=8)
            jobs.append((model_dir, label, "raftpp", allocation, s, False, "rules", out / f"{label}-s{s}", opts))
    print(f"{len(jobs)} runs ({len(lab)} arms x {len(seeds)} seeds) of {budget:,} generated tokens each")
    demo.run_jobs(out, jobs, budget, max(1, min(args.workers, len(jobs))))
    labels = [a[0] for a in lab]
    summary = demo.summarize_runs(out, labels, seeds, budget=budget, baselines={a[0]: a[3] for a in lab},
                                  rule_of={a[0]: a[1] for a in lab})
    summary["options"] = {a[0]: {"allocation": a[1], **a[2]} for a in lab}
    summary["commit"] = _commit()
    summary["wall_seconds"] = time.perf_counter() - t0
    results = out if args.smoke else ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    table = summary.pop("table")
    header = (f"# Allocation lab (`python bench/allocation_lab.py{' --smoke' if args.smoke else ''}`, commit {summary['commit']}, "
              f"{summary['wall_seconds'] / 60:.1f} min)\n\nAll arms RAFT++; `+reuse`: pilot samples count towards n_i and are "
              "trained on; `+prompt`: Algorithm 1's M-step weighting (ratios against `uniform+prompt`).\n\n")
    atomic_write_text(results / "allocation_lab.md", header + table + "\n")
    atomic_write_text(results / "allocation_lab.json", json.dumps(summary, indent=1))
    _figure(out, summary, labels, results / "allocation_lab.png")
    print(table)
    print(f"\nwrote {results / 'allocation_lab.md'}, .json, .png in {summary['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
