"""Where per-prompt allocation pays: a pre-registered study across tasks, warm starts and seeds.

    python bench/allocation_study.py --tune          # gvm_robust's settings, chosen on the demo task only
    python bench/allocation_study.py                 # the study: every task x warm start x seed x rule
    python bench/allocation_study.py --map           # the practitioner's map on the rule task
    python bench/allocation_study.py --paper         # the paper's update count, reproduced on the demo task
    python bench/allocation_study.py --ablate        # gvm_robust with one part taken out at a time (demo task)
    python bench/allocation_study.py --smoke         # under a minute (CI): one tiny cell of each part

Every arm of a task starts from the same warm start and is stopped at the same number of generated
tokens, every sample that shapes an allocation counted (pilots included). For each task and rule:
final test accuracy (mean and standard error over the (warm start, seed) pairs), the *paired*
difference against uniform on the same warm start and seed (the statistic that decides), the tokens at
which the rule's mean curve reaches uniform's final accuracy, and the estimation cost's share of tokens
and of training wall time. RAFT++ and GRPO.

Rules (``RULES``): ``uniform``; ``gvm`` (the paper: Proposition 1 on a fresh N' = 4 pilot);
``gvm_robust`` (Proposition 1 with a floor and a cap on a per-prompt Beta posterior fed by every sample
seen, no pilot for a seen prompt, pilots trained on; its settings are :data:`PREREGISTERED`, chosen with
``--tune`` on the demo task before any other task was run); ``knapsack+history`` (Knapsack-RL's value
with earlier epochs' estimates); ``filter_extremes`` (DAPO-style: pilot, then drop all-right and
all-wrong prompts).

Tasks (``TASKS``): ``rules`` (the demo's task; the tuning task), ``chains`` (the previous demo's
one-digit chains), ``rules-extremes`` (the rule task with 6 of 8 families near-solved or unsolvable
at the start: a held-out warm start family), ``rules-flat`` and ``rules-within`` (fresh held-out tasks),
``synthetic`` (the exact latent-CoT models of the regime map, Lemma-1 M-steps for every rule, uniform
also under the token mean and 1/|D_i|, loss at equal samples with the pilots counted) and ``smollm2``
(the real-model study's SmolLM2-135M runs, read from ``bench/results/realmodel_study.json``). Warm starts
are SFT seeds (synthetic: model seeds); seed 0 of ``rules`` is the demo's shipped warm start.

Writes ``bench/results/allocation_study.{json,md,png}`` (``--tune``: ``allocation_study_tuning.*``;
``--map``: ``allocation_map.*``; ``--paper``: ``paper_updates.*``; ``--ablate``: ``allocation_ablation.*``). Run directories go to
``runs/allocation_study``; everything resumes (finished runs are skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace as dc_replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import git_commit  # noqa: E402
from gvm_mini import demo  # noqa: E402
from gvm_mini.atomic import atomic_savefig, atomic_write_text  # noqa: E402
from gvm_mini.plots import read_jsonl  # noqa: E402

RESULTS = ROOT / "bench" / "results"

#: gvm_robust's settings, chosen on the demo task with --tune (see allocation_study.md, "Pre-registration")
PREREGISTERED = {"robust_floor": 2, "robust_cap_factor": 2.0, "prompt_weighting": "prompt"}
#: the commit that fixed :data:`PREREGISTERED`, before any held-out task was run
PREREGISTRATION_COMMIT = "0f3e706"

#: the gvm_robust arm: the rule, its estimates and its pilot policy (parts kept as options for ablations)
ROBUST = {"estimator": "robust", "pilot": "history_reuse"}

#: (label, allocation, options) of the study's rules. Each rule runs with the settings its name resolves
#: to (gvm_mini.config.RULE_PRESETS: ``gvm_robust`` alone is ROBUST + PREREGISTERED, ``knapsack`` takes
#: ``pilot: history``), so the study runs what a user who names the rule gets. ``uniform`` (token-mean
#: M-step, the official code's) and ``uniform-prompt`` (Algorithm 1's 1/|D_i|) are the baselines: each
#: rule is paired with the uniform arm of its own M-step weighting (:func:`baseline_of`).
RULES = [
    ("uniform", "uniform", {}),
    ("uniform-prompt", "uniform", {"prompt_weighting": "prompt"}),
    ("gvm", "gvm", {}),
    ("gvm_robust", "gvm_robust", {}),
    ("knapsack+history", "knapsack", {}),
    ("filter_extremes", "filter_extremes", {}),
]

#: the uniform arm with each M-step weighting. Under uniform allocation Lemma 1's 1/(n_i p_i), with p_i
#: the batch's own |D_i| / n_i, is 1/|D_i|: the prompt weighting (gvm_mini.losses.prompt_weights).
UNIFORM_OF = {"tokens": "uniform", "prompt": "uniform-prompt", "lemma1": "uniform-prompt"}


def weighting_of(allocation: str, opts: dict) -> str:
    """The M-step weighting a rule runs with: its options resolved as a config resolves them."""
    from gvm_mini.config import Config

    return Config(allocation=allocation, **{k: v for k, v in opts.items() if k in ("prompt_weighting",)}).prompt_weighting


def baseline_of(label: str, rules=None) -> str:
    """The label of the uniform arm that ``label`` is paired with: the one with the same M-step weighting."""
    for lab, allocation, opts in (rules or RULES):
        if lab == label:
            return UNIFORM_OF[weighting_of(allocation, opts)]
    raise KeyError(label)

ALGORITHMS = {"RAFT++": "raftpp", "GRPO": "grpo"}

#: the rule task with 6 of its 8 families at the extremes: A, B, C near-solved, F, G, H never written
EXTREME_SHARES = (("A", 0.97), ("B", 0.97), ("C", 0.97), ("D", 0.3), ("E", 0.15), ("F", 0.0), ("G", 0.0), ("H", 0.0))

#: held-out task 5 (designed and committed before any run of it): no family at an extreme at the start,
#: every family's pass rate between about 0.25 and 0.6 (H's procedure, mul, is written only for H)
FLAT_SHARES = (("A", 0.6), ("B", 0.55), ("C", 0.5), ("D", 0.45), ("E", 0.4), ("F", 0.35), ("G", 0.3), ("H", 0.3))
#: held-out task 6: difficulty varies *within* each family. The warm start writes a family's procedure with
#: the first share on prompts with a > b and the second on a < b, so half of each family's prompts are much
#: harder than the other half (the family's mean alone no longer says how hard a prompt is)
WITHIN_SHARES = (("A", (0.6, 0.99)), ("B", (0.2, 0.9)), ("C", (0.05, 0.7)), ("D", (0.0, 0.5)), ("E", (0.0, 0.3)),
                 ("F", (0.02, 0.2)), ("G", (0.0, 0.1)), ("H", (0.0, 0.0)))

TASKS = {
    "rules": {"demo_task": "rules", "sft": lambda w: dc_replace(demo.RuleSFT(), seed=w), "budget": demo.BUDGET},
    "chains": {"demo_task": "chains", "sft": lambda w: dc_replace(demo.SFT(), seed=w), "budget": 150_000},
    "rules-extremes": {"demo_task": "rules", "sft": lambda w: dc_replace(demo.RuleSFT(), seed=w, shares=EXTREME_SHARES),
                       "budget": demo.BUDGET},
    "rules-flat": {"demo_task": "rules", "sft": lambda w: dc_replace(demo.RuleSFT(), seed=w, shares=FLAT_SHARES),
                   "budget": demo.BUDGET},
    "rules-within": {"demo_task": "rules", "sft": lambda w: dc_replace(demo.RuleSFT(), seed=w, shares=WITHIN_SHARES),
                     "budget": demo.BUDGET},
}

#: tasks first run after the one-factor pairs and the corrected gvm_robust (commit with their design); the
#: others were run before and are re-run with them
FRESH_TASKS = ("rules-flat", "rules-within")

#: the map: (a) how many of the 8 families start at an extreme, (b) how many epochs the budget covers
MAP_EXTREMES = {
    "2/8": demo.RuleSFT().shares,
    # A, B near-solved and G, H never written; C-F keep the demo's shares
    "4/8": (("A", 0.97), ("B", 0.97), ("C", 0.4), ("D", 0.2), ("E", 0.12), ("F", 0.08), ("G", 0.0), ("H", 0.0)),
    "6/8": EXTREME_SHARES,
}
#: (config overrides, generated tokens): all 296 training prompts or the first 64, at the study's budget
#: (uniform visits about 1,100 prompts in it: 3.7 passes over 296, 17 over 64), or at 36,000 tokens, where
#: uniform's budget ends before it has seen every prompt once (one pass over fresh prompts: no prompt is
#: revisited, so history and estimates from earlier visits cannot help). The keys are the first map's labels.
MAP_EPOCHS = {"1 pass": ({}, 36_000), "~2 epochs": ({}, demo.BUDGET), "~12 epochs": ({"train_size": 64}, demo.BUDGET)}


def passes(mechanism: dict | None, runs: int, prompts: int) -> float | None:
    """How many times a rule's runs went over their training prompts on average: prompt-visits (summed
    over :func:`_mechanism`'s families) / (runs x prompts). None without allocation records."""
    if not mechanism or not runs:
        return None
    return sum(v["visits"] for v in mechanism.values()) / (runs * prompts)


