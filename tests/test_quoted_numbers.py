"""One source per number: the headline numbers quoted in README.md, docs/*.md, bench/README.md, theory/*.md and
the notebooks' markdown cells, each checked against the results file that produced it.

A quote is (document, text, source, value, places). ``text`` is copied from the document with the quoted
number in braces, e.g. ``"uniform RAFT++ 0.229 → {0.532}"``; the document must contain the text without the
braces (whitespace, including line breaks, compared as single spaces), and the number must equal
``value(<loaded source>)`` to the printed precision: |quoted - source| <= half a unit of its last printed
digit (``places`` decimals). ``{not reached}`` instead of a number means the source holds null there.

A number printed with a minus sign is read without it (``-0.120`` quotes 0.120): a row's value function gives
the number as printed, so a paired difference printed negative is ``_neg``-ed (``signed`` does that for a table
row from the document's own signs) and a wrong sign no longer matches.

Adding a results file is one line in SOURCES; its quotes are rows of QUOTES. Not here on purpose:
bench/results/realmodel_curve.* (being rewritten), and with it allocation_study.json's ``smollm2`` task.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _json(rel: str) -> Any:
    return json.loads((ROOT / rel).read_text(encoding="utf-8"))


def _jsonl(rel: str) -> list:
    return [json.loads(line) for line in (ROOT / rel).read_text(encoding="utf-8").splitlines() if line.strip()]


#: source name -> loader of the results file that produced the numbers (one line per file)
SOURCES: dict[str, Callable[[], Any]] = {
    "demo": lambda: _json("docs/demo/summary.json"),  # python -m gvm_mini demo: rules task, 3 seeds
    "chains": lambda: _json("docs/demo/chains/summary.json"),  # python -m gvm_mini demo --task chains, 3 seeds
    "lab": lambda: _json("bench/results/allocation_lab.json"),  # python bench/allocation_lab.py, 2 seeds
    "regime_map": lambda: _json("bench/results/regime_map.json"),  # python bench/regime_map.py --seeds 24
    "regime_cells": lambda: _jsonl("bench/results/regime_map_cells.jsonl"),  # --cell ... --seeds 96
    "vs_trl": lambda: _jsonl("bench/results/vs_trl.jsonl"),  # python bench/vs_trl.py ...
    "qlora": lambda: _jsonl("bench/results/qlora_footprint.jsonl"),  # shape_twin_memory.py --qlora-footprint
    "memcheck": lambda: _json("bench/results/gpu_memory_check.json"),  # python bench/memory_check.py
    # the first study (commit 0f3e706 ...): every rule against token-mean uniform, gvm_robust's estimates before the fix
    "study": lambda: _json("bench/results/allocation_study_v1.json"),
    # the study with one-factor pairs and the corrected gvm_robust: python bench/allocation_study.py
    "study2": lambda: _json("bench/results/allocation_study.json"),
    "weighting": lambda: _json("bench/results/weighting_variance.json"),  # python bench/weighting_variance.py
    "tuning": lambda: _json("bench/results/allocation_study_tuning.json"),  # allocation_study.py --tune
    "map": lambda: _json("bench/results/allocation_map.json"),  # allocation_study.py --map
    "paper": lambda: _json("bench/results/paper_updates.json"),  # allocation_study.py --paper
    "ablation": lambda: _json("bench/results/allocation_ablation.json"),  # allocation_study.py --ablate
    "demo_isa": lambda: _json("bench/results/demo_isa.json"),  # python bench/demo_isa.py --native runs/demo
    "realmodel": lambda: _json("bench/results/realmodel_curve.json"),  # python bench/realmodel_curve.py --workers 1
    "rmstudy": lambda: _json("bench/results/realmodel_study.json"),  # python bench/realmodel_study.py --workers 2
    "rss": lambda: _json("bench/results/rss_by_phase.json"),  # python bench/rss_by_phase.py
    "rss_v1": lambda: _json("bench/results/rss_by_phase_v1.json"),  # the same at 274e405, before the in-backward ghost norms
    "passes": lambda: _json("bench/results/rss_passes.json"),  # python bench/rss_by_phase.py --passes
    "passes_v1": lambda: _json("bench/results/rss_passes_v1.json"),  # the same at c3400e6
    # python bench/backend_training.py --seeds 3 --iterations 2 --test 16 --k 4 (the last record)
    "backend": lambda: _jsonl("bench/results/backend_training.jsonl")[-1],
}


@lru_cache(maxsize=None)
def load_source(name: str) -> Any:
    return SOURCES[name]()


@dataclass(frozen=True)
class Quote:
    doc: str  # path relative to the repository root
    text: str  # as in the document, with the quoted number in braces
    source: str  # key of SOURCES
    value: Callable[[Any], Any]  # loaded source -> the number in the document's units (None: "not reached")
    places: int  # decimals printed

    @property
    def number(self) -> str:
        return re.search(r"\{([^}]*)\}", self.text).group(1)

    @property
    def plain(self) -> str:
        return self.text.replace("{", "", 1).replace("}", "", 1)


NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def parse_number(s: str) -> tuple[float, int]:
    """'151,543' -> (151543.0, 0); '0.526' -> (0.526, 3)."""
    assert NUMBER.fullmatch(s), f"not a plain number: {s!r}"
    return float(s.replace(",", "")), len(s.split(".")[1]) if "." in s else 0


# ---------------------------------------------------------------------------------------- documents

def _norm(s: str) -> str:
    return " ".join(s.split())


@lru_cache(maxsize=None)
def document(rel: str) -> str:
    """The document's text; for a notebook, its markdown cells only."""
    path = ROOT / rel
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def check(quote: Quote, text: str | None = None) -> None:
    """Raise AssertionError unless ``text`` (default: the document) quotes the source's number correctly."""
    text = document(quote.doc) if text is None else text
    assert quote.text.count("{") == 1 and quote.text.count("}") == 1, f"one braced number per quote: {quote.text!r}"
    assert _norm(quote.plain) in _norm(text), f"{quote.doc}: quoted text not found: {quote.plain!r}"
    got = quote.value(load_source(quote.source))
    if quote.number == "not reached":
        assert got is None, f"{quote.doc}: 'not reached' but {quote.source} has {got!r}: {quote.plain!r}"
        return
    quoted, places = parse_number(quote.number)
    assert places == quote.places, f"{quote.doc}: {quote.number!r} has {places} decimals, the table says {quote.places}"
    assert got is not None, f"{quote.doc}: {quote.source} has no value for {quote.plain!r}"
    assert abs(quoted - got) <= 0.5 * 10 ** -places + 1e-9, (
        f"{quote.doc}: quotes {quote.number} but {quote.source} gives {got!r} "
        f"(rounded to {places} decimals: {got:.{places}f}) in {quote.plain!r}")


# ----------------------------------------------------------------------------------------- accessors

def arm(name: str, key: str, scale: float = 1.0) -> Callable:
    """methods[name][key] of a demo-style summary (docs/demo/summary.json, allocation_lab.json)."""
    def get(d):
        v = d["methods"][name].get(key)
        return None if v is None else v * scale
    return get


def fam(name: str, family: str, key: str = "final_by_family") -> Callable:
    return lambda d: d["methods"][name][key][family]


def summary_cols(name: str) -> list:
    """The columns of the demo's (and the allocation lab's) main table, after the method's name."""
    return [arm(name, "start_acc"),
            (arm(name, "final_acc_mean"), arm(name, "final_acc_std")),
            (arm(name, "acc_at_equal_m_steps_mean"), arm(name, "acc_at_equal_m_steps_std")),
            (arm(name, "tokens"), arm(name, "pilot_tokens")),
            arm(name, "m_steps"),
            (arm(name, "tokens_to_baseline_final"), arm(name, "tokens_ratio_vs_baseline")),
            (arm(name, "m_steps_to_baseline_final"), arm(name, "m_steps_ratio_vs_baseline")),
            arm(name, "gvm_stage_share_of_train_wall", 100)]


def family_cols(name: str, with_n: bool) -> list:
    """The per-family table of docs/demo.md: final accuracy [mean n_i]."""
    fs = "ABCDEFGH"
    if not with_n:
        return [fam(name, f) for f in fs]
    return [(fam(name, f), fam(name, f, "mean_n_by_family")) for f in fs]


def cell(spread: str, step: float, budget: int, variant: str, key: str, scale: float = 1.0) -> Callable:
    """A cell of regime_map.json; ``variant`` 'gvm' (exact p, G), 'gvm_pilot' or '' (the cell itself)."""
    def get(d):
        (c,) = [c for c in d["cells"] if (c["spread"], c["step"], c["budget_per_prompt"]) == (spread, step, budget)]
        c = c[variant] if variant else c
        if key == "error_ratio":  # (Ω + Σ bias²) / Ω_uniform, as bench/regime_map.py prints it
            return c["omega_ratio"] + c["bias_sq_over_omega_uniform"]
        v = c[key]
        return [x * scale for x in v] if isinstance(v, list) else v * scale
    return get


def cells(pred: Callable[[dict], bool], variant: str, key: str, agg: Callable) -> Callable:
    """agg over the regime map's cells that satisfy pred (e.g. the largest speed-up inside the range)."""
    return lambda d: agg([(c[variant] if variant else c)[key] for c in d["cells"] if pred(c)])


def cell96(spread: str, step: float, budget: int, variant: str, key: str, index: int | None = None,
           scale: float = 1.0) -> Callable:
    """A re-measured cell of regime_map_cells.jsonl (the last record for it)."""
    def get(records):
        c = [r for r in records if (r["spread"], r["step"], r["budget_per_prompt"]) == (spread, step, budget)][-1]
        v = (c[variant] if variant else c)[key]
        return (v[index] if index is not None else v) * scale
    return get


def trl_record(command: str) -> Callable:
    """The one record of vs_trl.jsonl made by ``command`` (prefix match)."""
    def get(records):
        (r,) = [r for r in records if r["command"].startswith(command)]
        return r
    return get


def trl(command: str, fn: Callable) -> Callable:
    return lambda records: fn(trl_record(command)(records))


def per_1k(side: str, what: str) -> Callable:
    """Seconds per 1k generated tokens of one side of a vs_trl record: generation, reward+update, or all."""
    def get(r):
        s = r[side]
        t = {"generation": s["generation_wall"], "reward+update": s["wall"] - s["generation_wall"], "all": s["wall"]}
        return 1000 * t[what] / s["tokens"]
    return get


def ratio(fn: Callable) -> Callable:
    """TRL / gvm-mini of a per-side quantity fn(r, side)."""
    return lambda r: fn(r, "trl") / fn(r, "gvm")


def row(doc: str, text: str, source: str, cols: list, labels: int = 1) -> list[Quote]:
    """Quotes for one Markdown table row: ``cols`` lists, per cell after the ``labels`` label cells, a value
    function (one number), a tuple of them (the cell's numbers in order; None skips one) or None (skip the
    cell). A cell without a number ("not reached") expects None from its first function."""
    bars = [i for i, ch in enumerate(text) if ch == "|"]
    out = []
    for k, spec in enumerate(cols):
        lo, hi = bars[labels + k] + 1, bars[labels + k + 1]
        if spec is None:
            continue
        fns = spec if isinstance(spec, tuple) else (spec,)
        toks = list(NUMBER.finditer(text, lo, hi))
        if not toks:
            word = text[lo:hi].strip()
            assert word == "not reached", f"no number in cell {word!r} of {text!r}"
            a, b = text.index(word, lo), text.index(word, lo) + len(word)
            out.append(Quote(doc, text[:a] + "{" + word + "}" + text[b:], source, fns[0], 0))
            continue
        assert len(toks) <= len(fns), f"cell {text[lo:hi]!r}: {len(toks)} numbers, {len(fns)} functions"
        for m, fn in zip(toks, fns):
            if fn is not None:
                marked = text[:m.start()] + "{" + m.group() + "}" + text[m.end():]
                out.append(Quote(doc, marked, source, fn, parse_number(m.group())[1]))
    assert len(bars) == labels + len(cols) + 1, f"{len(bars) - 1} cells, {labels} labels + {len(cols)} specs: {text!r}"
    return out


def q(doc: str, text: str, source: str, value: Callable, places: int) -> list[Quote]:
    return [Quote(doc, text, source, value, places)]


def _neg(fn: Callable) -> Callable:  # a number printed after a minus sign
    return lambda d: -fn(d)


def signed(text: str, cols: list, labels: int = 1) -> list:
    """``cols`` for row(text, ...) with each cell's first function negated where the document prints the cell
    with a minus sign (the sign is part of the quote: a sign flipped in the document or the source fails)."""
    cells = [c.strip() for c in text.split("|")[1 + labels:-1]]
    out = []
    for c, spec in zip(cells, cols):
        if spec is not None and c.startswith(("-", "−")):
            fns = spec if isinstance(spec, tuple) else (spec,)
            spec = (_neg(fns[0]), *fns[1:])
        out.append(spec)
    return out


def study(task: str, alg: str, rule: str, key: str, scale: float = 1.0) -> Callable:
    """tasks[task].by_algorithm[alg][rule][key] of allocation_study.json (and of --tune's, --ablate's files)."""
    def get(d):
        v = d["tasks"][task]["by_algorithm"][alg][rule][key]
        return None if v is None else v * scale
    return get


def studies(tasks: tuple, rule: str, key: str, agg: Callable, scale: float = 1.0) -> Callable:
    """agg of one rule's key over the named tasks' algorithms (e.g. the pilot's largest share of the tokens)."""
    return lambda d: agg(r[rule][key] for t in tasks for r in d["tasks"][t]["by_algorithm"].values()) * scale


def paper(alg: str, arm_: str, key: str) -> Callable:
    """summary.by_algorithm[alg][arm_][key] of paper_updates.json."""
    return lambda d: d["summary"]["by_algorithm"][alg][arm_][key]


def amap(cell_: str, rule: str, key: str) -> Callable:
    """cells[cell_][rule][key] of allocation_map.json."""
    return lambda d: d["cells"][cell_][rule][key]


# --------------------------------------------------------------------------------------------- quotes

R, DEMO, BENCH, GPU = "README.md", "docs/demo.md", "bench/README.md", "docs/gpu.md"
NB01, NB02, NB03 = "notebooks/01_allocation.ipynb", "notebooks/02_synthetic_em.ipynb", "notebooks/03_tiny_lm.ipynb"
NB04 = "notebooks/04_single_gpu.ipynb"
THEORY_ROBUST = "theory/gvm_robust.md"

DEMO_ROWS = {  # the demo's main table, in README.md and docs/demo.md
    "RAFT++": "| RAFT++ | 0.229 | 0.542 ± 0.003 | 0.478 ± 0.033 | 151,553 (0) | 34.0 | 150,000 | 34.0 | 0.1% |",
    "GVM-RAFT++": "| GVM-RAFT++ | 0.229 | 0.426 ± 0.028 | 0.423 ± 0.029 | 153,879 (52,578) | 23.4 | not reached | not reached | 30.3% |",
    "Filter-RAFT++": "| Filter-RAFT++ | 0.229 | 0.414 ± 0.007 | 0.415 ± 0.003 | 150,787 (52,578) | 22.9 | not reached | not reached | 29.0% |",
    "Robust-RAFT++": "| Robust-RAFT++ | 0.229 | 0.481 ± 0.014 | 0.483 ± 0.017 | 153,627 (20,612) | 33.2 | not reached | not reached | 11.4% |",
    "GRPO": "| GRPO | 0.229 | 0.484 ± 0.012 | 0.435 ± 0.016 | 153,934 (0) | 34.1 | 150,000 | 34.6 | 0.1% |",
    "GVM-GRPO": "| GVM-GRPO | 0.229 | 0.439 ± 0.024 | 0.439 ± 0.024 | 152,988 (52,594) | 23.0 | not reached | not reached | 24.6% |",
    "Filter-GRPO": "| Filter-GRPO | 0.229 | 0.420 ± 0.012 | 0.419 ± 0.013 | 151,374 (52,476) | 22.8 | not reached | not reached | 25.7% |",
    "Robust-GRPO": "| Robust-GRPO | 0.229 | 0.477 ± 0.004 | 0.422 ± 0.027 | 152,089 (20,598) | 33.5 | not reached | not reached | 8.5% |",
    "Prompt-RAFT++": "| Prompt-RAFT++ | 0.229 | 0.513 ± 0.008 | 0.493 ± 0.012 | 150,693 (0) | 33.8 | not reached | not reached | 0.1% |",
    "Prompt-GRPO": "| Prompt-GRPO | 0.229 | 0.484 ± 0.012 | 0.435 ± 0.016 | 153,934 (0) | 34.1 | 150,000 (1.00x) | 34.6 (1.00x) | 0.1% |",
}

FAMILY_ROWS = {  # docs/demo.md, per family at equal tokens [mean n_i]
    "RAFT++": "| RAFT++ | 0.87 | 0.66 | 0.22 | 0.91 | 0.85 | 0.81 | 0.02 | 0.00 |",
    "GVM-RAFT++": "| GVM-RAFT++ | 0.79 [5.1] | 0.58 [9.4] | 0.25 [18.5] | 0.83 [8.0] | 0.20 [9.7] | 0.74 [12.1] | 0.02 [1.4] | 0.00 [0.0] |",
    "Filter-RAFT++": "| Filter-RAFT++ | 0.72 [8.1] | 0.57 [12.8] | 0.29 [13.5] | 0.88 [12.7] | 0.08 [5.7] | 0.75 [11.1] | 0.02 [0.4] | 0.00 [0.0] |",
    "Robust-RAFT++": "| Robust-RAFT++ | 0.82 [2.7] | 0.48 [4.4] | 0.27 [10.5] | 0.85 [6.6] | 0.62 [8.6] | 0.73 [7.5] | 0.06 [12.0] | 0.00 [11.8] |",
    "GRPO": "| GRPO | 0.81 | 0.61 | 0.24 | 0.87 | 0.57 | 0.75 | 0.01 | 0.01 |",
    "GVM-GRPO": "| GVM-GRPO | 0.76 [5.3] | 0.54 [10.0] | 0.24 [16.0] | 0.81 [9.7] | 0.43 [10.7] | 0.71 [11.0] | 0.01 [1.3] | 0.00 [0.3] |",
    "Filter-GRPO": "| Filter-GRPO | 0.78 [8.9] | 0.60 [12.7] | 0.25 [11.1] | 0.82 [12.9] | 0.13 [6.9] | 0.76 [11.5] | 0.02 [0.3] | 0.00 [0.0] |",
    "Robust-GRPO": "| Robust-GRPO | 0.75 [3.2] | 0.60 [4.8] | 0.26 [10.0] | 0.84 [6.0] | 0.63 [9.7] | 0.73 [7.8] | 0.02 [11.4] | 0.00 [11.3] |",
    "Prompt-RAFT++": "| Prompt-RAFT++ | 0.83 | 0.59 | 0.24 | 0.87 | 0.78 | 0.78 | 0.02 | 0.00 |",
    "Prompt-GRPO": "| Prompt-GRPO | 0.81 | 0.61 | 0.24 | 0.87 | 0.57 | 0.75 | 0.01 | 0.01 |",
}

