"""Does per-prompt allocation help a real model? SmolLM2-135M-Instruct + LoRA at a scale where 0.05 shows.

    python bench/realmodel_study.py --tune                 # the design step, on a tuning split only (minutes)
    python bench/realmodel_study.py --workers 2            # the study: 6 arms x 5 seeds (about 4 core-hours: tuning md)
    python bench/realmodel_study.py --workers 2 --qlora    # ... and uniform RAFT++ with QLoRA, 3 seeds
    python bench/realmodel_study.py --workers 2 --resume   # continue after an interruption (finished runs are kept)
    python bench/realmodel_study.py --summarize            # only rewrite the results from the run directories
    python bench/realmodel_study.py --smoke --out DIR      # well under a minute: 2 arms, 1 seed, a tiny budget (CI)

``bench/realmodel_curve.py`` showed that SmolLM2 learns under this loop on a CPU but cannot decide
anything: 24 test prompts with one draw each and three seeds whose uniform runs ended at 0.21-0.62. This
study is built for power. Its design is fixed by ``--tune`` and written down, with the commit, in
``bench/results/realmodel_study_tuning.{json,md}`` before any comparison is run:

- **The task** (:data:`CANDIDATES`): generated arithmetic (``dataset: arithmetic``) of a shape on which
  the starting model's per-prompt pass rates ``p_i`` are spread: allocation can only matter where
  ``p_i`` varies from prompt to prompt. ``--tune`` samples the starting model on a *tuning split*
  (problems from another data seed, none of them in the study's training or evaluation prompts; sampling
  seeds of their own) with the study's sampler (T = 1, top_p 0.9, the merged bfloat16 copy of the policy),
  ``--tune-k`` draws per prompt, and picks the candidate with the largest share of prompts strictly
  between 0 and 1 at the held-out set's mix of levels (ties: the mean closer to 0.5). Chosen:
  :data:`STUDY_TASK`, two-operand addition with one- and two-digit numbers.
- **Evaluation**: :data:`EVAL_PROMPTS` held-out prompts at T = 1 and top_p 0.9 with the same draws every
  time (common random numbers). The evaluations that decide, at the start and at the final budget, are
  Average@:data:`EVAL_K`: binomial standard error ``sqrt(p (1 - p) / (prompts k))`` at most 0.022 at any
  mean ``p``. Between them, every :data:`EVAL_EVERY` iterations (a few per run, not every iteration),
  :data:`EVAL_K_CURVE` draw per prompt for the curve. A run stops after the M-step that crosses its budget
  and is evaluated there; the final's extra draws (``final_draws.json``, a seed of their own) join that
  evaluation. The start evaluation is the same for every arm of a seed (LoRA's B starts at zero, so every
  arm samples the released model with the same draws): it is computed once per seed and reused
  (``start_eval/`` in the run root, with the random state it leaves behind, so a run that reuses it
  continues exactly as one that computed it).
- **Training**: LoRA r 16 on every linear layer, float32 trainer (``pi_old`` recomputed in float32),
  sampling with the merged bfloat16 copy (``sample_dtype: bfloat16``, ``gvm_mini.rollout.sampling_model``:
  the behaviour log-probs are a few hundredths of a nat per token from the float32 recompute, and the
  importance ratios use the recompute, so the update is the float32 update of the samples drawn),
  8 prompts x 8 samples per E-step in one sampling batch of 64, mini-batches of 16, no KL, a small
  training set (:data:`TRAIN_PROMPTS`) so that the budget covers about two epochs and the history-based
  rules see every prompt again. Learning rate :data:`LEARNING_RATE`, :data:`BUDGET` generated tokens per
  run, pilots counted, :data:`SEEDS` seeds.

Arms (:data:`ARMS`), paired by seed (a seed sets the prompt order, the LoRA init and every draw; arms of
one seed share the evaluation draws), each stopped at the same generated tokens with pilots counted; each
rule is named alone, so it runs with the settings its name resolves to (``gvm_mini.config.RULE_PRESETS``):

- ``uniform-RAFT++`` (token-mean M-step, the official code's) and ``uniform-RAFT++-prompt``
  (``prompt_weighting: prompt``, Algorithm 1's 1/|D_i|): the two baselines;
- ``uniform-GRPO`` (``epsilon_high`` 0.2, no clip-higher, as the paper's GRPO);
- ``GVM-RAFT++``: the paper's rule (``allocation: gvm``, a fresh N' = 4 pilot, Proposition 1);
- ``gvm_robust-RAFT++``: ``allocation: gvm_robust`` alone (robust estimates, ``history_reuse`` pilot,
  floor 2, cap 2.0, prompt weighting);
- ``knapsack+history-RAFT++``: ``allocation: knapsack`` alone (``pilot: history``);
- with ``--qlora``: ``uniform-RAFT++-QLoRA`` (``load_in_4bit``, 3 seeds): accuracy, speed and memory.

What the study reports (``bench/results/realmodel_study.{json,md,png}``), per arm: ``seeds``,
``eval_prompts``, the final accuracy (the last evaluation, at the final budget) as mean and SE over
seeds; ``vs_uniform_same_weighting``: the paired difference and its SE against the uniform RAFT++ arm with
the same M-step weighting (``bench/allocation_study.py``'s key, with its ``weighting_of``, ``UNIFORM_OF``
and ``clustered_se``; uniform GRPO is paired with token-mean uniform RAFT++, which makes its row the
algorithm's difference); ``vs_uniform_tokens`` against token-mean uniform RAFT++; the tokens at which the arm's
mean curve reaches its baseline's final accuracy, as a ratio with a 95% bootstrap interval over seeds
(``tokens_to_target``); a per-difficulty breakdown (held-out prompts binned by the starting model's pass
rate, pooled over every seed's start evaluation); truncation and answer length; wall time and peak RSS
per run; and the paper's M-step accounting (samples the M-steps used, updates, M-steps) beside the
generated-token accounting. The figure: accuracy curves with bands, and the paired differences with
their error bars against a +-0.05 band.

Run directories: ``runs/realmodel_study/<arm>/seed<s>`` (``gvm_mini.em.run``), one worker process per
run with one torch thread, which records its peak RSS, wall time and CPU in ``done.json``. The study takes
hours on a CPU, so every invocation also writes the finished runs' records (metrics, allocations, config,
``done.json``; no weights) to ``bench/results/realmodel_study_runs.jsonl.gz``, committed with the results:
``--resume`` and ``--summarize`` restore them into an empty run root, so that a study begun on one machine
or checkout is continued on another rather than repeated, seed by seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import allocation_study as AS  # noqa: E402  (the allocation study's pairing and statistics)
import realmodel_curve as RC  # noqa: E402  (the real-model bench's prompt, verifier and run summaries)

RESULTS = ROOT / "bench" / "results"
TUNING_JSON = RESULTS / "realmodel_study_tuning.json"
#: every finished run's records, committed beside the results (see :func:`archive_runs`)
RUNS_ARCHIVE = RESULTS / "realmodel_study_runs.jsonl.gz"
#: the files of a run directory the archive keeps: what :func:`read_run` reads, the resolved config and the
#: allocations (the checkpoint, the only large file, is not kept)
RUN_FILES = ("config.yaml", "metrics.jsonl", "allocations.jsonl", "final_draws.json", "done.json")

# ------------------------------------------------------------------------------------------------
# the design (fixed by --tune; see bench/results/realmodel_study_tuning.md)
# ------------------------------------------------------------------------------------------------

#: candidate tasks for --tune: generated arithmetic shapes (gvm_mini.data.arithmetic_problems; each
#: problem draws its operand count and its digit count uniformly in the ranges, so a shape mixes levels)
CANDIDATES = {
    "addsub-2op-2d": {"task_min_operands": 2, "task_max_operands": 2, "task_max_digits": 2, "task_ops": "+-"},
    "addsub-2to3op-1d": {"task_min_operands": 2, "task_max_operands": 3, "task_max_digits": 1, "task_ops": "+-"},
    "add-2op-2d": {"task_min_operands": 2, "task_max_operands": 2, "task_max_digits": 2, "task_ops": "+"},
    "add-2to3op-1d": {"task_min_operands": 2, "task_max_operands": 3, "task_max_digits": 1, "task_ops": "+"},
    # harder shapes, not in the default tune (a first, interrupted tune found two-thirds of the +- prompts
    # above never solved in 8 draws, so products and 3-operand 2-digit sums would only be harder)
    "addsub-2to3op-2d": {"task_min_operands": 2, "task_max_operands": 3, "task_max_digits": 2, "task_ops": "+-"},
    "arith-2to3op-1d": {"task_min_operands": 2, "task_max_operands": 3, "task_max_digits": 1, "task_ops": "+-*"},
}
#: the candidates --tune measures by default
TUNE_TASKS = ["addsub-2op-2d", "addsub-2to3op-1d", "add-2op-2d", "add-2to3op-1d"]
#: the task the study runs: --tune's choice (the study refuses to run if the tuning record names another)
STUDY_TASK = "add-2op-2d"
TRAIN_PROMPTS = 32  # the first 32 of the 64 the tuning split was kept apart from: ~2 epochs in the budget
EVAL_PROMPTS = 256
EVAL_K = 2  # draws per held-out prompt at the start and at the final budget (the evaluations that decide)
EVAL_K_CURVE = 1  # draws per held-out prompt at the budgets between (the curve)
LEARNING_RATE = 3e-4
BUDGET = 16_000  # generated tokens per run, pilots counted (about 3x realmodel_curve's, which gained 0.25 in 5,500)
EVAL_EVERY = 3  # iterations: ~4 evaluations of a uniform run (start, 3, 6, final), ~3 of a pilot-paying one
SEEDS = 5
QLORA_SEEDS = 3
DATA_SEED = 1234  # the study's training and evaluation prompts
TUNE_DATA_SEED = 4321  # the tuning split's problems (any that is also a study prompt is dropped)
TUNE_SAMPLE_SEED = 9_001  # the tuning split's draws (the study's seeds are 0..SEEDS-1)

#: on top of configs/smollm2_cpu.yaml and realmodel_curve.BASE (its prompt, verifier and sampler settings)
STUDY = {
    "train_size": TRAIN_PROMPTS, "test_size": EVAL_PROMPTS, "eval_size": None, "data_seed": DATA_SEED,
    "num_pilot": 4, "samples_per_prompt": 8, "prompts_per_step": 8, "steps_per_iteration": 1,
    "mini_batch_size": 16, "sample_batch_size": 64, "sample_dtype": "bfloat16",
    "learning_rate": LEARNING_RATE, "eval_every": EVAL_EVERY, "eval_samples": EVAL_K_CURVE, "iterations": 1000,
    "save_weights": False,
}

#: (label, rule of bench/allocation_study.py's RULES it is, options, seeds: None = --seeds)
ARMS = [
    ("uniform-RAFT++", "uniform", {"allocation": "uniform", "algorithm": "raftpp"}, None),
    ("uniform-RAFT++-prompt", "uniform-prompt", {"allocation": "uniform", "algorithm": "raftpp", "prompt_weighting": "prompt"}, None),
    ("uniform-GRPO", "uniform", {"allocation": "uniform", "algorithm": "grpo", "epsilon_high": 0.2}, None),
    ("GVM-RAFT++", "gvm", {"allocation": "gvm", "algorithm": "raftpp"}, None),
    ("gvm_robust-RAFT++", "gvm_robust", {"allocation": "gvm_robust", "algorithm": "raftpp"}, None),
    ("knapsack+history-RAFT++", "knapsack+history", {"allocation": "knapsack", "algorithm": "raftpp"}, None),
]
QLORA_ARM = ("uniform-RAFT++-QLoRA", "uniform", {"allocation": "uniform", "algorithm": "raftpp", "load_in_4bit": True},
             QLORA_SEEDS)
#: the arm each weighting's uniform rule of allocation_study.RULES is, here (RAFT++)
UNIFORM_ARM = {"uniform": "uniform-RAFT++", "uniform-prompt": "uniform-RAFT++-prompt"}

#: the smoke: a handful of prompts, one short iteration per arm, a tiny budget (results under --out only)
SMOKE = {
    "train_size": 4, "test_size": 2, "prompts_per_step": 2, "samples_per_prompt": 2, "num_pilot": 2,
    "max_completion_length": 8, "sample_batch_size": 8, "mini_batch_size": 4, "eval_every": 1, "eval_samples": 1,
    "iterations": 1,
}
SMOKE_ARMS = [ARMS[0], ("GVM-RAFT++", "gvm", {"allocation": "gvm", "algorithm": "raftpp"}, 1)]
SMOKE_BUDGET = 60

# ------------------------------------------------------------------------------------------------
# configs and runs
# ------------------------------------------------------------------------------------------------


def arms_of(smoke: bool = False, qlora: bool = False) -> dict[str, tuple[str, dict, int | None]]:
    arms = SMOKE_ARMS if smoke else ARMS + ([QLORA_ARM] if qlora else [])
    return {lab: (rule, opts, seeds) for lab, rule, opts, seeds in arms}


def task_options(task: str) -> dict:
    return dict(CANDIDATES[task])


def study_config(opts: dict, *, task: str = STUDY_TASK, smoke: bool = False, budget: int = BUDGET, seed: int = 0):
    """The resolved config of one run: configs/smollm2_cpu.yaml, realmodel_curve's prompt and sampler
    (:data:`realmodel_curve.BASE`), the study's design (:data:`STUDY`), the task, the arm's options."""
    from gvm_mini.config import apply_overrides, from_dict, load_config, validate

    cfg = load_config(ROOT / "configs" / "smollm2_cpu.yaml")
    over = {**RC.BASE, **STUDY, **task_options(task), **(SMOKE if smoke else {}), **opts, "token_budget": budget,
            "seed": seed, "progress": False}
    return validate(apply_overrides(from_dict(over, base=cfg), []))


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / label / f"seed{seed}"


def jobs(labels: list[str], arms: dict, seeds: int) -> list[tuple[str, int]]:
    """(arm, seed) runs, seed-major: every arm's seed 0 first, so an interrupted study has all arms."""
    n = {lab: (arms[lab][2] or seeds) for lab in labels}
    return [(lab, s) for s in range(max(n.values(), default=0)) for lab in labels if s < n[lab]]


