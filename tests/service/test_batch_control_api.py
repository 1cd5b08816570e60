"""Cancel, lists, results ZIP and batch operations through Flask's test client (real Redis + SQLite).

No workers run here: jobs stay queued, and finished outputs are written straight into local
storage and the database the way a chunk would; tests/integration/test_batch_control_flow.py runs
the real workers.
"""
from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq.job import JobStatus

from core import rqjson
from core.batch_outcomes import batch_dir
from core.batch_plan import chunk_job_id, zip_path
from core.db.batches import ITEM_COMPLETED, ITEM_FAILED
from core.db.database import Database, connect
from tests.service.apps import vendor_app
from tests.service.test_api import assert_error

URL = "http://photos.example.com/p.jpg"


@pytest.fixture
def app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Flask]:
    with vendor_app(redis_url, tmp_path, upload_dir=str(tmp_path / "uploads"), storage_dir=str(tmp_path / "files"),
                    storage_backend="local", public_base_url="http://files.test", batch_chunk_size=4) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(app: Flask) -> Iterator[Database]:
    database = connect(app.extensions["image_queue"].settings.database_url)
    yield database
    database.close()


def auth(app: Flask, vendor: str = "acme") -> dict[str, str]:
    return {"X-API-Key": app.config["KEYS"][vendor]}


def add_images(app: Flask, client: FlaskClient, n: int, vendor: str = "acme", **extra: object) -> str:
    body = {"projectId": "p", "images": [{"recordId": f"r{i}", "imageUrl": URL} for i in range(n)], **extra}
    resp = client.post("/api/batch/add-images", json=body, headers=auth(app, vendor))
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["batchId"])


def queue_crop(app: Flask, client: FlaskClient, record: str = "rec-1") -> str:
    resp = client.post("/api/image-queue/crop-face-queue", headers=auth(app),
                       json={"recordId": record, "projectId": "p", "photoUrl": URL, "mode": "square"})
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["jobId"])


# --- cancel a job ------------------------------------------------------------------------------
def test_cancel_a_waiting_job(app: Flask, client: FlaskClient, redis_conn: redis.Redis, db: Database) -> None:
    job_id = queue_crop(app, client)
    resp = client.delete(f"/api/image-queue/job/{job_id}", headers=auth(app))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["state"] == "canceled" and resp.get_json()["previousState"] == "waiting"
    assert rqjson.fetch(job_id, connection=redis_conn).get_status() == JobStatus.CANCELED
    record = db.get_record("acme", "rec-1")
    assert record is not None and record["processing_status"] == "canceled"
    assert client.get(f"/api/image-queue/job/{job_id}", headers=auth(app)).get_json()["state"] == "canceled"
    again = client.delete(f"/api/image-queue/job/{job_id}", headers=auth(app))  # idempotent
    assert again.status_code == 200 and again.get_json()["previousState"] == "canceled"


def test_cancel_refuses_finished_jobs_and_hides_other_vendors(app: Flask, client: FlaskClient,
                                                               redis_conn: redis.Redis) -> None:
    job_id = queue_crop(app, client)
    assert_error(client.delete(f"/api/image-queue/job/{job_id}", headers=auth(app, "globex")), 404, "JOB_NOT_FOUND")
    assert_error(client.delete("/api/image-queue/job/nope", headers=auth(app)), 404, "JOB_NOT_FOUND")
    job = rqjson.fetch(job_id, connection=redis_conn)
    job.set_status(JobStatus.FINISHED)
    body = assert_error(client.delete(f"/api/image-queue/job/{job_id}", headers=auth(app)), 409,
                        "JOB_NOT_CANCELABLE")
    assert body["error"]["details"] == {"state": "completed"} and "completed" in body["error"]["message"]
    job.set_status(JobStatus.FAILED)
    assert_error(client.delete(f"/api/image-queue/job/{job_id}", headers=auth(app)), 409, "JOB_NOT_CANCELABLE")


