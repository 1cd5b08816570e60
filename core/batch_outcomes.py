"""What a batch's finished images do to the database: item outcomes, record rows, files, webhooks.

Shared by the chunk jobs (jobs/batch.py) and the operator's reconcile (ops/reconcile.py), so
each takes the database, settings and Redis it was given: reconcile fixes the database it
was pointed at, never one rebuilt from the environment.
"""
from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis

from core import contracts, metrics, webhook_events
from core.batch_plan import zip_path
from core.config import Settings
from core.db.batches import BATCH_INGESTING, BATCH_PROCESSING, BATCH_QUEUED, ITEM_COMPLETED, ITEM_FAILED
from core.db.database import Database


def batch_dir(settings: Settings, batch_id: str) -> Path:
    """Where a batch's extracted images wait for their chunk (shared with the API host)."""
    return Path(settings.upload_dir) / "batches" / batch_id


def record_outcomes(db: Database, settings: Settings, batch: dict[str, Any],
                    outcomes: list[dict[str, Any]]) -> set[int]:
    """Write outcomes (counted once), mirror them to the vendor's records, tidy up files.

    Returns the seqs recorded now; the others were no longer pending (an earlier run recorded
    them, or the batch was canceled first) and their records are left alone.
    """
    if not outcomes:
        return set()
    batch_id = batch["batch_id"]
    moved = db.record_item_outcomes_moved(batch_id, outcomes)
    mirror_records(db, settings, batch, [outcome for outcome in outcomes if outcome["seq"] in moved])
    if batch["source"] == "zip":
        # By path, never by listing the folder: a million-image batch keeps its images there.
        for outcome in outcomes:
            if outcome.get("source"):
                Path(outcome["source"]).unlink(missing_ok=True)
    refreshed = db.get_batch(batch_id)
    if refreshed is not None and refreshed["status"] not in (BATCH_QUEUED, BATCH_INGESTING, BATCH_PROCESSING):
        shutil.rmtree(batch_dir(settings, batch_id), ignore_errors=True)
    return moved


def cancel_batch(db: Database, settings: Settings, connection: Redis, batch: dict[str, Any]) -> int:
    """Cancel a batch: pending items and their records canceled, uploaded files removed, webhook queued.

    Returns how many items were canceled now. The item move is one transaction (core/db/batches.py
    ``cancel_batch``); chunk jobs still queued find nothing pending and end at once, and a running
    one stops before its next image (what it had not recorded stays canceled). Idempotent.
    """
    batch_id = batch["batch_id"]
    canceled = db.cancel_batch(batch_id)
    if batch["source"] == "urls":
        db.cancel_batch_records(batch["vendor_id"], batch_id)
    # The uploaded ZIP and the images extracted from it: no job will read them any more (an
    # ingestion still running sees the batch canceled at its next chunk and stops).
    zip_path(settings.upload_dir, batch_id).unlink(missing_ok=True)
    shutil.rmtree(batch_dir(settings, batch_id), ignore_errors=True)
    webhook_events.notify_batch_if_final(db, settings, connection, batch_id)
    return canceled


def mirror_records(db: Database, settings: Settings, batch: dict[str, Any], outcomes: list[dict[str, Any]]) -> None:
    """Copy item outcomes to the vendor's record rows (URL batches; only rows still the batch's)."""
    for outcome in outcomes:
        if outcome.get("record_id"):
            db.update_record(batch["vendor_id"], outcome["record_id"], record_fields(outcome),
                             job_id=batch["batch_id"], chunk_fields=settings.db_update_chunk_fields)


def mirror_unmirrored(db: Database, settings: Settings, batch: dict[str, Any], first_seq: int, last_seq: int) -> int:
    """Finish an earlier run that recorded items but lost the database before mirroring them."""
    if batch["source"] != "urls":
        return 0
    outcomes = db.unmirrored_outcomes(batch["batch_id"], batch["vendor_id"], first_seq, last_seq)
    mirror_records(db, settings, batch, outcomes)
    return len(outcomes)


def mirror_batch_records(db: Database, settings: Settings, batch_id: str) -> int:
    """Copy every finished item's outcome to its record row still left unfinished (``reconcile``)."""
    batch = db.get_batch(batch_id)
    return 0 if batch is None else mirror_unmirrored(db, settings, batch, 0, 2**31 - 1)


def record_fields(outcome: dict[str, Any]) -> dict[str, Any]:
    """The record-row columns an item outcome sets."""
    if outcome["status"] == ITEM_COMPLETED:
        # Background removals have no face fields: .get leaves them NULL.
        return {"processing_status": contracts.STATUS_COMPLETED, "output_url": outcome["output_url"],
                "face_detected": outcome.get("face_detected"), "face_count": outcome.get("face_count"),
                "face_box": outcome.get("face_box"), "output_width": outcome.get("output_width"),
                "output_height": outcome.get("output_height"), "error_code": None, "error_message": None,
                "thumbnail_url": outcome.get("thumbnail_url"),
                "source_thumbnail_url": outcome.get("source_thumbnail_url"),
                "faces_json": outcome.get("faces_json"), "roll_degrees": outcome.get("roll_degrees"),
                "completed_at": datetime.now(UTC)}
    return {"processing_status": contracts.STATUS_FAILED, "error_code": outcome["error_code"],
            "error_message": outcome["error_message"]}


def fail_pending_items(db: Database, settings: Settings, connection: Redis, batch_id: str, first_seq: int,
                       last_seq: int, code: str, message: str) -> int:
    """Fail a chunk range's still-pending items with one error (its job is over); returns how many."""
    batch = db.get_batch(batch_id)
    if batch is None:
        return 0
    mirror_unmirrored(db, settings, batch, first_seq, last_seq)
    left = db.pending_items(batch_id, first_seq, last_seq)
    record_outcomes(db, settings, batch, [{"seq": item["seq"], "record_id": item["record_id"],
                                           "source": item["source"], "status": ITEM_FAILED,
                                           "error_code": code, "error_message": message[:2000]} for item in left])
    webhook_events.notify_batch_if_final(db, settings, connection, batch_id, batch)
    metrics.images_finished(connection, batch["vendor_id"],
                            contracts.batch_kind(batch.get("operation") or contracts.OPERATION_CROP_FACE),
                            completed=0, failed=len(left))
    return len(left)