def _commit() -> str:
    return git_commit() or "unknown"


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------


def _jobs(out: Path, task: str, warm: list[int], seeds: list[int], rules, algorithms, *, budget: int, extra: dict,
          cache: Path, sft_of=None, smoke: bool = False) -> list[tuple]:
    spec = TASKS[task]
    jobs = []
    for w in warm:
        sft = (sft_of or spec["sft"])(w)
        if smoke:
            sft = dc_replace(sft, steps=30)
        model_dir = demo.warm_start(cache, sft, progress=False)
        for s in seeds:
            for alg_label, alg in algorithms.items():
                for label, allocation, opts in rules:
                    run = f"{label}-{alg_label}-w{w}-s{s}"
                    jobs.append((model_dir, run, alg, allocation, s, False, spec["demo_task"], out / run,
                                 {**opts, **extra, "token_budget": budget}))
    return jobs


def _curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    recs = read_jsonl(run_dir / "metrics.jsonl")
    evals = [r for r in recs if r["kind"] == "eval"]
    return np.array([e["tokens"] for e in evals], float), np.array([e["avg_at_k"] for e in evals], float), recs[-1]


def _summarise(out: Path, rules, algorithms, warm, seeds, budget: int, run_dir=None) -> dict:
    """Per algorithm and rule: final accuracy at ``budget`` tokens, paired differences against uniform
    (token-mean M-step; ``paired_diff``) and against the uniform arm with the rule's own M-step weighting
    (``vs_uniform_same_weighting``), on the same (warm start, seed); tokens to reach that baseline's
    final accuracy with a bootstrap interval over the pairs; estimation cost. Standard errors are
    clustered by warm start (the seeds of one warm start share a model: their differences are averaged
    first) when there are several warm starts. ``run_dir(label, alg_label, w, s)`` names a run's
    directory (default: the study's own runs)."""
    run_dir = run_dir or (lambda label, alg_label, w, s: out / f"{label}-{alg_label}-w{w}-s{s}")
    res = {}
    grid = np.linspace(0, budget, 151)
    labels = [lab for lab, _, _ in rules]
    for alg_label in algorithms:
        rows, curves = {}, {}
        for label, allocation, opts in rules:
            finals, cs, pilot_share, sample_pilot_share, wall_share, samples = [], [], [], [], [], []
            for w in warm:
                for s in seeds:
                    x, y, last = _curve(run_dir(label, alg_label, w, s))
                    finals.append(float(np.interp(budget, x, y)))
                    cs.append(np.interp(grid, x, y))
                    pilot_share.append(last["pilot_tokens"] / max(last["tokens"], 1))
                    sample_pilot_share.append(last.get("pilot_samples", 0) / max(last.get("samples", 0), 1))
                    samples.append(last.get("samples", 0))
                    wall = last["wall"]
                    train = sum(v for k, v in wall.items() if k not in ("eval", "checkpoint"))
                    wall_share.append((wall["pilot"] + wall["gradnorm"] + wall["allocate"]) / max(train, 1e-9))
            rows[label] = {"finals": finals, "start": float(np.mean([c[0] for c in cs])),
                           "weighting": weighting_of(allocation, opts),
                           "mechanism": _mechanism([run_dir(label, alg_label, w, s) for w in warm for s in seeds]),
                           "pilot_token_share": float(np.mean(pilot_share)),
                           "pilot_sample_share": float(np.mean(sample_pilot_share)), "samples": float(np.mean(samples)),
                           "estimation_wall_share": float(np.mean(wall_share))}
            curves[label] = np.array(cs)
        cluster = np.repeat(np.arange(len(warm)), len(seeds))
        for label, row in rows.items():
            f = np.array(row["finals"])
            row.update(final_mean=float(f.mean()), final_se=clustered_se(f, cluster))
            d = f - np.array(rows["uniform"]["finals"])
            row.update(paired_diff=float(d.mean()), paired_se=clustered_se(d, cluster))
            base = None if label in UNIFORM_OF.values() else baseline_of(label, rules)
            if base in rows:
                d = f - np.array(rows[base]["finals"])
                row["vs_uniform_same_weighting"] = {"baseline": base, "mean": float(d.mean()),
                                                    "se": clustered_se(d, cluster)}
                row.update(tokens_to_target(grid, curves[label], curves[base], cluster))
            row["curve"] = curves[label].mean(axis=0).tolist()
        if "uniform-prompt" in rows:
            wr = rows["uniform-prompt"]
            res_w = {"comparison": "uniform-prompt minus uniform (tokens): the M-step weighting alone",
                     "mean": wr["paired_diff"], "se": wr["paired_se"]}
        else:
            res_w = None
        res[alg_label] = rows
        res.setdefault("_weighting_only", {})[alg_label] = res_w
    weighting_only = res.pop("_weighting_only")
    return {"grid_tokens": grid.tolist(), "by_algorithm": res, "weighting_only": weighting_only,
            "labels": labels}


FAMILY_LETTERS = "ABCDEFGH"


def _mechanism(dirs) -> dict | None:
    """Where a rule puts its samples, per family (the rule tasks' ``difficulty`` is the family index),
    over every prompt-visit of the runs ``dirs`` (``allocations.jsonl``): the share of visits with
    ``n_i = 0``, the mean ``n_i`` and its standard deviation. None where no allocation was recorded."""
    by = {}
    for d in dirs:
        f = Path(d) / "allocations.jsonl"
        if not f.is_file():
            continue
        for rec in read_jsonl(f):
            for n, fam in zip(rec["n"], rec.get("difficulty") or []):
                if fam is not None:
                    by.setdefault(FAMILY_LETTERS[int(fam)] if int(fam) < len(FAMILY_LETTERS) else str(fam), []).append(n)
    if not by:
        return None
    return {fam: {"visits": len(v), "zero_share": float(np.mean(np.array(v) == 0)), "mean_n": float(np.mean(v)),
                  "sd_n": float(np.std(v))} for fam, v in sorted(by.items())}


