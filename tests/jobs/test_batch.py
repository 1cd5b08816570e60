"""process_chunk finishing what an earlier run left half-done (jobs/batch.py, BatchRecords.unmirrored_outcomes).

A chunk records its items' outcomes in one transaction and then mirrors them to the vendor's
record rows. When the database goes away in between (a MariaDB restart mid-batch), the retry
finds those items no longer pending; it must still bring their records to the same outcome.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import redis

from core import contracts, rqjson
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
    job = rqjson.create(contracts.JOB_PROCESS_CHUNK, args=(batch_id, 0, 2), connection=redis_conn)
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


class _CancelingMasks:
    """A rembg stand-in: a half-white mask per call; the ``cancel_on``-th call cancels the batch meanwhile."""

    def __init__(self, db: Database, batch_id: str, cancel_on: int) -> None:
        self.db, self.batch_id, self.cancel_on, self.calls = db, batch_id, cancel_on, 0

    def remove(self, image: bytes, call: Any, *, content_type: str = "", filename: str = "") -> Any:
        from PIL import Image

        from jobs.rembg_pool import RembgResult

        self.calls += 1
        if self.calls == self.cancel_on:
            self.db.cancel_batch(self.batch_id)
        mask = Image.new("L", (320, 320), 0)
        mask.paste(255, (0, 0, 160, 320))
        out = io.BytesIO()
        mask.save(out, "PNG")
        return RembgResult(out.getvalue(), "stub")


def _photo(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(path, "JPEG")


def _remove_bg_batch(db: Database, redis_conn: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     batch_id: str, masks_cancel_on: int) -> tuple[LocalStorage, _CancelingMasks]:
    """A ZIP batch of 4 removeBg images, a chunk job over all of them, rembg stubbed."""
    from jobs import rembg_pool

    db.create_batch(batch_id, "acme", "p", source="zip", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING, operation=contracts.OPERATION_REMOVE_BG)
    sources = []
    for i in range(4):
        sources.append(tmp_path / f"{i}.jpg")
        _photo(sources[-1])
    db.add_batch_items(batch_id, [{"seq": i, "entry_name": f"dir/p{i}.jpg", "source": str(sources[i]),
                                   "status": ITEM_PENDING} for i in range(4)])
    storage = LocalStorage(tmp_path / "files", "http://files")
    ctx = Context(Settings(upload_dir=str(tmp_path / "uploads")), db, storage)
    masks = _CancelingMasks(db, batch_id, cancel_on=masks_cancel_on)
    job = rqjson.create(contracts.JOB_PROCESS_CHUNK, args=(batch_id, 0, 3), connection=redis_conn)
    monkeypatch.setattr(batch, "context", lambda: ctx)
    monkeypatch.setattr(batch, "get_current_job", lambda: job)
    monkeypatch.setattr(rembg_pool.RembgPool, "from_settings", classmethod(lambda cls, settings, redis: masks))
    return storage, masks


def test_a_remove_bg_chunk_stores_cut_outs(db: Database, redis_conn: redis.Redis, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    batch_id = f"b-bg-{db.dialect.name}"
    storage, masks = _remove_bg_batch(db, redis_conn, tmp_path, monkeypatch, batch_id, masks_cancel_on=0)
    assert batch.process_chunk(batch_id, 0, 3) == {"processed": 4, "failed": 0, "retry": 0}
    final = db.get_batch(batch_id)
    assert final is not None and (final["status"], final["processed"], final["canceled"]) == ("completed", 4, 0)
    items = db.batch_items(batch_id)
    assert items[0]["output_url"].endswith("/0000000.png") and items[0]["face_detected"] is None
    with Image.open(storage._path(f"acme/batches/{batch_id}/0000000.png")) as cut:
        assert cut.mode == "RGBA" and cut.getpixel((50, 10))[3] == 0 and cut.getpixel((5, 10))[3] == 255
    assert masks.calls == 4


def test_a_chunk_stops_when_its_batch_is_canceled(db: Database, redis_conn: redis.Redis, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel lands during image 1: the chunk stops, records nothing, and removes what it stored."""
    batch_id = f"b-cancel-{db.dialect.name}"
    _storage, masks = _remove_bg_batch(db, redis_conn, tmp_path, monkeypatch, batch_id, masks_cancel_on=2)

    assert batch.process_chunk(batch_id, 0, 3) == {"processed": 0, "failed": 0, "retry": 0}

    final = db.get_batch(batch_id)
    assert final is not None
    assert (final["status"], final["processed"], final["canceled"]) == ("canceled", 0, 4)
    assert [item["status"] for item in db.batch_items(batch_id)] == ["canceled"] * 4
    assert [p for p in (tmp_path / "files").rglob("*") if p.is_file()] == []  # stored outputs removed again
    assert masks.calls == 2  # images 2 and 3 never went to rembg
