"""Where a real-model run's memory peaks: the process's peak resident memory in each phase of the loop.

    python bench/rss_by_phase.py                 # GVM-RAFT++ and uniform-RAFT++ of the real-model study -> results/rss_by_phase.{json,md}
    python bench/rss_by_phase.py --passes        # ~3 min: one gradient-norm pass and one update pass alone, beside the memory plan
    python bench/rss_by_phase.py --smoke         # under a minute: two tiny runs (results under --out only)

The real-model study (``realmodel_study.py``) recorded each run's peak RSS: 2.4-3.1 GiB for uniform RAFT++
and up to 8.2 GiB for the rules that pilot. This bench says in which phase the peak is reached. Each run is
the study's own configuration (SmolLM2-135M-Instruct + LoRA, two-digit addition, seed ``--seed``) in a
process of its own, with fewer held-out prompts (``--test-size``: evaluation batches keep the study's
shape, there are only fewer of them) and the study's token budget. Every phase of ``gvm_mini.rundir.Recorder``
(pilot, gradnorm, allocate, rollout, reward, update, eval, checkpoint) is measured with Linux's peak-RSS
counter: reset when the phase starts (``/proc/self/clear_refs``, value 5) and read when it ends
(``VmHWM``), so a phase's number is the most memory the process held at any moment inside it.

``--passes``: the two passes that hold the most, each alone in a fresh process at the study's micro-batch
(16 sequences of 200 tokens, SmolLM2-135M + LoRA, float32): the E-step's gradient norms
(``gradnorm.per_sample_grad_norms``, ``gradnorm_params: lora``) and the update's forward and backward,
each beside ``plan.phase_memory``'s number for it (``train --dry-run``'s plan). What is compared is the
weights plus the most tensor memory live at once (``plan.peak_tensor_bytes``, the CPU allocator's own
reports): the process's peak RSS is printed beside it, but on one pass it varies by half between identical
runs (glibc decides per run whether a large freed block goes back to the system).

Run twice per arm: with glibc's default allocator, and with ``MALLOC_TRIM_THRESHOLD_=0`` and
``MALLOC_MMAP_THRESHOLD_=65536`` (freed memory handed back to the system at once). Where the second run's
peak is much lower, the first run's peak was memory freed by the program and kept by the allocator, not
memory the algorithm needs. Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _common import git_commit  # noqa: E402  (bench/_common.py: the commit every bench records)

MIB = 2**20
ALLOCATORS = {"glibc default": {}, "trim at once": {"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "65536"}}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak() -> None:
    """Reset the process's peak-RSS counter (VmHWM) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mib() -> float:
    return _status_kib("VmHWM") / 1024


def install_phase_meter(stats: dict) -> None:
    """Wrap ``Recorder.phase`` so that each phase call records the peak RSS inside it into ``stats``
    (phase -> list of MiB, one per call). Nested phases: before a reset, the counter so far is folded
    into every open phase, so an outer phase's peak includes its inner phases'."""
    from gvm_mini.rundir import Recorder

    inner, stack = Recorder.phase, []

    @contextlib.contextmanager
    def phase(self, name, *, crash=True):
        h = peak_mib()
        for p in stack:
            p[1] = max(p[1], h)
        reset_peak()
        entry = [name, peak_mib()]
        stack.append(entry)
        try:
            with inner(self, name, crash=crash):
                yield
        finally:
            h = peak_mib()
            for p in stack:
                p[1] = max(p[1], h)
            stack.pop()
            stats.setdefault(name, []).append(round(entry[1], 1))

    Recorder.phase = phase