def test_cancel_an_active_job_sends_rq_the_stop_command(app: Flask, client: FlaskClient, redis_conn: redis.Redis,
                                                          db: Database) -> None:
    """The worker running it is told to stop the job (RQ's stop-job command on its pub/sub channel)."""
    from rq.command import PUBSUB_CHANNEL_TEMPLATE

    job_id = queue_crop(app, client, "rec-active")
    job = rqjson.fetch(job_id, connection=redis_conn)
    job.worker_name = "worker-7"
    job.save()
    job.set_status(JobStatus.STARTED)
    channel = redis_conn.pubsub()
    channel.subscribe(PUBSUB_CHANNEL_TEMPLATE % "worker-7")
    assert channel.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    resp = client.delete(f"/api/image-queue/job/{job_id}", headers=auth(app))
    assert resp.status_code == 200 and resp.get_json()["previousState"] == "active", resp.get_json()
    message = channel.get_message(timeout=2)
    assert message is not None and json.loads(message["data"]) == {"command": "stop-job", "job_id": job_id}
    channel.close()
    record = db.get_record("acme", "rec-active")
    assert record is not None and record["processing_status"] == "canceled"


# --- cancel a batch ----------------------------------------------------------------------------
def test_cancel_a_batch(app: Flask, client: FlaskClient, db: Database) -> None:
    batch_id = add_images(app, client, 6)
    db.record_item_outcomes(batch_id, [{"seq": 0, "status": ITEM_COMPLETED, "output_url": "http://files.test/x"},
                                       {"seq": 1, "status": ITEM_FAILED, "error_code": "NO_FACE"}])
    assert_error(client.post(f"/api/batch/{batch_id}/cancel", headers=auth(app, "globex")), 404, "BATCH_NOT_FOUND")
    resp = client.post(f"/api/batch/{batch_id}/cancel", headers=auth(app))
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["canceledNow"] == 4
    batch = body["batch"]
    assert batch["status"] == "canceled" and batch["canceled"] == 4
    assert batch["progress"]["processed"] == 2 and batch["progress"]["failed"] == 1
    record = db.get_record("acme", "r5")
    assert record is not None and record["processing_status"] == "canceled"
    again = client.post(f"/api/batch/{batch_id}/cancel", headers=auth(app))
    assert again.status_code == 200 and again.get_json()["canceledNow"] == 0
    assert again.get_json()["batch"]["canceled"] == 4


def test_cancel_a_queued_zip_batch_removes_its_upload(app: Flask, client: FlaskClient, redis_conn: redis.Redis,
                                                      tmp_path: Path) -> None:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("a.jpg", b"\xff\xd8\xff" + b"x" * 100)
    resp = client.post("/api/batch/upload-zip", headers=auth(app), content_type="multipart/form-data",
                       data={"projectId": "p", "file": (io.BytesIO(data.getvalue()), "photos.zip")})
    batch_id = resp.get_json()["batchId"]
    upload_dir = str(tmp_path / "uploads")
    assert zip_path(upload_dir, batch_id).exists()
    resp = client.post(f"/api/batch/{batch_id}/cancel", headers=auth(app))
    assert resp.status_code == 200 and resp.get_json()["batch"]["status"] == "canceled"
    assert not zip_path(upload_dir, batch_id).exists()
    assert rqjson.fetch(f"{batch_id}-ingest", connection=redis_conn).get_status() == JobStatus.CANCELED


def test_a_finished_batch_cannot_be_canceled(app: Flask, client: FlaskClient, db: Database) -> None:
    batch_id = add_images(app, client, 1)
    db.record_item_outcomes(batch_id, [{"seq": 0, "status": ITEM_COMPLETED, "output_url": "http://files.test/x"}])
    body = assert_error(client.post(f"/api/batch/{batch_id}/cancel", headers=auth(app)), 409, "BATCH_NOT_CANCELABLE")
    assert body["error"]["details"] == {"status": "completed"}


