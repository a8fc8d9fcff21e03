"""The memory plan measured: each phase's peak tensor memory at the shipped configs' shapes, on CPU,
beside ``train --dry-run``'s estimate (``gvm_mini.plan.estimate_memory``).

    python bench/memory_check.py            # both shape twins, ~26 min on 2 shared CPU cores -> results/gpu_memory_check.json
    python bench/memory_check.py --smoke    # 2-layer twins, tiny shapes: the code path only (~4 min)
    python bench/memory_check.py --replan   # the plan's side again after a change to gvm_mini/plan.py
    python bench/memory_check.py --table    # docs/gpu.md's memory table from the plan and the ratios
    python bench/memory_check.py --modes qlora   # the 4-bit variants, merged into the results (not yet run)

For each shipped config (``configs/qwen2.5-math-1.5b_*.yaml``, ``configs/llama-3.2-1b-*``) and each
phase of an iteration, the phase runs the training code itself on the model's shape twin (random
weights, the published architecture, every layer, bfloat16, LoRA r=64 on every linear layer,
gradient checkpointing as in the configs):

* ``sampling`` / ``evaluation``: ``rollout.sample_hf`` (prefill of the distinct prompts, KV cache,
  one completion per row; ``num_pilot`` resp. ``eval_samples`` rows per prompt);
* ``logprobs``: the M-step's pi_old / reference pass (``losses.token_logprobs`` without gradients);
* ``update``: one ``mstep.update`` on one micro-batch with AdamW's moments in place, and its forward
  and backward alone (at the measured lengths the step sets the peak; at the configs' the backward
  does, extrapolated from the gradient-norm pass's line plus the moments: ``update_at_config``);
* ``gradnorm``: the E-step's ``estep.accepted_grad_norms`` on one micro-batch.

Peak = the weights (``models.weight_bytes``, LoRA included) + what the optimizer holds + the largest
amount of tensor memory live at once during the phase (``plan.peak_tensor_bytes``: the CPU
allocator's reports to ``torch.profiler``). CPU time forces shorter sequences and smaller batches
than the configs: each phase is measured at two lengths (and the update, log-prob and gradient-norm
phases at micro-batch 2 and 64-128 tokens instead of 4 x 2048, sampling at 64 rows of one prompt with
~380-750 tokens and 8 rows of 8 prompts instead of 64 rows of 8 prompts x 2048); every term of a phase grows
linearly in the tokens of its batch (flash-style attention, no ``T x T`` scores), so the config's
peak is extrapolated linearly from the two points. The plan is evaluated at the measured shapes
(``ratio``, what the plan is checked on) and at the config's (``ratio_at_config``, against the
extrapolation). On a GPU add the CUDA context (~0.5 GiB) and the caching allocator's fragmentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

GB = 2**30


def shipped_configs() -> list[Path]:
    return sorted(ROOT.glob("configs/qwen2.5-math-1.5b_*.yaml")) + sorted(ROOT.glob("configs/llama-3.2-1b-*.yaml"))


def build(cfg, twin: str, layers: int | None):
    """The config's policy on the shape twin: bf16 base (or 4-bit), LoRA, gradient checkpointing."""
    import torch

    from gvm_mini import models

    if cfg.load_in_4bit:
        model = models.quantize_4bit(models.shape_twin(twin, dtype=torch.bfloat16, num_layers=layers), "cpu",
                                     compute_dtype=torch.bfloat16)
    else:
        model = models.shape_twin(twin, dtype=torch.bfloat16, num_layers=layers)
    model = models.add_lora(model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _rollout(B: int, T: int, vocab: int, seed: int = 0):
    """B rows of T tokens: row 0 a 1-token prompt (so that logits are needed from position 1 on, the
    plan's worst case), the others half prompt, half completion; all accepted."""
    import numpy as np

    from gvm_mini.rollout import Rollout

    g = np.random.default_rng(seed)
    P = [1] + [T // 2] * (B - 1)
    ids = [g.integers(0, vocab, T).tolist() for _ in range(B)]
    return Rollout(np.arange(B), [x[:p] for x, p in zip(ids, P)], [x[p:] for x, p in zip(ids, P)],
                   [np.zeros(T - p, np.float32) for p in P], [""] * B, np.zeros(B, bool))


def measure(phase: str, cfg, model, tok, B: int, T: int) -> int:
    """Peak tensor bytes above the weights (and, for the update, the AdamW state) of one run of ``phase``
    with ``B`` rows of ``T`` tokens (sampling: prompts of T/2 tokens, T/2 new tokens)."""
    import numpy as np
    import torch

    from gvm_mini import mstep
    from gvm_mini.estep import accepted_grad_norms
    from gvm_mini.losses import token_logprobs
    from gvm_mini.plan import peak_tensor_bytes
    from gvm_mini.rollout import sample_hf

    vocab = len(tok)
    gc.collect()
    if phase in ("sampling", "evaluation"):
        raise ValueError("sampling is measured by measure_sampling")
    ro = _rollout(B, T, vocab)
    rewards = np.ones(B)
    if phase == "gradnorm":
        gcfg = dataclasses.replace(cfg, mini_batch_size=B, micro_batch_size=B)
        accepted_grad_norms(gcfg, model, tok, ro, rewards, B)  # warm-up
        peak, _ = peak_tensor_bytes(accepted_grad_norms, gcfg, model, tok, ro, rewards, B)
        return peak
    ucfg = dataclasses.replace(cfg, mini_batch_size=B, micro_batch_size=B)
    minis = mstep.plan(ucfg, model, ro, tok.pad_token_id, seed=0)
    mb = minis[0].micro[0]
    ids, attn = mb.tensors[0], mb.tensors[1]
    P_min = min(len(ro.prompt_ids[i]) for i in mb.rows)
    if phase == "logprobs":
        model.eval()
        with torch.no_grad():
            token_logprobs(model, ids, attn, logits_from=P_min)
            peak, _ = peak_tensor_bytes(lambda: token_logprobs(model, ids, attn, logits_from=P_min))
        return peak
    assert phase == "update"
    from gvm_mini import losses

    old, ref = mstep.old_and_ref_logprobs(ucfg, model, ro, minis, None, False)
    adv = mstep.advantages(ucfg, ro, rewards)
    opt = mstep.make_optimizer(ucfg, model)
    model.train()
    for q in opt.param_groups[0]["params"]:  # a zero step creates AdamW's moments (as an earlier update would)
        q.grad = torch.zeros_like(q)
    opt.step()
    # the whole update: at these short lengths its peak is the optimizer step (gradients + moments)
    step, _ = peak_tensor_bytes(mstep.update, ucfg, model, opt, ro, minis[0], adv, old[0], ref[0], False)

    def backward():  # the update's forward and backward alone (mstep.update's loop, without the step)
        opt.zero_grad(set_to_none=True)
        for k, mb in enumerate(minis[0].micro):
            ids_, attn_, cmask, _ = mb.tensors
            logp = mstep.micro_batch_logprobs(model, ro, mb, ids_, attn_)
            loss, _ = losses.policy_objective(logp, old[0][k], adv[mb.rows], cmask, epsilon=ucfg.epsilon,
                                              epsilon_high=ucfg.epsilon_high, loss_type=ucfg.loss_type,
                                              kl_coef=ucfg.kl_coef, ref_logp=ref[0][k])
            loss.backward()
        opt.zero_grad(set_to_none=True)

    grads, _ = peak_tensor_bytes(backward)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    del opt
    return max(step, grads) + state, {"step_gb": (step + state) / GB, "backward_gb": (grads + state) / GB,
                                      "moments_gb": state / GB}


def measure_sampling(model, tok, rows: int, prompts: int, P: int, N: int) -> tuple[int, int]:
    """``(peak bytes above the weights, longest prompt in tokens)`` of ``rollout.sample_hf`` drawing
    ``rows`` completions of ``N`` tokens for ``prompts`` distinct prompts of about ``P`` tokens."""
    import numpy as np

    from gvm_mini.plan import peak_tensor_bytes
    from gvm_mini.rollout import sample_hf

    g = np.random.default_rng(1)
    texts = [tok.decode(g.integers(3, len(tok), P).tolist()) for _ in range(prompts)]
    width = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    model.eval()
    gc.collect()
    peak, _ = peak_tensor_bytes(sample_hf, model, tok, texts, [rows // prompts] * prompts, max_new_tokens=N,
                                batch_size=rows, seed=0, temperature=1.0)
    return peak, width


PHASES = ("sampling", "evaluation", "logprobs", "update", "gradnorm")


def plan_phase(cfg, meta, phase: str, B: int, T: int, prompts: int | None = None, prompt_tokens: int | None = None) -> float:
    """The plan's peak (bytes) for ``phase`` at ``B`` rows of ``T`` tokens (sampling: of which
    ``prompt_tokens`` prompt, for ``prompts`` distinct prompts)."""
    from gvm_mini.plan import phase_memory

    return phase_memory(cfg, meta, phase, rows=B, tokens=T, prompts=prompts, prompt_tokens=prompt_tokens)


def plan_point(cfg, meta, phase: str, p: dict) -> float:
    return plan_phase(cfg, meta, phase, p["rows"], p["tokens"], p.get("prompts"), p.get("prompt_tokens"))


def update_at_config(payload: dict) -> None:
    """At the measured lengths the update's peak is its optimizer step (the adapter's gradient and
    AdamW's moments), so the line through its points does not see the activations that set it at the
    config's length. The update's forward and backward are the gradient-norm pass's (the same
    micro-batch: checkpointed layer inputs, the logits and their gradient) plus AdamW's moments, held
    throughout: its extrapolation is the larger of its own line and the gradient-norm pass's line
    plus the measured moments."""
    by = {(r["config"], r["mode"], r["phase"]): r for r in payload["rows"]}
    for r in payload["rows"]:
        g = by.get((r["config"], r["mode"], "gradnorm"))
        if r["phase"] != "update" or g is None or "own_line_gb" in r and r.get("derived"):
            continue
        moments = r["moments_gb"] if "moments_gb" in r else None
        if moments is None:
            continue
        r.setdefault("own_line_gb", r["extrapolated_at_config_gb"])
        r["extrapolated_at_config_gb"] = max(r["own_line_gb"], g["extrapolated_at_config_gb"] + moments)
        r["ratio_at_config"] = r["planned_at_config_gb"] / r["extrapolated_at_config_gb"]


def replan(path: Path) -> dict:
    """Recompute the planned side of a results file (after a change to ``gvm_mini/plan.py``); the
    measurements stay as they were measured."""
    from gvm_mini.config import load_config
    from gvm_mini.models import shape_twin
    from gvm_mini.plan import HUB_TWINS

    payload = json.loads(path.read_text())
    metas = {}
    for r in payload["rows"]:
        cfg = load_config(str(ROOT / "configs" / r["config"]))
        if r["mode"] == "qlora":
            cfg = dataclasses.replace(cfg, load_in_4bit=True)
        twin = HUB_TWINS[cfg.model]
        meta = metas.setdefault(twin, shape_twin(twin, device="meta", num_layers=2 if payload["smoke"] else None))
        for p in r["measured"]:
            p["planned_gb"] = plan_point(cfg, meta, r["phase"], p) / GB
            p["ratio"] = p["planned_gb"] / p["measured_gb"]
        worst = max(r["measured"], key=lambda p: abs(p["ratio"] - 1))
        r["planned_gb"], r["measured_gb"], r["ratio"] = worst["planned_gb"], worst["measured_gb"], worst["ratio"]
        r["planned_at_config_gb"] = plan_phase(cfg, meta, r["phase"], r["config_rows"], r["config_tokens"],
                                               r.get("config_prompts"), r.get("config_prompt_tokens")) / GB
        r["ratio_at_config"] = r["planned_at_config_gb"] / r["extrapolated_at_config_gb"]
    update_at_config(payload)
    ratios = [r["ratio"] for r in payload["rows"]] + [r["ratio_at_config"] for r in payload["rows"]]
    payload["all_within_10pct"] = all(0.9 <= x <= 1.1 for x in ratios)
    return payload


def report(payload: dict) -> None:
    for r in payload["rows"]:
        print(f"{r['config']:<40} {r['mode']:<5} {r['phase']:<10} measured {r['measured_gb']:6.2f} GiB planned "
              f"{r['planned_gb']:6.2f} (x{r['ratio']:.3f}) | at {r['config_rows']} x {r['config_tokens']}: "
              f"extrapolated {r['extrapolated_at_config_gb']:6.2f} planned {r['planned_at_config_gb']:6.2f} "
              f"(x{r['ratio_at_config']:.3f})")
    ratios = [r["ratio"] for r in payload["rows"]] + [r["ratio_at_config"] for r in payload["rows"]]
    print(f"ratios planned / measured: min {min(ratios):.3f}, max {max(ratios):.3f}; all within 10%: "
          f"{payload['all_within_10pct']}")


def table(payload: dict) -> str:
    """docs/gpu.md's memory table: the plan's per-phase peaks (``train --dry-run``) of each model's
    shipped configs, LoRA as shipped and with ``load_in_4bit: true``, and the largest deviation of
    the plan from the CPU measurement over the phases (at the measured shapes and at the config's)."""
    import dataclasses

    from gvm_mini.config import load_config
    from gvm_mini.plan import make_plan

    lines = ["| GiB; micro-batch 4 x (1024 + 1024) tokens | weights | update | gradient norms | pi_old / ref "
             "log-probs | sampling, evaluation (64 rows) | plan / CPU measurement |", "|---|---|---|---|---|---|---|"]
    seen = set()
    for path in shipped_configs():
        cfg = load_config(str(path))
        if cfg.model in seen:
            continue
        seen.add(cfg.model)
        for q4 in (False, True):
            c = dataclasses.replace(cfg, load_in_4bit=q4)
            plan = make_plan(c)
            mode = "qlora" if q4 else "lora"
            rows = [r for r in payload["rows"] if r["mode"] == mode and load_config(str(ROOT / "configs" / r["config"])).model == c.model]
            ratios = [x for r in rows for x in (r["ratio"], r["ratio_at_config"])]
            fit = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "not measured"
            lines.append(f"| {c.model.split('/')[-1]}, {'QLoRA 4-bit' if q4 else 'LoRA bf16'} | {plan['weights_gb']:.1f} | "
                         f"{plan['update_peak_gb']:.1f} | {plan['gradnorm_peak_gb']:.1f} | {plan['logprobs_peak_gb']:.1f} | "
                         f"{plan['sampling_peak_gb']:.1f} | {fit} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2-layer twins, tiny shapes (the code path, not the figures)")
    ap.add_argument("--modes", choices=("lora", "both", "qlora"), default="lora",
                    help="LoRA as shipped, and/or with load_in_4bit (4-bit rows are merged into an existing --out)")
    ap.add_argument("--out", default=str(HERE / "results" / "gpu_memory_check.json"))
    ap.add_argument("--table", action="store_true", help="print docs/gpu.md's memory table (the plan, with --out's ratios)")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases to measure (others kept from --out)")
    ap.add_argument("--replan", action="store_true", help="recompute the plan's side of --out from its measurements")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    if args.replan:
        payload = replan(Path(args.out))
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        report(payload)
        return 0

    import torch

    from gvm_mini.config import load_config
    from gvm_mini.models import offline_tokenizer, shape_twin, weight_bytes
    from gvm_mini.plan import HUB_TWINS, estimate_memory

    torch.manual_seed(0)
    tok = offline_tokenizer()
    layers = 2 if args.smoke else None
    train_T = (16, 32) if args.smoke else (64, 128)
    shapes = {"update": (2, train_T), "logprobs": (2, train_T), "gradnorm": (2, train_T)}
    # sampling: (rows, distinct prompts, prompt tokens, new tokens): two points where the KV cache of
    # many rows of one prompt sets the peak, one where the prefill of 8 distinct prompts does
    sampling_points = [(16, 1, 32, 2), (16, 1, 64, 2), (8, 8, 16, 2)] if args.smoke else \
        [(64, 1, 256, 4), (64, 1, 512, 4), (8, 8, 64, 2)]
    cfgs = [(p.name, load_config(str(p))) for p in shipped_configs()]
    by_model = {}
    for name, cfg in cfgs:
        variants = ([] if args.modes == "qlora" else [cfg]) + \
            ([dataclasses.replace(cfg, load_in_4bit=True)] if args.modes in ("both", "qlora") else [])
        for c in variants:
            key = (HUB_TWINS[c.model], c.load_in_4bit, c.lora_r)
            by_model.setdefault(key, (c, []))[1].append(name)
    measured = {}
    t_start = time.perf_counter()
    for (twin, q4, _), (cfg, names) in by_model.items():
        t0 = time.perf_counter()
        model = build(cfg, twin, layers)
        meta = shape_twin(twin, device="meta", num_layers=layers)
        w = weight_bytes(model)
        rows = {}
        for phase in [p for p in PHASES if p in args.phases.split(",")]:
            pts = []
            if phase == "evaluation" and cfg.eval_samples == cfg.num_pilot:
                # the same decode loop on the same shapes (eval_samples = num_pilot rows per prompt)
                pts = [dict(p) for p in rows["sampling"]]
            elif phase in ("sampling", "evaluation"):
                for (B, U, P, N) in sampling_points:
                    t1 = time.perf_counter()
                    extra, width = measure_sampling(model, tok, B, U, P, N)
                    pts.append({"rows": B, "prompts": U, "prompt_tokens": width, "tokens": width + N,
                                "measured_gb": (w + extra) / GB, "seconds": time.perf_counter() - t1})
            else:
                B, Ts = shapes[phase]
                for T in Ts:
                    t1 = time.perf_counter()
                    got = measure(phase, cfg, model, tok, B, T)
                    got, parts = got if isinstance(got, tuple) else (got, {})
                    pts.append({"rows": B, "tokens": T, "measured_gb": (w + got) / GB,
                                **{k: (v if k == "moments_gb" else w / GB + v) for k, v in parts.items()},
                                "seconds": time.perf_counter() - t1})
            for p in pts:
                p["planned_gb"] = plan_point(cfg, meta, phase, p) / GB
                p["ratio"] = p["planned_gb"] / p["measured_gb"]
                print(f"{twin:<18} {'qlora' if q4 else 'lora':<5} {phase:<10} {p['rows']:>2} x {p['tokens']:>4}"
                      f"{'' if 'prompts' not in p else ' (%d prompts)' % p['prompts']}: measured {p['measured_gb']:7.3f} GiB, "
                      f"planned {p['planned_gb']:7.3f} GiB, ratio {p['ratio']:5.3f}  ({p['seconds']:.0f} s)", flush=True)
            rows[phase] = pts
        measured[(twin, q4)] = {"weights_gb": w / GB, "phases": rows, "seconds": time.perf_counter() - t0,
                                "configs": names, "cfg": cfg, "meta": meta}
        del model
        gc.collect()

    out_rows = []
    for (twin, q4), m in measured.items():
        cfg, meta = m["cfg"], m["meta"]
        for name in m["configs"]:
            for phase, pts in m["phases"].items():
                Bc, Tc = config_rows(cfg, phase), cfg.max_prompt_length + cfg.max_completion_length
                if phase in ("sampling", "evaluation"):
                    # decode-bound points: the line through them in rows x tokens (the KV cache); the
                    # prefill-bound point: its excess over the weights grows with the distinct prompts
                    a, b, pre = pts[0], pts[1], pts[2]
                    Na, Nb, Nc = a["rows"] * a["tokens"], b["rows"] * b["tokens"], Bc * Tc
                    decode = a["measured_gb"] + (b["measured_gb"] - a["measured_gb"]) / (Nb - Na) * (Nc - Na)
                    Uc = max(1, Bc // (cfg.num_pilot if phase == "sampling" else cfg.eval_samples))
                    prefill = m["weights_gb"] + (pre["measured_gb"] - m["weights_gb"]) * Uc / pre["prompts"]
                    extrapolated = max(decode, prefill)
                    Pc = cfg.max_prompt_length
                else:
                    a, b = pts[0], pts[1]
                    # every term grows linearly with the batch's tokens N = rows x length above a fixed part
                    # (weights, optimizer, chunk temporaries): the line through the two points at N_config
                    Na, Nb, Nc = a["rows"] * a["tokens"], b["rows"] * b["tokens"], Bc * Tc
                    extrapolated = a["measured_gb"] + (b["measured_gb"] - a["measured_gb"]) / (Nb - Na) * (Nc - Na)
                    Uc = Pc = None
                planned_cfg = plan_phase(cfg, meta, phase, Bc, Tc, Uc, Pc) / GB
                worst = max(pts, key=lambda p: abs(p["ratio"] - 1))
                out_rows.append({"config": name, "mode": "qlora" if q4 else "lora", "phase": phase,
                                 "measured": [{k: v for k, v in p.items() if k != "seconds"} for p in pts],
                                 "planned_gb": worst["planned_gb"], "measured_gb": worst["measured_gb"],
                                 "ratio": worst["ratio"],
                                 "config_rows": Bc, "config_tokens": Tc, "config_prompts": Uc, "config_prompt_tokens": Pc,
                                 "planned_at_config_gb": planned_cfg,
                                 "extrapolated_at_config_gb": extrapolated,
                                 "ratio_at_config": planned_cfg / extrapolated})
    for r in out_rows:
        if r["phase"] == "update" and "moments_gb" in r["measured"][0]:
            r["moments_gb"] = r["measured"][0]["moments_gb"]
    update_at_config({"rows": out_rows})
    ratios = [r["ratio"] for r in out_rows] + [r["ratio_at_config"] for r in out_rows]
    print(f"ratios planned / measured: min {min(ratios):.3f}, max {max(ratios):.3f} over {len(out_rows)} rows "
          f"({len(out_rows) // len(PHASES)} config x mode); total {time.perf_counter() - t_start:.0f} s")
    from _common import git_commit, machine

    payload = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": git_commit(), "machine": machine(),
               "smoke": args.smoke, "dtype": "bfloat16", "measured_on": "cpu", "shapes": {**{k: [v[0], list(v[1])] for k, v in shapes.items()},
                                                                "sampling": sampling_points},
               "rows": out_rows, "all_within_10pct": all(0.9 <= r <= 1.1 for r in ratios)}
    path = Path(args.out) if not args.smoke else Path(args.out).with_suffix(".smoke.json")
    if path.exists():  # keep the rows of an earlier run that this one did not measure
        done = {(r["config"], r["mode"], r["phase"]) for r in out_rows}
        old_rows = [r for r in json.loads(path.read_text())["rows"] if (r["config"], r["mode"], r["phase"]) not in done]
        payload["rows"] = old_rows + out_rows
        ratios = [r["ratio"] for r in payload["rows"]] + [r["ratio_at_config"] for r in payload["rows"]]
        payload["all_within_10pct"] = all(0.9 <= r <= 1.1 for r in ratios)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"results -> {path}")
    return 0


def config_rows(cfg, phase: str) -> int:
    """Rows per forward in the config: the micro-batch for the training phases, the sampling batch
    (bounded by ``max_batch_tokens``) for sampling and evaluation."""
    if phase in ("sampling", "evaluation"):
        T = cfg.max_prompt_length + cfg.max_completion_length
        rows = cfg.sample_batch_size
        if cfg.max_batch_tokens:
            rows = max(1, min(rows, cfg.max_batch_tokens // T))
        return rows
    return cfg.micro_batch_size or cfg.mini_batch_size


if __name__ == "__main__":
    sys.exit(main())
