"""Database.reopen_items / failed_items (a requeued dead chunk) on SQLite and the real MariaDB."""
from __future__ import annotations

from core.db.batches import (
    BATCH_COMPLETED_WITH_ERRORS,
    BATCH_INGESTING,
    BATCH_PROCESSING,
    ITEM_COMPLETED,
    ITEM_FAILED,
    ITEM_PENDING,
)
from core.db.database import Database


def _batch(db: Database, batch_id: str, status: str = BATCH_PROCESSING) -> None:
    db.create_batch(batch_id, "acme", "p", source="urls", priority=5, mode="square", options={}, status=status)
    db.add_batch_items(batch_id, [{"seq": i, "record_id": f"r{i}", "source": "http://x/i.jpg",
                                   "status": ITEM_PENDING} for i in range(5)])
    db.record_item_outcomes(batch_id, [
        {"seq": 0, "status": ITEM_COMPLETED},
        {"seq": 1, "status": ITEM_FAILED, "error_code": "NO_FACE", "error_message": "none"},
        {"seq": 2, "status": ITEM_FAILED, "error_code": "FETCH_FAILED", "error_message": "503"},
        {"seq": 3, "status": ITEM_FAILED, "error_code": "FETCH_FAILED", "error_message": "503"},
        {"seq": 4, "status": ITEM_FAILED, "error_code": "FETCH_FAILED", "error_message": "503"},
    ])


def test_reopen_moves_the_chunks_failures_back_and_uncounts_them(db: Database) -> None:
    batch_id = f"b-reopen-{db.dialect.name}"
    _batch(db, batch_id)
    done = db.get_batch(batch_id)
    assert done is not None and done["status"] == BATCH_COMPLETED_WITH_ERRORS and done["completed_at"]

    # Items 2-3 are the chunk's range; 4 belongs to another chunk, 1 failed on its own.
    assert [item["seq"] for item in db.failed_items(batch_id, 0, 3, "FETCH_FAILED")] == [2, 3]
    assert db.reopen_items(batch_id, [1, 2, 3], "FETCH_FAILED") == [2, 3]

    batch = db.get_batch(batch_id)
    assert batch is not None
    assert (batch["status"], batch["completed_at"]) == (BATCH_PROCESSING, None)
    assert (batch["processed"], batch["failed"]) == (3, 2)
    items = {item["seq"]: (item["status"], item["error_code"], item["error_message"])
             for item in db.batch_items(batch_id)}
    assert items[1] == (ITEM_FAILED, "NO_FACE", "none")
    assert items[2] == items[3] == (ITEM_PENDING, None, None)
    assert items[4] == (ITEM_FAILED, "FETCH_FAILED", "503")
    # A second reopen changes nothing; the requeued chunk then counts them exactly once.
    assert db.reopen_items(batch_id, [2, 3], "FETCH_FAILED") == []
    assert db.record_item_outcomes(batch_id, [{"seq": 2, "status": ITEM_COMPLETED},
                                              {"seq": 3, "status": ITEM_COMPLETED}]) == (2, 0)
    final = db.get_batch(batch_id)
    assert final is not None and (final["processed"], final["failed"]) == (5, 2)
    assert final["status"] == BATCH_COMPLETED_WITH_ERRORS


def test_reopen_leaves_a_batch_that_is_still_ingesting_in_its_status(db: Database) -> None:
    batch_id = f"b-ingesting-{db.dialect.name}"
    _batch(db, batch_id, status=BATCH_INGESTING)
    assert db.reopen_items(batch_id, [4], "FETCH_FAILED") == [4]
    batch = db.get_batch(batch_id)
    assert batch is not None and batch["status"] == BATCH_INGESTING
    assert (batch["processed"], batch["failed"]) == (4, 3)
