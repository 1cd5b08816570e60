"""Dead letters through the admin API and the CLI, on the real private Redis and SQLite.

Dead letters are made the way RQ leaves them (job hash FAILED, in the queue's failed registry,
``meta.error`` as the failure callbacks write it), with their record rows and batch items in the
state the callbacks leave. tests/integration/test_dead_letters_flow.py drives real failures
through Gunicorn and `rq worker`.
"""
from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from rq import Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from core import contracts, rqjson
from core.batch_plan import chunk_job_id, ingest_job_id
from core.db.batches import BATCH_COMPLETED_WITH_ERRORS, BATCH_FAILED, BATCH_PROCESSING, ITEM_FAILED, ITEM_PENDING
from core.db.database import Database, connect
from ops import dead_letters
from service import create_app
from service.cli import cli
from tests.service.test_api import assert_error

ADMIN = {"Authorization": "Basic " + base64.b64encode(b"ops:s3cret-pass").decode()}
URL = "http://photos.example.com/a.jpg"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> dict[str, Any]:
    return {"redis_url": redis_url, "database_url": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "upload_dir": str(tmp_path / "uploads"), "admin_username": "ops", "admin_password": "s3cret-pass",
            "rate_limit_enabled": False}


@pytest.fixture
def app(redis_conn: redis.Redis, db: Database, settings: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    app.extensions["image_queue"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def fail_job(conn: redis.Redis, queue: str, func: str, *, code: str, args: tuple[Any, ...] = (),
             kwargs: dict[str, Any] | None = None, meta: dict[str, Any] | None = None, job_id: str | None = None,
             permanent: bool = True) -> Job:
    """Enqueue a job and leave it as RQ and our failure callbacks leave a final failure."""
    q = rqjson.queue(queue, connection=conn)
    job = q.enqueue(func, args=args, kwargs=kwargs, job_id=job_id, meta=meta or {}, failure_ttl=3600,
                    retry=Retry(max=3, interval=[2, 4, 8]))
    q.remove(job)
    job.meta["error"] = {"code": code, "message": f"{code} happened", "permanent": permanent, "final": True}
    job.save_meta()
    job.retries_left = 0
    job.ended_at = datetime.now(UTC)
    job.set_status(JobStatus.FAILED)
    job.failed_job_registry.add(job, ttl=3600, exc_string=f"Traceback ...\nJobError: {code}")
    return job


def failed_crop(conn: redis.Redis, db: Database, vendor: str, record: str, code: str = "IMAGE_NOT_FOUND") -> Job:
    """A face-crop dead letter whose record row is failed, owned by that job."""
    job_id = f"job-{vendor}-{record}"
    db.queue_records(vendor, "proj", [(record, job_id, URL)], job_kind=contracts.KIND_FACE_CROP)
    db.update_record(vendor, record, {"processing_status": "failed", "error_code": code,
                                      "error_message": "gone", "attempts": 1}, job_id=job_id)
    payload = {"vendorId": vendor, "projectId": "proj", "recordId": record, "photoUrl": URL, "mode": "square",
               "options": {}}
    return fail_job(conn, contracts.QUEUE_FACE_CROP, contracts.JOB_CROP_FACE, code=code, job_id=job_id,
                    kwargs={"payload": payload},
                    meta={"vendor_id": vendor, "record_id": record, "attempts": 1, "max_attempts": 4})


def post(client: FlaskClient, action: str, body: Any, headers: dict[str, str] = ADMIN) -> Any:
    return client.post(f"/api/admin/failed-jobs/{action}", json=body, headers=headers)


def test_admin_endpoints_are_404_without_a_password_and_401_without_credentials(
        redis_conn: redis.Redis, settings: dict[str, Any], client: FlaskClient) -> None:
    disabled = create_app({**settings, "admin_password": ""}).test_client()
    assert_error(disabled.get("/api/admin/failed-jobs", headers=ADMIN), 404, "NOT_FOUND")
    assert_error(disabled.post("/api/admin/failed-jobs/requeue", json={"queue": "face-crop"}, headers=ADMIN),
                 404, "NOT_FOUND")
    resp = client.get("/api/admin/failed-jobs")
    assert_error(resp, 401, "ADMIN_AUTH_REQUIRED")
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}
    assert_error(client.get("/api/admin/failed-jobs", headers=wrong), 401, "ADMIN_AUTH_REQUIRED")
    assert client.get("/api/admin/failed-jobs", headers=ADMIN).status_code == 200


def test_list_filters_by_queue_vendor_and_code_and_pages(client: FlaskClient, redis_conn: redis.Redis,
                                                         db: Database) -> None:
    a1 = failed_crop(redis_conn, db, "acme", "r1")
    failed_crop(redis_conn, db, "acme", "r2", code="NO_FACE")
    failed_crop(redis_conn, db, "globex", "r3")
    chunk = fail_job(redis_conn, contracts.face_detection_queue(7), contracts.JOB_PROCESS_CHUNK,
                     code="FETCH_FAILED", args=("b1", 0, 15), job_id=chunk_job_id("b1", 0),
                     meta={"vendor_id": "acme", "batch_id": "b1"}, permanent=False)

    body = client.get("/api/admin/failed-jobs", headers=ADMIN).get_json()
    assert body["success"] is True and body["count"] == 4 and body["hasMore"] is False
    assert body["failedByQueue"]["face-crop"] == 3 and body["failedByQueue"]["face-detection-7"] == 1
    entry = next(job for job in body["jobs"] if job["id"] == a1.id)
    assert entry["queue"] == "face-crop" and entry["vendor"] == "acme" and entry["kind"] == "face_crop"
    assert entry["code"] == "IMAGE_NOT_FOUND" and entry["message"] == "IMAGE_NOT_FOUND happened"
    assert entry["recordId"] == "r1" and entry["attempts"] == 1 and entry["func"] == contracts.JOB_CROP_FACE
    assert entry["failedAt"].endswith("Z") and entry["requeues"] == 0

    def ids(query: str) -> set[str]:
        resp = client.get(f"/api/admin/failed-jobs?{query}", headers=ADMIN)
        assert resp.status_code == 200, resp.get_json()
        return {job["id"] for job in resp.get_json()["jobs"]}

    assert ids("vendor=acme&code=IMAGE_NOT_FOUND") == {a1.id}
    assert ids("code=image_not_found") == {a1.id, "job-globex-r3"}
    assert ids("queue=face-detection") == {chunk.id}
    chunk_entry = client.get("/api/admin/failed-jobs?queue=face-detection-7", headers=ADMIN).get_json()["jobs"][0]
    assert (chunk_entry["kind"], chunk_entry["batchId"], chunk_entry["firstSeq"], chunk_entry["lastSeq"]) == \
        ("batch_chunk", "b1", 0, 15)
    assert ids("vendor=nobody") == set()

    page1 = client.get("/api/admin/failed-jobs?queue=face-crop&limit=2", headers=ADMIN).get_json()
    assert page1["count"] == 2 and page1["hasMore"] is True and page1["nextOffset"] == 2
    page2 = client.get("/api/admin/failed-jobs?queue=face-crop&limit=2&offset=2", headers=ADMIN).get_json()
    assert page2["count"] == 1 and page2["hasMore"] is False
    assert len({job["id"] for job in page1["jobs"] + page2["jobs"]}) == 3

    assert_error(client.get("/api/admin/failed-jobs?queue=nope", headers=ADMIN), 400, "VALIDATION_ERROR", "queue")
    assert_error(client.get("/api/admin/failed-jobs?limit=0", headers=ADMIN), 400, "VALIDATION_ERROR", "limit")
    assert_error(client.get("/api/admin/failed-jobs?code=a%20b", headers=ADMIN), 400, "VALIDATION_ERROR", "code")


def test_requeue_puts_the_record_back_to_queued_and_the_job_in_its_queue(
        client: FlaskClient, redis_conn: redis.Redis, db: Database) -> None:
    job = failed_crop(redis_conn, db, "acme", "r1")
    resp = post(client, "requeue", {"jobIds": [job.id]})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body == {"success": True, "matched": 1, "requeued": 1, "jobIds": [job.id], "skipped": [], "more": False}

    row = db.get_record("acme", "r1")
    assert row is not None
    assert (row["processing_status"], row["error_code"], row["error_message"]) == ("queued", None, None)
    assert row["current_job_id"] == job.id and row["attempts"] == 1
    queue = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn)
    assert queue.job_ids == [job.id]
    assert FailedJobRegistry(contracts.QUEUE_FACE_CROP, connection=redis_conn).count == 0
    again = rqjson.fetch(job.id, connection=redis_conn)
    assert again.get_status() == JobStatus.QUEUED
    assert "error" not in again.meta and again.meta["requeues"] == 1 and again.meta["progress"] == 0
    assert again.retries_left == 3 and again.meta["max_attempts"] == 1 + 1 + 3
    # Nothing is left to requeue.
    assert post(client, "requeue", {"jobIds": [job.id]}).get_json()["skipped"][0]["reason"] == "NOT_FOUND"


