"""The demo's report: every arm read at equal generated tokens (pilots counted) and at equal M-steps
(the paper's accounting), per family, and its figures (``curves.png``, ``families.png``,
``allocation.png``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_savefig, atomic_write_text  # a kill never leaves a torn summary or figure
from ..plots import X_AXES, read_jsonl
from .task import RULE_FAMILIES

__all__ = ["MIN_GAIN", "BASELINE_OF", "summarize_runs", "machine"]


#: a tokens- or M-steps-to-target ratio is computed only when the uniform baseline gained at least this
#: much test accuracy over its start (one eval of 128 prompts x 4 samples has a standard error of about 0.02)
MIN_GAIN = 0.05

#: the uniform baseline of each arm, and the colours / line styles of the figures
#: (the uniform arm with the same M-step weighting: the Robust arms train with Algorithm 1's per-prompt
#: weighting, so their baselines are the Prompt arms, and a Prompt arm's is plain uniform: the weighting alone)
BASELINE_OF = {"GVM-RAFT++": "RAFT++", "Filter-RAFT++": "RAFT++", "Robust-RAFT++": "Prompt-RAFT++",
               "GVM-GRPO": "GRPO", "Filter-GRPO": "GRPO", "Robust-GRPO": "Prompt-GRPO",
               "Prompt-RAFT++": "RAFT++", "Prompt-GRPO": "GRPO"}
_COLOR = {"uniform": "tab:blue", "gvm": "tab:red", "filter_extremes": "tab:green", "gvm_robust": "tab:purple"}
_PREFIX = {"GVM": "gvm", "Filter": "filter_extremes", "Robust": "gvm_robust"}


def _rule_of(label: str) -> str:
    return _PREFIX.get(label.split("-", 1)[0], "uniform") if "-" in label else "uniform"


def _color(label: str) -> str:  # the rule's colour; uniform under the per-prompt weighting (Prompt arms) its own
    return "tab:cyan" if label.startswith("Prompt-") else _COLOR[_rule_of(label)]


def _paired(finals: dict, lab: str, base: str) -> dict:
    """Final accuracy of ``lab`` minus ``base``'s, paired by seed: mean and its standard error over seeds."""
    d = np.asarray(finals[lab]) - np.asarray(finals[base])
    return {"baseline": base, "mean": float(d.mean()), "per_seed": d.tolist(),
            "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None}


def _evals(out: Path, label: str, seed: int) -> list[dict]:
    return [r for r in read_jsonl(out / f"{label}-s{seed}" / "metrics.jsonl") if r["kind"] == "eval"]


def _value_at(evals: list[dict], key: str, x: float, field: str = "avg_at_k", family: str | None = None) -> float:
    """Linear interpolation of an eval curve at ``x`` (the curves are compared at equal x, not at
    their last points, which overshoot the budget by up to one M-step)."""
    xs = np.array([e[key] for e in evals], float)
    ys = np.array([e["by_group"][family] if family else e[field] for e in evals], float)
    return float(np.interp(x, xs, ys))


def _mean_curve(runs: list[list[dict]], key: str, xmax: float, n: int = 80, family: str | None = None):
    grid = np.linspace(0, xmax, n)
    ys = np.array([[_value_at(r, key, x, family=family) for x in grid] for r in runs])
    return grid, ys.mean(0), ys.std(0)


def _first_reach(grid: np.ndarray, mean: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(mean >= target - 1e-12)
    return float(grid[hit[0]]) if hit.size else None


def _k_formatter(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:.0f}k" if v >= 1000 else f"{v:.0f}"))


def summarize_runs(out: Path, labels: list[str], seeds: list[int], *, budget: int,
                   baselines: dict[str, str] | None = None, rule_of: dict[str, str] | None = None) -> dict:
    """The summary table (``summary.md`` / ``summary.json``) and figures (``curves.png``,
    ``families.png``, ``allocation.png``) from the run directories under ``out``.

    Honest accounting: every arm is read at the same number of generated tokens, ``budget``, pilots
    included (curves interpolated). The paper's accounting: M-steps, pilots not counted.
    ``baselines`` maps an arm to the uniform arm it is compared with (default :data:`BASELINE_OF`);
    ``rule_of`` maps an arm to its allocation rule (colours; default: from the label).
    """
    baselines = BASELINE_OF if baselines is None else baselines
    rules = {lab: (rule_of or {}).get(lab) or _rule_of(lab) for lab in labels}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {lab: [_evals(out, lab, s) for s in seeds] for lab in labels}
    metrics = {lab: [read_jsonl(out / f"{lab}-s{s}" / "metrics.jsonl") for s in seeds] for lab in labels}
    families = sorted(runs[labels[0]][0][0].get("by_group", {}))
    # equal M-steps: the fewest M-steps any arm made inside the budget (the pilots cost the GVM and
    # filter arms M-steps at equal tokens)
    m_star = min(_value_at(r, "tokens", budget, field="global_step") for lab in labels for r in runs[lab])
    summary: dict = {"budget_tokens": budget, "seeds": seeds, "families": families, "equal_m_steps": m_star,
                     "machine": machine(), "methods": {}}
    for lab in labels:
        rs, ms = runs[lab], metrics[lab]
        finals = np.array([_value_at(r, "tokens", budget) for r in rs])
        steps = [[m for m in mm if m["kind"] == "step"] for mm in ms]
        walls = [mm[-1]["wall"] for mm in ms]
        share = np.mean([(w["pilot"] + w["gradnorm"] + w["allocate"]) / max(sum(w.values()) - w["eval"] - w.get("checkpoint", 0), 1e-9) for w in walls])
        summary["methods"][lab] = {
            "algorithm": "grpo" if "GRPO" in lab else "raftpp", "allocation": rules[lab],
            "start_acc": float(np.mean([r[0]["avg_at_k"] for r in rs])),
            "final_acc_mean": float(finals.mean()), "final_acc_std": float(finals.std()),
            "final_acc_seeds": finals.tolist(),
            "acc_at_equal_m_steps_mean": float(np.mean([_value_at(r, "global_step", m_star) for r in rs])),
            "acc_at_equal_m_steps_std": float(np.std([_value_at(r, "global_step", m_star) for r in rs])),
            "tokens": float(np.mean([mm[-1]["tokens"] for mm in ms])),
            "pilot_tokens": float(np.mean([mm[-1]["pilot_tokens"] for mm in ms])),
            "m_steps": float(np.mean([_value_at(r, "tokens", budget, field="global_step") for r in rs])),
            "updates": float(np.mean([mm[-1]["updates"] for mm in ms])),
            "gvm_stage_share_of_train_wall": float(share),
            "train_truncated_frac": float(np.mean([st["truncated_frac"] for ss in steps for st in ss if st.get("truncated_frac") is not None])),
            "eval_truncated_frac": float(np.mean([e["truncated_frac"] for r in rs for e in r])),
        }
        if families:
            summary["methods"][lab]["start_by_family"] = {f: float(np.mean([r[0]["by_group"][f] for r in rs])) for f in families}
            summary["methods"][lab]["final_by_family"] = {f: float(np.mean([_value_at(r, "tokens", budget, family=f) for r in rs])) for f in families}
        allocs = [read_jsonl(out / f"{lab}-s{s}" / "allocations.jsonl") for s in seeds]
        if rules[lab] != "uniform":
            summary["methods"][lab]["dropped_prompt_frac"] = float(np.mean([np.mean(np.asarray(a["n"]) == 0) for al in allocs for a in al]))
            summary["methods"][lab]["max_n"] = int(max(max(a["n"]) for al in allocs for a in al))  # the largest n_i of any visit
            if families:
                mean_n, zero_share = {}, {}  # per family: mean n_i and the share of prompt-visits with n_i = 0
                for f in families:
                    vals = np.array([n for al in allocs for a in al for n, d in zip(a["n"], a["difficulty"]) if families[d] == f])
                    mean_n[f] = float(vals.mean()) if vals.size else None
                    zero_share[f] = float(np.mean(vals == 0)) if vals.size else None
                summary["methods"][lab]["mean_n_by_family"] = mean_n
                summary["methods"][lab]["zero_share_by_family"] = zero_share
    # one factor at a time: each arm against the uniform arm with its M-step weighting (its baseline) and
    # against plain uniform of its algorithm (token mean), final accuracy at the budget, paired by seed
    finals = {lab: summary["methods"][lab]["final_acc_seeds"] for lab in labels}
    for lab in labels:
        base = baselines.get(lab, lab)
        plain = "GRPO" if "GRPO" in lab else "RAFT++"
        if base != lab and base in labels:
            summary["methods"][lab]["vs_uniform_same_weighting"] = _paired(finals, lab, base)
        if plain != lab and plain in labels:
            summary["methods"][lab]["vs_uniform_tokens"] = _paired(finals, lab, plain)
    # tokens / M-steps to reach the uniform baseline's final accuracy, on the mean curves over seeds
    for lab in labels:
        base = baselines.get(lab, lab)
        if base not in labels:
            continue
        sb = summary["methods"][base]
        if sb["final_acc_mean"] - sb["start_acc"] < MIN_GAIN:
            summary["methods"][lab]["note"] = (f"the uniform baseline gained less than {MIN_GAIN} over its start: "
                                               "a tokens-to-target ratio would measure noise")
            continue
        target = sb["final_acc_mean"]
        for x, key, name in (("tokens", "tokens", "tokens"), ("steps", "global_step", "m_steps")):
            reach = {}
            for l2 in (base, lab):
                xmax = min(r[-1][key] for r in runs[l2]) if x == "steps" else budget
                g, mean, _ = _mean_curve(runs[l2], key, xmax, n=200)
                reach[l2] = _first_reach(g, mean, target)
            summary["methods"][lab][f"{name}_to_baseline_final"] = reach[lab]
            if lab != base:
                summary["methods"][lab][f"{name}_ratio_vs_baseline"] = (
                    reach[base] / reach[lab] if reach[base] and reach[lab] else None)
    if rule_of is None:  # the demo's arms; experiments with other arms make their own figures
        _plot_curves(out, runs, labels, seeds, budget, plt, X_AXES)
        if families:
            _plot_families(out, runs, labels, families, budget, plt)
    gvm = [lab for lab in labels if lab.startswith("GVM")]
    if gvm:
        _plot_allocation_by_family(out / f"{gvm[0]}-s{seeds[0]}", out / "allocation.png", families, plt,
                                   title=f"{gvm[0]}'s Proposition-1 allocation (seed {seeds[0]}): every prompt of every iteration")
    summary["table"] = _table(summary, labels)
    atomic_write_text(out / "summary.md", summary["table"] + "\n")
    atomic_write_text(out / "summary.json", json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
    return summary


def machine() -> str:
    """The CPU model (results are deterministic per machine, not across AVX2 / AVX-512 CPUs)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                name = line.split(":", 1)[1].strip() + (" (AVX-512)" if "avx512f" in flags else " (AVX2, no AVX-512)")
                return name + _kernel_isa_note("avx512f" in flags)
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _kernel_isa_note(has_avx512: bool) -> str:
    """'' unless PyTorch's own kernels were restricted below the CPU's ISA (``ATEN_CPU_CAPABILITY=avx2``)."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    return f", torch kernels restricted to {cap}" if has_avx512 and cap != "AVX512" else ""


def _fmt_reach(s: dict, name: str, fmt: str) -> str:
    if "note" in s:
        return "n/a: baseline gained < 0.05"
    v, r = s.get(f"{name}_to_baseline_final"), s.get(f"{name}_ratio_vs_baseline")
    return "not reached" if v is None else fmt.format(v) + ("" if r is None else f" ({r:.2f}x)")


def _over_seeds(n: int) -> str:
    """How a table or figure summarises ``n`` seeds (one seed has no spread to show)."""
    return "one seed (no spread)" if n == 1 else f"mean ± std over {n} seeds"


def _mean_std(mean: float, std: float, n: int) -> str:
    return f"{mean:.3f}" if n == 1 else f"{mean:.3f} ± {std:.3f}"


def _table(summary: dict, labels: list[str]) -> str:
    m_star, k = summary["equal_m_steps"], len(summary["seeds"])
    lines = [
        f"Equal generated tokens ({summary['budget_tokens']:,}, pilots counted) and equal M-steps ({m_star:.0f}, the paper's "
        f"x-axis, pilots not counted); {_over_seeds(k)}; measured on {summary['machine']}.",
        "",
        "| method | start acc | final acc at equal tokens | acc at equal M-steps | tokens (pilot) | M-steps | "
        "tokens to reach uniform's final (ratio) | M-steps to reach it (ratio) | GVM stage share of train wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lab in labels:
        s = summary["methods"][lab]
        lines.append(
            f"| {lab} | {s['start_acc']:.3f} | {_mean_std(s['final_acc_mean'], s['final_acc_std'], k)} | "
            f"{_mean_std(s['acc_at_equal_m_steps_mean'], s['acc_at_equal_m_steps_std'], k)} | "
            f"{s['tokens']:,.0f} ({s['pilot_tokens']:,.0f}) | {s['m_steps']:.1f} | {_fmt_reach(s, 'tokens', '{:,.0f}')} | "
            f"{_fmt_reach(s, 'm_steps', '{:.1f}')} | {100 * s['gvm_stage_share_of_train_wall']:.1f}% |"
        )
    pairs = [lab for lab in labels if "vs_uniform_same_weighting" in summary["methods"][lab]]
    if pairs:
        def pm(d):
            return f"{d['mean']:+.3f}" + (f" ± {d['se']:.3f}" if d["se"] is not None else "")
        lines += ["", "One factor at a time: final accuracy at equal tokens minus the baseline's, paired by seed, mean ± "
                  "standard error over seeds. The baseline is uniform budgets with the arm's own M-step weighting; the "
                  "Prompt arms (uniform under Algorithm 1's per-prompt weighting) against plain uniform are the weighting "
                  "alone. The last column is the arm against plain uniform (token mean), which mixes the two factors "
                  "for the Robust arms.", "",
                  "| arm | baseline (same weighting) | vs baseline | vs plain uniform (token mean) |", "|---|---|---|---|"]
        for lab in pairs:
            s = summary["methods"][lab]
            same, tok = s["vs_uniform_same_weighting"], s.get("vs_uniform_tokens")
            lines.append(f"| {lab} | {same['baseline']} | {pm(same)} | {pm(tok) if tok else '-'} |")
    fams = summary["families"]
    if fams:
        lines += ["", "Per family: test Average@4 at the start -> at equal tokens (mean over seeds); "
                  "for the pilot-based arms, mean n_i per prompt in brackets (uniform: 8).", "",
                  "| method | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
        first = summary["methods"][labels[0]]
        lines.append("| start | " + " | ".join(f"{first['start_by_family'][f]:.2f}" for f in fams) + " |")
        for lab in labels:
            s = summary["methods"][lab]
            mean_n = s.get("mean_n_by_family", {})
            cells = [f"{s['final_by_family'][f]:.2f}" + (f" [{mean_n[f]:.1f}]" if mean_n.get(f) is not None else "") for f in fams]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    trunc = max(max(s["train_truncated_frac"], s["eval_truncated_frac"]) for s in summary["methods"].values())
    lines += ["", f"Truncated completions (hit max_completion_length): at most {100 * trunc:.2f}% of any arm's samples."]
    return "\n".join(lines)


def _plot_curves(out: Path, runs: dict, labels: list[str], seeds: list[int], budget: int, plt, X_AXES) -> None:
    algos = [a for a in ("RAFT++", "GRPO") if any(lab.endswith(a) for lab in labels)]
    fig, axes = plt.subplots(len(algos), 3, figsize=(15, 4 * len(algos)), squeeze=False)
    for row, algo in zip(axes, algos):
        arms = [lab for lab in labels if lab.endswith(algo) and (lab == algo or lab.split("-", 1)[1] == algo)]
        start = np.mean([runs[lab][i][0]["avg_at_k"] for lab in arms for i in range(len(seeds))])
        for ax, x in zip(row, ["tokens", "wall", "steps"]):
            key = X_AXES[x][0]
            for lab in arms:
                xmax = budget if x == "tokens" else min(r[-1][key] for r in runs[lab])
                g, mean, std = _mean_curve(runs[lab], key, xmax)
                c = _color(lab)  # Prompt arms dashed: with GRPO the Prompt arm is the uniform run itself, drawn over it
                ax.plot(g, mean, label=lab, color=c, ls="--" if lab.startswith("Prompt-") else "-")
                ax.fill_between(g, mean - std, mean + std, alpha=0.15, color=c)
            ax.axhline(start, color="gray", ls=":", lw=1, label="start")
            if x == "tokens":
                _k_formatter(ax)
            ax.set_xlabel(X_AXES[x][1])
            ax.set_ylabel("test Average@4")
            ax.grid(alpha=0.3)
        row[2].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)  # beside, not over, the curves
        names = ["uniform" if lab == algo else "uniform-prompt" if lab.startswith("Prompt-") else lab.split("-", 1)[0] for lab in arms]
        row[0].set_title(f"{algo}: {', '.join(names)} against tokens", fontsize=10)
        row[1].set_title("against training wall time", fontsize=10)
        row[2].set_title("against M-steps (the paper's x-axis: pilots free)", fontsize=10)
    fig.suptitle(f"Test accuracy during RL, {_over_seeds(len(seeds))} (dotted: start)")
    fig.tight_layout()
    atomic_savefig(fig, out / "curves.png", dpi=100)
    plt.close(fig)


def _plot_families(out: Path, runs: dict, labels: list[str], families: list[str], budget: int, plt) -> None:
    cols = 4
    rows = (len(families) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, f in zip(axes.flat, families):
        for lab in labels:
            g, mean, _ = _mean_curve(runs[lab], "tokens", budget, n=40, family=f)
            # Prompt-GRPO is uniform GRPO's run itself (1/|D_i| is a constant there): dotted, so GRPO shows through
            ls = ":" if lab == "Prompt-GRPO" else "-" if "RAFT" in lab else "--"
            ax.plot(g, mean, color=_color(lab), ls=ls, lw=2 if ls == ":" else 1.5, label=lab)
        start = float(np.mean([r[0]["by_group"][f] for r in runs[labels[0]]]))  # the table's start (mean over seeds)
        ax.axhline(start, color="gray", ls=":", lw=1)
        ax.set_title(f"family {f} ({RULE_FAMILIES.get(f, '?')}), start {start:.2f}", fontsize=10)
        _k_formatter(ax)
        ax.set_xlabel("generated tokens (pilots included)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test Average@4")
    for ax in axes.flat[len(families):]:
        ax.axis("off")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8, frameon=False)
    fig.suptitle("Per family (solid: RAFT++ arms, dashed: GRPO arms, dotted: Prompt-GRPO, the same runs as GRPO; "
                 "colour: the rule), mean over seeds")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    atomic_savefig(fig, out / "families.png", dpi=100)
    plt.close(fig)


def _plot_allocation_by_family(run_dir: Path, path: Path, families: list[str], plt, title: str | None = None) -> None:
    """The Proposition-1 allocation of one run, every prompt-visit (the paper's Figure 2). Left: n_i
    against the pilot's p_i (N' = 4: p_i takes five values, so each value's points are spread sideways
    and the mean n_i at each is marked). Right, with families: each family's n_i as a strip, its mean
    (diamond) and the share of its visits with n_i = 0 written above it; without families, the points
    coloured by difficulty. The uniform budget is the dashed line."""
    recs = read_jsonl(run_dir / "allocations.jsonl")
    p = np.concatenate([np.asarray(r["p"], float) for r in recs])
    n = np.concatenate([np.asarray(r["n"], float) for r in recs])
    d = np.concatenate([np.asarray(r["difficulty"], float) for r in recs])
    rng = np.random.default_rng(0)
    uniform = 8
    if not families:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sc = ax.scatter(p + rng.uniform(-0.06, 0.06, p.size), n, c=d, cmap="viridis", s=14, alpha=0.8)
        fig.colorbar(sc, ax=ax, label="difficulty = operands x digits")
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.3]})
        ax = axes[0]
        colors = [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 8, 9)]
        markers = "osD^vP*X"
        for j, f in enumerate(families):
            sel = d == j
            ax.scatter(p[sel] + rng.uniform(-0.08, 0.08, sel.sum()), n[sel], s=12, color=colors[j % 8],
                       marker=markers[j % 8], alpha=0.6, label=f"{f} ({RULE_FAMILIES.get(f, '?')})")
        ax.set_title("n_i against p_i; colour and marker: the family (right)", fontsize=10)
        right = axes[1]
        for j, f in enumerate(families):
            sel = n[d == j]
            if not sel.size:
                continue
            right.scatter(j + rng.uniform(-0.25, 0.25, sel.size), sel, s=10, color=colors[j % 8], marker=markers[j % 8],
                          alpha=0.45)
            right.scatter([j], [sel.mean()], marker="D", s=60, color="black", zorder=3)
            right.annotate(f"{100 * np.mean(sel == 0):.0f}% at 0\nmean {sel.mean():.1f}", (j, max(n.max(), 1) * 1.02),
                           ha="center", va="bottom", fontsize=9)
        right.axhline(uniform, color="black", ls="--", lw=1)
        right.set_xticks(range(len(families)))
        right.set_xticklabels([f"{f}\n{RULE_FAMILIES.get(f, '?')}" for f in families], fontsize=9)
        right.set_ylim(-2, max(n.max(), 1) * 1.22)
        right.set_ylabel("allocated samples n_i")
        right.set_title("per family: every prompt-visit's n_i, its mean (diamond), the share at 0", fontsize=10)
        right.grid(alpha=0.3, axis="y")
    ax = axes[0]
    for v in np.unique(p):
        ax.plot([v - 0.1, v + 0.1], [n[p == v].mean()] * 2, color="black", lw=2)
    ax.axhline(uniform, color="black", ls="--", lw=1, label=None)
    ax.text(0.01, uniform, f"uniform: {uniform}", va="bottom", fontsize=9, transform=ax.get_yaxis_transform())
    ax.set_xticks(np.unique(p))
    ax.set_xlabel("pilot acceptance rate p_i (N' = 4 pilots; black bar: mean n_i)")
    ax.set_ylabel("allocated samples n_i")
    ax.grid(alpha=0.3)
    fig.suptitle(title or "Proposition-1 allocation of one GVM run: every prompt of every iteration", fontsize=11)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
