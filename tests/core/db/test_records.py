"""core.db.database: one contract run on SQLite and on the real MariaDB.

The MariaDB tests use a fresh database per module (iq_test_<random>, the mysql_url fixture of
tests/conftest.py, on MYSQL_TEST_URL) and drop it afterwards. When the server is not reachable they
fail, unless IQ_SKIP_MYSQL=1 is set.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.db import engine, records, schema
from core.db.database import Database, DatabaseUnavailable, connect
from core.errors import DATABASE_UNAVAILABLE, RECORD_TOO_LARGE, PermanentJobError, TransientJobError
from tests.conftest import mysql_server_params

TABLES = ("api_keys", "data_records", "batches", "vendors", "schema_version")


def _admin() -> Any:
    """A root connection to the MariaDB server (for SET GLOBAL in the packet tests)."""
    import mysql.connector

    params = mysql_server_params()
    return mysql.connector.connect(autocommit=True, connection_timeout=5, **params)


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> Database:
    if kind == "sqlite":
        database = connect(f"sqlite:///{tmp_path / 'sub' / 'records.sqlite3'}")
    else:
        database = connect(request.getfixturevalue("mysql_url"))
        database._run(lambda cur: cur.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)}"))
    database.migrate()
    return database


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Database]:
    """A migrated, empty database on each backend."""
    database = _open(request.param, request, tmp_path)
    yield database
    database.close()


@pytest.fixture
def mysql_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Database]:
    """A migrated, empty database on MariaDB only."""
    database = _open("mysql", request, tmp_path)
    yield database
    database.close()


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _count(db: Database, table: str) -> int:
    row = db._fetch_one(f"SELECT COUNT(*) AS n FROM {table}", ())
    assert row is not None
    return int(row["n"])


def _spy_updates(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every UPDATE statement db executes."""
    seen: list[str] = []
    real = db._execute

    def spy(cur: Any, sql: str, params: Any = (), **kw: Any) -> Any:
        if sql.startswith("UPDATE"):
            seen.append(sql)
        return real(cur, sql, params, **kw)

    monkeypatch.setattr(db, "_execute", spy)
    return seen


RESULTS: dict[str, Any] = {
    "processing_status": "completed", "job_kind": "face_crop", "source_url": "https://img.example/a.jpg",
    "output_url": "https://cdn.example/out.jpg", "face_detected": True, "face_count": 2,
    "face_box": {"x": 10, "y": 20, "w": 30, "h": 40}, "output_width": 300, "output_height": 400,
    "error_code": "NO_FACE", "error_message": "none found", "attempts": 3,
}


# --- schema, vendors, keys -----------------------------------------------------------------
def test_migrate_is_idempotent(db: Database) -> None:
    db.migrate()
    db.migrate()
    row = db._fetch_one("SELECT version FROM schema_version", ())
    assert row == {"version": schema.SCHEMA_VERSION}
    assert _count(db, "schema_version") == 1
    for table in TABLES:
        assert _count(db, table) >= 0


def test_vendors_and_api_keys(db: Database) -> None:
    db.create_vendor("acme", "Acme Inc")
    with pytest.raises(ValueError, match="already exists"):
        db.create_vendor("acme", "Again")
    vendor = db.get_vendor("acme")
    assert vendor is not None and vendor["id"] == "acme" and vendor["name"] == "Acme Inc"
    assert vendor["created_at"].endswith("Z") and "T" in vendor["created_at"]
    assert vendor["settings_json"] is None
    assert db.get_vendor("nobody") is None
    assert db.get_vendor("ACME") is None  # ids are case-sensitive on both backends

    db.add_api_key("acme", "iq_ab12", _key_hash("k1"))
    db.add_api_key("acme", "iq_cd34", _key_hash("k2"))
    assert db.vendor_for_key_hash(_key_hash("k1")) == "acme"
    assert db.vendor_for_key_hash(_key_hash("unknown")) is None
    with pytest.raises(ValueError):
        db.add_api_key("nobody", "iq_x", _key_hash("k3"))  # foreign key
    with pytest.raises(ValueError):
        db.add_api_key("acme", "iq_x", _key_hash("k1"))  # duplicate hash

    assert db.revoke_api_keys("acme") == 2
    assert db.vendor_for_key_hash(_key_hash("k1")) is None
    assert db.revoke_api_keys("acme") == 0
    db.add_api_key("acme", "iq_ef56", _key_hash("k4"))
    assert db.vendor_for_key_hash(_key_hash("k4")) == "acme"


