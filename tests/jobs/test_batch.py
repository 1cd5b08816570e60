"""process_chunk finishing what an earlier run left half-done (jobs/batch.py, BatchRecords.unmirrored_outcomes).

A chunk records its items' outcomes in one transaction and then mirrors them to the vendor's
record rows. When the database goes away in between (a MariaDB restart mid-batch), the retry
finds those items no longer pending; it must still bring their records to the same outcome.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import redis
from rq.job import Job

from core import contracts
from core.config import Settings
from core.db.batches import BATCH_COMPLETED, BATCH_PROCESSING, ITEM_COMPLETED, ITEM_FAILED, ITEM_PENDING
from core.db.database import Database
from jobs import batch
from jobs.storage import LocalStorage
from jobs.tasks import Context

URL = "http://photos.example/a.jpg"


def _recorded_but_not_mirrored(db: Database, batch_id: str) -> None:
    """Items 0-1 recorded (the transaction committed), their records never told; 2 still pending."""
    db.create_batch(batch_id, "acme", "p", source="urls", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING)
    db.add_batch_items(batch_id, [{"seq": i, "record_id": f"r{i}", "source": URL, "status": ITEM_PENDING}
                                  for i in range(3)])
    db.queue_records("acme", "p", [(f"r{i}", batch_id, URL) for i in range(3)],
                     job_kind=contracts.KIND_BATCH_FACE_CROP)
    db.record_item_outcomes(batch_id, [
        {"seq": 0, "status": ITEM_COMPLETED, "output_url": "http://files/0.jpg", "face_detected": True,
         "face_count": 1, "face_box": {"x": 1, "y": 2, "width": 3, "height": 4}, "output_width": 300,
         "output_height": 300},
        {"seq": 1, "status": ITEM_FAILED, "error_code": "NO_FACE", "error_message": "no face found"},
    ])


def test_unmirrored_outcomes_lists_finished_items_whose_records_were_never_told(db: Database) -> None:
    batch_id = f"b-mirror-{db.dialect.name}"
    _recorded_but_not_mirrored(db, batch_id)
    rows = db.unmirrored_outcomes(batch_id, "acme", 0, 2)
    assert [(row["seq"], row["record_id"], row["status"]) for row in rows] == [
        (0, "r0", ITEM_COMPLETED), (1, "r1", ITEM_FAILED)]
    assert rows[0]["face_box"] == {"x": 1, "y": 2, "width": 3, "height": 4} and rows[0]["face_detected"] is True
    # Not listed: a record already told, or one a newer job owns, or a range outside the chunk.
    db.update_record("acme", "r0", {"processing_status": "completed", "output_url": "http://files/0.jpg"},
                     job_id=batch_id)
    db.queue_record("acme", "p", "r1", job_id="newer-job", job_kind=contracts.KIND_FACE_CROP, source_url=URL)
    assert db.unmirrored_outcomes(batch_id, "acme", 0, 2) == []
    assert db.unmirrored_outcomes(batch_id, "other-vendor", 0, 2) == []


def test_a_rerun_mirrors_the_records_an_earlier_run_left_queued(db: Database, redis_conn: redis.Redis,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    batch_id = f"b-rerun-{db.dialect.name}"
    _recorded_but_not_mirrored(db, batch_id)
    db.record_item_outcomes(batch_id, [{"seq": 2, "status": ITEM_COMPLETED, "output_url": "http://files/2.jpg"}])
    ctx = Context(Settings(), db, LocalStorage(tmp_path / "files", "http://files"))
    job = Job.create(contracts.JOB_PROCESS_CHUNK, args=(batch_id, 0, 2), connection=redis_conn)
    monkeypatch.setattr(batch, "context", lambda: ctx)
    monkeypatch.setattr(batch, "get_current_job", lambda: job)

    assert batch.process_chunk(batch_id, 0, 2) == {"processed": 0, "failed": 0, "retry": 0}

    done = db.get_record("acme", "r0")
    assert done is not None and done["processing_status"] == "completed"
    assert (done["output_url"], done["face_count"], done["output_width"]) == ("http://files/0.jpg", 1, 300)
    failed = db.get_record("acme", "r1")
    assert failed is not None and (failed["processing_status"], failed["error_code"]) == ("failed", "NO_FACE")
    last = db.get_record("acme", "r2")
    assert last is not None and last["processing_status"] == "completed"
    final = db.get_batch(batch_id)
    assert final is not None and final["status"] != BATCH_COMPLETED  # one image failed
    assert db.unmirrored_outcomes(batch_id, "acme", 0, 2) == []
