"""``python -m gvm_mini demo``: GVM against uniform budgets on a CPU, in minutes, nothing downloaded.

1. **Task** - chains of one-digit additions and subtractions, 1 to 7 steps
   (:func:`gvm_mini.data.arithmetic_problems` with :data:`TASK`), worked steps, answer in ``\\boxed{}``;
   difficulty is the chain length.
2. **Starting policy** - a 0.15M-parameter Qwen2-shaped model (2 layers, width 64) with an offline
   tokenizer, SFT-warmed for 800 steps on worked solutions with deliberate slips whose rate grows along
   the chain (:class:`SFT`, :func:`slipped_solution`): sampled at temperature 1 it passes about 80% of
   one-step prompts and 20% of seven-step ones, so pass rates spread across (0, 1) with difficulty, and
   its errors are sampling noise around a right answer (greedy decoding is far more accurate). Cached
   after the first run, keyed by every setting that shapes it.
3. **Runs** - RAFT++ vs GVM-RAFT++ and GRPO vs GVM-GRPO, full fine-tuning of the tiny policy, all at
   the same total budget of generated tokens (pilot samples counted), several seeds, in parallel
   worker processes.
4. **Outputs** - accuracy against generated tokens, wall time and update steps (mean and spread over
   seeds); the allocation picture (n_i against p_i coloured by G_i, like the paper's Figure 2); a
   summary table (final accuracy, tokens and M-steps to reach the uniform baseline's final accuracy and
   their ratios, the GVM stage's share of wall time) as ``summary.md`` and ``summary.json``.

Why a tiny SFT-warmed model rather than SmolLM2-135M with LoRA: SmolLM2 samples at 20-100 tokens/s on
this CPU, so four methods x two seeds would get a few thousand tokens each inside ten minutes - too few
iterations for a learning curve. The tiny model samples at about 10k tokens/s per core.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config, validate

__all__ = ["TASK", "SFT", "METHODS", "BUDGET", "QUICK_BUDGET", "slipped_solution", "warm_start", "demo_config",
           "run_demo", "summarize_runs"]

#: the generated task (arguments of ``arithmetic_problems``): 1-7 steps of one-digit + and -
TASK = dict(min_operands=2, max_operands=8, max_digits=1, ops=("+", "-"))


@dataclass(frozen=True)
class SFT:
    """Settings of the warm start; all of them key the cache.

    The worked solutions carry deliberate slips: step ``j`` (0-based) of a solution is off by one with
    probability ``slip_base + slip_growth * j`` (the slip is carried to the end), so a policy that
    imitates them fails more often the longer the chain: 5% on one step, 1 - prod_j (1 - 0.05 - 0.06 j)
    = 89% on seven. That is
    what makes pass rates spread across (0, 1) with difficulty, and what RL has to unlearn.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    slip_base: float = 0.05
    slip_growth: float = 0.06
    examples: int = 8000
    data_seed: int = 7
    seed: int = 0
    version: int = 3


#: generated tokens per run, pilots included (full demo, --quick)
BUDGET, QUICK_BUDGET = 150_000, 40_000

#: (label, algorithm, allocation)
METHODS = [
    ("RAFT++", "raftpp", "uniform"),
    ("GVM-RAFT++", "raftpp", "gvm"),
    ("GRPO", "grpo", "uniform"),
    ("GVM-GRPO", "grpo", "gvm"),
]


def _operands(expression: str) -> tuple[list[int], list[str]]:
    """``"7-5+3"`` -> ``([7, 5, 3], ["-", "+"])``."""
    tokens, cur = [], ""
    for ch in expression:
        if ch in "+-" and cur:
            tokens += [cur, ch]
            cur = ""
        else:
            cur += ch
    tokens.append(cur)
    return [int(x) for x in tokens[0::2]], tokens[1::2]


def slipped_solution(expression: str, rng: random.Random, slip_base: float, slip_growth: float) -> str:
    """A worked solution of ``expression`` in which step ``j`` slips by +-1 with probability
    ``slip_base + slip_growth * j``; a slipped value is carried into the next step and the answer."""
    nums, ops = _operands(expression)
    value, steps = nums[0], []
    for j, (op, b) in enumerate(zip(ops, nums[1:])):
        new = value + b if op == "+" else value - b
        if rng.random() < slip_base + slip_growth * j:
            new += rng.choice([-1, 1])
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return ". ".join(steps) + f". \\boxed{{{value}}}"