# --- queueing ----------------------------------------------------------------------------------
def test_queue_record_creates_then_requeues(db: Database) -> None:
    db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url="https://a/1.jpg")
    first = db.get_record("acme", "r1")
    assert first is not None
    assert (first["processing_status"], first["current_job_id"], first["job_kind"], first["attempts"]) == (
        "queued", "j1", "face_crop", 0)
    assert first["created_at"].endswith("Z") and first["completed_at"] is None
    assert db.update_record("acme", "r1", {**RESULTS, "completed_at": "2024-05-01 12:00:00"}, job_id="j1")

    db.queue_record("acme", "p2", "r1", job_id="j2", job_kind="remove_bg", source_url="https://a/2.jpg")
    again = db.get_record("acme", "r1")
    assert again is not None
    assert again["id"] == first["id"] and _count(db, "data_records") == 1
    assert (again["processing_status"], again["current_job_id"], again["job_kind"]) == (
        "queued", "j2", "remove_bg")
    assert (again["project_id"], again["source_url"], again["attempts"]) == ("p2", "https://a/2.jpg", 0)
    for column in records._RESULT_COLUMNS:
        assert again[column] is None, column
    assert again["created_at"] == first["created_at"]


def test_queue_records_bulk(db: Database) -> None:
    db.queue_record("acme", "p1", "r1", job_id="old", job_kind="face_crop", source_url=None)
    db.update_record("acme", "r1", {"processing_status": "failed", "error_code": "NO_FACE"})
    rows = [("r1", "j1", "https://a/1"), ("r2", "j2", "https://a/2"), ("r3", "j3", None)]
    db.queue_records("acme", "p1", rows, job_kind="face_crop")
    db.queue_records("acme", "p1", [], job_kind="face_crop")
    assert _count(db, "data_records") == 3
    for record_id, job_id, url in rows:
        row = db.get_record("acme", record_id)
        assert row is not None
        assert (row["processing_status"], row["current_job_id"], row["source_url"], row["error_code"]) == (
            "queued", job_id, url, None)


def test_vendor_scoping(db: Database) -> None:
    db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url=None)
    assert db.get_record("globex", "r1") is None
    assert db.update_record("globex", "r1", {"processing_status": "failed"}) is False
    assert db.update_record("globex", "r1", {"processing_status": "failed"}, job_id="j1") is False
    row = db.get_record("acme", "r1")
    assert row is not None and row["processing_status"] == "queued"
    # the same record id under another vendor is another row
    db.queue_record("globex", "p9", "r1", job_id="g1", job_kind="remove_bg", source_url=None)
    assert _count(db, "data_records") == 2
    other = db.get_record("globex", "r1")
    assert other is not None and other["id"] != row["id"] and other["current_job_id"] == "g1"


# --- updates ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("chunk", "updates"), [(10, 2), (5, 3), (1, 13), (13, 1)])
def test_update_splits_fields_into_chunks(db: Database, monkeypatch: pytest.MonkeyPatch,
                                          chunk: int, updates: int) -> None:
    db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url=None)
    fields = {**RESULTS, "completed_at": "2024-05-01T12:00:00.250000"}
    assert len(fields) == 13
    seen = _spy_updates(db, monkeypatch)
    assert db.update_record("acme", "r1", fields, job_id="j1", chunk_fields=chunk) is True
    assert len(seen) == updates
    assert all(sql.count("?") <= chunk + 1 + 3 for sql in seen)  # fields + updated_at + where
    row = db.get_record("acme", "r1")
    assert row is not None
    for column, value in RESULTS.items():
        assert row[column] == value, column
    assert row["completed_at"] == "2024-05-01T12:00:00.250000Z"
    assert row["updated_at"] >= row["created_at"]