def difficulty_labels(summary: dict) -> dict:
    """A task without families (chains: ``difficulty`` = operands x digits): the mechanism's keys, which
    :func:`_mechanism` writes as family letters by index, as "difficulty k" (in place; returns ``summary``)."""
    for rows in summary.get("by_algorithm", {}).values():
        for r in rows.values():
            m = r.get("mechanism")
            if m:
                r["mechanism"] = {
                    (f"difficulty {FAMILY_LETTERS.index(k) if k in FAMILY_LETTERS else int(k)}" if not k.startswith("difficulty") else k): v
                    for k, v in m.items()}
    return summary


def _mechanism_table(task: str, summary: dict) -> str:
    """Per family and rule: mean n_i, its spread, and the share of prompt-visits given n_i = 0 (RAFT++)."""
    rows = summary["by_algorithm"].get("RAFT++", {})
    mech = {lab: r["mechanism"] for lab, r in rows.items() if r.get("mechanism")}
    if not mech:
        return ""
    fams = sorted({f for m in mech.values() for f in m}, key=lambda f: (len(f), f))
    lines = [f"Where the samples go on {task} (RAFT++, every prompt-visit of every run): mean n_i ± its standard "
             "deviation, and in brackets the share of visits with n_i = 0.", "",
             "| rule | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
    for lab, m in mech.items():
        cells = [f"{m[f]['mean_n']:.1f} ± {m[f]['sd_n']:.1f} [{100 * m[f]['zero_share']:.0f}%]" if f in m else "" for f in fams]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _one_factor(summary: dict) -> bool:
    """Whether a task's summary pairs its rules with uniform under the same weighting (the re-run), not
    only with token-mean uniform (the first study)."""
    return any("vs_uniform_same_weighting" in r for rows in summary["by_algorithm"].values() for r in rows.values())


def _same_or_tokens(row: dict) -> tuple:
    """(difference, SE) against the uniform arm with the same M-step weighting where the row has it, else
    against token-mean uniform (the weighting-only arm, and rows summarised before the one-factor pairs)."""
    same = row.get("vs_uniform_same_weighting")
    return (same["mean"], same["se"]) if same else (row["paired_diff"], row["paired_se"])


def clustered_se(d: np.ndarray, cluster: np.ndarray) -> float | None:
    """SE of ``d``'s mean: over cluster means when there are several clusters (runs of one warm start
    share a model, so their seeds are not independent pairs), else over the runs. None for one value."""
    groups = np.unique(cluster)
    if groups.size > 1:
        means = np.array([d[cluster == g].mean() for g in groups])
        return float(means.std(ddof=1) / np.sqrt(groups.size))
    return float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None


def tokens_to_target(grid, rule_curves, base_curves, cluster, n_boot: int = 2000, seed: int = 0) -> dict:
    """Tokens at which the rule's mean curve first reaches the baseline's mean final accuracy, as a ratio
    to the baseline's own tokens to that level (below 1: the rule gets there with fewer tokens), with a
    95% bootstrap interval that resamples the (warm start, seed) pairs, clusters whole. A resample whose
    rule curve never reaches the target counts as ratio infinity (the interval's top is then 'not reached')."""
    def ratio(idx):
        target = float(base_curves[idx, -1].mean())
        r, b = _first_reach(grid, rule_curves[idx].mean(axis=0), target), _first_reach(grid, base_curves[idx].mean(axis=0), target)
        return (r / b) if (r is not None and b) else (np.inf if r is None else np.nan)

    all_idx = np.arange(len(cluster))
    point = ratio(all_idx)
    target = float(base_curves[:, -1].mean())
    reach = _first_reach(grid, rule_curves.mean(axis=0), target)
    groups = np.unique(cluster)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if len(all_idx) > 1 else 0):
        pick = rng.choice(groups, size=groups.size, replace=True) if groups.size > 1 else None
        idx = (np.concatenate([all_idx[cluster == g] for g in pick]) if pick is not None
               else rng.choice(all_idx, size=all_idx.size, replace=True))
        boots.append(ratio(idx))
    boots = np.array([b for b in boots if not np.isnan(b)])
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots.size else (None, None))
    fin = lambda v: None if v is None or not np.isfinite(v) else float(v)  # noqa: E731
    return {"tokens_to_uniform_final": reach, "token_ratio": fin(point),
            "token_ratio_ci95": [fin(lo), fin(hi)] if boots.size else None}


