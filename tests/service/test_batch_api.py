"""Batch API through Flask's test client on the real private Redis and SQLite (no workers).

Checks validation, upload handling, chunking, priority queues and the per-vendor rate limit
as they land in Redis; tests/integration/test_batch_flow.py runs real workers over them.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core import contracts, rqjson
from core.batch_plan import chunk_job_id
from core.db.database import connect
from tests.service.apps import vendor_app
from tests.service.test_api import assert_error

URL = "http://photos.example.com/p.jpg"


@pytest.fixture
def app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Flask]:
    with vendor_app(redis_url, tmp_path, upload_dir=str(tmp_path / "uploads"), batch_chunk_size=4,
                    batch_vendor_concurrency=2, batch_max_images_per_request=50,
                    batch_max_upload_bytes=200_000) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def auth(app: Flask, vendor: str = "acme") -> dict[str, str]:
    return {"X-API-Key": app.config["KEYS"][vendor]}


def images(n: int, prefix: str = "r") -> list[dict[str, str]]:
    return [{"recordId": f"{prefix}{i}", "imageUrl": URL} for i in range(n)]


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


def test_add_images_chunks_into_the_priority_queue(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    resp = client.post("/api/batch/add-images", json={"projectId": "p", "priority": 8, "images": images(6)},
                       headers=auth(app))
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["imageCount"] == 6 and body["queued"] == 6
    queue = rqjson.queue(contracts.face_detection_queue(8), connection=redis_conn)
    batch_id = body["batchId"]
    assert queue.job_ids == [chunk_job_id(batch_id, 0), chunk_job_id(batch_id, 4)]
    job = rqjson.fetch(chunk_job_id(batch_id, 4), connection=redis_conn)
    assert job.args == [batch_id, 4, 5] and job.func_name == contracts.JOB_PROCESS_CHUNK
    status = client.get(f"/api/batch/status/{batch_id}", headers=auth(app)).get_json()["batch"]
    assert status["status"] == "processing" and status["imageCount"] == 6
    assert status["createdAt"].endswith("Z") and "T" in status["createdAt"]  # ISO-8601 UTC, like records
    assert status["progress"] == {"processed": 0, "total": 6, "failed": 0, "updatedAt": status["progress"]["updatedAt"]}
    record = connect(app.extensions["image_queue"].settings.database_url).get_record("acme", "r3")
    assert record is not None and record["current_job_id"] == batch_id and record["processing_status"] == "queued"


def test_one_vendors_big_batch_waits_in_its_own_line(app: Flask, client: FlaskClient,
                                                     redis_conn: redis.Redis) -> None:
    big = client.post("/api/batch/add-images", json={"projectId": "p", "images": images(40)}, headers=auth(app))
    assert big.status_code == 202
    queue = rqjson.queue(contracts.face_detection_queue(5), connection=redis_conn)
    assert queue.count == 2  # batch_vendor_concurrency: the other 8 chunks are held by RQ's RateLimit
    small = client.post("/api/batch/add-images", json={"projectId": "p", "images": images(1, "b")},
                        headers=auth(app, "globex"))
    other_chunk = chunk_job_id(small.get_json()["batchId"], 0)
    assert queue.job_ids.index(other_chunk) == 2  # behind 2 chunks of acme, not 10


def test_higher_priority_goes_to_a_queue_workers_read_first(app: Flask, client: FlaskClient,
                                                            redis_conn: redis.Redis) -> None:
    client.post("/api/batch/add-images", json={"projectId": "p", "priority": 2, "images": images(4)},
                headers=auth(app))
    urgent = client.post("/api/batch/add-images", json={"projectId": "p", "priority": "10", "images": images(4, "u")},
                         headers=auth(app)).get_json()
    assert contracts.FACE_DETECTION_QUEUES[0] == contracts.face_detection_queue(10)
    assert rqjson.queue(contracts.face_detection_queue(10), connection=redis_conn).job_ids == [
        chunk_job_id(urgent["batchId"], 0)]


def test_upload_zip_is_stored_and_ingestion_queued(app: Flask, client: FlaskClient, redis_conn: redis.Redis,
                                                   tmp_path: Path) -> None:
    data = zip_bytes({"a.jpg": b"\xff\xd8\xff" + b"0" * 100, "b.png": b"\x89PNG" + b"0" * 100, "notes.txt": b"x"})
    resp = client.post("/api/batch/upload-zip", headers=auth(app), content_type="multipart/form-data",
                       data={"projectId": "p", "priority": "7", "file": (io.BytesIO(data), "photos.zip")})
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["imageCount"] == 2 and body["status"] == "queued"
    stored = tmp_path / "uploads" / "zips" / f"{body['batchId']}.zip"
    assert stored.read_bytes() == data
    assert list((tmp_path / "uploads" / "incoming").iterdir()) == []  # temp part renamed, nothing left
    ingest = rqjson.queue(contracts.QUEUE_BATCH_INGESTION, connection=redis_conn)
    job = rqjson.fetch(ingest.job_ids[0], connection=redis_conn)
    assert job.args == [body["batchId"], str(stored)]


def test_upload_errors(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    path = "/api/batch/upload-zip"
    assert_error(client.post(path, headers=auth(app), json={"projectId": "p"}), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_error(client.post(path, headers=auth(app), content_type="multipart/form-data",
                             data={"projectId": "p"}), 400, "VALIDATION_ERROR", "file")
    assert_error(client.post(path, headers=auth(app), content_type="multipart/form-data",
                             data={"projectId": "p", "file": (io.BytesIO(b"GIF89a..."), "x.zip")}), 415, "NOT_A_ZIP")
    assert_error(client.post(path, headers=auth(app), content_type="multipart/form-data",
                             data={"projectId": "p", "priority": "11", "file": (io.BytesIO(b"PK\x03\x04"), "x.zip")}),
                 400, "VALIDATION_ERROR", "priority")
    assert_error(client.post(path, headers=auth(app), content_type="multipart/form-data",
                             data={"projectId": "p", "mode": "selfie", "file": (io.BytesIO(b"PK\x03\x04"), "x.zip")}),
                 400, "VALIDATION_ERROR", "mode")
    assert_error(client.post(path, headers=auth(app), content_type="multipart/form-data",
                             data={"projectId": "p", "options": "{bad", "file": (io.BytesIO(b"PK\x03\x04"), "x.zip")}),
                 400, "VALIDATION_ERROR", "options")
    big = b"PK\x03\x04" + b"0" * 300_000
    assert_error(client.post(path, headers=auth(app), content_type="multipart/form-data",
                             data={"projectId": "p", "file": (io.BytesIO(big), "x.zip")}), 413, "PAYLOAD_TOO_LARGE")
    leftovers = list((tmp_path / "uploads").rglob("*.part")) if (tmp_path / "uploads").exists() else []
    assert leftovers == []


@pytest.mark.parametrize("body, field", [
    ({"images": "x"}, "images"),
    ({"images": []}, "images"),
    ({"images": images(51)}, "images"),
    ({"images": [1]}, "images[0]"),
    ({"images": [{"recordId": "a", "imageUrl": URL}, {"recordId": "a", "imageUrl": URL}]}, "images[1].recordId"),
    ({"images": [{"recordId": "a", "imageUrl": "ftp://x"}]}, "images[0].imageUrl"),
    ({"images": [{"imageUrl": URL}]}, "images[0].recordId"),
    ({"images": images(1), "priority": 0}, "priority"),
    ({"images": images(1), "priority": 3.5}, "priority"),
    ({"images": images(1), "priority": True}, "priority"),
    ({"images": images(1), "mode": "x"}, "mode"),
    ({"images": images(1), "options": {"quality": 500}}, "options.quality"),
    ({"images": images(1), "projectId": None}, "projectId"),
])
def test_add_images_validation(app: Flask, client: FlaskClient, body: dict[str, Any], field: str,
                               redis_conn: redis.Redis) -> None:
    full = {"projectId": "p", **body}
    assert_error(client.post("/api/batch/add-images", json=full, headers=auth(app)), 400, "VALIDATION_ERROR", field)
    assert all(rqjson.queue(name, connection=redis_conn).count == 0 for name in contracts.FACE_DETECTION_QUEUES)


def test_batches_are_private_to_their_vendor(app: Flask, client: FlaskClient) -> None:
    batch_id = client.post("/api/batch/add-images", json={"projectId": "p", "images": images(1)},
                           headers=auth(app)).get_json()["batchId"]
    assert_error(client.get(f"/api/batch/status/{batch_id}", headers=auth(app, "globex")), 404, "BATCH_NOT_FOUND")
    assert_error(client.get(f"/api/batch/{batch_id}/results", headers=auth(app, "globex")), 404, "BATCH_NOT_FOUND")
    assert_error(client.get("/api/batch/status/nope", headers=auth(app)), 404, "BATCH_NOT_FOUND")
    assert_error(client.get(f"/api/batch/{batch_id}/results?format=xml", headers=auth(app)),
                 400, "VALIDATION_ERROR", "format")
    assert_error(client.get("/api/batch/queue-stats"), 401, "MISSING_API_KEY")


def test_results_stream_lists_every_item(app: Flask, client: FlaskClient) -> None:
    batch_id = client.post("/api/batch/add-images", json={"projectId": "p", "images": images(3)},
                           headers=auth(app)).get_json()["batchId"]
    lines = client.get(f"/api/batch/{batch_id}/results", headers=auth(app)).get_data(as_text=True).splitlines()
    assert len(lines) == 3 and '"recordId":"r2"' in lines[2] and '"status":"pending"' in lines[0]
    csv_text = client.get(f"/api/batch/{batch_id}/results?format=csv", headers=auth(app)).get_data(as_text=True)
    assert csv_text.splitlines()[0].startswith("seq,recordId,entry,status") and len(csv_text.splitlines()) == 4


def test_queue_stats(app: Flask, client: FlaskClient) -> None:
    client.post("/api/batch/add-images", json={"projectId": "p", "priority": 9, "images": images(5)},
                headers=auth(app))
    stats = client.get("/api/batch/queue-stats", headers=auth(app)).get_json()["stats"]
    assert stats["faceDetection"]["waiting"] == 2 and stats["faceDetectionByPriority"]["9"]["waiting"] == 2
    assert set(stats["batchIngestion"]) == {"active", "completed", "failed", "delayed", "waiting"}
    assert isinstance(stats["timestamp"], int)


def test_deeply_nested_options_are_a_400_not_a_500(app: Flask, client: FlaskClient) -> None:
    # json.loads raises RecursionError (not ValueError) past ~1000 levels (hostile corpus, issue 7).
    options = "[" * 20000 + "]" * 20000
    resp = client.post("/api/batch/upload-zip", headers=auth(app), content_type="multipart/form-data",
                       data={"projectId": "p", "options": options, "file": (io.BytesIO(b"PK\x03\x04"), "x.zip")})
    assert_error(resp, 400, "VALIDATION_ERROR", "options")


@pytest.mark.parametrize("names", [("file", "file"), ("file", "other")])
def test_every_uploaded_file_part_is_removed(app: Flask, client: FlaskClient, tmp_path: Path,
                                             names: tuple[str, str]) -> None:
    # A second file part (same or another field name) is written to UPLOAD_DIR/incoming too;
    # MultiDict.values() gives only the first per name, so it must be removed by items(multi=True).
    data = zip_bytes({"a.jpg": b"\xff\xd8\xff" + b"0" * 100})
    resp = client.post("/api/batch/upload-zip", headers=auth(app), content_type="multipart/form-data",
                       data={"projectId": "p", names[0]: (io.BytesIO(data), "a.zip"),
                             names[1]: (io.BytesIO(b"second part"), "b.zip")} if names[0] != names[1] else
                       {"projectId": "p", "file": [(io.BytesIO(data), "a.zip"), (io.BytesIO(b"second"), "b.zip")]})
    assert resp.status_code == 202, resp.get_json()
    assert list((tmp_path / "uploads" / "incoming").iterdir()) == []


def test_results_and_records_carry_thumbnails_faces_and_roll(app: Flask, client: FlaskClient) -> None:
    """What the workers store (tests/jobs/test_previews.py) as the listing (jsonl, csv) and record view show it."""
    import csv
    import json

    from core.batch_outcomes import mirror_records
    from core.db.batches import ITEM_COMPLETED

    batch_id = client.post("/api/batch/add-images", json={"projectId": "p", "images": images(2)},
                           headers=auth(app)).get_json()["batchId"]
    db = connect(app.extensions["image_queue"].settings.database_url)
    face = {"box": {"x": 1, "y": 2, "width": 30, "height": 40}, "score": 0.9,
            "landmarks": {"rightEye": {"x": 5, "y": 6}}}
    outcome = {"seq": 0, "record_id": "r0", "status": ITEM_COMPLETED, "output_url": "http://files.test/0.jpg",
               "face_detected": True, "face_count": 1, "face_box": face["box"], "output_width": 300,
               "output_height": 300, "thumbnail_url": "http://files.test/0-thumb.jpg",
               "source_thumbnail_url": "http://files.test/0-source-thumb.jpg", "faces_json": [face],
               "roll_degrees": -2.5}
    db.record_item_outcomes(batch_id, [outcome])
    mirror_records(db, app.extensions["image_queue"].settings, db.get_batch(batch_id) or {}, [outcome])

    lines = client.get(f"/api/batch/{batch_id}/results", headers=auth(app)).get_data(as_text=True).splitlines()
    done, pending = (json.loads(line) for line in lines)
    assert (done["thumbnailUrl"], done["sourceThumbnailUrl"]) == (outcome["thumbnail_url"],
                                                                  outcome["source_thumbnail_url"])
    assert (done["faces"], done["rollDegrees"]) == ([face], -2.5)
    assert (pending["thumbnailUrl"], pending["sourceThumbnailUrl"], pending["faces"], pending["rollDegrees"]) == \
        (None, None, None, None)
    csv_text = client.get(f"/api/batch/{batch_id}/results?format=csv", headers=auth(app)).get_data(as_text=True)
    row = next(csv.DictReader(io.StringIO(csv_text)))
    assert row["thumbnailUrl"] == outcome["thumbnail_url"] and json.loads(row["faces"]) == [face]
    assert float(row["rollDegrees"]) == -2.5

    record = client.get("/api/image-queue/record/r0", headers=auth(app)).get_json()["record"]
    assert (record["thumbnailUrl"], record["sourceThumbnailUrl"]) == (outcome["thumbnail_url"],
                                                                      outcome["source_thumbnail_url"])
    assert (record["faces"], record["rollDegrees"]) == ([face], -2.5)
    listed = client.get("/api/image-queue/records?projectId=p", headers=auth(app)).get_json()["records"]
    assert next(r for r in listed if r["recordId"] == "r0")["thumbnailUrl"] == outcome["thumbnail_url"]
