"""Command line: ``python -m gvm_mini {demo,train,eval,allocate,plot} ...`` (``--help`` on each).

Errors a user can cause (config, data, paths, missing extras) print one line and exit with code 2
before anything expensive starts; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and the parser of each subcommand (whose usage a malformed argument names)."""
    ap = argparse.ArgumentParser(
        prog="python -m gvm_mini",
        description="GVM-RAFT (arXiv 2505.02391): variance-minimising per-prompt sample budgets for RAFT, RAFT++ and GRPO.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the CPU demo: GVM against uniform budgets, with plots and a table")
    d.add_argument("--out", default=None, help="output directory (default: runs/demo, --quick: runs/demo-quick)")
    d.add_argument("--quick", action="store_true", help="one seed, 50k tokens per run (about a minute on 2 cores)")
    d.add_argument("--task", default="rules", choices=["rules", "chains"],
                   help="rules (default): families of prompts, each with its own correct procedure; "
                        "chains: the previous demo, the counter-example where GVM does not help")
    d.add_argument("--seeds", default=None, metavar="N", help="number of seeds, a positive integer (default: 3, quick: 1)")
    _add_common(d)

    t = sub.add_parser("train", help="run EM iterations from a YAML config")
    t.add_argument("--config", required=False, help="YAML config file (see configs/)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set learning_rate=1e-5")
    t.add_argument("--out", required=True, help="run directory (config.yaml, metrics.jsonl, allocations.jsonl, checkpoint/)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed iteration")
    t.add_argument("--dry-run", action="store_true", help="resolve the config, build the model and print the plan; no training")
    _add_common(t)

    e = sub.add_parser("eval", help="Average@k and pass@k of a model on a dataset")
    e.add_argument("--config", help="take model, prompt template and sampling settings from this YAML")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--adapter", help="a LoRA adapter directory (e.g. RUN/adapter) to load on the model")
    e.add_argument("--dataset", help="arithmetic | champ | jsonl:PATH | hub:NAME (default: the config's eval split)")
    e.add_argument("--k", type=int, default=None, help="samples per problem (default: eval_samples)")
    e.add_argument("--out", help="write the result as JSON here")
    _add_common(e)

    a = sub.add_parser("allocate", help="pilot statistics + Proposition-1 allocation for a prompt set, exported for verl")
    a.add_argument("--config", help="YAML config (model, dataset, num_pilot, samples_per_prompt, alpha, beta, gradnorm_params)")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--out", required=True, help="directory for sample_sizes_*.json and pilot_stats.jsonl")
    a.add_argument("--limit", type=int, default=None, help="only the first N training prompts")
    _add_common(a)

    p = sub.add_parser("plot", help="plot accuracy curves of run directories")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--x", default="tokens", choices=["tokens", "samples", "steps", "updates", "wall"])
    p.add_argument("--metric", default="avg_at_k")
    p.add_argument("--out", default="runs/curves.png", help="PNG file (default: runs/curves.png)")
    p.add_argument("--allocation", action="store_true", help="also plot n_i vs p_i for each run (RUN/allocation.png)")
    _add_common(p)
    return ap, {"demo": d, "train": t, "eval": e, "allocate": a, "plot": p}


def _cmd_train(args) -> int:
    from .config import load_config, rule_summary

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from .plan import print_plan

        print(rule_summary(cfg))  # the rule as resolved (a real run writes it to RUN/config.yaml)
        print_plan(cfg)
        return 0
    from .em import run

    state = run(cfg, Path(args.out), resume=args.resume)
    print(f"done: {state.iteration} iterations, {state.global_step} M-steps, {state.tokens} generated tokens "
          f"({state.pilot_tokens} in pilots) -> {args.out}")
    for line in _run_notes(cfg, Path(args.out)):
        print(line)
    return 0


def _run_notes(cfg, out: Path) -> list[str]:
    """Plain-words notes on a finished run: a random-weight built-in model (it learns nothing), and
    iterations where every pilot failed so the budget was spread uniformly (Proposition 1 has no
    weights when every p_i is 0)."""
    from .models import BUILTIN_NAMES
    from .plots import read_jsonl

    notes = []
    recs = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
    its = [r for r in recs if r.get("kind") == "iteration"]
    fell_back = sum(bool(r.get("fallback_uniform")) for r in its)
    if cfg.model in BUILTIN_NAMES and cfg.model != "smollm2" and not cfg.init_from:
        notes.append(f"note: {cfg.model} has random weights, so it learns nothing here (accuracy stays at chance); "
                     "it exercises the pipeline only. For learning curves run `python -m gvm_mini demo`.")
    if fell_back:
        notes.append(f"note: the uniform fallback was used in {fell_back} of {len(its)} iterations: every pilot sample "
                     "was wrong (all p_i = 0), so Proposition 1 had no weights and the budget was spread evenly.")
    return notes