def _first_reach(grid: np.ndarray, curve: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(curve >= target - 1e-12)
    return float(grid[hit[0]]) if hit.size else None


# ---------------------------------------------------------------------------------------------
# the SmolLM2 task: bench/realmodel_study.py's runs, read here
# ---------------------------------------------------------------------------------------------


#: the study's rules as bench/realmodel_study.py's arms (RAFT++; each rule with the settings its name resolves
#: to, as here). The real-model study ran no ``filter_extremes`` arm.
REALMODEL_ARMS = {"uniform": "uniform-RAFT++", "uniform-prompt": "uniform-RAFT++-prompt", "gvm": "GVM-RAFT++",
                  "gvm_robust": "gvm_robust-RAFT++", "knapsack+history": "knapsack+history-RAFT++"}


def _smollm2(path: Path, rules=RULES) -> dict:
    """SmolLM2-135M-Instruct + LoRA on two-digit addition, RAFT++: the real-model study's runs
    (``bench/realmodel_study.py``, ~20 min each on one core), read from its stored results ``path``. One
    starting model (the released weights: there is no SFT seed to vary), paired by training seed, so SEs
    are over seeds. Each rule is paired with the uniform arm of its own M-step weighting, as on the other
    tasks; the tokens-to-target ratio and its interval are the real-model study's own."""
    if not path.exists():
        raise SystemExit(f"allocation_study: {path} not found; run `python bench/realmodel_study.py` first")
    rm = json.loads(path.read_text())
    arms = {lab: rm["arms"][REALMODEL_ARMS[lab]] for lab, _, _ in rules
            if lab in REALMODEL_ARMS and REALMODEL_ARMS[lab] in rm["arms"]}
    missing = [lab for lab in ("uniform", "uniform-prompt") if lab not in arms]
    if missing:
        raise SystemExit(f"allocation_study: {path} has no arm for {missing}: the pairs need both uniform arms")
    seeds = sorted(set.intersection(*(set(a["seeds"]) for a in arms.values())))
    cluster = np.zeros(len(seeds), dtype=int)  # one starting model: the seeds are the pairs
    rows = {}
    for label, arm in arms.items():
        acc = arm["accounting"]
        f = np.array([arm["final_acc_per_seed"][str(s)] for s in seeds])
        reach = arm.get("tokens_to_baseline_final") or {}
        rows[label] = {"finals": f.tolist(), "start": arm["start_acc"]["mean"], "weighting": arm["weighting"],
                       "final_mean": float(f.mean()), "final_se": clustered_se(f, cluster),
                       "pilot_token_share": acc["pilot_tokens"]["mean"] / acc["generated_tokens"]["mean"],
                       "pilot_sample_share": acc["pilot_samples"]["mean"] / acc["generated_samples"]["mean"],
                       "samples": acc["generated_samples"]["mean"], "m_steps": acc["m_steps"]["mean"]}
        if reach:
            rows[label].update(tokens_to_uniform_final=reach.get("tokens"), token_ratio=reach.get("ratio"),
                               token_ratio_ci95=reach.get("ratio_ci95"))
    for label, row in rows.items():
        f = np.array(row["finals"])
        d = f - np.array(rows["uniform"]["finals"])
        row.update(paired_diff=float(d.mean()), paired_se=clustered_se(d, cluster))
        if label not in UNIFORM_OF.values():
            base = baseline_of(label, rules)
            d = f - np.array(rows[base]["finals"])
            row["vs_uniform_same_weighting"] = {"baseline": base, "mean": float(d.mean()), "se": clustered_se(d, cluster)}
    w = rows["uniform-prompt"]
    design = rm["design"]
    return {"by_algorithm": {"RAFT++": rows},
            "weighting_only": {"RAFT++": {"comparison": "uniform-prompt minus uniform (tokens): the M-step weighting alone",
                                          "mean": w["paired_diff"], "se": w["paired_se"]}},
            "labels": list(rows), "not_run": [lab for lab, _, _ in rules if lab not in rows],
            "seeds": seeds, "budget_tokens": rm["budget_tokens"],
            "n_pairs": (f"1 starting model x {len(seeds)} seeds; Average@{design['eval_k']} on {design['eval_prompts']} "
                        f"held-out prompts at T = 1, top_p {design['top_p']}"),
            "runs_command": rm["command"], "runs_commit": rm["commit"], "runs_machine": rm.get("cpu", "?"),
            "provenance": f"the real-model study's runs ({rm['command']}, commit {rm['commit']}), read from "
                          f"bench/results/{path.name}"}


# ---------------------------------------------------------------------------------------------
# the synthetic task: exact models, Lemma-1 M-steps, loss at equal samples (pilots counted)
# ---------------------------------------------------------------------------------------------


SYNTH = dict(m=8, per_prompt=4, k=5, step=4.0, n_pilot=8, T=12)


def _robust_on_pilot(p, G, budget, **kw):
    """gvm_robust as the loop runs it, on the synthetic task's pilot: the robust estimates (Beta posterior,
    G shrunk to the pool, weighted by the accepted pilots) of the N' pilot counts ``k = p N'``, then the
    rule with its default floor and cap. (No history: every E-step pilots every prompt afresh.)"""
    from gvm_mini import allocation as A
    from gvm_mini import estimators as E

    n_p = SYNTH["n_pilot"]
    k = np.rint(np.asarray(p) * n_p)
    p_hat, G_hat = E.robust_estimates(k, np.full(k.size, n_p), G, G_count=k)
    return A.gvm_robust(p_hat, G_hat, budget, **{key: v for key, v in kw.items() if key in ("alpha", "beta")})


#: the synthetic task's uniform arms: one per M-step weighting (gvm_mini.synthetic.weighted_gradient); the
#: rules run Lemma 1's, so ``uniform`` (Lemma 1) is their same-weighting baseline and ``uniform-tokens``
#: (the official code's token mean) the baseline of the "vs token mean" column
SYNTH_UNIFORM = {"uniform": "lemma1", "uniform-prompt": "prompt", "uniform-tokens": "tokens"}


def _synthetic(warm: list[int], seeds: list[int], *, smoke: bool, rules=RULES) -> dict:
    """Each rule on ``make_model(seed=w, p_range=(0.005, 0.9))`` at the regime map's best cell (wide
    spread, eta = 4 gamma), its ``p_i``/``G_i`` estimated from N' = 8 pilots (counted) except uniform's;
    the runs are compared at equal samples drawn: uniform runs until the rule's sample count. Score:
    ``-L(theta)`` (higher is better), so differences read like the accuracy tasks'. The rules' M-step is
    Lemma 1's (the theorems'); uniform runs under each weighting (:data:`SYNTH_UNIFORM`), so each rule is
    paired with uniform under Lemma 1 (``vs_uniform_same_weighting``) and with token-mean uniform
    (``paired_diff``), and the weighting's own effect is uniform (Lemma 1) minus uniform-tokens. SEs are
    clustered by model (the seeds of one model share it)."""
    from gvm_mini import synthetic as S

    T = 2 if smoke else SYNTH["T"]
    out = {}
    arms = [(lab, "uniform", w) for lab, w in SYNTH_UNIFORM.items()]
    arms += [(lab, allocation, "lemma1") for lab, allocation, _ in rules if allocation != "uniform"]
    N = SYNTH["per_prompt"] * SYNTH["m"]
    # every pilot-based rule spends T E-steps of N k training samples and m N' pilots
    spent_rule = float(T * (N * SYNTH["k"] + SYNTH["n_pilot"] * SYNTH["m"]))
    for label, allocation, weighting in arms:
        finals, costs = [], []
        for w in warm:
            model = S.make_model(m=SYNTH["m"], seed=w, p_range=(0.005, 0.9))
            eta = SYNTH["step"] * S.gamma(model)
            for s in seeds:
                if allocation != "uniform":
                    rule = _robust_on_pilot if allocation == "gvm_robust" else allocation
                    tr = S.run_em(model, rule, N, T, SYNTH["k"], eta, s, n_pilot=SYNTH["n_pilot"], min_per_prompt=0)
                    spent = float(np.sum(tr.samples))
                    assert spent == spent_rule, (label, spent)
                    finals.append(-float(tr.loss[-1]))
                else:  # uniform read at exactly the samples the pilot-based rules spend (its E-steps are cheaper):
                    # N samples per M-step and no pilot, so its loss after S samples is at M-step S / N (interpolated)
                    spent = spent_rule
                    T_u = int(np.ceil(spent / (N * SYNTH["k"])))
                    tr = S.run_em(model, "uniform", N, T_u, SYNTH["k"], eta, s, weighting=weighting)
                    finals.append(-float(np.interp(spent, N * np.arange(tr.loss.size), tr.loss)))
                costs.append(spent)
        pilot = 0.0 if allocation == "uniform" else SYNTH["n_pilot"] * SYNTH["m"] / (SYNTH["n_pilot"] * SYNTH["m"] + N * SYNTH["k"])
        out[label] = {"finals": finals, "samples": float(np.mean(costs)), "pilot_sample_share": pilot,
                      "pilot_token_share": pilot, "weighting": weighting}  # one "token" per sample in the latent model
    cluster = np.repeat(np.arange(len(warm)), len(seeds))
    tokens = np.array(out["uniform-tokens"]["finals"])
    for label, row in out.items():
        f = np.array(row["finals"])
        d = f - tokens
        row.update(final_mean=float(f.mean()), final_se=clustered_se(f, cluster),
                   paired_diff=float(d.mean()), paired_se=clustered_se(d, cluster))
        if label not in SYNTH_UNIFORM:  # every rule runs Lemma 1's M-step: uniform (Lemma 1) is its baseline
            d = f - np.array(out["uniform"]["finals"])
            row["vs_uniform_same_weighting"] = {"baseline": "uniform", "mean": float(d.mean()),
                                                "se": clustered_se(d, cluster)}
    w = out["uniform"]
    weighting_only = {"comparison": "uniform (Lemma 1's 1/(n_i p_i)) minus uniform-tokens: the M-step weighting alone",
                      "mean": w["paired_diff"], "se": w["paired_se"]}
    return {"metric": "-L(theta) at equal samples (pilots counted)", "models": list(warm), "seeds": list(seeds),
            "n_pairs": f"{len(warm)} models x {len(seeds)} seeds", "by_algorithm": {"Lemma-1 SGD": out},
            "weighting_only": {"Lemma-1 SGD": weighting_only}}


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------


def _fmt(v, se=None, sign=False) -> str:
    if v is None:
        return "n/a"
    s = f"{v:+.3f}" if sign else f"{v:.3f}"
    return s + (f" ± {se:.3f}" if se is not None else "")


def _table(task: str, summary: dict, n_pairs: str) -> str:
    lines = [f"### {task} ({n_pairs})", ""]
    if summary.get("runs_command"):
        lines += [f"Runs: `{summary['runs_command']}`"
                  + (f" at commit {summary['runs_commit']}" if summary.get("runs_commit") else "")
                  + f" ({summary.get('runs_machine', summary['machine'])}), read by `{summary['command']}` at commit "
                  f"{summary['commit']}." + (f" Not run there: {', '.join(summary['not_run'])}." if summary.get("not_run") else ""), ""]
    elif summary.get("command"):
        lines += [f"Run by `{summary['command']}` at commit {summary.get('commit', '?')} ({summary.get('machine', '?')})."
                  + (f" Provenance: {summary['provenance']}." if summary.get("provenance") else ""), ""]
    if not _one_factor(summary):  # a task summarised before the one-factor pairs existed: its old columns
        lines += ["Summarised before the study paired each rule with the uniform arm of its own M-step weighting: "
                  "the difference below is against uniform with the token-mean M-step, whatever the rule's weighting.", ""]
    lines += [
             "| algorithm | rule | M-step weighting | final acc (mean ± SE) | vs uniform, same weighting (± SE) | vs uniform, token mean (± SE) | tokens to that baseline's final: ratio [95% CI] | pilot share of samples / tokens | estimation share of train wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for alg, rows in summary["by_algorithm"].items():
        base = rows.get("uniform", {})
        learned = base.get("final_mean", 1.0) - base.get("start", 0.0) >= demo.MIN_GAIN
        for label, r in rows.items():
            same = r.get("vs_uniform_same_weighting")
            same_s = "—" if same is None else f"{_fmt(same['mean'], same['se'], sign=True)} (vs {same['baseline']})"
            ratio, ci = r.get("token_ratio"), r.get("token_ratio_ci95")
            if same is None or "token_ratio" not in r:
                reach_s = "—"
            elif not learned:
                reach_s = f"n/a (uniform gained < {demo.MIN_GAIN})"
            elif r.get("tokens_to_uniform_final") is None:
                reach_s = "not reached"
            else:
                reach_s = f"{ratio:.2f}x" if ratio is not None else "n/a"
                if ci:
                    reach_s += " [" + ", ".join("not reached" if v is None else f"{v:.2f}" for v in ci) + "]"
            token_base = label == "uniform-tokens" or (label == "uniform" and r.get("weighting", "tokens") == "tokens")
            tok = "—" if token_base else _fmt(r["paired_diff"], r["paired_se"], sign=True)
            est = r.get("estimation_wall_share")
            lines.append(f"| {alg} | {label} | {r.get('weighting', 'tokens')} | {_fmt(r['final_mean'], r['final_se'])} | "
                         f"{same_s} | {tok} | {reach_s} | "
                         f"{100 * r.get('pilot_sample_share', 0):.0f}% / {100 * r.get('pilot_token_share', 0):.0f}% | "
                         + ("n/a" if est is None else f"{100 * est:.0f}%") + " |")
    for alg, w in (summary.get("weighting_only") or {}).items():
        if w:
            lemma1 = w.get("comparison", "").startswith("uniform (Lemma 1")
            lines.append(f"| {alg} | **weighting only** ({'uniform − uniform-tokens' if lemma1 else 'uniform-prompt − uniform'}) | "
                         f"{'lemma1' if lemma1 else 'prompt'} vs tokens | | | {_fmt(w['mean'], w['se'], sign=True)} | | | |")
    return "\n".join(lines)


def _figure(results: dict, path: Path, title: str) -> None:
    """One panel per task: each rule's paired difference against uniform (± SE), RAFT++ and GRPO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the tasks with one-factor pairs (the others are the first study's, in allocation_study_v1.png)
    tasks = [t for t in results["tasks"] if _one_factor(results["tasks"][t])] or list(results["tasks"])
    ncols = min(3, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows + 0.6), squeeze=False, sharey=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    colors = {"RAFT++": "tab:blue", "GRPO": "tab:orange", "Lemma-1 SGD": "tab:purple"}
    for ax, task in zip(axes.flat, tasks):
        by = results["tasks"][task]["by_algorithm"]
        labels = [lab for lab, _, _ in RULES if lab != "uniform" and all(lab in rows for rows in by.values())]

        wo = results["tasks"][task].get("weighting_only") or {}
        lemma1 = any(w and w.get("comparison", "").startswith("uniform (Lemma 1") for w in wo.values())

        def diff(alg, lab, rows=None):
            """The one-factor pair where the task has it; the weighting-only row is the task's own."""
            if lab == "uniform-prompt" and wo.get(alg):
                return wo[alg]["mean"], wo[alg]["se"]
            return _same_or_tokens(rows[lab])

        for j, (alg, rows) in enumerate(by.items()):
            y = np.arange(len(labels)) + (j - (len(by) - 1) / 2) * 0.25
            d = [diff(alg, lab, rows) for lab in labels]
            ax.errorbar([v for v, _ in d], y, xerr=[se or 0 for _, se in d], fmt="o", color=colors.get(alg, "k"),
                        capsize=3, label=alg)
        ax.axvline(0, color="gray", lw=1)
        wlab = "weighting only\n(Lemma 1's − tokens)" if lemma1 else "weighting only\n(uniform-prompt)"
        ax.set_yticks(np.arange(len(labels)), [(wlab if lab == "uniform-prompt" else lab) for lab in labels])
        ax.invert_yaxis()
        ax.set_xlabel("rule − uniform with the same M-step weighting\n("
                      + ("-L(θ)" if task == "synthetic" else "test accuracy") + "; right = better)", fontsize=9)
        ax.set_title(task + (" (tuning task, re-run)" if task == "rules" else " (fresh held-out task)" if task in FRESH_TASKS
                             else f" (real-model study, {len(results['tasks'][task]['seeds'])} seeds; "
                             + ", ".join(results["tasks"][task].get("not_run", [])) + " not run)" if task == "smollm2" else " (re-run)"), fontsize=10)
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        ax.grid(alpha=0.3, axis="x")
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=9, frameon=False)
    import textwrap

    fig.suptitle(textwrap.fill(title, width=62 * ncols), fontsize=10)
    fig.tight_layout(rect=(0, 0.05 if nrows > 1 else 0.07, 1, 1))
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the parts
# ---------------------------------------------------------------------------------------------


def _run_task(out: Path, task: str, warm, seeds, rules, algorithms, *, budget, extra, cache, workers, smoke, sft_of=None):
    jobs = _jobs(out, task, warm, seeds, rules, algorithms, budget=budget, extra=extra, cache=cache, sft_of=sft_of, smoke=smoke)
    print(f"{task}: {len(jobs)} runs of {budget:,} generated tokens", flush=True)
    demo.run_jobs(out, jobs, budget, max(1, min(workers, len(jobs))))
    return _summarise(out, rules, algorithms, warm, seeds, budget)


def study(args, out: Path, cache: Path) -> dict:
    warm, seeds = ([0], [0]) if args.smoke else (list(range(args.warm_starts)), list(range(args.seeds)))
    tasks = args.tasks.split(",") if args.tasks else (["rules", "synthetic"] if args.smoke else list(TASKS) + ["synthetic", "smollm2"])
    results = {"command": "python bench/allocation_study.py " + " ".join(sys.argv[1:]), "commit": _commit(), "preregistered": PREREGISTERED, "preregistration_commit": PREREGISTRATION_COMMIT, "rules": {lab: {"allocation": a, **o} for lab, a, o in RULES},
               "warm_starts": warm, "seeds": seeds, "machine": demo.report.machine(), "tasks": {}}
    prior = RESULTS / "allocation_study.json"
    if prior.exists() and not args.smoke:  # tasks run earlier (each task is run once and kept)
        kept = json.loads(prior.read_text())
        if args.tasks:  # adding tasks to the study: its header (command, commit, warm starts) stays the first run's
            results.update({k: kept[k] for k in ("command", "commit", "warm_starts", "seeds", "machine") if k in kept})
        results["tasks"].update(kept.get("tasks", {}))
    rules = RULES if not args.smoke else [r for r in RULES if r[0] in ("uniform", "uniform-prompt", "gvm_robust")]
    algorithms = ALGORITHMS if not args.smoke else {"RAFT++": "raftpp"}
    start_commit = _commit()  # the code the runs execute is the code at their start
    for task in tasks:
        t0 = time.perf_counter()
        if task == "smollm2":
            summary = _smollm2(args.realmodel_study)
        elif task == "synthetic":
            summary = _synthetic(list(range(3)) if not args.smoke else [0], list(range(4)) if not args.smoke else [0, 1],
                                 smoke=args.smoke, rules=rules)
        else:
            extra = {"test_size": 16, "prompts_per_step": 8} if args.smoke else {}
            budget = 4_000 if args.smoke else TASKS[task]["budget"]
            summary = _run_task(out / task, task, warm, seeds, rules, algorithms, budget=budget, extra=extra,
                                cache=cache, workers=args.workers, smoke=args.smoke)
            if TASKS[task]["demo_task"] != "rules":  # no families: per difficulty level
                difficulty_labels(summary)
        summary["wall_seconds"] = time.perf_counter() - t0
        summary["commit"] = start_commit
        summary["machine"] = demo.report.machine()
        summary["command"] = "python bench/allocation_study.py " + " ".join(sys.argv[1:])
        if task not in ("synthetic", "smollm2"):
            summary.update(warm_starts=warm, seeds=seeds, n_pairs=f"{len(warm)} warm starts x {len(seeds)} seed"
                           + ("s" if len(seeds) != 1 else ""))
        if task in FRESH_TASKS:
            summary["held_out"] = "fresh: designed and committed (cb57479) before its first run"
        elif task == "smollm2":
            summary["held_out"] = ("the real-model study: its settings chosen on its own tuning split "
                                   "(realmodel_study_tuning.md), then run once")
        else:
            summary["held_out"] = "re-run with the one-factor pairs and the corrected gvm_robust"
        results["tasks"][task] = summary
        _write(results, args, "allocation_study", STUDY_TITLE)
    return results


STUDY_TITLE = ("Each rule minus uniform with the same M-step weighting, at equal generated tokens (pilots counted), "
               "mean ± SE over (warm start, seed); 'weighting only' is uniform-prompt minus uniform "
               "(synthetic: uniform with Lemma 1's weighting minus uniform with the token mean)")


def _pairs_label(summary: dict, n_warm: int) -> str:
    """'3 warm starts x 2 seeds', read from the task's own runs (a task may have more seeds than the header's)."""
    finals = len(next(iter(next(iter(summary["by_algorithm"].values())).values()))["finals"])
    seeds = finals // max(n_warm, 1)
    return f"{n_warm} warm starts x {seeds} seed{'s' if seeds != 1 else ''}"


def _write(results: dict, args, name: str, title: str) -> None:
    dest = (Path(args.out) if args.smoke else RESULTS)
    dest.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(results))
    for t in slim["tasks"].values():
        for rows in t.get("by_algorithm", {}).values():
            for r in rows.values():
                r.pop("curve", None)
    atomic_write_text(dest / f"{name}.json", json.dumps(slim, indent=1))
    command = results.get("command", "python bench/allocation_study.py " + " ".join(sys.argv[1:]))
    md = [f"# {title}", "", (f"`{command}` (commit {results['commit']}; {results['machine']})." if name != "allocation_study"
                             else "Each task names the command and commit that ran it."), ""]
    if name == "allocation_study":
        md += ["Columns: final test accuracy (Average@4 at T = 1; synthetic: -L(θ)) read on each run's curve at the "
               "budget. Each rule is paired (same warm start and seed) with the uniform arm that runs the *same* M-step "
               "weighting (`uniform`: the official code's token mean; `uniform-prompt`: Algorithm 1's 1/|D_i|), so the "
               "difference is the allocation's alone; the difference against token-mean uniform is beside it, and the "
               "'weighting only' row is uniform-prompt minus uniform (synthetic: every rule runs Lemma 1's 1/(n_i p_i), "
               "uniform runs under all three weightings, and the row is Lemma 1's minus the token mean). SEs are "
               "clustered by warm start (synthetic: by model; smollm2: one start, over seeds). Token ratio: the "
               "tokens at which the rule's mean curve first reaches its baseline's final accuracy, divided by the "
               "baseline's own (below 1: fewer tokens; the goal is 2/3), with a 95% bootstrap interval over the "
               "(warm start, seed) pairs; n/a when uniform itself gained less than 0.05 over its start. Pilot share: "
               "pilot samples / all samples and pilot tokens / all tokens (gvm_robust trains on its pilots, so its share "
               "is not all overhead); estimation share = pilot + gradient-norm + allocation wall time / training wall "
               "time.", ""]
        md += ["## Pre-registration", "", f"gvm_robust's settings were chosen on the demo task (`--tune`) and fixed "
               f"before any other task was run: `{json.dumps(PREREGISTERED)}` with `{json.dumps(ROBUST)}` "
               f"(committed in {results.get('preregistration_commit', PREREGISTRATION_COMMIT)}; the grid is in allocation_study_tuning.md).", ""]
    for task, summary in results["tasks"].items():
        n = summary.get("n_pairs") or (_pairs_label(summary, len(results["warm_starts"]))
                                       if task != "synthetic" else "3 models x 4 seeds")
        tag = (" — fresh held-out task, first run" if task in FRESH_TASKS else " — tuning task, re-run" if task == "rules"
               else " — the real-model study" if task == "smollm2" and _one_factor(summary)
               else " — re-run" if _one_factor(summary) else " — run in the first study")
        md += [_table(task + tag, summary, n), ""]
        mech = _mechanism_table(task, summary) if name == "allocation_study" else ""
        if mech:
            md += [mech, ""]
    atomic_write_text(dest / f"{name}.md", "\n".join(md) + "\n")
    _figure(results, dest / f"{name}.png", title)


