"""``python -m gvm_mini demo``: RL that visibly learns on a CPU in minutes, and what the allocation buys.

1. **Task** (``--task rules``, the default; :func:`gvm_mini.data.rule_problems`) - prompts ``rule X: a b``
   in eight families A-H. Each family is solved by one short named procedure written out before the
   answer (``dbl: 2*7+3=17. \\boxed{17}``); the eight procedures disagree on every operand pair, so a
   completion is correct iff it writes its family's procedure and computes it right.
2. **Starting policy** (:class:`RuleSFT`) - a 0.15M-parameter Qwen2-shaped model (2 layers, width 64)
   with an offline tokenizer, SFT-warmed for 400 steps on data in which each family writes its correct
   procedure only a family-specific share of the time (0.97 for A down to 0.06 for G) and a plausible
   wrong one otherwise; family H's procedure never appears. Temperature-1 pass rates then spread from
   about 0.8 (A) through a few percent (E, F, G) to 0 (H): the regime the paper is about, with both ends
   of its Figure 2 crowded. What RL must learn is *which* procedure each family needs, a skill that does
   not transfer between families, so a hard family learns only from its own accepted samples. Cached
   after the first run, keyed by every setting that shapes it.
3. **Runs** (:data:`METHODS`) - RAFT++ and GRPO, each with uniform budgets, GVM's Proposition 1 (the
   paper's settings, N' = 4) and the DAPO-style filter, full fine-tuning of the tiny policy, all stopped
   at the same number of generated tokens (pilot samples counted, checked after every M-step), three
   seeds, in parallel worker processes.
4. **Outputs** - ``curves.png`` (test accuracy against generated tokens, training wall time and M-steps,
   mean and spread over seeds, one row per algorithm), ``families.png`` (the same per family),
   ``allocation.png`` (n_i against p_i coloured by family, the paper's Figure 2) and ``summary.md`` /
   ``summary.json``: every arm read at equal tokens (curves interpolated) and at equal M-steps (the
   paper's accounting), tokens and M-steps to reach the uniform baseline's final accuracy and their
   ratios, per-family accuracy and budget, the GVM stage's share of wall time, the truncation rate.

``--task chains`` keeps the previous demo as the counter-example: chains of 1-7 one-digit additions and
subtractions with slips that grow along the chain (:data:`TASK`, :class:`SFT`), where G_i of the summed
log-probability grows with the chain length and Proposition 1 sends the budget to the longest, most
expensive samples.

Why a tiny SFT-warmed model rather than SmolLM2-135M with LoRA: SmolLM2 samples at 20-100 tokens/s on
this CPU; the tiny model at about 10k tokens/s per core, which is what a learning curve in minutes needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config, ConfigError, validate
from .rundir import atomic_savefig, atomic_write_text  # a kill never leaves a torn summary or figure

__all__ = ["TASK", "SFT", "RuleSFT", "METHODS", "CHAINS_METHODS", "BUDGET", "QUICK_BUDGET", "MIN_GAIN",
           "rule_sft_solution", "slipped_solution", "warm_start", "demo_config", "run_demo", "run_jobs", "summarize_runs"]

#: the chains task (``--task chains``, the counter-example; arguments of ``arithmetic_problems``)
TASK = dict(min_operands=2, max_operands=8, max_digits=1, ops=("+", "-"))


@dataclass(frozen=True)
class SFT:
    """Warm start of the chains task (``--task chains``); all settings key the cache.

    The worked solutions carry deliberate slips: step ``j`` (0-based) of a solution is off by one with
    probability ``slip_base + slip_growth * j`` (the slip is carried to the end), so a policy that
    imitates them fails more often the longer the chain: 5% on one step, 1 - prod_j (1 - 0.05 - 0.06 j)
    = 89% on seven. That is
    what makes pass rates spread across (0, 1) with difficulty, and what RL has to unlearn.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    slip_base: float = 0.05
    slip_growth: float = 0.06
    examples: int = 8000
    data_seed: int = 7
    seed: int = 0
    version: int = 3


#: generated tokens per run, pilots included (full demo, --quick): rule task, then the chains task
BUDGET, QUICK_BUDGET = 150_000, 50_000
CHAINS_BUDGET, CHAINS_QUICK_BUDGET = 150_000, 40_000