def test_a_superseded_record_is_not_reopened(client: FlaskClient, redis_conn: redis.Redis, db: Database) -> None:
    old = failed_crop(redis_conn, db, "acme", "r1")
    db.queue_records("acme", "proj", [("r1", "newer-job", URL)], job_kind=contracts.KIND_FACE_CROP)
    body = post(client, "requeue", {"vendor": "acme"}).get_json()
    assert body["requeued"] == 0 and body["skipped"][0]["id"] == old.id
    assert body["skipped"][0]["reason"] == "RECORD_SUPERSEDED"
    row = db.get_record("acme", "r1")
    assert row is not None and row["current_job_id"] == "newer-job" and row["processing_status"] == "queued"
    assert old.id in FailedJobRegistry(contracts.QUEUE_FACE_CROP, connection=redis_conn)


def test_requeue_of_a_dead_chunk_reopens_only_its_leftover_images(
        client: FlaskClient, redis_conn: redis.Redis, db: Database) -> None:
    """on_chunk_failure failed the chunk's pending images with its error; requeue undoes exactly that."""
    batch_id = "bchunk1"
    db.create_batch(batch_id, "acme", "proj", source="urls", priority=7, mode="square", options={},
                    status=BATCH_PROCESSING)
    db.add_batch_items(batch_id, [{"seq": i, "record_id": f"rec{i}", "source": URL, "status": ITEM_PENDING}
                                  for i in range(4)])
    db.queue_records("acme", "proj", [(f"rec{i}", batch_id, URL) for i in range(4)],
                     job_kind=contracts.KIND_BATCH_FACE_CROP)
    db.record_item_outcomes(batch_id, [
        {"seq": 0, "status": "completed", "output_url": "http://x/0.jpg"},
        {"seq": 1, "status": ITEM_FAILED, "error_code": "NO_FACE", "error_message": "no face"},
        {"seq": 2, "status": ITEM_FAILED, "error_code": "FETCH_FAILED", "error_message": "503"},
        {"seq": 3, "status": ITEM_FAILED, "error_code": "FETCH_FAILED", "error_message": "503"},
    ])
    for seq in (2, 3):
        db.update_record("acme", f"rec{seq}", {"processing_status": "failed", "error_code": "FETCH_FAILED"},
                         job_id=batch_id)
    before = db.get_batch(batch_id)
    assert before is not None and before["status"] == BATCH_COMPLETED_WITH_ERRORS
    assert (before["processed"], before["failed"]) == (4, 3)
    chunk = fail_job(redis_conn, contracts.face_detection_queue(7), contracts.JOB_PROCESS_CHUNK,
                     code="FETCH_FAILED", args=(batch_id, 0, 3), job_id=chunk_job_id(batch_id, 0),
                     meta={"vendor_id": "acme", "batch_id": batch_id}, permanent=False)

    body = post(client, "requeue", {"queue": "face-detection", "code": "FETCH_FAILED"}).get_json()
    assert body["requeued"] == 1 and body["jobIds"] == [chunk.id], body

    batch = db.get_batch(batch_id)
    assert batch is not None and batch["status"] == BATCH_PROCESSING and batch["completed_at"] is None
    assert (batch["processed"], batch["failed"]) == (2, 1)
    statuses = {item["seq"]: (item["status"], item["error_code"]) for item in db.batch_items(batch_id)}
    assert statuses == {0: ("completed", None), 1: (ITEM_FAILED, "NO_FACE"), 2: (ITEM_PENDING, None),
                        3: (ITEM_PENDING, None)}
    for seq, status in ((1, "queued"), (2, "queued"), (3, "queued")):
        row = db.get_record("acme", f"rec{seq}")
        assert row is not None
        if seq == 1:  # its record was never marked failed here; it is left as it was
            continue
        assert (row["processing_status"], row["error_code"]) == (status, None)
    # The chunk waits in its queue (or RQ's rate-limited set) with its retries back.
    again = rqjson.fetch(chunk.id, connection=redis_conn)
    assert again.get_status() in (JobStatus.QUEUED, JobStatus.RATE_LIMITED)
    assert again.retries_left == 3 and "error" not in again.meta
    # Requeued again while nothing failed with that code: there is nothing to retry.
    fail_job(redis_conn, contracts.face_detection_queue(7), contracts.JOB_PROCESS_CHUNK, code="TIMEOUT_X",
             args=(batch_id, 0, 3), job_id="other-chunk", meta={"vendor_id": "acme", "batch_id": batch_id})
    db.record_item_outcomes(batch_id, [{"seq": 2, "status": "completed"}, {"seq": 3, "status": "completed"}])
    skipped = post(client, "requeue", {"jobIds": ["other-chunk"]}).get_json()["skipped"]
    assert [entry["reason"] for entry in skipped] == ["NOTHING_TO_RETRY"]