def tune(args, out: Path, cache: Path) -> dict:
    """gvm_robust's settings on the demo task alone: floor x cap x M-step weighting, RAFT++, against uniform."""
    warm, seeds = ([0], [0]) if args.smoke else (list(range(args.warm_starts)), [0])
    grid = [("uniform", "uniform", {})]
    for floor in (1, 2):
        for cap in (2.0, 4.0):
            for weighting in ("tokens", "prompt"):
                grid.append((f"robust-f{floor}-c{cap:g}-{weighting}", "gvm_robust",
                             {**ROBUST, "robust_floor": floor, "robust_cap_factor": cap, "prompt_weighting": weighting}))
    if args.smoke:
        grid = grid[:2]
    budget = 4_000 if args.smoke else demo.BUDGET
    extra = {"test_size": 16, "prompts_per_step": 8} if args.smoke else {}
    summary = _run_task(out / "tune", "rules", warm, seeds, grid, {"RAFT++": "raftpp"}, budget=budget, extra=extra,
                        cache=cache, workers=args.workers, smoke=args.smoke)
    results = {"commit": _commit(), "warm_starts": warm, "seeds": seeds, "machine": demo.report.machine(),
               "grid": {lab: o for lab, _, o in grid}, "tasks": {"rules (tuning)": summary}}
    dest = Path(args.out) if args.smoke else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    rows = summary["by_algorithm"]["RAFT++"]
    best = max((lab for lab in rows if lab != "uniform"), key=lambda lab: rows[lab]["paired_diff"])
    results["best"] = best
    md = [f"# gvm_robust tuning on the demo task (`python bench/allocation_study.py --tune`, commit {results['commit']})", "",
          f"RAFT++, {len(warm)} warm starts x {len(seeds)} seed, {budget:,} tokens; best by paired difference: **{best}**.",
          "", _table("rules (tuning)", summary, f"{len(warm)} warm starts x {len(seeds)} seed")]
    atomic_write_text(dest / "allocation_study_tuning.md", "\n".join(md) + "\n")
    slim = json.loads(json.dumps(results))
    for r in slim["tasks"]["rules (tuning)"]["by_algorithm"]["RAFT++"].values():
        r.pop("curve", None)
    atomic_write_text(dest / "allocation_study_tuning.json", json.dumps(slim, indent=1))
    print("\n".join(md))
    return results


