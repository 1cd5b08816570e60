"""Batches and their items in the records database (a repository joined into ``core.db.database.Database``).

A batch's images are rows of ``batch_items`` (one per image, keyed by batch and sequence
number), not Redis jobs: a million pending images cost database rows, and Redis only holds
one small job per chunk of images. Progress counters on ``batches`` change in the same
transaction as the item rows, and only for items that leave ``pending``, so they stay exact
when a chunk is retried or re-run after a worker crash.
"""
from __future__ import annotations

import json
from typing import Any

from core.db.engine import Engine, _iso, _now
from core.db.pages import Page, after_clause, next_cursor

# Batch statuses.
BATCH_QUEUED = "queued"  # accepted; ingestion job waiting
BATCH_INGESTING = "ingesting"  # items being created and their chunks queued
BATCH_PROCESSING = "processing"  # every item created; chunks running
BATCH_COMPLETED = "completed"
BATCH_COMPLETED_WITH_ERRORS = "completed_with_errors"
BATCH_FAILED = "failed"  # the upload itself was unusable (not a ZIP, truncated, too big)
BATCH_CANCELED = "canceled"  # POST /api/batch/<id>/cancel: its pending images will not run
BATCH_ACTIVE = (BATCH_QUEUED, BATCH_INGESTING, BATCH_PROCESSING)
BATCH_FINAL = (BATCH_COMPLETED, BATCH_COMPLETED_WITH_ERRORS, BATCH_FAILED, BATCH_CANCELED)
BATCH_STATUSES = (*BATCH_ACTIVE, *BATCH_FINAL)

# Item statuses.
ITEM_PENDING = "pending"
ITEM_COMPLETED = "completed"
ITEM_FAILED = "failed"
ITEM_SKIPPED = "skipped"  # a ZIP entry that is not a usable image (reported, not counted)
ITEM_CANCELED = "canceled"  # still pending when its batch was canceled (counted in ``batches.canceled``)

_BATCH_FIELDS = ("status", "image_count", "error_code", "error_message", "completed_at")
_ITEM_RESULT_FIELDS = ("output_url", "face_detected", "face_count", "face_box", "output_width",
                       "output_height", "error_code", "error_message", "thumbnail_url", "source_thumbnail_url",
                       "faces_json", "roll_degrees", "source_width", "source_height")
_JSON_ITEM_FIELDS = ("face_box", "faces_json")  # written as JSON text, read back decoded
_ITEM_RESULT_SELECT = ", ".join(f"i.{name}" for name in _ITEM_RESULT_FIELDS)
_ITEM_COLUMNS = ("seq", "record_id", "entry_name", "source", "status", "error_code", "error_message")


