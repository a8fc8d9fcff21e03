"""Every GPU claim of gvm-mini in one command (at most ~8 minutes on one H100/H200, no network).

    python bench/gpu_check.py              # on a CUDA machine: the checks below, record -> results/gpu_check.jsonl
    python bench/gpu_check.py --dry-run    # anywhere (CI): the same code paths on tiny CPU shapes, no record kept

What it shows, in order (each part is timed; a part that would overrun ``--budget-s`` is skipped and
says so):

1. **One full GVM-RAFT++ iteration with HF sampling on CUDA** (``gvm_mini.em.run``: pilot -> p_i, G_i
   -> allocation -> rollout -> M-step, twice; wall time per phase from the ``RunState.wall`` it returns) on the Qwen2.5-Math-1.5B shape twin with LoRA in bf16,
   the same with 4-bit QLoRA, and on the Llama-3.2-1B shape twin with LoRA. Shape twins have random
   weights and no tokenizer: prompts are encoded with gvm-mini's offline tokenizer (its ids are valid
   ids of both twins), sampling is restricted to those ids, and a stand-in verifier accepts a sample
   when a hash of its text is even (random weights never answer), so that p_i, G_i and the allocation
   are not all degenerate.
2. **Peak GPU memory and time per optimizer step of one update at 8 x 1024 tokens** (``gvm_mini.mstep.m_step`` with
   micro-batches of 2, gradient checkpointing, LoRA r=64 on every linear layer) for LoRA bf16 and
   4-bit QLoRA on both twins, against the goals QLoRA <= 6 GB, LoRA bf16 <= 10 GB
   (``torch.cuda.max_memory_allocated``).

3. **The training code's own phases at each shipped config's shapes** (``em.build_policy``, the
   E-step's gradient norms, one M-step update with pi_old and the KL reference, at the config's
   micro-batch and full prompt + completion length), each phase's measured peak beside the memory
   plan's (``gvm_mini.plan.phase_memory``): where the first real run would run out of memory, this
   does too.

4-bit needs bitsandbytes. The GPU machine has none and no network, so a wheel carried in the working
tree is installed offline (``pip install --no-index --no-deps --target bench/.bnb-site WHEEL``):
``--bnb-wheel PATH``, else the newest ``bitsandbytes-*.whl`` under ``shared/``, ``.whl/`` (git-ignored;
name it in the device run's ``carry``), ``wheels/`` or ``bench/wheels/``. Without one the QLoRA parts are skipped (and say why).

``--dry-run`` runs parts 1 and 2 on the CPU with tiny models that keep each twin's architecture
(Qwen2 with q/k/v biases, Llama with its RoPE scaling) at hidden size 64 and 2 layers, 2 x 64 tokens,
LoRA and, when bitsandbytes (>= 0.50, whose CPU backend trains 4-bit layers) is installed, the same
4-bit QLoRA parts on the CPU; a carried wheel is looked up but not installed. It checks that the
script and the code paths it drives work, not any figure. This script has not yet run on a GPU in
this project (no GPU was available when it was written).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

TWINS = ("qwen2.5-math-1.5b", "llama-3.2-1b")
GOALS_GB = {"lora": 10.0, "qlora": 6.0}
BNB_SITE = HERE / ".bnb-site"


# ---------------------------------------------------------------------------------------------
# bitsandbytes from a carried wheel
# ---------------------------------------------------------------------------------------------


def find_bnb_wheel(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    for pattern in ("shared/**/bitsandbytes-*.whl", ".whl/**/bitsandbytes-*.whl", "wheels/**/bitsandbytes-*.whl",
                    "bench/wheels/**/bitsandbytes-*.whl"):
        hits = sorted(glob.glob(str(ROOT / pattern), recursive=True))
        if hits:
            return Path(hits[-1])
    return None


def ensure_bitsandbytes(wheel: Path | None, *, install: bool) -> str:
    """'ok' when bitsandbytes imports (installing ``wheel`` offline into bench/.bnb-site if needed),
    else the reason it cannot."""
    if BNB_SITE.is_dir() and str(BNB_SITE) not in sys.path:
        sys.path.insert(0, str(BNB_SITE))
    if importlib.util.find_spec("bitsandbytes") is not None:
        return "ok"
    if wheel is None:
        return "no bitsandbytes and no bitsandbytes-*.whl under shared/, .whl/, wheels/ or bench/wheels/ (--bnb-wheel PATH)"
    if not wheel.is_file():
        return f"--bnb-wheel {wheel}: no such file"
    if not install:
        return f"would install {wheel.name} offline into {BNB_SITE} (dry run)"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                          "--target", str(BNB_SITE), str(wheel)], capture_output=True, text=True)
    if res.returncode != 0:
        return f"pip could not install {wheel.name}: {(res.stdout + res.stderr).strip()[-300:]}"
    sys.path.insert(0, str(BNB_SITE))
    importlib.invalidate_caches()
    return "ok" if importlib.util.find_spec("bitsandbytes") is not None else f"installed {wheel.name} but it does not import"


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def tiny_twin(name: str, vocab: int):
    """CPU stand-in of a twin for --dry-run: the twin's config (architecture, biases, RoPE scaling,
    tied embeddings) at hidden 64, 2 layers, 4 heads (2 KV heads), the offline tokenizer's vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    from gvm_mini.models import twin_config

    conf = twin_config(name, num_layers=2)
    conf.hidden_size, conf.intermediate_size, conf.num_attention_heads, conf.num_key_value_heads = 64, 128, 4, 2
    conf.head_dim = 16
    conf.vocab_size = vocab
    if hasattr(conf, "max_window_layers"):
        conf.max_window_layers = 2
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(conf, dtype=torch.float32)