LAB_ROWS = {  # bench/README.md, the allocation lab's table
    "uniform": "| uniform | 0.230 | 0.525 ± 0.015 | 0.469 ± 0.040 | 152,256 (0) | 34.0 | 131,910 | 29.9 | 0.1% |",
    "uniform+prompt": "| uniform+prompt | 0.230 | 0.514 ± 0.004 | 0.480 ± 0.015 | 150,512 (0) | 33.9 | 137,940 | 31.3 | 0.1% |",
    "GVM-paper": "| GVM-paper | 0.230 | 0.398 ± 0.000 | 0.364 ± 0.006 | 153,629 (52,538) | 23.4 | not reached | not reached | 23.6% |",
    "GVM-paper+history": "| GVM-paper+history | 0.230 | 0.491 ± 0.001 | 0.453 ± 0.022 | 151,098 (32,671) | 27.3 | not reached | not reached | 15.1% |",
    "GVM-paper+reuse": "| GVM-paper+reuse | 0.230 | 0.493 ± 0.005 | 0.453 ± 0.010 | 152,660 (63,790) | 28.1 | not reached | not reached | 25.5% |",
    "GVM-paper+prompt": "| GVM-paper+prompt | 0.230 | 0.484 ± 0.012 | 0.484 ± 0.009 | 153,781 (52,984) | 23.0 | not reached | not reached | 23.9% |",
    "GVM-bayes": "| GVM-bayes | 0.230 | 0.457 ± 0.015 | 0.456 ± 0.025 | 153,824 (52,914) | 22.6 | not reached | not reached | 23.6% |",
    "GVM-bayes+history": "| GVM-bayes+history | 0.230 | 0.508 ± 0.034 | 0.488 ± 0.009 | 150,406 (25,849) | 27.9 | not reached | not reached | 10.9% |",
    "GVM-bayes+reuse": "| GVM-bayes+reuse | 0.230 | 0.506 ± 0.007 | 0.465 ± 0.035 | 150,540 (70,615) | 30.9 | not reached | not reached | 25.4% |",
    "GVM-bayes+prompt": "| GVM-bayes+prompt | 0.230 | 0.473 ± 0.028 | 0.468 ± 0.028 | 154,516 (53,093) | 22.5 | not reached | not reached | 23.4% |",
    "GVM-tokens": "| GVM-tokens | 0.230 | 0.456 ± 0.012 | 0.458 ± 0.015 | 154,185 (52,592) | 22.6 | not reached | not reached | 23.4% |",
    "GVM-tokens+history": "| GVM-tokens+history | 0.230 | 0.499 ± 0.004 | 0.456 ± 0.016 | 151,649 (33,038) | 26.8 | not reached | not reached | 14.0% |",
    "GVM-tokens+reuse": "| GVM-tokens+reuse | 0.230 | 0.451 ± 0.040 | 0.424 ± 0.033 | 153,590 (61,461) | 27.4 | not reached | not reached | 24.2% |",
    "GVM-tokens+prompt": "| GVM-tokens+prompt | 0.230 | 0.498 ± 0.005 | 0.494 ± 0.010 | 153,664 (52,752) | 22.6 | not reached | not reached | 24.3% |",
    "Knapsack": "| Knapsack | 0.230 | 0.464 ± 0.010 | 0.464 ± 0.010 | 155,642 (52,891) | 22.4 | not reached | not reached | 23.3% |",
    "Knapsack+history": "| Knapsack+history | 0.230 | 0.536 ± 0.001 | 0.508 ± 0.010 | 151,548 (28,020) | 27.7 | 141,709 (0.93x) | 26.0 (1.15x) | 12.5% |",
    "Knapsack+reuse": "| Knapsack+reuse | 0.230 | 0.531 ± 0.000 | 0.485 ± 0.004 | 154,570 (70,607) | 30.4 | 144,724 (0.91x) | 29.4 (1.02x) | 25.4% |",
    "Knapsack+prompt": "| Knapsack+prompt | 0.230 | 0.469 ± 0.008 | 0.469 ± 0.007 | 156,090 (53,078) | 22.3 | not reached | not reached | 23.2% |",
    "Filter": "| Filter | 0.230 | 0.442 ± 0.021 | 0.436 ± 0.016 | 151,562 (52,602) | 22.8 | not reached | not reached | 24.4% |",
    "Filter+history": "| Filter+history | 0.230 | 0.492 ± 0.037 | 0.449 ± 0.047 | 151,650 (20,442) | 29.6 | not reached | not reached | 9.2% |",
    "Filter+reuse": "| Filter+reuse | 0.230 | 0.484 ± 0.002 | 0.470 ± 0.017 | 153,842 (61,521) | 26.5 | not reached | not reached | 26.9% |",
    "Filter+prompt": "| Filter+prompt | 0.230 | 0.512 ± 0.012 | 0.511 ± 0.011 | 152,754 (52,882) | 22.7 | not reached | not reached | 25.3% |",
    "uniform-small": "| uniform-small | 0.230 | 0.525 ± 0.026 | 0.491 ± 0.026 | 150,816 (0) | 33.8 | 150,000 | 33.8 | 0.1% |",
    "GVM-bayes+history-small": "| GVM-bayes+history-small | 0.230 | 0.510 ± 0.013 | 0.473 ± 0.005 | 151,662 (15,152) | 30.2 | not reached | not reached | 8.6% |",
    "GVM-tokens+history-small": "| GVM-tokens+history-small | 0.230 | 0.423 ± 0.012 | 0.424 ± 0.022 | 152,691 (24,747) | 28.4 | not reached | not reached | 11.6% |",
    "Knapsack+history-small": "| Knapsack+history-small | 0.230 | 0.503 ± 0.027 | 0.502 ± 0.012 | 153,314 (20,352) | 29.3 | not reached | not reached | 11.3% |",
}

REGIME_EXACT_ROWS = [  # bench/README.md: speed-up ± s.e. / Ω ratio, exact p, G, 24 seeds
    "| narrow | 0.5γ | 1.00 ± 0.03 / 1.00 | 1.01 ± 0.03 / 0.99 | 0.99 ± 0.02 / 0.98 | 0.99 ± 0.01 / 0.97 | 1.00 ± 0.01 / 0.97 | 1.00 ± 0.01 / 0.97 |",
    "| narrow | 1γ | 1.00 ± 0.06 / 1.00 | 0.96 ± 0.04 / 0.99 | 0.99 ± 0.03 / 0.97 | 1.00 ± 0.02 / 0.97 | 0.99 ± 0.01 / 0.96 | 1.01 ± 0.01 / 0.96 |",
    "| narrow | 4γ * | 1.00 ± 0.22 / 1.00 | 1.13 ± 0.15 / 0.94 | 1.07 ± 0.06 / 0.95 | 1.01 ± 0.05 / 0.94 | 1.04 ± 0.03 / 0.94 | 1.02 ± 0.02 / 0.95 |",
    "| narrow | 16γ * | 1.00 ± 1.04 / 1.00 | 1.74 ± 1.12 / 0.92 | 1.43 ± 0.47 / 0.73 | 1.47 ± 0.27 / 0.91 | 0.84 ± 0.11 / 0.88 | 1.06 ± 0.09 / 0.93 |",
    "| wide | 0.5γ | 1.00 ± 0.34 / 1.00 | 1.21 ± 0.14 / 0.79 | 0.98 ± 0.03 / 0.96 | 0.95 ± 0.03 / 0.91 | 0.99 ± 0.03 / 0.95 | 1.01 ± 0.02 / 0.93 |",
    "| wide | 1γ | 1.00 ± 0.72 / 1.00 | 1.24 ± 0.33 / 0.72 | 1.12 ± 0.10 / 0.82 | 0.96 ± 0.04 / 0.82 | 1.00 ± 0.05 / 0.86 | 1.01 ± 0.02 / 0.89 |",
    "| wide | 4γ * | 1.00 ± 2.67 / 1.00 | 3.36 ± 2.24 / 0.54 | 3.75 ± 1.97 / 0.63 | 1.07 ± 0.27 / 0.86 | 1.26 ± 0.20 / 0.84 | 1.05 ± 0.08 / 0.78 |",
    "| wide | 16γ * | 1.00 ± 7.02 / 1.00 | 1.13 ± 6.24 / 0.54 | <0.43 n.r. / 2.88 | <0.46 n.r. / 0.63 | 1.48 ± 1.07 / 0.87 | 2.09 ± 0.80 / 0.72 |",
]
REGIME_PILOT_ROWS = [  # bench/README.md: speed-up (E-steps) / pilot counted / (Ω + Σbias²) ratio, N' = 8
    "| narrow | 0.5γ | 1.01 / 0.39 / 0.96 | 0.99 / 0.55 / 1.05 | 0.99 / 0.71 / 1.03 | 1.00 / 0.83 / 1.01 | 1.01 / 0.92 / 1.01 | 1.00 / 0.95 / 1.01 |",
    "| narrow | 1γ | 0.97 / 0.37 / 0.93 | 1.00 / 0.56 / 1.06 | 1.02 / 0.73 / 1.03 | 1.02 / 0.85 / 1.01 | 0.99 / 0.90 / 1.02 | 0.99 / 0.95 / 1.01 |",
    "| narrow | 4γ * | 1.23 / 0.47 / 0.89 | 0.95 / 0.53 / 0.99 | 0.92 / 0.66 / 1.03 | 1.00 / 0.84 / 1.01 | 1.05 / 0.95 / 1.01 | 1.01 / 0.96 / 1.01 |",
    "| narrow | 16γ * | 0.95 / 0.37 / 0.79 | 0.94 / 0.52 / 0.84 | 1.41 / 1.01 / 0.83 | 1.23 / 1.02 / 0.98 | 1.03 / 0.94 / 1.03 | 0.97 / 0.92 / 1.05 |",
    "| wide | 0.5γ | 1.07 / 0.41 / 0.10 | 0.75 / 0.42 / 0.14 | 0.63 / 0.45 / 0.18 | 0.60 / 0.50 / 0.22 | 0.61 / 0.56 / 0.31 | 0.60 / 0.57 / 0.49 |",
    "| wide | 1γ | 1.46 / 0.56 / 0.09 | 0.98 / 0.54 / 0.12 | 0.66 / 0.47 / 0.16 | 0.63 / 0.53 / 0.21 | 0.61 / 0.56 / 0.25 | 0.59 / 0.56 / 0.41 |",
    "| wide | 4γ * | 7.39 / 2.84 / 0.08 | 4.00 / 2.22 / 0.09 | 3.65 / 2.61 / 0.11 | 1.20 / 1.00 / 0.16 | 0.77 / 0.70 / 0.19 | 0.62 / 0.59 / 0.26 |",
    "| wide | 16γ * | 1.58 / 0.61 / 0.03 | 4.15 / 2.30 / 0.15 | 2.37 / 1.69 / 0.11 | 4.14 / 3.45 / 0.14 | 1.76 / 1.60 / 0.20 | 1.86 / 1.77 / 0.18 |",
]
REGIME_THEOREM1_ROWS = [  # bench/README.md: Ω/((γ/η)Δ1) for uniform
    "| narrow | 0.5γ | 3.43 | 1.79 | 0.91 | 0.46 | 0.23 | 0.12 |",
    "| narrow | 1γ | 9.14 | 5.33 | 2.74 | 1.42 | 0.72 | 0.36 |",
    "| narrow | 4γ * | 21.53 | 17.53 | 14.12 | 9.73 | 6.24 | 3.47 |",
    "| narrow | 16γ * | 24.26 | 16.72 | 11.75 | 7.12 | 4.61 | 2.83 |",
    "| wide | 0.5γ | 23.13 | 10.13 | 5.61 | 3.02 | 1.54 | 0.79 |",
    "| wide | 1γ | 52.58 | 26.94 | 12.93 | 7.78 | 4.50 | 2.38 |",
    "| wide | 4γ * | 160.86 | 74.84 | 45.87 | 26.45 | 21.04 | 13.01 |",
    "| wide | 16γ * | 1218.85 | 351.69 | 104.58 | 68.82 | 31.44 | 20.09 |",
]
BUDGETS = (1, 2, 4, 8, 16, 32)


def _regime_label(text: str) -> tuple[str, float]:
    spread, eta = [c.strip() for c in text.split("|")[1:3]]
    return spread, float(eta.split("γ")[0])


def _regime_rows() -> list[Quote]:
    out = []
    for text in REGIME_EXACT_ROWS:
        s, e = _regime_label(text)
        specs = []
        for b in BUDGETS:
            reached = "n.r." not in text.split("|")[3 + BUDGETS.index(b)]
            first = cell(s, e, b, "gvm", "speedup" if reached else "speedup_upper_bound")
            specs.append((first, cell(s, e, b, "gvm", "speedup_se"), cell(s, e, b, "gvm", "omega_ratio")) if reached
                         else (first, cell(s, e, b, "gvm", "omega_ratio")))
        out += row(BENCH, text, "regime_map", specs, labels=2)
    for text in REGIME_PILOT_ROWS:
        s, e = _regime_label(text)
        out += row(BENCH, text, "regime_map", [(cell(s, e, b, "gvm_pilot", "speedup"),
                                               cell(s, e, b, "gvm_pilot", "speedup_samples"),
                                               cell(s, e, b, "gvm_pilot", "error_ratio")) for b in BUDGETS], labels=2)
    for text in REGIME_THEOREM1_ROWS:
        s, e = _regime_label(text)
        out += row(BENCH, text, "regime_map", [cell(s, e, b, "", "theorem1_ratio_uniform") for b in BUDGETS], labels=2)
    return out


def _cell96_rows() -> list[Quote]:
    """bench/README.md, 'Best cells, re-measured with 96 seeds'."""
    out = []
    rows = [("| wide, 4γ *, N/m = 4 | GVM exact p, G | 0.60 ± 0.05 | **2.64 ± 1.11** (1.41-4.25) | - | −0.081 ± 0.026 |", "wide", 4.0, 4, "gvm"),
            ("| | GVM pilot N' = 8 | 0.09 ± 0.01 (+ bias) | 3.10 ± 0.84 (1.84-4.00) | **2.22** | −0.082 ± 0.025 |", "wide", 4.0, 4, "gvm_pilot"),
            ("| wide, 4γ *, N/m = 2 | GVM exact p, G | 0.49 ± 0.08 | **2.78 ± 1.43** (1.15-4.84) | - | −0.086 ± 0.041 |", "wide", 4.0, 2, "gvm"),
            ("| | GVM pilot N' = 8 | 0.07 ± 0.01 (+ bias) | 2.99 ± 1.09 (1.74-4.40) | 1.66 | −0.138 ± 0.036 |", "wide", 4.0, 2, "gvm_pilot"),
            ("| wide, 16γ *, N/m = 8 | GVM exact p, G | 0.55 ± 0.15 | 2.41 ± 1.82 (0.00-4.64) | - | −0.018 ± 0.047 |", "wide", 16.0, 8, "gvm"),
            ("| | GVM pilot N' = 8 | 0.08 ± 0.02 (+ bias) | **5.87 ± 1.42** (3.61-7.19) | **4.90** | −0.125 ± 0.035 |", "wide", 16.0, 8, "gvm_pilot"),
            ("| narrow, 16γ *, N/m = 2 | GVM exact p, G | 0.87 ± 0.04 | **2.16 ± 0.74** (1.44-3.28) | - | −0.049 ± 0.019 |", "narrow", 16.0, 2, "gvm"),
            ("| | GVM pilot N' = 8 | 0.84 ± 0.04 | 1.74 ± 0.66 (1.05-2.71) | 0.97 | −0.037 ± 0.023 |", "narrow", 16.0, 2, "gvm_pilot")]
    for text, s, e, b, v in rows:
        c = lambda key, i=None, v=v, s=s, e=e, b=b: cell96(s, e, b, v, key, i)  # noqa: E731
        out += row(BENCH, text, "regime_cells", [
            None,
            (c("omega_ratio"), c("omega_ratio_se")),
            (c("speedup"), c("speedup_se"), c("speedup_p10_p90", 0), c("speedup_p10_p90", 1)),
            c("speedup_samples") if v == "gvm_pilot" else None,
            (_neg(c("final_L_minus_uniform")), c("final_L_minus_uniform_se"))])
    return out


TRL_CHAINS = "vs_trl.py --task chains --model /tmp/e14/cache/demo-policy-40351488342a --steps 20 --repeats 3"
TRL_RULES = "vs_trl.py --task rules --steps 18 --repeats 3"
TRL_RULES16 = "vs_trl.py --task rules --steps 18 --group 16"
TRL_OLD_CHAINS = "vs_trl.py --steps 20"  # commit b1a72d5, the record before issue 14


def _side(fn: Callable) -> list:
    """Cells 'gvm-mini | TRL | TRL / gvm' of the vs-TRL table for one task, from fn(record, side)."""
    return [lambda r: fn(r, "gvm"), lambda r: fn(r, "trl"), ratio(fn)]


def _trl_rows() -> list[Quote]:
    out = []
    table = [
        ("| generated tokens | 95,921 | 96,181 | 1.00 | 39,846 | 39,965 | 1.00 |", lambda r, s: r[s]["tokens"]),
        ("| generation / 1k tokens (s) | 0.062 | 0.110 | 1.79 | 0.041 | 0.063 | 1.53 |",
         lambda r, s: per_1k(s, "generation")(r)),
        ("| reward + update / 1k tokens (s) | 0.060 | 0.142 | 2.37 | 0.066 | 0.117 | 1.77 |",
         lambda r, s: per_1k(s, "reward+update")(r)),
        ("| **time / 1k generated tokens (s)** | 0.122 | 0.253 | **2.08** | 0.107 | 0.180 | **1.68** |",
         lambda r, s: per_1k(s, "all")(r)),
        ("| peak RSS (MB) | 467 | 805 | 1.72 | 490 | 703 | 1.43 |", lambda r, s: r[s]["rss_peak_mb"]),
    ]
    for text, fn in table:
        cols = [trl(TRL_CHAINS, f) for f in _side(fn)] + [trl(TRL_RULES, f) for f in _side(fn)]
        out += row(BENCH, text, "vs_trl", cols)
    walls = lambda cmd, side: (trl(cmd, lambda r: r[side]["wall"]),  # noqa: E731
                               trl(cmd, lambda r: min(r[side]["walls_all_repeats"])),
                               trl(cmd, lambda r: max(r[side]["walls_all_repeats"])))
    out += row(BENCH, "| training loop (s), fastest of 3 | 11.66 (11.7-13.5) | 24.29 (24.3-26.7) | 2.08 | 4.28 (4.3-6.4) "
                      "| 7.21 (7.2-10.2) | 1.68 |", "vs_trl",
               [walls(TRL_CHAINS, "gvm"), walls(TRL_CHAINS, "trl"), trl(TRL_CHAINS, lambda r: r["ratio_time_per_step"]),
                walls(TRL_RULES, "gvm"), walls(TRL_RULES, "trl"), trl(TRL_RULES, lambda r: r["ratio_time_per_step"])])
    acc = lambda cmd, who: trl(cmd, lambda r: r["accuracy"][who]["avg_at_k"])  # noqa: E731
    out += row(BENCH, "| accuracy before -> after (Avg@4, 100 prompts) | 0.385 -> 0.370 | 0.385 -> 0.380 | | "
                      "0.263 -> 0.292 | 0.263 -> 0.307 | |", "vs_trl",
               [(acc(TRL_CHAINS, "initial"), acc(TRL_CHAINS, "gvm")), (acc(TRL_CHAINS, "initial"), acc(TRL_CHAINS, "trl")),
                None, (acc(TRL_RULES, "initial"), acc(TRL_RULES, "gvm")), (acc(TRL_RULES, "initial"), acc(TRL_RULES, "trl")),
                None])
    return out


def _in_range_guaranteed(c: dict) -> bool:  # inside the theorems' range and Ω < (γ/η)Δ1 for uniform
    return c["in_theorem_range"] and c["theorem1_ratio_uniform"] < 1


def _lab_history(d: dict) -> list[dict]:
    return [m for k, m in d["methods"].items() if k.endswith("+history")]


PILOT_ARMS = ("GVM-RAFT++", "Filter-RAFT++", "GVM-GRPO", "Filter-GRPO")  # the demo's arms with fresh pilots
ROBUST_ARMS = ("Robust-RAFT++", "Robust-GRPO")  # the demo's gvm_robust arms (pilot: history_reuse)
_n_runs = lambda d: len(d["methods"]) * len(d["seeds"])  # noqa: E731  # the demo's runs: arms x seeds
_share = lambda d, agg, arms=PILOT_ARMS: agg(d["methods"][a]["gvm_stage_share_of_train_wall"] for a in arms) * 100  # noqa: E731


def _diff(a: str, b: str) -> Callable:  # final accuracy of demo arm a minus arm b
    return lambda d: d["methods"][a]["final_acc_mean"] - d["methods"][b]["final_acc_mean"]


