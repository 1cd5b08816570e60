"""The records database: vendors, API keys, records and batches, on MySQL/MariaDB or SQLite.

``connect(DATABASE_URL)`` gives a ``Database``: one engine (core/db/engine.py) with the
repositories joined onto it (schema.py, vendors.py, records.py, batches.py, usage.py), so callers hold
one object per process and each repository stays one small module.
"""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

from core.db.batches import BatchRows
from core.db.engine import DatabaseUnavailable, _MySQL, _SQLite
from core.db.records import Records
from core.db.schema import Schema
from core.db.usage import Usage
from core.db.vendors import Vendors


class Database(Schema, Vendors, Records, BatchRows, Usage):
    """One process's connection to the records database, with every repository's methods."""


__all__ = ["Database", "DatabaseUnavailable", "connect"]


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
