"""Database access for vendors, API keys, records and batches, on MySQL/MariaDB or SQLite.

Used by both the web tier and the rq workers, so it imports only the stdlib (and
mysql.connector, lazily). Every method runs through ``Database._run``, which opens the
connection lazily, reopens it after a fork (rq forks a work-horse per job, Gunicorn forks
workers), reconnects once when the connection was lost, and turns driver errors into
``DatabaseUnavailable`` (transient). SQL is written once with ``?`` placeholders; the
dialect objects translate placeholders, upserts, DDL types and error classification.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from core.db.batches import BATCH_TABLES, BatchRecords
from core.errors import DATABASE_UNAVAILABLE, RECORD_TOO_LARGE, PermanentJobError, TransientJobError

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 3  # 2: vendors.webhook_secret, batches.callback_url; 3: data_records.job_payload
CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_TIMEOUT_MS = 5000

# Columns a job may write with update_record; identity, ownership and timestamps are not.
UPDATABLE_COLUMNS = frozenset({
    "processing_status", "job_kind", "source_url", "output_url", "face_detected", "face_count",
    "face_box", "output_width", "output_height", "error_code", "error_message", "attempts",
    "completed_at",
})
_RESULT_COLUMNS = ("output_url", "face_detected", "face_count", "face_box", "output_width",
                   "output_height", "error_code", "error_message", "completed_at")
_TIMESTAMP_COLUMNS = ("created_at", "updated_at", "completed_at", "revoked_at")

# Logical schema; {autoinc}, {ts} and {bool} are filled in by the dialect.
_TABLES: list[tuple[str, list[str], list[tuple[str, str]]]] = [
    ("schema_version", ["version INT NOT NULL PRIMARY KEY", "applied_at {ts} NOT NULL"], []),
    ("vendors", [
        "id VARCHAR(64) NOT NULL PRIMARY KEY", "name VARCHAR(255) NOT NULL",
        "created_at {ts} NOT NULL", "settings_json TEXT NULL",
    ], []),
    ("api_keys", [
        "id {autoinc}", "vendor_id VARCHAR(64) NOT NULL", "key_prefix VARCHAR(16) NOT NULL",
        # sha256 hex of the key. Keys are 32-byte random tokens, so a fast unsalted hash is
        # right: there is nothing to brute-force, and lookups by hash stay one index probe.
        "key_hash CHAR(64) NOT NULL UNIQUE", "created_at {ts} NOT NULL", "revoked_at {ts} NULL",
        "FOREIGN KEY (vendor_id) REFERENCES vendors (id)",
    ], [("ix_api_keys_vendor", "vendor_id")]),
    ("data_records", [
        "id {autoinc}", "vendor_id VARCHAR(64) NOT NULL", "project_id VARCHAR(128) NOT NULL",
        "record_id VARCHAR(128) NOT NULL", "processing_status VARCHAR(16) NOT NULL",
        "job_kind VARCHAR(32) NULL", "current_job_id VARCHAR(64) NULL", "source_url TEXT NULL",
        "output_url TEXT NULL", "face_detected {bool} NULL", "face_count INT NULL",
        "face_box TEXT NULL", "output_width INT NULL", "output_height INT NULL",
        "error_code VARCHAR(64) NULL", "error_message TEXT NULL", "attempts INT NOT NULL DEFAULT 0",
        "created_at {ts} NOT NULL", "updated_at {ts} NOT NULL", "completed_at {ts} NULL",
        "UNIQUE (vendor_id, record_id)",
    ], [("ix_records_status", "vendor_id, processing_status"),
        ("ix_records_project", "vendor_id, project_id")]),
]
_TABLES += BATCH_TABLES
# Columns added after their table's first release. CREATE TABLE IF NOT EXISTS never adds a
# column to an existing table, so migrate() adds each one that is missing, on old and new
# databases alike: (table, column, definition).
_ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("vendors", "webhook_secret", "VARCHAR(128) NULL"),  # HMAC key of the vendor's completion webhooks
    ("batches", "callback_url", "TEXT NULL"),  # the batch's completion webhook (README "Clients")
    # The queued job's payload (JSON), so `reconcile` can queue it again when Redis lost it.
    ("data_records", "job_payload", "TEXT NULL"),
]

# Error kinds returned by a dialect's classify().
_LOST, _BUSY, _TOO_LARGE, _INTEGRITY = "lost", "busy", "too_large", "integrity"

# Connections inherited across a fork: never closed (that would send QUIT on the parent's
# socket), only kept referenced so no finaliser touches them in the child.
_ABANDONED: list[Any] = []


class DatabaseUnavailable(TransientJobError):
    """The database cannot be reached, dropped the connection, or timed out on a lock."""

    code = DATABASE_UNAVAILABLE


class _PacketTooLarge(Exception):
    """A statement was bigger than the server's max_allowed_packet (internal)."""