def warm_start(cache_root: Path, sft: SFT = SFT(), *, progress: bool = True) -> Path:
    """Train (or reuse) the SFT-warmed tiny policy; returns its directory (a local HF model dir)."""
    from .data import arithmetic_problems, format_chat
    from .models import offline_tokenizer, tiny_model

    key = hashlib.sha256(json.dumps({"task": TASK, "sft": asdict(sft)}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = cache_root / f"demo-policy-{key}"
    if (out / "config.json").is_file():
        return out
    rng = random.Random(sft.data_seed)
    problems = arithmetic_problems(sft.examples, seed=sft.data_seed, **TASK)
    solutions = [slipped_solution(p.meta["expression"], rng, sft.slip_base, sft.slip_growth) for p in problems]
    tok = offline_tokenizer([p.problem + " " + s for p, s in zip(problems[:2000], solutions[:2000])], vocab_size=300)
    model = tiny_model(tok, hidden_size=sft.hidden_size, num_layers=sft.num_layers, num_heads=sft.num_heads, seed=sft.seed)
    rows = []
    for p, s in zip(problems, solutions):
        a = tok(format_chat(tok, p.problem, system=None, instruction=""), add_special_tokens=False)["input_ids"]
        b = tok(s + tok.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((a, b))
    opt = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=sft.lr, total_steps=sft.steps, pct_start=0.1)
    batch_rng = random.Random(sft.seed)
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(sft.seed)
        for _ in tqdm(range(sft.steps), desc="SFT warm start (cached after the first run)", disable=not progress):
            batch = batch_rng.sample(rows, sft.batch_size)
            width = max(len(a) + len(b) for a, b in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (a, b) in enumerate(batch):
                ids[i, : len(a) + len(b)] = torch.tensor(a + b)
                labels[i, len(a) : len(a) + len(b)] = torch.tensor(b)
                attn[i, : len(a) + len(b)] = 1
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    model.eval()
    tmp = cache_root / f".tmp-{key}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "gvm_mini_sft.json").write_text(json.dumps({"task": TASK, "sft": asdict(sft), "final_loss": float(loss.detach())}, default=str))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def demo_config(model_dir: Path, algorithm: str, allocation: str, seed: int, *, quick: bool) -> Config:
    """The run config of one (method, seed) of the demo: same task, budget and evaluation for all.

    Paper settings where they apply (N' = 4 pilots here instead of 8, N = 8 x prompts, alpha = 1e-3,
    beta = 2, G_i on ``embed_tokens`` with summed log-probs, fresh samples, temperature 1, clip 0.2 /
    0.28); scaled to a tiny model: full fine-tuning at lr 1e-4 (lr 3e-4 and above made the policy
    worse in our runs), 2 M-steps of 32 prompts per E-step, no KL. Old log-probs come from the sampler
    (``old_logprobs="behaviour"``: exact at temperature 1, one forward pass fewer per sample).
    """
    cfg = Config(
        model=str(model_dir), dtype="float32", device="cpu", lora=False,
        dataset="arithmetic", train_size=4000, test_size=200, data_seed=1234, verifier="exact",
        task_min_operands=TASK["min_operands"], task_max_operands=TASK["max_operands"],
        task_max_digits=TASK["max_digits"], task_ops="".join(TASK["ops"]),
        system_prompt=None, instruction="", max_prompt_length=64,
        algorithm=algorithm, allocation=allocation, num_pilot=4, samples_per_prompt=8,
        alpha=1e-3, beta=2.0, gradnorm_params="embed_tokens", reuse_pilot=False,
        temperature=1.0, max_completion_length=64, sample_batch_size=512,
        iterations=1000, token_budget=QUICK_BUDGET if quick else BUDGET,
        prompts_per_step=32, steps_per_iteration=2, mini_batch_size=32,
        learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0, epsilon=0.2, epsilon_high=0.28,
        kl_coef=0.0, loss_type="token_mean", reset_optimizer=False, old_logprobs="behaviour",
        eval_every=1, eval_samples=4, eval_temperature=1.0, eval_size=100 if quick else 200,
        seed=seed, progress=False,
    )
    return validate(cfg)


def _run_one(job: tuple) -> tuple:
    """One (method, seed) run in a worker process with one torch thread; resumes an interrupted run."""
    from .em import run

    from transformers.utils import logging as hf_logging

    model_dir, label, algorithm, allocation, seed, quick, out = job
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # no "Loading weights" bars from the workers
    t0 = time.perf_counter()
    done = out / "DONE"
    if not done.exists():
        run(demo_config(model_dir, algorithm, allocation, seed, quick=quick), out, resume=out.exists())
        done.write_text("ok")
    return label, seed, time.perf_counter() - t0


def _interp(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.interp(grid, xs, ys, right=np.nan)


def summarize_runs(out: Path, labels: list[str], seeds: list[int]) -> dict:
    """Curves, the allocation figure and the summary table from the run directories under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import X_AXES, plot_allocation, read_jsonl

    def evals(label, seed):
        return [r for r in read_jsonl(out / f"{label}-s{seed}" / "metrics.jsonl") if r["kind"] == "eval"]

    summary: dict = {"methods": {}, "seeds": seeds}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"RAFT++": "tab:blue", "GVM-RAFT++": "tab:orange", "GRPO": "tab:green", "GVM-GRPO": "tab:red"}
    curves = {}
    for ax, x in zip(axes, ["tokens", "wall", "steps"]):
        key = X_AXES[x][0]
        for label in labels:
            runs = [evals(label, s) for s in seeds]
            xmax = min(r[-1][key] for r in runs)
            grid = np.linspace(0, xmax, 60)
            ys = np.array([_interp(np.array([e[key] for e in r], float), np.array([e["avg_at_k"] for e in r]), grid) for r in runs])
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(grid, mean, label=label, color=colors.get(label))
            ax.fill_between(grid, mean - std, mean + std, alpha=0.2, color=colors.get(label))
            curves.setdefault(x, {})[label] = (grid, mean)
        ax.set_xlabel(X_AXES[x][1])
        ax.set_ylabel("test Average@4")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"tiny SFT-warmed policy on graded arithmetic; mean ± std over {len(seeds)} seeds")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    for label in labels:
        runs = [evals(label, s) for s in seeds]
        finals = np.array([r[-1]["avg_at_k"] for r in runs])
        starts = np.array([r[0]["avg_at_k"] for r in runs])
        metrics = [read_jsonl(out / f"{label}-s{s}" / "metrics.jsonl") for s in seeds]
        walls = [m[-1]["wall"] for m in metrics]
        gvm_share = np.mean([(w["pilot"] + w["gradnorm"] + w["allocate"]) / max(sum(w.values()) - w["eval"], 1e-9) for w in walls])
        summary["methods"][label] = {
            "start_acc": float(starts.mean()), "final_acc_mean": float(finals.mean()), "final_acc_std": float(finals.std()),
            "tokens": float(np.mean([m[-1]["tokens"] for m in metrics])),
            "pilot_tokens": float(np.mean([m[-1]["pilot_tokens"] for m in metrics])),
            "m_steps": float(np.mean([m[-1]["global_step"] for m in metrics])),
            "updates": float(np.mean([m[-1]["updates"] for m in metrics])),
            "gvm_stage_share_of_train_wall": float(gvm_share),
        }
    for base, gvm in [("RAFT++", "GVM-RAFT++"), ("GRPO", "GVM-GRPO")]:
        if base not in labels or gvm not in labels:
            continue
        if summary["methods"][base]["final_acc_mean"] <= summary["methods"][base]["start_acc"]:
            # the baseline ended no better than it started: "tokens to reach it" would be 0 and meaningless
            summary["methods"][base]["note"] = "final accuracy not above the start: no tokens-to-target ratio"
            continue
        for x, name in (("tokens", "tokens"), ("steps", "m_steps")):
            # first point of each mean curve (over seeds) at or above the end of the baseline's mean curve
            # (its final accuracy on the grid both share; seeds end at slightly different token counts)
            target = curves[x][base][1][-1]
            reach = {}
            for label in (base, gvm):
                g, m = curves[x][label]
                hit = np.flatnonzero(m >= target)
                reach[label] = float(g[hit[0]]) if hit.size else None
            summary["methods"][base][f"{name}_to_baseline_final"] = reach[base]
            summary["methods"][gvm][f"{name}_to_baseline_final"] = reach[gvm]
            summary["methods"][gvm][f"{name}_ratio_vs_baseline"] = (
                reach[base] / reach[gvm] if reach[base] and reach[gvm] else None)
    gvm_runs = [out / f"{lab}-s{seeds[0]}" for lab in labels if lab.startswith("GVM")]
    if gvm_runs:
        plot_allocation(gvm_runs[0], out / "allocation.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [
        "| method | start acc | final acc (mean ± std) | tokens (pilot) | M-steps | tokens to reach baseline's final (ratio) "
        "| M-steps to reach it (ratio) | GVM stage share of train wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base_of = {"GVM-RAFT++": "RAFT++", "GVM-GRPO": "GRPO"}

    def reach(s, name, fmt):
        if "note" in summary["methods"].get(base_of.get(label, label), {}):
            return "n/a: baseline did not improve"
        v, r = s.get(f"{name}_to_baseline_final"), s.get(f"{name}_ratio_vs_baseline")
        return "not reached" if v is None else fmt.format(v) + ("" if r is None else f" ({r:.2f}x)")

    for label, s in summary["methods"].items():
        lines.append(
            f"| {label} | {s['start_acc']:.3f} | {s['final_acc_mean']:.3f} ± {s['final_acc_std']:.3f} | "
            f"{s['tokens']:,.0f} ({s['pilot_tokens']:,.0f}) | {s['m_steps']:.0f} | {reach(s, 'tokens', '{:,.0f}')} | "
            f"{reach(s, 'm_steps', '{:.1f}')} | {100 * s['gvm_stage_share_of_train_wall']:.1f}% |"
        )
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    summary["table"] = table
    return summary


def run_demo(out: Path, *, quick: bool = False, seeds: int | None = None, cache_root: Path | None = None,
             workers: int | None = None, sft: SFT = SFT()) -> dict:
    """The whole demo (module docstring); resumable: finished runs are kept and skipped.

    ``quick``: the same warm start, one seed, :data:`QUICK_BUDGET` tokens per run, 100 test prompts.

    The (method, seed) runs go to ``workers`` processes (default: the CPU count, at most 4) with one
    torch thread each; on CPU a run's numbers do not depend on which worker ran it.
    """
    import multiprocessing as mp

    tqdm.set_lock(threading.RLock())  # before any bar: tqdm's default multiprocessing lock leaks a semaphore at exit
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_root = Path(cache_root) if cache_root else Path.home() / ".cache" / "gvm_mini"
    n_seeds = seeds or (1 if quick else 2)
    seed_list = list(range(n_seeds))
    t0 = time.perf_counter()
    model_dir = warm_start(cache_root, sft)
    t_sft = time.perf_counter() - t0
    jobs = [(model_dir, label, alg, allocation, s, quick, out / f"{label}-s{s}") for s in seed_list for label, alg, allocation in METHODS]
    workers = max(1, min(len(jobs), workers or min(os.cpu_count() or 1, 4)))
    with mp.get_context("spawn").Pool(workers) as pool:
        times = list(tqdm(pool.imap_unordered(_run_one, jobs), total=len(jobs), desc=f"demo runs ({workers} workers)"))
    t_runs = time.perf_counter() - t0 - t_sft
    summary = summarize_runs(out, [m[0] for m in METHODS], seed_list)
    summary["wall_seconds"] = {"warm_start": t_sft, "runs": t_runs, "total": time.perf_counter() - t0,
                               "per_run": {f"{lab}-s{s}": t for lab, s, t in times}}
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
    print(summary["table"])
    print(f"\nfigures: {out / 'curves.png'}, {out / 'allocation.png'}; warm start {t_sft:.0f} s, "
          f"runs {t_runs:.0f} s, total {summary['wall_seconds']['total']:.0f} s")
    return summary
