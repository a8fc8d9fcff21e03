"""Notebooks 03 (one GVM iteration on the tiny LM) and 04 (the single-GPU recipe, and the course's end) as a reader
meets them: each holds an implement-it exercise whose check cell asserts the reader's function against gvm_mini,
runs on the reference solution while the stub raises NotImplementedError, and fails on a wrong answer; notebook 03
judges Eq. 7 at held-out estimates as well as at the pilot's own; notebook 04 ends with what the studies found, read
from the results files, with the allocation, the M-step weighting and the update count apart.

Cheap: reads the stored notebooks and runs only the exercise check cells on small inputs (no model is loaded);
tests/test_notebooks.py executes the notebooks.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
torch = pytest.importorskip("torch")

from gvm_mini import allocation as A  # noqa: E402
from gvm_mini import losses  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
NB03 = ROOT / "notebooks" / "03_tiny_lm.ipynb"
NB04 = ROOT / "notebooks" / "04_single_gpu.ipynb"
STUB = re.compile(r"^def (my_\w+)\(.*?raise NotImplementedError\s+# your code here", re.M | re.S)

# (notebook, the reader's function, a wrong answer for it)
EXERCISES = [
    (NB03, "my_raftpp_loss",  # no clipping: the third token of the 3-token example is not capped at 1 + eps_high
     lambda logp, old_logp, accepted, mask, epsilon=0.2, epsilon_high=0.28:
     -(torch.exp(logp - old_logp) * accepted.float()[:, None] * mask).sum() / mask.sum()),
    (NB03, "my_grpo_advantage",  # the biased std (ddof 0) instead of torch.std's unbiased one
     lambda rewards, eps=1e-6: (np.asarray(rewards, float) - np.mean(rewards)) / (np.std(rewards) + eps)),
    (NB04, "my_allocate",  # rounds to nearest instead of largest remainder: the sum is not the budget
     lambda p, G, budget, alpha=1e-3, beta=2.0, max_per_prompt=None:
     np.rint(A.continuous_allocation(p, G, budget, alpha=alpha, beta=beta, max_per_prompt=max_per_prompt)).astype(int)),
]
IDS = [f"{nb.stem[:2]}-{fn}" for nb, fn, _ in EXERCISES]


def _nb(path):
    return nbformat.read(path, as_version=4)


def _code(nb):
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _exercise_cells(nb, fn: str):
    """(stub, solution, check) cell indices of the exercise whose stub defines ``fn``."""
    code = _code(nb)
    stub = [i for i, c in code if STUB.search(c.source) and STUB.search(c.source).group(1) == fn]
    assert len(stub) == 1, f"no single stub cell defining {fn} with `raise NotImplementedError  # your code here`"
    checks = [i for i, c in code if i > stub[0] and f"{fn})" in c.source and "except NotImplementedError" in c.source]
    assert checks, f"no check cell after the stub of {fn}"
    hidden = [i for i, c in code if stub[0] < i < checks[0] and c.metadata.get("jupyter", {}).get("source_hidden")]
    assert len(hidden) == 1, f"{fn}: one collapsed solution cell between the stub and the check, found {hidden}"
    return stub[0], hidden[0], checks[0]


def _namespace():
    """What the check cells use from the notebooks' first cells, with stand-in estimates for notebook 04's §4."""
    return {"np": np, "torch": torch, "A": A, "losses": losses, "p": np.array([0.0, 0.25, 0.25, 0.5]),
            "G": np.array([0.0, 91.3, 199.7, 261.7]), "budget": 8}


@pytest.mark.parametrize("path,fn,wrong", EXERCISES, ids=IDS)
def test_exercise_is_stub_solution_check_and_asserts_against_gvm_mini(path, fn, wrong):
    nb = _nb(path)
    stub, solution, check = _exercise_cells(nb, fn)
    src = nb.cells[check].source
    assert re.search(r"\b(losses|A)\.\w+\(", src), f"{fn}: the check cell calls no gvm_mini function"
    assert re.search(r"assert_(allclose|close|array_equal)", src), f"{fn}: the check cell asserts nothing"
    defined = re.findall(r"^def (\w+)", nb.cells[solution].source, re.M)
    assert defined and all(sum(f"def {d}(" in c.source for _, c in _code(nb)) == 1 for d in defined), \
        f"{fn}: the solution is defined outside its collapsed cell"
    out = "".join(o.get("text", "") for o in nb.cells[check].outputs)
    assert not any(o.output_type == "error" for o in nb.cells[check].outputs), f"{fn}: the stored check cell failed"
    assert "not attempted yet" in out and "reference solution passes" in out, f"{fn}: stored check output {out!r}"


@pytest.mark.parametrize("path,fn,wrong", EXERCISES, ids=IDS)
def test_check_cell_passes_the_solution_and_fails_a_wrong_answer(path, fn, wrong, capsys):
    nb = _nb(path)
    stub, solution, check = _exercise_cells(nb, fn)
    ns = _namespace()
    exec(nb.cells[stub].source, ns)
    exec(nb.cells[solution].source, ns)
    exec(nb.cells[check].source, ns)  # the stub raises NotImplementedError: the check runs on the solution
    assert "not attempted yet" in capsys.readouterr().out
    ns[fn] = ns[re.findall(r"^def (\w+)", nb.cells[solution].source, re.M)[0]]  # a reader who wrote the solution
    exec(nb.cells[check].source, ns)
    assert "not attempted" not in capsys.readouterr().out
    ns[fn] = wrong
    with pytest.raises(AssertionError):
        exec(nb.cells[check].source, ns)


def test_notebook03_judges_eq7_at_held_out_estimates():
    """The allocation minimises Eq. 7 at the pilot's own estimates by construction: 03 also evaluates it at an
    independent pilot's, and says so in the text."""
    nb = _nb(NB03)
    held = [c for _, c in _code(nb) if "variance_objective(n_gvm, ph, Gh)" in c.source]
    assert held, "no cell evaluates GVM's allocation with held-out estimates"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "partly automatic" in text and "held-out" in text


def test_notebook04_ends_with_what_the_studies_found():
    """The last section reads the studies' results files (nothing typed in), separates the three factors and lists
    the tasks it skipped."""
    nb = _nb(NB04)
    heads = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## ")]
    last = nb.cells[heads[-1]].source
    assert "What the studies found" in last, f"the last section is {last.splitlines()[0]!r}"
    code = "\n".join(c.source for c in nb.cells[heads[-1]:] if c.cell_type == "code")
    for key in ("allocation_study.json", "vs_uniform_same_weighting", "weighting_only", "paper_updates.json", "skipped"):
        assert key in code, f"the studies' cell does not use {key!r}"
    out = "".join(o.get("text", "") for c in nb.cells[heads[-1]:] if c.cell_type == "code" for o in c.outputs)
    study = json.loads((ROOT / "bench" / "results" / "allocation_study.json").read_text())
    skipped = [t for t, tv in study["tasks"].items()
               if not any("vs_uniform_same_weighting" in r for rows in tv["by_algorithm"].values() for r in rows.values())]
    assert "below its baseline" in out and ("skipped:" in out) == bool(skipped), skipped
