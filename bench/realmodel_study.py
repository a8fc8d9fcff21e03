"""Does per-prompt allocation help a real model? SmolLM2-135M-Instruct + LoRA at a scale where 0.05 shows.

    python bench/realmodel_study.py --tune                 # the design step, on a tuning split only (~25 min here)
    python bench/realmodel_study.py --workers 2            # the study: 6 arms x 5 seeds (see the estimate in the tuning md)
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
  between 0 and 1 (ties: the mean closer to 0.5).
- **Evaluation**: :data:`EVAL_PROMPTS` held-out prompts, Average@:data:`EVAL_K` at T = 1 and top_p 0.9
  with the same draws every time (common random numbers); the binomial standard error of one evaluation,
  ``sqrt(p (1 - p) / (prompts k))``, is at most 0.03 at any mean ``p``. Evaluations at a few budgets:
  at the start, every :data:`EVAL_EVERY` iterations (about 4 evaluations of a uniform run) and at the final
  budget (a run stops after the M-step that crosses it and is evaluated there). The start evaluation is
  the same for every arm of a seed (LoRA's B starts at zero, so every arm samples the released model
  with the same draws): it is computed once per seed and reused (``start_eval/`` in the run root,
  with the random state it leaves behind, so a run that reuses it continues exactly as one that
  computed it).
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
the same M-step weighting (``bench/allocation_study.py``'s key: ``weighting_of``, ``baseline_of``,
``clustered_se``; uniform GRPO is paired with token-mean uniform RAFT++, which makes its row the
algorithm's difference); ``vs_uniform_tokens`` against token-mean uniform RAFT++; the tokens at which the arm's
mean curve reaches its baseline's final accuracy, as a ratio with a 95% bootstrap interval over seeds
(``tokens_to_target``); a per-difficulty breakdown (held-out prompts binned by the starting model's pass
rate, pooled over every seed's start evaluation); truncation and answer length; wall time and peak RSS
per run; and the paper's M-step accounting (samples the M-steps used, updates, M-steps) beside the
generated-token accounting. The figure: accuracy curves with bands, and the paired differences with
their error bars against a +-0.05 band.

Run directories: ``runs/realmodel_study/<arm>/seed<s>`` (``gvm_mini.em.run``), one worker process per
run with one torch thread, which records its peak RSS and wall time in ``done.json``.
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

# ------------------------------------------------------------------------------------------------
# the design (fixed by --tune; see bench/results/realmodel_study_tuning.md)
# ------------------------------------------------------------------------------------------------

#: candidate tasks for --tune: generated arithmetic shapes (gvm_mini.data.arithmetic_problems; each
#: problem draws its operand count and its digit count uniformly in the ranges, so a shape mixes levels)
CANDIDATES = {
    "addsub-2op-2d": {"task_min_operands": 2, "task_max_operands": 2, "task_max_digits": 2, "task_ops": "+-"},
    "addsub-2to3op-1d": {"task_min_operands": 2, "task_max_operands": 3, "task_max_digits": 1, "task_ops": "+-"},
    "addsub-2to3op-2d": {"task_min_operands": 2, "task_max_operands": 3, "task_max_digits": 2, "task_ops": "+-"},
    "arith-2to3op-1d": {"task_min_operands": 2, "task_max_operands": 3, "task_max_digits": 1, "task_ops": "+-*"},
}
#: the task the study runs: --tune's choice (the study refuses to run if the tuning record names another)
STUDY_TASK = "addsub-2to3op-1d"
TRAIN_PROMPTS = 64
EVAL_PROMPTS = 256
EVAL_K = 2
LEARNING_RATE = 3e-4
BUDGET = 30_000  # generated tokens per run, pilots counted
EVAL_EVERY = 3  # iterations
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
    "learning_rate": LEARNING_RATE, "eval_every": EVAL_EVERY, "eval_samples": EVAL_K, "iterations": 1000,
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


def share_start_evaluation(cache: Path) -> None:
    """This process's next evaluation (a fresh run's start evaluation) is read from ``cache`` when an arm
    of the same seed wrote it, else computed and written there. The torch random state the evaluation
    leaves behind is kept with it and restored, so the run continues exactly as if it had sampled."""
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
        res = real(*a, **kw)
        cache.parent.mkdir(parents=True, exist_ok=True)
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
    started = resumed and metrics.is_file() and any('"kind": "eval"' in line for line in metrics.read_text().splitlines())
    if share_start and not started:
        share_start_evaluation(out / "start_eval" / f"{start_eval_key(cfg)}.json")
    t0 = time.perf_counter()
    em.run(cfg, d, resume=resumed)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    atomic_write_text(d / "done.json", json.dumps({
        "peak_rss_mib": round(peak_kib / 1024, 1), "resumed": resumed, "process_wall_s": round(time.perf_counter() - t0, 1),
        "process_cpu_s": round(cpu.ru_utime + cpu.ru_stime, 1)}))


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
    return [p for p in pool if p.meta["expression"] not in taken][:n], len(taken)


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
    """The candidate with the largest share of prompts strictly between 0 and 1; ties: mean nearer 0.5."""
    return max(rows, key=lambda t: (round(rows[t]["pass_rates"]["share_between"], 6), -abs(rows[t]["pass_rates"]["mean"] - 0.5)))


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
        probs, excluded = tuning_problems(task, prompts)
        texts = em.prompt_texts(cfg, tok, probs)
        t, c = time.perf_counter(), _cpu_s()
        ro = sample_hf(sampler, tok, texts, [k] * len(texts), temperature=cfg.temperature, top_p=cfg.top_p,
                       max_new_tokens=cfg.max_completion_length, batch_size=cfg.sample_batch_size,
                       seed=em.phase_seed(TUNE_SAMPLE_SEED, "tune", task))
        wall, cpu = time.perf_counter() - t, _cpu_s() - c
        scores = np.array([float(verify(x, probs[i].answer)) for x, i in zip(ro.texts, ro.prompt_index)])
        p = np.bincount(ro.prompt_index, weights=scores, minlength=len(probs)) / k
        lens = np.array([len(x) for x in ro.completion_ids])
        by_level = {}
        for lvl in sorted({(pb.meta["operands"], pb.meta["digits"]) for pb in probs}):
            idx = [i for i, pb in enumerate(probs) if (pb.meta["operands"], pb.meta["digits"]) == lvl]
            by_level[f"{lvl[0]} operands, {lvl[1]} digit{'s' if lvl[1] > 1 else ''}"] = {
                "prompts": len(idx), "mean": float(p[idx].mean()), "share_between": float(np.mean((p[idx] > 0) & (p[idx] < 1)))}
        rows[task] = {
            "options": task_options(task), "tuning_prompts": len(probs), "study_prompts_excluded": excluded,
            "pass_rates": pass_rate_table(p, k), "by_level": by_level,
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


def cost_estimate(tuned: dict, budget: int = BUDGET, seeds: int = SEEDS) -> dict:
    """Core-seconds of the study from the tuning's measured CPU throughput: sampling tokens (training,
    pilots counted, and evaluation) at the chosen task's tokens per CPU-second, plus the M-steps at the
    measured CPU seconds per forwarded sample. Assumptions (stated in the md): answers as long as the
    start's for training, evaluation answers as long as the start's (an upper bound: trained answers
    shorten), a forwarded share of samples equal to the start's pass rate for RAFT++ (the accepted ones)
    and to the share of mixed groups for GRPO, twice that for gvm_robust and knapsack (they sample the
    prompts with signal), evaluations per run: one shared start and ``ceil(iterations / EVAL_EVERY)``."""
    row = tuned["rows"][tuned["chosen"]]
    rate = row["tokens_per_cpu_s"]
    per_sample = row["mean_len"]
    probe = tuned.get("mstep_probe") or {}
    upd = probe.get("cpu_s_per_forwarded_sample", 1.0)
    p = row["pass_rates"]["mean"]
    between = row["pass_rates"]["share_between"]
    samples = budget / per_sample
    iters = samples / (STUDY["prompts_per_step"] * STUDY["samples_per_prompt"])
    evals = int(np.ceil(iters / EVAL_EVERY))
    eval_s = EVAL_PROMPTS * EVAL_K * per_sample / rate
    forwarded = {"uniform-RAFT++": p, "uniform-RAFT++-prompt": p, "uniform-GRPO": between, "GVM-RAFT++": p,
                 "gvm_robust-RAFT++": min(1.0, 2 * p), "knapsack+history-RAFT++": min(1.0, 2 * p)}
    runs = {lab: budget / rate + samples * f * upd + evals * eval_s for lab, f in forwarded.items()}
    start = seeds * eval_s
    total = seeds * sum(runs.values()) + start
    return {"budget": budget, "seeds": seeds, "iterations_per_uniform_run": iters, "evaluations_per_run": evals + 1,
            "eval_core_s": eval_s, "core_s_per_run": runs, "start_evaluations_core_s": start,
            "total_core_hours": total / 3600, "qlora_core_hours": QLORA_SEEDS * (runs["uniform-RAFT++"] + eval_s) / 3600,
            "wall_hours_on_2_workers": total / 3600 / 2}


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

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(CANDIDATES)
    bad = [t for t in tasks if t not in CANDIDATES]
    if bad:
        raise SystemExit(f"unknown candidate task(s) {', '.join(bad)}; choose from {', '.join(CANDIDATES)}")
    t0 = time.perf_counter()
    tuned = tune(tasks, args.tune_prompts, args.tune_k)
    cfg = study_config({"allocation": "uniform"}, task=tuned["chosen"])
    res = {**tuned, "commit": git_commit(), "cpu": cpu_name(), "cores": os.cpu_count(), "tune_prompts": args.tune_prompts,
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
    """The settings the tuning fixes (placeholder until written below)."""
    return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tune", action="store_true", help="the design step on the tuning split (writes realmodel_study_tuning.*)")
    ap.add_argument("--tune-report", action="store_true", help="rebuild realmodel_study_tuning.md from its .json")
    ap.add_argument("--tasks", default=None, help="--tune: comma-separated candidates (default: all of " + ", ".join(CANDIDATES) + ")")
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