# --- lists -------------------------------------------------------------------------------------
def test_batch_list_pages_and_is_vendor_scoped(app: Flask, client: FlaskClient) -> None:
    mine = [add_images(app, client, 1) for _ in range(5)]
    theirs = add_images(app, client, 1, vendor="globex")
    seen: list[str] = []
    cursor = ""
    while True:
        resp = client.get(f"/api/batch?limit=2&cursor={cursor}", headers=auth(app))
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        seen += [batch["batchId"] for batch in body["batches"]]
        if not body["nextCursor"]:
            break
        cursor = body["nextCursor"]
    assert seen == list(reversed(mine)) and theirs not in seen
    assert client.get("/api/batch?status=processing&projectId=p", headers=auth(app)).get_json()["batches"]
    assert client.get("/api/batch?projectId=other", headers=auth(app)).get_json()["batches"] == []
    assert_error(client.get("/api/batch?limit=201", headers=auth(app)), 400, "VALIDATION_ERROR", "limit")
    assert_error(client.get("/api/batch?status=done", headers=auth(app)), 400, "VALIDATION_ERROR", "status")
    assert_error(client.get("/api/batch?cursor=zzz", headers=auth(app)), 400, "VALIDATION_ERROR", "cursor")


def test_record_list_filters_by_status(app: Flask, client: FlaskClient) -> None:
    job_id = queue_crop(app, client, "rec-a")
    queue_crop(app, client, "rec-b")
    client.delete(f"/api/image-queue/job/{job_id}", headers=auth(app))
    body = client.get("/api/image-queue/records?status=canceled", headers=auth(app)).get_json()
    assert [r["recordId"] for r in body["records"]] == ["rec-a"] and body["records"][0]["status"] == "canceled"
    every = client.get("/api/image-queue/records?projectId=p", headers=auth(app)).get_json()["records"]
    assert [r["recordId"] for r in every] == ["rec-b", "rec-a"]
    assert client.get("/api/image-queue/records", headers=auth(app, "globex")).get_json()["records"] == []


# --- results ZIP -------------------------------------------------------------------------------
def test_results_zip_holds_finished_outputs_and_the_listing(app: Flask, client: FlaskClient, db: Database,
                                                            tmp_path: Path) -> None:
    batch_id = add_images(app, client, 3)
    out = tmp_path / "files" / "acme" / "batches" / batch_id
    out.mkdir(parents=True)
    (out / "0000000.jpg").write_bytes(b"\xff\xd8\xffjpeg-0")
    db.record_item_outcomes(batch_id, [
        {"seq": 0, "status": ITEM_COMPLETED, "output_url": f"http://files.test/files/acme/batches/{batch_id}/0000000.jpg",
         "output_width": 300, "output_height": 300},
        {"seq": 1, "status": ITEM_FAILED, "error_code": "NO_FACE", "error_message": "no face"}])
    resp = client.get(f"/api/batch/{batch_id}/results.zip", headers=auth(app))
    assert resp.status_code == 200 and resp.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(resp.get_data()))
    assert archive.testzip() is None
    assert archive.namelist() == ["outputs/r0.jpg", "results.jsonl", "results.csv", "batch.json"]
    assert archive.read("outputs/r0.jpg") == b"\xff\xd8\xffjpeg-0"
    rows = [json.loads(line) for line in archive.read("results.jsonl").splitlines()]
    assert [(r["recordId"], r["status"], r["file"]) for r in rows] == [
        ("r0", "completed", "outputs/r0.jpg"), ("r1", "failed", None), ("r2", "pending", None)]
    assert archive.read("results.csv").decode().splitlines()[0].endswith(",file")
    summary = json.loads(archive.read("batch.json"))
    assert summary["complete"] is False and summary["processed"] == 2 and summary["operation"] == "cropFace"
    assert_error(client.get(f"/api/batch/{batch_id}/results.zip", headers=auth(app, "globex")), 404,
                 "BATCH_NOT_FOUND")