def test_a_zip_chunk_whose_extracted_images_are_gone_is_not_requeued(
        client: FlaskClient, redis_conn: redis.Redis, db: Database, tmp_path: Path) -> None:
    batch_id = "bzip1"
    db.create_batch(batch_id, "acme", "proj", source="zip", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING)
    kept = tmp_path / "kept.jpg"
    kept.write_bytes(b"\xff\xd8\xff")
    db.add_batch_items(batch_id, [{"seq": 0, "source": str(kept), "status": ITEM_PENDING},
                                  {"seq": 1, "source": str(tmp_path / "gone.jpg"), "status": ITEM_PENDING}])
    db.record_item_outcomes(batch_id, [{"seq": s, "status": ITEM_FAILED, "error_code": "UNEXPECTED_ERROR"}
                                       for s in (0, 1)])
    chunk = fail_job(redis_conn, contracts.face_detection_queue(5), contracts.JOB_PROCESS_CHUNK,
                     code="UNEXPECTED_ERROR", args=(batch_id, 0, 1), job_id=chunk_job_id(batch_id, 0),
                     meta={"vendor_id": "acme", "batch_id": batch_id}, permanent=False)
    assert post(client, "requeue", {"jobIds": [chunk.id]}).get_json()["requeued"] == 1
    assert [item["status"] for item in db.batch_items(batch_id)] == [ITEM_PENDING, ITEM_FAILED]

    # With every extracted file gone the chunk stays a dead letter, and says why.
    rqjson.queue(contracts.face_detection_queue(5), connection=redis_conn).empty()
    kept.unlink()
    db.record_item_outcomes(batch_id, [{"seq": 0, "status": ITEM_FAILED, "error_code": "UNEXPECTED_ERROR"}])
    again = fail_job(redis_conn, contracts.face_detection_queue(5), contracts.JOB_PROCESS_CHUNK,
                     code="UNEXPECTED_ERROR", args=(batch_id, 0, 1), job_id="bzip1-again",
                     meta={"vendor_id": "acme", "batch_id": batch_id}, permanent=False)
    skipped = post(client, "requeue", {"jobIds": [again.id]}).get_json()["skipped"]
    assert skipped[0]["reason"] == "NOTHING_TO_RETRY" and "gone" in skipped[0]["message"]


