"""Item 2, quick profile: Redis SIGKILLed (AOF), down 5 s mid-batch, and lost without persistence."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import redis_faults
from tests.reliability.report import assert_passed

pytestmark = pytest.mark.integration


def test_redis_crash_outage_and_reconcile_lose_nothing(tmp_path: Path) -> None:
    report = redis_faults.run("quick", tmp_path)
    assert_passed(report)
    assert report.value("crash: accepted submissions whose job Redis lost") == 0
    assert report.value("Redis down 5 s: API answers other than 503 (5xx or no answer)") == 0
    assert report.value("reconcile: single jobs queued again") == redis_faults.PROFILES["quick"]["lost_singles"]
    assert report.value("no persistence: records completed") > 0