class _Integrity(ValueError):
    """A unique or foreign key constraint refused the write (internal)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _iso(value: Any) -> str | None:
    """A stored UTC timestamp (datetime from MySQL, text from SQLite) as ISO-8601 with Z."""
    if value is None:
        return None
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:  # written by hand in some other shape: show it as stored
        return str(value)
    return when.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _encode(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _size(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else len(str(value))


class _Dialect:
    """What differs between the two databases; the SQL itself lives in Database."""

    name = ""
    types: dict[str, str] = {}
    table_options = ""
    inline_indexes = False
    begin_sql = "BEGIN"
    max_allowed_packet = 0  # the server's setting, read on each connect (MySQL only)
    max_packet = 0  # the largest statement the server accepts, in bytes; 0 = no known limit

    def sql(self, text: str) -> str:
        return text

    def connect(self) -> Any:
        raise NotImplementedError

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions from connect() that mean "cannot reach the database"."""
        raise NotImplementedError

    def classify(self, exc: BaseException) -> str | None:
        raise NotImplementedError

    def inserted(self, column: str) -> str:
        raise NotImplementedError

    def upsert_clause(self, keys: str) -> str:
        raise NotImplementedError

    def create_table(self, table: str, columns: list[str], indexes: list[tuple[str, str]]) -> list[str]:
        body = [c.format(**self.types) for c in columns]
        if self.inline_indexes:
            body += [f"INDEX {name} ({cols})" for name, cols in indexes]
        create = f"CREATE TABLE IF NOT EXISTS {table} (\n  " + ",\n  ".join(body) + "\n)"
        statements = [create + self.table_options]
        if not self.inline_indexes:
            statements += [f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({cols})" for name, cols in indexes]
        return statements

    def describe(self) -> str:
        raise NotImplementedError


class _SQLite(_Dialect):
    name = "sqlite"
    types = {"autoinc": "INTEGER PRIMARY KEY AUTOINCREMENT", "ts": "TEXT", "bool": "INTEGER"}
    begin_sql = "BEGIN IMMEDIATE"  # take the write lock up front: no deadlock on upgrade

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; transactions are explicit (begin_sql).
        # check_same_thread=False: Database serialises access with its own lock.
        conn = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error, OSError)

    def classify(self, exc: BaseException) -> str | None:
        if isinstance(exc, sqlite3.IntegrityError):
            return _INTEGRITY
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            if "locked" in text or "busy" in text:
                return _BUSY
            if "unable to open" in text or "disk i/o" in text:
                return _LOST
        return None

    def inserted(self, column: str) -> str:
        return f"excluded.{column}"

    def upsert_clause(self, keys: str) -> str:
        return f"ON CONFLICT ({keys}) DO UPDATE SET"

    def describe(self) -> str:
        return f"SQLite database {self.path}"


class _MySQL(_Dialect):
    name = "mysql"
    types = {"autoinc": "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY", "ts": "DATETIME(6)", "bool": "BOOLEAN"}
    # utf8mb4_bin: identifiers compare case-sensitively, as they do in SQLite.
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    inline_indexes = True  # MySQL 8 has no CREATE INDEX IF NOT EXISTS
    begin_sql = "START TRANSACTION"
    LOST_ERRNOS = frozenset({2006, 2013, 2055, -1})  # gone away, lost, lost at, not available
    BUSY_ERRNOS = frozenset({1205, 1213})  # lock wait timeout, deadlock
    TOO_LARGE_ERRNO = 1153  # ER_NET_PACKET_TOO_LARGE

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def connect(self) -> Any:
        import mysql.connector
        from mysql.connector.constants import ClientFlag

        # FOUND_ROWS: rowcount counts matched rows, so re-running an identical UPDATE is
        # still seen as "the row is there".
        conn = mysql.connector.connect(
            **self.params, autocommit=True, charset="utf8mb4", time_zone="+00:00",
            connection_timeout=CONNECT_TIMEOUT_S, client_flags=[ClientFlag.FOUND_ROWS],
        )
        cur = conn.cursor()
        # MariaDB accepts packets up to max(max_allowed_packet, net_buffer_length).
        cur.execute("SELECT @@max_allowed_packet, @@net_buffer_length")
        row: Any = cur.fetchone()
        packet, net_buffer = row
        cur.close()
        self.max_allowed_packet = int(packet)
        self.max_packet = max(int(packet), int(net_buffer))
        return conn

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        from mysql.connector import errors

        return (errors.Error, OSError)

    def classify(self, exc: BaseException) -> str | None:
        from mysql.connector import errors

        if not isinstance(exc, errors.Error):
            return None
        if exc.errno == self.TOO_LARGE_ERRNO:
            return _TOO_LARGE
        if exc.errno in self.LOST_ERRNOS:
            return _LOST
        if exc.errno in self.BUSY_ERRNOS:
            return _BUSY
        if isinstance(exc, errors.IntegrityError):
            return _INTEGRITY
        return None

    def inserted(self, column: str) -> str:
        return f"VALUES({column})"

    def upsert_clause(self, keys: str) -> str:
        return "ON DUPLICATE KEY UPDATE"

    def describe(self) -> str:
        p = self.params
        return f"MySQL database {p['database']} at {p['host']}:{p['port']}"


