"""Every documentation reference in the repository resolves.

Code and docs cite reference facts as `docs/<file>.md §N` (or `<file>.md §N`, `<file>.md section N`),
and a bare `§N` continues the citation: in Python it refers to the document the file named last,
in Markdown to the Markdown file itself. Each cited file must exist in the repository and each
cited section must be a numbered heading (`## 5. ...`, `### 5.4 ...`) of it. Relative links in
README.md and docs/*.md must point at existing files.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("src", "tests", "benchmarks", "recipes")

_NUM = r"\d+(?:\.\d+)*"
_SECTION = rf"(?:§\s?|section\s+){_NUM}(?:\s*[-–]\s*{_NUM})?"
# A document name, optionally closing a Markdown link "[x](file.md)", then its section list.
_CITATION = re.compile(
    rf"(?P<file>[\w./-]+\.md)\)?(?P<sections>\s+{_SECTION}(?:\s*(?:,|and)\s*§\s?{_NUM}(?:\s*[-–]\s*{_NUM})?)*)?"
)
_BARE = re.compile(rf"§\s?(?P<first>{_NUM})(?:\s*[-–]\s*(?P<last>{_NUM}))?")
_HEADING = re.compile(rf"^#{{1,6}}\s+(?P<num>{_NUM})\.?(?:\s|$)", re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def numbers(text: str) -> list[str]:
    """The section numbers a citation names ("§1.4-1.7, §3" -> ["1.4", "1.7", "3"])."""
    return re.findall(_NUM, text)


def headings(doc: Path) -> set[str]:
    return {m.group("num") for m in _HEADING.finditer(doc.read_text(encoding="utf-8"))}


def resolve(name: str, source: Path) -> Path | None:
    """The repository file a cited name means: relative to the citing file, then under docs/,
    then from the repository root."""
    for candidate in (source.parent / name, ROOT / "docs" / name, ROOT / name):
        if candidate.is_file() and ROOT in candidate.resolve().parents:
            return candidate
    return None


def code_files() -> list[Path]:
    this = Path(__file__).resolve()  # the checker's own examples are not citations
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if p != this)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def check_file(path: Path) -> list[str]:
    """Every problem with the citations in one file, as 'file:line: message'."""
    text = path.read_text(encoding="utf-8")
    is_code = path.suffix == ".py"
    problems: list[str] = []
    current: Path | None = None if is_code else path  # what a bare § refers to
    cited_spans: list[tuple[int, int]] = []

    def where(offset: int) -> str:
        return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"

    def check_sections(doc: Path, nums: list[str], offset: int) -> None:
        found = headings(doc)
        problems.extend(f"{where(offset)}: {doc.relative_to(ROOT)} has no section {n}" for n in nums if n not in found)

    events = [(m.start(), "cite", m) for m in _CITATION.finditer(text)]
    events += [(m.start(), "bare", m) for m in _BARE.finditer(text)]
    for offset, kind, m in sorted(events, key=lambda e: e[0]):
        if kind == "cite":
            name, sections = m.group("file"), m.group("sections")
            doc = resolve(name, path)
            if sections:
                cited_spans.append((m.start("sections"), m.end("sections")))
            if doc is None:
                if sections or name.startswith("docs/"):  # other names may be plain file names (test data)
                    problems.append(f"{where(offset)}: {name} does not exist in the repository")
                continue
            if sections:
                check_sections(doc, numbers(sections), offset)
            if is_code and doc.parent == ROOT / "docs":
                current = doc
        elif not any(start <= offset < end for start, end in cited_spans):
            if current is None:
                problems.append(f"{where(offset)}: '§{m.group('first')}' cites no document (name docs/<file>.md first)")
                continue
            check_sections(current, [n for n in (m.group("first"), m.group("last")) if n], offset)
    return problems


def check_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    problems = []
    for m in _LINK.finditer(text):
        target = m.group("target").split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # anchors, http:, mailto:, ...
            continue
        if not (path.parent / target).exists():
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{path.relative_to(ROOT)}:{line}: link to missing {target}")
    return problems


@pytest.mark.parametrize("path", code_files() + markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_citations_resolve(path):
    assert check_file(path) == []


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert check_links(path) == []


def test_reference_documents_have_numbered_sections():
    for name in ("architecture.md", "training-reference.md", "checkpoint-formats.md"):
        assert {"1", "2", "3", "4"} <= headings(ROOT / "docs" / name), name


def test_dangling_citations_are_caught(tmp_path, monkeypatch):
    """The checker itself fails on what it must catch: a missing file, a missing section, a bare §
    with no document, a broken link."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## 1. One\n\n### 1.2 Sub\n\nSee §1.2 and [x](gone.md).\n")
    code = tmp_path / "mod.py"
    code.write_text('"""See docs/guide.md §1.2 and §1, docs/guide.md §3, spec-detail.md §5.4, §2 and '
                    'docs/missing.md."""\n')
    loose = tmp_path / "loose.py"
    loose.write_text("# relies on §5.2\n")
    assert check_file(tmp_path / "docs" / "guide.md") == []
    assert check_links(tmp_path / "docs" / "guide.md") == ["docs/guide.md:7: link to missing gone.md"]
    assert check_file(code) == [
        "mod.py:1: docs/guide.md has no section 3",
        "mod.py:1: spec-detail.md does not exist in the repository",
        "mod.py:1: docs/missing.md does not exist in the repository",
    ]
    assert check_file(loose) == ["loose.py:1: '§5.2' cites no document (name docs/<file>.md first)"]