#: (label, algorithm, allocation): each algorithm with uniform budgets, GVM's Proposition 1 and the
#: DAPO-style filter (pilot, then drop prompts whose pilots were all right or all wrong)
METHODS = [
    ("RAFT++", "raftpp", "uniform"),
    ("GVM-RAFT++", "raftpp", "gvm"),
    ("Filter-RAFT++", "raftpp", "filter_extremes"),
    ("GRPO", "grpo", "uniform"),
    ("GVM-GRPO", "grpo", "gvm"),
    ("Filter-GRPO", "grpo", "filter_extremes"),
]
#: the chains counter-example keeps the previous demo's four arms
CHAINS_METHODS = [m for m in METHODS if not m[0].startswith("Filter")]


#: the rule task's split: held-out prompts per family and the seed of the split (also the runs' data_seed)
RULES_TEST_PER_FAMILY, RULES_DATA_SEED = 16, 1234


@dataclass(frozen=True)
class RuleSFT:
    """Warm start of the rule task (the default demo); all settings key the cache.

    For each family the SFT data writes the family's correct procedure with probability ``share`` and
    otherwise one of its ``wrong`` procedures (equal parts), so the warm-started policy picks the
    correct procedure about ``share`` of the time: RL must shift each family towards its own
    procedure, a hard family from its own few accepted samples. Family H's correct procedure (``mul``)
    never appears in the data: its pass rate is 0 and stays 0. Every other procedure appears in at
    least three families, so the policy computes all of them reliably.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 400
    batch_size: int = 64
    lr: float = 6e-3
    shares: tuple = (("A", 0.97), ("B", 0.7), ("C", 0.4), ("D", 0.2), ("E", 0.12), ("F", 0.08), ("G", 0.06), ("H", 0.0))
    wrong: tuple = (("A", ("sub", "dbl", "neg")), ("B", ("add", "rsub", "dbl")), ("C", ("sub", "inc", "neg")),
                    ("D", ("add", "dec", "dbl")), ("E", ("inc", "rsub", "add")), ("F", ("add", "sub", "dec")),
                    ("G", ("add", "inc", "neg")), ("H", ("add", "sub", "inc", "dec")))
    examples: int = 8000
    data_seed: int = 7
    seed: int = 0
    version: int = 1


def rule_sft_solution(problem, rng: random.Random, sft: RuleSFT) -> str:
    """One SFT target for a rule prompt: its family's correct procedure with probability ``share``,
    else one of the family's wrong procedures (equal parts)."""
    from .data import rule_solution

    fam, a, b = problem.meta["family"], problem.meta["a"], problem.meta["b"]
    share, wrong = dict(sft.shares)[fam], dict(sft.wrong)[fam]
    proc = problem.meta["procedure"] if rng.random() < share else rng.choice(wrong)
    return rule_solution(proc, a, b)


def _operands(expression: str) -> tuple[list[int], list[str]]:
    """``"7-5+3"`` -> ``([7, 5, 3], ["-", "+"])``."""
    tokens, cur = [], ""
    for ch in expression:
        if ch in "+-" and cur:
            tokens += [cur, ch]
            cur = ""
        else:
            cur += ch
    tokens.append(cur)
    return [int(x) for x in tokens[0::2]], tokens[1::2]


def slipped_solution(expression: str, rng: random.Random, slip_base: float, slip_growth: float) -> str:
    """A worked solution of ``expression`` in which step ``j`` slips by +-1 with probability
    ``slip_base + slip_growth * j``; a slipped value is carried into the next step and the answer."""
    nums, ops = _operands(expression)
    value, steps = nums[0], []
    for j, (op, b) in enumerate(zip(ops, nums[1:])):
        new = value + b if op == "+" else value - b
        if rng.random() < slip_base + slip_growth * j:
            new += rng.choice([-1, 1])
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return ". ".join(steps) + f". \\boxed{{{value}}}"


def _sft_data(sft) -> tuple[list, list[str]]:
    """(problems, SFT targets) of the warm start ``sft`` (its type says the task)."""
    from .data import arithmetic_problems, rule_problems

    rng = random.Random(sft.data_seed)
    if isinstance(sft, RuleSFT):
        train, _test = rule_problems(RULES_TEST_PER_FAMILY, seed=RULES_DATA_SEED)  # held-out prompts never seen
        problems = [rng.choice(train) for _ in range(sft.examples)]
        return problems, [rule_sft_solution(p, rng, sft) for p in problems]
    problems = arithmetic_problems(sft.examples, seed=sft.data_seed, **TASK)
    return problems, [slipped_solution(p.meta["expression"], rng, sft.slip_base, sft.slip_growth) for p in problems]


