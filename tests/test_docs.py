"""The documents the code cites exist: every ``docs/<file>.md, "<section>"`` in the package, the tests,
the benchmarks and the configs names a heading of that file, every relative link of the docs and
the README points at a file, and no comment cites a document outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITING = [*(ROOT / "src" / "cordaseg").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*"),
          *(ROOT / "configs").glob("*.yaml"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
CITATION = re.compile(r"docs/([\w-]+\.md),\s*\"([^\"]+)\"")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def headings(doc: Path) -> set[str]:
    return {line.lstrip("#").strip().strip("`") for line in doc.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def test_every_cited_docs_section_exists():
    missing = []
    for path in CITING:
        if not path.is_file():
            continue
        text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())  # citations may wrap lines
        for name, section in CITATION.findall(text):
            doc = ROOT / "docs" / name
            if not doc.is_file() or section not in headings(doc):
                missing.append(f"{path.relative_to(ROOT)}: docs/{name}, \"{section}\"")
    assert not missing, "\n".join(sorted(set(missing)))


def test_relative_links_of_the_docs_point_at_files():
    broken = []
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "tests" / "reference" / "README.md"]:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)


def test_comments_cite_no_document_outside_the_repository():
    # numbered sections of a specification or numbered issues live outside the repository
    outside = re.compile(r"spec\s+sections?\b|issue\s+[0-9]+|\.\./shared", re.IGNORECASE)
    found = []
    for folder in ("src/cordaseg", "tests", "benchmarks", "configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml", ".md"):
                for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                    if outside.search(line):
                        found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