def test_update_is_repeatable_and_accepts_no_fields(db: Database) -> None:
    db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url=None)
    for _ in range(2):  # a retried job writes the same absolute values again
        assert db.update_record("acme", "r1", {"face_count": 1, "attempts": 1}, job_id="j1") is True
    assert db.update_record("acme", "r1", {}) is True
    assert db.update_record("acme", "missing", {}) is False
    row = db.get_record("acme", "r1")
    assert row is not None and (row["face_count"], row["attempts"]) == (1, 1)


def test_stale_job_cannot_overwrite_newer_job(db: Database) -> None:
    db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url=None)
    db.queue_record("acme", "p1", "r1", job_id="j2", job_kind="face_crop", source_url=None)
    assert db.update_record("acme", "r1", {"processing_status": "completed", "output_url": "old"},
                            job_id="j1") is False
    row = db.get_record("acme", "r1")
    assert row is not None and (row["processing_status"], row["output_url"]) == ("queued", None)
    assert db.update_record("acme", "r1", {"processing_status": "completed", "output_url": "new"},
                            job_id="j2") is True
    row = db.get_record("acme", "r1")
    assert row is not None and (row["processing_status"], row["output_url"]) == ("completed", "new")


@pytest.mark.parametrize("column", ["vendor_id", "record_id", "current_job_id", "id", "bogus",
                                    "attempts = 0 --", "updated_at"])
def test_unknown_or_protected_column_rejected(db: Database, column: str) -> None:
    db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url=None)
    with pytest.raises(ValueError, match="not updatable"):
        db.update_record("acme", "r1", {"face_count": 1, column: "x"})
    row = db.get_record("acme", "r1")
    assert row is not None and row["face_count"] is None  # nothing written


# --- connections -------------------------------------------------------------------------------
def test_pid_change_reopens_without_closing_inherited_connection(db: Database) -> None:
    db.ping()
    inherited = db._conn
    db._pid = -1  # as if this process were a fork of the one that opened the connection
    db.ping()
    assert db._conn is not inherited and db._pid == os.getpid()
    assert engine._ABANDONED[-1] is inherited
    engine._ABANDONED.remove(inherited)
    inherited.close()


def _connection_id(db: Database) -> Any:
    if db.dialect.name == "mysql":
        row = db._fetch_one("SELECT CONNECTION_ID() AS cid", ())
        assert row is not None
        return row["cid"]
    db.ping()  # (re)opens the connection if this process has none of its own yet
    return id(db._conn)


def test_forked_child_uses_its_own_connection(db: Database) -> None:
    db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url=None)
    parent_id = _connection_id(db)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its connection id and write through it, then leave at once
        try:
            os.close(read_fd)
            child_id = _connection_id(db)
            updated = db.update_record("acme", "r1", {"processing_status": "processing"}, job_id="j1")
            os.write(write_fd, f"{child_id}|{updated}|{db._pid == os.getpid()}".encode())
        except BaseException as exc:  # report it to the parent: a child must never return to pytest
            os.write(write_fd, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    assert not report.startswith("child failed"), report
    child_id, ok, pid_updated = report.split("|")
    assert child_id != str(parent_id) and ok == "True" and pid_updated == "True"
    # the parent's connection survived the child's use and exit
    assert _connection_id(db) == parent_id
    row = db.get_record("acme", "r1")
    assert row is not None and row["processing_status"] == "processing"


def test_close_then_reuse(db: Database) -> None:
    db.close()
    db.close()
    db.ping()


def test_mysql_unreachable_is_database_unavailable_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as info:
        connect("mysql://root@127.0.0.1:1/x").ping()
    assert time.monotonic() - started < 5
    assert isinstance(info.value, TransientJobError) and info.value.code == DATABASE_UNAVAILABLE
    assert "DATABASE_URL" in info.value.message


def test_sqlite_unopenable_is_database_unavailable(tmp_path: Any) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    with pytest.raises(DatabaseUnavailable):
        connect(f"sqlite:///{tmp_path / 'plain-file' / 'db.sqlite3'}").ping()


def test_unsupported_url_rejected() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL"):
        connect("postgres://localhost/x")


@pytest.mark.mysql
def test_mysql_lost_connection_reconnects_once(mysql_db: Database) -> None:
    db = mysql_db
    db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url=None)
    victim = _connection_id(db)
    admin = _admin()
    try:
        admin.cursor().execute(f"KILL {int(victim)}")
    finally:
        admin.close()
    assert db.update_record("acme", "r1", {"face_count": 4}) is True
    assert _connection_id(db) != victim
    assert db.chunk_halvings == 0  # a small statement on a dropped connection is not "too large"


