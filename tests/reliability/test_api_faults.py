"""Issue 7 item 2, the API's side (quick profile): Redis killed, restarted and frozen under probes."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.api_faults import run
from tests.reliability.report import assert_passed

pytestmark = pytest.mark.integration


def test_api_answers_503_fast_while_redis_is_down_or_frozen(tmp_path: Path) -> None:
    report = run("quick", tmp_path)
    assert_passed(report)
    assert report.value("500 answers, whole run") == 0
    for phase in ("down 5 s", "frozen 10 s"):
        assert report.value(f"{phase}: answers other than 503 (401 for no-key)") == {}
        assert report.value(f"{phase}: requests hung > 5 s") == 0
        # Enough probing to mean something: six threads, each at least a few requests a second.
        assert report.value(f"{phase}: requests") >= 60, phase
        assert report.value(f"{phase}: 503 answers") >= 30, phase
    assert report.value("baseline: requests") >= 30
    assert 0 <= report.value("after down 5 s: Redis back -> first 202 submission") <= 5
    assert 0 <= report.value("after freeze: SIGCONT -> first 202 submission") <= 5
