"""Jobs store thumbnails beside their outputs, and faces and roll in their rows (issue 15 item 3, issue 12).

The job functions run as ``rq worker`` runs them (a real Redis, a SQLite or MariaDB database,
local storage); only the photo's download and rembg are stand-ins.
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from core import contracts, rqjson
from core.config import Settings
from core.db.batches import BATCH_PROCESSING, ITEM_PENDING
from core.db.database import Database
from jobs import batch, fetch, tasks
from jobs.storage import LocalStorage
from jobs.tasks import Context
from ops.cleanup import cleanup
from tests.portraits import jpeg, portrait

URL = "http://photos.example/a.jpg"
BASE = "http://files.example"
FILES = BASE + "/files"


def _stored(storage: LocalStorage, url: str | None) -> Image.Image:
    assert url is not None and url.startswith(FILES + "/"), url
    image = Image.open(storage._path(url[len(FILES) + 1:]))
    image.load()
    return image


def _single_job(db: Database, redis_conn: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                func: str, kind: str, settings: Settings, **payload: Any) -> tuple[Any, LocalStorage]:
    """A queued record and its job, with the worker's context and the download stubbed."""
    body = {"vendorId": "acme", "projectId": "p", "recordId": "r1", "photoUrl": URL, **payload}
    job = rqjson.create(func, connection=redis_conn, kwargs={"payload": body})
    job.save()
    db.queue_record("acme", "p", "r1", job_id=job.id, job_kind=kind, source_url=URL, payload=body)
    storage = LocalStorage(tmp_path / "files", BASE)
    ctx = Context(replace(settings, storage_dir=str(tmp_path / "files"), public_base_url="http://files.example"),
                  db, storage)
    data = jpeg(portrait(800))
    monkeypatch.setattr(tasks, "context", lambda: ctx)
    monkeypatch.setattr(tasks, "get_current_job", lambda: job)
    monkeypatch.setattr(fetch, "fetch_image", lambda url, settings: fetch.FetchedImage(data, "image/jpeg", url))
    return job, storage


