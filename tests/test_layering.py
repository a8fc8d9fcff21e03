"""The package's layering: no import cycles, no upward imports, no module reaching into another's
private names (in gvm_mini/, bench/ and the notebooks). A module may import only from lower layers
or its own; the layers are the map a reader can draw (README "Map" and docs/training.md)."""

import ast
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "gvm_mini"

#: bottom to top; a module imports only modules of a lower (or, for the demo package, its own) layer
LAYERS = [
    {"atomic", "allocation", "estimators", "losses", "rewards", "theory", "standins"},  # no gvm_mini imports
    {"synthetic", "data", "gradnorm", "models", "plots"},
    {"rollout", "config"},
    {"evaluate", "rundir", "plan"},
    {"estep", "mstep"},
    {"em"},
    {"verl_export", "demo.task"},
    {"demo.warmstart", "demo.report"},
    {"demo.runner"},
    {"demo"},
    {"cli"},
    {"__main__", ""},  # "" is the package's __init__
]
LAYER = {m: k for k, layer in enumerate(LAYERS) for m in layer}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(imported gvm_mini module, names imported from it) for every import in ``path``, lazy ones included."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("gvm_mini"):
                mod = node.module[len("gvm_mini"):].lstrip(".")
            else:
                continue
            names = [a.name for a in node.names]
            subs = [f"{mod}.{n}".strip(".") for n in names]
            if node.module is None or all(s in LAYER for s in subs):
                out += [(s, []) for s in subs]
            else:
                out.append((mod, names))
        elif isinstance(node, ast.Import):
            out += [(a.name[len("gvm_mini"):].lstrip("."), []) for a in node.names if a.name.startswith("gvm_mini.")]
    return out


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert sorted(set(MODULES) - set(LAYER)) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_and_not_into_private_names(name):
    for mod, names in _imports(MODULES[name]):
        assert mod in LAYER, f"{name} imports unknown module {mod!r}"
        assert mod == name or LAYER[mod] < LAYER[name] or (LAYER[mod] == LAYER[name] and mod.startswith(name + ".")), \
            f"{name} (layer {LAYER[name]}) imports {mod} (layer {LAYER[mod]}): an upward or sideways import"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{name} imports private names {private} from {mod}"


def test_no_import_cycles():
    graph = {n: {m for m, _ in _imports(p) if m != n} for n, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [n, m]))
            if not state.get(m):
                visit(m, stack + [n])
        state[n] = 2

    for n in graph:
        if not state.get(n):
            visit(n, [])


_PRIVATE_ATTR = re.compile(r"\b(em|estep|mstep|models|standins|rollout|rundir|allocation|estimators|losses|rewards|data|"
                           r"config|gradnorm|demo|atomic|plots|plan|evaluate|synthetic|theory)\._[A-Za-z]\w*")
_PRIVATE_FROM = re.compile(r"from gvm_mini(?:\.\w+)* import (?:\([^)]*\)|[^\n]*)")


def _sources():
    for p in sorted((ROOT / "bench").glob("*.py")):
        yield p.name, p.read_text()
    for p in sorted(PKG.rglob("*.py")):
        yield str(p.relative_to(ROOT)), p.read_text()
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(p.read_text())["cells"]
        yield p.name, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("name,src", list(_sources()), ids=[n for n, _ in _sources()])
def test_no_private_names_of_another_module(name, src):
    hits = [m.group(0) for m in _PRIVATE_ATTR.finditer(src)]
    for m in _PRIVATE_FROM.finditer(src):
        hits += [n.strip() for n in re.split(r"[,()\s]+", m.group(0).split(" import ", 1)[1]) if n.strip().startswith("_")]
    assert not hits, f"{name} uses private names of gvm_mini modules: {sorted(set(hits))}"


def test_the_checks_can_fail():
    """The detectors above find a planted private import, a private attribute and an upward import."""
    planted = "from gvm_mini.em import _budget_spent\nfrom . import em\nx = models._TINY\n"
    assert _PRIVATE_ATTR.search(planted).group(0) == "models._TINY"
    assert "_budget_spent" in _PRIVATE_FROM.search(planted).group(0)
    with pytest.raises(AssertionError, match="upward"):
        fake = {"atomic": [("em", ["run"])]}
        for mod, names in fake["atomic"]:
            assert LAYER[mod] < LAYER["atomic"], f"atomic imports {mod}: an upward import"