STUDY_RULES = ("gvm", "gvm_robust", "knapsack+history", "filter_extremes")  # the study's columns after uniform
STUDY_TASKS = ("rules", "chains", "rules-extremes", "synthetic")  # named: the smollm2 task is not final yet
LM_TASKS, RULE_TASKS = STUDY_TASKS[:3], ("rules", "rules-extremes")
STUDY_ROWS = [  # bench/README.md: uniform final | paired diff ± SE of each rule
    ("rules", "RAFT++", "| rules (tuning) | RAFT++ | 0.590 | -0.120 ± 0.038 | -0.004 ± 0.007 | -0.014 ± 0.005 | -0.101 ± 0.034 |"),
    ("rules", "GRPO", "| rules (tuning) | GRPO | 0.533 | -0.045 ± 0.021 | -0.040 ± 0.010 | -0.013 ± 0.014 | -0.058 ± 0.043 |"),
    ("chains", "RAFT++", "| chains | RAFT++ | 0.337 | -0.013 ± 0.018 | -0.003 ± 0.023 | -0.004 ± 0.010 | +0.007 ± 0.011 |"),
    ("chains", "GRPO", "| chains | GRPO | 0.315 | +0.005 ± 0.022 | +0.017 ± 0.016 | +0.002 ± 0.023 | +0.022 ± 0.013 |"),
    ("rules-extremes", "RAFT++", "| rules-extremes | RAFT++ | 0.473 | -0.027 ± 0.003 | +0.015 ± 0.013 | -0.003 ± 0.006 | -0.085 ± 0.013 |"),
    ("rules-extremes", "GRPO", "| rules-extremes | GRPO | 0.442 | -0.025 ± 0.011 | -0.018 ± 0.014 | +0.015 ± 0.011 | -0.040 ± 0.018 |"),
    ("synthetic", "Lemma-1 SGD", "| synthetic (-L) | Lemma-1 SGD | -1.572 | -0.007 ± 0.015 | -0.040 ± 0.055 | -0.004 ± 0.024 | -0.009 ± 0.022 |"),
]
MAP_ROWS = [  # bench/README.md: tokens | prompts | passes | uniform final | each rule's paired diff ± SE (3 seeds)
    "| 2/8 extreme, 1 pass | 36,000 | 296 | 1.1 / 0.6 | 0.377 | -0.020 ± 0.011 | -0.074 ± 0.004 | +0.025 ± 0.005 | -0.082 ± 0.006 | -0.072 ± 0.018 |",
    "| 2/8 extreme, ~2 epochs | 150,000 | 296 | 3.7 / 2.6 | 0.542 | -0.029 ± 0.005 | -0.116 ± 0.021 | -0.032 ± 0.011 | -0.025 ± 0.007 | -0.128 ± 0.006 |",
    "| 2/8 extreme, ~12 epochs | 150,000 | 64 | 17.0 / 12.0 | 0.433 | +0.021 ± 0.026 | -0.066 ± 0.018 | +0.012 ± 0.032 | -0.027 ± 0.011 | -0.046 ± 0.023 |",
    "| 4/8 extreme, 1 pass | 36,000 | 296 | 1.1 / 0.6 | 0.535 | -0.003 ± 0.005 | -0.112 ± 0.003 | -0.009 ± 0.014 | -0.090 ± 0.006 | -0.111 ± 0.012 |",
    "| 4/8 extreme, ~2 epochs | 150,000 | 296 | 3.7 / 2.6 | 0.627 | -0.003 ± 0.004 | -0.020 ± 0.003 | -0.007 ± 0.008 | -0.022 ± 0.013 | -0.018 ± 0.005 |",
    "| 4/8 extreme, ~12 epochs | 150,000 | 64 | 17.0 / 12.0 | 0.587 | +0.011 ± 0.002 | -0.021 ± 0.009 | -0.028 ± 0.012 | -0.009 ± 0.013 | -0.000 ± 0.006 |",
    "| 6/8 extreme, 1 pass | 36,000 | 296 | 1.1 / 0.6 | 0.340 | +0.011 ± 0.005 | -0.005 ± 0.002 | +0.013 ± 0.015 | -0.022 ± 0.011 | -0.017 ± 0.011 |",
    "| 6/8 extreme, ~2 epochs | 150,000 | 296 | 3.7 / 2.6 | 0.500 | +0.004 ± 0.006 | -0.048 ± 0.020 | -0.014 ± 0.013 | -0.021 ± 0.017 | -0.077 ± 0.024 |",
    "| 6/8 extreme, ~12 epochs | 150,000 | 64 | 17.0 / 11.7 | 0.345 | +0.035 ± 0.024 | +0.050 ± 0.024 | +0.046 ± 0.023 | +0.033 ± 0.023 | -0.003 ± 0.007 |",
]
PAPER_ROWS = [  # bench/README.md: updates per M-step | acc at 23 M-steps | final acc | paired diff (— for uniform)
    ("RAFT++", "uniform", "| RAFT++ | uniform | 8.0 | 0.471 ± 0.033 | 0.525 ± 0.015 | — |"),
    ("RAFT++", "gvm", "| RAFT++ | paper GVM, fair updates | 8.5 | 0.384 ± 0.002 | 0.398 ± 0.000 | -0.127 ± 0.015 |"),
    ("RAFT++", "gvm-fork-updates",
     "| RAFT++ | paper GVM, the fork's updates (`mini_batch_unit: fork`) | 65.2 | 0.519 ± 0.007 | 0.516 ± 0.008 | -0.008 ± 0.023 |"),
    ("RAFT++", "uniform-same-updates",
     "| RAFT++ | uniform with the same updates (mini-batch 4) | 64.0 | 0.555 ± 0.008 | 0.547 ± 0.006 | +0.022 ± 0.009 |"),
    ("GRPO", "uniform", "| GRPO | uniform | 8.0 | 0.439 ± 0.007 | 0.464 ± 0.002 | — |"),
    ("GRPO", "gvm", "| GRPO | paper GVM, fair updates | 8.6 | 0.404 ± 0.003 | 0.404 ± 0.005 | -0.060 ± 0.003 |"),
    ("GRPO", "gvm-fork-updates", "| GRPO | paper GVM, the fork's updates | 64.3 | 0.436 ± 0.021 | 0.435 ± 0.021 | -0.029 ± 0.023 |"),
    ("GRPO", "uniform-same-updates", "| GRPO | uniform with the same updates | 64.0 | 0.430 ± 0.005 | 0.421 ± 0.011 | -0.044 ± 0.013 |"),
]
NB03_PAPER_ROWS = [  # notebooks/03: RAFT++, updates per M-step | accuracy at 23 M-steps
    ("uniform", "| uniform | 8.0 | 0.471 ± 0.033 |"),
    ("gvm", "| paper GVM, equal updates | 8.5 | 0.384 ± 0.002 |"),
    ("gvm-fork-updates", "| paper GVM, the fork's updates | 65.2 | 0.519 ± 0.007 |"),
    ("uniform-same-updates", "| uniform with the same updates | 64.0 | 0.555 ± 0.008 |"),
]


def wv(k: int, rule: str, w: str, key: str = "vs_uniform_same_weighting") -> Callable:
    """weighting_variance.json: the rule's MSE ratio at k samples per prompt under weighting ``w``."""
    return lambda d: d["ratios"][f"{k}/prompt:{rule}"][w][key]


WV_ROWS = {  # bench/README.md, "The M-step weighting and the allocation": Lemma 1, prompt, tokens at 4 and 8 per prompt
    rule: f"| `{rule}` | " + " | ".join("{:.3f}" for _ in range(6)) + " |"
    for rule in ("gvm", "acceptance_only", "gvm_robust", "lemma1_bound", "exact_neyman")
}


def _wv_rows() -> list[Quote]:
    d = _json("bench/results/weighting_variance.json")
    out = []
    for rule, fmt in WV_ROWS.items():
        cols = [wv(k, rule, w) for w in ("lemma1", "prompt", "tokens") for k in (4, 8)]
        text = fmt.format(*(c(d) for c in cols))  # the row as the bench printed it; each cell is checked below
        out += row(BENCH, text, "weighting", cols)
    return out


def _rss_run(d: dict, arm: str, allocator: str) -> dict:
    """The run of rss_by_phase.json with this arm and allocator."""
    return next(r for r in d["runs"] if r["arm"] == arm and r["allocator"] == allocator)


def same(task: str, alg: str, rule: str, key: str) -> Callable:
    """vs_uniform_same_weighting[key] ('mean' or 'se') of a rule in the re-run study (allocation_study.json)."""
    return lambda d: d["tasks"][task]["by_algorithm"][alg][rule]["vs_uniform_same_weighting"][key]


def wonly(task: str, alg: str, key: str) -> Callable:
    """weighting_only[alg][key]: uniform-prompt minus uniform in the re-run study."""
    return lambda d: d["tasks"][task]["weighting_only"][alg][key]


STUDY2_TASKS = {"rules (tuning), re-run": "rules", "rules-flat (fresh)": "rules-flat", "rules-within (fresh)": "rules-within",
                "chains, re-run": "chains", "rules-extremes, re-run": "rules-extremes", "synthetic (-L), re-run": "synthetic",
                "smollm2 (real model)": "smollm2"}


def _study2_rows() -> list[Quote]:
    """bench/README.md's one-factor table: every cell against allocation_study.json (each row is found in the
    document by its labels, so a changed number fails on the number, not on the search)."""
    doc = document(BENCH)
    out = []
    for label, task in STUDY2_TASKS.items():
        for line in doc.splitlines():
            if not line.startswith(f"| {label} |"):
                continue
            alg = line.split("|")[2].strip()
            cols = [study(task, alg, "uniform", "final_mean"), (wonly(task, alg, "mean"), wonly(task, alg, "se")),
                    (same(task, alg, "gvm", "mean"), same(task, alg, "gvm", "se")),
                    (same(task, alg, "gvm_robust", "mean"), same(task, alg, "gvm_robust", "se")),
                    (study(task, alg, "gvm_robust", "paired_diff"), study(task, alg, "gvm_robust", "paired_se")),
                    (same(task, alg, "knapsack+history", "mean"), same(task, alg, "knapsack+history", "se")),
                    None if task == "smollm2" else (same(task, alg, "filter_extremes", "mean"), same(task, alg, "filter_extremes", "se"))]
            out += row(BENCH, line, "study2", signed(line, cols, labels=2), labels=2)
    assert len(out) >= 12 * 7, "the one-factor table's rows were not found in bench/README.md"
    return out


def _study_row(task: str, alg: str, text: str) -> list[Quote]:
    cols = [study(task, alg, "uniform", "final_mean")]
    cols += [(study(task, alg, r, "paired_diff"), study(task, alg, r, "paired_se")) for r in STUDY_RULES]
    return row(BENCH, text, "study", signed(text, cols, labels=2), labels=2)


def _study_rows() -> list[Quote]:
    out = [qt for task, alg, text in STUDY_ROWS for qt in _study_row(task, alg, text)]
    for text in MAP_ROWS:
        c = text.split("|")[1].strip()
        cols = [lambda d, c=c: d["cell_design"][c]["budget_tokens"], lambda d, c=c: d["cell_design"][c]["train_prompts"],
                (lambda d, c=c: d["cell_design"][c]["passes_uniform"], lambda d, c=c: d["cell_design"][c]["passes_gvm"]),
                amap(c, "uniform", "final_mean"), (amap(c, "uniform-prompt", "paired_diff"), amap(c, "uniform-prompt", "paired_se"))]
        cols += [(_map_same(c, r, "mean"), _map_same(c, r, "se")) for r in STUDY_RULES]
        out += row(BENCH, text, "map", signed(text, cols))
    for alg, a, text in PAPER_ROWS:
        cols = [paper(alg, a, "updates_per_m_step"),
                (paper(alg, a, "acc_at_equal_m_steps"), paper(alg, a, "acc_at_equal_m_steps_se")),
                (paper(alg, a, "final_mean"), paper(alg, a, "final_se")),
                None if a == "uniform" else (paper(alg, a, "paired_diff"), paper(alg, a, "paired_se"))]
        out += row(BENCH, text, "paper", signed(text, cols, labels=2), labels=2)
    for a, text in NB03_PAPER_ROWS:
        out += row(NB03, text, "paper", [paper("RAFT++", a, "updates_per_m_step"),
                                         (paper("RAFT++", a, "acc_at_equal_m_steps"), paper("RAFT++", a, "acc_at_equal_m_steps_se"))])
    return out


def _map_best(rule: str, key: str) -> Callable:  # the map's cell where allocation paid
    return lambda d: d["cells"]["6/8 extreme, ~12 epochs"][rule][key]


def _map_same(cell_: str, rule: str, key: str) -> Callable:  # a rule against uniform with its own weighting
    return lambda d: d["cells"][cell_][rule]["vs_uniform_same_weighting"][key]


def _updates_x(alg: str) -> Callable:  # "uniform with 8x updates": its updates per M-step over uniform's
    return lambda d: paper(alg, "uniform-same-updates", "updates_per_m_step")(d) / paper(alg, "uniform", "updates_per_m_step")(d)


def _grid(agg: Callable, key: str) -> Callable:  # the --tune grid's range of one setting
    return lambda d: agg(o[key] for o in d["grid"].values() if key in o)


def _tuning_best(key: str) -> Callable:  # the --tune arm it chose
    return lambda d: study("rules (tuning)", "RAFT++", d["best"], key)(d)


def _ablation(a: str, key: str) -> Callable:
    return study("rules (ablation)", "RAFT++", a, key)


def rm(arm_name: str, key: str, stat: str = "mean") -> Callable:  # a statistic over seeds of the real-model curve
    return lambda d: d["arms"][arm_name][key][stat]


REALMODEL_CELLS = {"uniform-RAFT++": "| uniform-RAFT++ | 3 | 0.097 | **0.347 ± 0.206 (0.208-0.583)** |",
                   "uniform-GRPO": "| uniform-GRPO | 3 | 0.097 | **0.181 ± 0.064 (0.125-0.250)** |",
                   "GVM-RAFT++": "| GVM-RAFT++ | 3 | 0.097 | **0.319 ± 0.244 (0.042-0.500)** |"}


def _rm_cell(arm_name: str, k: int) -> str:  # the k-th number of the final-accuracy cell, in braces
    text = REALMODEL_CELLS[arm_name]
    m = list(NUMBER.finditer(text, text.index("**")))[k]
    return text[:m.start()] + "{" + m.group() + "}" + text[m.end():]


def _isa_max(key: str) -> Callable:
    return lambda d: max(r[key] for r in d["arms"].values())


def _isa_gap(arm_name: str, side: int, sign: int) -> Callable:  # side 0: native, 1: AVX2 path
    return lambda d: sign * d["arms"][arm_name]["gap_to_uniform"][side]


def rms(arm_: str, *path: str, scale: float = 1.0) -> Callable:
    """realmodel_study.json: arms[arm_][path...] (a mean-SE record's key is the last part of ``path``)."""
    def get(d):
        x = d["arms"][arm_]
        for k in path:
            x = x[k]
        return None if x is None else x * scale
    return get


def _uniform_after_9_msteps(d) -> float:
    """realmodel_study.json: uniform RAFT++'s one-draw evaluation after its 9th M-step (every 3rd M-step is
    evaluated, so the curve's 4th point), averaged over seeds."""
    assert d["design"]["eval_every"] == 3
    curves = d["arms"]["uniform-RAFT++"]["curves"].values()
    return sum(c[3][1] for c in curves) / len(curves)


def _backend_rows() -> list[Quote]:
    """bench/README.md's hf-vs-vllm training table: per backend mean (sd), then vLLM minus HF ± SE."""
    out = []
    for label, key in (("held-out accuracy after training", "final_acc"), ("held-out accuracy at the start", "start_acc"),
                       ("training reward (accepted share)", "train_reward"), ("training answer length (tokens, cap 48)", "mean_len")):
        line = next(ln for ln in document(BENCH).splitlines() if ln.startswith(f"| {label} |"))
        sm = lambda b, k, key=key: (lambda d: d["summary"][key][b][k])
        cols = [(sm("hf", "mean"), sm("hf", "sd")), (sm("vllm", "mean"), sm("vllm", "sd")),
                (sm("vllm_minus_hf", "mean"), sm("vllm_minus_hf", "se"))]
        out += row(BENCH, line, "backend", signed(line, cols))
    return out


def _gain(arm_: str) -> Callable:  # the demo: final minus start accuracy of one arm
    return lambda d: d["methods"][arm_]["final_acc_mean"] - d["methods"][arm_]["start_acc"]


def _pair(arm_: str, key: str, stat: str) -> Callable:  # the demo: a paired difference of summary.json
    return lambda d: d["methods"][arm_][key][stat]


def _rmstudy_rows() -> list[Quote]:
    """bench/README.md's real-model study table: every number of each arm's row."""
    doc = document(BENCH)
    out = []
    for arm_ in ("uniform-RAFT++", "uniform-RAFT++-prompt", "uniform-GRPO", "GVM-RAFT++", "gvm_robust-RAFT++",
                 "knapsack+history-RAFT++"):
        lines = [ln for ln in doc.splitlines() if ln.startswith(f"| {arm_} | ") and ln.count("|") == 10]
        assert len(lines) == 1, f"the real-model study's row for {arm_} is not in bench/README.md once"
        line = lines[0]
        base = arm_ in ("uniform-RAFT++", "uniform-RAFT++-prompt")
        cols = [lambda d, a=arm_: len(d["arms"][a]["seeds"]),
                (rms(arm_, "final_acc", "mean"), rms(arm_, "final_acc", "se")),
                None if base else (rms(arm_, "vs_uniform_same_weighting", "mean"), rms(arm_, "vs_uniform_same_weighting", "se")),
                None if arm_ == "uniform-RAFT++" else (rms(arm_, "vs_uniform_tokens", "mean"), rms(arm_, "vs_uniform_tokens", "se")),
                rms(arm_, "eval_answer_length", "final", "mean"),
                (rms(arm_, "accounting", "m_steps", "mean"), rms(arm_, "accounting", "updates", "mean")),
                lambda d, a=arm_: 100 * d["arms"][a]["accounting"]["pilot_tokens"]["mean"] / d["arms"][a]["accounting"]["generated_tokens"]["mean"]]
        out += row(BENCH, line, "rmstudy", signed(line, cols, labels=2), labels=2)
    return out