class BatchRows(Engine):
    """Batch and item rows (see the module docstring)."""

    def create_batch(self, batch_id: str, vendor_id: str, project_id: str, *, source: str,
                     priority: int, mode: str, options: dict[str, Any], status: str = BATCH_QUEUED,
                     callback_url: str | None = None, operation: str = "cropFace") -> None:
        """Insert a new batch row (``callback_url``: its completion webhook, jobs/webhooks.py;
        ``operation``: contracts.BATCH_OPERATIONS)."""
        now = _now()
        self._write(
            "INSERT INTO batches (batch_id, vendor_id, project_id, status, source, priority, mode, options_json,"
            " callback_url, operation, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (batch_id, vendor_id, project_id, status, source, priority, mode, json.dumps(options), callback_url,
             operation, now, now))

    def get_batch(self, batch_id: str, vendor_id: str | None = None) -> dict[str, Any] | None:
        """The batch row; with ``vendor_id``, only if that vendor owns it."""
        if vendor_id is None:
            row = self._fetch_one("SELECT * FROM batches WHERE batch_id = ?", (batch_id,))
        else:
            row = self._fetch_one("SELECT * FROM batches WHERE batch_id = ? AND vendor_id = ?",
                                  (batch_id, vendor_id))
        return None if row is None else _batch_row(row)

    def list_batches(self, vendor_id: str, *, project_id: str | None = None, status: str | None = None,
                     cursor: str | None = None, limit: int = 50) -> Page:
        """The vendor's batches, newest first, optionally of one project and status (keyset pages).

        ``cursor`` is a previous page's ``next_cursor``; ValueError when it is not one.
        """
        sql, params = "SELECT * FROM batches WHERE vendor_id = ?", [vendor_id]
        if project_id is not None:
            sql, params = sql + " AND project_id = ?", [*params, project_id]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status]
        if cursor:
            clause, values = after_clause(cursor, "batch_id")
            sql, params = sql + clause, [*params, *values]
        rows = self._fetch_all(sql + " ORDER BY created_at DESC, batch_id DESC LIMIT ?", (*params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        token = next_cursor(rows[-1]["created_at"], rows[-1]["batch_id"]) if more and rows else None
        return Page([_batch_row(row) for row in rows], token)

    def cancel_batch(self, batch_id: str) -> int:
        """Cancel every still-pending item and the batch itself, in one transaction; returns how many items.

        One UPDATE moves the items (a 100,000-image batch cancels in one statement), only from
        ``pending``: an item a chunk finished first keeps its outcome, and a chunk recording an
        item canceled first changes nothing (``record_item_outcomes`` only moves pending items),
        so ``processed + canceled`` stays exact under a racing chunk. Items first, then the
        batch row, the order the chunks lock them in. Idempotent; a finished batch keeps its
        status (a second call only cancels items an ingestion wrote after the first).
        """
        def work(cur: Any) -> int:
            now = _now()
            self._execute(cur, "UPDATE batch_items SET status = ?, error_code = ?, error_message = ?, updated_at = ?"
                               " WHERE batch_id = ? AND status = ?",
                          (ITEM_CANCELED, "CANCELED", "the batch was canceled before this image ran", now,
                           batch_id, ITEM_PENDING))
            moved = max(int(cur.rowcount), 0)
            active = ", ".join("?" for _ in BATCH_ACTIVE)
            self._execute(cur, f"UPDATE batches SET canceled = canceled + ?,"
                               f" completed_at = CASE WHEN status IN ({active}) THEN ? ELSE completed_at END,"
                               f" status = CASE WHEN status IN ({active}) THEN ? ELSE status END,"
                               " updated_at = ? WHERE batch_id = ?",
                          (moved, *BATCH_ACTIVE, now, *BATCH_ACTIVE, BATCH_CANCELED, now, batch_id))
            return moved
        return self._transaction(work)

    def set_batch(self, batch_id: str, *, only_from: tuple[str, ...] = (), **fields: Any) -> bool:
        """Set batch fields (status, image_count, error_*); with ``only_from``, only from those statuses."""
        unknown = set(fields) - set(_BATCH_FIELDS)
        if unknown:
            raise ValueError(f"not a settable batch field: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE batches SET {assignments}, updated_at = ? WHERE batch_id = ?"
        params: list[Any] = [*fields.values(), _now(), batch_id]
        if only_from:
            sql += f" AND status IN ({', '.join('?' for _ in only_from)})"
            params += list(only_from)
        return self._write(sql, tuple(params)) > 0

    def add_batch_items(self, batch_id: str, items: list[dict[str, Any]]) -> None:
        """Insert items (dicts with seq, record_id, entry_name, source, status, error_*) and count them."""
        if not items:
            return
        rows = [tuple(item.get(column) for column in _ITEM_COLUMNS) + (_now(),) for item in items]
        images = sum(1 for item in items if item["status"] != ITEM_SKIPPED)
        skipped = len(items) - images

        def work(cur: Any) -> None:
            self._execute(cur, f"INSERT INTO batch_items (batch_id, {', '.join(_ITEM_COLUMNS)}, updated_at)"
                               f" VALUES (?, {', '.join('?' for _ in _ITEM_COLUMNS)}, ?)",
                          [(batch_id, *row) for row in rows], many=True)
            self._execute(cur, "UPDATE batches SET image_count = image_count + ?, skipped = skipped + ?,"
                               " updated_at = ? WHERE batch_id = ?", (images, skipped, _now(), batch_id))
        self._transaction(work)

    def add_batch_queued(self, batch_id: str, count: int) -> None:
        """Count ``count`` more images as queued."""
        self._write("UPDATE batches SET queued = queued + ?, updated_at = ? WHERE batch_id = ?",
                    (count, _now(), batch_id))

    def pending_items(self, batch_id: str, first_seq: int, last_seq: int) -> list[dict[str, Any]]:
        """Items of ``batch_id`` with first_seq <= seq <= last_seq still pending, in order."""
        return self._fetch_all("SELECT seq, record_id, entry_name, source, attempts FROM batch_items"
                               " WHERE batch_id = ? AND seq BETWEEN ? AND ? AND status = ? ORDER BY seq",
                               (batch_id, first_seq, last_seq, ITEM_PENDING))

    def open_batches(self, updated_before: str) -> list[dict[str, Any]]:
        """Batches not finished yet and unchanged since ``updated_before`` (``reconcile`` checks them)."""
        return self._fetch_all("SELECT batch_id, vendor_id, priority, status, source FROM batches"
                               " WHERE status IN (?, ?, ?) AND updated_at < ? ORDER BY created_at",
                               (BATCH_QUEUED, BATCH_INGESTING, BATCH_PROCESSING, updated_before))

    def pending_seqs(self, batch_id: str, *, after_seq: int = -1, limit: int = 5000) -> list[int]:
        """Seqs of the batch's pending items after ``after_seq``, in order (keyset pages)."""
        def work(cur: Any) -> list[int]:
            self._execute(cur, "SELECT seq FROM batch_items WHERE batch_id = ? AND status = ? AND seq > ?"
                               " ORDER BY seq LIMIT ?", (batch_id, ITEM_PENDING, after_seq, limit))
            return [int(row[0]) for row in cur.fetchall()]
        return self._run(work)

    def count_attempt(self, batch_id: str, seqs: list[int]) -> None:
        """Add one attempt to each of these pending items."""
        if seqs:
            self._run(lambda cur: self._execute(
                cur, "UPDATE batch_items SET attempts = attempts + 1 WHERE batch_id = ? AND seq = ? AND status = ?",
                [(batch_id, seq, ITEM_PENDING) for seq in seqs], many=True))

    def record_item_outcomes(self, batch_id: str, outcomes: list[dict[str, Any]]) -> tuple[int, int]:
        """Move items out of pending (dicts: seq, status completed|failed, result fields) and count them.

        Returns (newly processed, newly failed); items no longer pending are left alone, so
        replaying the same outcomes changes nothing. Finishes the batch when nothing is left.
        """
        moved = self.record_item_outcomes_moved(batch_id, outcomes)
        return len(moved), sum(1 for outcome in outcomes if outcome["seq"] in moved
                               and outcome["status"] == ITEM_FAILED)

    def record_item_outcomes_moved(self, batch_id: str, outcomes: list[dict[str, Any]]) -> set[int]:
        """``record_item_outcomes``, returning the seqs that moved (the others were no longer
        pending: recorded by an earlier run, or canceled)."""
        def work(cur: Any) -> set[int]:
            processed = failed = 0
            moved: set[int] = set()
            now = _now()
            for outcome in outcomes:
                values = [outcome.get(name) for name in _ITEM_RESULT_FIELDS]
                for name in _JSON_ITEM_FIELDS:
                    values[_ITEM_RESULT_FIELDS.index(name)] = (
                        json.dumps(outcome[name]) if outcome.get(name) is not None else None)
                assignments = ", ".join(f"{name} = ?" for name in _ITEM_RESULT_FIELDS)
                self._execute(cur, f"UPDATE batch_items SET status = ?, {assignments}, updated_at = ?"
                                   " WHERE batch_id = ? AND seq = ? AND status = ?",
                              (outcome["status"], *values, now, batch_id, outcome["seq"], ITEM_PENDING))
                if cur.rowcount == 1:
                    processed += 1
                    failed += outcome["status"] == ITEM_FAILED
                    moved.add(int(outcome["seq"]))
            if processed:
                self._execute(cur, "UPDATE batches SET processed = processed + ?, failed = failed + ?,"
                                   " updated_at = ? WHERE batch_id = ?", (processed, failed, now, batch_id))
            self._finish_if_done(cur, batch_id)
            return moved
        return self._transaction(work)

    def unmirrored_outcomes(self, batch_id: str, vendor_id: str, first_seq: int,
                            last_seq: int) -> list[dict[str, Any]]:
        """Finished items of a chunk range whose record row, still the batch's, never got the outcome.

        A chunk writes its items (one transaction) and then mirrors them to the vendor's record
        rows; if the database goes away in between, the retry finds those items no longer
        pending and would leave their records ``queued`` for ever. The retry mirrors these
        first. Rows are shaped like ``record_item_outcomes``' input (face_box decoded).
        """
        def work(cur: Any) -> list[dict[str, Any]]:
            self._execute(cur, f"SELECT i.seq, i.record_id, i.status, {_ITEM_RESULT_SELECT}"
                               " FROM batch_items i JOIN data_records r"
                               " ON r.vendor_id = ? AND r.record_id = i.record_id AND r.current_job_id = i.batch_id"
                               " WHERE i.batch_id = ? AND i.seq BETWEEN ? AND ? AND i.status IN (?, ?)"
                               " AND r.processing_status IN ('queued', 'processing') ORDER BY i.seq",
                          (vendor_id, batch_id, first_seq, last_seq, ITEM_COMPLETED, ITEM_FAILED))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            for row in rows:
                _decode_item(row)
            return rows
        return self._run(work)

    def failed_items(self, batch_id: str, first_seq: int, last_seq: int, error_code: str) -> list[dict[str, Any]]:
        """Items of a chunk range that failed with ``error_code`` (a dead chunk's leftovers), in order."""
        return self._fetch_all("SELECT seq, record_id, source FROM batch_items WHERE batch_id = ?"
                               " AND seq BETWEEN ? AND ? AND status = ? AND error_code = ? ORDER BY seq",
                               (batch_id, first_seq, last_seq, ITEM_FAILED, error_code))

    def reopen_items(self, batch_id: str, seqs: list[int], error_code: str) -> list[int]:
        """Put failed items back to pending for a requeued chunk; returns the seqs reopened.

        Only items still failed with ``error_code`` change. In the same transaction the batch's
        ``processed``/``failed`` counters drop by that many and a finished batch goes back to
        processing, so the requeued chunk counts them again exactly once.
        """
        def work(cur: Any) -> list[int]:
            now = _now()
            reopened = []
            for seq in seqs:
                self._execute(cur, "UPDATE batch_items SET status = ?, error_code = NULL, error_message = NULL,"
                                   " updated_at = ? WHERE batch_id = ? AND seq = ? AND status = ? AND error_code = ?",
                              (ITEM_PENDING, now, batch_id, seq, ITEM_FAILED, error_code))
                if cur.rowcount == 1:
                    reopened.append(seq)
            if reopened:
                finished = (BATCH_COMPLETED, BATCH_COMPLETED_WITH_ERRORS)
                self._execute(cur, "UPDATE batches SET processed = processed - ?, failed = failed - ?,"
                                   " completed_at = CASE WHEN status IN (?, ?) THEN NULL ELSE completed_at END,"
                                   " status = CASE WHEN status IN (?, ?) THEN ? ELSE status END,"
                                   " updated_at = ? WHERE batch_id = ?",
                              (len(reopened), len(reopened), *finished, *finished, BATCH_PROCESSING, now,
                               batch_id))
            return reopened
        return self._transaction(work)

    def finish_batch_if_done(self, batch_id: str) -> None:
        """Mark a processing batch completed (or with errors) once every image is processed."""
        self._transaction(lambda cur: self._finish_if_done(cur, batch_id))

    def _finish_if_done(self, cur: Any, batch_id: str) -> None:
        now = _now()
        self._execute(cur, "UPDATE batches SET status = CASE WHEN failed > 0 THEN ? ELSE ? END,"
                           " completed_at = ?, updated_at = ?"
                           " WHERE batch_id = ? AND status = ? AND processed >= image_count",
                      (BATCH_COMPLETED_WITH_ERRORS, BATCH_COMPLETED, now, now, batch_id, BATCH_PROCESSING))

    def batch_items(self, batch_id: str, *, after_seq: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` items with seq > after_seq, in order (keyset pagination for results)."""
        def work(cur: Any) -> list[dict[str, Any]]:
            self._execute(cur, "SELECT i.seq, i.entry_name, i.attempts, i.record_id, i.status, "
                               f"{_ITEM_RESULT_SELECT}"
                               " FROM batch_items i WHERE i.batch_id = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
                          (batch_id, after_seq, limit))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            for row in rows:
                _decode_item(row)
            return rows
        return self._run(work)


def _decode_item(row: dict[str, Any]) -> dict[str, Any]:
    """An item row as callers read it: face_detected a bool, face_box and faces_json decoded (or None)."""
    row["face_detected"] = None if row["face_detected"] is None else bool(row["face_detected"])
    for name in _JSON_ITEM_FIELDS:
        row[name] = json.loads(row[name]) if row[name] else None
    return row


def _batch_row(row: dict[str, Any]) -> dict[str, Any]:
    """A batches row as callers read it: options decoded, timestamps ISO-8601."""
    row["options"] = json.loads(row.pop("options_json") or "{}")
    for column in ("created_at", "updated_at", "completed_at"):
        row[column] = _iso(row[column])
    row.setdefault("operation", "cropFace")
    row.setdefault("canceled", 0)
    return row
