"""Record rows: one per vendor recordId, queued -> processing -> completed/failed by its jobs.

``update_record`` writes in chunks of at most DB_UPDATE_CHUNK_FIELDS columns and halves the
chunk when MySQL refuses a packet as too large (SPEC 4).
"""
from __future__ import annotations

import json
from typing import Any

from core.db.engine import Engine, _encode, _iso, _now, _PacketTooLarge, _size, log
from core.db.pages import Page, after_clause, next_cursor
from core.errors import RECORD_TOO_LARGE, PermanentJobError

# Columns a job may write with update_record; identity, ownership and timestamps are not.
UPDATABLE_COLUMNS = frozenset({
    "processing_status", "job_kind", "source_url", "output_url", "face_detected", "face_count",
    "face_box", "output_width", "output_height", "error_code", "error_message", "attempts",
    "completed_at", "report_json", "thumbnail_url", "source_thumbnail_url", "faces_json", "roll_degrees",
    "source_width", "source_height",
})
_RESULT_COLUMNS = ("output_url", "face_detected", "face_count", "face_box", "output_width",
                   "output_height", "error_code", "error_message", "completed_at", "report_json",
                   "thumbnail_url", "source_thumbnail_url", "faces_json", "roll_degrees", "source_width",
                   "source_height")
_TIMESTAMP_COLUMNS = ("created_at", "updated_at", "completed_at", "revoked_at")


class Records(Engine):
    """The vendor's record rows."""

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
        return None if row is None else _record_row(row)

    def list_records(self, vendor_id: str, *, project_id: str | None = None, status: str | None = None,
                     cursor: str | None = None, limit: int = 50) -> Page:
        """The vendor's records, newest first, optionally of one project and status (keyset pages).

        ``cursor`` is a previous page's ``next_cursor``; ValueError when it is not one.
        """
        sql, params = "SELECT * FROM data_records WHERE vendor_id = ?", [vendor_id]
        if project_id is not None:
            sql, params = sql + " AND project_id = ?", [*params, project_id]
        if status is not None:
            sql, params = sql + " AND processing_status = ?", [*params, status]
        if cursor:
            clause, values = after_clause(cursor, "id")
            if not isinstance(values[-1], int):
                raise ValueError("is not a cursor from a previous page (pass nextCursor back unchanged)")
            sql, params = sql + clause, [*params, *values]
        rows = self._fetch_all(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        token = next_cursor(rows[-1]["created_at"], int(rows[-1]["id"])) if more and rows else None
        return Page([_record_row(row) for row in rows], token)

    def cancel_record(self, vendor_id: str, record_id: str, job_id: str) -> bool:
        """Mark the record canceled while it still belongs to ``job_id`` and is not finished."""
        return self._write("UPDATE data_records SET processing_status = 'canceled', error_code = 'CANCELED',"
                           " error_message = 'canceled by the vendor', updated_at = ?"
                           " WHERE vendor_id = ? AND record_id = ? AND current_job_id = ?"
                           " AND processing_status IN ('queued', 'processing')",
                           (_now(), vendor_id, record_id, job_id)) > 0

    def cancel_batch_records(self, vendor_id: str, batch_id: str) -> int:
        """Mark every unfinished record a batch still owns canceled (one UPDATE); returns how many."""
        return self._write("UPDATE data_records SET processing_status = 'canceled', error_code = 'CANCELED',"
                           " error_message = 'the batch was canceled before this image ran', updated_at = ?"
                           " WHERE vendor_id = ? AND current_job_id = ?"
                           " AND processing_status IN ('queued', 'processing')",
                           (_now(), vendor_id, batch_id))


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


def _record_row(row: dict[str, Any]) -> dict[str, Any]:
    """A data_records row as callers read it (timestamps ISO-8601, face_box, faces_json and report_json decoded)."""
    for column in _TIMESTAMP_COLUMNS:
        if column in row:
            row[column] = _iso(row[column])
    if row["face_detected"] is not None:
        row["face_detected"] = bool(row["face_detected"])
    if row["face_box"] is not None:
        row["face_box"] = json.loads(row["face_box"])
    if row.get("report_json") is not None:
        row["report_json"] = json.loads(row["report_json"])
    if row.get("faces_json") is not None:
        row["faces_json"] = json.loads(row["faces_json"])
    return row
