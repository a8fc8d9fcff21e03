"""The EM loop of GVM-RAFT (Algorithm 1 with Algorithm 2's estimates), top to bottom.

One iteration ``t`` (METHOD.md §2, §4, §13)::

    prompts  = the next k * prompts_per_step training prompts
    E-step   pilot:     N' samples per prompt from pi_theta                       (skipped for uniform)
             estimate:  p_i = accepted / N',  G_i = mean ||grad -sum_t log pi(y_t)|| over accepted pilots
             allocate:  n_i = allocate(p, G, N = samples_per_prompt * |prompts|)  (Proposition 1)
    M-step   for each of the k steps (prompts_per_step prompts each):
                 sample n_i fresh responses per prompt with the current policy (rejection sampling:
                 the verifier accepts or rejects each), then one epoch of mini-batch updates with
                 RAFT (-1(acc) log pi), RAFT++ (Eq. 8, PPO-clip with A = 1(acc)) or GRPO (group
                 advantages over the n_i responses), + kl_coef * k3 KL to the iteration-start policy
    evaluate, write metrics, checkpoint atomically

The uniform baselines (RAFT, RAFT++, GRPO with n_i = samples_per_prompt) are the same loop with
``allocation="uniform"``, which skips the pilot. Compute is counted honestly: generated tokens and
samples include the pilots, and wall time is recorded per phase.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import allocation as alloc
from .config import Config, ConfigError, save_config
from .rollout import Rollout, sample_hf, to_batch

__all__ = ["run", "RunState", "load_problems", "build_policy", "iteration_prompt_indices"]

PHASES = ("pilot", "gradnorm", "allocate", "rollout", "reward", "update", "eval", "checkpoint")


@dataclass
class RunState:
    """What survives a restart: the loop position and the cumulative compute counters."""

    iteration: int = 0  # iterations completed
    global_step: int = 0  # M-steps completed
    updates: int = 0  # optimizer updates completed
    samples: int = 0  # generated samples, pilots included (eval excluded)
    tokens: int = 0  # generated completion tokens, pilots included (eval excluded)
    pilot_samples: int = 0
    pilot_tokens: int = 0
    wall: dict = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    metrics_bytes: int = 0  # length of metrics.jsonl / allocations.jsonl at the last checkpoint
    allocations_bytes: int = 0


# ---------------------------------------------------------------------------------------------
# test hook: kill the process at a named point (tests/test_resume.py)
# ---------------------------------------------------------------------------------------------

_crash_counts: dict[str, int] = {}


def _crash_point(name: str) -> None:
    """Test hook, not a user feature: if the environment variable ``GVM_MINI_CRASH_AT`` is ``name``
    (or ``name:k``), the process SIGKILLs itself the first (k-th) time it reaches ``name``. The
    crash-safety tests use it to kill a run in a precise phase; unset, it costs one dict lookup."""
    want = os.environ.get("GVM_MINI_CRASH_AT")
    if not want:
        return
    target, _, k = want.partition(":")
    if target != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(k or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# seeding: every phase draws from (seed, iteration, step, phase), so runs and resumes reproduce
# ---------------------------------------------------------------------------------------------


def _phase_seed(seed: int, *parts) -> int:
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(h[:4], "little")


def _seed_all(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# ---------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------


def _load_spec(spec: str):
    """Problems of a dataset spec: ``champ``, ``jsonl:PATH`` or ``hub:NAME[:SHARD]``."""
    from . import data

    if spec == "champ":
        return data.load_champ()
    if spec.startswith("jsonl:"):
        return data.load_jsonl(spec[6:])
    if spec.startswith("hub:"):
        name, _, shard = spec[4:].partition(":")
        return data.load_hub(name, shard=shard or None)
    raise ConfigError(f"dataset must be arithmetic, champ, jsonl:PATH or hub:NAME[:SHARD], got {spec!r}")


def load_problems(cfg: Config):
    """(train, test) lists of :class:`gvm_mini.data.Problem` for ``cfg.dataset``."""
    from . import data

    ds = cfg.dataset
    if ds == "arithmetic":
        problems = data.arithmetic_problems(
            cfg.train_size + cfg.test_size, seed=cfg.data_seed, min_operands=cfg.task_min_operands,
            max_operands=cfg.task_max_operands, max_digits=cfg.task_max_digits, ops=tuple(cfg.task_ops),
        )
        train, test = problems[: cfg.train_size], problems[cfg.train_size :]
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

    from . import models

    try:
        dev = torch.device(cfg.device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {cfg.device!r}") from None
    if cfg.backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("backend=vllm needs the vLLM GPU extra, which is not installed: "
                              "pip install 'gvm-mini[vllm]' (and a CUDA GPU); or use backend=hf")
        if not torch.cuda.is_available():
            raise ConfigError("backend=vllm needs a CUDA GPU, but torch sees none; use backend=hf")
        raise ConfigError("backend=vllm is driven by the vLLM engine; see README 'GPU' (not available in this loop yet)")
    if cfg.load_in_4bit:
        models.check_4bit_available(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r}, but torch sees no CUDA GPU; use device=cpu")
    name = cfg.model
    if name.startswith("twin:"):
        raise ConfigError(f"model {name!r} has no tokenizer (shape twins are for memory/speed benchmarks only)")
    if name == "smollm2":
        models._smollm2_gguf()
    elif name not in models._TINY:
        location, local_only = models._resolve_location(name)
        tokenizer = models._load_tokenizer(location, local_files_only=local_only, trust_remote_code=False)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError(f"the tokenizer of {name!r} has no chat template; gvm-mini formats prompts with it")


def build_policy(cfg: Config):
    """Load the model and tokenizer of ``cfg`` and add LoRA if asked. Returns ``(model, tokenizer)``."""
    from . import models

    model, tokenizer = models.load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, load_in_4bit=cfg.load_in_4bit)
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
        perm = np.random.default_rng(_phase_seed(cfg.seed, "epoch", epoch)).permutation(n_train)
        out.extend(perm[offset : offset + per_it - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def _prompt_texts(cfg: Config, tokenizer, problems) -> list[str]:
    from . import data

    system = data.DEFAULT_SYSTEM if cfg.system_prompt == "default" else cfg.system_prompt
    instruction = data.DEFAULT_INSTRUCTION if cfg.instruction == "default" else (cfg.instruction or "")
    return [data.format_chat(tokenizer, p.problem, system=system, instruction=instruction) for p in problems]


# ---------------------------------------------------------------------------------------------
# pieces of one iteration
# ---------------------------------------------------------------------------------------------


def _sample(cfg: Config, model, tokenizer, prompts, counts, seed, desc, temperature=None) -> Rollout:
    if cfg.backend == "vllm":  # pragma: no cover - GPU extra
        raise ConfigError("backend=vllm is driven by the vLLM engine; see README 'GPU' (not available in this loop yet)")
    return sample_hf(
        model, tokenizer, prompts, counts,
        temperature=cfg.temperature if temperature is None else temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_completion_length, batch_size=cfg.sample_batch_size,
        max_batch_tokens=cfg.max_batch_tokens, seed=seed, progress=cfg.progress, desc=desc,
    )


def _score(rollout: Rollout, problems, verifier) -> np.ndarray:
    return np.array([verifier(t, problems[i].answer) for t, i in zip(rollout.texts, rollout.prompt_index)], dtype=np.float64)


def estimate_p_G(cfg: Config, model, tokenizer, pilot: Rollout, rewards: np.ndarray, m: int):
    """Algorithm 2: ``p_i`` = accepted fraction of the N' pilots; ``G_i`` = mean gradient norm of
    ``-sum_t log pi(y_t|x)`` over the accepted pilots (0 if none), w.r.t. ``cfg.gradnorm_params``."""
    from .gradnorm import per_sample_grad_norms

    acc = rewards > 0.5
    counts = np.bincount(pilot.prompt_index, minlength=m)
    p = np.bincount(pilot.prompt_index, weights=acc.astype(float), minlength=m) / np.maximum(counts, 1)
    G = np.zeros(m)
    idx = np.flatnonzero(acc)
    if idx.size:
        pad = tokenizer.pad_token_id
        norms = []
        for s in range(0, idx.size, cfg.mini_batch_size):
            ids, attn, cmask, _ = to_batch(pilot, pad, idx[s : s + cfg.mini_batch_size])
            dev = next(model.parameters()).device
            norms.append(per_sample_grad_norms(model, ids.to(dev), attn.to(dev), cmask.to(dev), params=cfg.gradnorm_params).float().cpu())
        norms = torch.cat(norms).numpy().astype(np.float64)
        norms = np.where(np.isfinite(norms), norms, 0.0)
        sums = np.bincount(pilot.prompt_index[idx], weights=norms, minlength=m)
        n_acc = np.bincount(pilot.prompt_index[idx], minlength=m)
        G = np.where(n_acc > 0, sums / np.maximum(n_acc, 1), 0.0)
    return p, G


def _group_index(prompt_index: np.ndarray, group_size: int | None) -> np.ndarray:
    """GRPO group of each sample: the prompt (official HEAD code) or sub-groups of ``group_size``
    consecutive samples of the same prompt (paper App. B: copies of the prompt with 4 rollouts)."""
    if group_size is None:
        return prompt_index
    out = np.empty_like(prompt_index)
    seen: dict[int, int] = {}
    for s, i in enumerate(prompt_index):
        j = seen.get(int(i), 0)
        seen[int(i)] = j + 1
        out[s] = int(i) * 1_000_000 + j // group_size
    return out


@contextlib.contextmanager
def _swapped(params: list[torch.nn.Parameter], values: list[torch.Tensor] | None):
    """Temporarily give ``params`` the ``values`` (the iteration-start snapshot = KL reference)."""
    if values is None:
        yield
        return
    saved = [p.data for p in params]
    try:
        for p, v in zip(params, values):
            p.data = v
        yield
    finally:
        for p, v in zip(params, saved):
            p.data = v


def m_step(cfg: Config, model, optimizer, rollout: Rollout, rewards: np.ndarray, pad_id: int,
           ref_values, seed: int) -> dict:
    """One M-step: one epoch of mini-batch updates over the step's samples. Returns its metrics.

    old log-probs (and the KL reference's) are computed once, before the first update, as verl does.
    A non-finite loss or gradient skips that update (the weights never see a NaN) and is counted.
    """
    from . import losses

    S = len(rollout)
    dev = next(model.parameters()).device
    accepted = torch.as_tensor(rewards > 0.5, dtype=torch.float32)
    r = torch.as_tensor(rewards, dtype=torch.float32)
    groups = torch.as_tensor(_group_index(rollout.prompt_index, cfg.grpo_group_size))
    if cfg.algorithm == "grpo":
        adv = losses.grpo_advantages(r, groups, scale="std" if cfg.grpo_scale_std else "none")
    else:
        adv = accepted
    stats = {"zero_signal_frac": losses.zero_signal_fraction(r, groups), "loss": [], "pg_loss": [], "kl": [],
             "clip_frac": [], "grad_norm": [], "skipped_updates": 0, "updates": 0}
    trainable = [p for p in model.parameters() if p.requires_grad]
    use_kl = cfg.kl_coef > 0
    chunks = [list(range(s, min(s + cfg.mini_batch_size, S))) for s in range(0, S, cfg.mini_batch_size)]
    # behaviour (old) and reference log-probs, before any update. old_logprobs="behaviour" takes the
    # log-probs the sampler recorded (exact for HF sampling at temperature 1, top_p 1: the samples were
    # drawn by this very policy just before the M-step), which saves a forward pass over every sample.
    old, ref = [None] * len(chunks), [None] * len(chunks)
    perm = np.random.default_rng(seed).permutation(S)
    chunks = [perm[c].tolist() for c in chunks]
    model.eval()  # no dropout in the forward passes that define the losses (tiny models have none)
    with torch.no_grad():
        for j, c in enumerate(chunks):
            ids, attn, cmask, blogp = to_batch(rollout, pad_id, c)
            ids, attn = ids.to(dev), attn.to(dev)
            if cfg.algorithm != "raft" and cfg.old_logprobs == "behaviour":
                old[j] = blogp.to(dev)
            elif cfg.algorithm != "raft":
                old[j] = losses.token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
            if use_kl:
                if cfg.kl_reference == "initial" and cfg.lora:
                    from .models import reference_logits_context

                    with reference_logits_context(model):
                        ref[j] = losses.token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
                else:
                    with _swapped(trainable, ref_values):
                        ref[j] = losses.token_logprobs(model, ids, attn, chunk_size=cfg.micro_batch_size)
    model.train()  # LoRA dropout (if any) is on for the update itself
    micro = cfg.micro_batch_size or cfg.mini_batch_size
    for j, c in enumerate(chunks):
        # gradient accumulation over micro-batches; each micro loss is weighted by its share of the
        # mini-batch's tokens (token_mean) or sequences (seq_mean_token_mean), so the accumulated
        # gradient equals that of the whole mini-batch in one piece.
        ids_all, attn_all, cmask_all, _ = to_batch(rollout, pad_id, c)
        unit = cmask_all.sum() if cfg.loss_type == "token_mean" else (cmask_all.sum(-1) > 0).sum()
        optimizer.zero_grad(set_to_none=True)
        acc_loss, acc_st, ok = 0.0, {}, True
        for s0 in range(0, len(c), micro):
            sl = slice(s0, s0 + micro)
            ids, attn, cmask = ids_all[sl].to(dev), attn_all[sl].to(dev), cmask_all[sl].to(dev)
            share = (cmask.sum() if cfg.loss_type == "token_mean" else (cmask.sum(-1) > 0).sum()) / unit.clamp_min(1)
            logp = losses.token_logprobs(model, ids, attn)
            loss, st = losses.policy_objective(
                logp, None if old[j] is None else old[j][sl], adv[c][sl].to(dev), cmask,
                epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                kl_coef=cfg.kl_coef if use_kl else 0.0, ref_logp=None if ref[j] is None else ref[j][sl],
                policy_loss="vanilla" if cfg.algorithm == "raft" else "clip",
            )
            if not torch.isfinite(loss):
                ok = False
                break
            (loss * share.to(loss.device)).backward()
            acc_loss += float(loss.detach()) * float(share)
            for k in ("pg_loss", "kl", "clip_frac"):
                acc_st[k] = acc_st.get(k, 0.0) + float(st.get(k, loss if k == "pg_loss" else 0.0)) * float(share)
        if not ok:
            optimizer.zero_grad(set_to_none=True)
            stats["skipped_updates"] += 1
            continue
        gn = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        if not torch.isfinite(gn):
            optimizer.zero_grad(set_to_none=True)
            stats["skipped_updates"] += 1
            continue
        optimizer.step()
        _crash_point("optimizer_step")
        stats["updates"] += 1
        stats["loss"].append(acc_loss)
        stats["grad_norm"].append(float(gn))
        for k in ("pg_loss", "kl", "clip_frac"):
            stats[k].append(acc_st[k])
    optimizer.zero_grad(set_to_none=True)
    for k in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm"):
        stats[k] = float(np.mean(stats[k])) if stats[k] else None
    return stats


def _make_optimizer(cfg: Config, model):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------------------------
# run directory: metrics, checkpoints (atomic), resume
# ---------------------------------------------------------------------------------------------


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(out: Path, model, optimizer, state: RunState) -> None:
    """Write ``out/checkpoint`` atomically: build ``.checkpoint.tmp``, fsync, then rename over the
    old one (kept as ``.checkpoint.old`` until the new one is in place). A kill at any point leaves
    either the old or the new checkpoint complete, never a torn one."""
    tmp, final, old = out / ".checkpoint.tmp", out / "checkpoint", out / ".checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    trainable = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    payload = {
        "state": asdict(state),
        "trainable": trainable,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    }
    torch.save(payload, tmp / "state.pt")
    with open(tmp / "state.pt", "rb+") as f:
        os.fsync(f.fileno())
    (tmp / "COMPLETE").write_text(json.dumps({"iteration": state.iteration}))
    _fsync_dir(tmp)
    _crash_point("checkpoint_written")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    _crash_point("checkpoint_renamed")
    os.rename(tmp, final)
    _fsync_dir(out)
    _crash_point("checkpoint_replaced")
    shutil.rmtree(old, ignore_errors=True)


def _find_checkpoint(out: Path) -> Path | None:
    for cand in (out / "checkpoint", out / ".checkpoint.old"):
        if (cand / "COMPLETE").is_file() and (cand / "state.pt").is_file():
            return cand
    return None


def load_checkpoint(out: Path, model, optimizer) -> RunState | None:
    ck = _find_checkpoint(out)
    if ck is None:
        return None
    payload = torch.load(ck / "state.pt", weights_only=False)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in payload["trainable"].items():
            named[n].copy_(t.to(named[n].device))
    if payload["optimizer"] is not None and optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    rng = payload["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return RunState(**payload["state"])


def _truncate(path: Path, size: int) -> None:
    """Drop whatever an interrupted iteration appended after the last checkpoint."""
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+") as f:
            f.truncate(size)


def prepare_out_dir(cfg: Config, out: Path, resume: bool) -> None:
    """Refuse an output directory that holds a different run (or the same one without --resume)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    existing = out / "config.yaml"
    if existing.exists():
        import yaml

        try:
            old = yaml.safe_load(existing.read_text()) or {}
        except yaml.YAMLError:
            raise ConfigError(f"{out} holds a config.yaml that cannot be read; choose another --out") from None
        mine = asdict(cfg)
        ignore = {"iterations", "token_budget", "progress"}  # may be raised on resume / changed freely
        diff = sorted(k for k in set(old) | set(mine) if k not in ignore and old.get(k) != mine.get(k))
        if diff:
            raise ConfigError(f"{out} holds a different run (differs in: {', '.join(diff[:5])}); choose another --out")
        if not resume and (out / "metrics.jsonl").exists():
            raise ConfigError(f"{out} already holds this run; add --resume to continue it, or choose another --out")
    elif resume and any(out.iterdir()):
        raise ConfigError(f"--resume: {out} has no config.yaml, so it is not a gvm-mini run directory")
    save_config(cfg, existing)


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def run(cfg: Config, out: str | Path, *, resume: bool = False, model=None, tokenizer=None, problems=None) -> RunState:
    """Run ``cfg.iterations`` EM iterations into the run directory ``out`` (see module docstring).

    ``model``/``tokenizer``/``problems`` may be passed in (notebooks, tests); otherwise they are built
    from ``cfg``. With ``resume=True`` the run continues after the last completed iteration; a
    resumed CPU run ends with the same metrics and weights as an uninterrupted one.
    """
    from .evaluate import evaluate_policy
    from .rewards import get_verifier

    out = Path(out)
    # user errors first, before the run directory is written and before any model loads
    verifier = get_verifier(cfg.verifier)
    if model is None:
        check_model_request(cfg)
    train, test = problems if problems is not None else load_problems(cfg)
    prepare_out_dir(cfg, out, resume)
    _seed_all(_phase_seed(cfg.seed, "init"))
    if model is None:
        model, tokenizer = build_policy(cfg)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = _make_optimizer(cfg, model)
    # KL reference "initial" without LoRA: a frozen copy of the starting weights (re-derived on resume
    # because loading is deterministic); with LoRA the adapter is simply switched off.
    initial_values = None
    if cfg.kl_coef > 0 and cfg.kl_reference == "initial" and not cfg.lora:
        initial_values = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    metrics_path, alloc_path = out / "metrics.jsonl", out / "allocations.jsonl"
    state = load_checkpoint(out, model, optimizer) if resume else None
    if state is None:
        state = RunState()
        for p in (metrics_path, alloc_path):
            p.unlink(missing_ok=True)
    _truncate(metrics_path, state.metrics_bytes)
    _truncate(alloc_path, state.allocations_bytes)
    test_texts = _prompt_texts(cfg, tokenizer, test) if test else []

    def log(record: dict) -> None:
        base = {"iteration": state.iteration, "global_step": state.global_step, "updates": state.updates,
                "samples": state.samples, "tokens": state.tokens, "pilot_samples": state.pilot_samples,
                "pilot_tokens": state.pilot_tokens, "wall": dict(state.wall), "wall_total": sum(state.wall.values()),
                "wall_train": sum(v for k, v in state.wall.items() if k not in ("eval", "checkpoint"))}
        _append(metrics_path, {**record, **base})

    def evaluate() -> None:
        if not test or not cfg.eval_every:
            return
        t0 = time.perf_counter()
        res = evaluate_policy(
            model, tokenizer, test_texts, [p.answer for p in test], verifier, k=cfg.eval_samples,
            temperature=cfg.eval_temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_completion_length,
            batch_size=cfg.sample_batch_size, seed=_phase_seed(cfg.seed, "eval"), progress=cfg.progress,  # the same draws every time: common random numbers
        )
        state.wall["eval"] += time.perf_counter() - t0
        log({"kind": "eval", **res})

    if state.iteration == 0 and state.global_step == 0:
        evaluate()
    bar = tqdm(total=cfg.iterations, initial=state.iteration, desc=f"{cfg.allocation}-{cfg.algorithm}", disable=not cfg.progress)

    def budget_spent() -> bool:
        return cfg.token_budget is not None and state.tokens >= cfg.token_budget

    while state.iteration < cfg.iterations and not budget_spent():
        t = state.iteration
        if cfg.reset_optimizer:
            optimizer = _make_optimizer(cfg, model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        ref_values = initial_values
        if cfg.kl_coef > 0 and cfg.kl_reference == "iteration_start":
            ref_values = [p.detach().clone() for p in trainable]
        idx = iteration_prompt_indices(len(train), cfg, t)
        probs = [train[i] for i in idx]
        texts = _prompt_texts(cfg, tokenizer, probs)
        m = len(probs)
        budget = cfg.samples_per_prompt * m
        it_rec: dict = {"kind": "iteration", "iteration_index": t, "prompts": m, "budget": budget}

        # ---- E-step: pilot -> (p_i, G_i) -> allocation ----
        pilot = None
        if cfg.uses_pilot:
            _crash_point("pilot")
            t0 = time.perf_counter()
            pilot = _sample(cfg, model, tokenizer, texts, [cfg.num_pilot] * m, _phase_seed(cfg.seed, "pilot", t), "pilot")
            state.wall["pilot"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            pilot_rewards = _score(pilot, probs, verifier)
            state.wall["reward"] += time.perf_counter() - t0
            state.samples += len(pilot); state.tokens += pilot.num_tokens
            state.pilot_samples += len(pilot); state.pilot_tokens += pilot.num_tokens
            _crash_point("gradnorm")
            t0 = time.perf_counter()
            p, G = estimate_p_G(cfg, model, tokenizer, pilot, pilot_rewards, m)
            state.wall["gradnorm"] += time.perf_counter() - t0
        else:
            p, G = np.full(m, np.nan), np.full(m, np.nan)
        _crash_point("allocate")
        t0 = time.perf_counter()
        rule = alloc.get_rule(cfg.allocation)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", alloc.AllocationFallbackWarning)
            n = rule(np.nan_to_num(p), np.nan_to_num(G), budget, alpha=cfg.alpha, beta=cfg.beta,
                     min_per_prompt=cfg.min_per_prompt, max_per_prompt=cfg.max_per_prompt)
        if cfg.algorithm == "grpo" and cfg.grpo_group_size:
            g = cfg.grpo_group_size
            n = ((n + g - 1) // g) * g  # paper App. B: ceil(n_i / 4) copies x 4 rollouts
        fallback = any(issubclass(w.category, alloc.AllocationFallbackWarning) for w in caught)
        state.wall["allocate"] += time.perf_counter() - t0
        it_rec.update(fallback_uniform=fallback, n_hist=np.bincount(n).tolist(), dropped_prompts=int((n == 0).sum()),
                      mean_p=None if pilot is None else float(p.mean()))

        # ---- M-steps ----
        step_p = np.full(m, np.nan)
        for r in range(cfg.steps_per_iteration):
            sl = np.arange(r * cfg.prompts_per_step, (r + 1) * cfg.prompts_per_step)
            counts = n[sl].copy()
            parts = []
            reused = 0
            if cfg.reuse_pilot and pilot is not None:
                for local, i in enumerate(sl):
                    mine = np.flatnonzero(pilot.prompt_index == i)[: counts[local]]
                    part = pilot.select(mine)
                    part.prompt_index = np.full(len(part), local)
                    parts.append(part)
                    counts[local] -= len(part)
                    reused += len(part)
            _crash_point("rollout")
            t0 = time.perf_counter()
            fresh = _sample(cfg, model, tokenizer, [texts[i] for i in sl], counts, _phase_seed(cfg.seed, "rollout", t, r), f"rollout {r + 1}/{cfg.steps_per_iteration}")
            state.wall["rollout"] += time.perf_counter() - t0
            state.samples += len(fresh); state.tokens += fresh.num_tokens
            batch = Rollout.concat(parts + [fresh])
            t0 = time.perf_counter()
            step_probs = [probs[i] for i in sl]
            rewards = _score(batch, step_probs, verifier)
            state.wall["reward"] += time.perf_counter() - t0
            acc = np.bincount(batch.prompt_index, weights=(rewards > 0.5).astype(float), minlength=len(sl))
            tot = np.bincount(batch.prompt_index, minlength=len(sl))
            step_p[sl] = np.where(tot > 0, acc / np.maximum(tot, 1), np.nan)
            _crash_point("update")
            t0 = time.perf_counter()
            if len(batch):
                model.train()
                st = m_step(cfg, model, optimizer, batch, rewards, pad_id, ref_values, _phase_seed(cfg.seed, "minibatch", t, r))
            else:
                st = {"updates": 0, "skipped_updates": 0, "zero_signal_frac": 1.0}
            state.wall["update"] += time.perf_counter() - t0
            state.global_step += 1
            state.updates += st["updates"]
            log({"kind": "step", "step_in_iteration": r, "step_samples": len(batch), "step_tokens": batch.num_tokens,
                 "pilot_reused": reused,
                 "accepted": int((rewards > 0.5).sum()), "reward_mean": float(rewards.mean()) if len(rewards) else None,
                 "truncated_frac": float(batch.truncated.mean()) if len(batch) else None, **st})
            _crash_point("step_logged")

        # ---- evaluate, record, checkpoint ----
        state.iteration += 1
        _append(alloc_path, {"iteration": t, "prompt_ids": idx.tolist(), "p": p, "G": G, "n": n,
                             "step_acceptance": step_p,
                             "difficulty": [pb.meta.get("difficulty") for pb in probs]})
        log(it_rec)
        if cfg.eval_every and (state.iteration % cfg.eval_every == 0 or state.iteration == cfg.iterations or budget_spent()):
            _crash_point("eval")
            evaluate()
        _crash_point("checkpoint")
        t0 = time.perf_counter()
        state.metrics_bytes = metrics_path.stat().st_size
        state.allocations_bytes = alloc_path.stat().st_size
        save_checkpoint(out, model, None if cfg.reset_optimizer else optimizer, state)
        state.wall["checkpoint"] += time.perf_counter() - t0  # shows in the next records (not in this checkpoint)
        bar.update(1)
    bar.close()
    if cfg.save_weights and cfg.lora:
        with contextlib.suppress(Exception):
            model.save_pretrained(out / "adapter")
    return state
