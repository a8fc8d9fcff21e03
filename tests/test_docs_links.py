"""The documentation stands alone: every relative Markdown link (and image) in README.md, docs/*.md,
bench/README.md and theory/*.md resolves to a file of this repository; README stays a short front page;
and CI runs the test command README gives."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 12_500


def documents() -> list[Path]:
    docs = [ROOT / "README.md", ROOT / "bench" / "README.md",
            *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "theory").glob("*.md"))]
    return [p for p in docs if p.is_file()]


FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
# [text](target "title") and ![alt](target); the text may hold one level of brackets
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, ...


def link_targets(markdown: str) -> list[str]:
    """Targets of the inline links, images and reference definitions, outside code."""
    text = FENCE.sub("", markdown)
    text = INLINE_CODE.sub(lambda m: "x" * len(m.group(2)) if "](" not in m.group(2) else "", text)
    return INLINE_LINK.findall(text) + REFERENCE_DEF.findall(text)


def broken_links(markdown: str, base: Path, root: Path = ROOT) -> list[str]:
    """The relative targets in ``markdown`` (a file in ``base``) that are not a file inside ``root``."""
    bad = []
    for target in link_targets(markdown):
        if not target or target.startswith("#") or EXTERNAL.match(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (base / path).resolve()
        if not resolved.is_file() or not resolved.is_relative_to(root.resolve()):
            bad.append(target)
    return bad


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_to_repository_files(doc):
    bad = broken_links(doc.read_text(encoding="utf-8"), doc.parent)
    assert not bad, f"{doc.relative_to(ROOT)}: links to nothing in the repository: {bad}"


def test_the_documents_have_links():
    """The scan finds what it should (a regex that matches nothing would pass every file)."""
    found = {str(p.relative_to(ROOT)): link_targets(p.read_text(encoding="utf-8")) for p in documents()}
    assert "docs/demo/curves.png" in found["README.md"]
    assert "docs/demo.md" in found["README.md"]
    assert "results/regime_map.png" in found["bench/README.md"]
    assert "em_view.md" in found["theory/README.md"]
    assert len(documents()) >= 2 + 4 + 8


def test_a_planted_broken_link_fails(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "here.md").write_text("x")
    (repo / "img.png").write_bytes(b"")
    (tmp_path / "outside.md").write_text("x")  # exists, but outside the repository
    md = "\n".join([
        "See [here](docs/here.md#a-section), ![fig](img.png), [site](https://example.org/x.md),",
        "[mail](mailto:a@b.c), [anchor](#top), `[in code](missing-in-code.md)` and",
        "```", "[in a fence](missing-in-fence.md)", "```",
        "[gone](docs/missing.md#x) and ![gone too](missing.png) and [outside](../outside.md)",
        "[ref]: docs/also-missing.md",
    ])
    assert broken_links(md, repo, repo) == ["docs/missing.md#x", "missing.png", "../outside.md", "docs/also-missing.md"]
    assert broken_links("[ok](docs/here.md) ![ok](img.png)", repo, repo) == []


def test_readme_is_a_short_front_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {README_MAX_BYTES})"


def _commands(block: str) -> list[str]:
    """The shell commands of a block, one per && / newline, without pip's and pytest's quiet flags."""
    block = block.replace("\\\n", " ")
    block = re.sub(r"\|\|\s*\{[^}]*\}", "", block)  # error handlers
    out = []
    for part in re.split(r"&&|\n", block):
        words = shlex.split(part, comments=True)
        if not words or words[0] in ("echo", "rc=$?") or words[0].startswith("rc="):
            continue
        words = [w for w in words if w != "-q"]
        if "-p" in words:  # pytest -p no:cacheprovider
            i = words.index("-p")
            del words[i:i + 2]
        out.append(" ".join(words))
    return out


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    shown = [b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "pytest" in b]
    assert len(shown) == 1, "README shows one test command"
    section = re.search(r"# --- README.*?\n(.*?)\n# -{10,}", ci, re.S)
    assert section, ".ci/run marks the README command between '# --- README' and '# ------'"
    assert _commands(section.group(1)) == _commands(shown[0])
