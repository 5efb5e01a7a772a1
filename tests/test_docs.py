"""Every link into docs/ resolves: the file exists and the #anchor is one of its headings.

Code and the README cite the design documents as ``docs/op.md#gradient``; a renamed heading
would silently break those references, so they are checked here the way GitHub renders them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pmm_kernels.modes import mode_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Markdown links "(target.md#anchor)" and bare citations "docs/<page>.md#<anchor>" in code.
MARKDOWN_LINK = re.compile(r"\]\(([\w./-]*\.md)?#([^)\s]+)\)")
CITATION = re.compile(r"\bdocs/([\w-]+\.md)#([\w-]+)")
SKIP_DIRS = {".git", ".venv", "node_modules", ".pytest_cache", ".hypothesis", "runs"}


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> list[str]:
    """Anchors of the headings of a markdown file, outside fenced code blocks."""
    found, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            found.append(github_slug(match.group(1)))
    return found


def _sources() -> list[Path]:
    return [
        p
        for p in ROOT.rglob("*")
        if p.suffix in (".md", ".py")
        and p.is_file()
        and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)
    ]


def _links() -> list[tuple[Path, Path, str]]:
    """(citing file, target file, anchor) for every docs link in the repository."""
    links = []
    for source in _sources():
        text = source.read_text()
        for name, anchor in CITATION.findall(text):
            links.append((source, DOCS / name, anchor))
        if source.suffix == ".md":
            for target, anchor in MARKDOWN_LINK.findall(text):
                resolved = (source.parent / target).resolve() if target else source
                if resolved.parent == DOCS:
                    links.append((source, resolved, anchor))
    return links


def test_slug_follows_github() -> None:
    assert github_slug("Why the fast weights are exact") == "why-the-fast-weights-are-exact"
    assert github_slug("a_hard_mix") == "a_hard_mix"
    assert github_slug("MixInfo per mode") == "mixinfo-per-mode"
    assert github_slug("Authors' code defects") == "authors-code-defects"


def test_headings_are_unique_per_page() -> None:
    # GitHub appends -1, -2 to repeated headings: such anchors would move when a page changes.
    for page in DOCS.glob("*.md"):
        found = anchors(page)
        assert len(found) == len(set(found)), (page.name, found)


def test_docs_links_resolve() -> None:
    links = _links()
    assert len(links) > 20  # the index and the pages cross-link; an empty scan is a bug here
    broken = [
        f"{src.relative_to(ROOT)} -> {dst.name}#{anchor}"
        for src, dst, anchor in links
        if not dst.is_file() or anchor not in anchors(dst)
    ]
    assert not broken, broken


# The anchors that replace the old "SPEC section N" references in code and README.
@pytest.mark.parametrize(
    "anchor",
    [
        "method.md#network",
        "method.md#diagram",
        "method.md#grad-cam",
        "method.md#why-the-fast-weights-are-exact",
        "method.md#losses",
        "method.md#training-schedule",
        "method.md#test-feature",
        "method.md#authors-code-defects",
        "op.md#a_hard_mix",
        "op.md#inputs",
        "op.md#block-grid",
        "op.md#semantics",
        "op.md#block-scores",
        "op.md#selection",
        "op.md#partner",
        "op.md#copy",
        "op.md#gradient",
        "op.md#mixinfo",
        "op.md#errors",
        "op.md#backends",
        "op.md#choices-the-contract-leaves-open",
        "op.md#feature-mix-family",
        "op.md#modes",
        "op.md#draws",
        "op.md#mixinfo-per-mode",
        "op.md#soft-targets",
        "op.md#layer-geometry",
        "performance.md#paper-shape",
        "performance.md#floor",
        "performance.md#bytes-per-pass",
        "performance.md#authors-op",
        "performance.md#targets",
        "reference-numbers.md#published-results",
        "reference-numbers.md#the-synthetic-demo",
        "datasets.md#layouts",
        "datasets.md#evaluation-protocol",
    ],
)
def test_cited_anchors_exist(anchor: str) -> None:
    page, name = anchor.split("#")
    assert name in anchors(DOCS / page)


def test_readme_mode_table_is_the_mode_table() -> None:
    # The README's table of the family is MODES worded by mode_table(): a mode added, removed or
    # changed without the README fails here, with the table to paste in the message.
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- modes:begin -->\n(.*?)\n<!-- modes:end -->", readme, re.S)
    assert found, "README.md lacks the <!-- modes:begin --> ... <!-- modes:end --> block"
    assert found.group(1) == mode_table(), "replace the README's mode table by:\n" + mode_table()


def _fenced_python(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_readme_tour_runs_as_written() -> None:
    # The README's tour is the first thing a user pastes: run it exactly as printed.
    (tour,) = _fenced_python((ROOT / "README.md").read_text())
    namespace: dict[str, object] = {}
    exec(compile(tour, "README.md (tour)", "exec"), namespace)
    logits = namespace["logits"]
    assert isinstance(logits, torch.Tensor) and logits.shape == (16, 751)
    info = namespace["net"].mix_after_layer4.last_info  # type: ignore[attr-defined]
    assert info is not None and bool(info.mask.any())  # the layer really mixed in the tour
