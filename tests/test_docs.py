"""The README stays short and every link in it and in docs/ leads to a file that exists."""

from __future__ import annotations

import re

import pytest

from task.constants import REPO_ROOT

DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
#: Markdown links to files of this repository (not web addresses, not anchors only).
LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)")


def test_the_readme_is_short():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", [REPO_ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_link_leads_to_a_file(page):
    broken = [
        target for target in LINK.findall(page.read_text()) if not (page.parent / target).exists()
    ]
    assert not broken, f"{page.name} links to missing files: {broken}"