def start_eval_key(cfg) -> str:
    """What the start evaluation depends on: the model and its quantisation, the held-out prompts, the
    evaluation's sampler and draws (the seed). Not the arm's rule: LoRA's B starts at zero."""
    keys = ("model", "load_in_4bit", "dtype", "sample_dtype", "lora_r", "lora_alpha", "lora_target_modules", "dataset",
            "task_min_operands", "task_max_operands", "task_max_digits", "task_ops", "train_size", "test_size",
            "eval_size", "data_seed", "verifier", "system_prompt", "instruction", "max_prompt_length", "eval_samples",
            "eval_temperature", "top_p", "max_completion_length", "sample_batch_size", "seed")
    blob = json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def share_start_evaluation(cache: Path, k: int = EVAL_K) -> None:
    """This process's next evaluation (a fresh run's start evaluation, ``k`` draws per prompt) is read from
    ``cache`` when an arm of the same seed wrote it, else computed and written there. The torch random state
    the evaluation leaves behind is kept with it and restored, so the run continues exactly as if it had
    sampled."""
    import torch

    from gvm_mini import em
    from gvm_mini.rundir import atomic_write_text

    real = em.evaluate_policy

    def evaluate_policy(*a, **kw):
        em.evaluate_policy = real  # only the first evaluation is shared
        if cache.is_file():
            got = json.loads(cache.read_text())
            torch.set_rng_state(torch.tensor(got.pop("_torch_rng_state"), dtype=torch.uint8))
            return {**got, "shared_start": True}
        import fcntl  # one worker computes a seed's start evaluation; another that needs it waits for it

        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cache.is_file():
                return evaluate_policy(*a, **kw)
            res = real(*a, **{**kw, "k": k})
            atomic_write_text(cache, json.dumps({**res, "_torch_rng_state": torch.get_rng_state().tolist()}))
        return res

    em.evaluate_policy = evaluate_policy


def run_one(label: str, seed: int, out: Path, *, smoke: bool, budget: int, resume: bool, qlora: bool,
            share_start: bool = True) -> None:
    """One run in this process (one torch thread): ``em.run`` into ``run_dir``, resuming if asked; then
    ``done.json`` with this process's peak RSS and wall time."""
    import torch

    from gvm_mini import em
    from gvm_mini.rundir import atomic_write_text

    torch.set_num_threads(1)
    _, opts, _ = arms_of(smoke, qlora)[label]
    cfg = study_config(opts, smoke=smoke, budget=budget, seed=seed)
    d = run_dir(out, label, seed)
    resumed = resume and (d / "config.yaml").exists()
    metrics = d / "metrics.jsonl"
    started = resumed and metrics.is_file() and any(json.loads(line).get("kind") == "eval"
                                                    for line in metrics.read_text().splitlines() if line.strip())
    if share_start and not started:
        share_start_evaluation(out / "start_eval" / f"{start_eval_key(cfg)}.json")
    t0, c0 = time.perf_counter(), _cpu_s()
    em.seed_all(em.phase_seed(cfg.seed, "init"))  # as em.run does before it builds the policy
    model, tok = em.build_policy(cfg)
    em.run(cfg, d, resume=resumed, model=model, tokenizer=tok)
    second_final_draw(cfg, model, tok, d)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (the process's peak)
    atomic_write_text(d / "done.json", json.dumps({
        "peak_rss_mib": round(peak_kib / 1024, 1), "resumed": resumed, "process_wall_s": round(time.perf_counter() - t0, 1),
        "process_cpu_s": round(_cpu_s() - c0, 1), "cpu": cpu_name()}))


def second_final_draw(cfg, model, tok, d: Path) -> None:
    """One more draw per held-out prompt from the final policy (``EVAL_K - eval_samples`` draws, a seed of
    its own), written to ``final_draws.json``: with the run's last evaluation it makes the final accuracy
    Average@EVAL_K while the evaluations between stay at ``eval_samples`` draws."""
    from gvm_mini import data, em
    from gvm_mini.evaluate import evaluate_policy
    from gvm_mini.rundir import atomic_write_text

    path = d / "final_draws.json"
    extra = EVAL_K - cfg.eval_samples
    if extra <= 0 or path.is_file():
        return
    train, test = em.load_problems(cfg)
    test = data.prompts_that_fit(cfg, tok, train, test, out=lambda *a: None)[1]
    res = evaluate_policy(model, tok, em.prompt_texts(cfg, tok, test), [p.answer for p in test], cfg.verifier, k=extra,
                          temperature=cfg.eval_temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_completion_length,
                          batch_size=cfg.sample_batch_size, seed=em.phase_seed(cfg.seed, "eval", "final draws"), cfg=cfg)
    atomic_write_text(path, json.dumps(res))


def archive_runs(out: Path, path: Path) -> int:
    """Write every finished run under ``out`` (``done.json`` present) to ``path``, gzipped JSON lines: per
    run its arm, seed and the text of :data:`RUN_FILES`, then the shared start evaluations
    (``start_eval/*.json``, so a seed's remaining arms reuse theirs). About 25 kB per run before gzip. The
    study takes hours on a CPU; committed beside the results, the archive lets ``--resume`` in another
    checkout or on another machine continue it (:func:`restore_runs`) instead of repeating it, and lets
    ``--summarize`` rebuild the tables. Returns the number of runs written."""
    import gzip
    import io

    from gvm_mini.atomic import atomic_write_bytes

    recs = []
    for done in sorted(out.glob("*/seed*/done.json"), key=lambda p: (p.parent.parent.name, int(p.parent.name[4:]))):
        d = done.parent
        recs.append({"arm": d.parent.name, "seed": int(d.name[4:]),
                     "files": {f: (d / f).read_text() for f in RUN_FILES if (d / f).is_file()}})
    starts = [{"start_eval": f.name, "text": f.read_text()} for f in sorted((out / "start_eval").glob("*.json"))]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:  # mtime 0: the same runs give the same bytes
        gz.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs + starts).encode())
    atomic_write_bytes(path, buf.getvalue())
    return len(recs)


