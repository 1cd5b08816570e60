"""Item 7, quick profile: re-runs after a kill leave one output and one record change; SIGTERM is warm."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import duplicates
from tests.reliability.report import assert_passed

pytestmark = pytest.mark.integration


def test_reruns_do_not_duplicate_and_sigterm_lets_the_job_finish(tmp_path: Path) -> None:
    report = duplicates.run("quick", tmp_path)
    assert_passed(report)
    assert report.value("jobs that ran more than once") == duplicates.PROFILES["quick"]["reruns"]
    assert report.value("record changes to completed beyond one per record") == 0
    assert report.value("stored outputs beyond one per record") == 0
