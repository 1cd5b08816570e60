"""Issue 7, item 3 (quick profile): rembg servers, MariaDB and storage failing while jobs run.

Each test runs one sub-scenario of tests/reliability/dependencies.py on its own private stack
and fails on any missed non-timing target, plus direct asserts on the figures that matter
most, so that a broken service cannot pass on a technicality of the report.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import dependencies
from tests.reliability.report import Report, assert_passed

pytestmark = pytest.mark.integration


def _report() -> Report:
    return Report("dependencies", "quick")


def test_rembg_instance_killed_and_another_hung(tmp_path: Path) -> None:
    report = _report()
    dependencies.run_rembg("quick", tmp_path, report)
    assert_passed(report.done())
    plan = dependencies.Plan.of("quick")
    assert report.value("rembg: jobs completed") == plan.rembg_wave1 + plan.rembg_wave2
    assert report.value("rembg: jobs failed") == 0
    assert report.value("rembg: records without exactly one stored output") == 0
    assert report.value("rembg: removals per instance during the faults")[0] > 0
    assert report.value("rembg: removals by the killed (while dead) and stopped (while frozen) instances") == [0, 0]
    assert all(n >= 1 for n in report.value("rembg: removals per instance after SIGCONT/restart (wave 2)"))


def test_mysql_restarted_mid_batch(tmp_path: Path) -> None:
    report = _report()
    dependencies.run_mysql("quick", tmp_path, report)
    assert_passed(report.done())
    plan = dependencies.Plan.of("quick")
    assert report.value("mysql: batch status") == "completed"
    assert report.value("mysql: batch items completed") == plan.mysql_batch
    assert report.value("mysql: batch items pending/unfinished") == 0
    files, done = report.value("mysql: batch output files vs completed items")
    assert files == done == plan.mysql_batch
    assert report.value("mysql: single crop jobs completed") == plan.mysql_singles


def test_storage_uploads_failing_for_a_while(tmp_path: Path) -> None:
    report = _report()
    dependencies.run_storage("quick", tmp_path, report)
    assert_passed(report.done())
    plan = dependencies.Plan.of("quick")
    assert report.value("storage: jobs completed") == plan.storage_jobs
    assert report.value("storage: jobs that needed a retry") > 0
    assert report.value("storage: records whose output_url is not a stored upload") == 0
    stored, records = report.value("storage: distinct public_ids vs records")
    assert stored == records == plan.storage_jobs
