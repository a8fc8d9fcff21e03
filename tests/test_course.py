"""The course (notebooks/*.ipynb and theory/*.md) as a reader meets it: no control characters in the theory pages, no
talk about the machine that ran a notebook and no stray warnings in the stored outputs, repository files found from
the notebook's own location, one reading order, Proposition 1 checked against a numerical minimiser in notebook 01,
and exercises whose check cells assert the reader's code against gvm_mini.

Cheap: reads the stored notebooks, executes nothing (tests/test_notebooks.py executes them).
"""

from __future__ import annotations

import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
THEORY = sorted((ROOT / "theory").glob("*.md"))
NB_IDS = [p.name for p in NOTEBOOKS]

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# talk about the machine a notebook ran on: core counts, a shared CPU, kernel or platform strings
MACHINE_TALK = [
    re.compile(r"\b\d+-core\b", re.I),
    re.compile(r"\bshared\b[^.\n]{0,40}\b(cpu|machine|core|host|server|vm|computer)s?\b", re.I),
    re.compile(r"\b(cpu|machine|host|server|vm)s?\b[^.\n]{0,15}\bshared\b", re.I),
    re.compile(r"\bthis machine\b", re.I),
    re.compile(r"records no machine", re.I),
    re.compile(r"glibc|x86_64-with|Linux-\d", re.I),
]
OUTSIDE = re.compile(r"\.\./shared|/work/|/home/\w+/")


def _nb(path):
    return nbformat.read(path, as_version=4)


def _texts(nb):
    """(where, text) for every source and every textual output (image data left out)."""
    for i, c in enumerate(nb.cells):
        yield f"cell {i} source", c.source
        for o in c.get("outputs", []):
            if o.output_type == "stream":
                yield f"cell {i} {o.name}", o.text
            elif o.output_type in ("execute_result", "display_data"):
                for mime, data in o.get("data", {}).items():
                    if mime.startswith("text/"):
                        yield f"cell {i} {mime}", data if isinstance(data, str) else "".join(data)
            elif o.output_type == "error":
                yield f"cell {i} error", "\n".join(o.get("traceback", []))


def _gvm_aliases(nb) -> set[str]:
    """Names bound to gvm_mini or its modules by the notebook's imports (``from gvm_mini import allocation as A``)."""
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    names = {"gvm_mini"}
    for frm in re.findall(r"^\s*from\s+gvm_mini(?:\.\w+)*\s+import\s+(.+)$", src, re.M):
        for part in frm.strip("() ").split(","):
            names.add(part.split(" as ")[-1].strip())
    for mod, alias in re.findall(r"^\s*import\s+gvm_mini\.(\w+)(?:\s+as\s+(\w+))?", src, re.M):
        names.add(alias or mod)
    return names - {""}


# ------------------------------------------------------------------------------------------ theory/

@pytest.mark.parametrize("path", THEORY, ids=[p.name for p in THEORY])
def test_theory_page_has_no_control_characters(path):
    bad = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if CONTROL.search(line)]
    assert not bad, f"{path.name}: control characters (a backslash eaten by a string escape?) on lines {[n for n, _ in bad]}"


def test_control_character_check_catches_an_eaten_backslash():
    assert CONTROL.search("=\bigl(1-p\bigr)")  # "\b" of "\bigl" written through a Python string: a backspace
    assert CONTROL.search("\approx")  # "\a" of "\approx": a bell
    assert not CONTROL.search(r"=\bigl(1-p\bigr),\ \approx")


@pytest.mark.parametrize("path", THEORY, ids=[p.name for p in THEORY])
def test_theory_page_is_the_projects_own_text(path):
    text = path.read_text(encoding="utf-8")
    for pattern in (r"\bthe brief\b", r"\bI did not\b", r"\bavailable to\s+me\b", r"\bI could\b", r"not implemented here"):
        assert not re.search(pattern, text), f"{path.name}: {pattern!r} (write the project's own statement)"
    assert not OUTSIDE.search(text), f"{path.name} cites a file outside the repository"


def test_theory_reading_order_follows_the_notebooks():
    """theory/README.md's reading order visits notebooks 01, 02, 03, 04 in that order, never going back."""
    text = (ROOT / "theory" / "README.md").read_text(encoding="utf-8")
    order = text[text.index("## Reading order"):]
    seen = [int(n) for n in re.findall(r"notebook (0\d)", order)]
    assert seen and seen == sorted(seen), f"reading order jumps between notebooks: {seen}"
    assert set(seen) == {1, 2, 3, 4}


