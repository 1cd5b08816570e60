"""The HTTP API through Flask's test client, on the real private Redis and a SQLite file.

No workers run here: these tests check validation, auth, vendor scoping, enqueueing and the
error shape. tests/integration drives the same API through Gunicorn and real workers.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core import contracts, rqjson
from core.db.database import connect
from service import create_app
from service.auth import create_api_key
from tests.service.apps import vendor_app

URL = "http://photos.example.com/a.jpg"


@pytest.fixture
def app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Flask]:
    with vendor_app(redis_url, tmp_path, storage_dir=str(tmp_path / "files"), bulk_max_items=5) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def headers(app: Flask, vendor: str = "acme") -> dict[str, str]:
    return {"X-API-Key": app.config["KEYS"][vendor]}


def crop_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"recordId": "rec-1", "projectId": "proj-1", "photoUrl": URL, "mode": "passport"}
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


def assert_error(resp: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["success"] is False
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    if field is not None:
        assert body["error"]["details"]["field"] == field, body
    return body


def test_crop_face_queue_enqueues_job_and_record(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    resp = client.post("/api/image-queue/crop-face-queue", json=crop_body(options={"format": "png"}),
                       headers=headers(app))
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["success"] is True and body["recordId"] == "rec-1"
    assert body["estimatedSeconds"] > 0 and "seconds" in body["estimatedTime"]
    job = rqjson.fetch(body["jobId"], connection=redis_conn)
    assert job.func_name == contracts.JOB_CROP_FACE
    assert job.origin == contracts.QUEUE_FACE_CROP
    assert job.meta["vendor_id"] == "acme"
    assert job.retries_left == 3 and job.retry_intervals == [2, 4, 8]
    assert job.timeout == 60
    assert job.kwargs["payload"]["options"]["format"] == "png"
    assert rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn).count == 1
    record = connect(app.extensions["image_queue"].settings.database_url).get_record("acme", "rec-1")
    assert record is not None
    assert record["processing_status"] == "queued" and record["current_job_id"] == body["jobId"]

    status = client.get(f"/api/image-queue/job/{body['jobId']}", headers=headers(app)).get_json()
    assert status["state"] == "waiting" and status["progress"] == 0 and status["attempts"] == 0
    assert status["data"]["recordId"] == "rec-1" and status["maxAttempts"] == 4


def test_bearer_auth_and_matching_vendor_id_are_accepted(app: Flask, client: FlaskClient) -> None:
    resp = client.post("/api/image-queue/crop-face-queue", json=crop_body(vendorId="acme"),
                       headers={"Authorization": f"Bearer {app.config['KEYS']['acme']}"})
    assert resp.status_code == 202


def test_bulk_crop_face_enqueues_each(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    body = {"recordIds": ["r1", "r2", "r3"], "projectId": "p", "photoUrls": [URL] * 3, "mode": "square"}
    resp = client.post("/api/image-queue/bulk-crop-face", json=body, headers=headers(app))
    assert resp.status_code == 202, resp.get_json()
    out = resp.get_json()
    assert out["count"] == 3 and len(set(out["jobIds"])) == 3
    assert rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn).count == 3


def test_other_vendors_job_is_not_found(app: Flask, client: FlaskClient) -> None:
    job_id = client.post("/api/image-queue/crop-face-queue", json=crop_body(),
                         headers=headers(app)).get_json()["jobId"]
    assert_error(client.get(f"/api/image-queue/job/{job_id}", headers=headers(app, "globex")), 404, "JOB_NOT_FOUND")
    assert_error(client.get("/api/image-queue/job/nope", headers=headers(app)), 404, "JOB_NOT_FOUND")
    assert_error(client.get("/api/image-queue/record/rec-1", headers=headers(app, "globex")), 404, "RECORD_NOT_FOUND")
    assert client.get("/api/image-queue/record/rec-1", headers=headers(app)).status_code == 200


def test_job_ids_rq_cannot_parse_are_not_found(app: Flask, client: FlaskClient) -> None:
    # ID_PATTERN allows '.', '@' and ':' but RQ refuses '.'/'@' with ValueError (was a 500) and
    # reads "<id>:<anything>" as job <id> (an alias): all are unknown ids (issue 7 probes).
    job_id = client.post("/api/image-queue/crop-face-queue", json=crop_body(),
                         headers=headers(app)).get_json()["jobId"]
    for probe in (f"{job_id}.json", "a@b", "x.y", f"{job_id}:x", f"{job_id}:"):
        assert_error(client.get(f"/api/image-queue/job/{probe}", headers=headers(app)), 404, "JOB_NOT_FOUND")
    assert client.get(f"/api/image-queue/job/{job_id}", headers=headers(app)).status_code == 200


@pytest.mark.parametrize("auth, code", [
    ({}, "MISSING_API_KEY"),
    ({"X-API-Key": "iq_wrong"}, "INVALID_API_KEY"),
    ({"Authorization": "Basic abc"}, "MISSING_API_KEY"),
    ({"X-API-Key": "x" * 1000}, "INVALID_API_KEY"),
])
def test_auth_errors(client: FlaskClient, auth: dict[str, str], code: str) -> None:
    assert_error(client.post("/api/image-queue/crop-face-queue", json=crop_body(), headers=auth), 401, code)
    assert_error(client.get("/api/image-queue/queue-stats", headers=auth), 401, code)


def test_revoked_key_is_refused(app: Flask, client: FlaskClient) -> None:
    connect(app.extensions["image_queue"].settings.database_url).revoke_api_keys("acme")
    assert_error(client.get("/api/image-queue/queue-stats", headers=headers(app)), 401, "INVALID_API_KEY")


def test_vendor_id_mismatch_is_forbidden(app: Flask, client: FlaskClient) -> None:
    body = assert_error(client.post("/api/image-queue/crop-face-queue", json=crop_body(vendorId="globex"),
                                    headers=headers(app)), 403, "VENDOR_MISMATCH")
    assert body["error"]["details"]["field"] == "vendorId"


@pytest.mark.parametrize("changes, field", [
    ({"recordId": None}, "recordId"),
    ({"recordId": ""}, "recordId"),
    ({"recordId": "../etc"}, "recordId"),
    ({"recordId": ["a"]}, "recordId"),
    ({"projectId": None}, "projectId"),
    ({"photoUrl": None}, "photoUrl"),
    ({"photoUrl": "ftp://x/y.jpg"}, "photoUrl"),
    ({"photoUrl": "file:///etc/passwd"}, "photoUrl"),
    ({"photoUrl": "http://user:pw@host/x.jpg"}, "photoUrl"),
    ({"photoUrl": "http://" + "a" * 3000}, "photoUrl"),
    ({"photoUrl": "http:///nohost"}, "photoUrl"),
    ({"photoUrl": 12}, "photoUrl"),
    ({"mode": None}, "mode"),
    ({"mode": "selfie"}, "mode"),
    ({"options": "big"}, "options"),
    ({"options": {"padding": -1}}, "options.padding"),
    ({"options": {"padding": "1"}}, "options.padding"),
    ({"options": {"outputWidth": 5}}, "options.outputWidth"),
    ({"options": {"outputWidth": 100.5}}, "options.outputWidth"),
    ({"options": {"format": "gif"}}, "options.format"),
    ({"options": {"quality": 0}}, "options.quality"),
    ({"options": {"noFace": "center"}}, "options.noFace"),
    ({"options": {"colour": "red"}}, "options.colour"),
])
def test_crop_validation_names_the_field(app: Flask, client: FlaskClient, changes: dict[str, Any],
                                         field: str) -> None:
    resp = client.post("/api/image-queue/crop-face-queue", json=crop_body(**changes), headers=headers(app))
    assert_error(resp, 400, "VALIDATION_ERROR", field)


@pytest.mark.parametrize("body, field", [
    ({"recordIds": "r1", "photoUrls": [URL]}, "recordIds"),
    ({"recordIds": [], "photoUrls": []}, "recordIds"),
    ({"recordIds": ["r1", "r2"], "photoUrls": [URL]}, "photoUrls"),
    ({"recordIds": ["r1"] * 6, "photoUrls": [URL] * 6}, "recordIds"),
    ({"recordIds": ["r1", "r1"], "photoUrls": [URL, URL]}, "recordIds[1]"),
    ({"recordIds": ["r1", "r2"], "photoUrls": [URL, "javascript:alert(1)"]}, "photoUrls[1]"),
    ({"recordIds": ["r1", None], "photoUrls": [URL, URL]}, "recordIds[1]"),
])
def test_bulk_validation_names_the_field(app: Flask, client: FlaskClient, body: dict[str, Any], field: str,
                                         redis_conn: redis.Redis) -> None:
    full = {"projectId": "p", "mode": "square", **body}
    assert_error(client.post("/api/image-queue/bulk-crop-face", json=full, headers=headers(app)),
                 400, "VALIDATION_ERROR", field)
    assert rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn).count == 0


def test_body_shape_errors(app: Flask, client: FlaskClient) -> None:
    path = "/api/image-queue/crop-face-queue"
    assert_error(client.post(path, data="recordId=1", headers=headers(app)), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_error(client.post(path, data="{not json", content_type="application/json", headers=headers(app)),
                 400, "INVALID_JSON")
    assert_error(client.post(path, json=[1, 2], headers=headers(app)), 400, "INVALID_JSON")
    assert_error(client.post(path, data="[" * 100000 + "]" * 100000, content_type="application/json",
                             headers=headers(app)), 400, "INVALID_JSON")
    big = {"recordId": "r", "pad": "x" * (2 * 1024 * 1024)}
    assert_error(client.post(path, json=big, headers=headers(app)), 413, "PAYLOAD_TOO_LARGE")


def test_routing_errors_are_json(app: Flask, client: FlaskClient) -> None:
    assert_error(client.get("/nope"), 404, "NOT_FOUND")
    resp = assert_error(client.get("/api/image-queue/crop-face-queue", headers=headers(app)),
                        405, "METHOD_NOT_ALLOWED")
    assert resp["error"]["message"]


def test_queue_stats_shape(app: Flask, client: FlaskClient) -> None:
    client.post("/api/image-queue/crop-face-queue", json=crop_body(), headers=headers(app))
    body = client.get("/api/image-queue/queue-stats", headers=headers(app)).get_json()
    assert body["success"] is True
    for key in ("backgroundRemoval", "faceCrop", "imageProcessing"):
        assert set(body[key]) == {"waiting", "active", "completed", "failed", "delayed"}
    assert body["faceCrop"]["waiting"] == 1


def test_health_reports_missing_workers_as_degraded(client: FlaskClient) -> None:
    resp = client.get("/api/worker/health")
    body = resp.get_json()
    assert resp.status_code == 200
    assert body["status"] == "degraded"
    assert body["redis"]["status"] == "up" and body["db"]["status"] == "up"
    assert body["workers"][contracts.QUEUE_FACE_CROP] == 0
    assert body["faceCropQueueSize"] == 0 and "timestamp" in body


def test_redis_down_answers_503_quickly(tmp_path: Path, redis_conn: redis.Redis, redis_url: str) -> None:
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = connect(db_url)
    db.migrate()
    db.create_vendor("acme", "Acme")
    key = create_api_key(db, "acme")
    # Only the queue's Redis is down: the rate-limit counters live on the live one
    # (RATE_LIMIT_STORAGE_URL), so the request gets as far as enqueueing. Limits on a dead
    # Redis: tests/service/test_limits.py.
    app = create_app({"redis_url": f"redis://127.0.0.1:{dead_port}/0", "database_url": db_url,
                      "rate_limit_storage_url": redis_url})
    client = app.test_client()
    started = time.monotonic()
    resp = client.post("/api/image-queue/crop-face-queue", json=crop_body(), headers={"X-API-Key": key})
    assert time.monotonic() - started < 3
    assert_error(resp, 503, "SERVICE_UNAVAILABLE")
    assert resp.headers["Retry-After"]
    record = db.get_record("acme", "rec-1")
    assert record is not None and record["processing_status"] == "failed"
    assert record["error_code"] == "ENQUEUE_FAILED"
    assert_error(client.get("/api/image-queue/job/abc", headers={"X-API-Key": key}), 503, "SERVICE_UNAVAILABLE")
    health = client.get("/api/worker/health")
    assert health.status_code == 503 and health.get_json()["status"] == "unhealthy"


def test_database_down_answers_503(redis_url: str) -> None:
    app = create_app({"redis_url": redis_url, "database_url": "mysql://root@127.0.0.1:1/none"})
    resp = app.test_client().post("/api/image-queue/crop-face-queue", json=crop_body(),
                                  headers={"X-API-Key": "iq_whatever"})
    assert_error(resp, 503, "SERVICE_UNAVAILABLE")


def test_web_tier_does_not_import_worker_modules() -> None:
    import subprocess
    import sys

    code = ("import sys, service.wsgi; heavy = [m for m in ('cv2', 'numpy', 'jobs.imaging.face_crop', 'jobs.tasks') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
