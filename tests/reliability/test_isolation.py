"""Issue 7 item 6 in CI: vendor B probing vendor A's ids on a private real stack (quick profile)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.isolation import run
from tests.reliability.report import assert_passed

pytestmark = pytest.mark.integration


def test_vendor_b_gets_404_for_every_id_of_vendor_a_and_sees_none_of_its_data(tmp_path: Path) -> None:
    report = run("quick", tmp_path)
    assert_passed(report)
    probes = report.value("probes by vendor B")
    assert probes >= 150
    assert report.value("probes answered as documented (404 ids, 403 vendorId, 405 methods, 401 admin)") == \
        f"{probes}/{probes}"
    assert report.value("B's answers containing any of A's data") == 0
    assert report.value("id probes whose answer differs from a never-existing id's (existence oracle)") == 0
    # The positive control: A reads everything it created, so a service refusing everyone fails.
    ok, tried = report.value("A's own reads answered 200 with A's data (positive control)").split("/")
    assert ok == tried and int(tried) >= 15
