"""gvm-mini's GRPO against TRL's GRPOTrainer: same model, task and budget, side by side in one run.

Both sides start from the same local HF model directory (same weights and tokenizer), see the same
chat-formatted training prompts in the same order, sample the same number of completions per step at
temperature 1.0, and make one AdamW update per generation batch with the same hyper-parameters. Each
side trains in its own subprocess (so peak RSS is its own); the time compared is the training loop,
from the start of the first generation to the end of the last optimizer step (model loading,
one-time trainer setup and evaluation excluded; the whole ``run()`` / ``train()`` call is shown too).
On gvm-mini's side the two points are read with PyTorch hooks (the policy's first forward pass, the
optimizer's step post-hook) and the generation time is the run's own ``rollout`` phase
(``RunState.wall``, as ``gvm_mini.em.run`` returns it); on TRL's a subclass times its generate call
and a callback marks each optimizer step. Both final models and the initial one are then evaluated by the
same evaluator (``gvm_mini.evaluate.evaluate_policy``: Average@k at temperature 1.0 on the same
held-out prompts, same seed). Printed: time per step and per generated token, tokens, peak RSS,
accuracy before/after, and the ratio. Goal (issue 5): gvm-mini >= 1.5x faster per generated token
at equal accuracy.

TRL is installed into the benchmark's own directory, not as a dependency of gvm-mini:

    python bench/vs_trl.py --setup                 # once: pip --target bench/.trl-site/site-packages (trl 1.16.0 + missing deps)
    python bench/vs_trl.py                         # the demo's SFT-warmed policy and task (a few minutes)
    python bench/vs_trl.py --model DIR --steps 8   # any local HF model dir with a chat template, demo task
    python bench/vs_trl.py --smoke                 # seconds (CI): random tiny model, 2 steps each

How the two are matched (read from TRL 1.16.0's ``trl/trainer/grpo_trainer.py`` / ``grpo_config.py``):

* group size: TRL ``num_generations`` = gvm-mini ``samples_per_prompt`` with ``allocation="uniform"``,
  ``algorithm="grpo"``, ``grpo_group_size=None`` (one group per prompt);
* one update per generation batch: TRL ``per_device_train_batch_size = prompts x group``,
  ``gradient_accumulation_steps=1``, ``steps_per_generation=1``, ``num_iterations=1``; gvm-mini
  ``mini_batch_size = prompts_per_step x samples_per_prompt``, one iteration of ``steps`` M-steps
  (so one optimizer for the whole run, as TRL's). Both generate a step's completions in one
  ``generate`` call (gvm-mini ``sample_batch_size`` = the step's completions);
* loss aggregation: gvm-mini ``loss_type="token_mean"`` (sum over the mini-batch's completion tokens
  / their number). TRL's matching type is ``loss_type="dapo"``: ``_compute_loss`` divides the masked
  token sum by ``num_items_in_batch`` (active tokens of the whole generation batch) x
  ``gradient_accumulation_steps / steps_per_generation`` = exactly the token count of the optimizer
  step's batch. (``"bnpo"`` is the same only without accumulation; ``"grpo"`` is a per-sequence mean
  and ``"dr_grpo"`` divides by a constant, neither is token_mean.);
* advantages: group mean / unbiased group std on both (TRL ``scale_rewards="group"``, its std has
  eps 1e-4, gvm-mini's 1e-6); clip epsilon 0.2 both sides (TRL ``epsilon=epsilon_high=0.2``). With one
  update per fresh batch the importance ratio is exactly 1, so the clip never binds on either side;
* no KL: TRL ``beta=0.0`` (no reference model is built), gvm-mini ``kl_coef=0``;
* optimizer: the same ``torch.optim.AdamW(trainable parameters, lr, weight_decay)`` on both: TRL gets
  it through ``optimizers=(AdamW, None)``, because the Trainer's own would differ (TrainingArguments
  defaults to the fused variant on torch >= 2.8 and exempts biases and norms from weight decay).
  Constant learning rate (TRL ``lr_scheduler_type="constant"``: the Trainer default decays linearly to
  0), the same grad-norm clipping;
* old log-probs: TRL skips the extra forward pass when generation and update line up (it uses the
  current log-probs, detached); so does gvm-mini's default ``old_logprobs="recompute"`` since issue 14
  (the first mini-batch of an M-step takes pi_old from the update's own forward, and here every step is
  one mini-batch). Before issue 14 this benchmark used ``old_logprobs="behaviour"`` (the sampler's
  log-probs), the recompute forward then cost ~15%;
* sampling: ``temperature=1.0``, ``top_p=1.0``, ``top_k=0`` (off) on both; full fine-tuning, float32.

TRL on CPU needs these set explicitly (GRPOConfig defaults differ): ``use_cpu=True``; ``bf16=False``
(GRPOConfig turns bf16 on unless fp16 is set); ``gradient_checkpointing=False`` (GRPOConfig's default
is True; gvm-mini does not checkpoint); ``use_vllm=False`` (the HF ``generate`` path, as gvm-mini's);
``report_to="none"``, ``save_strategy="no"``, ``logging_strategy="no"``, ``disable_tqdm=True`` (no
wandb, no checkpoints, no per-step printing); ``shuffle_dataset=False`` with the dataset already in
gvm-mini's prompt order, so step s of both sides sees the same prompts.

Generated tokens are counted the same way on both sides: completion tokens up to and including the
end-of-sequence token (gvm-mini ``Rollout.num_tokens``; TRL: the ``completion_ids`` its reward
function receives, which it cuts after the first EOS). Reward on both: 1.0 if
``exact_match_score(completion, answer)`` else 0.0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_ROOT = HERE / ".trl-site"
# pip --target dir. Its path must contain "site-packages": dill (which datasets uses to fingerprint
# datasets) pickles by value every module whose file is neither under sys.prefix nor in a path with
# "site-packages" in it, and pickling the pyarrow module by value fails (PicklingError: MonthDayNano).
TRL_SITE = TRL_ROOT / "site-packages"
TRL_VERSION = "1.16.0"
# trl 1.16.0's requirements that the gvm-mini environment lacks (accelerate, huggingface_hub, jinja2,
# numpy, packaging, psutil, pyyaml, transformers, torch are already there), pinned; installed with
# --no-deps so pip never reinstalls torch or transformers.
TRL_PINS = [f"trl=={TRL_VERSION}", "datasets==5.2.0", "pandas==3.1.1", "pyarrow==26.0.1", "dill==0.4.1",
            "multiprocess==0.70.19", "xxhash==4.1.0"]
SETUP_HINT = f"TRL is not set up for this benchmark; run once: python bench/vs_trl.py --setup  (installs trl=={TRL_VERSION} into bench/.trl-site, not a gvm-mini dependency)"
EXIT_NO_TRL = 2
EXIT_PIP_FAILED = 3
EVAL_SEED = 20240607


# ---------------------------------------------------------------------------------------------
# setup: TRL into bench/.trl-site
# ---------------------------------------------------------------------------------------------


def _trl_import_check() -> tuple[bool, str]:
    code = (f"import sys; sys.path.insert(0, {str(TRL_SITE)!r}); import trl; "
            "from trl import GRPOConfig, GRPOTrainer; print(trl.__version__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return res.returncode == 0 and res.stdout.strip() == TRL_VERSION, (res.stdout + res.stderr).strip()


def setup() -> int:
    """pip-install the pinned TRL set into a temporary dir, check it imports, then move it into place."""
    tmp = TRL_ROOT.with_name(".trl-site.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(tmp / TRL_SITE.name), *TRL_PINS]
    print("setup:", " ".join(cmd[2:]), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-5:])
        print(f"setup: pip could not install {' '.join(TRL_PINS)} (registry unreachable?):\n{tail}", file=sys.stderr)
        return EXIT_PIP_FAILED
    shutil.rmtree(TRL_ROOT, ignore_errors=True)
    tmp.rename(TRL_ROOT)
    ok, out = _trl_import_check()
    if not ok:
        print(f"setup: installed into {TRL_SITE}, but `import trl` fails:\n{out[-2000:]}", file=sys.stderr)
        return 1
    print(f"setup: trl {out.splitlines()[-1]} importable from {TRL_SITE}")
    return 0


def trl_available() -> bool:
    """Cheap check (no import) that the pinned TRL and the packages it needs are in bench/.trl-site."""
    from importlib.metadata import PathDistribution

    dists = {p.name.split("-")[0].lower(): p for p in TRL_SITE.glob("*.dist-info")} if TRL_SITE.is_dir() else {}
    need = [p.split("==")[0] for p in TRL_PINS]
    if any(n not in dists for n in need):
        return False
    return PathDistribution(dists["trl"]).version == TRL_VERSION


# ---------------------------------------------------------------------------------------------
# the matched settings and gvm-mini's config
# ---------------------------------------------------------------------------------------------


def gvm_config(spec: dict):
    """gvm-mini's Config for the spec (also used by the parent to get gvm-mini's prompt order)."""
    from gvm_mini.config import Config, validate

    return validate(Config(
        model=spec["model_dir"], dtype="float32", device="cpu", lora=False,
        dataset="arithmetic", train_size=spec["n_train"], test_size=0, verifier="exact",
        system_prompt=None, instruction="",
        algorithm="grpo", allocation="uniform", samples_per_prompt=spec["group"], grpo_group_size=None,
        grpo_scale_std=True, temperature=1.0, top_p=1.0, max_completion_length=spec["max_completion_length"],
        sample_batch_size=spec["prompts_per_step"] * spec["group"],  # one generate call per step, as TRL
        iterations=1, steps_per_iteration=spec["steps"], prompts_per_step=spec["prompts_per_step"],
        mini_batch_size=spec["prompts_per_step"] * spec["group"],  # one update per generation batch
        learning_rate=spec["learning_rate"], weight_decay=spec["weight_decay"], max_grad_norm=spec["max_grad_norm"],
        epsilon=spec["epsilon"], epsilon_high=spec["epsilon"], kl_coef=0.0, loss_type="token_mean",
        old_logprobs="recompute",  # the default; with one mini-batch per step pi_old is the update's own forward, detached (as TRL)
        reset_optimizer=False, eval_every=0, seed=spec["seed"], progress=False, save_weights=False,
    ))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _save(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _quiet() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars


def child_gvm(spec: dict) -> dict:
    _quiet()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from gvm_mini.data import Problem
    from gvm_mini.em import run
    from gvm_mini.models import load_model

    cfg = gvm_config(spec)
    train = [Problem(problem=p, answer=a) for p, a in zip(spec["train_problems"], spec["train_answers"])]
    model, tok = load_model(spec["model_dir"], dtype="float32")
    rss_loaded = _rss_mb()
    # the loop proper: from the start of the first generation to the end of the last optimizer step
    # (the same two points are taken on the TRL side), i.e. without one-time setup and teardown. Read
    # with PyTorch's own hooks, not by wrapping gvm-mini: the policy's first forward pass is the first
    # generation's prefill (uniform allocation draws no pilot and eval_every=0 evaluates nothing), and
    # the optimizer's step post-hook marks each update's end. The phases come from the run's RunState.wall.
    marks: dict = {}

    def first_forward(_module, _args):
        marks.setdefault("first_generation", time.perf_counter())

    def after_step(_optimizer, _args, _kwargs):
        marks["last_update"] = time.perf_counter()

    hooks = [model.register_forward_pre_hook(first_forward),
             register_optimizer_step_post_hook(after_step)]
    try:
        with tempfile.TemporaryDirectory(prefix="vs-trl-gvm-") as d:
            t0 = time.perf_counter()
            state = run(cfg, Path(d) / "run", model=model, tokenizer=tok, problems=(train, []))
            call = time.perf_counter() - t0 - state.wall["checkpoint"]  # the end-of-iteration checkpoint is not training
            rss_peak = _rss_mb()
            steps = [json.loads(x) for x in open(Path(d) / "run" / "metrics.jsonl") if '"kind": "step"' in x]
    finally:
        for h in hooks:
            h.remove()
    _save(model, tok, Path(spec["final_dir"]))
    return {"wall": marks["last_update"] - marks["first_generation"], "call_wall": call,
            "steps": state.global_step, "updates": state.updates, "samples": state.samples,
            "tokens": state.tokens, "generation_wall": state.wall["rollout"],
            "phases": {k: state.wall[k] for k in ("rollout", "reward", "update")},
            "train_phases_wall": sum(v for k, v in state.wall.items() if k not in ("eval", "checkpoint")),
            "reward_mean": [s["reward_mean"] for s in steps],
            "rss_loaded_mb": rss_loaded, "rss_peak_mb": rss_peak}


def child_trl(spec: dict) -> dict:
    sys.path.insert(0, str(TRL_SITE))  # trl and the packages it needs that the main environment lacks
    _quiet()
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from gvm_mini.models import load_model
    from gvm_mini.rewards import exact_match_score

    P, G = spec["prompts_per_step"], spec["group"]
    counted = {"tokens": 0, "samples": 0, "reward_sum": [], "generation_wall": 0.0}
    marks: dict = {}

    def exact_match(prompts, completions, completion_ids, answer, **_):
        """gvm-mini's exact verifier; also counts the generated tokens (TRL cut them after the first EOS)."""
        counted["tokens"] += sum(len(c) for c in completion_ids)
        counted["samples"] += len(completion_ids)
        r = [1.0 if exact_match_score(c, a) else 0.0 for c, a in zip(completions, answer)]
        counted["reward_sum"].append(sum(r) / max(len(r), 1))
        return r

    class TimedGRPOTrainer(GRPOTrainer):
        """Times TRL's generation (the HF ``generate`` call of ``_generate_single_turn``)."""

        def _generate_single_turn(self, *a, **kw):
            t0 = time.perf_counter()
            marks.setdefault("first_generation", t0)
            try:
                return super()._generate_single_turn(*a, **kw)
            finally:
                counted["generation_wall"] += time.perf_counter() - t0

    class LastUpdate(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # after the optimizer step
            marks["last_update"] = time.perf_counter()

    model, tok = load_model(spec["model_dir"], dtype="float32")
    dataset = Dataset.from_dict({"prompt": spec["ordered_prompts"], "answer": spec["ordered_answers"]})
    args = GRPOConfig(
        output_dir=spec["trl_out"],
        # budget: one generation batch of P prompts x G completions per optimizer step, `steps` steps
        num_generations=G, per_device_train_batch_size=P * G, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, max_steps=spec["steps"],
        max_completion_length=spec["max_completion_length"],
        temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
        # objective: token-mean PPO-clip GRPO, std-scaled group advantages, no KL
        loss_type="dapo", scale_rewards="group", epsilon=spec["epsilon"], epsilon_high=spec["epsilon"], beta=0.0,
        mask_truncated_completions=False, importance_sampling_level="token",
        # optimizer: gvm-mini's AdamW is passed in below; constant lr, same clipping
        learning_rate=spec["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=spec["weight_decay"], max_grad_norm=spec["max_grad_norm"],
        # CPU, float32, no checkpointing/vLLM (GRPOConfig defaults bf16 and gradient checkpointing on)
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, use_vllm=False,
        # prompts in gvm-mini's order; no logging backends, checkpoints or progress bars
        shuffle_dataset=False, seed=spec["seed"], dataloader_num_workers=0, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, log_completions=False,
    )
    # gvm-mini's optimizer exactly (gvm_mini.mstep.make_optimizer): AdamW over all trainable parameters
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["learning_rate"],
                                  weight_decay=spec["weight_decay"])
    trainer = TimedGRPOTrainer(model=model, reward_funcs=exact_match, args=args, train_dataset=dataset,
                               processing_class=tok, callbacks=[LastUpdate()], optimizers=(optimizer, None))
    rss_loaded = _rss_mb()
    t0 = time.perf_counter()
    trainer.train()
    call = time.perf_counter() - t0
    rss_peak = _rss_mb()
    _save(trainer.model, tok, Path(spec["final_dir"]))
    return {"wall": marks["last_update"] - marks["first_generation"], "call_wall": call, "steps": int(trainer.state.global_step), "updates": int(trainer.state.global_step),
            "samples": counted["samples"], "tokens": counted["tokens"], "generation_wall": counted["generation_wall"],
            "reward_mean": counted["reward_sum"], "rss_loaded_mb": rss_loaded, "rss_peak_mb": rss_peak,
            "trl": trl.__version__}


# ---------------------------------------------------------------------------------------------
# parent: model and task, the two children, evaluation, table, record
# ---------------------------------------------------------------------------------------------


def smoke_model(root: Path) -> Path:
    """A random-weight tiny Qwen2 with the offline tokenizer, saved as a local HF model dir."""
    from gvm_mini.models import offline_tokenizer, tiny_model

    tok = offline_tokenizer()
    model = tiny_model(tok, seed=0)
    out = root / "tiny-random"
    _save(model, tok, out)
    return out


def task(args, model_dir: Path):
    """(train problems, test problems, task description, defaults from the demo config or None)."""
    if args.smoke:
        from gvm_mini.data import arithmetic_problems

        probs = arithmetic_problems(64, seed=1234, min_operands=2, max_operands=3, max_digits=2, ops=("+", "-"))
        return probs[:48], probs[48:], {"dataset": "arithmetic (smoke)", "train": 48, "test": 16}, None
    from gvm_mini.demo import demo_config
    from gvm_mini.em import load_problems

    cfg = demo_config(model_dir, "grpo", "uniform", 0, quick=True, task=args.task)
    train, test = load_problems(cfg)
    desc = {"dataset": cfg.dataset, "train": len(train), "test": len(test), "data_seed": cfg.data_seed,
            **{k: getattr(cfg, k) for k in ("task_min_operands", "task_max_operands", "task_max_digits", "task_ops")}}
    return train, test, desc, cfg


def run_child(side: str, spec_path: Path, log: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_DISABLED": "true", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", side, "--spec", str(spec_path)],
                             stdout=f, stderr=subprocess.STDOUT, env=env, cwd=HERE)
    if res.returncode != 0:
        sys.stderr.write(f"{side} child failed (exit {res.returncode}); last lines of its log:\n")
        sys.stderr.write("\n".join(log.read_text().splitlines()[-40:]) + "\n")
        sys.exit(res.returncode if res.returncode == EXIT_NO_TRL else 1)
    return json.loads(Path(str(spec_path) + f".{side}.json").read_text())


