"""Keyset pages for the list routes: newest first by (created_at, id), with an opaque cursor.

A cursor is the last row's (created_at, id), base64url-encoded JSON: the next page is the rows
strictly older than it, so a row inserted meanwhile never shifts a page (no OFFSET). Vendors
must treat it as opaque; a cursor that is not one of ours is a ValueError (the API's 400).
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_STAMP = "%Y-%m-%d %H:%M:%S.%f"  # how core.db.engine._now writes created_at (both dialects compare it)


@dataclass(frozen=True)
class Page:
    """One page of rows and the cursor of the next one (None: this is the last page)."""

    rows: list[dict[str, Any]]
    next_cursor: str | None


def _stamp(value: Any) -> str:
    if isinstance(value, datetime):  # MySQL hands back datetimes, SQLite the stored text
        return value.strftime(_STAMP)
    return str(value)


def next_cursor(created_at: Any, row_id: Any) -> str:
    """The opaque cursor after a row with this created_at and id."""
    raw = json.dumps([_stamp(created_at), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, Any]:
    """(created_at, id) of a cursor; ValueError when it is not one this service made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        datetime.strptime(created_at, _STAMP)
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise ValueError("is not a cursor from a previous page (pass nextCursor back unchanged)") from None
    if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
        raise ValueError("is not a cursor from a previous page (pass nextCursor back unchanged)")
    return created_at, row_id


def after_clause(cursor: str, id_column: str) -> tuple[str, list[Any]]:
    """The SQL condition (and its parameters) selecting rows older than the cursor's row."""
    created_at, row_id = decode_cursor(cursor)
    return (f" AND (created_at < ? OR (created_at = ? AND {id_column} < ?))", [created_at, created_at, row_id])
