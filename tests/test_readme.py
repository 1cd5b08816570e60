"""README.md keeps its promises: every setting documented, both quick-start commands shown."""
from __future__ import annotations

from dataclasses import fields

from core.config import Settings
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [f.name.upper() for f in fields(Settings) if f"`{f.name.upper()}`" not in README]
    assert missing == [], f"add these to README's Settings table: {missing}"


def test_quick_start_shows_both_commands() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "./scripts/up" in quick_start and "./scripts/test" in quick_start
