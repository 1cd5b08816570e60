"""Batch cancel (one transaction, exact counters under a racing chunk) and the keyset list pages."""
from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

import pytest

from core.db.batches import (
    BATCH_CANCELED,
    BATCH_COMPLETED,
    BATCH_PROCESSING,
    ITEM_CANCELED,
    ITEM_COMPLETED,
    ITEM_FAILED,
    ITEM_PENDING,
)
from core.db.database import Database, connect


def _batch(db: Database, batch_id: str, n: int, *, vendor: str = "acme", project: str = "p") -> None:
    db.create_batch(batch_id, vendor, project, source="urls", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING)
    db.add_batch_items(batch_id, [{"seq": i, "record_id": f"{batch_id}-r{i}", "source": "http://x/a.jpg",
                                   "status": ITEM_PENDING} for i in range(n)])


def _statuses(db: Database, batch_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    after = -1
    while page := db.batch_items(batch_id, after_seq=after, limit=1000):
        for item in page:
            counts[item["status"]] = counts.get(item["status"], 0) + 1
        after = page[-1]["seq"]
    return counts


def test_cancel_moves_only_pending_items_and_is_idempotent(db: Database) -> None:
    _batch(db, "b1", 5)
    db.record_item_outcomes("b1", [{"seq": 0, "status": ITEM_COMPLETED, "output_url": "u0"},
                                   {"seq": 1, "status": ITEM_FAILED, "error_code": "NO_FACE"}])
    assert db.cancel_batch("b1") == 3
    batch = db.get_batch("b1")
    assert batch is not None
    assert (batch["status"], batch["processed"], batch["failed"], batch["canceled"]) == (BATCH_CANCELED, 2, 1, 3)
    assert batch["completed_at"] is not None
    assert _statuses(db, "b1") == {ITEM_COMPLETED: 1, ITEM_FAILED: 1, ITEM_CANCELED: 3}
    # A chunk recording a canceled item afterwards changes nothing.
    assert db.record_item_outcomes_moved("b1", [{"seq": 3, "status": ITEM_COMPLETED, "output_url": "u3"}]) == set()
    assert db.cancel_batch("b1") == 0
    again = db.get_batch("b1")
    assert again is not None and (again["status"], again["processed"], again["canceled"]) == (BATCH_CANCELED, 2, 3)


def test_cancel_leaves_a_finished_batch_as_it_is(db: Database) -> None:
    _batch(db, "b2", 1)
    db.record_item_outcomes("b2", [{"seq": 0, "status": ITEM_COMPLETED, "output_url": "u0"}])
    assert db.cancel_batch("b2") == 0
    batch = db.get_batch("b2")
    assert batch is not None and batch["status"] == BATCH_COMPLETED and batch["canceled"] == 0


def test_cancelling_a_large_batch_is_one_statement(db: Database) -> None:
    _batch(db, "big", 20_000)
    statements: list[str] = []
    execute = db._execute

    def counting(cur: object, sql: str, params: object = (), *, many: bool = False) -> object:
        statements.append(sql)
        return execute(cur, sql, params, many=many)

    db._execute = counting  # type: ignore[method-assign]
    try:
        assert db.cancel_batch("big") == 20_000
    finally:
        del db._execute
    assert sum(sql.startswith("UPDATE batch_items") for sql in statements) == 1
    batch = db.get_batch("big")
    assert batch is not None and batch["canceled"] == 20_000 and batch["processed"] == 0


@pytest.mark.parametrize("round_", range(3))
def test_cancel_racing_a_chunk_leaves_counts_that_add_up(db: Database, round_: int) -> None:
    """A chunk records outcomes one transaction at a time while another connection cancels."""
    batch_id = f"race{round_}"
    n = 400
    _batch(db, batch_id, n)
    chunk_db, cancel_db = _another_connection(db), _another_connection(db)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def chunk() -> None:
        try:
            start.wait()
            for first in range(0, n, 8):
                chunk_db.record_item_outcomes(batch_id, [
                    {"seq": seq, "status": ITEM_FAILED if seq % 5 == 0 else ITEM_COMPLETED,
                     "output_url": f"u{seq}", "error_code": "NO_FACE" if seq % 5 == 0 else None}
                    for seq in range(first, first + 8)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def cancel() -> None:
        try:
            start.wait()
            cancel_db.cancel_batch(batch_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=chunk), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    chunk_db.close()
    cancel_db.close()
    assert not errors, errors
    batch = db.get_batch(batch_id)
    counts = _statuses(db, batch_id)
    assert batch is not None
    # The cancel may land first, in between, or after the chunk recorded everything.
    assert batch["status"] == (BATCH_CANCELED if batch["canceled"] else "completed_with_errors")
    assert counts.get(ITEM_PENDING, 0) == 0
    assert batch["processed"] == counts.get(ITEM_COMPLETED, 0) + counts.get(ITEM_FAILED, 0)
    assert batch["failed"] == counts.get(ITEM_FAILED, 0)
    assert batch["canceled"] == counts.get(ITEM_CANCELED, 0)
    assert batch["processed"] + batch["canceled"] == batch["image_count"] == n


def _another_connection(db: Database) -> Database:
    """A second connection to the database ``db`` is on (SQLite file or MariaDB)."""
    dialect: Any = db.dialect
    if dialect.name == "sqlite":
        return connect(f"sqlite:///{dialect.path}")
    p = dialect.params
    return connect(f"mysql://{quote(p['user'])}:{quote(p['password'])}@{p['host']}:{p['port']}/{p['database']}")


def test_batches_list_newest_first_in_pages_scoped_to_the_vendor(db: Database) -> None:
    for i in range(7):
        db.create_batch(f"lb{i}-{db.dialect.name}", "lister", "p1" if i % 2 else "p2", source="urls", priority=5,
                        mode="square", options={}, status=BATCH_PROCESSING)
    db.create_batch("other-" + db.dialect.name, "lister2", "p1", source="urls", priority=5, mode="square", options={})
    seen: list[str] = []
    cursor = None
    while True:
        page = db.list_batches("lister", cursor=cursor, limit=3)
        assert len(page.rows) <= 3
        seen += [row["batch_id"] for row in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"lb{i}-{db.dialect.name}" for i in reversed(range(7))]
    only = db.list_batches("lister", project_id="p1", limit=50)
    assert [row["batch_id"] for row in only.rows] == [f"lb{i}-{db.dialect.name}" for i in (5, 3, 1)]
    assert only.next_cursor is None
    assert db.list_batches("lister", status=BATCH_CANCELED).rows == []
    assert [row["batch_id"] for row in db.list_batches("lister2").rows] == ["other-" + db.dialect.name]
    with pytest.raises(ValueError):
        db.list_batches("lister", cursor="not-a-cursor")


def test_records_list_pages_by_keyset(db: Database) -> None:
    for i in range(5):
        db.queue_record("lister", "p", f"rec{i}", job_id=f"j{i}", job_kind="face_crop", source_url="http://x/a")
    db.queue_record("lister2", "p", "theirs", job_id="jg", job_kind="face_crop", source_url="http://x/a")
    db.cancel_record("lister", "rec1", "j1")
    first = db.list_records("lister", limit=2)
    second = db.list_records("lister", limit=2, cursor=first.next_cursor)
    third = db.list_records("lister", limit=2, cursor=second.next_cursor)
    ids = [row["record_id"] for page in (first, second, third) for row in page.rows]
    assert ids == ["rec4", "rec3", "rec2", "rec1", "rec0"] and third.next_cursor is None
    canceled = db.list_records("lister", status="canceled")
    assert [(row["record_id"], row["processing_status"]) for row in canceled.rows] == [("rec1", "canceled")]
    assert not db.cancel_record("lister", "rec1", "j1")  # already canceled: no change
