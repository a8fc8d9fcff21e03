"""The demo's runs: one config per (method, seed), worker processes, and :func:`run_demo`."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_write_text, clean_leftovers
from ..config import Config, ConfigError, replace, validate
from ..em import run
from ..plots import read_jsonl
from .report import summarize_runs
from .task import RULES_DATA_SEED, RULES_TEST_PER_FAMILY, TASK
from .warmstart import SFT, RuleSFT, warm_start

__all__ = ["BUDGET", "QUICK_BUDGET", "CHAINS_BUDGET", "CHAINS_QUICK_BUDGET", "METHODS", "CHAINS_METHODS", "ROBUST_OPTIONS", "ARM_OPTIONS",
           "demo_config", "run_jobs", "run_demo"]


#: generated tokens per run, pilots included (full demo, --quick): rule task, then the chains task
BUDGET, QUICK_BUDGET = 150_000, 50_000
CHAINS_BUDGET, CHAINS_QUICK_BUDGET = 150_000, 40_000

#: (label, algorithm, allocation): each algorithm with uniform budgets, GVM's Proposition 1 (the
#: paper's rule), the DAPO-style filter (pilot, then drop prompts whose pilots were all right or all
#: wrong), gvm_robust (Proposition 1 with a floor and a cap on Beta-posterior estimates; its
#: options are :data:`ROBUST_OPTIONS`) and uniform budgets under gvm_robust's M-step weighting (the
#: Prompt arms, gvm_robust's one-factor baselines; :data:`ARM_OPTIONS`)
METHODS = [
    ("RAFT++", "raftpp", "uniform"),
    ("GVM-RAFT++", "raftpp", "gvm"),
    ("Filter-RAFT++", "raftpp", "filter_extremes"),
    ("Robust-RAFT++", "raftpp", "gvm_robust"),
    ("GRPO", "grpo", "uniform"),
    ("GVM-GRPO", "grpo", "gvm"),
    ("Filter-GRPO", "grpo", "filter_extremes"),
    ("Robust-GRPO", "grpo", "gvm_robust"),
    ("Prompt-RAFT++", "raftpp", "uniform"),
    ("Prompt-GRPO", "grpo", "uniform"),
]
#: the chains counter-example keeps the previous demo's four arms
CHAINS_METHODS = [m for m in METHODS if not m[0].startswith(("Filter", "Robust", "Prompt"))]

#: gvm_robust's settings, pre-registered on the demo task (bench/allocation_study.py --tune): the
#: estimates, the pilot policy, the floor and cap, and the M-step weighting
ROBUST_OPTIONS = {"estimator": "robust", "pilot": "history_reuse", "robust_floor": 2, "robust_cap_factor": 2.0,
                  "prompt_weighting": "prompt"}
#: each arm's options beyond its (algorithm, allocation): the Prompt arms are uniform budgets under the
#: Robust arms' M-step weighting (Algorithm 1's 1/|D_i|), so a Robust arm and its baseline differ in the
#: allocation alone, and a Prompt arm and plain uniform in the weighting alone
_PROMPT = {"prompt_weighting": ROBUST_OPTIONS["prompt_weighting"]}
ARM_OPTIONS = {"Robust-RAFT++": ROBUST_OPTIONS, "Robust-GRPO": ROBUST_OPTIONS, "Prompt-RAFT++": _PROMPT, "Prompt-GRPO": _PROMPT}


def demo_config(model_dir: Path, algorithm: str, allocation: str, seed: int, *, quick: bool, task: str = "rules") -> Config:
    """The run config of one (method, seed) of the demo: same task, budget and evaluation for all.

    Paper settings where they apply (N' = 4 pilots here instead of 8, N = 8 x prompts, alpha = 1e-3,
    beta = 2, G_i on ``embed_tokens`` with summed log-probs, fresh samples, temperature 1, clip 0.2 /
    0.28); scaled to a tiny model: full fine-tuning at lr 1e-4 (lr 1e-3 collapses the policy), 2
    M-steps of 32 prompts per E-step, no KL. Old log-probs come from the sampler
    (``old_logprobs="behaviour"``: exact at temperature 1, one forward pass fewer per sample).
    ``task="chains"`` is the counter-example task of the previous demo.
    """
    common = dict(
        model=str(model_dir), dtype="float32", device="cpu", lora=False, verifier="exact",
        system_prompt=None, instruction="", max_prompt_length=64,
        algorithm=algorithm, allocation=allocation, num_pilot=4, samples_per_prompt=8,
        alpha=1e-3, beta=2.0, gradnorm_params="embed_tokens", reuse_pilot=False,
        temperature=1.0, sample_batch_size=512, iterations=1000,
        prompts_per_step=32, steps_per_iteration=2, mini_batch_size=32,
        learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0, epsilon=0.2, epsilon_high=0.28,
        kl_coef=0.0, loss_type="token_mean", reset_optimizer=False, old_logprobs="behaviour",
        eval_every=1, eval_samples=4, eval_temperature=1.0, seed=seed, progress=False,
    )
    if task == "rules":
        cfg = Config(
            **common, dataset="rules", train_size=10_000, test_size=8 * RULES_TEST_PER_FAMILY,
            data_seed=RULES_DATA_SEED, max_completion_length=48, eval_size=None, group_key="family",
            token_budget=QUICK_BUDGET if quick else BUDGET,
        )
    elif task == "chains":
        cfg = Config(
            **common, dataset="arithmetic", train_size=4000, test_size=200, data_seed=1234,
            task_min_operands=TASK["min_operands"], task_max_operands=TASK["max_operands"],
            task_max_digits=TASK["max_digits"], task_ops="".join(TASK["ops"]), max_completion_length=64,
            eval_size=100 if quick else 200, token_budget=CHAINS_QUICK_BUDGET if quick else CHAINS_BUDGET,
        )
    else:
        raise ConfigError(f"demo task must be rules or chains, got {task!r}")
    return validate(cfg)


def _run_one(job: tuple) -> tuple:
    """One (method, seed) run in a worker process with one torch thread; resumes an interrupted run."""
    from transformers.utils import logging as hf_logging

    model_dir, label, algorithm, allocation, seed, quick, task, out, *rest = job
    overrides = rest[0] if rest else {}
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # no "Loading weights" bars from the workers
    t0 = time.perf_counter()
    done = out / "DONE"
    if not done.exists():
        cfg = demo_config(model_dir, algorithm, allocation, seed, quick=quick, task=task)
        if overrides:
            cfg = replace(cfg, **overrides)
        run(cfg, out, resume=out.exists())
        atomic_write_text(done, "ok")
    return label, seed, time.perf_counter() - t0


def _token_progress(out: Path, jobs: list, total: float, result) -> None:
    """A progress bar over the generated tokens of all runs (read from their metrics files), so it
    moves inside runs, not only when a whole run ends."""
    bar = tqdm(total=int(total), desc="demo runs (generated tokens, all runs)", unit="tok", unit_scale=True)
    while not result.ready():
        result.wait(1.0)
        done = 0
        for job in jobs:
            path = job[7] / "metrics.jsonl"  # (model_dir, label, algorithm, allocation, seed, quick, task, out[, overrides])
            if path.exists():
                recs = read_jsonl(path)
                if recs:
                    done += min(recs[-1]["tokens"], total / len(jobs))
        bar.n = int(done)
        bar.refresh()
    bar.n = int(total)
    bar.close()


def _worker_init() -> None:
    """In a spawned worker: a thread lock for tqdm instead of its default named semaphore, which the
    resource tracker reports as leaked when the worker exits."""
    tqdm.set_lock(threading.RLock())


def run_jobs(out: Path, jobs: list[tuple], budget: int, workers: int) -> list[tuple]:
    """Run the (method, seed) jobs of :func:`_run_one` on ``workers`` spawned processes with a progress
    bar over generated tokens; returns ``(label, seed, seconds)`` per job. Finished runs are skipped."""
    import multiprocessing as mp

    tqdm.set_lock(threading.RLock())  # before any bar: tqdm's default multiprocessing lock leaks a semaphore at exit
    pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
    try:
        result = pool.map_async(_run_one, jobs)
        _token_progress(out, jobs, budget * len(jobs) * 1.0, result)
        times = result.get()
        pool.close()  # let the workers exit by themselves: a terminated pool can leave a semaphore behind
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return times


def run_demo(out: Path, *, quick: bool = False, seeds: int | None = None, cache_root: Path | None = None,
             workers: int | None = None, task: str = "rules", sft=None) -> dict:
    """The whole demo (module docstring); resumable: finished runs are kept and skipped.

    ``quick``: the same warm start, one seed, :data:`QUICK_BUDGET` tokens per run (default: three seeds). ``task="chains"``: the previous demo's task, the counter-example.

    The (method, seed) runs go to ``workers`` processes (default: the CPU count, at most 4) with one
    torch thread each; on CPU a run's numbers do not depend on which worker ran it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)  # temporaries of a summary or figure write that a kill interrupted
    cache_root = Path(cache_root) if cache_root else Path.home() / ".cache" / "gvm_mini"
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
    n_seeds = seeds if seeds is not None else (1 if quick else 3)
    seed_list = list(range(n_seeds))
    if sft is None:
        sft = RuleSFT() if task == "rules" else SFT()
    methods = METHODS if task == "rules" else CHAINS_METHODS
    budget = demo_config(Path("."), "raftpp", "uniform", 0, quick=quick, task=task).token_budget
    t0 = time.perf_counter()
    model_dir = warm_start(cache_root, sft)
    t_sft = time.perf_counter() - t0
    jobs = [(model_dir, label, alg, allocation, s, quick, task, out / f"{label}-s{s}", ARM_OPTIONS.get(label, {}))
            for s in seed_list for label, alg, allocation in methods]
    workers = max(1, min(len(jobs), workers or min(os.cpu_count() or 1, 4)))
    print(f"{len(jobs)} runs ({len(methods)} methods x {n_seeds} seeds) of {budget:,} generated tokens each, "
          f"on {workers} worker processes")
    times = run_jobs(out, jobs, budget, workers)
    t_runs = time.perf_counter() - t0 - t_sft
    summary = summarize_runs(out, [m[0] for m in methods], seed_list, budget=budget)
    summary["task"] = task
    summary["wall_seconds"] = {"warm_start": t_sft, "runs": t_runs, "total": time.perf_counter() - t0,
                               "per_run": {f"{lab}-s{s}": t for lab, s, t in times}}
    atomic_write_text(out / "summary.json", json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
    print(summary["table"])
    figs = ", ".join(str(out / f) for f in ("curves.png", "families.png", "allocation.png") if (out / f).exists())
    print(f"\nfigures: {figs}; warm start {t_sft:.0f} s, runs {t_runs:.0f} s, total {summary['wall_seconds']['total']:.0f} s")
    return summary