def warm_start(cache_root: Path, sft: SFT | RuleSFT = RuleSFT(), *, progress: bool = True) -> Path:
    """Train (or reuse) the SFT-warmed tiny policy; returns its directory (a local HF model dir)."""
    from .data import format_chat
    from .models import offline_tokenizer, tiny_model

    task = "rules" if isinstance(sft, RuleSFT) else TASK
    key = hashlib.sha256(json.dumps({"task": task, "sft": asdict(sft)}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = cache_root / f"demo-policy-{key}"
    if (out / "config.json").is_file():
        return out
    problems, solutions = _sft_data(sft)
    tok = offline_tokenizer([p.problem + " " + s for p, s in zip(problems[:2000], solutions[:2000])], vocab_size=300)
    model = tiny_model(tok, hidden_size=sft.hidden_size, num_layers=sft.num_layers, num_heads=sft.num_heads, seed=sft.seed)
    rows = []
    for p, s in zip(problems, solutions):
        a = tok(format_chat(tok, p.problem, system=None, instruction=""), add_special_tokens=False)["input_ids"]
        b = tok(s + tok.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((a, b))
    opt = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=sft.lr, total_steps=sft.steps, pct_start=0.1)
    batch_rng = random.Random(sft.seed)
    model.train()
    threads = torch.get_num_threads()
    # one thread: the same weights as with two (checked), and no collapse when other work shares the
    # CPU (two contending threads made this loop 5x slower on a loaded 2-core machine)
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(sft.seed)
        for _ in tqdm(range(sft.steps), desc="SFT warm start (cached after the first run)", disable=not progress):
            batch = batch_rng.sample(rows, sft.batch_size)
            width = max(len(a) + len(b) for a, b in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (a, b) in enumerate(batch):
                ids[i, : len(a) + len(b)] = torch.tensor(a + b)
                labels[i, len(a) : len(a) + len(b)] = torch.tensor(b)
                attn[i, : len(a) + len(b)] = 1
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    torch.set_num_threads(threads)
    model.eval()
    from .models import quiet_loading
    from .rundir import atomic_dir

    cache_root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp, quiet_loading():  # a kill never leaves a half-written policy in the cache
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "gvm_mini_sft.json").write_text(json.dumps({"task": task, "sft": asdict(sft), "final_loss": float(loss.detach())}, default=str))
    return out


def demo_config(model_dir: Path, algorithm: str, allocation: str, seed: int, *, quick: bool, task: str = "rules") -> Config:
    """The run config of one (method, seed) of the demo: same task, budget and evaluation for all.

    Paper settings where they apply (N' = 4 pilots here instead of 8, N = 8 x prompts, alpha = 1e-3,
    beta = 2, G_i on ``embed_tokens`` with summed log-probs, fresh samples, temperature 1, clip 0.2 /
    0.28); scaled to a tiny model: full fine-tuning at lr 1e-4 (lr 1e-3 collapses the policy), 2
    M-steps of 32 prompts per E-step, no KL. Old log-probs come from the sampler
    (``old_logprobs="behaviour"``: exact at temperature 1, one forward pass fewer per sample).
    ``task="chains"`` is the counter-example task of the previous demo.
    """
    common = dict(
        model=str(model_dir), dtype="float32", device="cpu", lora=False, verifier="exact",
        system_prompt=None, instruction="", max_prompt_length=64,
        algorithm=algorithm, allocation=allocation, num_pilot=4, samples_per_prompt=8,
        alpha=1e-3, beta=2.0, gradnorm_params="embed_tokens", reuse_pilot=False,
        temperature=1.0, sample_batch_size=512, iterations=1000,
        prompts_per_step=32, steps_per_iteration=2, mini_batch_size=32,
        learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0, epsilon=0.2, epsilon_high=0.28,
        kl_coef=0.0, loss_type="token_mean", reset_optimizer=False, old_logprobs="behaviour",
        eval_every=1, eval_samples=4, eval_temperature=1.0, seed=seed, progress=False,
    )
    if task == "rules":
        cfg = Config(
            **common, dataset="rules", train_size=10_000, test_size=8 * RULES_TEST_PER_FAMILY,
            data_seed=RULES_DATA_SEED, max_completion_length=48, eval_size=None,
            token_budget=QUICK_BUDGET if quick else BUDGET,
        )
    elif task == "chains":
        cfg = Config(
            **common, dataset="arithmetic", train_size=4000, test_size=200, data_seed=1234,
            task_min_operands=TASK["min_operands"], task_max_operands=TASK["max_operands"],
            task_max_digits=TASK["max_digits"], task_ops="".join(TASK["ops"]), max_completion_length=64,
            eval_size=100 if quick else 200, token_budget=CHAINS_QUICK_BUDGET if quick else CHAINS_BUDGET,
        )
    else:
        raise ConfigError(f"demo task must be rules or chains, got {task!r}")
    return validate(cfg)


def _run_one(job: tuple) -> tuple:
    """One (method, seed) run in a worker process with one torch thread; resumes an interrupted run."""
    from .em import run

    from transformers.utils import logging as hf_logging

    model_dir, label, algorithm, allocation, seed, quick, task, out, *rest = job
    overrides = rest[0] if rest else {}
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # no "Loading weights" bars from the workers
    t0 = time.perf_counter()
    done = out / "DONE"
    if not done.exists():
        cfg = demo_config(model_dir, algorithm, allocation, seed, quick=quick, task=task)
        if overrides:
            from .config import replace

            cfg = replace(cfg, **overrides)
        run(cfg, out, resume=out.exists())
        atomic_write_text(done, "ok")
    return label, seed, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# summary: the table at equal tokens (pilots counted) and at equal M-steps (the paper's), figures
# ---------------------------------------------------------------------------------------------

#: a tokens- or M-steps-to-target ratio is computed only when the uniform baseline gained at least this
#: much test accuracy over its start (one eval of 128 prompts x 4 samples has a standard error of about 0.02)
MIN_GAIN = 0.05

#: the uniform baseline of each arm, and the colours / line styles of the figures
BASELINE_OF = {"GVM-RAFT++": "RAFT++", "Filter-RAFT++": "RAFT++", "GVM-GRPO": "GRPO", "Filter-GRPO": "GRPO"}
_COLOR = {"uniform": "tab:blue", "gvm": "tab:red", "filter_extremes": "tab:green"}


def _rule_of(label: str) -> str:
    return "gvm" if label.startswith("GVM") else "filter_extremes" if label.startswith("Filter") else "uniform"


def _evals(out: Path, label: str, seed: int) -> list[dict]:
    from .plots import read_jsonl

    return [r for r in read_jsonl(out / f"{label}-s{seed}" / "metrics.jsonl") if r["kind"] == "eval"]


def _value_at(evals: list[dict], key: str, x: float, field: str = "avg_at_k", family: str | None = None) -> float:
    """Linear interpolation of an eval curve at ``x`` (the curves are compared at equal x, not at
    their last points, which overshoot the budget by up to one M-step)."""
    xs = np.array([e[key] for e in evals], float)
    ys = np.array([e["by_family"][family] if family else e[field] for e in evals], float)
    return float(np.interp(x, xs, ys))


def _mean_curve(runs: list[list[dict]], key: str, xmax: float, n: int = 80, family: str | None = None):
    grid = np.linspace(0, xmax, n)
    ys = np.array([[_value_at(r, key, x, family=family) for x in grid] for r in runs])
    return grid, ys.mean(0), ys.std(0)


def _first_reach(grid: np.ndarray, mean: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(mean >= target - 1e-12)
    return float(grid[hit[0]]) if hit.size else None


def _k_formatter(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:.0f}k" if v >= 1000 else f"{v:.0f}"))


def summarize_runs(out: Path, labels: list[str], seeds: list[int], *, budget: int,
                   baselines: dict[str, str] | None = None, rule_of: dict[str, str] | None = None) -> dict:
    """The summary table (``summary.md`` / ``summary.json``) and figures (``curves.png``,
    ``families.png``, ``allocation.png``) from the run directories under ``out``.

    Honest accounting: every arm is read at the same number of generated tokens, ``budget``, pilots
    included (curves interpolated). The paper's accounting: M-steps, pilots not counted.
    ``baselines`` maps an arm to the uniform arm it is compared with (default :data:`BASELINE_OF`);
    ``rule_of`` maps an arm to its allocation rule (colours; default: from the label).
    """
    baselines = BASELINE_OF if baselines is None else baselines
    rules = {lab: (rule_of or {}).get(lab) or _rule_of(lab) for lab in labels}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import X_AXES, read_jsonl

    runs = {lab: [_evals(out, lab, s) for s in seeds] for lab in labels}
    metrics = {lab: [read_jsonl(out / f"{lab}-s{s}" / "metrics.jsonl") for s in seeds] for lab in labels}
    families = sorted(runs[labels[0]][0][0].get("by_family", {}))
    # equal M-steps: the fewest M-steps any arm made inside the budget (the pilots cost the GVM and
    # filter arms M-steps at equal tokens)
    m_star = min(_value_at(r, "tokens", budget, field="global_step") for lab in labels for r in runs[lab])
    summary: dict = {"budget_tokens": budget, "seeds": seeds, "families": families, "equal_m_steps": m_star,
                     "machine": _machine(), "methods": {}}
    for lab in labels:
        rs, ms = runs[lab], metrics[lab]
        finals = np.array([_value_at(r, "tokens", budget) for r in rs])
        steps = [[m for m in mm if m["kind"] == "step"] for mm in ms]
        walls = [mm[-1]["wall"] for mm in ms]
        share = np.mean([(w["pilot"] + w["gradnorm"] + w["allocate"]) / max(sum(w.values()) - w["eval"] - w.get("checkpoint", 0), 1e-9) for w in walls])
        summary["methods"][lab] = {
            "algorithm": "grpo" if "GRPO" in lab else "raftpp", "allocation": rules[lab],
            "start_acc": float(np.mean([r[0]["avg_at_k"] for r in rs])),
            "final_acc_mean": float(finals.mean()), "final_acc_std": float(finals.std()),
            "final_acc_seeds": finals.tolist(),
            "acc_at_equal_m_steps_mean": float(np.mean([_value_at(r, "global_step", m_star) for r in rs])),
            "acc_at_equal_m_steps_std": float(np.std([_value_at(r, "global_step", m_star) for r in rs])),
            "tokens": float(np.mean([mm[-1]["tokens"] for mm in ms])),
            "pilot_tokens": float(np.mean([mm[-1]["pilot_tokens"] for mm in ms])),
            "m_steps": float(np.mean([_value_at(r, "tokens", budget, field="global_step") for r in rs])),
            "updates": float(np.mean([mm[-1]["updates"] for mm in ms])),
            "gvm_stage_share_of_train_wall": float(share),
            "train_truncated_frac": float(np.mean([st["truncated_frac"] for ss in steps for st in ss if st.get("truncated_frac") is not None])),
            "eval_truncated_frac": float(np.mean([e["truncated_frac"] for r in rs for e in r])),
        }
        if families:
            summary["methods"][lab]["start_by_family"] = {f: float(np.mean([r[0]["by_family"][f] for r in rs])) for f in families}
            summary["methods"][lab]["final_by_family"] = {f: float(np.mean([_value_at(r, "tokens", budget, family=f) for r in rs])) for f in families}
        allocs = [read_jsonl(out / f"{lab}-s{s}" / "allocations.jsonl") for s in seeds]
        if rules[lab] != "uniform":
            summary["methods"][lab]["dropped_prompt_frac"] = float(np.mean([np.mean(np.asarray(a["n"]) == 0) for al in allocs for a in al]))
            if families:
                mean_n = {}
                for f in families:
                    vals = [n for al in allocs for a in al for n, d in zip(a["n"], a["difficulty"]) if families[d] == f]
                    mean_n[f] = float(np.mean(vals)) if vals else None
                summary["methods"][lab]["mean_n_by_family"] = mean_n
    # tokens / M-steps to reach the uniform baseline's final accuracy, on the mean curves over seeds
    for lab in labels:
        base = baselines.get(lab, lab)
        if base not in labels:
            continue
        sb = summary["methods"][base]
        if sb["final_acc_mean"] - sb["start_acc"] < MIN_GAIN:
            summary["methods"][lab]["note"] = (f"the uniform baseline gained less than {MIN_GAIN} over its start: "
                                               "a tokens-to-target ratio would measure noise")
            continue
        target = sb["final_acc_mean"]
        for x, key, name in (("tokens", "tokens", "tokens"), ("steps", "global_step", "m_steps")):
            reach = {}
            for l2 in (base, lab):
                xmax = min(r[-1][key] for r in runs[l2]) if x == "steps" else budget
                g, mean, _ = _mean_curve(runs[l2], key, xmax, n=200)
                reach[l2] = _first_reach(g, mean, target)
            summary["methods"][lab][f"{name}_to_baseline_final"] = reach[lab]
            if lab != base:
                summary["methods"][lab][f"{name}_ratio_vs_baseline"] = (
                    reach[base] / reach[lab] if reach[base] and reach[lab] else None)
    if rule_of is None:  # the demo's six arms; experiments with other arms make their own figures
        _plot_curves(out, runs, labels, seeds, budget, plt, X_AXES)
        if families:
            _plot_families(out, runs, labels, families, budget, plt)
    gvm = [lab for lab in labels if lab.startswith("GVM")]
    if gvm:
        _plot_allocation_by_family(out / f"{gvm[0]}-s{seeds[0]}", out / "allocation.png", families, plt)
    summary["table"] = _table(summary, labels)
    atomic_write_text(out / "summary.md", summary["table"] + "\n")
    atomic_write_text(out / "summary.json", json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
    return summary


def _machine() -> str:
    """The CPU model (results are deterministic per machine, not across AVX2 / AVX-512 CPUs)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                return line.split(":", 1)[1].strip() + (" (AVX-512)" if "avx512f" in flags else " (AVX2, no AVX-512)")
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _fmt_reach(s: dict, name: str, fmt: str) -> str:
    if "note" in s:
        return "n/a: baseline gained < 0.05"
    v, r = s.get(f"{name}_to_baseline_final"), s.get(f"{name}_ratio_vs_baseline")
    return "not reached" if v is None else fmt.format(v) + ("" if r is None else f" ({r:.2f}x)")


def _table(summary: dict, labels: list[str]) -> str:
    m_star = summary["equal_m_steps"]
    lines = [
        f"Equal generated tokens ({summary['budget_tokens']:,}, pilots counted) and equal M-steps ({m_star:.0f}, the paper's "
        f"x-axis, pilots not counted); mean ± std over {len(summary['seeds'])} seeds; measured on {summary['machine']}.",
        "",
        "| method | start acc | final acc at equal tokens | acc at equal M-steps | tokens (pilot) | M-steps | "
        "tokens to reach uniform's final (ratio) | M-steps to reach it (ratio) | GVM stage share of train wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lab in labels:
        s = summary["methods"][lab]
        lines.append(
            f"| {lab} | {s['start_acc']:.3f} | {s['final_acc_mean']:.3f} ± {s['final_acc_std']:.3f} | "
            f"{s['acc_at_equal_m_steps_mean']:.3f} ± {s['acc_at_equal_m_steps_std']:.3f} | "
            f"{s['tokens']:,.0f} ({s['pilot_tokens']:,.0f}) | {s['m_steps']:.1f} | {_fmt_reach(s, 'tokens', '{:,.0f}')} | "
            f"{_fmt_reach(s, 'm_steps', '{:.1f}')} | {100 * s['gvm_stage_share_of_train_wall']:.1f}% |"
        )
    fams = summary["families"]
    if fams:
        lines += ["", "Per family: test Average@4 at the start -> at equal tokens (mean over seeds); "
                  "for the pilot-based arms, mean n_i per prompt in brackets (uniform: 8).", "",
                  "| method | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
        first = summary["methods"][labels[0]]
        lines.append("| start | " + " | ".join(f"{first['start_by_family'][f]:.2f}" for f in fams) + " |")
        for lab in labels:
            s = summary["methods"][lab]
            mean_n = s.get("mean_n_by_family", {})
            cells = [f"{s['final_by_family'][f]:.2f}" + (f" [{mean_n[f]:.1f}]" if mean_n.get(f) is not None else "") for f in fams]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    trunc = max(max(s["train_truncated_frac"], s["eval_truncated_frac"]) for s in summary["methods"].values())
    lines += ["", f"Truncated completions (hit max_completion_length): at most {100 * trunc:.2f}% of any arm's samples."]
    return "\n".join(lines)


def _plot_curves(out: Path, runs: dict, labels: list[str], seeds: list[int], budget: int, plt, X_AXES) -> None:
    algos = [a for a in ("RAFT++", "GRPO") if any(lab.endswith(a) for lab in labels)]
    fig, axes = plt.subplots(len(algos), 3, figsize=(15, 4 * len(algos)), squeeze=False)
    for row, algo in zip(axes, algos):
        arms = [lab for lab in labels if lab.endswith(algo) and (lab == algo or lab.split("-", 1)[1] == algo)]
        start = np.mean([runs[lab][i][0]["avg_at_k"] for lab in arms for i in range(len(seeds))])
        for ax, x in zip(row, ["tokens", "wall", "steps"]):
            key = X_AXES[x][0]
            for lab in arms:
                xmax = budget if x == "tokens" else min(r[-1][key] for r in runs[lab])
                g, mean, std = _mean_curve(runs[lab], key, xmax)
                c = _COLOR[_rule_of(lab)]
                ax.plot(g, mean, label=lab, color=c)
                ax.fill_between(g, mean - std, mean + std, alpha=0.15, color=c)
            ax.axhline(start, color="gray", ls=":", lw=1, label="start")
            if x == "tokens":
                _k_formatter(ax)
            ax.set_xlabel(X_AXES[x][1])
            ax.set_ylabel("test Average@4")
            ax.grid(alpha=0.3)
        row[0].legend(loc="lower right", fontsize=8)
        row[0].set_title(f"{algo}: uniform vs GVM vs filter, against tokens", fontsize=10)
        row[1].set_title("against training wall time", fontsize=10)
        row[2].set_title("against M-steps (the paper's x-axis: pilots free)", fontsize=10)
    fig.suptitle(f"Test accuracy during RL, mean ± std over {len(seeds)} seeds (dotted: start)")
    fig.tight_layout()
    atomic_savefig(fig, out / "curves.png", dpi=100)
    plt.close(fig)


def _plot_families(out: Path, runs: dict, labels: list[str], families: list[str], budget: int, plt) -> None:
    from .data import RULE_FAMILIES

    cols = 4
    rows = (len(families) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, f in zip(axes.flat, families):
        for lab in labels:
            g, mean, _ = _mean_curve(runs[lab], "tokens", budget, n=40, family=f)
            ax.plot(g, mean, color=_COLOR[_rule_of(lab)], ls="-" if "RAFT" in lab else "--", label=lab)
        start = float(np.mean([r[0]["by_family"][f] for r in runs[labels[0]]]))  # the table's start (mean over seeds)
        ax.axhline(start, color="gray", ls=":", lw=1)
        ax.set_title(f"family {f} ({RULE_FAMILIES.get(f, '?')}), start {start:.2f}", fontsize=10)
        _k_formatter(ax)
        ax.set_xlabel("generated tokens (pilots included)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test Average@4")
    for ax in axes.flat[len(families):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Per family (solid: RAFT++ arms, dashed: GRPO arms; colour: uniform / GVM / filter), mean over seeds")
    fig.tight_layout()
    atomic_savefig(fig, out / "families.png", dpi=100)
    plt.close(fig)


def _plot_allocation_by_family(run_dir: Path, path: Path, families: list[str], plt) -> None:
    """n_i against the pilot p_i for every prompt of every iteration, coloured by family (the paper's
    Figure 2), with the uniform budget as a reference line."""
    from .plots import read_jsonl

    recs = read_jsonl(run_dir / "allocations.jsonl")
    p = np.concatenate([np.asarray(r["p"], float) for r in recs])
    n = np.concatenate([np.asarray(r["n"], float) for r in recs])
    d = np.concatenate([np.asarray(r["difficulty"], float) for r in recs])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    jitter = np.random.default_rng(0).uniform(-0.012, 0.012, p.size)
    if families:
        from .data import RULE_FAMILIES

        cmap = plt.get_cmap("tab10")
        for j, f in enumerate(families):
            sel = d == j
            ax.scatter(p[sel] + jitter[sel], n[sel], s=14, color=cmap(j), alpha=0.7,
                       label=f"{f} ({RULE_FAMILIES.get(f, '?')}): {100 * np.mean(n[sel] == 0):.0f}% get 0")
    else:
        sc = ax.scatter(p + jitter, n, c=d, cmap="viridis", s=14)
        fig.colorbar(sc, ax=ax, label="difficulty")
    ax.axhline(8, color="black", ls="--", lw=1, label="uniform: 8 per prompt")
    ax.legend(fontsize=7, ncol=2, title="family: share of its prompts with n_i = 0", title_fontsize=7)
    ax.set_xlabel("pilot acceptance rate p_i (N' = 4 pilots)")
    ax.set_ylabel("allocated samples n_i")
    ax.set_title(f"Proposition-1 allocation, {run_dir.name}: every prompt of every iteration")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def _token_progress(out: Path, jobs: list, total: float, result) -> None:
    """A progress bar over the generated tokens of all runs (read from their metrics files), so it
    moves inside runs, not only when a whole run ends."""
    from .plots import read_jsonl

    bar = tqdm(total=int(total), desc="demo runs (generated tokens, all runs)", unit="tok", unit_scale=True)
    while not result.ready():
        result.wait(1.0)
        done = 0
        for job in jobs:
            path = job[7] / "metrics.jsonl"  # (model_dir, label, algorithm, allocation, seed, quick, task, out[, overrides])
            if path.exists():
                recs = read_jsonl(path)
                if recs:
                    done += min(recs[-1]["tokens"], total / len(jobs))
        bar.n = int(done)
        bar.refresh()
    bar.n = int(total)
    bar.close()


def _worker_init() -> None:
    """In a spawned worker: a thread lock for tqdm instead of its default named semaphore, which the
    resource tracker reports as leaked when the worker exits."""
    tqdm.set_lock(threading.RLock())


def run_jobs(out: Path, jobs: list[tuple], budget: int, workers: int) -> list[tuple]:
    """Run the (method, seed) jobs of :func:`_run_one` on ``workers`` spawned processes with a progress
    bar over generated tokens; returns ``(label, seed, seconds)`` per job. Finished runs are skipped."""
    import multiprocessing as mp

    tqdm.set_lock(threading.RLock())  # before any bar: tqdm's default multiprocessing lock leaks a semaphore at exit
    pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
    try:
        result = pool.map_async(_run_one, jobs)
        _token_progress(out, jobs, budget * len(jobs) * 1.0, result)
        times = result.get()
        pool.close()  # let the workers exit by themselves: a terminated pool can leave a semaphore behind
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return times


def run_demo(out: Path, *, quick: bool = False, seeds: int | None = None, cache_root: Path | None = None,
             workers: int | None = None, task: str = "rules", sft=None) -> dict:
    """The whole demo (module docstring); resumable: finished runs are kept and skipped.

    ``quick``: the same warm start, one seed, :data:`QUICK_BUDGET` tokens per run (default: three seeds). ``task="chains"``: the previous demo's task, the counter-example.

    The (method, seed) runs go to ``workers`` processes (default: the CPU count, at most 4) with one
    torch thread each; on CPU a run's numbers do not depend on which worker ran it.
    """
    from .rundir import clean_leftovers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)  # temporaries of a summary or figure write that a kill interrupted
    cache_root = Path(cache_root) if cache_root else Path.home() / ".cache" / "gvm_mini"
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
    n_seeds = seeds if seeds is not None else (1 if quick else 3)
    seed_list = list(range(n_seeds))
    if sft is None:
        sft = RuleSFT() if task == "rules" else SFT()
    methods = METHODS if task == "rules" else CHAINS_METHODS
    budget = demo_config(Path("."), "raftpp", "uniform", 0, quick=quick, task=task).token_budget
    t0 = time.perf_counter()
    model_dir = warm_start(cache_root, sft)
    t_sft = time.perf_counter() - t0
    jobs = [(model_dir, label, alg, allocation, s, quick, task, out / f"{label}-s{s}")
            for s in seed_list for label, alg, allocation in methods]
    workers = max(1, min(len(jobs), workers or min(os.cpu_count() or 1, 4)))
    print(f"{len(jobs)} runs ({len(methods)} methods x {n_seeds} seeds) of {budget:,} generated tokens each, "
          f"on {workers} worker processes")
    times = run_jobs(out, jobs, budget, workers)
    t_runs = time.perf_counter() - t0 - t_sft
    summary = summarize_runs(out, [m[0] for m in methods], seed_list, budget=budget)
    summary["task"] = task
    summary["wall_seconds"] = {"warm_start": t_sft, "runs": t_runs, "total": time.perf_counter() - t0,
                               "per_run": {f"{lab}-s{s}": t for lab, s, t in times}}
    atomic_write_text(out / "summary.json", json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
    print(summary["table"])
    figs = ", ".join(str(out / f) for f in ("curves.png", "families.png", "allocation.png") if (out / f).exists())
    print(f"\nfigures: {figs}; warm start {t_sft:.0f} s, runs {t_runs:.0f} s, total {summary['wall_seconds']['total']:.0f} s")
    return summary