def evaluate_dir(model_dir: Path, tok, test_texts, answers, k: int, max_new_tokens: int) -> dict:
    from gvm_mini.evaluate import evaluate_policy
    from gvm_mini.models import load_model
    from gvm_mini.rewards import exact_match_score

    model, _ = load_model(str(model_dir), dtype="float32")
    res = evaluate_policy(model, tok, test_texts, answers, exact_match_score, k=k, temperature=1.0, top_p=1.0,
                          max_new_tokens=max_new_tokens, batch_size=256, seed=EVAL_SEED)
    return {key: res[key] for key in ("avg_at_k", "pass_at_k", "k", "problems", "eval_tokens", "truncated_frac")}


def table(gvm: dict, trl: dict, acc: dict) -> str:
    rows = [
        ("optimizer steps", f"{gvm['steps']}", f"{trl['steps']}", ""),
        ("completions", f"{gvm['samples']}", f"{trl['samples']}", ""),
        ("generated tokens", f"{gvm['tokens']}", f"{trl['tokens']}", f"{trl['tokens'] / max(gvm['tokens'], 1):.2f}"),
        ("train() / run() call, setup included (s)", f"{gvm['call_wall']:.2f}", f"{trl['call_wall']:.2f}",
         f"{trl['call_wall'] / gvm['call_wall']:.2f}"),
        ("training loop (s)", f"{gvm['wall']:.2f}", f"{trl['wall']:.2f}", f"{trl['wall'] / gvm['wall']:.2f}"),
        ("  of which generation (s)", f"{gvm['generation_wall']:.2f}", f"{trl['generation_wall']:.2f}",
         f"{trl['generation_wall'] / max(gvm['generation_wall'], 1e-9):.2f}"),
        ("  the rest: reward, update, loop (s)", f"{gvm['wall'] - gvm['generation_wall']:.2f}",
         f"{trl['wall'] - trl['generation_wall']:.2f}",
         f"{(trl['wall'] - trl['generation_wall']) / max(gvm['wall'] - gvm['generation_wall'], 1e-9):.2f}"),
        ("time / step (s)", f"{gvm['time_per_step']:.3f}", f"{trl['time_per_step']:.3f}",
         f"{trl['time_per_step'] / gvm['time_per_step']:.2f}"),
        ("time / 1k generated tokens (s)", f"{1000 * gvm['time_per_token']:.3f}", f"{1000 * trl['time_per_token']:.3f}",
         f"{trl['time_per_token'] / gvm['time_per_token']:.2f}"),
        ("  generation / 1k generated tokens (s)", f"{1000 * _gen_per_token(gvm):.3f}", f"{1000 * _gen_per_token(trl):.3f}",
         f"{_gen_per_token(trl) / max(_gen_per_token(gvm), 1e-12):.2f}"),
        ("  reward + update / 1k generated tokens (s)", f"{1000 * _rest_per_token(gvm):.3f}",
         f"{1000 * _rest_per_token(trl):.3f}", f"{_rest_per_token(trl) / max(_rest_per_token(gvm), 1e-12):.2f}"),
        ("peak RSS (MB)", f"{gvm['rss_peak_mb']:.0f}", f"{trl['rss_peak_mb']:.0f}", f"{trl['rss_peak_mb'] / gvm['rss_peak_mb']:.2f}"),
        ("  after imports + model load (MB)", f"{gvm['rss_loaded_mb']:.0f}", f"{trl['rss_loaded_mb']:.0f}", ""),
        ("train reward (mean over steps)", f"{_mean(gvm['reward_mean']):.3f}", f"{_mean(trl['reward_mean']):.3f}", ""),
        (f"accuracy before (Avg@{acc['initial']['k']})", f"{acc['initial']['avg_at_k']:.3f}", f"{acc['initial']['avg_at_k']:.3f}", ""),
        (f"accuracy after (Avg@{acc['initial']['k']})", f"{acc['gvm']['avg_at_k']:.3f}", f"{acc['trl']['avg_at_k']:.3f}", ""),
    ]
    w = max(len(r[0]) for r in rows)
    head = f"{'':<{w}}  {'gvm-mini GRPO':>14}  {'TRL GRPOTrainer':>15}  {'TRL/gvm':>7}"
    return "\n".join([head] + [f"{a:<{w}}  {b:>14}  {c:>15}  {d:>7}" for a, b, c, d in rows])