def test_an_ingestion_whose_zip_is_gone_is_skipped(client: FlaskClient, redis_conn: redis.Redis,
                                                    db: Database, tmp_path: Path) -> None:
    db.create_batch("bing1", "acme", "proj", source="zip", priority=5, mode="square", options={},
                    status=BATCH_FAILED)
    job = fail_job(redis_conn, contracts.QUEUE_BATCH_INGESTION, contracts.JOB_INGEST_ZIP, code="CORRUPT_ARCHIVE",
                   args=("bing1", str(tmp_path / "missing.zip")), job_id=ingest_job_id("bing1"),
                   meta={"vendor_id": "acme", "batch_id": "bing1"})
    body = post(client, "requeue", {"queue": "batch-ingestion"}).get_json()
    assert body["requeued"] == 0 and body["skipped"][0]["reason"] == "SOURCE_GONE"
    assert job.id in FailedJobRegistry(contracts.QUEUE_BATCH_INGESTION, connection=redis_conn)


def test_bulk_requeue_pages_through_the_registry_and_stops_at_the_limit(
        client: FlaskClient, redis_conn: redis.Redis, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dead_letters, "PAGE_SIZE", 3)
    jobs = [failed_crop(redis_conn, db, "acme", f"r{i}") for i in range(7)]
    for i in range(3):
        failed_crop(redis_conn, db, "acme", f"nf{i}", code="NO_FACE")
    first = post(client, "requeue", {"code": "IMAGE_NOT_FOUND", "limit": 4}).get_json()
    assert first["requeued"] == 4 and first["more"] is True
    rest = post(client, "requeue", {"code": "IMAGE_NOT_FOUND"}).get_json()
    assert rest["requeued"] == 3 and rest["more"] is False
    assert set(first["jobIds"]) | set(rest["jobIds"]) == {job.id for job in jobs}
    registry = FailedJobRegistry(contracts.QUEUE_FACE_CROP, connection=redis_conn)
    assert registry.count == 3  # the NO_FACE ones
    deleted = post(client, "delete", {"queue": ["face-crop"], "code": "NO_FACE"}).get_json()
    assert deleted["deleted"] == 3 and registry.count == 0
    assert not Job.exists(deleted["jobIds"][0], connection=redis_conn)
    row = db.get_record("acme", "nf0")
    assert row is not None and row["processing_status"] == "failed"  # history stays