def build(name: str, mode: str, *, dry: bool, device, vocab: int):
    """(policy with LoRA r=64 on every linear layer, gradient checkpointing on CUDA)."""
    import torch

    from gvm_mini.models import add_lora, load_model, quantize_4bit, shape_twin

    if dry and mode == "qlora":  # the same 4-bit NF4 path as on CUDA, on the CPU backend
        model = quantize_4bit(tiny_twin(name, vocab), device)
    elif dry:
        model = tiny_twin(name, vocab)
    elif mode == "qlora":
        model, _ = load_model(f"twin:{name}", device=device, load_in_4bit=True)
    else:
        model = shape_twin(name, dtype=torch.bfloat16, device=device)
    if not dry:
        model.gradient_checkpointing_enable()
    model = add_lora(model, r=8 if dry else 64, lora_alpha=16 if dry else 128)
    if not dry:
        model.enable_input_require_grads()
    return model


def limit_vocab(model, vocab: int):
    """Make the twin sample only ids the offline tokenizer can decode: logits of ids >= ``vocab`` are
    -inf (a forward hook on the output head; training is unaffected since completions use those ids
    only, and the log-probs stay exact for them because -inf adds nothing to the log-sum-exp)."""
    import torch

    head = model.get_output_embeddings()
    if head.out_features <= vocab:
        return lambda: None

    def hook(_mod, _inp, out):
        return out.index_fill(-1, torch.arange(vocab, out.shape[-1], device=out.device), float("-inf"))

    h = head.register_forward_hook(hook)
    return h.remove


# ---------------------------------------------------------------------------------------------
# part 1: one GVM-RAFT++ iteration
# ---------------------------------------------------------------------------------------------


HASH_VERIFIER = "gpu_check_hash"


def hash_verifier(text: str, answer: str) -> float:
    """Stand-in verifier for random-weight twins: accepts when a hash of the text is even (about half)."""
    return float(hashlib.sha256(text.encode()).digest()[0] % 2 == 0)


