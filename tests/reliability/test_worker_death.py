"""Item 1, quick profile: random SIGKILLs of busy workers over a batch and single jobs."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import worker_death
from tests.reliability.report import assert_passed

pytestmark = pytest.mark.integration


def test_killed_workers_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    report = worker_death.run("quick", tmp_path)
    assert_passed(report)
    assert report.value("workers killed mid-job") >= 10
    assert report.value("batch images pending") == 0
    assert report.value("records stuck queued/processing") == 0
    assert report.value("single-job records with more than one output") == 0