# ------------------------------------------------------------------------------------------ notebooks

@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_does_not_talk_about_the_machine(path):
    hits = [(where, pat.pattern) for where, text in _texts(_nb(path)) for pat in MACHINE_TALK if pat.search(text)]
    assert not hits, f"{path.name}: machine talk in {hits}"


def test_machine_talk_patterns():
    for text in ("about 20 s on a 2-core CPU", "the project's shared 2-core CPU", "on a shared machine",
                 "Linux-6.18.44-fc-v857-x86_64-with-glibc2.36", "that file records no machine"):
        assert any(p.search(text) for p in MACHINE_TALK), text
    for text in ("prompts share one GRPO group", "shared prompts are not re-encoded", "runs in seconds on a laptop CPU"):
        assert not any(p.search(text) for p in MACHINE_TALK), text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_outputs_hold_no_warnings(path):
    warned = [i for i, c in enumerate(_nb(path).cells) for o in c.get("outputs", [])
              if o.output_type == "stream" and o.name == "stderr" and re.search(r"warn", o.text, re.I)]
    assert not warned, f"{path.name}: a warning in the stored output of cells {warned}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_finds_repository_files_from_its_own_location(path):
    nb = _nb(path)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "__file__" not in code, (f"{path.name}: repository files found through a module's __file__; search upward "
                                    "from the notebook's folder (pathlib.Path.cwd()) instead")
    assert not any(OUTSIDE.search(text) for _, text in _texts(nb)), f"{path.name} cites a file outside the repository"


def test_notebook01_checks_proposition1_against_a_numerical_minimiser():
    nb = _nb(ROOT / "notebooks" / "01_allocation.ipynb")
    cells = [c for c in nb.cells if c.cell_type == "code" and "minimize(" in c.source
             and "continuous_allocation" in c.source]
    assert cells, "notebook 01 has no cell comparing Proposition 1's closed form with a numerical minimiser of Eq. 7"
    out = "".join(o.text for o in cells[0].outputs if o.output_type == "stream")
    diffs = [float(m) for m in re.findall(r"^\S.*?\s(\d\.\d+e[-+]\d+)\s", out, re.M)]
    assert len(diffs) >= 3, out
    assert max(diffs) < 1e-4, f"closed form and numerical minimiser differ by up to {max(diffs)} samples"


@pytest.mark.parametrize("name", ["01_allocation.ipynb", "02_synthetic_em.ipynb"])
def test_notebook_has_an_implement_it_exercise_checked_against_gvm_mini(name):
    """A stub that raises NotImplementedError, a collapsed solution defined before the check, and a check cell that
    asserts the reader's function (or, not attempted yet, the solution) against a gvm_mini function."""
    nb = _nb(ROOT / "notebooks" / name)
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    aliases = _gvm_aliases(nb)
    stubs = [i for i, c in code if re.search(r"raise NotImplementedError\s+# your code here", c.source)]
    checks = [i for i, c in code if "except NotImplementedError" in c.source and "assert_allclose" in c.source
              and any(re.search(rf"\b{re.escape(a)}\.\w", c.source) for a in aliases)]
    hidden = [i for i, c in code if c.metadata.get("jupyter", {}).get("source_hidden")]
    assert stubs, f"{name}: no exercise stub (`raise NotImplementedError  # your code here`)"
    assert checks, f"{name}: no check cell asserting against gvm_mini"
    assert hidden, f"{name}: no collapsed solution cell"
    assert min(stubs) < min(checks) and any(h < min(checks) for h in hidden), f"{name}: stub, solution, check out of order"
    check = nb.cells[min(checks)]
    out = "".join(o.get("text", "") for o in check.outputs)
    assert not any(o.output_type == "error" for o in check.outputs), f"{name}: the stored check cell failed"
    assert "not attempted yet" in out and "reference solution" in out, f"{name}: the stored check shows no result: {out!r}"
    for i in hidden:  # the solution is kept apart: defined only in the hidden cell
        fn = re.findall(r"^def (\w+)", nb.cells[i].source, re.M)
        assert fn and all(sum(f"def {f}(" in c.source for _, c in code) == 1 for f in fn)