def restore_runs(path: Path, out: Path, arms: dict, budget: int) -> list[str]:
    """Write the runs archived in ``path`` (:func:`archive_runs`) that ``out`` lacks back into their run
    directories, and the start evaluations it lacks, so that ``--resume`` skips those runs and
    ``--summarize`` reads them. A run whose archived config differs from the one this code resolves for
    its arm and seed is refused (the design changed since it ran): one SystemExit line naming the keys.
    Returns "arm seed s" for each run restored."""
    import gzip
    import shutil

    import yaml

    from gvm_mini.atomic import atomic_write_text
    from gvm_mini.config import as_dict

    if not path.is_file():
        return []
    restored = []
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        rec = json.loads(line)
        if "start_eval" in rec:
            f = out / "start_eval" / rec["start_eval"]
            if not f.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(f, rec["text"])
            continue
        lab, s = rec["arm"], rec["seed"]
        d = run_dir(out, lab, s)
        if lab not in arms or (d / "done.json").exists():
            continue
        want = as_dict(study_config(arms[lab][1], budget=budget, seed=s))
        have = yaml.safe_load(rec["files"]["config.yaml"])
        diff = sorted(k for k in set(want) | set(have) if k != "progress" and want.get(k) != have.get(k))
        if diff:
            raise SystemExit(f"realmodel_study: {path.name} holds {lab} seed {s} run with other settings than this "
                             f"code's ({', '.join(diff)}); move the archive away to start afresh")
        if d.exists() and any(d.iterdir()):  # an unfinished run of ours: the archived, finished one replaces it
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        for name, text in rec["files"].items():
            atomic_write_text(d / name, text)
        restored.append(f"{lab} seed {s}")
    return restored


# ------------------------------------------------------------------------------------------------
# the tuning step
# ------------------------------------------------------------------------------------------------


def tuning_problems(task: str, n: int):
    """``n`` problems of ``task`` from the tuning data seed, none of which is a study training or
    evaluation prompt (the study's own problems are generated and excluded by their expression)."""
    from gvm_mini import data
    from gvm_mini.em import load_problems

    cfg = study_config({"allocation": "uniform"}, task=task)
    train, test = load_problems(cfg)
    taken = {p.meta["expression"] for p in train + test}
    o = task_options(task)
    pool = data.arithmetic_problems(n + len(taken), seed=TUNE_DATA_SEED, min_operands=o["task_min_operands"],
                                    max_operands=o["task_max_operands"], max_digits=o["task_max_digits"],
                                    ops=tuple(o["task_ops"]))
    return [p for p in pool if p.meta["expression"] not in taken][:n], len(taken), test


def level_of(pb) -> str:
    d = pb.meta["digits"]
    return f"{pb.meta['operands']} operands, {d} digit{'s' if d > 1 else ''}"


def reweight(by_level: dict, mix: dict, key: str) -> float | None:
    """``by_level[level][key]`` averaged with the held-out prompts' level counts ``mix`` (levels the tuning
    split lacks are left out and the rest renormalised)."""
    known = {lvl: n for lvl, n in mix.items() if lvl in by_level}
    return sum(n * by_level[lvl][key] for lvl, n in known.items()) / sum(known.values()) if known else None


def pass_rate_table(p: np.ndarray, k: int) -> dict:
    """The per-prompt pass-rate distribution: shares at 0, strictly between, at 1; mean; a histogram
    over the k + 1 possible values."""
    p = np.asarray(p, float)
    return {"prompts": int(p.size), "k": k, "mean": float(p.mean()), "share_p0": float(np.mean(p == 0)),
            "share_between": float(np.mean((p > 0) & (p < 1))), "share_p1": float(np.mean(p == 1)),
            "sd_p": float(p.std(ddof=1)) if p.size > 1 else None,
            "histogram": {f"{j}/{k}": int(np.sum(np.isclose(p * k, j))) for j in range(k + 1)}}


def eval_se(mean: float, prompts: int, k: int) -> dict:
    """One evaluation's standard error: the binomial ``sqrt(p (1 - p) / (prompts k))`` at ``mean`` and
    at its worst (p = 0.5)."""
    return {"prompts": prompts, "k": k, "at_mean": float(np.sqrt(mean * (1 - mean) / (prompts * k))),
            "worst_case": float(np.sqrt(0.25 / (prompts * k)))}