def test_a_crop_job_stores_thumbnails_faces_and_roll(db: Database, redis_conn: redis.Redis, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    job, storage = _single_job(db, redis_conn, tmp_path, monkeypatch, contracts.JOB_CROP_FACE, "face_crop",
                               Settings(), mode="passport")
    result = tasks.crop_face(job.kwargs["payload"])

    assert result["thumbnailUrl"] == result["photoUrl"].rsplit(".", 1)[0] + "-thumb.jpg"
    assert result["sourceThumbnailUrl"] == result["photoUrl"].rsplit(".", 1)[0] + "-source-thumb.jpg"
    assert max(_stored(storage, result["thumbnailUrl"]).size) == 256
    assert _stored(storage, result["sourceThumbnailUrl"]).size == (256, 256)
    row = db.get_record("acme", "r1")
    assert row is not None and row["processing_status"] == "completed"
    assert (row["thumbnail_url"], row["source_thumbnail_url"]) == (result["thumbnailUrl"],
                                                                   result["sourceThumbnailUrl"])
    assert row["faces_json"] == result["faces"] and len(row["faces_json"]) == 1
    assert set(row["faces_json"][0]) == {"box", "score", "landmarks"}
    assert result["rollDegrees"] is not None and row["roll_degrees"] == pytest.approx(result["rollDegrees"])
    # The space the boxes are in: the photo's size (the console scales them onto the source's preview).
    assert (result["sourceWidth"], result["sourceHeight"]) == portrait(800).size
    assert (row["source_width"], row["source_height"]) == (result["sourceWidth"], result["sourceHeight"])
    # A re-run once RQ has forgotten the result returns them from the row.
    monkeypatch.setattr(job, "return_value", lambda: None)
    again = tasks.crop_face(job.kwargs["payload"])
    kept = ("thumbnailUrl", "sourceThumbnailUrl", "faces", "sourceWidth", "sourceHeight")
    assert {key: again[key] for key in kept} == {key: result[key] for key in kept}
    assert again["rollDegrees"] == pytest.approx(result["rollDegrees"])
    # Cleanup removes the record's thumbnails with its output.
    db._write("UPDATE data_records SET updated_at = ? WHERE record_id = ?", ("2000-01-01 00:00:00", "r1"))
    assert cleanup(db, tasks.context().settings, retention_days=1).files == 3
    assert [p for p in (tmp_path / "files").rglob("*") if p.is_file()] == []


def test_no_thumbnails_when_the_setting_is_zero(db: Database, redis_conn: redis.Redis, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    job, storage = _single_job(db, redis_conn, tmp_path, monkeypatch, contracts.JOB_CROP_FACE, "face_crop",
                               Settings(thumbnail_max_px=0), mode="square")
    result = tasks.crop_face(job.kwargs["payload"])
    assert result["thumbnailUrl"] is None and result["sourceThumbnailUrl"] is None
    assert [p.name for p in (tmp_path / "files").rglob("*") if p.is_file()] == [result["photoUrl"].rsplit("/")[-1]]


class _HalfMask:
    """A rembg stand-in: the left half of the model's input is the person."""

    def remove(self, image: bytes, call: Any, *, content_type: str = "", filename: str = "") -> Any:
        from jobs.rembg_pool import RembgResult

        mask = Image.new("L", (320, 320), 0)
        mask.paste(255, (0, 0, 160, 320))
        out = io.BytesIO()
        mask.save(out, "PNG")
        return RembgResult(out.getvalue(), "stub")


def test_a_remove_bg_job_stores_a_thumbnail_with_alpha(db: Database, redis_conn: redis.Redis, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import rembg_pool

    job, storage = _single_job(db, redis_conn, tmp_path, monkeypatch, contracts.JOB_REMOVE_BACKGROUND,
                               "remove_background", Settings())
    monkeypatch.setattr(rembg_pool.RembgPool, "from_settings", classmethod(lambda cls, s, r: _HalfMask()))
    result = tasks.remove_background(job.kwargs["payload"])
    thumb = _stored(storage, result["thumbnailUrl"])
    assert thumb.format == "WEBP" and thumb.mode == "RGBA" and thumb.size == (256, 256)
    assert thumb.getpixel((20, 128))[3] == 255 and thumb.getpixel((236, 128))[3] == 0
    assert _stored(storage, result["sourceThumbnailUrl"]).format == "JPEG"
    row = db.get_record("acme", "r1")
    assert row is not None and row["thumbnail_url"] == result["thumbnailUrl"]


def _crop_batch(db: Database, redis_conn: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                batch_id: str) -> LocalStorage:
    """A ZIP batch of two portraits (one upright, one smaller) and one non-photo, one chunk job over them."""
    db.create_batch(batch_id, "acme", "p", source="zip", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING, operation=contracts.OPERATION_CROP_FACE)
    sources = [tmp_path / "0.jpg", tmp_path / "1.jpg", tmp_path / "2.jpg"]
    sources[0].write_bytes(jpeg(portrait(800)))
    sources[1].write_bytes(jpeg(portrait(150)))  # 210 px: under 256
    sources[2].write_bytes(b"not an image")
    db.add_batch_items(batch_id, [{"seq": i, "entry_name": f"dir/p{i}.jpg", "source": str(path),
                                   "status": ITEM_PENDING} for i, path in enumerate(sources)])
    storage = LocalStorage(tmp_path / "files", BASE)
    ctx = Context(Settings(upload_dir=str(tmp_path / "uploads"), storage_dir=str(tmp_path / "files"),
                           public_base_url="http://files.example"), db, storage)
    job = rqjson.create(contracts.JOB_PROCESS_CHUNK, args=(batch_id, 0, 2), connection=redis_conn)
    monkeypatch.setattr(batch, "context", lambda: ctx)
    monkeypatch.setattr(batch, "get_current_job", lambda: job)
    return storage


def test_a_batch_chunk_stores_thumbnails_faces_and_roll(db: Database, redis_conn: redis.Redis, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    batch_id = f"b-thumbs-{db.dialect.name}"
    storage = _crop_batch(db, redis_conn, tmp_path, monkeypatch, batch_id)
    assert batch.process_chunk(batch_id, 0, 2) == {"processed": 3, "failed": 1, "retry": 0}

    items = db.batch_items(batch_id)
    big, small, bad = items
    assert big["thumbnail_url"].endswith(f"/batches/{batch_id}/0000000-thumb.jpg")
    assert big["source_thumbnail_url"].endswith(f"/batches/{batch_id}/0000000-source-thumb.jpg")
    assert _stored(storage, big["source_thumbnail_url"]).size == (256, 256)
    assert max(_stored(storage, big["thumbnail_url"]).size) <= 256
    assert _stored(storage, small["source_thumbnail_url"]).size == (210, 210)  # never enlarged
    assert len(big["faces_json"]) == 1 and big["faces_json"][0]["box"] == big["face_box"]
    assert big["source_width"] and big["source_height"] and bad["source_width"] is None
    assert isinstance(big["roll_degrees"], float)
    assert (bad["status"], bad["thumbnail_url"], bad["faces_json"], bad["roll_degrees"]) == ("failed", None, None,
                                                                                           None)
    assert not (tmp_path / "0.jpg").exists()  # the ZIP's source is gone; its thumbnail stays

    # Cleanup removes the thumbnails with the outputs.
    db._write("UPDATE batches SET updated_at = ? WHERE batch_id = ?", ("2000-01-01 00:00:00", batch_id))
    ctx = batch.context()
    cleanup(db, ctx.settings, retention_days=1)
    assert [p for p in (tmp_path / "files").rglob("*") if p.is_file()] == []