def connect(database_url: str) -> Database:
    """A Database for DATABASE_URL (sqlite:///path or mysql://user:pass@host:port/db); connects lazily."""
    if database_url.startswith("sqlite:///"):
        return Database(_SQLite(database_url[len("sqlite:///"):]))
    parts = urlsplit(database_url)
    if parts.scheme in ("mysql", "mariadb") and parts.path.strip("/"):
        return Database(_MySQL({
            "host": parts.hostname or "127.0.0.1", "port": parts.port or 3306,
            "user": unquote(parts.username or "root"), "password": unquote(parts.password or ""),
            "database": unquote(parts.path.strip("/")),
        }))
    raise ValueError(
        f"DATABASE_URL {parts.scheme}://... is not supported: use sqlite:///path/to/file.sqlite3 "
        "or mysql://user:pass@host:port/dbname"
    )


class Database(BatchRecords):
    """One process's connection to the records database; safe to keep across fork."""

    def __init__(self, dialect: _Dialect) -> None:
        self.dialect = dialect
        self.chunk_halvings = 0  # times update_record halved its chunk size (packet too large)
        self._conn: Any = None
        self._pid = os.getpid()
        self._lock = threading.RLock()

    # --- connection handling -------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._pid != os.getpid():
            # Forked: the inherited connection and lock belong to the parent.
            if self._conn is not None:
                _ABANDONED.append(self._conn)
            self._conn, self._pid, self._lock = None, os.getpid(), threading.RLock()
        with self._lock:
            yield

    def _connection(self) -> Any:
        if self._conn is None:
            try:
                self._conn = self.dialect.connect()
            except self.dialect.driver_errors() as exc:
                raise DatabaseUnavailable(
                    f"cannot connect to the {self.dialect.describe()} ({exc}); "
                    "check DATABASE_URL and that the server is up"
                ) from exc
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # the connection is already broken; nothing to clean up
                pass

    def _execute(self, cur: Any, sql: str, params: Any = (), *, many: bool = False) -> Any:
        """Run one statement (the single point every statement passes through)."""
        if many:
            cur.executemany(self.dialect.sql(sql), params)
        else:
            cur.execute(self.dialect.sql(sql), params)
        return cur

    def _run(self, work: Callable[[Any], T], *, size: int = 0) -> T:
        """Run ``work(cursor)``, reconnecting once if the connection was lost.

        ``size`` is the statement's size in bytes when the caller handles _PacketTooLarge.
        """
        with self._locked():
            for attempt in (1, 2):
                cur = None
                try:
                    cur = self._connection().cursor()
                    return work(cur)
                except DatabaseUnavailable:
                    raise
                except Exception as exc:
                    kind = self.dialect.classify(exc)
                    if kind is None:
                        raise
                    if kind == _INTEGRITY:
                        raise _Integrity(str(exc)) from exc
                    if kind == _LOST and size and self.dialect.max_packet and size > self.dialect.max_packet:
                        kind = _TOO_LARGE  # MySQL may just drop the connection after a too-big packet
                    if kind in (_LOST, _TOO_LARGE):
                        self._discard()
                    if kind == _TOO_LARGE:
                        if size:
                            raise _PacketTooLarge(str(exc)) from exc
                        raise PermanentJobError(f"statement too large for the database: {exc}",
                                                code=RECORD_TOO_LARGE) from exc
                    if kind == _LOST and attempt == 1:
                        log.warning("database connection lost (%s); reconnecting", exc)
                        continue
                    raise DatabaseUnavailable(f"{self.dialect.describe()}: {exc}") from exc
                finally:
                    if cur is not None:
                        try:
                            cur.close()
                        except Exception:  # closing a cursor of a dropped connection
                            pass
        raise AssertionError("unreachable")

    def _transaction(self, work: Callable[[Any], T]) -> T:
        def wrapped(cur: Any) -> T:
            cur.execute(self.dialect.begin_sql)
            try:
                result = work(cur)
            except BaseException:
                try:
                    cur.execute("ROLLBACK")
                except Exception:  # the connection is gone: the server rolled back already
                    pass
                raise
            cur.execute("COMMIT")
            return result
        return self._run(wrapped)

    def _fetch_one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        def work(cur: Any) -> dict[str, Any] | None:
            row = self._execute(cur, sql, params).fetchone()
            return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))
        return self._run(work)

    def _fetch_all(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        def work(cur: Any) -> list[dict[str, Any]]:
            self._execute(cur, sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        return self._run(work)

    def _write(self, sql: str, params: tuple[Any, ...] = (), *, size: int = 0) -> int:
        return int(self._run(lambda cur: self._execute(cur, sql, params).rowcount, size=size))

    def close(self) -> None:
        """Close this process's connection (a later call reopens it)."""
        with self._locked():
            self._discard()

    def ping(self) -> None:
        """Check the database answers; raises DatabaseUnavailable."""
        self._run(lambda cur: self._execute(cur, "SELECT 1").fetchall())

    # --- schema --------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create missing tables and indexes and record the schema version (idempotent)."""
        def work(cur: Any) -> None:
            for table, columns, indexes in _TABLES:
                for statement in self.dialect.create_table(table, columns, indexes):
                    self._execute(cur, statement)
            for table, column, definition in _ADDED_COLUMNS:
                self._add_column(cur, table, column, definition)
            self._execute(cur, "SELECT 1 FROM schema_version WHERE version = ?", (SCHEMA_VERSION,))
            if cur.fetchone() is None:
                try:
                    self._execute(cur, "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                                  (SCHEMA_VERSION, _now()))
                except Exception as exc:  # another process migrated at the same moment
                    if self.dialect.classify(exc) != _INTEGRITY:
                        raise
        self._run(work)

    def _columns(self, cur: Any, table: str) -> set[str]:
        self._execute(cur, f"SELECT * FROM {table} WHERE 1 = 0")
        cur.fetchall()
        return {str(d[0]).lower() for d in cur.description}

    def _add_column(self, cur: Any, table: str, column: str, definition: str) -> None:
        """ALTER TABLE ... ADD COLUMN unless the column exists (idempotent, race-tolerant)."""
        if column in self._columns(cur, table):
            return
        try:
            self._execute(cur, f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        except Exception:
            if column not in self._columns(cur, table):  # not another migrate() adding it meanwhile
                raise
        log.info("schema: added column %s.%s", table, column)

    # --- vendors and API keys ----------------------------------------------------------------
    def create_vendor(self, vendor_id: str, name: str) -> None:
        """Add a vendor; ValueError if the id is taken."""
        try:
            self._write("INSERT INTO vendors (id, name, created_at) VALUES (?, ?, ?)",
                        (vendor_id, name, _now()))
        except _Integrity as exc:
            raise ValueError(f"vendor {vendor_id!r} already exists") from exc

    def get_vendor(self, vendor_id: str) -> dict[str, Any] | None:
        """The vendor's row, or None."""
        row = self._fetch_one("SELECT id, name, created_at, settings_json FROM vendors WHERE id = ?",
                              (vendor_id,))
        if row is not None:
            row["created_at"] = _iso(row["created_at"])
        return row

    def add_api_key(self, vendor_id: str, key_prefix: str, key_hash: str) -> None:
        """Store a key's sha256 hex for a vendor; ValueError for an unknown vendor or duplicate hash."""
        try:
            self._write("INSERT INTO api_keys (vendor_id, key_prefix, key_hash, created_at)"
                        " VALUES (?, ?, ?, ?)", (vendor_id, key_prefix, key_hash, _now()))
        except _Integrity as exc:
            raise ValueError(f"cannot add key for vendor {vendor_id!r}: unknown vendor or duplicate key") \
                from exc

    def vendor_for_key_hash(self, key_hash: str) -> str | None:
        """The vendor owning this unrevoked key hash, or None."""
        row = self._fetch_one("SELECT vendor_id FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                              (key_hash,))
        return None if row is None else str(row["vendor_id"])

    def revoke_api_keys(self, vendor_id: str) -> int:
        """Revoke every active key of the vendor; returns how many were revoked."""
        return self._write("UPDATE api_keys SET revoked_at = ? WHERE vendor_id = ? AND revoked_at IS NULL",
                           (_now(), vendor_id))

    def get_webhook_secret(self, vendor_id: str) -> str | None:
        """The vendor's webhook signing secret (None: unknown vendor or none set)."""
        row = self._fetch_one("SELECT webhook_secret FROM vendors WHERE id = ?", (vendor_id,))
        return None if row is None or not row["webhook_secret"] else str(row["webhook_secret"])

    def set_webhook_secret(self, vendor_id: str, secret: str) -> None:
        """Store (replace) the vendor's webhook signing secret; KeyError for an unknown vendor."""
        if not self._write("UPDATE vendors SET webhook_secret = ? WHERE id = ?", (secret, vendor_id)):
            raise KeyError(vendor_id)

    # --- per-vendor settings (vendors.settings_json) -------------------------------------------
    @staticmethod
    def _vendor_settings(vendor_id: str, text: Any) -> dict[str, Any]:
        try:
            value = json.loads(text) if text else {}
        except ValueError:
            value = None
        if not isinstance(value, dict):
            log.warning("vendor=%s settings_json is not a JSON object; ignoring it", vendor_id)
            return {}
        return value

    def get_vendor_limits(self, vendor_id: str) -> dict[str, str] | None:
        """The vendor's rate-limit overrides ({category: limit string}); None for an unknown vendor."""
        row = self._fetch_one("SELECT settings_json FROM vendors WHERE id = ?", (vendor_id,))
        if row is None:
            return None
        stored = self._vendor_settings(vendor_id, row["settings_json"]).get("rateLimits")
        if not isinstance(stored, dict):
            return {}
        return {str(k): v for k, v in stored.items() if isinstance(v, str)}

    def set_vendor_limits(self, vendor_id: str, changes: dict[str, str | None], *,
                          replace: bool = False) -> dict[str, str]:
        """Merge rate-limit overrides into the vendor's settings (None removes one; ``replace``
        drops the others first); returns the overrides now stored. KeyError for an unknown vendor.

        Other keys of settings_json are kept. The caller validates the limit strings.
        """
        lock = " FOR UPDATE" if self.dialect.name == "mysql" else ""

        def work(cur: Any) -> dict[str, str]:
            row = self._execute(cur, "SELECT settings_json FROM vendors WHERE id = ?" + lock,
                                (vendor_id,)).fetchone()
            if row is None:
                raise KeyError(vendor_id)
            settings = self._vendor_settings(vendor_id, row[0])
            stored = settings.get("rateLimits")
            current: dict[str, str] = {}
            if isinstance(stored, dict) and not replace:
                current = {str(k): v for k, v in stored.items() if isinstance(v, str)}
            for category, value in changes.items():
                if value is None:
                    current.pop(category, None)
                else:
                    current[category] = value
            if current:
                settings["rateLimits"] = current
            else:
                settings.pop("rateLimits", None)
            self._execute(cur, "UPDATE vendors SET settings_json = ? WHERE id = ?",
                          (json.dumps(settings, sort_keys=True) if settings else None, vendor_id))
            return current
        return self._transaction(work)

    # --- records -----------------------------------------------------------------------------
    def _queue_sql(self) -> str:
        d = self.dialect
        copied = ["project_id", "processing_status", "job_kind", "current_job_id", "source_url", "job_payload",
                  "updated_at"]
        sets = [f"{c} = {d.inserted(c)}" for c in copied] + [f"{c} = NULL" for c in _RESULT_COLUMNS]
        return (
            "INSERT INTO data_records (vendor_id, project_id, record_id, processing_status, job_kind,"
            " current_job_id, source_url, job_payload, attempts, created_at, updated_at)"
            " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, 0, ?, ?) "
            f"{d.upsert_clause('vendor_id, record_id')} " + ", ".join(sets + ["attempts = 0"])
        )

    def queue_record(self, vendor_id: str, project_id: str, record_id: str, *,
                     job_id: str, job_kind: str, source_url: str | None,
                     payload: dict[str, Any] | None = None) -> None:
        """Create the record queued for job_id, or reset an existing one to queued for it (one upsert)."""
        self.queue_records(vendor_id, project_id, [(record_id, job_id, source_url)], job_kind=job_kind,
                           payloads=[payload])

    def queue_records(self, vendor_id: str, project_id: str, rows: list[tuple[str, str, str | None]], *,
                      job_kind: str, payloads: list[dict[str, Any] | None] | None = None) -> None:
        """queue_record for many (record_id, job_id, source_url) rows in one transaction.

        ``payloads`` (one per row) are the jobs' payloads, kept so that ``reconcile`` can queue
        a job again after Redis lost it.
        """
        if not rows:
            return
        now = _now()
        texts = [json.dumps(p, sort_keys=True) if p is not None else None for p in (payloads or [None] * len(rows))]
        params = [(vendor_id, project_id, rec, job_kind, job, url, text, now, now)
                  for (rec, job, url), text in zip(rows, texts, strict=True)]
        self._transaction(lambda cur: self._execute(cur, self._queue_sql(), params, many=True))

    def unsettled_records(self, updated_before: str, *, after_id: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        """Records still queued or processing, last changed before ``updated_before``, by id (keyset pages)."""
        return self._fetch_all("SELECT id, vendor_id, record_id, processing_status, job_kind, current_job_id,"
                               " job_payload FROM data_records WHERE processing_status IN ('queued', 'processing')"
                               " AND updated_at < ? AND id > ? ORDER BY id LIMIT ?", (updated_before, after_id, limit))

    def get_record(self, vendor_id: str, record_id: str) -> dict[str, Any] | None:
        """The vendor's record (timestamps ISO-8601, face_box decoded), or None."""
        row = self._fetch_one("SELECT * FROM data_records WHERE vendor_id = ? AND record_id = ?",
                              (vendor_id, record_id))
        if row is None:
            return None
        for column in _TIMESTAMP_COLUMNS:
            if column in row:
                row[column] = _iso(row[column])
        if row["face_detected"] is not None:
            row["face_detected"] = bool(row["face_detected"])
        if row["face_box"] is not None:
            row["face_box"] = json.loads(row["face_box"])
        return row

    def update_record(self, vendor_id: str, record_id: str, fields: dict[str, Any], *,
                      job_id: str | None = None, chunk_fields: int = 10) -> bool:
        """Write absolute field values in UPDATEs of at most chunk_fields columns each.

        With job_id, only while the record still belongs to that job. Returns False when the
        row is missing or owned by another job. Halves the chunk on packet-too-large errors.
        """
        unknown = sorted(set(fields) - UPDATABLE_COLUMNS)
        if unknown:
            raise ValueError(f"not updatable data_records columns: {', '.join(unknown)}")
        items = [(column, _encode(value)) for column, value in fields.items()]
        where, keys = " WHERE vendor_id = ? AND record_id = ?", [vendor_id, record_id]
        if job_id is not None:  # a stale job must not overwrite a newer job's results
            where, keys = where + " AND current_job_id = ?", [*keys, job_id]
        chunk_size, start = max(1, chunk_fields), 0
        while True:  # at least once: with no fields it still touches updated_at and reports the row
            chunk = items[start:start + chunk_size]
            sets = [f"{column} = ?" for column, _ in chunk] + ["updated_at = ?"]
            sql = "UPDATE data_records SET " + ", ".join(sets) + where
            params = (*[value for _, value in chunk], _now(), *keys)
            size = len(sql) + sum(_size(v) for v in params if v is not None)
            try:
                matched = self._write(sql, params, size=size)
            except _PacketTooLarge as exc:
                if len(chunk) == 1:
                    column, value = chunk[0]
                    raise PermanentJobError(
                        f"data_records.{column} of record {vendor_id}/{record_id} is {_size(value)} bytes, "
                        f"too large for one UPDATE under the server's max_allowed_packet "
                        f"({self.dialect.max_allowed_packet} bytes); raise max_allowed_packet "
                        f"on the MySQL server ({exc})", code=RECORD_TOO_LARGE) from exc
                chunk_size = max(1, len(chunk) // 2)
                self.chunk_halvings += 1
                log.warning("vendor %s record %s: UPDATE of %d fields (%d bytes) is over max_allowed_packet "
                            "(%d); retrying in chunks of %d", vendor_id, record_id, len(chunk), size,
                            self.dialect.max_packet, chunk_size)
                continue
            if not matched:
                return False
            start += len(chunk)
            if start >= len(items):
                return True