def test_bulk_changes_need_a_filter_and_refuse_unknown_fields(client: FlaskClient) -> None:
    assert_error(post(client, "requeue", {}), 400, "VALIDATION_ERROR", "filter")
    assert_error(post(client, "delete", {"vendr": "acme", "queue": "face-crop"}), 400, "VALIDATION_ERROR", "vendr")
    assert_error(post(client, "delete", {"jobIds": "abc"}), 400, "VALIDATION_ERROR", "jobIds")
    # An empty filter value never widens a bulk change to the whole queue.
    assert_error(post(client, "delete", {"queue": "face-crop", "jobIds": []}), 400, "VALIDATION_ERROR", "jobIds")
    assert_error(post(client, "delete", {"queue": "face-crop", "vendor": ""}), 400, "VALIDATION_ERROR", "vendor")
    assert_error(post(client, "delete", {"queue": []}), 400, "VALIDATION_ERROR", "queue")
    assert_error(post(client, "requeue", {"queue": "face-crop", "limit": 0}), 400, "VALIDATION_ERROR", "limit")
    assert_error(client.post("/api/admin/failed-jobs/delete", data="x", headers=ADMIN), 415,
                 "UNSUPPORTED_MEDIA_TYPE")


def test_cli_lists_requeues_and_deletes(redis_conn: redis.Redis, db: Database, settings: dict[str, Any],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", settings["redis_url"])
    monkeypatch.setenv("DATABASE_URL", settings["database_url"])
    a = failed_crop(redis_conn, db, "acme", "r1")
    b = failed_crop(redis_conn, db, "globex", "r2", code="NO_FACE")
    runner = CliRunner()

    listed = runner.invoke(cli, ["dead-letters", "list", "--queue", "face-crop"])
    assert listed.exit_code == 0, listed.output
    assert a.id in listed.output and b.id in listed.output and "face-crop=2" in listed.output
    only = runner.invoke(cli, ["dead-letters", "list", "--vendor", "globex", "--json"])
    assert only.exit_code == 0 and b.id in only.output and a.id not in only.output

    assert runner.invoke(cli, ["dead-letters", "requeue"]).exit_code == 2  # no filter
    bad = runner.invoke(cli, ["dead-letters", "requeue", "--queue", "nope"])
    assert bad.exit_code == 2 and "unknown queue" in bad.output
    requeued = runner.invoke(cli, ["dead-letters", "requeue", "--code", "IMAGE_NOT_FOUND"])
    assert requeued.exit_code == 0, requeued.output
    assert f"requeued {a.id}" in requeued.output and "requeued 1, skipped 0" in requeued.output
    row = db.get_record("acme", "r1")
    assert row is not None and row["processing_status"] == "queued"

    refused = runner.invoke(cli, ["dead-letters", "delete", "--job-id", b.id], input="n\n")
    assert refused.exit_code == 1 and Job.exists(b.id, connection=redis_conn)
    deleted = runner.invoke(cli, ["dead-letters", "delete", "--job-id", b.id, "--yes"])
    assert deleted.exit_code == 0 and "deleted 1" in deleted.output
    assert not Job.exists(b.id, connection=redis_conn)
