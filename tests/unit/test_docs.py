"""The README stays a front page (what it is, quick start, recipes, using a model, the make
targets, links) and every link among the docs leads somewhere: a file that exists and, for
``#anchor`` links, a heading of that name in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README_MAX_LINES = 400
DOCS = [
    REPO / "README.md",
    REPO / "ARCHITECTURE.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "infra").rglob("README.md")),
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; move a topic to docs/"
    )
    text = "\n".join(lines)
    for topic in ("## Quick start", "## Status and risks", "## More"):
        assert topic in text
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", text))
    assert linked == {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}, "a page unlinked"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_leads_somewhere(page: Path):
    text = page.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, "\n".join(broken)
