"""The run directory: atomic writes, checkpoints without pickle, metric logs, resume.

Everything :func:`gvm_mini.em.run` keeps on disk goes through this module, so that ``em.py`` reads as
the algorithm alone. A run directory holds::

    config.yaml          the resolved config                      (atomic_write_text)
    metrics.jsonl        one JSON object per M-step / iteration / evaluation   (append_jsonl)
    allocations.jsonl    per iteration: prompt ids, p_i, G_i, n_i             (append_jsonl)
    checkpoint/          trainable.safetensors, optimizer.safetensors, state.json, COMPLETE
    adapter/             the LoRA adapter of the last finished iteration      (atomic directory swap)
    tensorboard/         event files, with report_to=tensorboard

Guarantees:

* **Atomic writes.** A file is written to a temporary name in the same directory, flushed and
  fsynced, renamed over the final name, and the directory is fsynced (:func:`atomic_write_bytes`,
  :func:`atomic_write_text`, :func:`atomic_savefig`). A directory is built beside its final name and
  swapped in with two renames (:func:`atomic_dir`). A kill at any instant leaves either the old or
  the new version complete, plus at most a leftover ``.NAME.tmp-PID`` / ``.NAME.tmp`` / ``.NAME.old``
  entry, which :func:`clean_leftovers` (run by ``--resume``) removes or, for a directory whose swap
  was cut between its two renames, puts back.
* **No pickle.** Nothing read from a run directory can execute code: tensors are stored with
  safetensors, everything else (loop counters, optimizer hyper-parameters, the Python, NumPy and torch
  RNG states) as JSON. A checkpoint holding a pickle (``state.pt``, the format before this one, or a
  planted file) is refused with one :class:`~gvm_mini.config.ConfigError` line before anything is loaded.
* **Resume is exact.** A checkpoint stores the byte lengths of ``metrics.jsonl`` and
  ``allocations.jsonl`` it corresponds to; resuming truncates whatever an interrupted iteration
  appended after it, and restores weights, optimizer moments and RNG states bit for bit.

Appends to the JSONL logs are not atomic (they need not be: a torn last line lies after the
checkpointed length and is truncated on resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import (  # re-exported: the run directory's writers
    LEFTOVER, atomic_dir, atomic_savefig, atomic_write_bytes, atomic_write_text, clean_leftovers, crash_point,
    fsync_dir,
)
from .config import Config, ConfigError, save_config

__all__ = [
    "PHASES",
    "RunState",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_savefig",
    "atomic_dir",
    "clean_leftovers",
    "fsync_dir",
    "append_jsonl",
    "truncate",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "find_checkpoint",
    "refuse_pickles",
    "prepare_out_dir",
    "resume_state",
    "record_checkpoint",
    "save_adapter",
    "MetricsLog",
    "Recorder",
    "crash_point",
]

PHASES = ("pilot", "gradnorm", "allocate", "rollout", "reward", "update", "eval", "checkpoint")
CHECKPOINT_FORMAT = 2  # 1 was a torch.save pickle (state.pt), no longer loaded


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
    # pilot: history (gvm_mini.em.update_history): per training-prompt id (a string key), the counts of its
    # last visit, {"k": accepted, "n": samples, "tok": completion tokens, "G": mean grad norm or 0,
    # "it": iteration}; plain JSON, saved in state.json with the rest. Empty for the other pilot modes.
    history: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# JSONL logs
# ---------------------------------------------------------------------------------------------


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def append_jsonl(path: Path, record: dict) -> None:
    """Append ``record`` as one JSON line and fsync (NumPy scalars and arrays become JSON numbers/lists)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate(path: Path, size: int) -> None:
    """Drop whatever an interrupted iteration appended to ``path`` after its first ``size`` bytes."""
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# checkpoints: safetensors + JSON, written as an atomic directory swap
# ---------------------------------------------------------------------------------------------

_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")
_CK_FILES = ("trainable.safetensors", "state.json", "COMPLETE")


def _rng_state() -> dict:
    import torch

    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": bytes(torch.get_rng_state().numpy()).hex(),
    }


