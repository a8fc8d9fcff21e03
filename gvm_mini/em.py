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
samples include the pilots, and wall time is recorded per phase. What the run directory holds and
how it survives a kill (atomic writes, checkpoints without pickle, logs, resume) is ``rundir.py``.

Beyond the paper (issue 12; the paper's behaviour is the default of each): ``allocation`` may be
``gvm_tokens`` (token-budget Proposition 1 with ``c_i`` = pilot mean completion length and the token
budget ``N * mean_i(c_i)``) or ``knapsack`` (Knapsack-RL); ``estimator: bayes`` shrinks ``p_i`` to an
empirical-Bayes Beta posterior mean and pools ``G_i`` (``gvm_mini.estimators``); ``pilot: reuse`` trains
on the pilots, ``pilot: history`` takes a seen prompt's estimates from its last visit instead of a new
pilot (kept in the checkpoint's ``state.json``); ``prompt_weighting: prompt | lemma1`` re-weights the
M-step per prompt (``gvm_mini.losses.prompt_weights``).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import allocation as alloc
from . import estimators
from .config import Config, ConfigError
from .rollout import Rollout, plan_micro_batches, sample_hf, to_batch
from . import rundir  # the run directory's bookkeeping: atomic writes, checkpoints, logs, resume
from .rundir import RunState  # what survives a restart (re-exported)
from .rundir import crash_point as _crash_point  # test hook: GVM_MINI_CRASH_AT=name[:k]

__all__ = ["run", "RunState", "load_problems", "build_policy", "iteration_prompt_indices", "estimate_p_G", "m_step",
           "phase_seed", "prompt_texts", "sample", "score"]


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
    elif ds == "rules":  # the demo's task: test_size held-out prompts spread evenly over the families
        train, test = data.rule_problems(cfg.test_size // len(data.RULE_FAMILIES), seed=cfg.data_seed)
        train = train[: cfg.train_size]
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
        if not torch.cuda.is_available() or dev.type != "cuda":
            raise ConfigError("backend=vllm needs a CUDA GPU and device=cuda (the engine is colocated with the "
                              "trainer); use backend=hf")
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
    if cfg.backend == "vllm":  # one colocated engine; the current LoRA adapter as a LoRARequest (no merge)
        from .rollout import sample_vllm_policy, vllm_engine

        return sample_vllm_policy(
            vllm_engine(cfg), model, tokenizer, prompts, counts,
            temperature=cfg.temperature if temperature is None else temperature, top_p=cfg.top_p,
            max_new_tokens=cfg.max_completion_length, seed=seed, progress=cfg.progress,
        )
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
           ref_values, seed: int, *, prompt_p=None) -> dict:
    """One M-step: one epoch of mini-batch updates over the step's samples. Returns its metrics.

    ``cfg.prompt_weighting`` other than ``tokens`` re-weights each sample's policy loss by
    :func:`gvm_mini.losses.prompt_weights` (``prompt``: Algorithm 1's ``1/|D_i|``; ``lemma1``:
    ``1/(n_i p_i)`` with ``p_i = prompt_p[prompt_index]``, the estimate the allocation used), applied
    as a per-sample factor on the advantage relative to the step's token mean (exact when the step is
    one mini-batch; otherwise each mini-batch keeps its own normaliser, as verl does), scaled by one
    constant per M-step so that the counted samples carry the same total weight as under ``tokens``
    (same direction as Algorithm 1's / Lemma 1's gradient, comparable step size; Algorithm 1 sums
    log-probs over a sequence, which would otherwise multiply the loss by the mean length). The KL term
    is not re-weighted.

    old log-probs (and the KL reference's) are computed once, before the first update, as verl does.
    A non-finite loss or gradient skips that update (the weights never see a NaN) and is counted.

    No compute on padding or repeated prompts where it can be avoided: the samples of a mini-batch (a
    seeded random subset, as before) are cut into micro-batches of ``micro_batch_size`` (unset: the few
    that minimise tokens processed, :func:`gvm_mini.rollout.plan_micro_batches`), either length buckets
    padded only to their own longest sequence or pieces that encode each distinct prompt once and
    its samples' completions against its cache; the gradient is the same sum in another order (equal
    up to float rounding). With ``old_logprobs="recompute"`` the first mini-batch's
    pi_old is the update's own forward pass, detached (no update has happened yet, so it is the same
    number; only for dropout-free models), which saves one forward pass per M-step and all of them
    when the M-step is a single mini-batch (TRL does the same on-policy).
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
    if cfg.prompt_weighting != "tokens":
        lengths = torch.tensor([len(c) for c in rollout.completion_ids], dtype=torch.float64)
        counted = torch.ones(S) if cfg.algorithm == "grpo" else accepted  # D_i: the samples that carry signal
        w = losses.prompt_weights(rollout.prompt_index, counted, lengths, cfg.prompt_weighting, p=prompt_p)
        base = lengths.sum() if cfg.loss_type == "token_mean" else S * lengths  # today's weight -> w_s
        mult = w * base
        # one constant per M-step so that the counted samples carry the same total weight as under
        # `tokens`: the direction is Algorithm 1's / Lemma 1's, the step size stays comparable
        cnt = counted.to(torch.float64)
        share = lengths if cfg.loss_type == "token_mean" else torch.ones_like(lengths)  # each sample's mass today
        mass = float((cnt * mult * share).sum())
        mult = mult * (float((cnt * share).sum()) / mass if mass > 0 else 1.0)
        adv = adv * mult.float()
    stats = {"zero_signal_frac": losses.zero_signal_fraction(r, groups), "loss": [], "pg_loss": [], "kl": [],
             "clip_frac": [], "grad_norm": [], "skipped_updates": 0, "updates": 0}
    trainable = [p for p in model.parameters() if p.requires_grad]
    use_kl = cfg.kl_coef > 0
    chunks = [list(range(s, min(s + cfg.mini_batch_size, S))) for s in range(0, S, cfg.mini_batch_size)]
    perm = np.random.default_rng(seed).permutation(S)
    chunks = [perm[c].tolist() for c in chunks]
    # micro-batches (rollout.plan_micro_batches): each mini-batch cut into pieces of at most
    # micro_batch_size (unset: the few pieces that minimise tokens processed), either length buckets
    # padded to their own width, or, when several samples share a prompt, pieces that encode each
    # distinct prompt once (losses.token_logprobs_shared_prompts; not under gradient checkpointing,
    # where HF layers drop the cache). Tensors are built once and reused by every forward pass below.
    share = not any(getattr(mod, "gradient_checkpointing", False) is True for mod in model.modules())
    micros = []
    for c in chunks:
        plan = plan_micro_batches([rollout.prompt_ids[i] for i in c], [rollout.completion_ids[i] for i in c],
                                  cfg.micro_batch_size, share_prompts=share)
        micros.append([([c[k] for k in b], shared) for b, shared in plan])
        micros[-1] = [(rows, to_batch(rollout, pad_id, rows), shared) for rows, shared in micros[-1]]

    def logprobs(rows, ids, attn, shared):
        if shared:
            return losses.token_logprobs_shared_prompts(
                model, [rollout.prompt_ids[i] for i in rows], [rollout.completion_ids[i] for i in rows], ids.shape[1])
        return losses.token_logprobs(model, ids, attn)
    # behaviour (old) and reference log-probs, before any update. old_logprobs="behaviour" takes the
    # log-probs the sampler recorded (exact for HF sampling at temperature 1, top_p 1: the samples were
    # drawn by this very policy just before the M-step), which saves a forward pass over every sample.
    # ... and with recompute, the first mini-batch's pi_old is its own update forward (detached) when
    # nothing in the model drops anything in train mode (then train and eval forwards are the same)
    conf = getattr(model, "config", None)
    dropout_free = not any(isinstance(mod, torch.nn.Dropout) and mod.p > 0 for mod in model.modules()) and not any(
        float(getattr(conf, k, 0.0) or 0.0) > 0 for k in ("attention_dropout", "hidden_dropout", "dropout"))
    share_first = cfg.algorithm != "raft" and cfg.old_logprobs == "recompute" and dropout_free
    old = [[None] * len(m) for m in micros]
    ref = [[None] * len(m) for m in micros]
    model.eval()  # no dropout in the forward passes that define the losses (tiny models have none)
    with torch.no_grad():
        for j, mb in enumerate(micros):
            for k, (rows, (ids, attn, cmask, blogp), shared) in enumerate(mb):
                ids, attn = ids.to(dev), attn.to(dev)
                if cfg.algorithm != "raft" and cfg.old_logprobs == "behaviour":
                    old[j][k] = blogp.to(dev)
                elif cfg.algorithm != "raft" and not (share_first and j == 0):
                    old[j][k] = logprobs(rows, ids, attn, shared)
                if use_kl:
                    if cfg.kl_reference == "initial" and cfg.lora:
                        from .models import reference_logits_context

                        with reference_logits_context(model):
                            ref[j][k] = logprobs(rows, ids, attn, shared)
                    else:
                        with _swapped(trainable, ref_values):
                            ref[j][k] = logprobs(rows, ids, attn, shared)
    model.train()  # LoRA dropout (if any) is on for the update itself
    for j, (c, mb) in enumerate(zip(chunks, micros)):
        # gradient accumulation over micro-batches; each micro loss is weighted by its share of the
        # mini-batch's tokens (token_mean) or sequences (seq_mean_token_mean), so the accumulated
        # gradient equals that of the whole mini-batch in one piece.
        cm_all = [b[2] for _, b, _ in mb]
        unit = (sum(x.sum() for x in cm_all) if cfg.loss_type == "token_mean"
                else sum((x.sum(-1) > 0).sum() for x in cm_all))
        unit = torch.as_tensor(unit, dtype=torch.float32)
        optimizer.zero_grad(set_to_none=True)
        acc_loss, acc_st, ok = 0.0, {}, True
        for k, (rows, (ids, attn, cmask, _), shared) in enumerate(mb):
            ids, attn, cmask = ids.to(dev), attn.to(dev), cmask.to(dev)
            share = (cmask.sum() if cfg.loss_type == "token_mean" else (cmask.sum(-1) > 0).sum()) / unit.clamp_min(1).to(dev)
            logp = logprobs(rows, ids, attn, shared)
            old_k = old[j][k]
            if old_k is None and share_first and j == 0:
                old_k = logp.detach()  # the weights have not moved yet: pi_old = pi_theta, same forward
            loss, st = losses.policy_objective(
                logp, old_k, adv[rows].to(dev), cmask,
                epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                kl_coef=cfg.kl_coef if use_kl else 0.0, ref_logp=ref[j][k],
                policy_loss="vanilla" if cfg.algorithm == "raft" else "clip",
            )
            if not torch.isfinite(loss):
                ok = False
                break
            (loss * share.to(loss.device)).backward()
            acc_loss += float(loss.detach()) * float(share)
            for key in ("pg_loss", "kl", "clip_frac"):
                acc_st[key] = acc_st.get(key, 0.0) + float(st.get(key, loss if key == "pg_loss" else 0.0)) * float(share)
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
        for key in ("pg_loss", "kl", "clip_frac"):
            stats[key].append(acc_st[key])
    optimizer.zero_grad(set_to_none=True)
    for key in ("loss", "pg_loss", "kl", "clip_frac", "grad_norm"):
        stats[key] = float(np.mean(stats[key])) if stats[key] else None
    return stats


def _make_optimizer(cfg: Config, model):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


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
    rundir.check_report_to(cfg.report_to)
    if model is None:
        check_model_request(cfg)
    train, test = problems if problems is not None else load_problems(cfg)
    rundir.prepare_out_dir(cfg, out, resume)
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
    state = rundir.resume_state(out, model, optimizer, resume)  # checkpoint restored, logs truncated to it
    metrics = rundir.MetricsLog(out, cfg.report_to, purge_step=state.global_step if resume else None)
    test_texts = _prompt_texts(cfg, tokenizer, test) if test else []

    def log(record: dict) -> None:
        metrics.write(record, state)  # + cumulative samples, tokens (pilots included), wall time per phase

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
        families = [pb.meta.get("family") for pb in test]
        if all(f is not None for f in families):  # per-family Average@k (the demo's rule task)
            per = np.asarray(res["per_problem"])
            res["by_family"] = {f: float(per[[g == f for g in families]].mean()) for f in sorted(set(families))}
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
        # pilot: fresh/reuse draw N' pilots for every prompt; history only for the prompts without a
        # record of >= N' samples from an earlier visit (gvm_mini.estimators.history_lookup)
        pilot, cost = None, None
        known = np.zeros(m, dtype=bool)
        it_k, it_n, it_tok = np.zeros(m), np.zeros(m), np.zeros(m)  # this visit's samples, for the history
        if cfg.uses_pilot:
            k_cnt, n_cnt, tok, G_raw = np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m)
            if cfg.pilot_mode == "history":
                known, k_cnt, n_cnt, tok, G_raw = estimators.history_lookup(state.history, idx, cfg.num_pilot)
            need = np.flatnonzero(~known)
            if need.size:
                _crash_point("pilot")
                t0 = time.perf_counter()
                pilot = _sample(cfg, model, tokenizer, [texts[i] for i in need], [cfg.num_pilot] * need.size,
                                _phase_seed(cfg.seed, "pilot", t), "pilot")
                pilot.prompt_index = need[pilot.prompt_index]  # iteration-local prompt index (identity unless history)
                state.wall["pilot"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                pilot_rewards = _score(pilot, probs, verifier)
                state.wall["reward"] += time.perf_counter() - t0
                state.samples += len(pilot); state.tokens += pilot.num_tokens
                state.pilot_samples += len(pilot); state.pilot_tokens += pilot.num_tokens
                _crash_point("gradnorm")
                t0 = time.perf_counter()
                _, G_new = estimate_p_G(cfg, model, tokenizer, pilot, pilot_rewards, m)
                state.wall["gradnorm"] += time.perf_counter() - t0
                pk, pn, ptok = estimators.counts_by_prompt(pilot.prompt_index, pilot_rewards > 0.5,
                                                           [len(c) for c in pilot.completion_ids], m)
                k_cnt[need], n_cnt[need], tok[need], G_raw[need] = pk[need], pn[need], ptok[need], G_new[need]
                it_k, it_n, it_tok = pk.copy(), pn.copy(), ptok.copy()
            p, G = estimators.iteration_estimates(k_cnt, n_cnt, G_raw, known, estimator=cfg.estimator)
            cost = np.maximum(tok / np.maximum(n_cnt, 1), 1.0)  # c_i: mean completion tokens per sample
        else:
            p, G = np.full(m, np.nan), np.full(m, np.nan)
        _crash_point("allocate")
        t0 = time.perf_counter()
        rule = alloc.get_rule(cfg.allocation)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", alloc.AllocationFallbackWarning)
            n = rule(np.nan_to_num(p), np.nan_to_num(G), budget, alpha=cfg.alpha, beta=cfg.beta,
                     min_per_prompt=cfg.min_per_prompt, max_per_prompt=cfg.max_per_prompt,
                     **({"cost": cost} if cfg.allocation in alloc.COST_AWARE else {}))
        if cost is not None:
            it_rec.update(history_prompts=int(known.sum()), expected_tokens=float(n @ cost),
                          uniform_expected_tokens=float(budget * cost.mean()))
        if cfg.algorithm == "grpo" and cfg.grpo_group_size:
            g = cfg.grpo_group_size
            n = ((n + g - 1) // g) * g  # paper App. B: ceil(n_i / 4) copies x 4 rollouts
        fallback = any(issubclass(w.category, alloc.AllocationFallbackWarning) for w in caught)
        state.wall["allocate"] += time.perf_counter() - t0
        it_rec.update(fallback_uniform=fallback, n_hist=np.bincount(n).tolist(), dropped_prompts=int((n == 0).sum()),
                      mean_p=None if not cfg.uses_pilot else float(p.mean()))

        # ---- M-steps ----
        step_p = np.full(m, np.nan)
        for r in range(cfg.steps_per_iteration):
            sl = np.arange(r * cfg.prompts_per_step, (r + 1) * cfg.prompts_per_step)
            counts = n[sl].copy()
            parts = []
            reused = 0
            if cfg.pilot_mode == "reuse" and pilot is not None:
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
            fk, fn, ftok = estimators.counts_by_prompt(  # fresh samples only (reused pilots are counted already)
                fresh.prompt_index, rewards[len(batch) - len(fresh):] > 0.5, [len(c) for c in fresh.completion_ids], len(sl))
            it_k[sl] += fk; it_n[sl] += fn; it_tok[sl] += ftok
            _crash_point("update")
            t0 = time.perf_counter()
            if len(batch):
                model.train()
                st = m_step(cfg, model, optimizer, batch, rewards, pad_id, ref_values, _phase_seed(cfg.seed, "minibatch", t, r),
                            prompt_p=p[sl] if cfg.uses_pilot else None)
            else:
                st = {"updates": 0, "skipped_updates": 0, "zero_signal_frac": 1.0}
            state.wall["update"] += time.perf_counter() - t0
            state.global_step += 1
            state.updates += st["updates"]
            log({"kind": "step", "step_in_iteration": r, "step_samples": len(batch), "step_tokens": batch.num_tokens,
                 "pilot_reused": reused,
                 "accepted": int((rewards > 0.5).sum()), "reward_mean": float(rewards.mean()) if len(rewards) else None,
                 "truncated_frac": float(batch.truncated.mean()) if len(batch) else None,
                 # accepted samples cut at max_completion_length: RAFT trains on them without their end token
                 "accepted_truncated": int(((rewards > 0.5) & batch.truncated).sum()), **st})
            _crash_point("step_logged")
            if budget_spent():  # stop at M-step granularity: overshoot is at most one M-step's tokens
                break

        # ---- evaluate, record, checkpoint ----
        if cfg.uses_pilot and cfg.pilot_mode == "history":  # JSON in the checkpoint's state.json: survives a resume
            estimators.history_update(state.history, idx, it_k, it_n, it_tok, G_raw, t)
        state.iteration += 1
        alloc_rec = {"iteration": t, "prompt_ids": idx.tolist(), "p": p, "G": G, "n": n, "step_acceptance": step_p,
                     **({} if cost is None else {"cost": cost}),
                     "difficulty": [pb.meta.get("difficulty") for pb in probs]}
        metrics.allocation(alloc_rec, state.global_step)
        log(it_rec)
        if cfg.eval_every and (state.iteration % cfg.eval_every == 0 or state.iteration == cfg.iterations or budget_spent()):
            _crash_point("eval")
            evaluate()
        _crash_point("checkpoint")
        t0 = time.perf_counter()
        rundir.record_checkpoint(out, model, None if cfg.reset_optimizer else optimizer, state)
        state.wall["checkpoint"] += time.perf_counter() - t0  # shows in the next records (not in this checkpoint)
        bar.update(1)
    bar.close()
    metrics.close()
    if cfg.save_weights and cfg.lora:
        rundir.save_adapter(out, model)  # atomic directory swap
    return state


# public names of the loop's pieces, for tutorials and experiments that step through one iteration by
# hand (notebook 03) with exactly the seeds and calls `run` uses
phase_seed = _phase_seed
prompt_texts = _prompt_texts
sample = _sample
score = _score