QUOTES: list[Quote] = [
    # ---- the demo's table (docs/demo/summary.json), in README.md and docs/demo.md
    *[qt for doc in (R, DEMO) for name, text in DEMO_ROWS.items() for qt in row(doc, text, "demo", summary_cols(name))],
    *[qt for name, text in FAMILY_ROWS.items()
      for qt in row(DEMO, text, "demo", family_cols(name, with_n=name.startswith(("GVM", "Filter", "Robust"))))],
    *row(DEMO, "| start pass rate | 0.83 | 0.55 | 0.14 | 0.20 | 0.04 | 0.06 | 0.02 | 0.00 |", "demo",
         [fam("RAFT++", f, "start_by_family") for f in "ABCDEFGH"]),
    *row(DEMO, "| start | 0.83 | 0.55 | 0.14 | 0.20 | 0.04 | 0.06 | 0.02 | 0.00 |", "demo",
         [fam("RAFT++", f, "start_by_family") for f in "ABCDEFGH"]),
    # ---- README.md prose
    *q(R, "the ten-arm demo took **{281} s** (30 runs", "demo", lambda d: d["wall_seconds"]["total"], 0),
    *q(R, "took **281 s** ({30} runs\n279 s", "demo", _n_runs, 0),
    *q(R, "({30} runs\n279 s; the warm", "demo", _n_runs, 0),
    *q(R, "(30 runs\n{279} s; the warm", "demo", lambda d: d["wall_seconds"]["runs"], 0),
    *q(R, "Ten arms x {3} seeds (30 runs)", "demo", lambda d: len(d["seeds"]), 0),
    *q(R, "Ten arms x 3 seeds ({30} runs)", "demo", _n_runs, 0),
    *q(R, "start pass rates spread from {0.83} (family A)", "demo", fam("RAFT++", "A", "start_by_family"), 2),
    *q(R, "uniform RAFT++ {0.229} → 0.542", "demo", arm("RAFT++", "start_acc"), 3),
    *q(R, "level with GRPO ({0.439} against 0.435)", "demo", arm("GVM-GRPO", "acc_at_equal_m_steps_mean"), 3),
    *q(R, "level with GRPO (0.439 against {0.435})", "demo", arm("GRPO", "acc_at_equal_m_steps_mean"), 3),
    *q(R, "uniform RAFT++ 0.229 → {0.542}", "demo", arm("RAFT++", "final_acc_mean"), 3),
    *q(R, "GRPO → {0.484}", "demo", arm("GRPO", "final_acc_mean"), 3),
    *q(R, "(+{0.31} and +0.26 test\n  accuracy for uniform RAFT++ and GRPO)", "demo", _gain("RAFT++"), 2),
    *q(R, "(+0.31 and +{0.26} test\n  accuracy for uniform RAFT++ and GRPO)", "demo", _gain("GRPO"), 2),
    *q(R, "(family E: {0.85} under uniform RAFT++", "demo", fam("RAFT++", "E"), 2),
    *q(R, "0.85 under uniform RAFT++, {0.20} under\nGVM-RAFT++)", "demo", fam("GVM-RAFT++", "E"), 2),
    *q(R, "get up to {188}\nsamples (uniform: 8)", "demo", arm("GVM-RAFT++", "max_n"), 0),
    *q(R, "(family E: {0.62}\nunder Robust-RAFT++)", "demo", fam("Robust-RAFT++", "E"), 2),
    *q(R, "most of the pilot ({21}k of 154k tokens against GVM's 53k)", "demo", arm("Robust-RAFT++", "pilot_tokens", 1e-3), 0),
    *q(R, "most of the pilot (21k of {154}k tokens against GVM's 53k)", "demo", arm("Robust-RAFT++", "tokens", 1e-3), 0),
    *q(R, "most of the pilot (21k of 154k tokens against GVM's {53}k)", "demo", arm("GVM-RAFT++", "pilot_tokens", 1e-3), 0),
    *q(R, "their allocation alone is -{0.032} ± 0.011 (RAFT++)", "demo", _neg(_pair("Robust-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(R, "their allocation alone is -0.032 ± {0.011} (RAFT++)", "demo", _pair("Robust-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(R, "(RAFT++) and -{0.007} ± 0.011\n(GRPO); the weighting", "demo", _neg(_pair("Robust-GRPO", "vs_uniform_same_weighting", "mean")), 3),
    *q(R, "(RAFT++) and -0.007 ± {0.011}\n(GRPO); the weighting", "demo", _pair("Robust-GRPO", "vs_uniform_same_weighting", "se"), 3),
    *q(R, "the weighting alone is -{0.029} ± 0.005 (RAFT++)", "demo", _neg(_pair("Prompt-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(R, "the weighting alone is -0.029 ± {0.005} (RAFT++)", "demo", _pair("Prompt-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(R, "and exactly {0} (GRPO), paired by seed", "demo", _pair("Prompt-GRPO", "vs_uniform_same_weighting", "mean"), 0),
    *q(R, "**{2.64} ± 1.11x** fewer E-steps", "regime_cells", cell96("wide", 4.0, 4, "gvm", "speedup"), 2),
    *q(R, "**2.64 ± {1.11}x** fewer E-steps", "regime_cells", cell96("wide", 4.0, 4, "gvm", "speedup_se"), 2),
    *q(R, "inside the range at most {1.24}x (24-seed map)", "regime_map",
       cells(lambda c: c["in_theorem_range"], "gvm", "speedup", max), 2),
    *q(R, "{1.00} ± 0.01 wherever Theorem 1 already guarantees descent", "regime_map",
       cells(_in_range_guaranteed, "gvm", "speedup", lambda v: (max(v) + min(v)) / 2), 2),
    *q(R, "1.00 ± {0.01} wherever Theorem 1 already guarantees descent", "regime_map",
       cells(_in_range_guaranteed, "gvm", "speedup", lambda v: (max(v) - min(v)) / 2), 2),
    # ---- docs/demo.md prose
    *q(DEMO, "the full ten-arm demo took\n**{281} s** (30 runs", "demo", lambda d: d["wall_seconds"]["total"], 0),
    *q(DEMO, "**281 s** ({30} runs 279 s", "demo", _n_runs, 0),
    *q(DEMO, "(30 runs {279} s; the warm", "demo", lambda d: d["wall_seconds"]["runs"], 0),
    *q(DEMO, "rules task, ten arms x {3} seeds, AMD EPYC", "demo", lambda d: len(d["seeds"]), 0),
    *q(DEMO, "uniform RAFT++\ngoes from {0.229} to 0.542 ± 0.003", "demo", arm("RAFT++", "start_acc"), 3),
    *q(DEMO, "uniform RAFT++\ngoes from 0.229 to {0.542} ± 0.003", "demo", arm("RAFT++", "final_acc_mean"), 3),
    *q(DEMO, "uniform RAFT++\ngoes from 0.229 to 0.542 ± {0.003}", "demo", arm("RAFT++", "final_acc_std"), 3),
    *q(DEMO, "uniform GRPO to {0.484} ± 0.012 at 150k", "demo", arm("GRPO", "final_acc_mean"), 3),
    *q(DEMO, "uniform GRPO to 0.484 ± {0.012} at 150k", "demo", arm("GRPO", "final_acc_std"), 3),
    *q(DEMO, "(+{0.31} and +0.26, many", "demo", _gain("RAFT++"), 2),
    *q(DEMO, "(+0.31 and +{0.26}, many", "demo", _gain("GRPO"), 2),
    *q(DEMO, "G ({2}%) does\nnot take off", "demo", lambda d: 100 * fam("RAFT++", "G", "start_by_family")(d), 0),
    *q(DEMO, "it ends {0.12} (RAFT++) and 0.04 (GRPO) below them", "demo", _diff("RAFT++", "GVM-RAFT++"), 2),
    *q(DEMO, "it ends 0.12 (RAFT++) and {0.04} (GRPO) below them", "demo", _diff("GRPO", "GVM-GRPO"), 2),
    *q(DEMO, "behind with RAFT++ ({0.423} against 0.478)", "demo", arm("GVM-RAFT++", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "behind with RAFT++ (0.423 against {0.478})", "demo", arm("RAFT++", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "level with GRPO ({0.439}\nagainst 0.435)", "demo", arm("GVM-GRPO", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "level with GRPO (0.439\nagainst {0.435})", "demo", arm("GRPO", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "({0.04} → 0.85 with RAFT++)", "demo", fam("RAFT++", "E", "start_by_family"), 2),
    *q(DEMO, "(0.04 → {0.85} with RAFT++)", "demo", fam("RAFT++", "E"), 2),
    *q(DEMO, "n_i = 0 ({65}% of E's prompt-visits over the three seeds)", "demo",
       lambda d: 100 * d["methods"]["GVM-RAFT++"]["zero_share_by_family"]["E"], 0),
    *q(DEMO, "get about {28} samples each", "demo",
       lambda d: d["methods"]["GVM-RAFT++"]["mean_n_by_family"]["E"] / (1 - d["methods"]["GVM-RAFT++"]["zero_share_by_family"]["E"]), 0),
    *q(DEMO, "E reaches only {0.20} under GVM-RAFT++ against 0.85", "demo", fam("GVM-RAFT++", "E"), 2),
    *q(DEMO, "E reaches only 0.20 under GVM-RAFT++ against {0.85}", "demo", fam("RAFT++", "E"), 2),
    *q(DEMO, "({52.6}k of 154k)", "demo", arm("GVM-RAFT++", "pilot_tokens", 1e-3), 1),
    *q(DEMO, "(52.6k of {154}k)", "demo", arm("GVM-RAFT++", "tokens", 1e-3), 0),
    *q(DEMO, "GVM makes {23} M-steps where uniform makes 34", "demo", arm("GVM-RAFT++", "m_steps"), 0),
    *q(DEMO, "GVM makes 23 M-steps where uniform makes {34}", "demo", arm("RAFT++", "m_steps"), 0),
    *q(DEMO, "the GVM stage is {30}% of\n   training wall time for GVM-RAFT++", "demo",
       arm("GVM-RAFT++", "gvm_stage_share_of_train_wall", 100), 0),
    *q(DEMO, "for GVM-RAFT++ and {25}% for GVM-GRPO", "demo", arm("GVM-GRPO", "gvm_stage_share_of_train_wall", 100), 0),
    *q(DEMO, "get up to {188} samples, where\n   uniform gives 8", "demo", arm("GVM-RAFT++", "max_n"), 0),
    *q(DEMO, "with RAFT++ ({0.25} against 0.22; with GRPO both reach 0.24)", "demo", fam("GVM-RAFT++", "C"), 2),
    *q(DEMO, "with RAFT++ (0.25 against {0.22}; with GRPO both reach 0.24)", "demo", fam("RAFT++", "C"), 2),
    *q(DEMO, "with GRPO both reach {0.24})", "demo", fam("GRPO", "C"), 2),
    *q(DEMO, "with GRPO both reach {0.24})", "demo", fam("GVM-GRPO", "C"), 2),
    *q(DEMO, "below GVM with both algorithms ({0.414} against 0.426", "demo", arm("Filter-RAFT++", "final_acc_mean"), 3),
    *q(DEMO, "below GVM with both algorithms (0.414 against {0.426}", "demo", arm("GVM-RAFT++", "final_acc_mean"), 3),
    *q(DEMO, "RAFT++, {0.420} against 0.439 with GRPO)", "demo", arm("Filter-GRPO", "final_acc_mean"), 3),
    *q(DEMO, "RAFT++, 0.420 against {0.439} with GRPO)", "demo", arm("GVM-GRPO", "final_acc_mean"), 3),
    *q(DEMO, "family E learns ({0.62} under Robust-RAFT++, 0.63", "demo", fam("Robust-RAFT++", "E"), 2),
    *q(DEMO, "under Robust-RAFT++, {0.63} under Robust-GRPO", "demo", fam("Robust-GRPO", "E"), 2),
    *q(DEMO, "cost {21}k of 154k tokens instead of 53k", "demo", arm("Robust-RAFT++", "pilot_tokens", 1e-3), 0),
    *q(DEMO, "cost 21k of {154}k tokens instead of 53k", "demo", arm("Robust-RAFT++", "tokens", 1e-3), 0),
    *q(DEMO, "cost 21k of 154k tokens instead of {53}k", "demo", arm("GVM-RAFT++", "pilot_tokens", 1e-3), 0),
    *q(DEMO, "they make {33}-34 M-steps, like uniform's 34", "demo", arm("Robust-RAFT++", "m_steps"), 0),
    *q(DEMO, "they make 33-{34} M-steps, like uniform's 34", "demo", arm("Robust-GRPO", "m_steps"), 0),
    *q(DEMO, "they make 33-34 M-steps, like uniform's {34}", "demo", arm("GRPO", "m_steps"), 0),
    *q(DEMO, "Robust-RAFT++ {0.481} ± 0.014 against 0.542 ± 0.003", "demo", arm("Robust-RAFT++", "final_acc_mean"), 3),
    *q(DEMO, "Robust-RAFT++ 0.481 ± {0.014} against 0.542 ± 0.003", "demo", arm("Robust-RAFT++", "final_acc_std"), 3),
    *q(DEMO, "Robust-RAFT++ 0.481 ± 0.014 against {0.542} ± 0.003", "demo", arm("RAFT++", "final_acc_mean"), 3),
    *q(DEMO, "Robust-RAFT++ 0.481 ± 0.014 against 0.542 ± {0.003}", "demo", arm("RAFT++", "final_acc_std"), 3),
    *q(DEMO, "Robust-GRPO {0.477} ± 0.004 against 0.484 ± 0.012; at", "demo", arm("Robust-GRPO", "final_acc_mean"), 3),
    *q(DEMO, "Robust-GRPO 0.477 ± {0.004} against 0.484 ± 0.012; at", "demo", arm("Robust-GRPO", "final_acc_std"), 3),
    *q(DEMO, "Robust-GRPO 0.477 ± 0.004 against {0.484} ± 0.012; at", "demo", arm("GRPO", "final_acc_mean"), 3),
    *q(DEMO, "Robust-GRPO 0.477 ± 0.004 against 0.484 ± {0.012}; at", "demo", arm("GRPO", "final_acc_std"), 3),
    *q(DEMO, "level with uniform\n({0.483} against 0.478)", "demo", arm("Robust-RAFT++", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "level with uniform\n(0.483 against {0.478})", "demo", arm("RAFT++", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "Robust-GRPO below it ({0.422} against 0.435)", "demo", arm("Robust-GRPO", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "Robust-GRPO below it (0.422 against {0.435})", "demo", arm("GRPO", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "get\nabout {12} samples per prompt (uniform 8, GVM at most 1)", "demo",
       lambda d: sum(d["methods"][a]["mean_n_by_family"][f] for a in ROBUST_ARMS for f in "GH") / 4, 0),
    *q(DEMO, "samples per prompt (uniform 8, GVM at most {1})", "demo",
       lambda d: max(d["methods"][a]["mean_n_by_family"][f] for a in ("GVM-RAFT++", "GVM-GRPO") for f in "GH"), 0),
    *q(DEMO, "over {3} warm starts\nthe allocation study's paired differences", "study", lambda d: len(d["warm_starts"]), 0),
    *q(DEMO, "against uniform are -{0.004} ± 0.007 (RAFT++)", "study", _neg(study("rules", "RAFT++", "gvm_robust", "paired_diff")), 3),
    *q(DEMO, "against uniform are -0.004 ± {0.007} (RAFT++)", "study", study("rules", "RAFT++", "gvm_robust", "paired_se"), 3),
    *q(DEMO, "(RAFT++) and -{0.040} ± 0.010\n(GRPO)", "study", _neg(study("rules", "GRPO", "gvm_robust", "paired_diff")), 3),
    *q(DEMO, "(RAFT++) and -0.040 ± {0.010}\n(GRPO)", "study", study("rules", "GRPO", "gvm_robust", "paired_se"), 3),
    *q(DEMO, "stage (pilots and estimates) is {11}% and 9%", "demo", arm("Robust-RAFT++", "gvm_stage_share_of_train_wall", 100), 0),
    *q(DEMO, "stage (pilots and estimates) is 11% and {9}%", "demo", arm("Robust-GRPO", "gvm_stage_share_of_train_wall", 100), 0),
    *q(DEMO, "{17} min on the same AMD EPYC", "lab", lambda d: d["wall_seconds"] / 60, 0),
    *q(DEMO, "lifts the paper's rule from {0.398}\nto 0.49", "lab", arm("GVM-paper", "final_acc_mean"), 3),
    *q(DEMO, "lifts the paper's rule from 0.398\nto {0.49}", "lab", arm("GVM-paper+history", "final_acc_mean"), 2),
    *q(DEMO, "(family E in the lab: {0.16} under the paper's", "lab", fam("GVM-paper", "E"), 2),
    *q(DEMO, "estimates → {0.64}, 0.82 with `history`; uniform 0.87)", "lab", fam("GVM-bayes", "E"), 2),
    *q(DEMO, "estimates → 0.64, {0.82} with `history`; uniform 0.87)", "lab", fam("GVM-bayes+history", "E"), 2),
    *q(DEMO, "estimates → 0.64, 0.82 with `history`; uniform {0.87})", "lab", fam("uniform", "E"), 2),
    *q(DEMO, "concentration effect ({0.484}, level with uniform at equal M-steps)", "lab",
       arm("GVM-paper+prompt", "acc_at_equal_m_steps_mean"), 3),
    *q(DEMO, "ends at {0.508} ± 0.034 against uniform's 0.525 ± 0.015", "lab", arm("GVM-bayes+history", "final_acc_mean"), 3),
    *q(DEMO, "ends at 0.508 ± 0.034 against uniform's {0.525} ± 0.015", "lab", arm("uniform", "final_acc_mean"), 3),
    *q(DEMO, "({0.536} ± 0.001) or `reuse` (0.531)", "lab", arm("Knapsack+history", "final_acc_mean"), 3),
    *q(DEMO, "(0.536 ± 0.001) or `reuse` ({0.531})", "lab", arm("Knapsack+reuse", "final_acc_mean"), 3),
    # ---- docs/demo.md: the chains counter-example (docs/demo/chains/summary.json)
    *q(DEMO, "four\narms x {3} seeds, 150k tokens per run", "chains", lambda d: len(d["seeds"]), 0),
    *q(DEMO, "four\narms x 3 seeds, {150}k tokens per run", "chains", lambda d: d["budget_tokens"] / 1000, 0),
    *q(DEMO, "(stored result, {3} seeds: 0.388 at the start", "chains", lambda d: len(d["seeds"]), 0),
    *q(DEMO, "(stored result, 3 seeds: {0.388} at the start", "chains", arm("RAFT++", "start_acc"), 3),
    *q(DEMO, "RAFT++ {0.382} ± 0.011,\nGVM-RAFT++", "chains", arm("RAFT++", "final_acc_mean"), 3),
    *q(DEMO, "RAFT++ 0.382 ± {0.011},\nGVM-RAFT++", "chains", arm("RAFT++", "final_acc_std"), 3),
    *q(DEMO, "GVM-RAFT++ {0.343} ± 0.005, GRPO 0.371", "chains", arm("GVM-RAFT++", "final_acc_mean"), 3),
    *q(DEMO, "GVM-RAFT++ 0.343 ± {0.005}, GRPO 0.371", "chains", arm("GVM-RAFT++", "final_acc_std"), 3),
    *q(DEMO, "GRPO {0.371} ± 0.004, GVM-GRPO", "chains", arm("GRPO", "final_acc_mean"), 3),
    *q(DEMO, "GRPO 0.371 ± {0.004}, GVM-GRPO", "chains", arm("GRPO", "final_acc_std"), 3),
    *q(DEMO, "GVM-GRPO {0.351} ± 0.005 at 150k tokens", "chains", arm("GVM-GRPO", "final_acc_mean"), 3),
    *q(DEMO, "GVM-GRPO 0.351 ± {0.005} at 150k tokens", "chains", arm("GVM-GRPO", "final_acc_std"), 3),
    # ---- bench/README.md: the allocation lab's table and prose
    *[qt for name, text in LAB_ROWS.items() for qt in row(BENCH, text, "lab", summary_cols(name))],
    *q(BENCH, "`python bench/allocation_lab.py` ({17} min", "lab", lambda d: d["wall_seconds"] / 60, 0),
    *q(BENCH, "uniform's final accuracy ({0.525})", "lab", arm("uniform", "final_acc_mean"), 3),
    *q(BENCH, "against the paper's rule at {0.398}", "lab", arm("GVM-paper", "final_acc_mean"), 3),
    *q(BENCH, "pilots {20}-33k of 150k tokens", "lab", lambda d: min(m["pilot_tokens"] for m in _lab_history(d)) / 1000, 0),
    *q(BENCH, "pilots 20-{33}k of 150k tokens", "lab", lambda d: max(m["pilot_tokens"] for m in _lab_history(d)) / 1000, 0),
    *q(BENCH, "from 0.398 to {0.491}-0.493", "lab", arm("GVM-paper+history", "final_acc_mean"), 3),
    *q(BENCH, "from 0.398 to 0.491-{0.493}", "lab", arm("GVM-paper+reuse", "final_acc_mean"), 3),
    *q(BENCH, "falls from {24}% to 9-15% with `history`", "lab", arm("GVM-paper", "gvm_stage_share_of_train_wall", 100), 0),
    *q(BENCH, "falls from 24% to {9}-15% with `history`", "lab",
       lambda d: min(m["gvm_stage_share_of_train_wall"] for m in _lab_history(d)) * 100, 0),
    *q(BENCH, "falls from 24% to 9-{15}% with `history`", "lab",
       lambda d: max(m["gvm_stage_share_of_train_wall"] for m in _lab_history(d)) * 100, 0),
    *q(BENCH, "uniform teaches it from {0.05} to 0.87", "lab", fam("uniform", "E", "start_by_family"), 2),
    *q(BENCH, "uniform teaches it from 0.05 to {0.87} in this lab's", "lab", fam("uniform", "E"), 2),
    *q(BENCH, "{0.85} in the demo's 3", "demo", fam("RAFT++", "E"), 2),
    *q(BENCH, "goes from {0.16} (demo: 0.20)", "lab", fam("GVM-paper", "E"), 2),
    *q(BENCH, "goes from 0.16 (demo: {0.20})", "demo", fam("GVM-RAFT++", "E"), 2),
    *q(BENCH, "the paper's estimates to {0.64} (fresh) and 0.82 (`+history`)", "lab", fam("GVM-bayes", "E"), 2),
    *q(BENCH, "the paper's estimates to 0.64 (fresh) and {0.82} (`+history`)", "lab", fam("GVM-bayes+history", "E"), 2),
    *q(BENCH, "at equal M-steps (0.484 against {0.480})", "lab", arm("uniform+prompt", "acc_at_equal_m_steps_mean"), 3),
    *q(BENCH, "(0.484 against {0.514})", "lab", arm("uniform+prompt", "final_acc_mean"), 3),
    *q(BENCH, "at {142}k\n  tokens against uniform's 132k (0.93x)", "lab", arm("Knapsack+history", "tokens_to_baseline_final", 1e-3), 0),
    *q(BENCH, "at 142k\n  tokens against uniform's {132}k (0.93x)", "lab", arm("uniform", "tokens_to_baseline_final", 1e-3), 0),
    *q(BENCH, "in {26} M-steps against 30 (1.15x)", "lab", arm("Knapsack+history", "m_steps_to_baseline_final"), 0),
    *q(BENCH, "in 26 M-steps against {30} (1.15x)", "lab", arm("uniform", "m_steps_to_baseline_final"), 0),
    *q(BENCH, "The small train set changes nothing for uniform ({0.525})", "lab", arm("uniform-small", "final_acc_mean"), 3),
    *q(BENCH, "it is {24.6}-30.3% for the four arms with fresh pilots", "demo", lambda d: _share(d, min), 1),
    *q(BENCH, "it is 24.6-{30.3}% for the four arms with fresh pilots", "demo", lambda d: _share(d, max), 1),
    *q(BENCH, "(GVM, Filter) and {8.5}-11.4% for the two `gvm_robust` arms", "demo", lambda d: _share(d, min, ROBUST_ARMS), 1),
    *q(BENCH, "(GVM, Filter) and 8.5-{11.4}% for the two `gvm_robust` arms", "demo", lambda d: _share(d, max, ROBUST_ARMS), 1),
    # ---- bench/README.md: the regime map
    *_regime_rows(),
    *_cell96_rows(),
    *q(BENCH, "reaches uniform's final level **{2.64}x** sooner at N/m = 4", "regime_cells",
       cell96("wide", 4.0, 4, "gvm", "speedup"), 2),
    *q(BENCH, "{2.78}x at N/m = 2, `--cell wide 4 2 --seeds 96`", "regime_cells", cell96("wide", 4.0, 2, "gvm", "speedup"), 2),
    *q(BENCH, "bootstrap 10th percentiles {1.41} and 1.15", "regime_cells", cell96("wide", 4.0, 4, "gvm", "speedup_p10_p90", 0), 2),
    *q(BENCH, "bootstrap 10th percentiles 1.41 and {1.15}", "regime_cells", cell96("wide", 4.0, 2, "gvm", "speedup_p10_p90", 0), 2),
    *q(BENCH, "ends {0.08} lower (3.1 standard errors at N/m = 4)", "regime_cells",
       _neg(cell96("wide", 4.0, 4, "gvm", "final_L_minus_uniform")), 2),
    *q(BENCH, "ends 0.08 lower ({3.1} standard errors at N/m = 4)", "regime_cells",
       lambda r: -cell96("wide", 4.0, 4, "gvm", "final_L_minus_uniform")(r)
       / cell96("wide", 4.0, 4, "gvm", "final_L_minus_uniform_se")(r), 1),
    *q(BENCH, "keeps {2.2}x at N/m = 4", "regime_cells", cell96("wide", 4.0, 4, "gvm_pilot", "speedup_samples"), 1),
    *q(BENCH, "reaches {4.9}x at 16γ with 8 samples per prompt", "regime_cells",
       cell96("wide", 16.0, 8, "gvm_pilot", "speedup_samples"), 1),
    *q(BENCH, "no exact-GVM cell exceeds {1.24}", "regime_map", cells(lambda c: c["in_theorem_range"], "gvm", "speedup", max), 2),
    *q(BENCH, "although GVM cuts Ω\nby up to {28}% on the wide spread", "regime_map",
       cells(lambda c: c["in_theorem_range"] and c["spread"] == "wide", "gvm", "omega_ratio", lambda v: 100 * (1 - min(v))), 0),
    *q(BENCH, "(Ω falls ≤ {4}%)", "regime_map",
       cells(lambda c: c["in_theorem_range"] and c["spread"] == "narrow", "gvm", "omega_ratio", lambda v: 100 * (1 - min(v))), 0),
    *q(BENCH, "always slower there ({0.37}-0.95x)", "regime_map", cells(lambda c: c["in_theorem_range"], "gvm_pilot", "speedup_samples", min), 2),
    *q(BENCH, "always slower there (0.37-{0.95}x)", "regime_map", cells(lambda c: c["in_theorem_range"], "gvm_pilot", "speedup_samples", max), 2),
    *q(BENCH, "the speed-up is {1.00} ± 0.01 — the noise is negligible", "regime_map",
       cells(_in_range_guaranteed, "gvm", "speedup", lambda v: (max(v) + min(v)) / 2), 2),
    *q(BENCH, "(wide spread: up to {53}x inside the range)", "regime_map",
       cells(lambda c: c["in_theorem_range"] and c["spread"] == "wide", "", "theorem1_ratio_uniform", max), 0),
    # ---- bench/README.md: gvm-mini vs TRL
    *_trl_rows(),
    *q(BENCH, "test Average@4 {0.263} -> **0.355** with TRL's GRPOTrainer", "vs_trl",
       trl(TRL_RULES16, lambda r: r["accuracy"]["initial"]["avg_at_k"]), 3),
    *q(BENCH, "test Average@4 0.263 -> **{0.355}** with TRL's GRPOTrainer", "vs_trl",
       trl(TRL_RULES16, lambda r: r["accuracy"]["trl"]["avg_at_k"]), 3),
    *q(BENCH, "0.263 -> **{0.323}** with gvm-mini's GRPO", "vs_trl", trl(TRL_RULES16, lambda r: r["accuracy"]["gvm"]["avg_at_k"]), 3),
    *q(BENCH, "gvm-mini **{1.91}x**\nfaster per generated token", "vs_trl", trl(TRL_RULES16, lambda r: r["ratio_time_per_token"]), 2),
    *q(BENCH, "(generation {1.59}x, reward + update 2.10x)", "vs_trl", trl(TRL_RULES16, lambda r: r["ratio_generation_per_token"]), 2),
    *q(BENCH, "(generation 1.59x, reward + update {2.10}x)", "vs_trl", trl(TRL_RULES16, lambda r: r["ratio_update_per_token"]), 2),
    *q(BENCH, "peak RSS {574} vs 834 MB", "vs_trl", trl(TRL_RULES16, lambda r: r["gvm"]["rss_peak_mb"]), 0),
    *q(BENCH, "peak RSS 574 vs {834} MB", "vs_trl", trl(TRL_RULES16, lambda r: r["trl"]["rss_peak_mb"]), 0),
    *q(BENCH, "gvm-mini is **{2.08}x** (chains) and **1.68x** (rules) faster", "vs_trl",
       trl(TRL_CHAINS, lambda r: r["ratio_time_per_token"]), 2),
    *q(BENCH, "gvm-mini is **2.08x** (chains) and **{1.68}x** (rules) faster", "vs_trl",
       trl(TRL_RULES, lambda r: r["ratio_time_per_token"]), 2),
    *q(BENCH, "TRL's 24.29 s equals its {24.47} s of the\nprevious record", "vs_trl", trl(TRL_OLD_CHAINS, lambda r: r["trl"]["wall"]), 2),
    *q(BENCH, "(commit b1a72d5, then {0.97}x)", "vs_trl", trl(TRL_OLD_CHAINS, lambda r: r["ratio_time_per_token"]), 2),
    *q(BENCH, "the gain is gvm-mini's: {25.23} s -> 11.66 s", "vs_trl", trl(TRL_OLD_CHAINS, lambda r: r["gvm"]["wall"]), 2),
    *q(BENCH, "({0.400} -> 0.310 for TRL)", "vs_trl", trl(TRL_OLD_CHAINS, lambda r: r["accuracy"]["initial"]["avg_at_k"]), 3),
    *q(BENCH, "(0.400 -> {0.310} for TRL)", "vs_trl", trl(TRL_OLD_CHAINS, lambda r: r["accuracy"]["trl"]["avg_at_k"]), 3),
    # ---- docs/gpu.md: QLoRA weights, plan (decimal GB) and measured (GiB)
    *q(GPU, "with peft's upcast they measured {1.50} GiB (Qwen2.5-Math-1.5B)", "qlora",
       lambda r: r[-1]["rows"][0]["measured_weights_gb"], 2),
    *q(GPU, "and {1.45} GiB (Llama-3.2-1B) on CPU", "qlora", lambda r: r[-1]["rows"][1]["measured_weights_gb"], 2),
    *q(GPU, "every ratio is within {0.95}-1.04", "memcheck", lambda d: min(min(r["ratio"], r["ratio_at_config"]) for r in d["rows"]), 2),
    *q(GPU, "every ratio is within 0.95-{1.04}", "memcheck", lambda d: max(max(r["ratio"], r["ratio_at_config"]) for r in d["rows"]), 2),
    # the sampler's prefill without the head copy: Qwen's 8-prompt sampling row as measured now
    *q(GPU, "in the results file as of commit 1fdee21; {3.29} GiB", "memcheck",
       lambda d: next(m["measured_gb"] for r in d["rows"] if r["config"].startswith("qwen") and r["phase"] == "sampling"
                      and r["mode"] == "lora" for m in r["measured"] if m["prompts"] == 8), 2),
    # ---- notebooks' markdown
    *q(NB01, "(family E in the lab's RAFT++ runs, 2 seeds at 150k tokens: test accuracy {0.16} under the paper's estimates",
       "lab", fam("GVM-paper", "E"), 2),
    *q(NB01, "{0.64} with `bayes`, 0.82 with `bayes` and `pilot: history`", "lab", fam("GVM-bayes", "E"), 2),
    *q(NB01, "0.64 with `bayes`, {0.82} with `bayes` and `pilot: history`", "lab", fam("GVM-bayes+history", "E"), 2),
    *q(NB02, "gives **{3.36}× ± 2.24 and 3.75× ± 1.97**", "regime_map", cell("wide", 4.0, 2, "gvm", "speedup"), 2),
    *q(NB02, "gives **3.36× ± {2.24} and 3.75× ± 1.97**", "regime_map", cell("wide", 4.0, 2, "gvm", "speedup_se"), 2),
    *q(NB02, "gives **3.36× ± 2.24 and {3.75}× ± 1.97**", "regime_map", cell("wide", 4.0, 4, "gvm", "speedup"), 2),
    *q(NB02, "gives **3.36× ± 2.24 and 3.75× ± {1.97}**", "regime_map", cell("wide", 4.0, 4, "gvm", "speedup_se"), 2),
    *q(NB02, "**{2.78}× ± 1.43 and 2.64× ± 1.11**", "regime_cells", cell96("wide", 4.0, 2, "gvm", "speedup"), 2),
    *q(NB02, "**2.78× ± {1.43} and 2.64× ± 1.11**", "regime_cells", cell96("wide", 4.0, 2, "gvm", "speedup_se"), 2),
    *q(NB02, "**2.78× ± 1.43 and {2.64}× ± 1.11**", "regime_cells", cell96("wide", 4.0, 4, "gvm", "speedup"), 2),
    *q(NB02, "**2.78× ± 1.43 and 2.64× ± {1.11}**", "regime_cells", cell96("wide", 4.0, 4, "gvm", "speedup_se"), 2),
    *q(NB02, "bootstrap 10th percentiles {1.15} and 1.41", "regime_cells", cell96("wide", 4.0, 2, "gvm", "speedup_p10_p90", 0), 2),
    *q(NB02, "bootstrap 10th percentiles 1.15 and {1.41}", "regime_cells", cell96("wide", 4.0, 4, "gvm", "speedup_p10_p90", 0), 2),
    *q(NB02, "GVM ends lower by ${0.086}\\pm0.041$", "regime_cells", _neg(cell96("wide", 4.0, 2, "gvm", "final_L_minus_uniform")), 3),
    *q(NB02, "and ${0.081}\\pm0.026$: faster is firm", "regime_cells", _neg(cell96("wide", 4.0, 4, "gvm", "final_L_minus_uniform")), 3),
    *q(NB02, "yet the speed-up stays at {0.95}–1.24", "regime_map",
       cells(lambda c: c["in_theorem_range"] and c["spread"] == "wide", "gvm", "speedup", min), 2),
    *q(NB02, "yet the speed-up stays at 0.95–{1.24}", "regime_map",
       cells(lambda c: c["in_theorem_range"] and c["spread"] == "wide", "gvm", "speedup", max), 2),
    *q(NB02, "$\\Omega$ falls by up to {28}% where there is room", "regime_map",
       cells(lambda c: c["in_theorem_range"] and c["spread"] == "wide", "gvm", "omega_ratio", lambda v: 100 * (1 - min(v))), 0),
    *q(NB02, "(map: ${1.12}\\pm0.10$ for this\n   cell)", "regime_map", cell("wide", 1.0, 4, "gvm", "speedup"), 2),
    *q(NB03, "uniform RAFT++ goes from **{0.229} to 0.542**", "demo", arm("RAFT++", "start_acc"), 3),
    *q(NB03, "uniform RAFT++ goes from **0.229 to {0.542}**", "demo", arm("RAFT++", "final_acc_mean"), 3),
    *q(NB03, "(GVM-RAFT++) only to **{0.426}**", "demo", arm("GVM-RAFT++", "final_acc_mean"), 3),
    *q(NB03, "(C: {0.25} against uniform's 0.22)", "demo", fam("GVM-RAFT++", "C"), 2),
    *q(NB03, "(C: 0.25 against uniform's {0.22})", "demo", fam("RAFT++", "C"), 2),
    *q(NB03, "(E: {0.20} against 0.85)", "demo", fam("GVM-RAFT++", "E"), 2),
    *q(NB03, "(E: 0.20 against {0.85})", "demo", fam("RAFT++", "E"), 2),
    *q(NB03, "uniform RAFT++ goes from {0.23} to 0.54", "demo", arm("RAFT++", "start_acc"), 2),
    *q(NB03, "uniform RAFT++ goes from 0.23 to {0.54}", "demo", arm("RAFT++", "final_acc_mean"), 2),
    *q(NB03, "uniform GRPO to {0.48}", "demo", arm("GRPO", "final_acc_mean"), 2),
    *q(NB03, "GVM-RAFT++ ends at {0.43} and GVM-GRPO at 0.44", "demo", arm("GVM-RAFT++", "final_acc_mean"), 2),
    *q(NB03, "GVM-RAFT++ ends at 0.43 and GVM-GRPO at {0.44}", "demo", arm("GVM-GRPO", "final_acc_mean"), 2),
    *q(NB03, "the filter arms end close to GVM ({0.41} with RAFT++, 0.42 with GRPO)", "demo", arm("Filter-RAFT++", "final_acc_mean"), 2),
    *q(NB03, "the filter arms end close to GVM (0.41 with RAFT++, {0.42} with GRPO)", "demo", arm("Filter-GRPO", "final_acc_mean"), 2),
    *q(NB03, "(0.04 → {0.85} with RAFT++)", "demo", fam("RAFT++", "E"), 2),
    *q(NB03, "samples each. The same samples on fewer than half of the prompt-visits leave E at {0.20}", "demo", fam("GVM-RAFT++", "E"), 2),
    *q(NB03, "family D goes from {0.20}, and E and F from about", "demo", fam("RAFT++", "D", "start_by_family"), 2),
    *q(NB03, "to {0.81}-0.91 with RAFT++, each on its own", "demo",
       lambda d: min(d["methods"]["RAFT++"]["final_by_family"][f] for f in "DEF"), 2),
    *q(NB03, "to 0.81-{0.91} with RAFT++, each on its own", "demo",
       lambda d: max(d["methods"]["RAFT++"]["final_by_family"][f] for f in "DEF"), 2),
    *q(NB03, "GVM makes {23} M-steps where uniform makes 34", "demo", arm("GVM-RAFT++", "m_steps"), 0),
    *q(NB03, "GVM makes 23 M-steps where uniform makes {34}", "demo", arm("RAFT++", "m_steps"), 0),
    *q(NB03, "({0.42} against 0.48 for RAFT++)", "demo", arm("GVM-RAFT++", "acc_at_equal_m_steps_mean"), 2),
    *q(NB03, "(0.42 against {0.48} for RAFT++)", "demo", arm("RAFT++", "acc_at_equal_m_steps_mean"), 2),
    *q(NB03, "keeps family E learning ({0.62} under\nRobust-RAFT++)", "demo", fam("Robust-RAFT++", "E"), 2),
    *q(NB03, "the pilots cost {21}k of 154k tokens instead of 53k", "demo", arm("Robust-RAFT++", "pilot_tokens", 1e-3), 0),
    *q(NB03, "the pilots cost 21k of {154}k tokens instead of 53k", "demo", arm("Robust-RAFT++", "tokens", 1e-3), 0),
    *q(NB03, "the pilots cost 21k of 154k tokens instead of {53}k", "demo", arm("GVM-RAFT++", "pilot_tokens", 1e-3), 0),
    *q(NB03, "(Robust-RAFT++ {0.48} against 0.54, Robust-GRPO", "demo", arm("Robust-RAFT++", "final_acc_mean"), 2),
    *q(NB03, "(Robust-RAFT++ 0.48 against {0.54}, Robust-GRPO", "demo", arm("RAFT++", "final_acc_mean"), 2),
    *q(NB03, "Robust-GRPO\n{0.477} against 0.484)", "demo", arm("Robust-GRPO", "final_acc_mean"), 3),
    *q(NB03, "Robust-GRPO\n0.477 against {0.484})", "demo", arm("GRPO", "final_acc_mean"), 3),
    *q(NB03, "the allocation alone is -{0.032} ± 0.011 with RAFT++", "demo", _neg(_pair("Robust-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(NB03, "the allocation alone is -0.032 ± {0.011} with RAFT++", "demo", _pair("Robust-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(NB03, "and -{0.007} ± 0.011\nwith GRPO, the weighting", "demo", _neg(_pair("Robust-GRPO", "vs_uniform_same_weighting", "mean")), 3),
    *q(NB03, "the weighting alone -{0.029} ± 0.005 with RAFT++", "demo", _neg(_pair("Prompt-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(NB03, "the weighting alone -0.029 ± {0.005} with RAFT++", "demo", _pair("Prompt-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(NB03, "on this task over {3} warm starts x 2 seeds", "study2", lambda d: len(d["warm_starts"]), 0),
    # ---- the allocation study (allocation_study.py) and its --tune, --map, --paper, --ablate runs: tables
    *_study_rows(),
    # ---- README.md
    *q(R, "On the demo (RAFT++, {2} seeds, at 23 M-steps)", "paper", lambda d: len(d["seeds"]), 0),
    *q(R, "turns the paper's rule from {0.384} into", "paper", paper("RAFT++", "gvm", "acc_at_equal_m_steps"), 3),
    *q(R, "into **{0.519} against uniform's 0.471**", "paper", paper("RAFT++", "gvm-fork-updates", "acc_at_equal_m_steps"), 3),
    *q(R, "into **0.519 against uniform's {0.471}**", "paper", paper("RAFT++", "uniform", "acc_at_equal_m_steps"), 3),
    *q(R, "uniform given the same {8}x updates", "paper", _updates_x("RAFT++"), 0),
    *q(R, "the same 8x updates reaches {0.555}:", "paper", paper("RAFT++", "uniform-same-updates", "acc_at_equal_m_steps"), 3),
    *q(R, "(GRPO: {0.436} vs 0.439, uniform", "paper", paper("GRPO", "gvm-fork-updates", "acc_at_equal_m_steps"), 3),
    *q(R, "(GRPO: 0.436 vs {0.439}, uniform", "paper", paper("GRPO", "uniform", "acc_at_equal_m_steps"), 3),
    *q(R, "uniform with {8}x updates 0.430;", "paper", _updates_x("GRPO"), 0),
    *q(R, "uniform with 8x updates {0.430};", "paper", paper("GRPO", "uniform-same-updates", "acc_at_equal_m_steps"), 3),
    # ---- bench/README.md: the study
    *q(BENCH, "the same number of generated tokens ({150}k, pilots counted)", "study", lambda d: d["tasks"]["rules"]["grid_tokens"][-1] / 1000, 0),
    *q(BENCH, "mean ± standard error over {3} warm starts", "study", lambda d: len(d["warm_starts"]), 0),
    *q(BENCH, "this 2-core AMD EPYC (AVX-512): {54} min for\nthe four small-model tasks", "study",
       lambda d: sum(d["tasks"][t]["wall_seconds"] for t in STUDY_TASKS) / 60, 0),
    # ---- bench/README.md: the smollm2 task of the study
    *q(BENCH, "(-{0.046} ± 0.034, -1.4 SE)", "study", _neg(study("smollm2", "RAFT++", "gvm_robust", "paired_diff")), 3),
    *q(BENCH, "(-0.046 ± {0.034}, -1.4 SE)", "study", study("smollm2", "RAFT++", "gvm_robust", "paired_se"), 3),
    *q(BENCH, "(-0.046 ± 0.034, -{1.4} SE)", "study",
       lambda d: -study("smollm2", "RAFT++", "gvm_robust", "paired_diff")(d) / study("smollm2", "RAFT++", "gvm_robust", "paired_se")(d), 1),
    *q(BENCH, "(uniform's seeds end at {0.62},", "study", lambda d: d["tasks"]["smollm2"]["by_algorithm"]["RAFT++"]["uniform"]["finals"][0], 2),
    *q(BENCH, "filter's -{0.203} ± 0.167", "study", _neg(study("smollm2", "RAFT++", "filter_extremes", "paired_diff")), 3),
    *q(BENCH, "filter's -0.203 ± {0.167}", "study", study("smollm2", "RAFT++", "filter_extremes", "paired_se"), 3),
    *q(BENCH, "`gvm_robust` spent {51}% of its tokens on pilots", "study",
       lambda d: 100 * d["tasks"]["smollm2"]["by_algorithm"]["RAFT++"]["gvm_robust"]["pilot_token_share"], 0),
    *q(BENCH, "uniform is -{0.019} ± 0.281 (SE over the 3 seeds", "study", _neg(study("smollm2", "RAFT++", "gvm", "paired_diff")), 3),
    *q(BENCH, "uniform is -0.019 ± {0.281} (SE over the 3 seeds", "study", study("smollm2", "RAFT++", "gvm", "paired_se"), 3),
    # ---- the real-model curve (bench/results/realmodel_curve.json): bench/README.md, docs/gpu.md, notebook 04
    *[qt for arm_name in ("uniform-RAFT++", "uniform-GRPO", "GVM-RAFT++") for k, stat in enumerate(("mean", "std", "min", "max"))
      for qt in q(BENCH, _rm_cell(arm_name, k), "realmodel", rm(arm_name, "final_acc", stat), 3)],
    *q(BENCH, "Uniform RAFT++ goes from 0.097 to **{0.347} ± 0.206**", "realmodel", rm("uniform-RAFT++", "final_acc"), 3),
    *q(BENCH, "Uniform RAFT++ goes from 0.097 to **0.347 ± {0.206}**", "realmodel", rm("uniform-RAFT++", "final_acc", "std"), 3),
    *q(BENCH, "GRPO gains\n  less within the budget ({0.181} ± 0.064)", "realmodel", rm("uniform-GRPO", "final_acc"), 3),
    *q(BENCH, "**The paper's GVM-RAFT++ is not distinguishable from uniform here**: {0.319} ± 0.244", "realmodel",
       rm("GVM-RAFT++", "final_acc"), 3),
    *q(BENCH, "with {34}% of its tokens in pilots", "realmodel",
       lambda d: 100 * rm("GVM-RAFT++", "pilot_tokens")(d) / rm("GVM-RAFT++", "tokens")(d), 0),
    *q(BENCH, "gained only 0.083 → {0.125} within the budget", "realmodel", rm("uniform-RAFT++-QLoRA", "final_acc"), 3),
    *q(BENCH, "sampled at {20} tokens/s against LoRA's 35", "realmodel", rm("uniform-RAFT++-QLoRA", "sampling_tokens_per_s"), 0),
    *q(BENCH, "sampled at 20 tokens/s against LoRA's {35}", "realmodel", rm("uniform-RAFT++", "sampling_tokens_per_s"), 0),
    *q(BENCH, "peaked at {1,736} MiB against LoRA's", "realmodel", rm("uniform-RAFT++-QLoRA", "peak_rss_mib"), 0),
    *q(BENCH, "against LoRA's {1,836}-2,234 MiB", "realmodel", rm("uniform-RAFT++", "peak_rss_mib", "min"), 0),
    *q(BENCH, "against LoRA's 1,836-{2,234} MiB", "realmodel", rm("uniform-RAFT++", "peak_rss_mib", "max"), 0),
    *q(GPU, "sampled at {20} tokens/s against 35", "realmodel", rm("uniform-RAFT++-QLoRA", "sampling_tokens_per_s"), 0),
    *q(GPU, "peaked at {1,736} MiB against 1,836-2,234 MiB", "realmodel", rm("uniform-RAFT++-QLoRA", "peak_rss_mib"), 0),
    *q(GPU, "spent {1.76} s of update per forwarded sample", "realmodel", rm("uniform-RAFT++-QLoRA", "update_s_per_live_sample"), 2),
    *q(GPU, "per forwarded sample against {0.98} s", "realmodel", rm("uniform-RAFT++", "update_s_per_live_sample"), 2),
    *q(NB04, "Uniform RAFT++ goes from 0.097 to **{0.347} ± 0.206**", "realmodel", rm("uniform-RAFT++", "final_acc"), 3),
    *q(NB04, "Uniform RAFT++ goes from {0.097} to", "realmodel", rm("uniform-RAFT++", "start_acc"), 3),
    *q(NB04, "The paper's GVM-RAFT++ ends at {0.319} ± 0.244", "realmodel", rm("GVM-RAFT++", "final_acc"), 3),
    *q(NB04, "peaked at {1,736} MiB of RAM", "realmodel", rm("uniform-RAFT++-QLoRA", "peak_rss_mib"), 0),
    *q(BENCH, "(`--tune`: floor {1} or 2, cap 2x or 4x", "tuning", _grid(min, "robust_floor"), 0),
    *q(BENCH, "(`--tune`: floor 1 or {2}, cap 2x or 4x", "tuning", _grid(max, "robust_floor"), 0),
    *q(BENCH, "floor 1 or 2, cap {2}x or 4x uniform", "tuning", _grid(min, "robust_cap_factor"), 0),
    *q(BENCH, "floor 1 or 2, cap 2x or {4}x uniform", "tuning", _grid(max, "robust_cap_factor"), 0),
    *q(BENCH, "per-prompt M-step, RAFT++, {3} warm starts;", "tuning", lambda d: len(d["warm_starts"]), 0),
    *q(BENCH, "): floor {2}, cap 2x, `prompt_weighting: prompt`, committed", "study", lambda d: d["preregistered"]["robust_floor"], 0),
    *q(BENCH, "): floor 2, cap {2}x, `prompt_weighting: prompt`, committed", "study", lambda d: d["preregistered"]["robust_cap_factor"], 0),
    *q(BENCH, "The best of the grid tied uniform (-{0.004} ± 0.007)", "tuning", _neg(_tuning_best("paired_diff")), 3),
    *q(BENCH, "The best of the grid tied uniform (-0.004 ± {0.007})", "tuning", _tuning_best("paired_se"), 3),
    *q(BENCH, "on rules GRPO (-{0.040} ± 0.010, in-sample)", "study", _neg(study("rules", "GRPO", "gvm_robust", "paired_diff")), 3),
    *q(BENCH, "on rules GRPO (-0.040 ± {0.010}, in-sample)", "study", study("rules", "GRPO", "gvm_robust", "paired_se"), 3),
    *q(BENCH, "rules-extremes GRPO (-{0.018} ± 0.014, -1.3 SE)", "study", _neg(study("rules-extremes", "GRPO", "gvm_robust", "paired_diff")), 3),
    *q(BENCH, "rules-extremes GRPO (-0.018 ± {0.014}, -1.3 SE)", "study", study("rules-extremes", "GRPO", "gvm_robust", "paired_se"), 3),
    *q(BENCH, "rules-extremes GRPO (-0.018 ± 0.014, -{1.3} SE)", "study",
       lambda d: -study("rules-extremes", "GRPO", "gvm_robust", "paired_diff")(d) / study("rules-extremes", "GRPO", "gvm_robust", "paired_se")(d), 1),
    *q(BENCH, "RAFT++ at {0.69}x its tokens, 103k of 150k)", "study", study("rules-extremes", "RAFT++", "gvm_robust", "token_ratio"), 2),
    *q(BENCH, "RAFT++ at 0.69x its tokens, {103}k of 150k)", "study", study("rules-extremes", "RAFT++", "gvm_robust", "tokens_to_uniform_final", 1e-3), 0),
    *q(BENCH, "RAFT++ at 0.69x its tokens, 103k of {150}k)", "study", study("rules-extremes", "RAFT++", "uniform", "tokens_to_uniform_final", 1e-3), 0),
    *q(BENCH, "RAFT++ yes (-{0.004} vs -0.014)", "study", _neg(study("rules", "RAFT++", "gvm_robust", "paired_diff")), 3),
    *q(BENCH, "RAFT++ yes (-0.004 vs -{0.014})", "study", _neg(study("rules", "RAFT++", "knapsack+history", "paired_diff")), 3),
    *q(BENCH, "GRPO no (-{0.040} vs -0.013)", "study", _neg(study("rules", "GRPO", "gvm_robust", "paired_diff")), 3),
    *q(BENCH, "GRPO no (-0.040 vs -{0.013})", "study", _neg(study("rules", "GRPO", "knapsack+history", "paired_diff")), 3),
    *q(BENCH, "(RAFT++ {0.377} at the start, 0.337 at 150k tokens", "study", study("chains", "RAFT++", "uniform", "start"), 3),
    *q(BENCH, "(RAFT++ 0.377 at the start, {0.337} at 150k tokens", "study", study("chains", "RAFT++", "uniform", "final_mean"), 3),
    *q(BENCH, "(RAFT++ 0.377 at the start, 0.337 at {150}k tokens", "study", lambda d: d["tasks"]["chains"]["grid_tokens"][-1] / 1000, 0),
    *q(BENCH, "at 150k tokens; GRPO {0.315})", "study", study("chains", "GRPO", "uniform", "final_mean"), 3),
    *q(BENCH, "the paper's pilot takes {31}", "study", studies(LM_TASKS, "gvm", "pilot_token_share", min, 100), 0),
    *q(BENCH, "of the tokens and {23}-25% of training wall time", "study", studies(LM_TASKS, "gvm", "estimation_wall_share", min, 100), 0),
    *q(BENCH, "of the tokens and 23-{25}% of training wall time", "study", studies(LM_TASKS, "gvm", "estimation_wall_share", max, 100), 0),
    *q(BENCH, "`gvm_robust` {14}% of tokens", "study", studies(RULE_TASKS, "gvm_robust", "pilot_token_share", min, 100), 0),
    *q(BENCH, "`gvm_robust` {14}% of tokens", "study", studies(RULE_TASKS, "gvm_robust", "pilot_token_share", max, 100), 0),
    *q(BENCH, "and {8}-9% of wall time on the rule tasks", "study", studies(RULE_TASKS, "gvm_robust", "estimation_wall_share", min, 100), 0),
    *q(BENCH, "and 8-{9}% of wall time on the rule tasks", "study", studies(RULE_TASKS, "gvm_robust", "estimation_wall_share", max, 100), 0),
    # ---- bench/README.md: --ablate (RAFT++ on the demo task; every arm's paired difference and SE)
    *q(BENCH, "On the demo task (RAFT++, {2} warm starts, 150k tokens;", "ablation", lambda d: len(d["warm_starts"]), 0),
    *q(BENCH, "On the demo task (RAFT++, 2 warm starts, {150}k tokens;", "ablation",
       lambda d: d["tasks"]["rules (ablation)"]["grid_tokens"][-1] / 1000, 0),
    *q(BENCH, "full rule +{0.001} ± 0.008;", "ablation", _ablation("gvm_robust", "paired_diff"), 3),
    *q(BENCH, "full rule +0.001 ± {0.008};", "ablation", _ablation("gvm_robust", "paired_se"), 3),
    *q(BENCH, "no floor -{0.018} ± 0.002;", "ablation", _neg(_ablation("no floor", "paired_diff")), 3),
    *q(BENCH, "no floor -0.018 ± {0.002};", "ablation", _ablation("no floor", "paired_se"), 3),
    *q(BENCH, "no cap -{0.032} ± 0.006;", "ablation", _neg(_ablation("no cap", "paired_diff")), 3),
    *q(BENCH, "no cap -0.032 ± {0.006};", "ablation", _ablation("no cap", "paired_se"), 3),
    *q(BENCH, "instead of the Beta posterior -{0.013} ± 0.008;", "ablation", _neg(_ablation("paper estimates", "paired_diff")), 3),
    *q(BENCH, "instead of the Beta posterior -0.013 ± {0.008};", "ablation", _ablation("paper estimates", "paired_se"), 3),
    *q(BENCH, "(the paper's) -{0.052} ± 0.019;", "ablation", _neg(_ablation("fresh pilot, not trained on", "paired_diff")), 3),
    *q(BENCH, "(the paper's) -0.052 ± {0.019};", "ablation", _ablation("fresh pilot, not trained on", "paired_se"), 3),
    *q(BENCH, "pilots not trained on -{0.022} ± 0.002.", "ablation", _neg(_ablation("history, pilots not trained on", "paired_diff")), 3),
    *q(BENCH, "pilots not trained on -0.022 ± {0.002}.", "ablation", _ablation("history, pilots not trained on", "paired_se"), 3),
    # ---- bench/README.md: --map (the study's SEs it cites: RAFT++ on the rule task, every rule against uniform)
    *q(BENCH, "17 passes: the paper's rule +{0.050} ± 0.024, `gvm_robust`", "map", _map_same("6/8 extreme, ~12 epochs", "gvm", "mean"), 3),
    *q(BENCH, "17 passes: the paper's rule +0.050 ± {0.024}, `gvm_robust`", "map", _map_same("6/8 extreme, ~12 epochs", "gvm", "se"), 3),
    *q(BENCH, "`gvm_robust` +{0.046} ± 0.023, `knapsack` + history", "map", _map_same("6/8 extreme, ~12 epochs", "gvm_robust", "mean"), 3),
    *q(BENCH, "`gvm_robust` +0.046 ± {0.023}, `knapsack` + history", "map", _map_same("6/8 extreme, ~12 epochs", "gvm_robust", "se"), 3),
    *q(BENCH, "`knapsack` + history\n+{0.033} ± 0.023, each", "map", _map_same("6/8 extreme, ~12 epochs", "knapsack+history", "mean"), 3),
    *q(BENCH, "`knapsack` + history\n+0.033 ± {0.023}, each", "map", _map_same("6/8 extreme, ~12 epochs", "knapsack+history", "se"), 3),
    *q(BENCH, "with {3} seeds on one warm start), and", "map", lambda d: len(d["seeds"]), 0),
    *q(BENCH, "**{3} seeds on one warm start per cell**", "map", lambda d: len(d["seeds"]), 0),
    *q(BENCH, "2/8 at an extreme (+{0.025} ± 0.005; its pilots", "map", _map_same("2/8 extreme, 1 pass", "gvm_robust", "mean"), 3),
    *q(BENCH, "2/8 at an extreme (+0.025 ± {0.005}; its pilots", "map", _map_same("2/8 extreme, 1 pass", "gvm_robust", "se"), 3),
    *q(BENCH, "lost -{0.074} ± 0.004 there", "map", _neg(_map_same("2/8 extreme, 1 pass", "gvm", "mean")), 3),
    *q(BENCH, "lost -0.074 ± {0.004} there", "map", _map_same("2/8 extreme, 1 pass", "gvm", "se"), 3),
    *q(BENCH, "(the paper's\nrule by up to {0.116})", "map", lambda d: -min(c["gvm"]["vs_uniform_same_weighting"]["mean"] for c in d["cells"].values()), 3),
    *q(BENCH, "weighting alone ranges from\n-{0.029} ± 0.005", "map", lambda d: -min(c["uniform-prompt"]["paired_diff"] for c in d["cells"].values()), 3),
    *q(BENCH, "to +{0.035} ± 0.024; in the 6/8", "map", lambda d: max(c["uniform-prompt"]["paired_diff"] for c in d["cells"].values()), 3),
    *q(BENCH, "`gvm_robust`'s +{0.081} ± 0.009 against token-mean", "map", _map_best("gvm_robust", "paired_diff"), 3),
    *q(BENCH, "`gvm_robust`'s +0.081 ± {0.009} against token-mean", "map", _map_best("gvm_robust", "paired_se"), 3),
    *q(BENCH, "36,000 generated tokens over the {296} training prompts", "map", lambda d: d["cell_design"]["2/8 extreme, 1 pass"]["train_prompts"], 0),
    *q(BENCH, "about once, {1.1} passes measured", "map", lambda d: max(v["passes_uniform"] for k, v in d["cell_design"].items() if "1 pass" in k), 1),
    *q(BENCH, "prompts ({3.7} passes; labelled", "map", lambda d: d["cell_design"]["2/8 extreme, ~2 epochs"]["passes_uniform"], 1),
    *q(BENCH, "over the first 64 ({17} passes,", "map", lambda d: d["cell_design"]["6/8 extreme, ~12 epochs"]["passes_uniform"], 0),
    # ---- bench/README.md: --paper
    *q(BENCH, "(shipped warm start, {2} seeds, 150k tokens; mean ± SE over seeds;", "paper", lambda d: len(d["seeds"]), 0),
    *q(BENCH, "(shipped warm start, 2 seeds, {150}k tokens; mean ± SE over seeds;", "paper",
       lambda d: d["summary"]["grid_tokens"][-1] / 1000, 0),
    *q(BENCH, "ahead of fair uniform, {0.519} vs 0.471)", "paper", paper("RAFT++", "gvm-fork-updates", "acc_at_equal_m_steps"), 3),
    *q(BENCH, "ahead of fair uniform, 0.519 vs {0.471})", "paper", paper("RAFT++", "uniform", "acc_at_equal_m_steps"), 3),
    *q(BENCH, "is further ahead still ({0.555})", "paper", paper("RAFT++", "uniform-same-updates", "acc_at_equal_m_steps"), 3),
    # ---- theory/gvm_robust.md
    *q(THEORY_ROBUST, "(commit 0f3e706): floor {2}, cap 2x the uniform share", "study", lambda d: d["preregistered"]["robust_floor"], 0),
    *q(THEORY_ROBUST, "(commit 0f3e706): floor 2, cap {2}x the uniform share", "study",
       lambda d: d["preregistered"]["robust_cap_factor"], 0),
    *q(THEORY_ROBUST, "at an extreme (+{0.015} ± 0.013)", "study", study("rules-extremes", "RAFT++", "gvm_robust", "paired_diff"), 3),
    *q(THEORY_ROBUST, "at an extreme (+0.015 ± {0.013})", "study", study("rules-extremes", "RAFT++", "gvm_robust", "paired_se"), 3),
    *q(THEORY_ROBUST, "(-{0.040} ± 0.010 in-sample,", "study", _neg(study("rules", "GRPO", "gvm_robust", "paired_diff")), 3),
    *q(THEORY_ROBUST, "(-0.040 ± {0.010} in-sample,", "study", study("rules", "GRPO", "gvm_robust", "paired_se"), 3),
    *q(THEORY_ROBUST, "-{0.018} ± 0.014 held out)", "study", _neg(study("rules-extremes", "GRPO", "gvm_robust", "paired_diff")), 3),
    *q(THEORY_ROBUST, "-0.018 ± {0.014} held out)", "study", study("rules-extremes", "GRPO", "gvm_robust", "paired_se"), 3),
    *q(THEORY_ROBUST, "SmolLM2 task (-{0.046} ± 0.034, where", "study", _neg(study("smollm2", "RAFT++", "gvm_robust", "paired_diff")), 3),
    *q(THEORY_ROBUST, "SmolLM2 task (-0.046 ± {0.034}, where", "study", study("smollm2", "RAFT++", "gvm_robust", "paired_se"), 3),
    *q(THEORY_ROBUST, "M-step weighting (+{0.046} ±\n0.023,", "map", _map_same("6/8 extreme, ~12 epochs", "gvm_robust", "mean"), 3),
    *q(THEORY_ROBUST, "M-step weighting (+0.046 ±\n{0.023},", "map", _map_same("6/8 extreme, ~12 epochs", "gvm_robust", "se"), 3),
    *q(THEORY_ROBUST, "as does the paper's rule (+{0.050} ± 0.024)", "map", _map_same("6/8 extreme, ~12 epochs", "gvm", "mean"), 3),
    *q(THEORY_ROBUST, "as does the paper's rule (+0.050 ± {0.024})", "map", _map_same("6/8 extreme, ~12 epochs", "gvm", "se"), 3),
    # ---- notebooks/03: the chains counter-example
    *q(NB03, "(RAFT++ {0.382} against\n0.343 for GVM-RAFT++", "chains", arm("RAFT++", "final_acc_mean"), 3),
    *q(NB03, "(RAFT++ 0.382 against\n{0.343} for GVM-RAFT++", "chains", arm("GVM-RAFT++", "final_acc_mean"), 3),
    *q(NB03, "GRPO {0.371} against 0.351, from 0.388", "chains", arm("GRPO", "final_acc_mean"), 3),
    *q(NB03, "GRPO 0.371 against {0.351}, from 0.388", "chains", arm("GVM-GRPO", "final_acc_mean"), 3),
    *q(NB03, "against 0.351, from {0.388} at the start", "chains", arm("GVM-GRPO", "start_acc"), 3),
    *q(NB03, "Its stored result ({3} seeds, 150k", "chains", lambda d: len(d["seeds"]), 0),
    *q(NB03, "Its stored result (3 seeds, {150}k", "chains", lambda d: d["budget_tokens"] / 1000, 0),
    # ---- notebooks/03 (its table is in _study_rows)
    *q(NB03, "On this task (shipped warm start, {2} seeds, mean ± SE;", "paper", lambda d: len(d["seeds"]), 0),
    *q(NB03, "(GRPO: {0.436} ± 0.021 against", "paper", paper("GRPO", "gvm-fork-updates", "acc_at_equal_m_steps"), 3),
    *q(NB03, "(GRPO: 0.436 ± {0.021} against", "paper", paper("GRPO", "gvm-fork-updates", "acc_at_equal_m_steps_se"), 3),
    *q(NB03, "against uniform's {0.439} ± 0.007, and", "paper", paper("GRPO", "uniform", "acc_at_equal_m_steps"), 3),
    *q(NB03, "against uniform's 0.439 ± {0.007}, and", "paper", paper("GRPO", "uniform", "acc_at_equal_m_steps_se"), 3),
    *q(NB03, "and {0.430} ± 0.005 for uniform with 8x updates.", "paper", paper("GRPO", "uniform-same-updates", "acc_at_equal_m_steps"), 3),
    *q(NB03, "and 0.430 ± {0.005} for uniform with 8x updates.", "paper",
       paper("GRPO", "uniform-same-updates", "acc_at_equal_m_steps_se"), 3),
    *q(NB03, "and 0.430 ± 0.005 for uniform with {8}x updates.", "paper", _updates_x("GRPO"), 0),
    # ---- the demo on two kernel paths (bench/results/demo_isa.json), README.md and docs/demo.md
    *q(DEMO, "the start is identical ({0.229})", "demo_isa", lambda d: d["arms"]["RAFT++"]["start"][1], 3),
    *q(DEMO, "per-seed finals moved by at most {0.035}", "demo_isa", _isa_max("diff_max_abs"), 3),
    *q(DEMO, "arm means by at most {0.014}", "demo_isa",
       lambda d: max(abs(r["final_mean"][1] - r["final_mean"][0]) for r in d["arms"].values()), 3),
    *q(DEMO, "(RAFT++ -{0.126} natively", "demo_isa", _isa_gap("GVM-RAFT++", 0, -1), 3),
    *q(DEMO, "-{0.125} on the AVX2 path; GRPO", "demo_isa", _isa_gap("GVM-RAFT++", 1, -1), 3),
    *q(DEMO, "GRPO -{0.054} and -0.029)", "demo_isa", _isa_gap("GVM-GRPO", 0, -1), 3),
    *q(DEMO, "GRPO -0.054 and -{0.029})", "demo_isa", _isa_gap("GVM-GRPO", 1, -1), 3),
    *q(DEMO, "Robust-GRPO's (-{0.009} natively", "demo_isa", _isa_gap("Robust-GRPO", 0, -1), 3),
    *q(DEMO, "+{0.007} on the AVX2 path)", "demo_isa", _isa_gap("Robust-GRPO", 1, 1), 3),
    # ---- the mechanism: family E under GVM-RAFT++ is concentrated, not withheld (docs/demo.md, notebook 03)
    *q(DEMO, "its mean n_i over all visits is {9.7}, against", "demo",
       lambda d: d["methods"]["GVM-RAFT++"]["mean_n_by_family"]["E"], 1),
    *q("notebooks/03_tiny_lm.ipynb", "its mean $n_i$ is {9.7} against uniform's 8", "demo",
       lambda d: d["methods"]["GVM-RAFT++"]["mean_n_by_family"]["E"], 1),
    # ---- docs/demo.md and notebook 03: the demo's Robust arms taken apart by the re-run
    *q(DEMO, "found the weighting alone at\n-{0.018} and the allocation", "study2", _neg(wonly("rules", "RAFT++", "mean")), 3),
    *q(DEMO, "the allocation alone at +{0.003} ± 0.005 with RAFT++", "study2", same("rules", "RAFT++", "gvm_robust", "mean"), 3),
    *q(DEMO, "the allocation alone at +0.003 ± {0.005} with RAFT++", "study2", same("rules", "RAFT++", "gvm_robust", "se"), 3),
    *q(DEMO, "with RAFT++ and -{0.015} ± 0.005 with GRPO", "study2", _neg(same("rules", "GRPO", "gvm_robust", "mean")), 3),
    *q(DEMO, "the allocation alone is -{0.032} ± 0.011 with RAFT++", "demo", _neg(_pair("Robust-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(DEMO, "the allocation alone is -0.032 ± {0.011} with RAFT++", "demo", _pair("Robust-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(DEMO, "-{0.007} ± 0.011 with GRPO; the weighting", "demo", _neg(_pair("Robust-GRPO", "vs_uniform_same_weighting", "mean")), 3),
    *q(DEMO, "-0.007 ± {0.011} with GRPO; the weighting", "demo", _pair("Robust-GRPO", "vs_uniform_same_weighting", "se"), 3),
    *q(DEMO, "is -{0.029} ± 0.005 with RAFT++", "demo", _neg(_pair("Prompt-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(DEMO, "is -0.029 ± {0.005} with RAFT++", "demo", _pair("Prompt-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(DEMO, "and exactly {0} with GRPO, whose runs", "demo", _pair("Prompt-GRPO", "vs_uniform_same_weighting", "mean"), 0),
    *q(DEMO, "Robust-RAFT++'s -{0.061} ± 0.012 is the two together", "demo", _neg(_pair("Robust-RAFT++", "vs_uniform_tokens", "mean")), 3),
    *q(DEMO, "Robust-RAFT++'s -0.061 ± {0.012} is the two together", "demo", _pair("Robust-RAFT++", "vs_uniform_tokens", "se"), 3),
    *q(NB03, "RAFT++'s weighting alone costs -{0.018} and", "study2", _neg(wonly("rules", "RAFT++", "mean")), 3),
    *q(NB03, "the allocation alone gives\n+{0.003} ± 0.005; with GRPO", "study2", same("rules", "RAFT++", "gvm_robust", "mean"), 3),
    *q(NB03, "the allocation alone gives\n-{0.015} ± 0.005. Section", "study2", _neg(same("rules", "GRPO", "gvm_robust", "mean")), 3),
    # ---- theory/gvm_robust.md §5: the re-run on the tuning task
    *q("theory/gvm_robust.md", "the allocation alone gives +{0.003} ± 0.005 with RAFT++", "study2", same("rules", "RAFT++", "gvm_robust", "mean"), 3),
    *q("theory/gvm_robust.md", "and -{0.015} ± 0.005 with GRPO, and the", "study2", _neg(same("rules", "GRPO", "gvm_robust", "mean")), 3),
    *q(THEORY_ROBUST, "it costs\n-{0.048} ± 0.006, every seed below", "study2", _neg(same("smollm2", "RAFT++", "gvm_robust", "mean")), 3),
    *q(THEORY_ROBUST, "it costs\n-0.048 ± {0.006}, every seed below", "study2", same("smollm2", "RAFT++", "gvm_robust", "se"), 3),
    *q(THEORY_ROBUST, "(SmolLM2-135M + LoRA, {5} seeds", "study2", lambda d: len(d["tasks"]["smollm2"]["seeds"]), 0),
    *q("theory/gvm_robust.md", "weighting alone -{0.018} with RAFT++", "study2", _neg(wonly("rules", "RAFT++", "mean")), 3),
    # ---- bench/README.md: the study re-run with one-factor pairs (allocation_study.json)
    *_study2_rows(),
    *_rmstudy_rows(),
    *_backend_rows(),
    *q(BENCH, "starts lower and wordier: {0.087} on", "rmstudy", rms("uniform-RAFT++-QLoRA", "start_acc", "mean"), 3),
    *q(BENCH, "against LoRA's {0.185}, with 67-token", "rmstudy", rms("uniform-RAFT++", "start_acc", "mean"), 3),
    *q(BENCH, "with {67}-token answers and 20.6%", "rmstudy", rms("uniform-RAFT++-QLoRA", "eval_answer_length", "start", "mean"), 0),
    *q(BENCH, "answers and {20.6}% of them cut", "rmstudy", lambda d: 100 * d["arms"]["uniform-RAFT++-QLoRA"]["eval_truncated"]["start"]["mean"], 1),
    *q(BENCH, "against {44}\ntokens and 4.5%", "rmstudy", rms("uniform-RAFT++", "eval_answer_length", "start", "mean"), 0),
    *q(BENCH, "tokens and {4.5}%. It ends", "rmstudy", lambda d: 100 * d["arms"]["uniform-RAFT++"]["eval_truncated"]["start"]["mean"], 1),
    *q(BENCH, "It ends at {0.505} ± 0.058 (seeds", "rmstudy", rms("uniform-RAFT++-QLoRA", "final_acc", "mean"), 3),
    *q(BENCH, "It ends at 0.505 ± {0.058} (seeds", "rmstudy", rms("uniform-RAFT++-QLoRA", "final_acc", "se"), 3),
    *q(BENCH, "(seeds {0.484}, 0.416, 0.615)", "rmstudy", lambda d: d["arms"]["uniform-RAFT++-QLoRA"]["final_acc_per_seed"]["0"], 3),
    *q(BENCH, "(seeds 0.484, {0.416}, 0.615)", "rmstudy", lambda d: d["arms"]["uniform-RAFT++-QLoRA"]["final_acc_per_seed"]["1"], 3),
    *q(BENCH, "(seeds 0.484, 0.416, {0.615})", "rmstudy", lambda d: d["arms"]["uniform-RAFT++-QLoRA"]["final_acc_per_seed"]["2"], 3),
    *q(BENCH, "-{0.146} ± 0.070 against LoRA", "rmstudy", _neg(rms("uniform-RAFT++-QLoRA", "vs_uniform_same_weighting", "mean")), 3),
    *q(BENCH, "-0.146 ± {0.070} against LoRA", "rmstudy", rms("uniform-RAFT++-QLoRA", "vs_uniform_same_weighting", "se"), 3),
    *q(BENCH, "two at a time) sampled at {44} tokens/s", "rmstudy", lambda d: d["arms"]["uniform-RAFT++-QLoRA"]["runs"]["2"]["sampling_tokens_per_s"], 0),
    *q(BENCH, "sampler drew {61}-73", "rmstudy", lambda d: min(d["arms"]["uniform-RAFT++"]["runs"][k]["sampling_tokens_per_s"] for k in "012"), 0),
    *q(BENCH, "sampler drew 61-{73}", "rmstudy", lambda d: max(r["sampling_tokens_per_s"] for k, r in d["arms"]["uniform-RAFT++"]["runs"].items() if k in "012"), 0),
    *q(BENCH, "and took {2,158} s against", "rmstudy", lambda d: d["arms"]["uniform-RAFT++-QLoRA"]["runs"]["2"]["wall_total_s"], 0),
    *q(BENCH, "against LoRA's {1,160}-1,314 s", "rmstudy", lambda d: min(d["arms"]["uniform-RAFT++"]["runs"][k]["wall_total_s"] for k in "012"), 0),
    *q(BENCH, "against LoRA's 1,160-{1,314} s", "rmstudy", lambda d: max(d["arms"]["uniform-RAFT++"]["runs"][k]["wall_total_s"] for k in "012"), 0),
    *q(BENCH, "peak RSS was {2,248}-2,402 MiB", "rmstudy", lambda d: min(r["peak_rss_mib"] for r in d["arms"]["uniform-RAFT++-QLoRA"]["runs"].values()), 0),
    *q(BENCH, "peak RSS was 2,248-{2,402} MiB", "rmstudy", lambda d: max(r["peak_rss_mib"] for r in d["arms"]["uniform-RAFT++-QLoRA"]["runs"].values()), 0),
    *q(BENCH, "against LoRA's {2,445}-2,752 MiB", "rmstudy", lambda d: min(d["arms"]["uniform-RAFT++"]["runs"][k]["peak_rss_mib"] for k in "012"), 0),
    *q(BENCH, "against LoRA's 2,445-{2,752} MiB", "rmstudy", lambda d: max(d["arms"]["uniform-RAFT++"]["runs"][k]["peak_rss_mib"] for k in "012"), 0),
    *q(BENCH, "so their {12}-14 tokens/s", "rmstudy", lambda d: min(d["arms"]["uniform-RAFT++-QLoRA"]["runs"][k]["sampling_tokens_per_s"] for k in "01"), 0),
    *q(BENCH, "so their 12-{14} tokens/s", "rmstudy", lambda d: max(d["arms"]["uniform-RAFT++-QLoRA"]["runs"][k]["sampling_tokens_per_s"] for k in "01"), 0),
    *q(R, "(real model\n  -{0.067} ± 0.035)", "rmstudy", _neg(rms("GVM-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(R, "(real model\n  -0.067 ± {0.035})", "rmstudy", rms("GVM-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(R, "-{0.048} ± 0.006 on the real one", "rmstudy", _neg(rms("gvm_robust-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(R, "-0.048 ± {0.006} on the real one", "rmstudy", rms("gvm_robust-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(R, "(real model\n  +{0.018} ± 0.028)", "rmstudy", rms("uniform-RAFT++-prompt", "vs_uniform_tokens", "mean"), 3),
    *q(R, "(real model\n  +0.018 ± {0.028})", "rmstudy", rms("uniform-RAFT++-prompt", "vs_uniform_tokens", "se"), 3),
    *q(R, "256 held-out prompts, {5} seeds). `gvm_robust`", "rmstudy", lambda d: min(len(a["seeds"]) for k, a in d["arms"].items() if not k.endswith("QLoRA")), 0),
    *q(BENCH, "seeds agree**: {0.185} → 0.662", "rmstudy", rms("uniform-RAFT++", "start_acc", "mean"), 3),
    *q(BENCH, "seeds agree**: 0.185 → {0.662}", "rmstudy", rms("uniform-RAFT++", "final_acc", "mean"), 3),
    *q(BENCH, "seeds ending between {0.627} and 0.689", "rmstudy", lambda d: min(d["arms"]["uniform-RAFT++"]["final_acc_per_seed"].values()), 3),
    *q(BENCH, "seeds ending between 0.627 and {0.689}", "rmstudy", lambda d: max(d["arms"]["uniform-RAFT++"]["final_acc_per_seed"].values()), 3),
    *q(BENCH, "(standard deviation {0.022}: the small", "rmstudy", lambda d: d["uniform_seed_sd"], 3),
    *q(BENCH, "shrinking from\n  {44} to 11 tokens", "rmstudy", rms("uniform-RAFT++", "eval_answer_length", "start", "mean"), 0),
    *q(BENCH, "the paper's rule ends\n  at -{0.067} ± 0.035", "rmstudy", _neg(rms("GVM-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(BENCH, "the paper's rule ends\n  at -0.067 ± {0.035}", "rmstudy", rms("GVM-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(BENCH, "`gvm_robust` at -{0.048} ± 0.006 (all", "rmstudy", _neg(rms("gvm_robust-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(BENCH, "`gvm_robust` at -0.048 ± {0.006} (all", "rmstudy", rms("gvm_robust-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(BENCH, "below, by {0.033} to 0.065)", "rmstudy", lambda d: -max(d["arms"]["gvm_robust-RAFT++"]["vs_uniform_same_weighting"]["per_seed"]), 3),
    *q(BENCH, "below, by 0.033 to {0.065})", "rmstudy", lambda d: -min(d["arms"]["gvm_robust-RAFT++"]["vs_uniform_same_weighting"]["per_seed"]), 3),
    *q(BENCH, "`knapsack+history` at -{0.074} ± 0.030", "rmstudy", _neg(rms("knapsack+history-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(BENCH, "`knapsack+history` at -0.074 ± {0.030}", "rmstudy", rms("knapsack+history-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(BENCH, "not for the paper's rule ({0.035}) or GRPO", "rmstudy", rms("GVM-RAFT++", "vs_uniform_same_weighting", "se"), 3),
    *q(BENCH, "or GRPO ({0.040}); for every rule", "rmstudy", rms("uniform-GRPO", "vs_uniform_same_weighting", "se"), 3),
    *q(BENCH, "token mean) is\n  +{0.018} ± 0.028", "rmstudy", rms("uniform-RAFT++-prompt", "vs_uniform_tokens", "mean"), 3),
    *q(BENCH, "token mean) is\n  +0.018 ± {0.028}", "rmstudy", rms("uniform-RAFT++-prompt", "vs_uniform_tokens", "se"), 3),
    *q(BENCH, "fitted {448} samples into its budget", "rmstudy", lambda d: d["arms"]["uniform-RAFT++-prompt"]["runs"]["0"]["mstep_samples"], 0),
    *q(BENCH, "it\n  reads -{0.030} ± 0.029", "rmstudy", _neg(rms("gvm_robust-RAFT++", "vs_uniform_tokens", "mean")), 3),
    *q(BENCH, "it\n  reads -0.030 ± {0.029}", "rmstudy", rms("gvm_robust-RAFT++", "vs_uniform_tokens", "se"), 3),
    *q(BENCH, "spent {35}% of its tokens on pilots and made", "rmstudy",
       lambda d: 100 * d["arms"]["GVM-RAFT++"]["accounting"]["pilot_tokens"]["mean"] / d["arms"]["GVM-RAFT++"]["accounting"]["generated_tokens"]["mean"], 0),
    *q(BENCH, "made\n  {10.2} M-steps (41 updates)", "rmstudy", rms("GVM-RAFT++", "accounting", "m_steps", "mean"), 1),
    *q(BENCH, "to uniform's {19.0} (76)", "rmstudy", rms("uniform-RAFT++", "accounting", "m_steps", "mean"), 1),
    *q(BENCH, "9th M-step already averages {0.703}", "rmstudy", _uniform_after_9_msteps, 3),
    *q(BENCH, "on the {108} prompts the starting model never", "rmstudy",
       lambda d: d["arms"]["GVM-RAFT++"]["by_difficulty"]["never right at the start (p0 = 0)"]["prompts"], 0),
    *q(BENCH, "paper's rule ends\n  -{0.070} ± 0.034 against uniform", "rmstudy",
       _neg(rms("GVM-RAFT++", "by_difficulty", "never right at the start (p0 = 0)", "vs_uniform_same_weighting", "mean")), 3),
    *q(BENCH, "third of the time\n  -{0.107} ± 0.069", "rmstudy",
       _neg(rms("GVM-RAFT++", "by_difficulty", "0 < p0 <= 1/3", "vs_uniform_same_weighting", "mean")), 3),
    *q(BENCH, "about half the time +{0.010} ± 0.040", "rmstudy",
       rms("GVM-RAFT++", "by_difficulty", "1/3 < p0 <= 2/3", "vs_uniform_same_weighting", "mean"), 3),
    *q(BENCH, "**Uniform GRPO** ends -{0.107} ± 0.040", "rmstudy", _neg(rms("uniform-GRPO", "vs_uniform_same_weighting", "mean")), 3),
    *q(BENCH, "the 30 runs took {8.5} core-hours", "rmstudy",
       lambda d: sum(r["wall_total_s"] for k, a in d["arms"].items() if not k.endswith("QLoRA") for r in a["runs"].values()) / 3600, 1),
    *q(NB04, "it starts lower ({0.087}) and ends", "rmstudy", rms("uniform-RAFT++-QLoRA", "start_acc", "mean"), 3),
    *q(NB04, "and ends {0.146} ± 0.070 below LoRA", "rmstudy", _neg(rms("uniform-RAFT++-QLoRA", "vs_uniform_same_weighting", "mean")), 3),
    *q(NB04, "and ends 0.146 ± {0.070} below LoRA", "rmstudy", rms("uniform-RAFT++-QLoRA", "vs_uniform_same_weighting", "se"), 3),
    *q(NB04, "learns the task ({0.185} → 0.662 on", "rmstudy", rms("uniform-RAFT++", "start_acc", "mean"), 3),
    *q(NB04, "learns the task (0.185 → {0.662} on", "rmstudy", rms("uniform-RAFT++", "final_acc", "mean"), 3),
    *q(NB04, "close together (standard deviation {0.022})", "rmstudy", lambda d: d["uniform_seed_sd"], 3),
    *q(NB04, "the paper's rule by {0.067} (standard error", "rmstudy", _neg(rms("GVM-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(NB04, "`gvm_robust` by {0.048} (standard error 0.006", "rmstudy", _neg(rms("gvm_robust-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(NB04, "`knapsack+history` by {0.074} (0.030)", "rmstudy", _neg(rms("knapsack+history-RAFT++", "vs_uniform_same_weighting", "mean")), 3),
    *q(NB04, "M-steps ({10.2} against 19.0)", "rmstudy", rms("GVM-RAFT++", "accounting", "m_steps", "mean"), 1),
    *q(NB04, "after its 9th M-step ({0.703})", "rmstudy", _uniform_after_9_msteps, 3),
    *q(NB04, "weighting on its\nown is +{0.018} ± 0.028", "rmstudy", rms("uniform-RAFT++-prompt", "vs_uniform_tokens", "mean"), 3),
    *q(NB04, "On the real model it is +{0.018} ± 0.028", "study2", wonly("smollm2", "RAFT++", "mean"), 3),
    *q(NB04, "On the real model it is +0.018 ± {0.028}", "study2", wonly("smollm2", "RAFT++", "se"), 3),
    *q(NB04, "the token mean is +{0.001} ± 0.036: neither", "study2", wonly("synthetic", "Lemma-1 SGD", "mean"), 3),
    *q(NB04, "the token mean is +0.001 ± {0.036}: neither", "study2", wonly("synthetic", "Lemma-1 SGD", "se"), 3),
    *q(BENCH, "(best: rules-within RAFT++ at {0.88}x,", "study2", study("rules-within", "RAFT++", "gvm_robust", "token_ratio"), 2),
    *q(BENCH, "95% interval {0.82}x to 0.95x;", "study2",
       lambda d: d["tasks"]["rules-within"]["by_algorithm"]["RAFT++"]["gvm_robust"]["token_ratio_ci95"][0], 2),
    *q(BENCH, "95% interval 0.82x to {0.95}x;", "study2",
       lambda d: d["tasks"]["rules-within"]["by_algorithm"]["RAFT++"]["gvm_robust"]["token_ratio_ci95"][1], 2),
    *q(BENCH, "-0.007 ± {0.001} (rules-flat)", "study2", wonly("rules-flat", "RAFT++", "se"), 3),
    *q(BENCH, "-{0.004} ± 0.009 (rules-within)", "study2", _neg(wonly("rules-within", "RAFT++", "mean")), 3),
    *q(BENCH, "and +{0.010} ± 0.009 (chains, RAFT++)", "study2", same("chains", "RAFT++", "gvm_robust", "mean"), 3),
    *q(BENCH, "and +0.010 ± {0.009} (chains, RAFT++)", "study2", same("chains", "RAFT++", "gvm_robust", "se"), 3),
    *q(BENCH, "rules-extremes (-{0.004} ± 0.001, -4 SE)", "study2", _neg(same("rules-extremes", "GRPO", "gvm_robust", "mean")), 3),
    *q(BENCH, "rules-extremes (-0.004 ± 0.001, -{4} SE)", "study2",
       lambda d: -same("rules-extremes", "GRPO", "gvm_robust", "mean")(d) / same("rules-extremes", "GRPO", "gvm_robust", "se")(d), 0),
    *q(BENCH, "+{0.037} ± 0.040 on the exact models and", "study2", same("synthetic", "Lemma-1 SGD", "gvm_robust", "mean"), 3),
    *q(BENCH, "+0.037 ± {0.040} on the exact models and", "study2", same("synthetic", "Lemma-1 SGD", "gvm_robust", "se"), 3),
    *q(BENCH, "-{0.048} ± 0.006 on the real model. Against", "study2", _neg(same("smollm2", "RAFT++", "gvm_robust", "mean")), 3),
    *q(BENCH, "-0.048 ± {0.006} on the real model. Against", "study2", same("smollm2", "RAFT++", "gvm_robust", "se"), 3),
    *q(BENCH, "was met on {8} of 12 rows", "study2",
       lambda d: sum(r["gvm_robust"]["vs_uniform_same_weighting"]["mean"] >= -r["gvm_robust"]["vs_uniform_same_weighting"]["se"]
                     for t in d["tasks"].values() for r in t["by_algorithm"].values()
                     if "vs_uniform_same_weighting" in r.get("gvm_robust", {})), 0),
    *q(BENCH, "was met on 8 of {12} rows", "study2",
       lambda d: sum("vs_uniform_same_weighting" in r.get("gvm_robust", {}) for t in d["tasks"].values()
                     for r in t["by_algorithm"].values()), 0),
    *q(BENCH, "and on the real model (-{8} SE,", "study2",
       lambda d: -same("smollm2", "RAFT++", "gvm_robust", "mean")(d) / same("smollm2", "RAFT++", "gvm_robust", "se")(d), 0),
    *q(BENCH, "on the real model +{0.018} ± 0.028. With GRPO", "study2", wonly("smollm2", "RAFT++", "mean"), 3),
    *q(BENCH, "on the real model +0.018 ± {0.028}. With GRPO", "study2", wonly("smollm2", "RAFT++", "se"), 3),
    *q(BENCH, "1/(n_i p_i) (+{0.001} ± 0.036) nor", "study2", wonly("synthetic", "Lemma-1 SGD", "mean"), 3),
    *q(BENCH, "1/(n_i p_i) (+0.001 ± {0.036}) nor", "study2", wonly("synthetic", "Lemma-1 SGD", "se"), 3),
    *q(BENCH, "nor 1/|D_i| (+{0.009} ± 0.012)", "study2", study("synthetic", "Lemma-1 SGD", "uniform-prompt", "paired_diff"), 3),
    *q(BENCH, "nor 1/|D_i| (+0.009 ± {0.012})", "study2", study("synthetic", "Lemma-1 SGD", "uniform-prompt", "paired_se"), 3),
    *q(BENCH, "(1/|D_i|\nminus the token mean: +{0.009} ± 0.012)", "study2", study("synthetic", "Lemma-1 SGD", "uniform-prompt", "paired_diff"), 3),
    *q(BENCH, "(1/|D_i|\nminus the token mean: +0.009 ± {0.012})", "study2", study("synthetic", "Lemma-1 SGD", "uniform-prompt", "paired_se"), 3),
    *q(BENCH, "model the paper's rule is -{0.067} ± 0.035.", "study2", _neg(same("smollm2", "RAFT++", "gvm", "mean")), 3),
    *q(BENCH, "model the paper's rule is -0.067 ± {0.035}.", "study2", same("smollm2", "RAFT++", "gvm", "se"), 3),
    *q(BENCH, "-{0.005} ± 0.004 (chains)", "study2", _neg(wonly("chains", "RAFT++", "mean")), 3),
    *q(BENCH, "-{0.010} ± 0.003 (rules-extremes)", "study2", _neg(wonly("rules-extremes", "RAFT++", "mean")), 3),
    *q(BENCH, "is -{0.016} ± 0.007 against\n  token-mean uniform now", "study2",
       _neg(study("rules-extremes", "RAFT++", "gvm_robust", "paired_diff")), 3),
    *q(BENCH, "of which the weighting is -{0.010} and the allocation -0.006", "study2",
       _neg(wonly("rules-extremes", "RAFT++", "mean")), 3),
    *q(BENCH, "the allocation -{0.006} ± 0.006.", "study2", _neg(same("rules-extremes", "RAFT++", "gvm_robust", "mean")), 3),
    *q(BENCH, "first study's +{0.015} ± 0.013 (RAFT++, one seed)", "study", study("rules-extremes", "RAFT++", "gvm_robust", "paired_diff"), 3),
    *q(BENCH, "on rules-extremes with GRPO\n  it is +{0.004} ± 0.007)", "study2", same("rules-extremes", "GRPO", "gvm", "mean"), 3),
    *q(BENCH, "gains +{0.014} ± 0.003 on chains GRPO", "study2", same("chains", "GRPO", "filter_extremes", "mean"), 3),
    *q(BENCH, "it gives them {12.1}, 12.1 and 12.0 per", "study2",
       lambda d: d["tasks"]["rules-extremes"]["by_algorithm"]["RAFT++"]["gvm_robust"]["mechanism"]["F"]["mean_n"], 1),
    *q(BENCH, "it gives them 12.1, 12.1 and {12.0} per", "study2",
       lambda d: d["tasks"]["rules-extremes"]["by_algorithm"]["RAFT++"]["gvm_robust"]["mechanism"]["H"]["mean_n"], 1),
    *q(BENCH, "{56}% of its samples go to the three families", "study2",
       lambda d: 100 * sum(v["visits"] * v["mean_n"] for f, v in d["tasks"]["rules-extremes"]["by_algorithm"]["RAFT++"]["gvm_robust"]["mechanism"].items() if f in "FGH")
       / sum(v["visits"] * v["mean_n"] for v in d["tasks"]["rules-extremes"]["by_algorithm"]["RAFT++"]["gvm_robust"]["mechanism"].values()), 0),
    *q(BENCH, "the hardest (eight) {9.5} with 53% of visits at 0", "study2",
       lambda d: d["tasks"]["chains"]["by_algorithm"]["RAFT++"]["gvm"]["mechanism"]["difficulty 8"]["mean_n"], 1),
    *q(BENCH, "the hardest (eight) 9.5 with {53}% of visits at 0", "study2",
       lambda d: 100 * d["tasks"]["chains"]["by_algorithm"]["RAFT++"]["gvm"]["mechanism"]["difficulty 8"]["zero_share"], 0),
    *q(BENCH, "rules-within (-{0.006} ± 0.005) and", "study2", _neg(same("rules-within", "GRPO", "gvm_robust", "mean")), 3),
    *q(BENCH, "uniform, one seed) was, re-measured with two seeds, -{0.016} ± 0.005", "study2",
       _neg(study("rules", "RAFT++", "gvm_robust", "paired_diff")), 3),
    *q(BENCH, "of 9.8 (uniform 8) with {49}% of E's prompt-visits", "study2",
       lambda d: 100 * d["tasks"]["rules"]["by_algorithm"]["RAFT++"]["gvm"]["mechanism"]["E"]["zero_share"], 0),
    *q(BENCH, "of {9.8} (uniform 8) with 49%", "study2",
       lambda d: d["tasks"]["rules"]["by_algorithm"]["RAFT++"]["gvm"]["mechanism"]["E"]["mean_n"], 1),
    *q(BENCH, "family C {17.9} with 15% at 0", "study2",
       lambda d: d["tasks"]["rules"]["by_algorithm"]["RAFT++"]["gvm"]["mechanism"]["C"]["mean_n"], 1),
    *q(BENCH, "barely can be learned, G ({12.2}) and H", "study2",
       lambda d: d["tasks"]["rules"]["by_algorithm"]["RAFT++"]["gvm_robust"]["mechanism"]["G"]["mean_n"], 1),
    *q(BENCH, "and H ({12.6}): their shrunk", "study2",
       lambda d: d["tasks"]["rules"]["by_algorithm"]["RAFT++"]["gvm_robust"]["mechanism"]["H"]["mean_n"], 1),
    # ---- bench/README.md: where the memory goes (rss_by_phase.py)
    *q(BENCH, "the GVM run peaked at {8,208} MiB, as in the study", "rss_v1", lambda d: _rss_run(d, "GVM-RAFT++", "glibc default")["peak_mib"], 0),
    *q(BENCH, "the process stayed at {7,248} MiB in every phase", "rss_v1",
       lambda d: _rss_run(d, "GVM-RAFT++", "glibc default")["phases"]["update"]["median_mib"], 0),
    *q(BENCH, "the other phases held\n{1,248}-2,498 MiB", "rss_v1",
       lambda d: min(v["peak_mib"] for k, v in _rss_run(d, "GVM-RAFT++", "trim at once")["phases"].items() if k != "gradnorm"), 0),
    *q(BENCH, "the other phases held\n1,248-{2,498} MiB", "rss_v1",
       lambda d: max(v["peak_mib"] for k, v in _rss_run(d, "GVM-RAFT++", "trim at once")["phases"].items() if k != "gradnorm"), 0),
    *q(BENCH, "the gradient-norm pass alone rose to {5,979} MiB", "rss_v1",
       lambda d: _rss_run(d, "GVM-RAFT++", "trim at once")["phases"]["gradnorm"]["peak_mib"], 0),
    *q(BENCH, "the update,\nat {2,277} MiB", "rss_v1", lambda d: _rss_run(d, "uniform-RAFT++", "trim at once")["peak_mib"], 0),
    *q(BENCH, "run peaks at {7,100} MiB with glibc", "rss", lambda d: _rss_run(d, "GVM-RAFT++", "glibc default")["peak_mib"], 0),
    *q(BENCH, "and {4,660} MiB trimming", "rss", lambda d: _rss_run(d, "GVM-RAFT++", "trim at once")["peak_mib"], 0),
    *q(BENCH, "gradient-norm pass holds {5,238} MiB", "passes", lambda d: d["passes"][0]["peak_mib"], 0),
    *q(BENCH, "before {7,129} MiB", "passes_v1", lambda d: d["passes"][0]["peak_mib"], 0),
    *q(BENCH, "forward and backward at {5,465} MiB", "passes", lambda d: d["passes"][1]["peak_mib"], 0),
    *q(BENCH, "{0.96}x the update, before 1.30x", "passes", lambda d: d["gradnorm_over_update"], 2),
    *q(BENCH, "0.96x the update, before {1.30}x", "passes_v1", lambda d: d["gradnorm_over_update"], 2),
    *q(BENCH, "plan gives {8,837} and 8,912 MiB", "passes", lambda d: d["passes"][0]["planned_mib"], 0),
    *q(BENCH, "plan gives 8,837 and {8,912} MiB", "passes", lambda d: d["passes"][1]["planned_mib"], 0),
    *q(BENCH, "{0.59}x and 0.61x measured", "passes", lambda d: d["gradnorm_over_plan"], 2),
    *q(BENCH, "0.59x and {0.61}x measured", "passes", lambda d: d["update_over_plan"], 2),
    *q(BENCH, "pass peaked at {5,910} MiB of RSS", "passes", lambda d: d["passes"][0]["rss_peak_mib"], 0),
    *q(BENCH, "the update at {9,379} MiB, 1.72x", "passes", lambda d: d["passes"][1]["rss_peak_mib"], 0),
    *q(BENCH, "9,379 MiB, {1.72}x\nits live tensors", "passes", lambda d: d["passes"][1]["rss_peak_mib"] / d["passes"][1]["peak_mib"], 2),
    # ---- README.md: the demo's Robust arms taken apart, the one-factor study, the map
    *q(R, "allocation alone: -{0.015} ± 0.005 to +0.010 ± 0.009", "study2", _neg(same("rules", "GRPO", "gvm_robust", "mean")), 3),
    *q(R, "-0.015 ± 0.005\n  to +{0.010} ± 0.009 on the small", "study2", same("chains", "RAFT++", "gvm_robust", "mean"), 3),
    *q(R, "-0.015 ± 0.005\n  to +0.010 ± {0.009} on the small", "study2", same("chains", "RAFT++", "gvm_robust", "se"), 3),
    *q(R, "above -1 SE on 8 of {12} rows", "study2",
       lambda d: sum("vs_uniform_same_weighting" in r.get("gvm_robust", {}) for t in d["tasks"].values()
                     for r in t["by_algorithm"].values()), 0),
    *q(R, "-0.109 on 10 of {11} rows", "study2",
       lambda d: sum("vs_uniform_same_weighting" in r.get("gvm", {}) for k, t in d["tasks"].items() if k != "synthetic"
                     for r in t["by_algorithm"].values()), 0),
    *q(R, "above -1 SE on {8} of 12 rows", "study2",
       lambda d: sum(r["gvm_robust"]["vs_uniform_same_weighting"]["mean"] >= -r["gvm_robust"]["vs_uniform_same_weighting"]["se"]
                     for t in d["tasks"].values() for r in t["by_algorithm"].values()
                     if "vs_uniform_same_weighting" in r.get("gvm_robust", {})), 0),
    *q(R, "weighting alone: -{0.018} to -0.004 with RAFT++", "study2", _neg(wonly("rules", "RAFT++", "mean")), 3),
    *q(R, "weighting alone: -0.018 to -{0.004} with RAFT++", "study2", _neg(wonly("rules-within", "RAFT++", "mean")), 3),
    *q(R, "rule: -{0.020} to -0.109 on 10 of 11 rows", "study2", _neg(same("chains", "GRPO", "gvm", "mean")), 3),
    *q(R, "rule: -0.020 to -{0.109} on 10 of 11 rows", "study2", _neg(same("rules", "RAFT++", "gvm", "mean")), 3),
    *q(R, "rule: -0.020 to -0.109 on {10} of 11 rows", "study2",
       lambda d: sum(r["gvm"]["vs_uniform_same_weighting"]["mean"] < 0 for k, t in d["tasks"].items() if k != "synthetic"
                     for r in t["by_algorithm"].values() if "vs_uniform_same_weighting" in r.get("gvm", {})), 0),
    *q(R, "the paper's rule +{0.050} ± 0.024\n  over uniform, 3 seeds", "map", _map_same("6/8 extreme, ~12 epochs", "gvm", "mean"), 3),
    *q(R, "the paper's rule +0.050 ± {0.024}\n  over uniform, 3 seeds", "map", _map_same("6/8 extreme, ~12 epochs", "gvm", "se"), 3),
    *q(R, "+0.050 ± 0.024\n  over uniform, {3} seeds", "map", lambda d: len(d["seeds"]), 0),
    *q(R, "one pass over fresh prompts (+{0.025} ± 0.005, 2 of 8", "map", _map_same("2/8 extreme, 1 pass", "gvm_robust", "mean"), 3),
    *q(R, "one pass over fresh prompts (+0.025 ± {0.005}, 2 of 8", "map", _map_same("2/8 extreme, 1 pass", "gvm_robust", "se"), 3),
    # ---- README.md: the M-step weighting on exact models (weighting_variance.py)
    *q(R, "prompt i's samples by 1/(n_i p_i)\n  ({0.966}x uniform's)", "weighting", wv(4, "gvm", "lemma1"), 3),
    *q(R, "under the official code's token mean it *raises* it ({1.455}x)", "weighting", wv(4, "gvm", "tokens"), 3),
    *q(R, "`acceptance_only` beats\n  `gvm` ({0.847}x)", "weighting", wv(4, "acceptance_only", "lemma1"), 3),
    *q(R, "reaches the exact minimum ({0.573}x)", "weighting", wv(4, "lemma1_bound", "lemma1"), 3),
    # ---- bench/README.md: the M-step weighting on exact models (weighting_variance.py)
    *_wv_rows(),
    *q(BENCH, "raises the error**: {1.455}x and", "weighting", wv(4, "gvm", "tokens"), 3),
    *q(BENCH, "1.455x and\n  {1.255}x uniform's (4 and 8", "weighting", wv(8, "gvm", "tokens"), 3),
    *q(BENCH, "under 1/|D_i| {1.139}x and 1.094x", "weighting", wv(4, "gvm", "prompt"), 3),
    *q(BENCH, "under 1/|D_i| 1.139x and {1.094}x", "weighting", wv(8, "gvm", "prompt"), 3),
    *q(BENCH, "below uniform ({0.966}x and 0.970x)", "weighting", wv(4, "gvm", "lemma1"), 3),
    *q(BENCH, "below uniform (0.966x and {0.970}x)", "weighting", wv(8, "gvm", "lemma1"), 3),
    *q(BENCH, "estimator has {8.0}x the token mean's error", "weighting", wv(4, "uniform", "lemma1", "vs_uniform_tokens"), 1),
    *q(BENCH, "and 1/|D_i|\n  {0.62}x (4 per prompt)", "weighting", wv(4, "uniform", "prompt", "vs_uniform_tokens"), 2),
    *q(BENCH, "`acceptance_only` ({0.847}) beats", "weighting", wv(4, "acceptance_only", "lemma1"), 3),
    *q(BENCH, "beats `gvm` ({0.966}) under Lemma 1", "weighting", wv(4, "gvm", "lemma1"), 3),
    *q(BENCH, "{0.573} against 0.573. The", "weighting", wv(4, "lemma1_bound", "lemma1"), 3),
    *q(BENCH, "0.573 against {0.573}. The", "weighting", wv(4, "exact_neyman", "lemma1"), 3),
]


# ---------------------------------------------------------------------------------------------- tests

def _id(qt: Quote) -> str:
    return f"{qt.doc}:{qt.text[:60]}"


@pytest.mark.parametrize("doc", sorted({qt.doc for qt in QUOTES}))
def test_quoted_numbers_match_their_sources(doc):
    """Every quote of one document; all mismatches are reported at once."""
    errors = []
    for quote in (qt for qt in QUOTES if qt.doc == doc):
        try:
            check(quote)
        except AssertionError as e:
            errors.append(str(e).split("\nassert")[0])
    assert not errors, f"{len(errors)} quoted numbers disagree with their source:\n" + "\n".join(errors)


def test_every_source_is_quoted_and_exists():
    assert {qt.source for qt in QUOTES} == set(SOURCES)
    for name in SOURCES:
        assert load_source(name)


def _mutate(number: str) -> str:
    """Change the last digit of a printed number (a planted typo)."""
    i = max(i for i, ch in enumerate(number) if ch.isdigit())
    return number[:i] + str((int(number[i]) + 1) % 10) + number[i + 1:]


@pytest.mark.parametrize("quote", [QUOTES[1], *(next(qt for qt in QUOTES if qt.source == s) for s in SOURCES if s != "demo")],
                         ids=_id)
def test_a_planted_mismatch_fails(quote):
    """One digit changed in a copy of the document: the quote is no longer found; the same digit changed in the
    quote as well: the number no longer matches its source."""
    doc = document(quote.doc)
    wrong = replace(quote, text=quote.text.replace("{" + quote.number + "}", "{" + _mutate(quote.number) + "}"))
    assert _norm(quote.plain) in _norm(doc)
    planted = _norm(doc).replace(_norm(quote.plain), _norm(wrong.plain))
    check(quote, doc)  # the real document passes
    with pytest.raises(AssertionError, match="not found"):
        check(quote, planted)
    with pytest.raises(AssertionError, match="gives"):
        check(wrong, planted)


def test_a_flipped_sign_fails():
    """The sign of a paired difference is checked: the study's first row with '-0.120' printed '+0.120' still reads
    0.120 but no longer matches allocation_study.json's -0.120; the real row passes."""
    task, alg, text = STUDY_ROWS[0]
    flipped = text.replace("| -0.120 ", "| +0.120 ")
    assert flipped != text
    for quote in _study_row(task, alg, text):
        check(quote)
    errors = []
    for quote in _study_row(task, alg, flipped):
        try:
            check(quote, flipped)
        except AssertionError as e:
            errors.append(str(e))
    assert len(errors) == 1 and "gives -0.12" in errors[0], errors


def test_rounding_rule():
    d = {"methods": {"x": {"v": 0.2625}}}
    SOURCES["_test"] = lambda: d
    try:
        load_source.cache_clear()
        ok = Quote("-", "a {0.263} b", "_test", arm("x", "v"), 3)  # half a unit away: accepted
        check(ok, "a 0.263 b")
        with pytest.raises(AssertionError, match="gives"):
            check(replace(ok, text="a {0.264} b"), "a 0.264 b")
        with pytest.raises(AssertionError, match="decimals"):
            check(replace(ok, text="a {0.26} b"), "a 0.26 b")
    finally:
        del SOURCES["_test"]
        load_source.cache_clear()