def child(arm: str, seed: int, budget: int, test_size: int, out: Path, smoke: bool) -> dict:
    """One run of ``arm`` in this process, every phase metered; returns the per-phase peaks."""
    import torch

    import realmodel_study as rs
    from gvm_mini import em
    from gvm_mini.config import replace, validate

    torch.set_num_threads(1)
    stats: dict = {}
    install_phase_meter(stats)
    _, opts, _ = rs.arms_of(smoke)[arm]
    cfg = rs.study_config(opts, smoke=smoke, budget=budget, seed=seed)
    if not smoke:
        cfg = validate(replace(cfg, test_size=test_size))
    if out.exists():  # a measurement: always a fresh run
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    reset_peak()
    em.seed_all(em.phase_seed(cfg.seed, "init"))
    model, tok = em.build_policy(cfg)
    built = peak_mib()
    em.run(cfg, out, model=model, tokenizer=tok)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = [r for r in recs if r.get("kind") == "iteration"][-1]
    phases = {name: {"calls": len(v), "peak_mib": max(v), "median_mib": sorted(v)[len(v) // 2], "by_call": v}
              for name, v in stats.items()}
    return {"arm": arm, "seed": seed, "built_mib": round(built, 1), "phases": phases,
            "peak_mib": max([built] + [p["peak_mib"] for p in phases.values()]),
            "iterations": last["iteration"], "tokens": last["tokens"], "pilot_tokens": last["pilot_tokens"],
            "wall_s": round(time.perf_counter() - t0, 1)}


def one_pass(kind: str, rows: int, tokens: int) -> dict:
    """The peak RSS of one ``kind`` pass ("gradnorm" or "update") alone, in this process, beside the plan."""
    import torch

    import realmodel_study as rs
    from gvm_mini import em, gradnorm, losses, models, plan

    torch.set_num_threads(1)
    _, opts, _ = rs.arms_of(False)["GVM-RAFT++"]
    cfg = rs.study_config(opts)
    model, _ = em.build_policy(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size, (rows, tokens), generator=g)
    am = torch.ones_like(ids)
    cm = torch.zeros_like(ids)
    cm[:, tokens // 5:] = 1  # a fifth prompt, the rest completion
    def run():
        if kind == "gradnorm":
            gradnorm.per_sample_grad_norms(model, ids, am, cm, params=cfg.gradnorm_params, batch_size=rows)
        else:  # the update's forward and backward on one micro-batch (the optimizer's moments are the adapter's: small)
            model.train()
            lp = losses.token_logprobs(model, ids, am)
            (-(lp * cm[:, -lp.shape[1]:].to(lp.dtype)).sum()).backward()

    reset_peak()
    before = _status_kib("VmRSS") / 1024
    live, _ = plan.peak_tensor_bytes(run)  # the tensors live at once, as the CPU allocator reports them
    return {"pass": kind, "rows": rows, "tokens": tokens, "gradnorm_params": cfg.gradnorm_params,
            "rss_before_mib": round(before, 1), "rss_peak_mib": round(peak_mib(), 1),
            "peak_mib": round((models.weight_bytes(model) + live) / MIB, 1),
            "planned_mib": round(plan.phase_memory(cfg, model, kind, rows=rows, tokens=tokens) / MIB, 1)}


def _reap(running: list, results: list) -> list:
    """Move the finished subprocesses of ``running`` to ``results``; return the ones still running."""
    still = []
    for job, proc, dest in running:
        if proc.poll() is None:
            still.append((job, proc, dest))
        else:
            results.append((job, proc.returncode, dest))
    return still


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default="GVM-RAFT++,uniform-RAFT++")
    ap.add_argument("--seed", type=int, default=3, help="the study seed whose GVM run peaked highest (8.2 GiB)")
    ap.add_argument("--budget", type=int, default=None, help="generated tokens per run (default: the study's)")
    ap.add_argument("--test-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "runs" / "rss_by_phase"))
    ap.add_argument("--passes", action="store_true", help="one gradient-norm pass and one update pass, beside the plan")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--child", nargs=3, metavar=("ARM", "ALLOCATOR", "JSON"), help=argparse.SUPPRESS)
    ap.add_argument("--child-pass", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        ap.error("needs Linux's /proc/self/clear_refs")
    import realmodel_study as rs

    budget = args.budget or (rs.SMOKE_BUDGET if args.smoke else rs.BUDGET)
    out = Path(args.out)
    if args.child_pass:
        kind, dest = args.child_pass
        Path(dest).write_text(json.dumps(one_pass(kind, args.rows, args.tokens)))
        return 0
    if args.passes:
        return passes(args, out)
    if args.child:
        arm, alloc, dest = args.child
        res = child(arm, args.seed, budget, args.test_size, out / f"{arm}-{alloc.replace(' ', '_')}", args.smoke)
        res["allocator"] = alloc
        Path(dest).write_text(json.dumps(res))
        return 0
    arms = args.arms.split(",") if not args.smoke else [a for a, _, _, _ in rs.SMOKE_ARMS]
    commit = git_commit() or "unknown"  # the code the runs execute
    jobs = [(a, alloc) for alloc in ALLOCATORS for a in arms]
    out.mkdir(parents=True, exist_ok=True)
    results, running = [], []
    base = [sys.executable, str(Path(__file__).resolve()), "--seed", str(args.seed), "--budget", str(budget),
            "--test-size", str(args.test_size), "--out", str(out)] + (["--smoke"] if args.smoke else [])
    for k, (arm, alloc) in enumerate(jobs):
        while len(running) >= max(1, args.workers):
            running = _reap(running, results)
            time.sleep(1)
        dest = out / f"job{k}.json"
        dest.unlink(missing_ok=True)
        env = {**os.environ, **ALLOCATORS[alloc], "OMP_NUM_THREADS": "1"}
        print(f"start {arm} ({alloc})", flush=True)
        running.append(((arm, alloc), subprocess.Popen(base + ["--child", arm, alloc, str(dest)], env=env), dest))
    for j, p, d in running:
        results.append((j, p.wait(), d))
    failed = [j for j, rc, _ in results if rc != 0]
    if failed:
        print(f"rss_by_phase: failed runs {failed}", file=sys.stderr)
        return 1
    runs = [json.loads(d.read_text()) for _, _, d in sorted(results, key=lambda r: jobs.index(r[0]))]
    from gvm_mini.demo.report import machine

    res = {"command": ("python bench/rss_by_phase.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
           "commit": commit, "machine": machine(), "seed": args.seed, "budget_tokens": budget, "test_size": args.test_size, "runs": runs}
    dest = out if args.smoke else ROOT / "bench" / "results"
    from gvm_mini.atomic import atomic_write_text

    atomic_write_text(dest / "rss_by_phase.json", json.dumps(res, indent=1))
    atomic_write_text(dest / "rss_by_phase.md", table(res))
    print(table(res))
    return 0


def passes(args, out: Path) -> int:
    """``--passes``: each pass in a fresh process, one after the other; prints and stores the ratios."""
    from gvm_mini.atomic import atomic_write_text
    from gvm_mini.demo.report import machine

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in ("gradnorm", "update"):
        dest = out / f"pass-{kind}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rows", str(args.rows), "--tokens", str(args.tokens),
               "--child-pass", kind, str(dest)]
        if subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode:
            print(f"rss_by_phase: the {kind} pass failed", file=sys.stderr)
            return 1
        rows.append(json.loads(dest.read_text()))
    g, u = rows
    res = {"command": "python bench/rss_by_phase.py --passes", "commit": git_commit() or "unknown", "machine": machine(), "passes": rows,
           "gradnorm_over_update": g["peak_mib"] / u["peak_mib"],
           "gradnorm_over_plan": g["peak_mib"] / g["planned_mib"], "update_over_plan": u["peak_mib"] / u["planned_mib"]}
    lines = [f"{r['pass']:8s} {r['rows']} x {r['tokens']} tokens: weights + live tensors {r['peak_mib']:,.0f} MiB, planned "
             f"{r['planned_mib']:,.0f} MiB (measured / planned {r['peak_mib'] / r['planned_mib']:.2f}); process peak RSS "
             f"{r['rss_peak_mib']:,.0f} MiB" for r in rows]
    lines.append(f"gradient-norm pass / update pass: {res['gradnorm_over_update']:.2f}")
    print("\n".join(lines))
    if not args.smoke:
        atomic_write_text(ROOT / "bench" / "results" / "rss_passes.json", json.dumps(res, indent=1))
    return 0


def table(res: dict) -> str:
    from gvm_mini.rundir import PHASES

    phases = [p for p in PHASES if any(p in r["phases"] for r in res["runs"])]
    md = [f"# Peak RSS by phase (MiB), seed {res['seed']}, {res['budget_tokens']:,} generated tokens per run", "",
          f"`{res['command']}` at commit {res.get('commit', '?')} on {res['machine']}. Each cell: the largest peak over the phase's calls (median in brackets).",
          "", "| arm | allocator | model built | " + " | ".join(phases) + " | run peak | iterations |",
          "|---|---|---|" + "---|" * len(phases) + "---|---|"]
    for r in res["runs"]:
        cells = [f"{r['phases'][p]['peak_mib']:,.0f} ({r['phases'][p]['median_mib']:,.0f})" if p in r["phases"] else "—"
                 for p in phases]
        md.append(f"| {r['arm']} | {r['allocator']} | {r['built_mib']:,.0f} | " + " | ".join(cells)
                  + f" | {r['peak_mib']:,.0f} | {r['iterations']} |")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
