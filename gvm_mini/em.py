"""The EM loop of GVM-RAFT (paper Algorithm 1 with Algorithm 2's estimates), top to bottom.

One iteration ``t``::

    prompts   the next steps_per_iteration * prompts_per_step training prompts
    E-step    estimates = e_step(...)          pilot -> p_i, G_i (Algorithm 2)      gvm_mini.estep
              n = allocate_budget(...)         Proposition 1 (allocation: gvm)
    M-steps   for each step of prompts_per_step prompts:
                  sample n_i responses per prompt with the current policy, score them (rejection
                  sampling accepts the verified ones), m_step(...): one epoch of RAFT / RAFT++ /
                  GRPO updates                                                 gvm_mini.mstep
    record    evaluate, log, checkpoint                                        gvm_mini.rundir

The uniform baselines are the same loop with ``allocation: uniform``, which draws no pilot. Every
generated sample is counted (pilots included) and every phase is timed, by the run's
:class:`~gvm_mini.rundir.Recorder`; what the run directory holds and how it survives a kill is
:mod:`gvm_mini.rundir`.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import data, estimators, models, rewards, rundir
from .config import Config, ConfigError
from .estep import allocate_budget, e_step
from .evaluate import evaluate_policy
from .mstep import initial_reference, kl_reference, m_step, make_optimizer
from .rewards import accepted, score_rollout
from .rollout import Rollout, sample_policy
from .rundir import RunState

__all__ = ["run", "RunState", "load_problems", "check_model_request", "build_policy", "iteration_prompt_indices",
           "phase_seed", "prompt_texts"]


# ---------------------------------------------------------------------------------------------
# seeds: every phase draws from (seed, iteration, step, phase), so runs and resumes reproduce
# ---------------------------------------------------------------------------------------------


def phase_seed(seed: int, *parts) -> int:
    """A 32-bit seed for one phase of the run, e.g. ``phase_seed(seed, "pilot", t)``."""
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(h[:4], "little")


def seed_all(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# ---------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------


def _load_spec(spec: str):
    """Problems of a dataset spec: ``champ``, ``jsonl:PATH`` or ``hub:NAME[:SHARD]``."""
    if spec == "champ":
        return data.load_champ()
    if spec.startswith("jsonl:"):
        return data.load_jsonl(spec[6:])
    if spec.startswith("hub:"):
        name, _, shard = spec[4:].partition(":")
        return data.load_hub(name, shard=shard or None)
    raise ConfigError(f"dataset must be arithmetic, champ, jsonl:PATH or hub:NAME[:SHARD], got {spec!r}")


def load_problems(cfg: Config):
    """(train, test) lists of :class:`gvm_mini.data.Problem` for ``cfg.dataset``: a generated task of
    :data:`gvm_mini.data.TASKS`, or a spec ``champ`` / ``jsonl:PATH`` / ``hub:NAME[:SHARD]``."""
    ds = cfg.dataset
    if ds in data.TASKS:
        train, test = data.task_loader(ds)(cfg)
    else:
        problems = _load_spec(ds)
        if cfg.eval_dataset:
            train, test = problems, []
        else:
            frac = cfg.test_size / max(len(problems), 1)
            train, test = data.split_train_test(problems, test_fraction=min(frac, 0.5), seed=cfg.data_seed)
        train = train[: cfg.train_size]
    if cfg.eval_dataset:
        test = _load_spec(cfg.eval_dataset)
    if cfg.eval_size is not None:
        test = test[: cfg.eval_size]
    if len(train) < cfg.prompts_per_step:
        raise ConfigError(f"dataset {ds!r} has {len(train)} training prompts, fewer than prompts_per_step={cfg.prompts_per_step}")
    return train, test


def check_model_request(cfg: Config) -> None:
    """The model-side user errors that can be found without loading weights (backend, device, 4-bit
    extra, a model path that does not exist, a tokenizer without a chat template): one ConfigError /
    ImportError / FileNotFoundError line, raised before the run directory is touched."""
    import importlib.util

    try:
        dev = torch.device(cfg.device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {cfg.device!r}") from None
    if cfg.backend == "vllm":
        from .rollout import vllm_problem

        problem = vllm_problem(cfg.device, cfg.load_in_4bit)  # installed, importable, built for cfg.device
        if problem:
            raise ConfigError(problem)
    if cfg.load_in_4bit:
        models.check_4bit_available(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r}, but torch sees no CUDA GPU; use device=cpu")
    name = cfg.model
    if name.startswith("twin:"):
        raise ConfigError(f"model {name!r} has no tokenizer (shape twins are for memory/speed benchmarks only)")
    if name == "smollm2":
        models.smollm2_gguf_path()
    elif name not in models.TINY_MODELS:
        location, local_only = models.resolve_location(name)
        tokenizer = models.load_tokenizer(location, local_files_only=local_only, trust_remote_code=False)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError(f"the tokenizer of {name!r} has no chat template; gvm-mini formats prompts with it")


def build_policy(cfg: Config, tokenizer=None):
    """Load the model and tokenizer of ``cfg`` and add LoRA if asked. Returns ``(model, tokenizer)``.
    ``tokenizer`` replaces the model's own (``bench/gpu_check.py`` drives the tokenizer-less shape
    twins with the offline tokenizer, whose ids are valid ids of both)."""
    model, own = models.load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, load_in_4bit=cfg.load_in_4bit)
    tokenizer = tokenizer if tokenizer is not None else own
    if tokenizer is None:
        raise ConfigError(f"model {cfg.model!r} has no tokenizer (shape twins are for memory/speed benchmarks only)")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(f"the tokenizer of {cfg.model!r} has no chat template; gvm-mini formats prompts with it")
    if cfg.lora:
        model = models.add_lora(
            model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules, seed=cfg.seed,
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


def iteration_prompt_indices(n_train: int, cfg: Config, iteration: int) -> np.ndarray:
    """Indices of the training prompts used in ``iteration``: consecutive chunks of a per-epoch
    shuffle (deterministic from ``seed``), wrapping to a new shuffle when the set is used up."""
    per_it = cfg.prompts_per_iteration
    start = iteration * per_it
    out = []
    while len(out) < per_it:
        epoch, offset = divmod(start + len(out), n_train)
        perm = np.random.default_rng(phase_seed(cfg.seed, "epoch", epoch)).permutation(n_train)
        out.extend(perm[offset : offset + per_it - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def prompt_texts(cfg: Config, tokenizer, problems) -> list[str]:
    """The chat prompts of ``problems`` (the paper's system prompt and instruction unless configured)."""
    system = data.DEFAULT_SYSTEM if cfg.system_prompt == "default" else cfg.system_prompt
    instruction = data.DEFAULT_INSTRUCTION if cfg.instruction == "default" else (cfg.instruction or "")
    return [data.format_chat(tokenizer, p.problem, system=system, instruction=instruction) for p in problems]


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def run(cfg: Config, out: str | Path, *, resume: bool = False, model=None, tokenizer=None, problems=None) -> RunState:
    """Run ``cfg.iterations`` EM iterations (or until ``token_budget``) into the run directory ``out``.

    ``model``/``tokenizer``/``problems`` may be passed in (notebooks, tests); otherwise they are built
    from ``cfg``. With ``resume=True`` the run continues after the last completed iteration; a resumed
    CPU run ends with the same metrics and weights as an uninterrupted one.
    """
    out = Path(out)
    verifier = rewards.get_verifier(cfg.verifier)  # user errors first: before the run directory or a model
    rundir.check_report_to(cfg.report_to)
    if model is None:
        check_model_request(cfg)
    train, test = problems if problems is not None else load_problems(cfg)
    rundir.prepare_out_dir(cfg, out, resume)
    seed_all(phase_seed(cfg.seed, "init"))
    if model is None:
        model, tokenizer = build_policy(cfg)
    n_train = len(train)
    train, test = data.prompts_that_fit(cfg, tokenizer, train, test)  # verl's filter_overlong_prompts
    if len(train) < min(n_train, cfg.prompts_per_step):
        raise ConfigError(f"{len(train)} training prompts fit max_prompt_length={cfg.max_prompt_length}, "
                          f"fewer than prompts_per_step={cfg.prompts_per_step}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = make_optimizer(cfg, model)
    initial = initial_reference(cfg, model)
    state = rundir.resume_state(out, model, optimizer, resume)  # checkpoint restored, logs cut to it
    rec = rundir.Recorder(state, rundir.MetricsLog(out, cfg.report_to, purge_step=state.global_step if resume else None))
    evaluate = _evaluator(cfg, model, tokenizer, test, verifier, rec)
    if state.iteration == 0 and state.global_step == 0:
        evaluate(crash=False)
    bar = tqdm(total=cfg.iterations, initial=state.iteration, desc=f"{cfg.allocation}-{cfg.algorithm}", disable=not cfg.progress)
    while state.iteration < cfg.iterations and not _budget_spent(cfg, state):
        t = state.iteration
        if cfg.reset_optimizer:
            optimizer = make_optimizer(cfg, model)
        ref_values = kl_reference(cfg, model, initial)
        ids = iteration_prompt_indices(len(train), cfg, t)
        problems_t = [train[i] for i in ids]
        texts = prompt_texts(cfg, tokenizer, problems_t)

        # E-step: pilot -> (p_i, G_i) -> n_i
        est = e_step(cfg, model, tokenizer, texts, problems_t, ids, state.history, verifier, phase_seed(cfg.seed, "pilot", t), rec)
        with rec.phase("allocate"):
            allocation = allocate_budget(cfg, est, cfg.samples_per_prompt * len(ids))

        # M-steps: sample n_i per prompt, accept or reject, update
        step_acceptance = np.full(len(ids), np.nan)
        for r in range(cfg.steps_per_iteration):
            sl = np.arange(r * cfg.prompts_per_step, (r + 1) * cfg.prompts_per_step)
            step_problems = [problems_t[i] for i in sl]
            reused = _reused_pilots(cfg, est, allocation.n, sl)
            counts = allocation.n[sl] - np.bincount(reused.prompt_index, minlength=len(sl))
            with rec.phase("rollout"):
                fresh = sample_policy(cfg, model, tokenizer, [texts[i] for i in sl], counts, phase_seed(cfg.seed, "rollout", t, r),
                                      f"rollout {r + 1}/{cfg.steps_per_iteration}")
            rec.generated(fresh)
            batch = Rollout.concat([reused, fresh])
            with rec.phase("reward", crash=False):
                scores = score_rollout(batch, step_problems, verifier)
            step_acceptance[sl] = _acceptance(batch, scores, len(sl))
            est.visit.add(sl, fresh, scores[len(reused):])  # fresh samples only: the reused ones are counted
            with rec.phase("update"):
                st = {"updates": 0, "skipped_updates": 0, "zero_signal_frac": 1.0}  # no samples: nothing to learn
                if len(batch):
                    model.train()
                    st = m_step(cfg, model, optimizer, batch, scores, pad_id, ref_values,
                                phase_seed(cfg.seed, "minibatch", t, r), prompt_p=est.p[sl] if cfg.uses_pilot else None)
            state.global_step += 1
            state.updates += st["updates"]
            rec.log(_step_record(r, batch, scores, len(reused), st))
            rundir.crash_point("step_logged")
            if _budget_spent(cfg, state):  # stop at M-step granularity: overshoot is at most one M-step's tokens
                break

        # record: history, allocation, evaluation, checkpoint
        if cfg.uses_history:  # kept in the checkpoint's state.json: survives a resume
            _update_history(state, ids, est, t, accumulate=cfg.estimator == "robust")
        state.iteration += 1
        rec.allocation(_allocation_record(t, ids, est, allocation, step_acceptance, problems_t))
        rec.log(_iteration_record(cfg, t, ids, est, allocation))
        if cfg.eval_every and (state.iteration % cfg.eval_every == 0 or state.iteration == cfg.iterations or _budget_spent(cfg, state)):
            evaluate(crash=True)
        with rec.phase("checkpoint"):
            rundir.record_checkpoint(out, model, None if cfg.reset_optimizer else optimizer, state)
        bar.update(1)
    bar.close()
    rec.close()
    if cfg.save_weights and cfg.lora:
        rundir.save_adapter(out, model)  # atomic directory swap
    return state


# ---------------------------------------------------------------------------------------------
# the loop's helpers: pilot reuse, budget, evaluation and the records it writes
# ---------------------------------------------------------------------------------------------


def _budget_spent(cfg: Config, state: RunState) -> bool:
    return cfg.token_budget is not None and state.tokens >= cfg.token_budget


def _reused_pilots(cfg: Config, est, n: np.ndarray, sl: np.ndarray) -> Rollout:
    """``pilot: reuse``: up to ``n_i`` of prompt ``i``'s pilot samples join its training samples
    (their ``prompt_index`` relative to the step); an empty rollout otherwise."""
    parts = []
    if cfg.trains_on_pilot and est.pilot is not None:
        for local, i in enumerate(sl):
            part = est.pilot.select(np.flatnonzero(est.pilot.prompt_index == i)[: n[i]])
            part.prompt_index = np.full(len(part), local)
            parts.append(part)
    return Rollout.concat(parts)


def _acceptance(batch: Rollout, rewards: np.ndarray, m: int) -> np.ndarray:
    """Each prompt's accepted fraction of its training samples (NaN for a prompt with none)."""
    acc = np.bincount(batch.prompt_index, weights=accepted(rewards).astype(float), minlength=m)
    tot = np.bincount(batch.prompt_index, minlength=m)
    return np.where(tot > 0, acc / np.maximum(tot, 1), np.nan)


def _update_history(state: RunState, prompt_ids, est, t: int, accumulate: bool) -> None:
    """The history record of this visit: replaces the last visit's counts, or with ``accumulate``
    (``estimator: robust``) adds to every earlier visit's."""
    if accumulate:  # G is evidence from accepted pilots only: a history prompt adds none this visit
        estimators.history_accumulate(state.history, prompt_ids, est.visit.k, est.visit.n, est.visit.tokens,
                                      est.G_raw, t, G_count=est.G_new)
    else:
        estimators.history_update(state.history, prompt_ids, est.visit.k, est.visit.n, est.visit.tokens, est.G_raw, t)


def _evaluator(cfg: Config, model, tokenizer, test, verifier, rec):
    """``evaluate(crash)``: Average@k on the held-out prompts with the same draws every time (common
    random numbers), per group of ``group_key``, logged as an ``eval`` record."""
    texts = prompt_texts(cfg, tokenizer, test) if test else []

    def evaluate(crash: bool) -> None:
        if crash:
            rundir.crash_point("eval")
        if not test or not cfg.eval_every:
            return
        with rec.phase("eval", crash=False):
            res = evaluate_policy(
                model, tokenizer, texts, [p.answer for p in test], verifier, k=cfg.eval_samples,
                temperature=cfg.eval_temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_completion_length,
                batch_size=cfg.sample_batch_size, seed=phase_seed(cfg.seed, "eval"), progress=cfg.progress, cfg=cfg,
            )
        if cfg.group_key:
            groups = [pb.meta.get(cfg.group_key) for pb in test]
            per = np.asarray(res["per_problem"])
            res["by_group"] = {g: float(per[[x == g for x in groups]].mean()) for g in sorted(set(groups), key=str)}
        rec.log({"kind": "eval", **res})

    return evaluate


def _step_record(r: int, batch: Rollout, rewards: np.ndarray, reused: int, st: dict) -> dict:
    acc = accepted(rewards)
    return {"kind": "step", "step_in_iteration": r, "step_samples": len(batch), "step_tokens": batch.num_tokens,
            "pilot_reused": reused, "accepted": int(acc.sum()), "reward_mean": float(rewards.mean()) if len(rewards) else None,
            "truncated_frac": float(batch.truncated.mean()) if len(batch) else None,
            # accepted samples cut at max_completion_length: RAFT trains on them without their end token
            "accepted_truncated": int((acc & batch.truncated).sum()), **st}


def _iteration_record(cfg: Config, t: int, ids, est, allocation) -> dict:
    n = allocation.n
    record = {"kind": "iteration", "iteration_index": t, "prompts": len(ids), "budget": cfg.samples_per_prompt * len(ids)}
    if est.cost is not None:
        record.update(history_prompts=int(est.from_history.sum()), expected_tokens=allocation.expected_tokens,
                      uniform_expected_tokens=float(record["budget"] * est.cost.mean()))
    record.update(fallback_uniform=allocation.fallback_uniform, n_hist=np.bincount(n).tolist(),
                  dropped_prompts=int((n == 0).sum()), mean_p=float(est.p.mean()) if cfg.uses_pilot else None)
    return record


def _allocation_record(t: int, ids, est, allocation, step_acceptance, problems) -> dict:
    return {"iteration": t, "prompt_ids": ids.tolist(), "p": est.p, "G": est.G, "n": allocation.n,
            "step_acceptance": step_acceptance, **({} if est.cost is None else {"cost": est.cost}),
            "difficulty": [pb.meta.get("difficulty") for pb in problems]}