# --- MariaDB packet limit ------------------------------------------------------------------------
@pytest.fixture
def tiny_packet(mysql_db: Database) -> Iterator[Database]:
    """A Database used while the server's max_allowed_packet is 1024 (always restored after)."""
    mysql_db.queue_record("acme", "p1", "r1", job_id="j1", job_kind="face_crop", source_url=None)
    admin = _admin()
    cur = admin.cursor()
    cur.execute("SELECT @@GLOBAL.max_allowed_packet")
    original = int(cur.fetchone()[0])
    small = connect(_url_of(mysql_db))
    try:
        # Only new connections see the new value; every reconnect during the test does too.
        cur.execute("SET GLOBAL max_allowed_packet = 1024")
        small.ping()
        yield small
    finally:
        cur.execute(f"SET GLOBAL max_allowed_packet = {original}")
        small.close()
        admin.close()


def _url_of(db: Database) -> str:
    p = db.dialect.params  # type: ignore[attr-defined]
    return f"mysql://{p['user']}:{p['password']}@{p['host']}:{p['port']}/{p['database']}"


@pytest.mark.mysql
def test_packet_too_large_halves_chunks_until_it_fits(tiny_packet: Database, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    small = tiny_packet
    limit = small.dialect.max_packet
    assert small.dialect.max_allowed_packet == 1024
    # MariaDB accepts packets up to max(max_allowed_packet, net_buffer_length) (16 KiB by default)
    assert limit >= 1024
    big = int(limit * 0.55)  # one fits, two do not
    fields: dict[str, Any] = {
        "source_url": "s" * big, "output_url": "o" * big, "face_box": {"pad": "b" * big},
        "error_message": "e" * big, "face_count": 1, "output_width": 300, "output_height": 400,
        "processing_status": "completed",
    }
    seen = _spy_updates(small, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="core.db.database"):
        assert small.update_record("acme", "r1", fields, job_id="j1") is True
    # 8 fields -> 4 -> 2 -> 1: three halvings, then eight one-field UPDATEs succeed
    assert small.chunk_halvings == 3
    halvings = [r for r in caplog.records if "max_allowed_packet" in r.getMessage()]
    assert len(halvings) == 3 and "acme" in halvings[0].getMessage()
    assert len(seen) == 3 + 8
    row = small.get_record("acme", "r1")
    assert row is not None
    for column, value in fields.items():
        assert row[column] == value, column


@pytest.mark.mysql
def test_single_field_over_packet_is_record_too_large(tiny_packet: Database) -> None:
    small = tiny_packet
    huge = "x" * (small.dialect.max_packet + 1000)
    assert small.update_record("acme", "r1", {"face_count": 7}, job_id="j1")
    with pytest.raises(PermanentJobError) as info:
        small.update_record("acme", "r1", {"error_message": huge, "face_count": 8}, job_id="j1")
    assert info.value.code == RECORD_TOO_LARGE
    assert "error_message" in info.value.message and "max_allowed_packet (1024 bytes)" in info.value.message
    # the connection dropped by the server is reopened for the next call
    row = small.get_record("acme", "r1")
    assert row is not None and row["error_message"] is None and row["face_count"] == 7


@pytest.mark.mysql
def test_dropped_connection_after_huge_packet_is_record_too_large(tiny_packet: Database) -> None:
    """The pure-Python client sees the server reset the socket (2055), not 1153, for a huge packet."""
    small = tiny_packet
    small.dialect.params["use_pure"] = True  # type: ignore[attr-defined]
    small.close()  # the next call connects with the pure-Python client
    with pytest.raises(PermanentJobError) as info:
        small.update_record("acme", "r1", {"source_url": "u" * 20_000_000})
    assert info.value.code == RECORD_TOO_LARGE and "source_url" in info.value.message
    driver_error: Any = info.value.__cause__.__cause__ if info.value.__cause__ else None
    assert driver_error.errno in (2006, 2013, 2055)  # lost, not 1153: classified by size
    small.ping()
