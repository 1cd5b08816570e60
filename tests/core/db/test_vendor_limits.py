"""Vendors' rate-limit overrides in vendors.settings_json, on SQLite and on the real MariaDB."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db.database import Database, connect


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database on each backend with vendors acme and globex."""
    if request.param == "sqlite":
        database = connect(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    else:
        database = connect(request.getfixturevalue("mysql_url"))
        database._run(lambda cur: cur.execute("DROP TABLE IF EXISTS api_keys, vendors"))
    database.migrate()
    for vendor in ("acme", "globex"):
        database.create_vendor(vendor, vendor.title())
    yield database
    database.close()


def stored_settings(db: Database, vendor: str) -> object:
    row = db._fetch_one("SELECT settings_json FROM vendors WHERE id = ?", (vendor,))
    assert row is not None
    return None if row["settings_json"] is None else json.loads(row["settings_json"])


def test_overrides_merge_remove_and_replace(db: Database) -> None:
    assert db.get_vendor_limits("acme") == {}
    assert db.set_vendor_limits("acme", {"bulk": "20/hour", "reads": "1200/minute"}) == \
        {"bulk": "20/hour", "reads": "1200/minute"}
    assert db.set_vendor_limits("acme", {"bulk": "40/hour", "reads": None}) == {"bulk": "40/hour"}
    assert db.get_vendor_limits("acme") == {"bulk": "40/hour"}
    assert db.get_vendor_limits("globex") == {}
    assert db.set_vendor_limits("acme", {"image-processing": "100/15 minutes"}, replace=True) == \
        {"image-processing": "100/15 minutes"}
    assert db.set_vendor_limits("acme", {}, replace=True) == {}
    assert db.get_vendor_limits("acme") == {}
    assert stored_settings(db, "acme") is None


def test_other_settings_of_the_vendor_are_kept(db: Database) -> None:
    db._write("UPDATE vendors SET settings_json = ? WHERE id = ?", ('{"plan": "gold"}', "acme"))
    db.set_vendor_limits("acme", {"bulk": "20/hour"})
    assert stored_settings(db, "acme") == {"plan": "gold", "rateLimits": {"bulk": "20/hour"}}
    db.set_vendor_limits("acme", {"bulk": None})
    assert stored_settings(db, "acme") == {"plan": "gold"}


def test_unknown_vendor(db: Database) -> None:
    assert db.get_vendor_limits("nobody") is None
    with pytest.raises(KeyError):
        db.set_vendor_limits("nobody", {"bulk": "1/hour"})


def test_unreadable_settings_are_ignored_and_replaced(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    db._write("UPDATE vendors SET settings_json = ? WHERE id = ?", ("not json", "acme"))
    assert db.get_vendor_limits("acme") == {}
    assert "settings_json is not a JSON object" in caplog.text
    db._write("UPDATE vendors SET settings_json = ? WHERE id = ?", ('{"rateLimits": {"bulk": 5}}', "acme"))
    assert db.get_vendor_limits("acme") == {}  # not a limit string
    assert db.set_vendor_limits("acme", {"reads": "10/minute"}) == {"reads": "10/minute"}