def paper(args, out: Path, cache: Path) -> dict:
    """The paper's comparison on the demo task: uniform (fair updates), paper GVM (fair), paper GVM with
    the official fork's update count (mini_batch_unit: fork), and uniform given as many updates as that
    arm (its mini-batch shrunk by the same factor), at equal M-steps and at equal tokens."""
    warm, seeds = ([0], [0]) if args.smoke else ([0], list(range(args.seeds + 1)))
    mb = 32
    arms = [("uniform", "uniform", {}), ("gvm", "gvm", {}), ("gvm-fork-updates", "gvm", {"mini_batch_unit": "fork"}),
            ("uniform-same-updates", "uniform", {"mini_batch_size": mb // 8})]
    if args.smoke:
        arms = arms[:3]
    budget = 4_000 if args.smoke else demo.BUDGET
    extra = {"test_size": 16, "prompts_per_step": 8} if args.smoke else {}
    algorithms = {"RAFT++": "raftpp"} if args.smoke else ALGORITHMS
    summary = _run_task(out / "paper", "rules", warm, seeds, arms, algorithms, budget=budget, extra=extra, cache=cache,
                        workers=args.workers, smoke=args.smoke)
    # equal M-steps: accuracy at the fewest M-steps any arm made, per algorithm
    for alg_label, rows in summary["by_algorithm"].items():
        steps = {}
        for label, _, _ in arms:
            per = []
            for w in warm:
                for s in seeds:
                    evals = [r for r in read_jsonl(out / "paper" / f"{label}-{alg_label}-w{w}-s{s}" / "metrics.jsonl") if r["kind"] == "eval"]
                    per.append(evals)
            steps[label] = per
        m_star = min(ev[-1]["global_step"] for per in steps.values() for ev in per)
        for label, per in steps.items():
            acc = [float(np.interp(m_star, [e["global_step"] for e in ev], [e["avg_at_k"] for e in ev])) for ev in per]
            rows[label]["acc_at_equal_m_steps"] = float(np.mean(acc))
            rows[label]["acc_at_equal_m_steps_se"] = float(np.std(acc, ddof=1) / np.sqrt(len(acc))) if len(acc) > 1 else None
            per_run = []  # records carry the cumulative count: optimizer updates / M-steps of the whole run
            for w in warm:
                for s in seeds:
                    steps_ = [r for r in read_jsonl(out / "paper" / f"{label}-{alg_label}-w{w}-s{s}" / "metrics.jsonl") if r["kind"] == "step"]
                    per_run.append(steps_[-1]["updates"] / steps_[-1]["global_step"])
            rows[label]["updates_per_m_step"] = float(np.mean(per_run))
        summary["by_algorithm"][alg_label]["_equal_m_steps"] = m_star
    results = {"commit": _commit(), "warm_starts": warm, "seeds": seeds, "machine": demo.report.machine(), "summary": summary}
    dest = Path(args.out) if args.smoke else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    md = [f"# The paper's update count on the demo task (`python bench/allocation_study.py --paper`, commit {results['commit']})", "",
          f"{len(warm)} warm start x {len(seeds)} seeds, {budget:,} tokens; mean ± SE over seeds; paired differences against uniform.", "",
          "| algorithm | arm | updates per M-step | acc at equal M-steps | final acc at equal tokens | paired diff vs uniform (tokens) |",
          "|---|---|---|---|---|---|"]
    for alg_label, rows in summary["by_algorithm"].items():
        m_star = rows.pop("_equal_m_steps")
        for label, r in rows.items():
            md.append(f"| {alg_label} | {label} | {r['updates_per_m_step']:.1f} | {_fmt(r['acc_at_equal_m_steps'], r['acc_at_equal_m_steps_se'])} "
                      f"(at {m_star:.0f}) | {_fmt(r['final_mean'], r['final_se'])} | "
                      f"{'—' if label == 'uniform' else _fmt(r['paired_diff'], r['paired_se'], sign=True)} |")
        for r in rows.values():
            r.pop("curve", None)
    atomic_write_text(dest / "paper_updates.md", "\n".join(md) + "\n")
    atomic_write_text(dest / "paper_updates.json", json.dumps(results, indent=1))
    print("\n".join(md))
    return results


def ablate(args, out: Path, cache: Path) -> dict:
    """gvm_robust with one part taken out at a time, on the demo task (RAFT++, paired against uniform)."""
    warm, seeds = ([0], [0]) if args.smoke else (list(range(args.warm_starts)), [0])
    full = ("gvm_robust", "gvm_robust", {**ROBUST, **PREREGISTERED})
    arms = [("uniform", "uniform", {}), full,
            ("no floor", "gvm_robust", {**full[2], "robust_floor": 0}),
            ("no cap", "gvm_robust", {**full[2], "robust_cap_factor": 1e6}),
            ("paper estimates", "gvm_robust", {**full[2], "estimator": "paper"}),
            ("fresh pilot, not trained on", "gvm_robust", {**full[2], "pilot": "fresh"}),
            ("history, pilots not trained on", "gvm_robust", {**full[2], "pilot": "history"})]
    if args.smoke:
        arms = arms[:3]
    budget = 4_000 if args.smoke else demo.BUDGET
    extra = {"test_size": 16, "prompts_per_step": 8} if args.smoke else {}
    summary = _run_task(out / "ablate", "rules", warm, seeds, arms, {"RAFT++": "raftpp"}, budget=budget, extra=extra,
                        cache=cache, workers=args.workers, smoke=args.smoke)
    results = {"commit": _commit(), "warm_starts": warm, "seeds": seeds, "machine": demo.report.machine(),
               "arms": {lab: {"allocation": a, **o} for lab, a, o in arms}, "tasks": {"rules (ablation)": summary}}
    dest = Path(args.out) if args.smoke else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    md = [f"# gvm_robust ablation on the demo task (`python bench/allocation_study.py --ablate`, commit {results['commit']})", "",
          f"RAFT++, {len(warm)} warm starts x {len(seeds)} seed, {budget:,} tokens; each row takes one part out of gvm_robust.", "",
          _table("rules (ablation)", summary, f"{len(warm)} warm starts x {len(seeds)} seed")]
    for r in summary["by_algorithm"]["RAFT++"].values():
        r.pop("curve", None)
    atomic_write_text(dest / "allocation_ablation.md", "\n".join(md) + "\n")
    atomic_write_text(dest / "allocation_ablation.json", json.dumps(results, indent=1))
    print("\n".join(md))
    return results


def map_(args, out: Path, cache: Path) -> dict:
    """The rule task with 2/8, 4/8 or 6/8 families at an extreme at the start, and a budget that covers
    about 2 or about 12 epochs of its prompt set: each rule's paired difference against uniform (RAFT++)."""
    warm, seeds = ([0], [0]) if args.smoke else ([0], list(range(args.seeds)))
    cells = {}
    extremes = MAP_EXTREMES if not args.smoke else {"2/8": MAP_EXTREMES["2/8"]}
    epochs = MAP_EPOCHS if not args.smoke else {"1 pass": ({}, 2_000), "~2 epochs": ({}, 4_000)}
    rules = RULES if not args.smoke else [r for r in RULES if r[0] in ("uniform", "gvm")]
    meta = {}
    for ext, shares in extremes.items():
        for ep, (opts, budget) in epochs.items():
            key = f"{ext} extreme, {ep}"
            extra = {**opts, **({"test_size": 16, "prompts_per_step": 8} if args.smoke else {})}
            sub = out / "map" / f"ext{ext.replace('/', 'of')}-{ep.strip('~').replace(' ', '')}"
            cells[key] = _run_task(sub, "rules", warm, seeds, rules, {"RAFT++": "raftpp"}, budget=budget, extra=extra,
                                   cache=cache, workers=args.workers, smoke=args.smoke,
                                   sft_of=lambda w, sh=shares: dc_replace(demo.RuleSFT(), seed=w, shares=sh))
            held_out = extra.get("test_size", len(demo.task.RULE_FAMILIES) * demo.task.RULES_TEST_PER_FAMILY) // len(demo.task.RULE_FAMILIES)
            available = len(demo.task.rule_problems(held_out, seed=demo.task.RULES_DATA_SEED)[0])
            meta[key] = (budget, min(opts.get("train_size", available), available))
    results = {"commit": _commit(), "seeds": seeds, "machine": demo.report.machine(), "cells": {}, "cell_design": {}}
    lines = [f"# Where allocation pays on the rule task (`python bench/allocation_study.py --map`, commit {results['commit']})", "",
             f"RAFT++, the shipped-setting warm start family with other SFT shares, {len(seeds)} seeds; "
             "paired difference of final test accuracy against the uniform arm with the rule's own M-step weighting "
             "(± SE over seeds); `uniform-prompt` is the weighting's own effect (against token-mean uniform). "
             "Passes: prompt-visits / training prompts, uniform's and the paper's rule's, per run (measured).", "",
             "| cell | generated tokens | training prompts | passes (uniform / gvm) | uniform final | "
             + " | ".join(lab for lab, _, _ in rules if lab != "uniform") + " |",
             "|---|---|---|---|---|" + "---|" * (len(rules) - 1)]
    for key, s in cells.items():
        rows = s["by_algorithm"]["RAFT++"]
        budget, prompts = meta[key]
        runs = len(warm) * len(seeds)
        pu, pg = (passes(rows[lab].get("mechanism"), runs, prompts) if lab in rows else None for lab in ("uniform", "gvm"))
        results["cells"][key] = {lab: {k: v for k, v in r.items() if k != "curve"} for lab, r in rows.items()}
        results["cell_design"][key] = {"budget_tokens": budget, "train_prompts": prompts, "passes_uniform": pu, "passes_gvm": pg}
        p1 = lambda x: "n/a" if x is None else f"{x:.1f}"  # noqa: E731
        lines.append(f"| {key} | {budget:,} | {prompts} | {p1(pu)} / {p1(pg)} | "
                     f"{rows['uniform']['final_mean']:.3f} | " +
                     " | ".join(_fmt(*_same_or_tokens(rows[lab]), sign=True) for lab, _, _ in rules if lab != "uniform") + " |")
    dest = Path(args.out) if args.smoke else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "allocation_map.md", "\n".join(lines) + "\n")
    atomic_write_text(dest / "allocation_map.json", json.dumps(results, indent=1))
    print("\n".join(lines))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--tune", action="store_true", help="choose gvm_robust's settings on the demo task")
    part.add_argument("--map", action="store_true", help="the rule-task map: extreme share x epochs")
    part.add_argument("--paper", action="store_true", help="the official fork's update count on the demo task")
    part.add_argument("--ablate", action="store_true", help="gvm_robust with one part taken out at a time, on the demo task")
    part.add_argument("--replot", action="store_true", help="re-render allocation_study.md/.png from its JSON (no runs)")
    ap.add_argument("--smoke", action="store_true", help="under a minute: one tiny cell of the study, results under --out")
    ap.add_argument("--tasks", default=None, help="comma-separated subset of " + ", ".join([*TASKS, "synthetic", "smollm2"]))
    ap.add_argument("--realmodel-study", type=Path, default=RESULTS / "realmodel_study.json",
                    help="bench/realmodel_study.py's results, read for the smollm2 task")
    ap.add_argument("--warm-starts", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="run directories (default: runs/allocation_study)")
    args = ap.parse_args(argv)
    if args.warm_starts < 1 or args.seeds < 1:
        ap.error("--warm-starts and --seeds must be positive integers")
    if args.tasks:
        unknown = [t for t in args.tasks.split(",") if t not in TASKS and t not in ("synthetic", "smollm2")]
        if unknown:
            ap.error(f"unknown task(s) {unknown}; choose from {', '.join([*TASKS, 'synthetic', 'smollm2'])}")
    out = args.out or (ROOT / "runs" / ("allocation_study-smoke" if args.smoke else "allocation_study"))
    if args.smoke and args.out is None:
        args.out = out
    out.mkdir(parents=True, exist_ok=True)
    cache = (out / "cache") if args.smoke else Path.home() / ".cache" / "gvm_mini"
    t0 = time.perf_counter()
    if args.replot:
        results = json.loads((RESULTS / "allocation_study.json").read_text())
        for task, summary in results["tasks"].items():
            if task in TASKS and TASKS[task]["demo_task"] != "rules":
                difficulty_labels(summary)
        results.setdefault("command", "python bench/allocation_study.py --warm-starts 3 --seeds 1 --workers 2")
        results.setdefault("preregistration_commit", PREREGISTRATION_COMMIT)
        _write(results, args, "allocation_study", STUDY_TITLE)
    elif args.tune:
        tune(args, out, cache)
    elif args.map:
        map_(args, out, cache)
    elif args.paper:
        paper(args, out, cache)
    elif args.ablate:
        ablate(args, out, cache)
    else:
        study(args, out, cache)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
