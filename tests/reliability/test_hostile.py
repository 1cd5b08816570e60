"""Issue 7 item 5 in CI: the hostile input corpus (quick profile) against a private real stack."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.hostile import run
from tests.reliability.report import assert_passed

pytestmark = pytest.mark.integration


def test_hostile_corpus_gets_4xx_or_clean_failures_and_no_5xx(tmp_path: Path) -> None:
    report = run("quick", tmp_path)
    assert_passed(report)
    # Key figures, asserted directly so that a broken service cannot pass by measuring little.
    assert report.value("inputs tried") >= 900
    assert report.value("5xx answers") == 0
    assert report.value("accepted hostile inputs that did not end in a clean failure") == 0
    assert report.value("connections that reached the loopback canary") == 0
    assert report.value("SSRF submissions that completed") == 0
    assert report.value("accepted jobs followed to the end") >= 100
    assert report.value("accepted batches followed to the end") >= 15
    assert report.value("answers 4xx") >= 500