def choose_task(rows: dict) -> str:
    """The candidate with the largest share of prompts strictly between 0 and 1, at the held-out prompts'
    mix of levels where it is known (else the tuning split's own); ties: the mean nearer 0.5."""
    def share(t):
        r = rows[t]
        return r.get("share_between_at_eval_mix", r["pass_rates"]["share_between"]) or r["pass_rates"]["share_between"]

    def mean(t):
        r = rows[t]
        return r.get("mean_at_eval_mix", r["pass_rates"]["mean"]) or r["pass_rates"]["mean"]

    return max(rows, key=lambda t: (round(share(t), 6), -abs(mean(t) - 0.5)))


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tune(tasks: list[str], prompts: int, k: int, *, mstep_probe: bool = True) -> dict:
    """The starting model on each candidate's tuning split: ``k`` draws per prompt with the study's
    sampler; per-prompt pass rates, truncation, length, tokens per second (wall and CPU); then one
    uniform RAFT++ M-step on the chosen task's first 8 prompts x 8 samples, timed (its CPU seconds per
    sample forwarded feed the study's cost estimate)."""
    import torch

    from gvm_mini import em
    from gvm_mini.mstep import initial_reference, kl_reference, m_step, make_optimizer
    from gvm_mini.rewards import get_verifier
    from gvm_mini.rollout import sample_hf, sampling_model

    torch.set_num_threads(1)
    base_cfg = study_config({"allocation": "uniform", "algorithm": "raftpp"}, task=tasks[0])
    em.seed_all(em.phase_seed(TUNE_SAMPLE_SEED, "init"))
    model, tok = em.build_policy(base_cfg)
    sampler = sampling_model(base_cfg, model)  # LoRA's B is zero: the released model, merged and cast to bf16
    verify = get_verifier(base_cfg.verifier)
    rows, rollouts = {}, {}
    for task in tasks:
        cfg = study_config({"allocation": "uniform"}, task=task)
        probs, excluded, test = tuning_problems(task, prompts)
        texts = em.prompt_texts(cfg, tok, probs)
        t, c = time.perf_counter(), _cpu_s()
        ro = sample_hf(sampler, tok, texts, [k] * len(texts), temperature=cfg.temperature, top_p=cfg.top_p,
                       max_new_tokens=cfg.max_completion_length, batch_size=cfg.sample_batch_size,
                       seed=em.phase_seed(TUNE_SAMPLE_SEED, "tune", task))
        wall, cpu = time.perf_counter() - t, _cpu_s() - c
        scores = np.array([float(verify(x, probs[i].answer)) for x, i in zip(ro.texts, ro.prompt_index)])
        p = np.bincount(ro.prompt_index, weights=scores, minlength=len(probs)) / k
        lens = np.array([len(x) for x in ro.completion_ids])
        by_level, mix = {}, {}
        for lvl in sorted({level_of(pb) for pb in probs}):
            idx = [i for i, pb in enumerate(probs) if level_of(pb) == lvl]
            by_level[lvl] = {"prompts": len(idx), "mean": float(p[idx].mean()),
                             "share_between": float(np.mean((p[idx] > 0) & (p[idx] < 1)))}
        for pb in test:
            mix[level_of(pb)] = mix.get(level_of(pb), 0) + 1
        rows[task] = {
            "options": task_options(task), "tuning_prompts": len(probs), "study_prompts_excluded": excluded,
            "pass_rates": pass_rate_table(p, k), "by_level": by_level, "eval_mix_by_level": mix,
            "mean_at_eval_mix": reweight(by_level, mix, "mean"),
            "share_between_at_eval_mix": reweight(by_level, mix, "share_between"),
            "truncated_frac": float(ro.truncated.mean()), "mean_len": float(lens.mean()),
            "accuracy_uncut": float(scores[~ro.truncated].mean()) if (~ro.truncated).any() else None,
            "generated_tokens": int(ro.num_tokens), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "tokens_per_wall_s": ro.num_tokens / wall, "tokens_per_cpu_s": ro.num_tokens / max(cpu, 1e-9),
            "load_1min": os.getloadavg()[0], "examples": [x[:160] for x in ro.texts[:4]],
        }
        rollouts[task] = (ro, scores, probs)
        print(json.dumps({key: v for key, v in rows[task].items() if key != "examples"}), flush=True)
    chosen = choose_task(rows)
    probe = None
    if mstep_probe:
        ro, scores, probs = rollouts[chosen]
        cfg = study_config({"allocation": "uniform", "algorithm": "raftpp"}, task=chosen)
        first = np.flatnonzero(ro.prompt_index < cfg.prompts_per_step)
        batch = ro.select(first[: cfg.prompts_per_step * cfg.samples_per_prompt])
        sc = scores[first[: len(batch)]]
        model.train()
        opt = make_optimizer(cfg, model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        t, c = time.perf_counter(), _cpu_s()
        st = m_step(cfg, model, opt, batch, sc, pad, kl_reference(cfg, model, initial_reference(cfg, model)),
                    em.phase_seed(TUNE_SAMPLE_SEED, "minibatch"))
        wall, cpu = time.perf_counter() - t, _cpu_s() - c
        live = len(batch) - st["dead_samples"]
        probe = {"task": chosen, "samples": len(batch), "accepted": int(sc.sum()), "forwarded": live,
                 "updates": st["updates"], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                 "cpu_s_per_forwarded_sample": cpu / max(live, 1), "load_1min": os.getloadavg()[0]}
        print(json.dumps(probe), flush=True)
    return {"rows": rows, "chosen": chosen, "mstep_probe": probe}


def cost_estimate(tuned: dict, budget: int = BUDGET, seeds: int = SEEDS, shorten: float = 0.7) -> dict:
    """Core-seconds of the study from the tuning's measured CPU throughput: sampling (training tokens,
    pilots counted, and evaluation) at the chosen task's tokens per CPU-second, plus the M-steps at the
    measured CPU seconds per forwarded sample. Two cases: every answer as long as the start's ("upper"),
    and answers after the start ``shorten`` times as long ("central"; realmodel_curve's uniform runs went
    from 43 to 30 tokens): more samples and evaluations per token budget, each evaluation cheaper. Forwarded share of the samples:
    the start's pass rate at the held-out mix for RAFT++ (the accepted ones), twice that for gvm_robust
    and knapsack (they spend on prompts with signal), the share of prompts with mixed groups for GRPO.
    Evaluations per run: the shared start (EVAL_K draws, once per seed), ``ceil(iterations / EVAL_EVERY)``
    at EVAL_K_CURVE draws and the final's extra EVAL_K - EVAL_K_CURVE draws."""
    row = tuned["rows"][tuned["chosen"]]
    rate = row["tokens_per_cpu_s"]
    upd = (tuned.get("mstep_probe") or {}).get("cpu_s_per_forwarded_sample", 1.0)
    p = row.get("mean_at_eval_mix") or row["pass_rates"]["mean"]
    between = row.get("share_between_at_eval_mix") or row["pass_rates"]["share_between"]
    forwarded = {"uniform-RAFT++": p, "uniform-RAFT++-prompt": p, "uniform-GRPO": between, "GVM-RAFT++": p,
                 "gvm_robust-RAFT++": min(1.0, 2 * p), "knapsack+history-RAFT++": min(1.0, 2 * p)}
    out = {"budget": budget, "seeds": seeds, "tokens_per_cpu_s": rate, "cpu_s_per_forwarded_sample": upd}
    for case, f in (("upper", 1.0), ("central", shorten)):
        length = row["mean_len"] * f
        samples = budget / length
        iters = samples / (STUDY["prompts_per_step"] * STUDY["samples_per_prompt"])
        evals = int(np.ceil(iters / EVAL_EVERY))
        eval_s = (evals * EVAL_K_CURVE + EVAL_K - EVAL_K_CURVE) * EVAL_PROMPTS * length / rate
        runs = {lab: budget / rate + samples * share * upd + eval_s for lab, share in forwarded.items()}
        start = seeds * EVAL_K * EVAL_PROMPTS * row["mean_len"] / rate
        total = seeds * sum(runs.values()) + start
        out[case] = {"answer_length": length, "iterations_per_uniform_run": iters, "evaluations_per_uniform_run": evals + 1,
                     "eval_core_s_per_run": eval_s, "core_s_per_run": runs, "start_evaluations_core_s": start,
                     "total_core_hours": total / 3600, "wall_hours_on_2_workers": total / 3600 / 2,
                     "qlora_core_hours": QLORA_SEEDS * runs["uniform-RAFT++"] / 3600}
    return out


def tuning_md(res: dict) -> str:
    rows = res["rows"]
    k = res["k"]
    lines = [f"# Real-model study: the design, chosen on a tuning split (`python bench/realmodel_study.py --tune "
             f"--tune-prompts {res['tune_prompts']} --tune-k {k}`)", "",
             f"Commit {res['commit']}, {res['cpu']}; SmolLM2-135M-Instruct as released (LoRA's B at zero), sampled "
             f"with the study's sampler: the merged bfloat16 copy, T = 1, top_p {res['top_p']}, completions capped at "
             f"{res['max_completion_length']} tokens, one torch thread. Tuning split: {res['tune_prompts']} problems per "
             f"candidate from data seed {TUNE_DATA_SEED}, none of them among the study's {TRAIN_PROMPTS} training and "
             f"{EVAL_PROMPTS} evaluation prompts (data seed {DATA_SEED}); {k} draws per prompt from a seed the study "
             "never uses. Verifier `last_number`; prompt \"Compute ... Give the answer as a number.\" with no system "
             "message of ours (`bench/realmodel_curve.py`'s choice).", "",
             "## Per-prompt pass rates of the starting model", "",
             f"| candidate | shape | mean p | p = 0 | 0 < p < 1 | p = 1 | sd of p_i | histogram (prompts with j of {k} right) | "
             "truncated | mean length | accuracy of uncut answers | tokens per CPU-second |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, r in rows.items():
        pr, o = r["pass_rates"], r["options"]
        shape = (f"{o['task_min_operands']}-{o['task_max_operands']} operands, 1-{o['task_max_digits']} digits, "
                 f"`{o['task_ops']}`")
        hist = " ".join(f"{v}" for v in pr["histogram"].values())
        mark = "**" if task == res["chosen"] else ""
        lines.append(f"| {mark}{task}{mark} | {shape} | {pr['mean']:.3f} | {pr['share_p0']:.0%} | {mark}{pr['share_between']:.0%}{mark} | "
                     f"{pr['share_p1']:.0%} | {pr['sd_p']:.3f} | {hist} | {r['truncated_frac']:.1%} | {r['mean_len']:.0f} | "
                     f"{fmt(r['accuracy_uncut'])} | "
                     f"{r['tokens_per_cpu_s']:.0f} |")
    return "\n".join(lines)


def fmt(x, f: str = "{:.3f}") -> str:
    return "-" if x is None else f.format(x)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def run_tune(args) -> int:
    from gvm_mini.rundir import atomic_write_text

    sys.path.insert(0, str(ROOT / "bench"))
    from _common import git_commit

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(TUNE_TASKS)
    bad = [t for t in tasks if t not in CANDIDATES]
    if bad:
        raise SystemExit(f"unknown candidate task(s) {', '.join(bad)}; choose from {', '.join(CANDIDATES)}")
    t0, commit = time.perf_counter(), git_commit()
    tuned = tune(tasks, args.tune_prompts, args.tune_k)
    cfg = study_config({"allocation": "uniform"}, task=tuned["chosen"])
    res = {**tuned, "commit": commit, "cpu": cpu_name(), "cores": os.cpu_count(), "tune_prompts": args.tune_prompts,
           "k": args.tune_k, "top_p": cfg.top_p, "max_completion_length": cfg.max_completion_length,
           "wall_s": round(time.perf_counter() - t0, 1), "load_1min_end": os.getloadavg()[0]}
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "realmodel_study_tuning.json", json.dumps(res, indent=1))  # raw first: the md is rebuilt from it
    res.update(design(res))
    atomic_write_text(out / "realmodel_study_tuning.json", json.dumps(res, indent=1))
    atomic_write_text(out / "realmodel_study_tuning.md", tuning_md(res))
    print(tuning_md(res))
    return 0


def design(res: dict) -> dict:
    """What the tuning fixes, from its measurements and the constants above: the task, the evaluation and
    its standard error, the training settings and the study's cost."""
    from gvm_mini.em import load_problems

    row = res["rows"][res["chosen"]]
    mean = row["pass_rates"]["mean"]

    # the tuning split stays disjoint from the study's prompts as the constants stand now
    train, test = load_problems(study_config({"allocation": "uniform"}, task=res["chosen"]))
    tune_probs = tuning_problems(res["chosen"], res["tune_prompts"])[0]
    study_expr = {p.meta["expression"] for p in train + test}
    mix = {}
    for pb in test:
        mix[level_of(pb)] = mix.get(level_of(pb), 0) + 1
    reweighted = reweight(row["by_level"], mix, "mean")
    m = mean if reweighted is None else reweighted
    se, se_curve = eval_se(m, EVAL_PROMPTS, EVAL_K), eval_se(m, EVAL_PROMPTS, EVAL_K_CURVE)
    cost = cost_estimate(res)
    samples = BUDGET / row["mean_len"]
    return {"design": {
        "task": res["chosen"], "task_options": task_options(res["chosen"]), "study_task_in_script": STUDY_TASK,
        "train_prompts": TRAIN_PROMPTS, "eval_prompts": EVAL_PROMPTS, "eval_k": EVAL_K, "eval_se": se, "eval_k_curve": EVAL_K_CURVE, "eval_se_curve": se_curve,
        "eval_se_ok": se["worst_case"] <= 0.03, "eval_mix_by_level": mix, "tuning_mean_reweighted_to_eval_mix": reweighted,
        "tuning_split_disjoint": not any(p.meta["expression"] in study_expr for p in tune_probs), "learning_rate": LEARNING_RATE, "budget_tokens": BUDGET,
        "eval_every_iterations": EVAL_EVERY, "seeds": SEEDS, "qlora_seeds": QLORA_SEEDS,
        "epochs_at_start_length": samples / (TRAIN_PROMPTS * STUDY["samples_per_prompt"]),
        "uniform_seed_spread": "to be measured by the first study run",
        "settings": {key: v for key, v in {**RC.BASE, **STUDY}.items() if key not in ("iterations", "progress")},
        "cost": cost}}


def tuning_md(res: dict) -> str:
    rows, k = res["rows"], res["k"]
    lines = [f"# Real-model study: the design, chosen on a tuning split", "",
             f"`python bench/realmodel_study.py --tune --tune-prompts {res['tune_prompts']} --tune-k {k}` at commit "
             f"{res['commit']} ({res['cpu']}, {res['cores']} cores; {res['wall_s'] / 60:.0f} min). SmolLM2-135M-Instruct as "
             f"released (LoRA's B starts at zero), sampled with the study's sampler: the merged bfloat16 copy, T = 1, "
             f"top_p {res['top_p']}, completions capped at {res['max_completion_length']} tokens, one torch thread. "
             f"Tuning split: {res['tune_prompts']} problems per candidate from data seed {TUNE_DATA_SEED}, none of them "
             f"among the first {next(iter(rows.values()))['study_prompts_excluded']} problems of the study's data seed "
             f"{DATA_SEED} (which hold its {TRAIN_PROMPTS} training and {EVAL_PROMPTS} evaluation prompts); "
             f"{k} draws per prompt from a seed the study never uses. Verifier `last_number`; the prompt \"Compute ... "
             "Give the answer as a number.\" with no system message of ours (`bench/realmodel_curve.py`'s choice).", "",
             "## Per-prompt pass rates of the starting model", "",
             f"| candidate | shape | mean p | p = 0 | 0 < p < 1 | p = 1 | sd of p_i | prompts with 0, 1, ..., {k} of {k} right | "
             "at the held-out mix of levels: mean p / 0 < p < 1 | truncated | mean length (tokens) | accuracy of the uncut answers | "
             "tokens per CPU-second |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, r in rows.items():
        pr, o = r["pass_rates"], r["options"]
        shape = f"{o['task_min_operands']}-{o['task_max_operands']} operands, 1-{o['task_max_digits']} digits, `{o['task_ops']}`"
        b = "**" if task == res["chosen"] else ""
        lines.append(f"| {b}{task}{b} | {shape} | {pr['mean']:.3f} | {pr['share_p0']:.0%} | {b}{pr['share_between']:.0%}{b} | "
                     f"{pr['share_p1']:.0%} | {fmt(pr['sd_p'])} | {' / '.join(str(v) for v in pr['histogram'].values())} | "
                     f"{fmt(r.get('mean_at_eval_mix'))} / {b}{fmt(r.get('share_between_at_eval_mix'), '{:.0%}')}{b} | "
                     f"{r['truncated_frac']:.1%} | {r['mean_len']:.0f} | {fmt(r['accuracy_uncut'])} | {r['tokens_per_cpu_s']:.0f} |")
    lines += ["", "By level (each problem draws its operand count and digit count uniformly; a level with few distinct "
              "problems, such as two one-digit operands, is mostly taken by the study's prompts, so the tuning split holds "
              "fewer of them than the held-out set: the column above reweights the levels to the held-out mix):", "",
              "| candidate | level | tuning prompts | mean p | 0 < p < 1 | held-out prompts |", "|---|---|---|---|---|---|"]
    for task, r in rows.items():
        for lvl in sorted(set(r["by_level"]) | set(r.get("eval_mix_by_level") or {})):
            v = r["by_level"].get(lvl)
            lines.append(f"| {task} | {lvl} | {v['prompts'] if v else 0} | {fmt(v and v['mean'])} | "
                         f"{fmt(v and v['share_between'], '{:.0%}')} | {(r.get('eval_mix_by_level') or {}).get(lvl, 0)} |")
    lines += ["", f"Chosen: **{res['chosen']}**, the candidate with the largest share of prompts whose pass rate is "
              "strictly between 0 and 1 at the held-out mix of levels (the rule `choose_task`; ties would go to the mean "
              "nearer 0.5). With "
              f"{k} draws a prompt's observed rate is 0 or 1 more often than its true rate, so the shares at the "
              "extremes are upper bounds on the true ones."]
    others = [t for t in rows if t != res["chosen"]]
    if others:
        share = lambda t: rows[t].get("share_between_at_eval_mix") or rows[t]["pass_rates"]["share_between"]  # noqa: E731
        second = max(others, key=share)
        c, o = rows[res["chosen"]], rows[second]
        lines += ["", f"The runner-up is {second} ({share(second):.0%} against {share(res['chosen']):.0%} at the held-out mix, "
                  f"{o['pass_rates']['share_between']:.0%} against {c['pass_rates']['share_between']:.0%} on the tuning split "
                  "itself); a level the study's prompts mostly take (one-digit pairs) rests on few tuning prompts, so the "
                  "reweighted column is the less certain one. The held-out mix in these tables is the one at the tune "
                  f"(the {EVAL_PROMPTS} problems after the first {c['study_prompts_excluded'] - EVAL_PROMPTS}); the design "
                  f"below keeps {TRAIN_PROMPTS} training prompts, so its held-out set is the generator's problems "
                  f"{TRAIN_PROMPTS + 1} to {TRAIN_PROMPTS + EVAL_PROMPTS}, with the mix given there."]
    d = res.get("design")
    if not d:
        return "\n".join(lines) + "\n"
    se, se_curve, probe = d["eval_se"], d["eval_se_curve"], res.get("mstep_probe") or {}
    cost, up, mid = d["cost"], d["cost"]["upper"], d["cost"]["central"]
    st = d["settings"]
    p0 = d["tuning_mean_reweighted_to_eval_mix"] if d.get("tuning_mean_reweighted_to_eval_mix") is not None else rows[d["task"]]["pass_rates"]["mean"]
    need = 0.03 * np.sqrt(d["seeds"])
    lines += ["", "## The design", "",
              "The script's constants (`STUDY_TASK`, `TRAIN_PROMPTS`, `EVAL_PROMPTS`, `EVAL_K`, `LEARNING_RATE`, "
              "`BUDGET`, `EVAL_EVERY`, `SEEDS`), fixed by the commit that adds this file, before any comparison run; "
              "the study refuses to run a task other than the one chosen here.", "",
              f"- **Task**: `{d['task']}` ({', '.join(f'{key}: {v}' for key, v in d['task_options'].items())}), "
              f"{d['train_prompts']} training prompts: the budget is about {d['epochs_at_start_length']:.1f} epochs at the "
              "start's answer length (more as answers shorten), so the history-based rules see every prompt again. "
              "The held-out prompts by level: " + ", ".join(f"{lvl} {n}" for lvl, n in d["eval_mix_by_level"].items())
              + f"; the tuning split's pass rate reweighted to that mix: {p0:.3f} (the expected start accuracy). "
              f"Tuning split disjoint from the study's prompts: {'yes' if d['tuning_split_disjoint'] else 'NO'}.",
              f"- **Evaluation**: {d['eval_prompts']} held-out prompts at T = 1, top_p {st['top_p']}, the same draws at every "
              f"evaluation. The start (shared by the arms of a seed) and the final budget are Average@{d['eval_k']}: binomial "
              f"SE of one evaluation sqrt(p (1 - p) / ({d['eval_prompts']} x {d['eval_k']})) = **{se['at_mean']:.3f}** at the "
              f"expected start mean, at most **{se['worst_case']:.3f}** at any mean (goal <= 0.03: "
              f"{'met' if d['eval_se_ok'] else 'NOT met'}). Between them, every {d['eval_every_iterations']} iterations, "
              f"Average@{d['eval_k_curve']} for the curve (SE {se_curve['at_mean']:.3f} at the start mean, at most "
              f"{se_curve['worst_case']:.3f}): about {up['evaluations_per_uniform_run']}-{mid['evaluations_per_uniform_run']} "
              "evaluations per uniform run, counting the start and the final.",
              f"- **Training**: learning rate **{d['learning_rate']:g}** (proposed, not tuned here), LoRA r {st['lora_r']} on "
              f"all linear layers, {st['prompts_per_step']} prompts x {st['samples_per_prompt']} samples per E-step "
              f"(one sampling batch of {st['sample_batch_size']}), mini-batches of {st['mini_batch_size']}, N' = "
              f"{st['num_pilot']} pilots for the paper's rule, no KL; **{d['budget_tokens']:,} generated tokens per run**, "
              f"pilots counted; **{d['seeds']} seeds** ({d['qlora_seeds']} for QLoRA). Sampling (pilots, rollouts, "
              "evaluation) with the merged bfloat16 copy of the policy (`sample_dtype: bfloat16`); the trainer stays "
              "float32 and recomputes pi_old, so the update is the float32 update of the samples drawn, and the samples "
              "come from the bfloat16 rounding of the policy (its log-probs a few hundredths of a nat per token from the "
              "float32 ones: bench/README, CPU samplers).",
              f"- **Uniform's seed-to-seed spread at the final budget: {d['uniform_seed_spread']}** (no training run in the "
              f"tuning step). A paired SE of at most 0.03 with {d['seeds']} seeds needs the paired differences' standard "
              f"deviation under {need:.3f}; two independent final evaluations contribute "
              f"{np.sqrt(2) * se['at_mean']:.3f} of it at the start's mean, which leaves about "
              f"{np.sqrt(max(need ** 2 - 2 * se['at_mean'] ** 2, 0)):.3f} for the training seeds. The study's md reports "
              "uniform RAFT++'s standard deviation over seeds; if the first seeds show more, more seeds (`--seeds`, the "
              "SE falls as 1/sqrt(seeds)) or a lower learning rate.",
              "- **How the task was found**: a first `--tune` with the +- shapes and two harder ones (products, three "
              "two-digit operands) was stopped after the first two candidates left two-thirds of their tuning prompts "
              "unsolved in 8 draws; the addition-only shapes were added and every candidate run again (the +- rows "
              "above are the same numbers: same prompts and seeds).", "",
              "## What the study will cost (estimate from this run's measurements)", "",
              f"Sampling at **{cost['tokens_per_cpu_s']:.0f} tokens per CPU-second** (the chosen task, batches of "
              f"{st['sample_batch_size']}, one thread; 1-minute load {rows[d['task']]['load_1min']:.1f} on {res['cores']} cores "
              "while it ran: other jobs shared the machine)"
              + (f"; one uniform RAFT++ M-step of {probe['samples']} samples forwarded {probe['forwarded']} (the accepted "
                 f"ones) in {probe['cpu_s']:.0f} CPU-seconds, **{probe['cpu_s_per_forwarded_sample']:.2f} CPU-s per "
                 "forwarded sample** (the float32 recompute of pi_old and the updates)" if probe else "") + ".", "",
              "| arm | core-seconds per run: central (answers as long as the start's) |", "|---|---|"]
    for lab in up["core_s_per_run"]:
        lines.append(f"| {lab} | {mid['core_s_per_run'][lab]:,.0f} ({up['core_s_per_run'][lab]:,.0f}) |")
    lines += ["", f"**Total for the six arms x {d['seeds']} seeds: about {mid['total_core_hours']:.1f} core-hours** "
              f"(about {mid['wall_hours_on_2_workers']:.1f} h with `--workers 2` on two cores); "
              f"{up['total_core_hours']:.1f} if no answer shortens (shorter answers mean more samples and evaluations per "
              "token budget, each evaluation cheaper: the two nearly cancel); the "
              f"{d['seeds']} shared start evaluations are "
              f"{up['start_evaluations_core_s']:,.0f} core-s of it. `--qlora` adds about {mid['qlora_core_hours']:.1f} "
              "core-hours at LoRA's speed (4-bit matmuls on a CPU are slower: a lower bound). Answer lengths: the "
              f"start's {up['answer_length']:.0f} tokens; central: answers after the start "
              f"{mid['answer_length']:.0f} tokens (realmodel_curve's uniform runs shortened theirs by about 0.7). "
              "Forwarded samples: the start's pass rate for RAFT++, twice that for gvm_robust and knapsack, the share "
              "of prompts with mixed groups for GRPO.", "",
              "## Command for the study", "",
              "    python bench/realmodel_study.py --workers 2                   # the six arms x 5 seeds",
              "    python bench/realmodel_study.py --workers 2 --qlora --resume  # adds uniform RAFT++ with QLoRA, 3 seeds",
              "    python bench/realmodel_study.py --workers 2 --resume          # after an interruption", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# the summary
# ------------------------------------------------------------------------------------------------


def paired_difference(arm: dict, base: dict) -> dict:
    """The paired difference ``arm - base`` over the seeds both have (``{seed: final accuracy}`` each):
    its mean, and its standard error ``sd(d) / sqrt(n)`` (allocation_study.clustered_se with one
    cluster: one starting model, the seeds are the independent pairs). SE None for one pair."""
    seeds = sorted(set(arm) & set(base))
    d = np.array([arm[s] - base[s] for s in seeds], float)
    if not seeds:
        return {"mean": None, "se": None, "n": 0, "seeds": []}
    return {"mean": float(d.mean()), "se": AS.clustered_se(d, np.zeros(d.size, int)), "n": len(seeds), "seeds": seeds,
            "per_seed": d.round(4).tolist()}


def mean_se(xs) -> dict:
    xs = np.array([x for x in xs if x is not None], float)
    if not xs.size:
        return {"mean": None, "se": None, "sd": None, "n": 0}
    sd = float(xs.std(ddof=1)) if xs.size > 1 else None
    return {"mean": float(xs.mean()), "se": sd / np.sqrt(xs.size) if sd is not None else None, "sd": sd, "n": int(xs.size)}


#: held-out prompts binned by the starting model's pass rate (pooled over every seed's start evaluation)
DIFFICULTY_BINS = [("never right at the start (p0 = 0)", lambda p: p == 0), ("0 < p0 <= 1/3", lambda p: (p > 0) & (p <= 1 / 3)),
                   ("1/3 < p0 <= 2/3", lambda p: (p > 1 / 3) & (p <= 2 / 3)), ("2/3 < p0 < 1", lambda p: (p > 2 / 3) & (p < 1)),
                   ("always right at the start (p0 = 1)", lambda p: p == 1)]


def read_run(d: Path, budget: int) -> dict:
    """One run: realmodel_curve.summarize_run's curve and accounting, plus the evaluations' per-prompt
    scores, the M-step samples and done.json's CPU time. Its final accuracy is the last evaluation's (at
    the final budget: a run stops after the M-step that crosses it and is evaluated there)."""
    from gvm_mini.plots import read_jsonl

    r = RC.summarize_run(d)
    recs = read_jsonl(d / "metrics.jsonl")
    evals = [x for x in recs if x["kind"] == "eval"]
    extra = json.loads((d / "final_draws.json").read_text()) if (d / "final_draws.json").is_file() else None
    if evals and extra:  # the final evaluation: the last evaluation's draws and the extra ones, per prompt
        k0, k1 = evals[-1]["k"], extra["k"]
        per = ((k0 * np.asarray(evals[-1]["per_problem"]) + k1 * np.asarray(extra["per_problem"])) / (k0 + k1)).round(4).tolist()
        evals[-1] = {**evals[-1], "per_problem": per, "avg_at_k": float(np.mean(per)), "k": k0 + k1,
                     "truncated_frac": (k0 * evals[-1]["truncated_frac"] + k1 * extra["truncated_frac"]) / (k0 + k1),
                     "eval_tokens": evals[-1]["eval_tokens"] + extra["eval_tokens"]}
        r["curve"][-1].update(acc=evals[-1]["avg_at_k"], eval_truncated_frac=evals[-1]["truncated_frac"],
                              eval_mean_len=evals[-1]["eval_tokens"] / max(evals[-1]["problems"] * (k0 + k1), 1))
    steps = [x for x in recs if x["kind"] == "step"]
    last = recs[-1] if recs else {}
    done = json.loads((d / "done.json").read_text()) if (d / "done.json").exists() else {}
    r.update(start_per_problem=evals[0]["per_problem"] if evals else None,
             final_per_problem=evals[-1]["per_problem"] if evals else None,
             final_acc=evals[-1]["avg_at_k"] if evals else None, final_tokens=evals[-1]["tokens"] if evals else None,
             eval_prompts=evals[-1]["problems"] if evals else None, eval_k=evals[-1]["k"] if evals else None,
             shared_start=bool(evals and evals[0].get("shared_start")),
             mstep_samples=int(sum(x["step_samples"] for x in steps)), pilot_samples=last.get("pilot_samples"),
             reused_pilot_samples=int(sum(x.get("pilot_reused") or 0 for x in steps)),
             process_cpu_s=done.get("process_cpu_s"), process_wall_s=done.get("process_wall_s"), cpu=done.get("cpu"),
             final_train_truncated=steps[-1]["truncated_frac"] if steps else None,
             final_train_mean_len=steps[-1]["step_tokens"] / max(steps[-1]["step_samples"], 1) if steps else None)
    return r


def on_grid(run: dict, grid: np.ndarray, budget: int) -> np.ndarray:
    """A run's accuracy curve on ``grid`` (linear in tokens between evaluations; the last evaluation,
    a little past the budget, is read as the accuracy at the budget)."""
    x = np.array([min(p["tokens"], budget) for p in run["curve"]], float)
    y = np.array([p["acc"] for p in run["curve"]], float)
    return np.interp(grid, x, y)


def summarize(out: Path, arms: dict, budget: int) -> dict:
    """Per arm: seeds, final accuracy, paired differences, tokens to the baseline's final accuracy,
    per-difficulty breakdown, truncation, length, wall time, peak RSS and both token and M-step accounting."""
    runs = {}
    for lab in arms:
        dirs = sorted((x for x in (out / lab).glob("seed*") if (x / "done.json").exists()), key=lambda x: int(x.name[4:]))
        if dirs:
            runs[lab] = {int(x.name[4:]): read_run(x, budget) for x in dirs}
    grid = np.linspace(0.0, budget, 151)
    # difficulty: the starting model's pass rate per held-out prompt, pooled over every seed's start evaluation
    starts = {}
    for lab, rs in runs.items():
        if arms[lab][1].get("load_in_4bit"):
            continue
        for s, r in rs.items():
            if r["start_per_problem"] is not None:
                starts.setdefault(s, r["start_per_problem"])
    p0 = np.mean([starts[s] for s in sorted(starts)], axis=0) if starts else None
    res = {}
    for lab, rs in runs.items():
        rule, opts, _ = arms[lab]
        seeds = sorted(rs)
        finals = {s: rs[s]["final_acc"] for s in seeds}
        row = {"rule": rule, "options": opts, "weighting": AS.weighting_of(opts["allocation"], opts), "seeds": seeds,
               "eval_prompts": rs[seeds[0]]["eval_prompts"], "eval_k": rs[seeds[0]]["eval_k"],
               "final_acc": mean_se(finals.values()), "final_acc_per_seed": finals,
               "start_acc": mean_se(rs[s]["start_acc"] for s in seeds),
               "final_tokens": mean_se(rs[s]["final_tokens"] for s in seeds)}
        row["eval_truncated"] = {"start": mean_se(rs[s]["curve"][0]["eval_truncated_frac"] for s in seeds),
                                 "final": mean_se(rs[s]["curve"][-1]["eval_truncated_frac"] for s in seeds)}
        row["eval_answer_length"] = {"start": mean_se(rs[s]["curve"][0]["eval_mean_len"] for s in seeds),
                                     "final": mean_se(rs[s]["curve"][-1]["eval_mean_len"] for s in seeds)}
        row["train_truncated_last_step"] = mean_se(rs[s]["final_train_truncated"] for s in seeds)
        row["train_answer_length_last_step"] = mean_se(rs[s]["final_train_mean_len"] for s in seeds)
        row["accounting"] = {key: mean_se(rs[s][src] for s in seeds) for key, src in [
            ("generated_tokens", "tokens"), ("pilot_tokens", "pilot_tokens"), ("generated_samples", "samples"),
            ("pilot_samples", "pilot_samples"), ("mstep_samples", "mstep_samples"), ("reused_pilot_samples", "reused_pilot_samples"),
            ("forwarded_samples", "live_samples"), ("updates", "updates"), ("m_steps", "m_steps"), ("iterations", "iterations")]}
        row["accounting"]["evaluations"] = mean_se(len(rs[s]["curve"]) for s in seeds)
        row["runs"] = {s: {"final_acc": r["final_acc"], "start_acc": r["start_acc"], "tokens": r["tokens"],
                           "pilot_tokens": r["pilot_tokens"], "mstep_samples": r["mstep_samples"], "updates": r["updates"],
                           "evaluations": len(r["curve"]), "wall_train_s": r["wall_train_s"], "wall_total_s": r["wall_total_s"],
                           "process_cpu_s": r["process_cpu_s"], "peak_rss_mib": r["peak_rss_mib"],
                           "sampling_tokens_per_s": r["sampling_tokens_per_s"], "shared_start": r["shared_start"],
                           "cpu": r["cpu"]}
                       for s, r in rs.items()}
        row["wall_total_s"] = mean_se(r["wall_total_s"] for r in rs.values())
        row["peak_rss_mib"] = mean_se(r["peak_rss_mib"] for r in rs.values())
        row["curves"] = {s: [[p["tokens"], p["acc"]] for p in r["curve"]] for s, r in rs.items()}
        row["curve"] = RC.mean_curve(list(rs.values()))
        row["_grid"] = np.array([on_grid(rs[s], grid, budget) for s in seeds])
        if p0 is not None:
            row["_bins"] = {}
            for name, test in DIFFICULTY_BINS:
                idx = np.flatnonzero(test(p0))
                if idx.size:
                    row["_bins"][name] = {s: float(np.mean(np.asarray(rs[s]["final_per_problem"])[idx])) for s in seeds}
        res[lab] = row
    for lab, row in res.items():
        base = UNIFORM_ARM[AS.UNIFORM_OF[row["weighting"]]]
        if base in res:
            same = paired_difference(row["final_acc_per_seed"], res[base]["final_acc_per_seed"])
            row["vs_uniform_same_weighting"] = {"baseline": base, **same, **({"is_baseline": True} if base == lab else {})}
            if base != lab and len(row["seeds"]) > 1:
                common = sorted(set(row["seeds"]) & set(res[base]["seeds"]))
                ia = [row["seeds"].index(s) for s in common]
                ib = [res[base]["seeds"].index(s) for s in common]
                with np.errstate(invalid="ignore"):  # resamples that never reach the target count as ratio inf
                    t = AS.tokens_to_target(grid, row["_grid"][ia], res[base]["_grid"][ib], np.zeros(len(common), int))
                row["tokens_to_baseline_final"] = {"baseline": base, "target": float(res[base]["_grid"][ib, -1].mean()),
                                                   "tokens": t["tokens_to_uniform_final"], "ratio": t["token_ratio"],
                                                   "ratio_ci95": t["token_ratio_ci95"]}
        if "uniform-RAFT++" in res:
            row["vs_uniform_tokens"] = {"baseline": "uniform-RAFT++",
                                        **paired_difference(row["final_acc_per_seed"], res["uniform-RAFT++"]["final_acc_per_seed"])}
        if p0 is not None:
            row["by_difficulty"] = {}
            for name, test in DIFFICULTY_BINS:
                if name not in row["_bins"]:
                    continue
                b = {"prompts": int(np.sum(test(p0))), "start_pass_rate": float(p0[test(p0)].mean()),
                     "final": mean_se(row["_bins"][name].values())}
                if base in res and base != lab:
                    b["vs_uniform_same_weighting"] = paired_difference(row["_bins"][name], res[base]["_bins"][name])
                row["by_difficulty"][name] = b
    for row in res.values():
        row.pop("_grid", None)
        row.pop("_bins", None)
    spread = res.get("uniform-RAFT++", {}).get("final_acc", {}).get("sd")
    cpus = sorted({r["cpu"] or "not recorded" for rs in runs.values() for r in rs.values()})
    return {"budget_tokens": budget, "arms": res, "uniform_seed_sd": spread, "run_cpus": cpus,
            "start_pass_rate": None if p0 is None else pass_rate_table(p0, max(len(starts), 1) * (res[next(iter(res))]["eval_k"] or 1))}


def _pm(st: dict, f: str = "{:.3f}", sign: bool = False) -> str:
    if not st or st.get("mean") is None:
        return "-"
    m = (f.replace("{:", "{:+") if sign else f).format(st["mean"])
    return m + (f" ± {f.format(st['se'])}" if st.get("se") is not None else "")


def study_md(summary: dict, smoke: bool) -> str:
    d = summary["design"]
    arms = summary["arms"]
    lines = [f"# Real model: does allocation help SmolLM2-135M-Instruct + LoRA? (`{summary['command']}`)", "",
             f"Commit {summary['commit']}, {summary['cpu']}. Task `{d['task']}` ({', '.join(f'{k}: {v}' for k, v in d['task_options'].items())}), "
             f"{d['train_prompts']} training prompts, {d['eval_prompts']} held-out prompts, Average@{d['eval_k']} at the start and at "
             f"the final budget (Average@{d.get('eval_k_curve', d['eval_k'])} between) at T = 1 "
             f"(top_p {d['top_p']}), {summary['budget_tokens']:,} generated tokens per run with pilots counted, learning rate "
             f"{d['learning_rate']:g}; the design was fixed by `--tune` (realmodel_study_tuning.md) before any comparison ran. "
             "Final = the last evaluation, at the final budget. ± is the standard error over seeds; differences are paired "
             "by seed. Uniform RAFT++'s seed-to-seed standard deviation at the final budget: "
             f"**{fmt(summary.get('uniform_seed_sd'))}**. The runs ran on: {'; '.join(summary.get('run_cpus') or ['-'])}.", ""]
    want = {lab: QLORA_SEEDS if r["options"].get("load_in_4bit") else d["seeds"] for lab, r in arms.items()}
    short = {lab: len(r["seeds"]) for lab, r in arms.items() if len(r["seeds"]) < want[lab]}
    if short and not smoke:
        lines += ["**Partial results**: of the design's seeds, " + ", ".join(f"{lab} has {n} of {want[lab]}" for lab, n in short.items())
                  + " (the study continues with `--resume`, from the runs archived in realmodel_study_runs.jsonl.gz).", ""]
    lines += [
             "| arm | M-step weighting | seeds | final accuracy | vs uniform, same weighting | vs uniform, token mean | "
             "tokens to that uniform's final: ratio [95% CI] | test truncated start → final | test answer length start → final |",
             "|---|---|---|---|---|---|---|---|---|"]
    for lab, r in arms.items():
        same = r.get("vs_uniform_same_weighting") or {}
        same_s = "(baseline)" if same.get("is_baseline") else (
            f"**{_pm(same, sign=True)}** (vs {same['baseline']})" if same.get("mean") is not None else "-")
        tok = r.get("vs_uniform_tokens") or {}
        tok_s = "-" if lab == "uniform-RAFT++" else _pm(tok, sign=True)
        t = r.get("tokens_to_baseline_final")
        if not t:
            reach = "-"
        elif t["tokens"] is None:
            reach = "not reached"
        else:
            reach = fmt(t["ratio"], "{:.2f}x")
            if t.get("ratio_ci95"):
                reach += " [" + ", ".join("not reached" if v is None else f"{v:.2f}" for v in t["ratio_ci95"]) + "]"
        et, el = r["eval_truncated"], r["eval_answer_length"]
        lines.append(f"| {lab} | {r['weighting']} | {len(r['seeds'])} | {_pm(r['final_acc'])} | {same_s} | {tok_s} | {reach} | "
                     f"{fmt(et['start']['mean'], '{:.1%}')} → {fmt(et['final']['mean'], '{:.1%}')} | "
                     f"{fmt(el['start']['mean'], '{:.0f}')} → {fmt(el['final']['mean'], '{:.0f}')} |")
    lines += ["", "## Accounting: generated tokens and the paper's M-step samples (means over seeds)", "",
              "| arm | generated tokens (pilot) | generated samples (pilot) | samples the M-steps used (reused pilots) | "
              "forwarded (with signal) | updates | M-steps | evaluations |", "|---|---|---|---|---|---|---|---|"]
    for lab, r in arms.items():
        a = r["accounting"]
        m = lambda key, f="{:,.0f}": fmt(a[key]["mean"], f)  # noqa: E731
        lines.append(f"| {lab} | {m('generated_tokens')} ({m('pilot_tokens')}) | {m('generated_samples')} ({m('pilot_samples')}) | "
                     f"{m('mstep_samples')} ({m('reused_pilot_samples')}) | {m('forwarded_samples')} | {m('updates')} | "
                     f"{m('m_steps')} | {m('evaluations', '{:.1f}')} |")
    bins = [name for name, _ in DIFFICULTY_BINS if any(name in (r.get("by_difficulty") or {}) for r in arms.values())]
    if bins:
        lines += ["", "## By difficulty: held-out prompts binned by the starting model's pass rate p0 (every seed's start "
                  "evaluation pooled); final accuracy in the bin, and in brackets the paired difference against uniform "
                  "with the same weighting", "",
                  "| arm | " + " | ".join(f"{b} ({next(r['by_difficulty'][b]['prompts'] for r in arms.values() if b in (r.get('by_difficulty') or {}))} prompts)"
                                         for b in bins) + " |", "|---|" + "---|" * len(bins)]
        for lab, r in arms.items():
            cells = []
            for b in bins:
                v = (r.get("by_difficulty") or {}).get(b)
                if not v:
                    cells.append("-")
                    continue
                c = _pm(v["final"])
                if v.get("vs_uniform_same_weighting", {}).get("mean") is not None:
                    c += f" [{_pm(v['vs_uniform_same_weighting'], sign=True)}]"
                cells.append(c)
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += ["", "## Per run", "", "| arm | seed | start | final | tokens (pilot) | M-step samples | updates | evaluations | "
              "wall | CPU time | peak RSS | sampling tokens/s | CPU |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lab, r in arms.items():
        for s, x in r["runs"].items():
            lines.append(f"| {lab} | {s} | {fmt(x['start_acc'])}{' (shared)' if x['shared_start'] else ''} | {fmt(x['final_acc'])} | "
                         f"{x['tokens']:,} ({x['pilot_tokens']:,}) | {x['mstep_samples']:,} | {x['updates']} | {x['evaluations']} | "
                         f"{fmt(x['wall_total_s'], '{:.0f}')} s | {fmt(x['process_cpu_s'], '{:.0f}')} s | "
                         f"{fmt(x['peak_rss_mib'], '{:,.0f}')} MiB | {fmt(x['sampling_tokens_per_s'], '{:.0f}')} | "
                         f"{x.get('cpu') or '-'} |")
    if smoke:
        lines += ["", "Smoke run: a handful of prompts and a tiny budget; it checks the machinery, not the question."]
    return "\n".join(lines) + "\n"


COLORS = {"uniform-RAFT++": "tab:blue", "uniform-RAFT++-prompt": "tab:cyan", "uniform-GRPO": "tab:green",
          "GVM-RAFT++": "tab:red", "gvm_robust-RAFT++": "tab:purple", "knapsack+history-RAFT++": "tab:olive",
          "uniform-RAFT++-QLoRA": "tab:gray"}


def figure(summary: dict, path: Path) -> None:
    """Left: accuracy against generated tokens, mean over seeds with a ± 1 SE band. Right: each arm's
    paired difference against uniform with the same weighting, ± 1 SE (thick) and ± 2 SE (thin), beside
    a ± 0.05 band: the effect the study is sized to see."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gvm_mini.rundir import atomic_savefig

    d = summary["design"]
    arms = summary["arms"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.25, 1]})
    for lab, r in arms.items():
        c = COLORS.get(lab)
        x = np.array([p["tokens"] / 1000 for p in r["curve"]])
        m = np.array([p["acc"]["mean"] for p in r["curve"]], float)
        sd = np.array([p["acc"]["std"] or 0.0 for p in r["curve"]], float)
        n = np.array([max(p["acc"]["n"], 1) for p in r["curve"]], float)
        ax.plot(x, m, color=c, lw=1.8, label=f"{lab} ({len(r['seeds'])})")
        ax.fill_between(x, m - sd / np.sqrt(n), m + sd / np.sqrt(n), color=c, alpha=0.18, lw=0)
    ax.set_xlabel("generated tokens (thousands), pilots counted")
    ax.set_ylabel(f"held-out accuracy (Average@{d['eval_k']} at start and end, @{d.get('eval_k_curve', d['eval_k'])} between)", fontsize=9)
    ax.set_title(f"accuracy on {d['eval_prompts']} held-out prompts: mean over seeds, band ± 1 SE", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", title="arm (seeds)", title_fontsize=8)
    rows = []
    for lab, r in arms.items():
        same, tok = r.get("vs_uniform_same_weighting") or {}, r.get("vs_uniform_tokens") or {}
        if same.get("mean") is not None and not same.get("is_baseline"):
            rows.append((lab, same))
        elif same.get("is_baseline") and lab != tok.get("baseline") and tok.get("mean") is not None:
            rows.append((lab, {**tok, "baseline": f"{tok['baseline']} (the weighting alone)"}))
    bx.axvspan(-0.05, 0.05, color="0.9", zorder=0, label="± 0.05")
    bx.axvline(0, color="k", lw=0.8)
    for i, (lab, v) in enumerate(rows):
        se = v["se"] or 0.0
        bx.errorbar(v["mean"], i, xerr=2 * se, fmt="none", ecolor=COLORS.get(lab, "k"), elinewidth=1, capsize=3)
        bx.errorbar(v["mean"], i, xerr=se, fmt="o", color=COLORS.get(lab, "k"), elinewidth=3, ms=6)
        label = f"{v['mean']:+.3f} ± {se:.3f}" if v["se"] is not None else f"{v['mean']:+.3f} (one seed: no SE)"
        bx.annotate(label, (v["mean"], i), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    bx.set_yticks(range(len(rows)))
    bx.set_yticklabels([f"{lab}\nvs {v['baseline']}" for lab, v in rows], fontsize=8)
    bx.set_ylim(-0.7, len(rows) - 0.3)
    bx.invert_yaxis()
    bx.set_xlabel("final accuracy: arm minus uniform with its M-step weighting")
    bx.set_title("paired difference: ± 1 SE (thick), ± 2 SE (thin)", fontsize=10)
    bx.grid(axis="x", alpha=0.3)
    bx.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"SmolLM2-135M-Instruct + LoRA, task {d['task']}, {summary['budget_tokens']:,} generated tokens per run", fontsize=11)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# the study's driver
# ------------------------------------------------------------------------------------------------


def run_study(args, ap) -> int:
    from gvm_mini.rundir import atomic_write_text

    from _common import git_commit

    smoke = args.smoke
    arms = arms_of(smoke, args.qlora)
    budget = args.budget or (SMOKE_BUDGET if smoke else BUDGET)
    out = args.out or (ROOT / "runs" / ("realmodel_study-smoke" if smoke else "realmodel_study"))
    out.mkdir(parents=True, exist_ok=True)
    labels = list(arms) if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in labels if a not in arms]
    if bad:
        ap.error(f"unknown arm(s) {', '.join(bad)}; choose from {', '.join(arms)}")
    if args.arm is not None:  # worker
        run_one(args.arm, args.seed, out, smoke=smoke, budget=budget, resume=args.resume, qlora=args.qlora,
                share_start=not args.no_share_start)
        return 0
    if not smoke and TUNING_JSON.is_file():
        chosen = json.loads(TUNING_JSON.read_text()).get("chosen")
        if chosen != STUDY_TASK:
            raise SystemExit(f"realmodel_study: the tuning record chose {chosen!r} but STUDY_TASK is {STUDY_TASK!r}; "
                             "the study runs the pre-registered task")
    archive = args.archive or RUNS_ARCHIVE
    if not smoke and (args.resume or args.summarize):
        got = restore_runs(archive, out, arms, budget)
        if got:
            print(f"restored from {archive.name}: {', '.join(got)}")
    t0 = time.perf_counter()
    todo = [] if args.summarize else [(lab, s) for lab, s in jobs(labels, arms, 1 if smoke else args.seeds)
                                      if not (args.resume and (run_dir(out, lab, s) / "done.json").exists())]
    if smoke:  # in this process, one after the other
        for lab, s in todo:
            run_one(lab, s, out, smoke=True, budget=budget, resume=args.resume, qlora=False, share_start=not args.no_share_start)
    else:
        failed = schedule(todo, out, arms, budget, args)
        if failed:
            print(f"failed: {', '.join(failed)}; see the logs, fix, and rerun with --resume", file=sys.stderr)
            return 1
    shown = {lab: arms[lab] for lab in arms if lab in labels or (out / lab).is_dir()}
    summary = summarize(out, shown, budget)
    if not summary["arms"]:
        raise SystemExit(f"realmodel_study: no finished run under {out}")
    cfg = study_config({"allocation": "uniform"}, smoke=smoke, budget=budget)
    command = "python bench/realmodel_study.py" + (" --smoke" if smoke else f" --workers {args.workers}") + (" --qlora" if args.qlora else "")
    summary.update(command=command, commit=git_commit(), cpu=cpu_name(), wall_seconds_this_invocation=time.perf_counter() - t0,
                   design={"task": STUDY_TASK, "task_options": task_options(STUDY_TASK), "train_prompts": cfg.train_size,
                           "eval_prompts": cfg.test_size if cfg.eval_size is None else cfg.eval_size, "eval_k": EVAL_K, "eval_k_curve": cfg.eval_samples,
                           "top_p": cfg.top_p, "learning_rate": cfg.learning_rate, "eval_every": cfg.eval_every,
                           "seeds": 1 if smoke else args.seeds, "max_completion_length": cfg.max_completion_length,
                           "settings": {**RC.BASE, **STUDY, **task_options(STUDY_TASK), **(SMOKE if smoke else {})}})
    results = out if smoke else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    n = archive_runs(out, out / RUNS_ARCHIVE.name if smoke else archive)
    md = study_md(summary, smoke)
    atomic_write_text(results / "realmodel_study.json", json.dumps(summary, indent=1, default=float))
    atomic_write_text(results / "realmodel_study.md", md)
    figure(summary, results / "realmodel_study.png")
    print(md)
    print(f"wrote {results / 'realmodel_study.md'}, .json, .png and the {n} finished runs' records to "
          f"{out / RUNS_ARCHIVE.name if smoke else archive}")
    return 0


def schedule(todo: list, out: Path, arms: dict, budget: int, args) -> list[str]:
    """Runs ``todo`` in worker processes, ``args.workers`` at a time; a run whose seed's start evaluation
    is being computed by a running worker waits while another can go, so it is computed once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    key = {}
    for lab, s in todo:
        cfg = study_config(arms[lab][1], smoke=args.smoke, budget=budget, seed=s)
        key[(lab, s)] = out / "start_eval" / f"{start_eval_key(cfg)}.json"
    pending, running, failed = list(todo), [], []
    while pending or running:
        while pending and len(running) < max(1, args.workers):
            busy = {key[j] for j, _ in running if not key[j].exists()}
            job = next((j for j in pending if args.no_share_start or key[j].exists() or key[j] not in busy), pending[0])
            pending.remove(job)
            lab, s = job
            cmd = [sys.executable, __file__, "--arm", lab, "--seed", str(s), "--out", str(out), "--budget", str(budget)]
            cmd += [f for f, on in (("--resume", args.resume), ("--qlora", args.qlora), ("--no-share-start", args.no_share_start),
                                    ("--smoke", args.smoke)) if on]
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
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tune", action="store_true", help="the design step on the tuning split (writes realmodel_study_tuning.*)")
    ap.add_argument("--tune-report", action="store_true", help="rebuild realmodel_study_tuning.md from its .json")
    ap.add_argument("--tasks", default=None, help="--tune: comma-separated candidates of " + ", ".join(CANDIDATES) + " (default: " + ", ".join(TUNE_TASKS) + ")")
    ap.add_argument("--tune-prompts", type=int, default=48, help="--tune: tuning prompts per candidate (default 48)")
    ap.add_argument("--tune-k", type=int, default=8, help="--tune: draws per tuning prompt (default 8)")
    ap.add_argument("--smoke", action="store_true", help="well under a minute: 2 arms, 1 seed, results under --out only")
    ap.add_argument("--qlora", action="store_true", help=f"add uniform RAFT++ with QLoRA ({QLORA_SEEDS} seeds)")
    ap.add_argument("--resume", action="store_true", help="continue unfinished runs from their last checkpoint, skip finished ones")
    ap.add_argument("--out", type=Path, default=None, help="run directories (default runs/realmodel_study; --smoke: also its results)")
    ap.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all)")
    ap.add_argument("--seeds", type=int, default=SEEDS, help=f"training seeds per arm (default {SEEDS})")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel, one torch thread each (default 2)")
    ap.add_argument("--budget", type=int, default=None, help=f"generated tokens per run (default {BUDGET:,}; smoke {SMOKE_BUDGET})")
    ap.add_argument("--no-share-start", action="store_true", help="every run computes its own start evaluation")
    ap.add_argument("--summarize", action="store_true", help="only rewrite the results from the run directories")
    ap.add_argument("--archive", type=Path, default=None,
                    help=f"the finished runs' records (default {RUNS_ARCHIVE.relative_to(ROOT)}): written after every "
                         "study invocation, restored into --out by --resume and --summarize")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # worker mode: run one arm in this process
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tune:
        return run_tune(args)
    if args.tune_report:
        from gvm_mini.rundir import atomic_write_text

        out = args.out or RESULTS
        res = json.loads((out / "realmodel_study_tuning.json").read_text())
        res.update(design(res))
        atomic_write_text(out / "realmodel_study_tuning.json", json.dumps(res, indent=1))
        atomic_write_text(out / "realmodel_study_tuning.md", tuning_md(res))
        print(tuning_md(res))
        return 0
    return run_study(args, ap)


if __name__ == "__main__":
    raise SystemExit(main())
