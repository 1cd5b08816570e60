"""Issue 7 item 4 (quick profile): sustained single-job submissions against Gunicorn with wrk."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.load import run
from tests.reliability.report import assert_passed

pytestmark = pytest.mark.integration


def test_sustained_submissions_answer_202_and_lose_nothing(tmp_path: Path) -> None:
    report = run("quick", tmp_path)
    assert_passed(report)
    for connections in (8, 32):
        assert report.value(f"c={connections}: 5xx answers") == 0
        assert report.value(f"c={connections}: other non-2xx answers") == {}
        assert not any(report.value(f"c={connections}: socket errors (connect/read/write/timeout)").values())
        # A floor far below what the stack does (~150-200/s here): a hang or a crash loop misses it.
        assert report.value(f"c={connections}: requests") >= 100
    accepted = report.value("202 answers seen by wrk")
    assert accepted >= 200
    assert 0 <= report.value("face-crop jobs in Redis - 202s seen (requests cut off in flight)") <= 80
    queued, jobs = report.value("record rows (queued) == jobs in Redis").split(" == ")
    assert int(queued) == int(jobs) >= accepted
