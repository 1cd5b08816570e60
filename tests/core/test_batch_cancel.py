"""core.batch_outcomes.cancel_batch: items, record rows, uploaded files and the batch.canceled webhook."""
from __future__ import annotations

import json
from pathlib import Path

import redis

from core import contracts
from core.batch_outcomes import batch_dir, cancel_batch
from core.batch_plan import zip_path
from core.config import Settings
from core.db.batches import BATCH_PROCESSING, ITEM_PENDING
from core.db.database import Database
from core.webhook_events import delivery_state, state_key


def test_cancel_fires_the_webhook_once_and_removes_the_uploads(db: Database, redis_conn: redis.Redis,
                                                                tmp_path: Path) -> None:
    settings = Settings(upload_dir=str(tmp_path / "uploads"))
    batch_id = f"bc-{db.dialect.name}"
    db.create_batch(batch_id, "acme", "p", source="urls", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING, callback_url="https://vendor.example/hook",
                    operation=contracts.OPERATION_REMOVE_BG)
    db.add_batch_items(batch_id, [{"seq": i, "record_id": f"{batch_id}-{i}", "source": "http://x/a.jpg",
                                   "status": ITEM_PENDING} for i in range(3)])
    db.queue_records("acme", "p", [(f"{batch_id}-{i}", batch_id, "http://x/a.jpg") for i in range(3)],
                     job_kind=contracts.KIND_BATCH_REMOVE_BG)
    extracted = batch_dir(settings, batch_id)
    extracted.mkdir(parents=True)
    (extracted / "0.jpg").write_bytes(b"x")
    upload = zip_path(settings.upload_dir, batch_id)
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"PK")
    batch = db.get_batch(batch_id)
    assert batch is not None

    assert cancel_batch(db, settings, redis_conn, batch) == 3
    assert cancel_batch(db, settings, redis_conn, batch) == 0  # idempotent: no second event either

    assert not extracted.exists() and not upload.exists()
    record = db.get_record("acme", f"{batch_id}-1")
    assert record is not None and record["processing_status"] == "canceled"
    state = delivery_state(redis_conn, state_key("batch", batch_id))
    body = json.loads(state["body"])
    assert state["event"] == "batch.canceled" and body["status"] == "canceled"
    assert body["canceled"] == 3 and body["operation"] == "removeBg"
    assert redis_conn.llen(f"rq:queue:{contracts.QUEUE_WEBHOOKS}") == 1