# --- operations --------------------------------------------------------------------------------
def test_remove_bg_batches_validate_their_options(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    images = [{"recordId": "r0", "imageUrl": URL}]
    for body, field in (({"operation": "idPhotos"}, "operation"), ({"operation": 3}, "operation"),
                        ({"operation": "idPhoto"}, "options.spec"),
                        ({"operation": "idPhoto", "options": {"spec": "passport"}}, "options.spec"),
                        ({"operation": "idPhoto", "options": {"spec": "icao", "background": "#ff0000"}},
                         "options.background"),
                        ({"operation": "removeBg", "options": {"model": "u2net_huge"}}, "options.model"),
                        ({"operation": "removeBg", "options": {"padding": 0.2}}, "options.padding")):
        assert_error(client.post("/api/batch/add-images", headers=auth(app),
                                 json={"projectId": "p", "images": images, **body}), 400, "VALIDATION_ERROR", field)
    resp = client.post("/api/batch/add-images", headers=auth(app),
                       json={"projectId": "p", "images": images, "operation": "removeBg",
                             "options": {"format": "webp"}})
    assert resp.status_code == 202 and resp.get_json()["operation"] == "removeBg"
    batch_id = resp.get_json()["batchId"]
    status = client.get(f"/api/batch/status/{batch_id}", headers=auth(app)).get_json()["batch"]
    assert status["operation"] == "removeBg"
    job = rqjson.fetch(chunk_job_id(batch_id, 0), connection=redis_conn)
    # Its own RateLimit key, with the smaller BATCH_REMBG_CONCURRENCY.
    assert job.rate_limit_key is not None and "removeBg" in job.rate_limit_key
    assert job.rate_limit_concurrency == app.extensions["image_queue"].settings.batch_rembg_concurrency


def test_zip_upload_takes_an_operation(app: Flask, client: FlaskClient) -> None:
    resp = client.post("/api/batch/upload-zip", headers=auth(app), content_type="multipart/form-data",
                       data={"projectId": "p", "operation": "cutout", "file": (io.BytesIO(b"PK\x03\x04"), "x.zip")})
    assert_error(resp, 400, "VALIDATION_ERROR", "operation")


def test_batch_dir_is_under_upload_dir(app: Flask, tmp_path: Path) -> None:
    settings = app.extensions["image_queue"].settings
    assert batch_dir(settings, "b1").is_relative_to(tmp_path / "uploads")


def test_the_central_directory_is_spooled_not_kept_in_memory() -> None:
    """stream-zip builds its central directory with the deque service.batch_results replaces."""
    import stream_zip

    from service.batch_results import SpooledDirectory

    assert stream_zip.deque is SpooledDirectory
    directory = SpooledDirectory()
    for i in range(3000):  # past the 1 MiB kept in memory
        directory.append((b"h" * 300, f"outputs/{i}.jpg".encode(), b"x" * (i % 7)))
    assert len(directory) == 3000
    back = list(directory)
    assert back[2999] == (b"h" * 300, b"outputs/2999.jpg", b"x" * (2999 % 7)) and len(back) == 3000


def test_outputs_kept_by_cloudinary_are_fetched_by_url(app: Flask) -> None:
    """Remote storage: each output is read over HTTP, one at a time; an unreadable one is left out."""
    from service.batch_results import OutputReader
    from tests.stack import PhotoServer

    server = PhotoServer()
    server.files["/v1/acme/batches/b/0000000.png"] = b"\x89PNG\r\n\x1a\nremote"
    try:
        reader = OutputReader(app.extensions["image_queue"].settings)
        reader.local = False  # as with STORAGE_BACKEND=cloudinary
        assert reader.read(server.url("/v1/acme/batches/b/0000000.png")) == b"\x89PNG\r\n\x1a\nremote"
        assert reader.read(server.url("/v1/missing.png")) is None
        reader.close()
    finally:
        server.close()


def test_id_photo_batches_carry_their_spec(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    resp = client.post("/api/batch/add-images", headers=auth(app),
                       json={"projectId": "p", "images": [{"recordId": "r0", "imageUrl": URL}], "operation": "idPhoto",
                             "options": {"spec": "us", "background": "lightgrey"}})
    assert resp.status_code == 202 and resp.get_json()["operation"] == "idPhoto"
    batch_id = resp.get_json()["batchId"]
    job = rqjson.fetch(chunk_job_id(batch_id, 0), connection=redis_conn)
    assert job.rate_limit_key is not None and "removeBg" in job.rate_limit_key, "bounded like rembg batches"
    batch = app.extensions["image_queue"].db.get_batch(batch_id)
    assert batch["options"]["spec"]["name"] == "us" and batch["options"]["background"] == "#e0e0e0"


# --- usage -------------------------------------------------------------------------------------
def test_usage_counts_per_operation_and_limits_left(redis_url: str, tmp_path: Path, redis_conn: redis.Redis) -> None:
    redis_conn.flushdb()  # rate-limit counters of earlier tests
    with vendor_app(redis_url, tmp_path, upload_dir=str(tmp_path / "uploads"), storage_dir=str(tmp_path / "files"),
                    storage_backend="local", batch_chunk_size=4, rate_limit_reads="50/minute;500/hour",
                    rate_limit_image_processing="30/minute") as app:
        app.extensions["image_queue"].db.set_vendor_limits("acme", {"bulk": "7/hour"})
        client = app.test_client()
        canceled = queue_crop(app, client, "rec-a")
        queue_crop(app, client, "rec-b")
        client.delete(f"/api/image-queue/job/{canceled}", headers=auth(app))
        resp = client.post("/api/image-queue/remove-bg-queue", headers=auth(app),
                           json={"recordId": "bg-1", "projectId": "q", "photoUrl": URL})
        assert resp.status_code == 202, resp.get_json()
        add_images(app, client, 5)
        add_images(app, client, 2, operation="removeBg")
        add_images(app, client, 3, vendor="globex")  # another vendor's: not counted

        resp = client.get("/api/usage", headers=auth(app))
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        crop, bg, id_photo = (body["operations"][name] for name in ("cropFace", "removeBg", "idPhoto"))
        assert crop["single"] == {"queued": 1, "processing": 0, "completed": 0, "failed": 0, "canceled": 1,
                                  "total": 2}
        assert crop["batch"] == {"batches": 1, "images": 5, "processed": 0, "failed": 0, "skipped": 0,
                                 "canceled": 0, "pending": 5}
        assert bg["single"]["queued"] == 1 and bg["batch"]["batches"] == 1 and bg["batch"]["images"] == 2
        assert id_photo["single"]["total"] == 0 and id_photo["batch"]["batches"] == 0
        limits = {entry["category"]: entry for entry in body["rateLimits"]}
        assert limits["bulk"]["limit"] == "7/hour" and limits["bulk"]["source"] == "override"
        assert limits["bulk"]["windows"][0]["remaining"] == 7 - 2  # two add-images
        assert limits["image-processing"]["source"] == "default"
        # 3 queueing POSTs + 2 add-images count as image processing; the DELETE is a read.
        assert limits["image-processing"]["windows"][0] == {
            "limit": 30, "per": "1 minute", "remaining": 30 - 5,
            "resetsInSeconds": limits["image-processing"]["windows"][0]["resetsInSeconds"]}
        reads = limits["reads"]["windows"]
        assert [(w["limit"], w["per"]) for w in reads] == [(50, "1 minute"), (500, "1 hour")]
        assert reads[0]["remaining"] == 50 - 2  # the DELETE and this request
        assert 0 < reads[0]["resetsInSeconds"] <= 60
        assert int(resp.headers["RateLimit-Remaining"]) == 48

        only_q = client.get("/api/usage?projectId=q", headers=auth(app)).get_json()["operations"]
        assert only_q["cropFace"]["single"]["total"] == 0 and only_q["removeBg"]["single"]["total"] == 1
        assert_error(client.get("/api/usage?projectId=", headers=auth(app)), 400, "VALIDATION_ERROR", "projectId")
        theirs = client.get("/api/usage", headers=auth(app, "globex")).get_json()
        assert theirs["operations"]["cropFace"]["batch"]["images"] == 3
        assert theirs["operations"]["cropFace"]["single"]["total"] == 0
        assert client.get("/api/usage").status_code == 401
        assert body["rateLimitsEnabled"] is True


def test_usage_lists_every_limit_category(app: Flask, client: FlaskClient) -> None:
    body = client.get("/api/usage", headers=auth(app)).get_json()
    assert body["rateLimitsEnabled"] is True
    assert [limit["category"] for limit in body["rateLimits"]] == ["image-processing", "background-removal",
                                                                    "bulk", "reads"]


def test_usage_when_rate_limits_are_off(redis_url: str, tmp_path: Path, redis_conn: redis.Redis) -> None:
    with vendor_app(redis_url, tmp_path, rate_limit_enabled=False) as app:
        resp = app.test_client().get("/api/usage", headers=auth(app))
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["rateLimitsEnabled"] is False and resp.get_json()["rateLimits"] == []