def _set_rng_state(rng: dict) -> None:
    import torch

    version, mt, gauss = rng["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray.fromhex(rng["torch"]), dtype=torch.uint8).clone())


def _split_optimizer(sd: dict) -> tuple[dict, dict]:
    """An optimizer ``state_dict`` -> (tensors for safetensors, the rest as JSON-able data)."""
    import torch

    tensors, state = {}, {}
    for pid, entries in sd["state"].items():
        state[str(pid)] = {}
        for k, v in entries.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous()
                state[str(pid)][k] = {"tensor": f"state.{pid}.{k}"}
            else:
                state[str(pid)][k] = {"value": v}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    tuples = sorted({k for g in sd["param_groups"] for k, v in g.items() if isinstance(v, tuple)})
    return tensors, {"state": state, "param_groups": groups, "tuple_keys": tuples}


def _join_optimizer(meta: dict, tensors: dict) -> dict:
    state = {}
    for pid, entries in meta["state"].items():
        state[int(pid)] = {k: tensors[e["tensor"]] if "tensor" in e else e["value"] for k, e in entries.items()}
    tuples = set(meta.get("tuple_keys", ()))
    groups = [{k: (tuple(v) if k in tuples else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(out: Path, model, optimizer, state: RunState) -> None:
    """Write ``out/checkpoint`` atomically (built as ``.checkpoint.tmp``, then swapped in by
    :func:`atomic_dir`): ``trainable.safetensors`` (every parameter with ``requires_grad``),
    ``optimizer.safetensors`` + the optimizer's scalars and param groups (when ``optimizer`` is not
    None), ``state.json`` (:class:`RunState`, RNG states) and last a ``COMPLETE`` marker. A kill at
    any point leaves the old or the new checkpoint complete, never a torn one."""
    from safetensors.torch import save_file

    with atomic_dir(out / "checkpoint") as tmp:
        trainable = {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(tmp / "trainable.safetensors"))
        opt_meta = None
        if optimizer is not None:
            tensors, opt_meta = _split_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        payload = {"format": CHECKPOINT_FORMAT, "state": asdict(state), "optimizer": opt_meta, "rng": _rng_state()}
        (tmp / "state.json").write_text(json.dumps(payload))
        (tmp / "COMPLETE").write_text(json.dumps({"iteration": state.iteration}))


def _is_complete(ck: Path) -> bool:
    return all((ck / f).is_file() for f in _CK_FILES)


def find_checkpoint(out: Path) -> Path | None:
    """The checkpoint directory a resume loads: ``checkpoint`` if complete, else ``.checkpoint.old``
    if complete (a kill between the two renames of the swap), else None. ``.checkpoint.tmp`` is
    never loaded."""
    for cand in (out / "checkpoint", out / ".checkpoint.old"):
        if _is_complete(cand):
            return cand
    return None


def refuse_pickles(out: Path) -> None:
    """One ConfigError line if a checkpoint directory of ``out`` holds a pickle file (``state.pt`` of
    the old format, or anything ``*.pt``/``*.pth``/``*.pkl``/``*.pickle``/``*.bin``). Nothing is read."""
    for ck in (out / "checkpoint", out / ".checkpoint.old", out / ".checkpoint.tmp"):
        _refuse_pickles_in(ck)


def _refuse_pickles_in(ck: Path) -> None:
    if not ck.is_dir():
        return
    found = sorted(p.name for p in ck.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
    if found:
        old = "state.pt" in found and not (ck / "state.json").is_file()
        raise ConfigError(
            f"{ck / found[0]} is a pickle{' (a checkpoint from before gvm-mini stored safetensors + JSON)' if old else ''}; "
            f"gvm-mini never unpickles files from a run directory because that can run arbitrary code. "
            f"Start a new --out, or delete {ck} to restart this run from iteration 0"
        )


def read_checkpoint(path: Path) -> dict:
    """The contents of a checkpoint directory (or of the one :func:`find_checkpoint` picks in a run
    directory) as plain data: ``{"state": dict, "trainable": {name: tensor}, "optimizer": state_dict
    or None, "rng": dict}``. Reads only safetensors and JSON."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file() and find_checkpoint(path) is not None:
        path = find_checkpoint(path)
    _refuse_pickles_in(path)
    try:
        payload = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable checkpoint ({e})") from None
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: checkpoint format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    optimizer = None
    if payload["optimizer"] is not None:
        optimizer = _join_optimizer(payload["optimizer"], load_file(str(path / "optimizer.safetensors")))
    return {"state": payload["state"], "trainable": load_file(str(path / "trainable.safetensors")),
            "optimizer": optimizer, "rng": payload["rng"]}


def load_checkpoint(out: Path, model, optimizer) -> RunState | None:
    """Restore the checkpoint of run directory ``out`` into ``model`` (trainable weights, bit for
    bit), ``optimizer`` (moments and step counts) and the Python / NumPy / torch RNGs; returns its
    :class:`RunState`, or None when there is no complete checkpoint. A checkpoint whose parameter names
    or shapes differ from the model's is one ConfigError line."""
    import torch

    refuse_pickles(out)
    ck = find_checkpoint(out)
    if ck is None:
        return None
    data = read_checkpoint(ck)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = data["trainable"]
    if set(saved) != set(named) or any(saved[n].shape != named[n].shape for n in named):
        raise ConfigError(f"{ck}: the checkpoint's trainable parameters do not match the model; choose another --out")
    with torch.no_grad():
        for n, t in saved.items():
            named[n].copy_(t.to(named[n].device))
    if data["optimizer"] is not None and optimizer is not None:
        optimizer.load_state_dict(data["optimizer"])
    _set_rng_state(data["rng"])
    return RunState(**data["state"])


# ---------------------------------------------------------------------------------------------
# opening a run directory, resuming, checkpointing
# ---------------------------------------------------------------------------------------------

METRICS, ALLOCATIONS = "metrics.jsonl", "allocations.jsonl"


def _checkpoint_old_wins(final: Path, old: Path) -> bool:
    return final.name == "checkpoint" and not _is_complete(final) and _is_complete(old)


def prepare_out_dir(cfg: Config, out: Path, resume: bool) -> None:
    """Refuse an output directory that holds a different run (or the same one without --resume), or a
    checkpoint holding a pickle; with ``resume`` first clean what a kill left (:func:`clean_leftovers`);
    then write ``config.yaml`` atomically. Every refusal is one ConfigError line, before any model loads."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    existing = out / "config.yaml"
    ours = existing.exists() or any(LEFTOVER.match(p.name) and p.name.startswith(".config.yaml.") for p in out.iterdir())
    if resume and ours:
        refuse_pickles(out)
        clean_leftovers(out, keep_old_if=_checkpoint_old_wins)
    if existing.exists():
        import yaml

        try:
            old = yaml.safe_load(existing.read_text()) or {}
        except yaml.YAMLError:
            raise ConfigError(f"{out} holds a config.yaml that cannot be read; choose another --out") from None
        from .config import as_dict

        mine = as_dict(cfg)
        ignore = {"iterations", "token_budget", "progress", "report_to"}  # may be raised on resume / changed freely
        # a key the old run's config.yaml lacks (written before the key existed) had its default value then
        defaults = as_dict(type(cfg)())
        diff = sorted(k for k in set(old) | set(mine)
                      if k not in ignore and old.get(k, defaults.get(k)) != mine.get(k))
        if diff:
            raise ConfigError(f"{out} holds a different run (differs in: {', '.join(diff[:5])}); choose another --out")
        if not resume and (out / METRICS).exists():
            raise ConfigError(f"{out} already holds this run; add --resume to continue it, or choose another --out")
    elif resume and any(out.iterdir()):
        raise ConfigError(f"--resume: {out} has no config.yaml, so it is not a gvm-mini run directory")
    save_config(cfg, existing)


def resume_state(out: Path, model, optimizer, resume: bool) -> RunState:
    """The state to continue from: the checkpoint's (``resume`` and one exists: weights, optimizer and
    RNGs restored, logs truncated to what it recorded) or a fresh :class:`RunState` (logs removed)."""
    state = load_checkpoint(out, model, optimizer) if resume else None
    if state is None:
        state = RunState()
        for name in (METRICS, ALLOCATIONS):
            (out / name).unlink(missing_ok=True)
    truncate(out / METRICS, state.metrics_bytes)
    truncate(out / ALLOCATIONS, state.allocations_bytes)
    return state


def record_checkpoint(out: Path, model, optimizer, state: RunState) -> None:
    """Checkpoint the end of an iteration: note the current lengths of the logs in ``state`` (what a
    resume keeps), then :func:`save_checkpoint`."""
    state.metrics_bytes = (out / METRICS).stat().st_size
    state.allocations_bytes = (out / ALLOCATIONS).stat().st_size
    save_checkpoint(out, model, optimizer, state)


def save_adapter(out: Path, model) -> Path | None:
    """Save a PEFT model's adapter to ``out/adapter`` as an atomic directory swap (safetensors);
    returns the path, or None for a model without ``save_pretrained``."""
    from .models import quiet_loading

    if not hasattr(model, "save_pretrained"):
        return None
    with atomic_dir(out / "adapter") as tmp, quiet_loading():
        model.save_pretrained(tmp, safe_serialization=True)
    return out / "adapter"


# ---------------------------------------------------------------------------------------------
# metrics: metrics.jsonl, and TensorBoard with report_to=tensorboard
# ---------------------------------------------------------------------------------------------


def _scalars(record: dict, prefix: str = ""):
    for k, v in record.items():
        if isinstance(v, dict):
            yield from _scalars(v, f"{prefix}{k}/")
        elif isinstance(v, (bool, np.bool_)):
            yield f"{prefix}{k}", float(v)
        elif isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v):
            yield f"{prefix}{k}", float(v)


class MetricsLog:
    """``metrics.jsonl`` and ``allocations.jsonl`` (always) and a TensorBoard event file (``report_to="tensorboard"``) with the
    same numbers.

    Every numeric field of a record becomes the scalar ``KIND/FIELD`` (nested dicts such as ``wall``
    become ``KIND/wall/PHASE``) at step ``global_step``: accuracy (``eval/avg_at_k``), tokens, samples,
    pilot tokens, wall time per phase, loss, clip fraction, KL, zero-signal fraction; the allocation
    (``allocation/n``, ``/p``, ``/G``) is logged as histograms by :meth:`allocation`. A resumed run
    reopens the event directory with ``purge_step`` at its checkpointed step, so TensorBoard drops the
    events an interrupted iteration wrote after it. ``tensorboard`` is an optional extra, imported
    only when asked for (one ImportError line when missing)."""

    def __init__(self, out: Path, report_to: str = "none", *, purge_step: int | None = None):
        self.path, self.alloc_path = out / METRICS, out / ALLOCATIONS
        self.writer = None
        if report_to == "tensorboard":
            self.writer = tensorboard_writer(out / "tensorboard", purge_step=purge_step)

    def write(self, record: dict, state: RunState | None = None) -> None:
        """Append ``record`` to metrics.jsonl; with ``state``, followed by the cumulative counters
        (iteration, global_step, updates, samples, tokens, pilot samples and tokens, wall time per
        phase, ``wall_total`` and ``wall_train`` = wall time without eval and checkpoint)."""
        if state is not None:
            record = {**record, "iteration": state.iteration, "global_step": state.global_step,
                      "updates": state.updates, "samples": state.samples, "tokens": state.tokens,
                      "pilot_samples": state.pilot_samples, "pilot_tokens": state.pilot_tokens,
                      "wall": dict(state.wall), "wall_total": sum(state.wall.values()),
                      "wall_train": sum(v for k, v in state.wall.items() if k not in ("eval", "checkpoint"))}
        append_jsonl(self.path, record)
        if self.writer is not None:
            step = int(record.get("global_step", 0))
            kind = record.get("kind", "record")
            for tag, v in _scalars({k: v for k, v in record.items() if k not in ("kind", "global_step")}):
                self.writer.add_scalar(f"{kind}/{tag}", v, step)
            self.writer.flush()

    def allocation(self, record: dict, step: int) -> None:
        """Append ``record`` (one iteration's p_i, G_i, n_i) to allocations.jsonl (and histograms)."""
        append_jsonl(self.alloc_path, record)
        if self.writer is None:
            return
        for key in ("n", "p", "G"):
            v = np.asarray(record.get(key, []), dtype=float)
            v = v[np.isfinite(v)]
            if v.size:
                self.writer.add_histogram(f"allocation/{key}", v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Recorder:
    """The run's bookkeeping, kept out of the algorithm: phase timers and crash points
    (``with rec.phase("pilot"):``), the compute counters of :class:`RunState` (generated samples and
    tokens, pilots apart) and the metric records (``metrics.jsonl``, ``allocations.jsonl``). Without a
    :class:`MetricsLog` (``python -m gvm_mini allocate``, notebooks) records are dropped and the
    counters are still kept. Benchmarks read the phases' wall times from ``state.wall``."""

    def __init__(self, state: RunState, metrics: MetricsLog | None = None):
        self.state, self.metrics = state, metrics

    @contextlib.contextmanager
    def phase(self, name: str, *, crash: bool = True):
        """Time the block into ``state.wall[name]``; first the crash point ``name`` (``crash``)."""
        if crash:
            crash_point(name)
        t0 = time.perf_counter()
        yield
        self.state.wall[name] += time.perf_counter() - t0

    def generated(self, rollout, *, pilot: bool = False) -> None:
        """Count a rollout's samples and completion tokens (and as pilot samples, with ``pilot``)."""
        self.state.samples += len(rollout)
        self.state.tokens += rollout.num_tokens
        if pilot:
            self.state.pilot_samples += len(rollout)
            self.state.pilot_tokens += rollout.num_tokens

    def log(self, record: dict) -> None:
        """Append ``record`` with the cumulative counters (:meth:`MetricsLog.write`)."""
        if self.metrics is not None:
            self.metrics.write(record, self.state)

    def allocation(self, record: dict) -> None:
        """Append one iteration's allocation record (:meth:`MetricsLog.allocation`)."""
        if self.metrics is not None:
            self.metrics.allocation(record, self.state.global_step)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def check_report_to(report_to: str) -> None:
    """One ImportError line when ``report_to="tensorboard"`` but the package is missing."""
    import importlib.util

    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ImportError("report_to=tensorboard needs the tensorboard package: pip install 'gvm-mini[tensorboard]' "
                          "(or pip install tensorboard); or set report_to=none")


def tensorboard_writer(log_dir: Path, *, purge_step: int | None = None):
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir`` (lazy import, clear ImportError)."""
    check_report_to("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
