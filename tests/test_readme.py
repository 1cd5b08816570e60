"""README.md and docs/ keep their promises: both quick-start commands, every setting, live links."""
from __future__ import annotations

import re
from dataclasses import fields

from core.config import Settings
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
SETTINGS_DOC = (ROOT / "docs" / "settings.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f.name.upper() for f in fields(Settings) if f"`{f.name.upper()}`" not in SETTINGS_DOC]
    assert missing == [], f"add these to the table in docs/settings.md: {missing}"


def test_quick_start_shows_both_commands() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "./scripts/up" in quick_start and "./scripts/test" in quick_start


def test_readme_links_point_at_files_that_exist() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links, "README links to the docs"
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert missing == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    unlinked = [page for page in pages if f"({page})" not in README]
    assert unlinked == [], f"link these from README's Documentation table: {unlinked}"