def _cmd_eval(args) -> int:
    from .config import load_config
    from .config import replace as cfg_replace
    from .em import build_policy, load_problems, prompt_texts
    from .evaluate import evaluate_policy
    from .rewards import get_verifier

    cfg = load_config(args.config, args.overrides)
    if args.dataset:
        cfg = cfg_replace(cfg, eval_dataset=args.dataset if args.dataset != "arithmetic" else None)
    if args.adapter and not Path(args.adapter).is_dir():
        from .config import ConfigError

        raise ConfigError(f"adapter directory not found: {args.adapter}")
    if args.adapter and not (Path(args.adapter) / "adapter_model.safetensors").is_file():
        from .config import ConfigError

        raise ConfigError(f"{args.adapter} has no adapter_model.safetensors; gvm-mini loads adapters only from "
                          "safetensors (an adapter_model.bin is a pickle, which can run code)")
    _, test = load_problems(cfg)
    if not test:
        from .config import ConfigError

        raise ConfigError("the evaluation set is empty")
    model, tokenizer = build_policy(cfg_replace(cfg, lora=False))
    if args.adapter:
        from peft import PeftModel

        from .models import quiet_loading

        with quiet_loading():
            model = PeftModel.from_pretrained(model, args.adapter)
    res = evaluate_policy(
        model, tokenizer, prompt_texts(cfg, tokenizer, test), [p.answer for p in test], get_verifier(cfg.verifier),
        k=args.k or cfg.eval_samples, temperature=cfg.eval_temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_completion_length, batch_size=cfg.sample_batch_size, seed=cfg.seed, progress=cfg.progress,
    )
    print(json.dumps(res, indent=1))
    if args.out:
        from .rundir import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(res, indent=1))
    return 0


def _cmd_plot(args) -> int:
    from .config import ConfigError
    from .plots import plot_allocation, plot_runs

    for r in args.runs:
        if not (Path(r) / "metrics.jsonl").is_file():
            raise ConfigError(f"{r} is not a run directory (no metrics.jsonl)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot_runs(args.runs, args.out, x=args.x, metric=args.metric)
    print(f"wrote {args.out}")
    if args.allocation:
        for r in args.runs:
            if (Path(r) / "allocations.jsonl").is_file():
                print(f"wrote {plot_allocation(r, Path(r) / 'allocation.png')}")
    return 0


def _cmd_allocate(args) -> int:
    from .config import ConfigError, load_config
    from .em import build_policy, check_model_request, load_problems, phase_seed, seed_all
    from .verl_export import allocate_prompt_set, write_sample_sizes

    cfg = load_config(args.config, args.overrides)
    if cfg.allocation == "uniform":
        raise ConfigError("allocate: allocation=uniform needs no pilot statistics; choose gvm or another rule")
    check_model_request(cfg)
    train, _ = load_problems(cfg)
    if args.limit is not None:
        train = train[: args.limit]
    seed_all(phase_seed(cfg.seed, "init"))  # as train does before building the policy
    model, tokenizer = build_policy(cfg)
    result = allocate_prompt_set(cfg, model, tokenizer, train)
    rows = [q.meta["index"] for q in train] if all("index" in q.meta for q in train) else None
    print(json.dumps(write_sample_sizes(cfg, result, args.out, rows=rows), indent=1))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    seeds = None
    if args.seeds is not None:
        try:
            seeds = int(args.seeds)
        except ValueError:
            seeds = 0
        if seeds < 1:
            from .config import ConfigError

            raise ConfigError(f"--seeds must be a positive integer, got {args.seeds!r}")
    suffix = "" if args.task == "rules" else f"-{args.task}"
    out = args.out or (f"runs/demo{suffix}-quick" if args.quick else f"runs/demo{suffix}")
    run_demo(Path(out), quick=args.quick, seeds=seeds, task=args.task)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap, subs = _parser()
    args, extra = ap.parse_known_args(argv)
    if extra:  # e.g. `--set learning_rate 1e-4`: name the subcommand's usage, not the top-level one
        sets = getattr(args, "overrides", None) or []
        hint = ""
        if sets and "=" not in sets[-1]:
            hint = f"; --set takes key=value in one word: --set {sets[-1]}={extra[0]}"
        subs[args.command].error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    handlers = {"train": _cmd_train, "eval": _cmd_eval, "plot": _cmd_plot, "demo": _cmd_demo, "allocate": _cmd_allocate}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; the last completed iteration is checkpointed (use --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # one line for user errors, a traceback only with --debug
        from .config import ConfigError

        if args.debug:
            raise
        user_error = isinstance(e, (ConfigError, FileNotFoundError, ImportError, ValueError, RuntimeError, TypeError))
        print(f"error: {e}" if user_error else f"error ({type(e).__name__}): {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