def _gen_per_token(r: dict) -> float:
    return r["generation_wall"] / max(r["tokens"], 1)


def _rest_per_token(r: dict) -> float:
    return (r["wall"] - r["generation_wall"]) / max(r["tokens"], 1)


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="install TRL into bench/.trl-site and exit")
    ap.add_argument("--smoke", action="store_true", help="seconds: random tiny model, 2 steps each (CI)")
    ap.add_argument("--model", type=Path, default=None, help="a local HF model dir (default: the demo's warm start)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps on each side (default 10; smoke 2)")
    ap.add_argument("--prompts-per-step", type=int, default=None, help="default 16; smoke 2")
    ap.add_argument("--group", type=int, default=None, help="completions per prompt (default: the demo's, 8; smoke 4)")
    ap.add_argument("--max-completion-length", type=int, default=None, help="default: the demo's (48); smoke 16")
    ap.add_argument("--lr", type=float, default=None, help="default: the demo's learning rate")
    ap.add_argument("--eval-size", type=int, default=None, help="held-out prompts (default 100; smoke 4)")
    ap.add_argument("--eval-k", type=int, default=None, help="samples per held-out prompt (default 4; smoke 2)")
    ap.add_argument("--task", choices=("rules", "chains"), default="rules",
                    help="the demo task whose prompts and settings are used (chains: the demo before the rules task)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1,
                    help="train each side this many times, alternating, and keep each side's fastest (noisy machines)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the final models and child logs here")
    ap.add_argument("--child", choices=("gvm", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.setup:
        sys.exit(setup())
    if args.child:
        spec = json.loads(args.spec.read_text())
        out = (child_gvm if args.child == "gvm" else child_trl)(spec)
        Path(str(args.spec) + f".{args.child}.json").write_text(json.dumps(out))
        return
    if not trl_available():
        print(SETUP_HINT, file=sys.stderr)
        sys.exit(EXIT_NO_TRL)

    _quiet()
    from _common import record

    from gvm_mini.data import format_chat
    from gvm_mini.em import iteration_prompt_indices
    from gvm_mini.models import load_model

    work = Path(tempfile.mkdtemp(prefix="vs-trl-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.smoke:
            model_dir, model_kind = smoke_model(work), "random tiny-qwen2 (smoke)"
        elif args.model is not None:
            model_dir, model_kind = args.model.resolve(), "local dir"
            if not (model_dir / "config.json").is_file():
                sys.exit(f"--model {model_dir}: not a local HF model directory (no config.json)")
        else:
            from gvm_mini import demo

            sft = demo.SFT() if args.task == "chains" else demo.RuleSFT()
            model_dir = demo.warm_start(Path.home() / ".cache" / "gvm_mini", sft, progress=True)
            model_kind = f"demo warm start ({args.task})"
        train, test, task_desc, demo_cfg = task(args, model_dir)
        d = (lambda name, smoke, demo, fallback: getattr(args, name) if getattr(args, name) is not None
             else smoke if args.smoke else (getattr(demo_cfg, demo) if demo_cfg is not None and demo else fallback))
        spec = {
            "model_dir": str(model_dir), "seed": args.seed,
            "steps": d("steps", 2, None, 10), "prompts_per_step": d("prompts_per_step", 2, None, 16),
            "group": d("group", 4, "samples_per_prompt", 8),
            "max_completion_length": d("max_completion_length", 16, "max_completion_length", 48),
            "learning_rate": d("lr", 1e-4, "learning_rate", 5e-5),
            "weight_decay": demo_cfg.weight_decay if demo_cfg is not None else 0.0,
            "max_grad_norm": demo_cfg.max_grad_norm if demo_cfg is not None else 1.0,
            "epsilon": 0.2,
        }
        eval_size = args.eval_size or (4 if args.smoke else 100)
        eval_k = args.eval_k or (2 if args.smoke else 4)
        need = spec["steps"] * spec["prompts_per_step"]
        if need > len(train):
            sys.exit(f"steps x prompts-per-step = {need} exceeds the {len(train)} training prompts")
        _, tok = load_model(str(model_dir), dtype="float32")
        spec["n_train"] = len(train)
        spec["train_problems"] = [p.problem for p in train]
        spec["train_answers"] = [p.answer for p in train]
        # gvm-mini's prompt order for its one iteration; TRL gets its dataset in that order, unshuffled
        order = iteration_prompt_indices(len(train), gvm_config({**spec, "model_dir": str(model_dir)}), 0).tolist()
        spec["ordered_prompts"] = [format_chat(tok, train[i].problem, system=None, instruction="") for i in order]
        spec["ordered_answers"] = [train[i].answer for i in order]
        G, P = spec["group"], spec["prompts_per_step"]
        print(f"model: {model_kind} ({model_dir}); task: {task_desc}")
        print(f"budget on each side: {spec['steps']} steps x {P} prompts x {G} completions, "
              f"<= {spec['max_completion_length']} new tokens, lr {spec['learning_rate']:g}, one update per step; "
              f"eval Avg@{eval_k} on {eval_size} held-out prompts", flush=True)

        # the sides alternate (gvm, trl, gvm, trl, ...) and each keeps its fastest run: on a shared
        # machine a load spike then hits one run of one side, not the whole comparison
        results, walls = {}, {"gvm": [], "trl": []}
        for rep in range(args.repeats):
            for side, label in (("gvm", "gvm-mini GRPO"), ("trl", "TRL GRPOTrainer")):
                side_spec = {**spec, "final_dir": str(work / f"final-{side}"), "trl_out": str(work / "trl-out")}
                spec_path = work / f"spec-{side}.json"
                spec_path.write_text(json.dumps(side_spec))
                print(f"training {label} ({rep + 1}/{args.repeats}) ...", flush=True)
                r = run_child(side, spec_path, work / f"{side}.log")
                r["time_per_step"] = r["wall"] / max(r["steps"], 1)
                r["time_per_token"] = r["wall"] / max(r["tokens"], 1)
                walls[side].append(r["wall"])
                if side not in results or r["wall"] < results[side]["wall"]:
                    results[side] = r
                print(f"  {r['steps']} steps, {r['tokens']} generated tokens, {r['wall']:.2f} s "
                      f"(generation {r['generation_wall']:.2f} s)", flush=True)
        for side in results:
            results[side]["walls_all_repeats"] = walls[side]

        print("evaluating the initial and both final models (same prompts, seed, evaluator) ...", flush=True)
        held = test[:eval_size]
        texts = [format_chat(tok, p.problem, system=None, instruction="") for p in held]
        answers = [p.answer for p in held]
        L = spec["max_completion_length"]
        acc = {"initial": evaluate_dir(model_dir, tok, texts, answers, eval_k, L),
               "gvm": evaluate_dir(work / "final-gvm", tok, texts, answers, eval_k, L),
               "trl": evaluate_dir(work / "final-trl", tok, texts, answers, eval_k, L)}

        gvm, trl = results["gvm"], results["trl"]
        ratio = trl["time_per_token"] / gvm["time_per_token"]
        ratio_step = trl["time_per_step"] / gvm["time_per_step"]
        print()
        print(table(gvm, trl, acc))
        print()
        ratio_gen = _gen_per_token(trl) / max(_gen_per_token(gvm), 1e-12)
        ratio_rest = _rest_per_token(trl) / max(_rest_per_token(gvm), 1e-12)
        print(f"gvm-mini is {ratio:.2f}x faster per generated token than TRL GRPOTrainer (goal >= 1.5x); "
              f"{ratio_step:.2f}x per optimizer step; generation {ratio_gen:.2f}x, reward + update {ratio_rest:.2f}x")
        if ratio < 1:
            print("TRL is faster per generated token in this run: see the phase rows above (generation vs the rest)")
        if trl["wall"] - trl["generation_wall"] < gvm["wall"] - gvm["generation_wall"]:
            print("note: TRL's update is faster here; it projects only completion positions through the LM head, "
                  "gvm-mini every position (prompt included)")
        payload = {
            "model": {"kind": model_kind, "dir": str(model_dir)}, "task": task_desc,
            "matched": {k: v for k, v in spec.items() if k not in ("train_problems", "train_answers", "ordered_prompts",
                                                                     "ordered_answers", "model_dir")},
            "eval": {"size": len(held), "k": eval_k, "seed": EVAL_SEED, "temperature": 1.0},
            "trl_version": trl.get("trl"), "gvm": gvm, "trl": trl, "accuracy": acc,
            "ratio_time_per_token": ratio, "ratio_time_per_step": ratio_step,
            "ratio_generation_per_token": ratio_gen, "ratio_update_per_token": ratio_rest, "goal": 1.5,
        }
        print(f"results -> {record('vs_trl', payload, smoke=args.smoke)}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
