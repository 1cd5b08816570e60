"""The records database's engine: one connection per process, dialects, and the error contract.

Used by the web tier, the operator tools and the rq workers, so it imports only the stdlib (and
mysql.connector, lazily). Every repository method (vendors.py, records.py, batches.py,
schema.py) runs through ``Engine._run``, which opens the connection lazily, reopens it after a
fork (rq forks a work-horse per job, Gunicorn forks workers), reconnects once when the
connection was lost, and turns driver errors into ``DatabaseUnavailable`` (transient). SQL is
written once with ``?`` placeholders; the dialect objects translate placeholders, upserts, DDL
types and error classification.
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

from core.errors import DATABASE_UNAVAILABLE, RECORD_TOO_LARGE, PermanentJobError, TransientJobError

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_TIMEOUT_MS = 5000

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


class Engine:
    """One process's connection to the records database; safe to keep across fork.

    The repositories (Schema, Vendors, Records, BatchRows) subclass it; ``Database`` joins them.
    """

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
