"""Run configuration: one dataclass, YAML in and out, ``--set key=value`` overrides, validation.

Every check here runs before any model is loaded, and every failure is one :class:`ConfigError`
line that names the key. Names mirror TRL's ``GRPOConfig`` where the concept is the same
(``num_generations`` is ``samples_per_prompt`` here because GVM makes it a per-prompt budget,
``epsilon``, ``epsilon_high``, ``temperature``, ``max_completion_length``, ``loss_type``); the KL
coefficient is ``kl_coef`` because ``alpha``/``beta`` are the allocation's regulariser (Eq. 7)
— TRL's ``beta`` is its KL coefficient.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .allocation import RULES
from .atomic import atomic_write_text
from .data import TASKS
from .estimators import ESTIMATORS
from .gradnorm import PARAM_SETS
from .losses import LOSS_TYPES, PROMPT_WEIGHTINGS
from .rewards import VERIFIERS as VERIFIER_FUNCTIONS

__all__ = ["Config", "ConfigError", "load_config", "apply_overrides", "save_config", "validate", "as_dict",
           "RULE_PRESETS"]


class ConfigError(ValueError):
    """A user-fixable problem with the configuration (or its inputs); the message is one line."""


# Option lists: each is written once, in the module that implements the options; only the options
# that no lower module owns are written here.
ALGORITHMS = ("raft", "raftpp", "grpo")
ALLOCATIONS = tuple(RULES)
GRADNORM_PARAMS = PARAM_SETS
VERIFIERS = tuple(VERIFIER_FUNCTIONS)
BACKENDS = ("hf", "vllm")
DTYPES = ("float32", "bfloat16", "float16", "auto")
KL_REFERENCES = ("iteration_start", "initial")
OLD_LOGPROBS = ("recompute", "behaviour")
PILOTS = ("fresh", "reuse", "history", "history_reuse")
MINI_BATCH_UNITS = ("responses", "fork")
REPORT_TO = ("none", "tensorboard")

#: What naming a rule sets, unless the config sets the key itself. A rule is its allocation *and* the
#: estimates, pilot policy and M-step weighting it was studied with, so ``allocation: gvm_robust`` alone
#: runs the rule of the allocation study (settings chosen on its tuning task, bench/allocation_study.py).
#: Every other rule gets :data:`PAPER_DEFAULTS`: the paper's Algorithm 2 estimates on a fresh pilot and
#: the official code's token-mean M-step. ``knapsack`` is studied with earlier epochs' estimates.
PAPER_DEFAULTS = {"estimator": "paper", "pilot": "fresh", "prompt_weighting": "tokens"}
RULE_PRESETS = {
    "gvm_robust": {"estimator": "robust", "pilot": "history_reuse", "prompt_weighting": "prompt"},
    "knapsack": {"pilot": "history"},
}


@dataclass
class Config:
    """Everything a run needs. Defaults are a tiny CPU run of GVM-RAFT++ (seconds per iteration)."""

    # --- model -------------------------------------------------------------------------------
    model: str = "tiny-qwen2"  # local dir, hub id, tiny-qwen2, tiny-llama, smollm2, twin:<name>
    init_from: str | None = None  # a directory with weights to start from (e.g. the demo's SFT warm start)
    dtype: str = "float32"
    device: str = "cpu"
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False

    # --- data --------------------------------------------------------------------------------
    dataset: str = "arithmetic"  # a generated task of gvm_mini.data.TASKS (arithmetic, rules) | champ | jsonl:PATH | hub:NAME
    eval_dataset: str | None = None  # default: the held-out split of `dataset`
    train_size: int = 256
    task_min_operands: int = 2  # dataset=arithmetic only: the generated task's shape
    task_max_operands: int = 4
    task_max_digits: int = 3
    task_ops: str = "+-*"
    test_size: int = 64
    data_seed: int = 1234
    verifier: str = "exact"  # exact (last \boxed{}) | math_verify | last_number (last number literal of free text; never evaluates an expression)
    system_prompt: str | None = "default"  # "default" = the paper's; null = no system message
    instruction: str | None = "default"  # appended to each problem; "default" = the paper's
    max_prompt_length: int = 256

    # --- algorithm (the paper's §3; theory/algorithm.md) -----------------------------------------------------
    algorithm: str = "raftpp"
    allocation: str = "gvm"
    num_pilot: int = 8  # N' (Algorithm 2); ignored by allocation=uniform, which needs no pilot
    samples_per_prompt: int = 8  # N / n: the per-iteration budget is this times the prompts
    alpha: float = 1e-3
    beta: float = 2.0
    min_per_prompt: int = 0
    max_per_prompt: int | None = None
    reuse_pilot: bool = False  # deprecated alias of pilot: reuse (kept so old configs and run dirs load)
    pilot: str | None = None  # None: the rule's own (RULE_PRESETS; paper: fresh). fresh (paper) | reuse (pilots count towards n_i and are trained on) | history (earlier epochs' samples, no pilot for seen prompts) | history_reuse (both)
    estimator: str | None = None  # None: the rule's own (RULE_PRESETS; paper). paper (raw pilot fraction, G=0 without an accepted pilot) | bayes (empirical-Bayes Beta posterior mean, pooled G) | robust (per-prompt Beta posterior over every sample seen, G shrunk to the pool; the history accumulates)
    robust_floor: int = 2  # allocation: gvm_robust - at least this many samples per prompt (lowered to N/m if N cannot pay it)
    robust_cap_factor: float = 2.0  # allocation: gvm_robust - at most this many times the uniform share
    prompt_weighting: str | None = None  # None: the rule's own (RULE_PRESETS; paper: tokens). M-step: tokens (official code, token mean) | prompt (Algorithm 1: 1/|D_i|) | lemma1 (1/(n_i p_i))
    gradnorm_params: str = "embed_tokens"
    grpo_group_size: int | None = None  # None: one group of n_i per prompt (official HEAD); 4: paper App. B
    grpo_scale_std: bool = True

    # --- sampling ----------------------------------------------------------------------------
    backend: str = "hf"  # hf (sample_hf decode loop) | vllm (extra; CUDA or CPU build: one colocated engine, the LoRA adapter as a LoRARequest)
    vllm_gpu_memory_utilization: float = 0.3  # backend=vllm on a GPU: the share of the GPU vLLM takes (its weights + KV cache); the trainer gets the rest. On CPU the KV cache comes from the memory plan instead
    sample_dtype: str = "auto"  # backend=hf: sample (pilots, rollouts, evaluation) with a merged copy of the policy in this dtype (bfloat16 on a CPU with bf16 matmuls: faster); auto = the policy itself. The trainer stays in `dtype`; needs old_logprobs=recompute. Unused with backend=vllm (vllm_dtype) and with load_in_4bit (the 4-bit policy samples itself)
    vllm_dtype: str = "auto"  # backend=vllm: the engine's weights; auto = float16 for a float16 GPU run, else bfloat16 (CUDA LoRA kernels are 16-bit; on CPU float32 also works and matches the trainer's fp32 log-probs)
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 64
    sample_batch_size: int = 64
    max_batch_tokens: int | None = None

    # --- optimisation --------------------------------------------------------------------------
    iterations: int = 2
    token_budget: int | None = None  # stop after the M-step that reaches this many generated tokens (pilots included)
    prompts_per_step: int = 8
    steps_per_iteration: int = 2  # k M-steps per E-step (paper: ~9-10)
    mini_batch_size: int = 64  # responses per optimizer update
    # responses (fair: every arm updates once per mini_batch_size responses) | fork (the official verl
    # fork's count: a non-uniform arm's mini-batch holds mini_batch_size / samples_per_prompt responses,
    # about samples_per_prompt times the updates per M-step; theory/official_code.md)
    mini_batch_unit: str = "responses"
    micro_batch_size: int | None = None  # responses per forward/backward (gradient accumulation); None = mini_batch_size
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    epsilon: float = 0.2
    epsilon_high: float = 0.2
    kl_coef: float = 0.001
    kl_reference: str = "iteration_start"
    loss_type: str = "token_mean"
    old_logprobs: str = "recompute"  # "recompute" (verl: a forward pass before the updates) or "behaviour" (the sampler's, HF at T=1)
    reset_optimizer: bool = True  # fresh AdamW every iteration, as the official code

    # --- evaluation ----------------------------------------------------------------------------
    eval_every: int = 1  # iterations; 0 = never
    eval_samples: int = 4  # k of Average@k / pass@k
    eval_temperature: float = 1.0
    eval_size: int | None = None  # None = the whole eval split
    group_key: str | None = None  # a Problem.meta key (e.g. "family"): eval records add Average@k per group

    # --- bookkeeping ---------------------------------------------------------------------------
    seed: int = 0
    progress: bool = True
    save_weights: bool = True  # keep the trainable weights of the last finished iteration
    report_to: str = "none"  # none | tensorboard (metrics.jsonl is always written; tensorboard is an optional extra)

    # --- internal: which keys validate() filled from the rule's preset (never read from or written to YAML)
    rule_defaults: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        resolve_rule(self)  # so that every Config, validated or not, runs its rule's settings

    @property
    def budget_per_step(self) -> int:
        return self.samples_per_prompt * self.prompts_per_step

    @property
    def prompts_per_iteration(self) -> int:
        return self.prompts_per_step * self.steps_per_iteration

    @property
    def uses_pilot(self) -> bool:
        return self.allocation != "uniform"

    @property
    def pilot_mode(self) -> str:
        """``pilot``, with the deprecated ``reuse_pilot: true`` read as ``pilot: reuse``."""
        return "reuse" if self.reuse_pilot else self.pilot

    @property
    def uses_history(self) -> bool:
        """Seen prompts take their estimates from the history record instead of a new pilot."""
        return self.uses_pilot and self.pilot_mode in ("history", "history_reuse")

    @property
    def trains_on_pilot(self) -> bool:
        """Pilot samples count towards n_i and are trained on."""
        return self.pilot_mode in ("reuse", "history_reuse")


_FIELDS = {f.name: f for f in fields(Config) if f.name != "rule_defaults"}


def _type_of(name: str) -> tuple[type, bool]:
    """(base type, optional?) for a field, from its annotation string."""
    ann = str(_FIELDS[name].type)
    optional = "None" in ann
    base = ann.replace("| None", "").replace("None |", "").strip()
    return {"int": int, "float": float, "bool": bool, "str": str}[base], optional


def _coerce(name: str, value: Any) -> Any:
    typ, optional = _type_of(name)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
        if optional:
            return None
        if value is None or typ is not str:  # a string field keeps the word: report_to: none
            raise ConfigError(f"{name} may not be null (expected {typ.__name__})")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return str(value)


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_FIELDS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def from_dict(d: dict, base: Config | None = None) -> Config:
    """Build a Config from a mapping, coercing types; unknown keys suggest the nearest valid one."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of key: value, got {type(d).__name__}")
    values = asdict(base) if base is not None else {}
    values["rule_defaults"] = dict(values.get("rule_defaults", {}))
    for k, v in d.items():
        if k not in _FIELDS:
            raise _unknown(str(k))
        values[k] = _coerce(k, v)
        values["rule_defaults"].pop(k, None)  # set here: the user's value, not the rule's
    return Config(**values)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or start from defaults if ``path`` is None), apply ``key=value``
    overrides, validate. Any problem is one :class:`ConfigError` naming the file or key."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file") from None
        if data is None:
            data = {}
        if isinstance(data, dict) and "base" in data:  # `base: other.yaml` (relative to this file) first
            base_path = path.parent / str(data.pop("base"))
            if base_path.resolve() == path.resolve():
                raise ConfigError(f"{path}: base refers to the file itself")
            cfg = load_config(base_path)
        try:
            cfg = from_dict(data, base=cfg)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    cfg = apply_overrides(cfg, overrides or [])
    return validate(cfg)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` strings (values parsed as YAML scalars: ``lr=1e-5``, ``lora=false``)."""
    updates = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in _FIELDS:
            raise _unknown(key)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        updates[key] = value
    return from_dict(updates, base=cfg) if updates else cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically (temporary file, fsync, rename; see
    :func:`gvm_mini.atomic.atomic_write_text`): a kill leaves the previous file or the new one."""
    atomic_write_text(path, yaml.safe_dump(as_dict(cfg), sort_keys=False))


def as_dict(cfg: Config) -> dict:
    """The config's keys and values, as YAML holds them (without the internal ``rule_defaults``)."""
    d = asdict(cfg)
    d.pop("rule_defaults", None)
    return d


def rule_summary(cfg: Config) -> str:
    """One line: the allocation rule with the settings that make it (estimates, pilot, M-step
    weighting; floor and cap for ``gvm_robust``), each marked ``(rule)`` if the rule chose it."""
    keys = ["estimator", "pilot", "prompt_weighting"]
    if cfg.allocation == "gvm_robust":
        keys = ["estimator", "pilot", "robust_floor", "robust_cap_factor", "prompt_weighting"]
    if cfg.allocation == "uniform":
        keys = ["prompt_weighting"]
    parts = [f"{k}={getattr(cfg, k)}" + (" (rule)" if k in cfg.rule_defaults else "") for k in keys]
    return f"rule: allocation={cfg.allocation} " + " ".join(parts)


def resolve_rule(cfg: Config) -> Config:
    """Fill, in place, the keys the config leaves to its rule (``None``) from :data:`RULE_PRESETS`
    (else :data:`PAPER_DEFAULTS`), and remember them in ``cfg.rule_defaults`` so that a copy with another
    ``allocation`` (:func:`replace`, a YAML ``base:``, ``dataclasses.replace``) takes the new rule's values
    instead of keeping the old rule's. A key the user set keeps its value (:func:`from_dict` and
    :func:`replace` drop the keys they are given from ``rule_defaults``; ``dataclasses.replace`` cannot
    tell an explicit value equal to the old rule's from the rule's own). Returns ``cfg``."""
    preset = {**PAPER_DEFAULTS, **RULE_PRESETS.get(cfg.allocation, {})}
    filled = {}
    for name, value in preset.items():
        current = getattr(cfg, name)
        if current is None or (name in cfg.rule_defaults and current == cfg.rule_defaults[name]):
            setattr(cfg, name, value)
            filled[name] = value
    cfg.rule_defaults = filled
    return cfg


def _choice(cfg: Config, name: str, options: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in options:
        close = difflib.get_close_matches(str(v), options, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {v!r}{hint}")


def _positive(cfg: Config, *names: str, zero_ok: bool = False) -> None:
    for n in names:
        v = getattr(cfg, n)
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{n} must be finite, got {v}")
        if v < 0 or (v == 0 and not zero_ok):
            raise ConfigError(f"{n} must be {'>= 0' if zero_ok else '> 0'}, got {v}")


def validate(cfg: Config) -> Config:
    """Every check that can be made without loading a model; raises one-line ConfigErrors. First fills
    the keys left to the rule (:func:`resolve_rule`), in place; returns ``cfg``."""
    resolve_rule(cfg)
    for name, opts in [
        ("algorithm", ALGORITHMS), ("allocation", ALLOCATIONS), ("gradnorm_params", GRADNORM_PARAMS),
        ("loss_type", LOSS_TYPES), ("verifier", VERIFIERS), ("backend", BACKENDS), ("dtype", DTYPES),
        ("kl_reference", KL_REFERENCES), ("old_logprobs", OLD_LOGPROBS),
        ("estimator", ESTIMATORS), ("pilot", PILOTS), ("mini_batch_unit", MINI_BATCH_UNITS), ("prompt_weighting", PROMPT_WEIGHTINGS), ("report_to", REPORT_TO),
    ]:
        _choice(cfg, name, opts)
    _positive(cfg, "alpha", "learning_rate", "iterations", "prompts_per_step", "steps_per_iteration",
              "mini_batch_size", "samples_per_prompt", "max_completion_length", "sample_batch_size",
              "lora_r", "lora_alpha", "eval_samples", "train_size", "max_prompt_length",
              "max_batch_tokens", "top_p", "eval_size", "micro_batch_size", "token_budget")
    _positive(cfg, "temperature", "eval_temperature", "weight_decay", "max_grad_norm", "epsilon",
              "epsilon_high", "kl_coef", "min_per_prompt", "lora_dropout", "test_size", "eval_every",
              zero_ok=True)
    if cfg.uses_pilot and cfg.num_pilot < 1:
        raise ConfigError(f"num_pilot (N') must be >= 1 for allocation={cfg.allocation}, got {cfg.num_pilot}")
    if cfg.num_pilot < 0:
        raise ConfigError(f"num_pilot must be >= 0, got {cfg.num_pilot}")
    if cfg.prompt_weighting == "lemma1" and not cfg.uses_pilot:
        raise ConfigError("prompt_weighting=lemma1 weights by 1/(n_i p_i) and needs the pilot's p_i; allocation=uniform has none (use tokens or prompt)")
    if cfg.robust_floor < 0 or cfg.robust_cap_factor < 1:
        raise ConfigError(f"robust_floor must be >= 0 and robust_cap_factor >= 1, got {cfg.robust_floor} and {cfg.robust_cap_factor}")
    if cfg.mini_batch_unit == "fork" and cfg.mini_batch_size % cfg.samples_per_prompt:
        raise ConfigError(f"mini_batch_unit=fork divides mini_batch_size ({cfg.mini_batch_size}) by samples_per_prompt "
                          f"({cfg.samples_per_prompt}); choose a multiple")
    if cfg.reuse_pilot and cfg.pilot not in ("fresh", "reuse"):
        raise ConfigError(f"reuse_pilot: true (deprecated alias of pilot: reuse) conflicts with pilot: {cfg.pilot}; drop reuse_pilot")
    if not math.isfinite(cfg.beta) or cfg.beta < 1:
        raise ConfigError(f"beta must be >= 1 (the paper uses 2), got {cfg.beta}")
    if cfg.top_p > 1:
        raise ConfigError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.old_logprobs == "behaviour" and (cfg.backend != "hf" or cfg.temperature != 1 or cfg.top_p != 1):
        raise ConfigError(
            "old_logprobs=behaviour needs backend=hf, temperature=1 and top_p=1 (the sampler records the "
            "log-probs of the distribution it samples from); use old_logprobs=recompute"
        )
    _choice(cfg, "vllm_dtype", ("auto", "float32", "bfloat16", "float16"))
    _choice(cfg, "sample_dtype", ("auto", "float32", "bfloat16", "float16"))
    # the HF sampler's speed knob: unused with vLLM (its engine has vllm_dtype) and with a 4-bit policy
    # (nothing to merge into: the 4-bit policy samples itself)
    if cfg.sample_dtype != "auto" and cfg.backend == "hf" and not cfg.load_in_4bit:
        if cfg.old_logprobs != "recompute":
            raise ConfigError(f"sample_dtype={cfg.sample_dtype} samples from a copy in another dtype, so the sampler's "
                              "log-probs are not the trainer's: use old_logprobs=recompute")
    if not 0 < cfg.vllm_gpu_memory_utilization < 1:
        raise ConfigError(f"vllm_gpu_memory_utilization must be in (0, 1), got {cfg.vllm_gpu_memory_utilization}")
    if cfg.backend == "vllm" and not cfg.lora:
        raise ConfigError("backend=vllm needs lora=true: the trained adapter reaches vLLM as a LoRA request each "
                          "iteration (full fine-tuning would need a weight sync, which gvm-mini does not do)")
    if cfg.epsilon_high < cfg.epsilon:
        raise ConfigError(
            f"epsilon_high ({cfg.epsilon_high}) must be >= epsilon ({cfg.epsilon}): clip-higher widens "
            "the upper bound only"
        )
    if cfg.lora_dropout >= 1:
        raise ConfigError(f"lora_dropout must be < 1, got {cfg.lora_dropout}")
    if cfg.min_per_prompt * cfg.prompts_per_step > cfg.budget_per_step:
        raise ConfigError(
            f"min_per_prompt={cfg.min_per_prompt} cannot be met: {cfg.prompts_per_step} prompts per step "
            f"need {cfg.min_per_prompt * cfg.prompts_per_step} samples but the budget is "
            f"samples_per_prompt x prompts_per_step = {cfg.budget_per_step}"
        )
    if cfg.max_per_prompt is not None:
        if cfg.max_per_prompt < max(cfg.min_per_prompt, 1):
            raise ConfigError(f"max_per_prompt must be >= max(min_per_prompt, 1), got {cfg.max_per_prompt}")
        if cfg.max_per_prompt * cfg.prompts_per_step < cfg.budget_per_step:
            raise ConfigError(
                f"max_per_prompt={cfg.max_per_prompt} cannot hold the budget of {cfg.budget_per_step} samples "
                f"over {cfg.prompts_per_step} prompts"
            )
    if cfg.grpo_group_size is not None and cfg.grpo_group_size < 2:
        raise ConfigError(f"grpo_group_size must be >= 2 or null, got {cfg.grpo_group_size}")
    if cfg.gradnorm_params == "lora" and not cfg.lora:
        raise ConfigError("gradnorm_params=lora needs lora=true")
    if cfg.load_in_4bit and not cfg.lora:
        raise ConfigError("load_in_4bit=true (QLoRA) needs lora=true: 4-bit weights cannot be trained directly")
    if cfg.prompts_per_iteration > cfg.train_size and cfg.dataset == "arithmetic":
        raise ConfigError(
            f"prompts_per_step x steps_per_iteration = {cfg.prompts_per_iteration} exceeds train_size={cfg.train_size}"
        )
    if not 2 <= cfg.task_min_operands <= cfg.task_max_operands:
        raise ConfigError(f"need 2 <= task_min_operands <= task_max_operands, got {cfg.task_min_operands}, {cfg.task_max_operands}")
    if not 1 <= cfg.task_max_digits <= 6:
        raise ConfigError(f"task_max_digits must be in 1..6, got {cfg.task_max_digits}")
    if not cfg.task_ops or set(cfg.task_ops) - set("+-*"):
        raise ConfigError(f"task_ops must be a non-empty string of + - *, got {cfg.task_ops!r}")
    ds = cfg.dataset
    if not (ds in TASKS or ds == "champ" or ds.startswith("jsonl:") or ds.startswith("hub:")):
        raise ConfigError(f"dataset must be {', '.join(TASKS)}, champ, jsonl:PATH or hub:NAME, got {ds!r}")
    if ds.startswith("jsonl:") and not Path(ds[6:]).is_file():
        raise ConfigError(f"dataset file not found: {ds[6:]}")
    if cfg.eval_dataset and cfg.eval_dataset.startswith("jsonl:") and not Path(cfg.eval_dataset[6:]).is_file():
        raise ConfigError(f"eval_dataset file not found: {cfg.eval_dataset[6:]}")
    for key in ("dataset", "eval_dataset"):
        spec = getattr(cfg, key) or ""
        if spec.startswith("hub:"):
            from .data import HUB_DATASETS

            name, _, shard = spec[4:].partition(":")
            if name not in HUB_DATASETS:
                close = difflib.get_close_matches(name, list(HUB_DATASETS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{key}: unknown hub dataset {name!r}{hint}; choose one of {', '.join(HUB_DATASETS)}")
            if "{shard}" in HUB_DATASETS[name].hub_id and not shard:
                raise ConfigError(f"{key}: {name} is sharded; write hub:{name}:1 (shards 1..15, or 15_all)")
    return cfg


def replace(cfg: Config, **kw) -> Config:
    """A validated copy with some fields changed (a key named here is the caller's, not the rule's)."""
    auto = {k: v for k, v in cfg.rule_defaults.items() if k not in kw}
    return validate(dataclasses.replace(cfg, rule_defaults=auto, **kw))