def one_iteration(name: str, mode: str, *, dry: bool, device, tok, out: Path) -> dict:
    import dataclasses

    import torch

    from gvm_mini import rewards
    from gvm_mini.config import Config, validate
    from gvm_mini.data import arithmetic_problems
    from gvm_mini.em import run

    vocab = len(tok)
    model = build(name, mode, dry=dry, device=device, vocab=vocab)
    remove = limit_vocab(model, vocab)
    problems = arithmetic_problems(64, seed=0, min_operands=2, max_operands=3, max_digits=2)
    cfg = validate(Config(
        model=f"twin:{name}", dtype="float32" if dry else "bfloat16", device=str(device), lora=True,
        lora_r=8 if dry else 64, lora_alpha=16 if dry else 128, load_in_4bit=mode == "qlora",
        gradient_checkpointing=not dry, dataset="arithmetic", train_size=64, test_size=0, verifier="exact",
        system_prompt=None, instruction="", algorithm="raftpp", allocation="gvm", num_pilot=4,
        samples_per_prompt=4, gradnorm_params="embed_tokens", backend="hf", temperature=1.0,
        max_completion_length=8 if dry else 128, sample_batch_size=64, iterations=1,
        prompts_per_step=4 if dry else 8, steps_per_iteration=2, mini_batch_size=16 if dry else 32,
        micro_batch_size=4 if dry else 8, learning_rate=2e-5, kl_coef=0.001, eval_every=0, progress=False,
        save_weights=False, seed=0,
    ))
    # the stand-in verifier, registered under its own name in the verifier registry for this run (the
    # config's choices are fixed when gvm_mini.config is imported, so the name is set after validation)
    rewards.VERIFIERS[HASH_VERIFIER] = hash_verifier
    cfg = dataclasses.replace(cfg, verifier=HASH_VERIFIER)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        state = run(cfg, out, model=model, tokenizer=tok, problems=(problems, []))
    finally:
        rewards.VERIFIERS.pop(HASH_VERIFIER, None)
        remove()
    wall = time.perf_counter() - t0
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    alloc = [json.loads(x) for x in open(out / "allocations.jsonl")][-1]
    row = {"part": "iteration", "twin": name, "mode": mode, "wall_s": wall, "phases_s": dict(state.wall),
           "samples": state.samples, "tokens": state.tokens, "updates": state.updates,
           "n": alloc["n"], "p": alloc["p"], "G": alloc["G"],
           "accepted": sum(r["accepted"] for r in recs if r["kind"] == "step"),
           "skipped_updates": sum(r.get("skipped_updates", 0) for r in recs if r["kind"] == "step")}
    if device.type == "cuda":
        row["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    del model
    return row


# ---------------------------------------------------------------------------------------------
# part 2: one update at 8 x 1024 tokens
# ---------------------------------------------------------------------------------------------


def one_update(name: str, mode: str, *, dry: bool, device, tok, batch: int, length: int, micro: int) -> dict:
    """Peak memory and time of one optimizer step of ``m_step`` (RAFT++, recomputed pi_old, k3 KL to
    the adapter-off base) over ``batch`` sequences of ``length`` tokens, a quarter prompt."""
    import numpy as np
    import torch

    from gvm_mini.config import Config
    from gvm_mini.mstep import m_step
    from gvm_mini.rollout import Rollout

    vocab = len(tok)
    model = build(name, mode, dry=dry, device=device, vocab=vocab)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (batch, length), generator=g).tolist()
    P = length // 4
    ro = Rollout(np.zeros(batch, dtype=np.int64), [x[:P] for x in ids], [x[P:] for x in ids],
                 [np.zeros(length - P, np.float32) for _ in ids], [""] * batch, np.zeros(batch, bool))
    cfg = Config(lora=True, algorithm="raftpp", mini_batch_size=batch, micro_batch_size=micro, kl_coef=0.001,
                 kl_reference="initial", learning_rate=1e-5, old_logprobs="recompute")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rewards = np.array([1.0, 0.0] * (batch // 2) + [1.0] * (batch % 2))
    # warm-up on a short batch (kernels, allocator), then the measured step
    short = Rollout(ro.prompt_index[:micro], [x[:8] for x in ro.prompt_ids[:micro]], [x[:8] for x in ro.completion_ids[:micro]],
                    [x[:8] for x in ro.logprobs[:micro]], ro.texts[:micro], ro.truncated[:micro])
    m_step(cfg, model, opt, short, rewards[:micro], tok.pad_token_id, None, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    st = m_step(cfg, model, opt, ro, rewards, tok.pad_token_id, None, seed=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    row = {"part": "update", "twin": name, "mode": mode, "batch": batch, "length": length, "micro": micro,
           "step_s": dt, "updates": st["updates"], "loss": st["loss"]}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        row.update(cuda_max_allocated_gb=peak, goal_gb=GOALS_GB[mode], meets_goal=peak <= GOALS_GB[mode])
    del model, opt
    return row


# ---------------------------------------------------------------------------------------------
# part 3: the training code's own phases at a shipped config's shapes, beside the plan
# ---------------------------------------------------------------------------------------------

CONFIGS = {"qwen2.5-math-1.5b": "configs/qwen2.5-math-1.5b_gvm-raftpp.yaml",
           "llama-3.2-1b": "configs/llama-3.2-1b-instruct_gvm-raftpp.yaml"}


def phase_peaks(name: str, *, dry: bool, device, tok) -> dict:
    """The shipped config of twin ``name`` run through the training code: ``em.build_policy`` (the
    twin, LoRA, gradient checkpointing), the E-step's ``accepted_grad_norms`` on two micro-batches of
    accepted pilots and one ``m_step`` update (pi_old, the KL reference, two micro-batches), at the
    config's micro-batch and full length (prompt + completion). Each phase's peak (CUDA:
    ``max_memory_allocated``; CPU: the weights plus ``plan.peak_tensor_bytes``) beside the plan's
    (``plan.phase_memory``). ``--dry-run``: the built-in tiny model of the same architecture at 64
    tokens instead of the twin (the code path, not the figures)."""
    import dataclasses

    import numpy as np
    import torch

    from gvm_mini import mstep
    from gvm_mini.config import load_config
    from gvm_mini.em import build_policy
    from gvm_mini.estep import accepted_grad_norms
    from gvm_mini.models import weight_bytes
    from gvm_mini.plan import peak_tensor_bytes, phase_memory, resolve_shape
    from gvm_mini.rollout import Rollout

    cfg = load_config(str(ROOT / CONFIGS[name]))
    model_name = ("tiny-qwen2" if name.startswith("qwen") else "tiny-llama") if dry else f"twin:{name}"
    cfg = dataclasses.replace(cfg, model=model_name, device=str(device), dtype="float32" if dry else cfg.dtype,
                              lora_r=8 if dry else cfg.lora_r, progress=False)
    micro = cfg.micro_batch_size or cfg.mini_batch_size
    T = 64 if dry else cfg.max_prompt_length + cfg.max_completion_length
    meta, _ = resolve_shape(cfg)
    cuda = device.type == "cuda"

    def peak(fn, *args):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            fn(*args)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        before = weight_bytes(model) + sum(t.numel() * t.element_size() for st in opt.state.values()
                                           for t in st.values() if torch.is_tensor(t))
        return before + peak_tensor_bytes(fn, *args)[0]

    t0 = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model, tok = build_policy(cfg, tokenizer=tok)
    built = torch.cuda.max_memory_allocated() if cuda else weight_bytes(model)
    vocab = len(tok)
    g = np.random.default_rng(0)
    S = 2 * micro
    P = [1] + [T // 2] * (S - 1)  # one short prompt: logits from position 1 on, the plan's worst case
    ids = [g.integers(0, vocab, T).tolist() for _ in range(S)]
    ro = Rollout(np.arange(S) // 2, [x[:p] for x, p in zip(ids, P)], [x[p:] for x, p in zip(ids, P)],
                 [np.zeros(T - p, np.float32) for p in P], [""] * S, np.zeros(S, bool))
    rewards = np.ones(S)
    gcfg = dataclasses.replace(cfg, mini_batch_size=S)
    opt = mstep.make_optimizer(gcfg, model)
    gradnorm = peak(accepted_grad_norms, gcfg, model, tok, ro, rewards, S // 2)
    ref = mstep.kl_reference(gcfg, model, mstep.initial_reference(gcfg, model))
    mstep.m_step(gcfg, model, opt, ro, rewards, tok.pad_token_id, ref, seed=0)  # the AdamW moments now exist
    update = peak(mstep.m_step, gcfg, model, opt, ro, rewards, tok.pad_token_id, ref, 1)
    plan = {"build_policy": phase_memory(cfg, meta, "weights", rows=0, tokens=0),
            "gradnorm": phase_memory(cfg, meta, "gradnorm", rows=micro, tokens=T),
            "update": max(phase_memory(cfg, meta, p, rows=micro, tokens=T) for p in ("update", "logprobs"))}
    measured = {"build_policy": built, "gradnorm": gradnorm, "update": update}
    row = {"part": "phases", "twin": name, "mode": "lora", "config": CONFIGS[name], "micro": micro, "length": T,
           "wall_s": time.perf_counter() - t0,
           "phases": {k: {"measured_gb": measured[k] / 2**30, "planned_gb": plan[k] / 2**30,
                          "ratio": plan[k] / measured[k]} for k in measured}}
    del model, opt
    return row


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, LoRA only: the code paths, not the figures (CI)")
    ap.add_argument("--bnb-wheel", default=None, help="bitsandbytes wheel to install offline (default: found in the tree)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip parts that would start after this many seconds")
    ap.add_argument("--length", type=int, default=None, help="update sequence length (default 1024; dry run 64)")
    ap.add_argument("--batch", type=int, default=None, help="update sequences (default 8; dry run 2)")
    args = ap.parse_args()
    t_start = time.perf_counter()

    import torch
    from _common import record
    from transformers.utils import logging as hf_logging

    from gvm_mini.models import offline_tokenizer

    hf_logging.disable_progress_bar()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: this check needs one (or run it with --dry-run)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else "cuda")
    if dry:
        torch.set_num_threads(1)
    batch, length = args.batch or (2 if dry else 8), args.length or (64 if dry else 1024)
    micro = 2
    bnb = ensure_bitsandbytes(find_bnb_wheel(args.bnb_wheel), install=not dry)
    if dry and bnb == "ok":
        from gvm_mini.models import check_4bit_available

        try:
            check_4bit_available(device)
        except (ImportError, RuntimeError) as e:
            bnb = str(e)
    modes = ("lora", "qlora") if bnb == "ok" else ("lora",)
    tok = offline_tokenizer()
    print(f"gpu_check{' --dry-run (CPU, tiny shapes)' if dry else ''}: torch {torch.__version__}, "
          f"device {torch.cuda.get_device_name(0) if not dry else 'cpu'}; bitsandbytes: {bnb}", flush=True)

    plan = [("iteration", TWINS[0], "lora"), ("iteration", TWINS[0], "qlora"), ("iteration", TWINS[1], "lora")]
    plan += [("update", t, m) for t in TWINS for m in ("lora", "qlora")]
    plan += [("phases", t, "lora") for t in TWINS]
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="gvm-gpu-check-") as tmp:
        for k, (part, twin, mode) in enumerate(plan):
            label = f"{part:<9} {twin:<18} {mode:<5}"
            if mode not in modes:
                why = f"bitsandbytes: {bnb}"
                skipped.append({"part": part, "twin": twin, "mode": mode, "why": why})
                print(f"{label}  skipped ({why})", flush=True)
                continue
            if time.perf_counter() - t_start > args.budget_s:
                skipped.append({"part": part, "twin": twin, "mode": mode, "why": "time budget"})
                print(f"{label}  skipped (past --budget-s {args.budget_s:.0f})", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                if part == "iteration":
                    row = one_iteration(twin, mode, dry=dry, device=device, tok=tok, out=Path(tmp) / f"run{k}")
                elif part == "phases":
                    row = phase_peaks(twin, dry=dry, device=device, tok=tok)
                else:
                    row = one_update(twin, mode, dry=dry, device=device, tok=tok, batch=batch, length=length, micro=micro)
            except Exception as e:  # noqa: BLE001 - one failing part must not hide the others
                row = {"part": part, "twin": twin, "mode": mode, "error": f"{type(e).__name__}: {e}"}
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            row["part_wall_s"] = time.perf_counter() - t0
            rows.append(row)
            if "error" in row:
                print(f"{label}  ERROR {row['error'][:300]}", flush=True)
            elif part == "phases":
                print(f"{label}  {row['config']} at micro-batch {row['micro']} x {row['length']} tokens: " + ", ".join(
                    f"{k} {v['measured_gb']:.2f} GiB (plan {v['planned_gb']:.2f}, x{v['ratio']:.2f})"
                    for k, v in row["phases"].items()), flush=True)
            elif part == "iteration":
                mem = f", peak {row['cuda_max_allocated_gb']:.2f} GB" if "cuda_max_allocated_gb" in row else ""
                print(f"{label}  {row['wall_s']:7.1f} s  {row['samples']} samples, {row['tokens']} tokens, "
                      f"{row['updates']} updates, n_i={row['n']}{mem}", flush=True)
            else:
                mem = (f", peak {row['cuda_max_allocated_gb']:.2f} GB (goal <= {row['goal_gb']:.0f} GB: "
                       f"{'met' if row['meets_goal'] else 'MISSED'})") if "cuda_max_allocated_gb" in row else ""
                print(f"{label}  {row['step_s']:7.2f} s / step at {batch} x {length} tokens (micro {micro}){mem}", flush=True)
    total = time.perf_counter() - t_start
    errors = [r for r in rows if "error" in r]
    print(f"total {total:.0f} s; {len(rows) - len(errors)} parts ran, {len(errors)} failed, {len(skipped)} skipped")
    path = record("gpu_check", {"dry_run": dry, "bitsandbytes": bnb, "batch": batch, "length": length, "micro": micro,
                                "rows": rows, "skipped": skipped, "total_s": total}, smoke=dry)
    print(f"results -> {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
