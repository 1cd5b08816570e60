"""Idempotency-Key on every POST, and the callbackUrl field, through Flask's test client on the
real private Redis and SQLite (no workers). tests/integration/test_client.py drives the same
behaviour through Gunicorn, concurrently, with the SDK.
"""
from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core import contracts, rqjson
from core.db.database import Database
from service import idempotency
from service.webhooks import create_webhook_secret
from tests.service.apps import vendor_app
from tests.service.test_api import assert_error

URL = "http://photos.example.com/a.jpg"
HOOK = "https://hooks.example.com/image-queue"


@pytest.fixture
def app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Flask]:
    def secrets(db: Database) -> None:
        create_webhook_secret(db, "acme")
        create_webhook_secret(db, "globex")

    with vendor_app(redis_url, tmp_path, ("acme", "globex", "nosecret"), prepare=secrets,
                    upload_dir=str(tmp_path / "uploads"), rate_limit_enabled=False) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def headers(app: Flask, key: str | None = None, vendor: str = "acme") -> dict[str, str]:
    sent = {"X-API-Key": app.config["KEYS"][vendor]}
    if key is not None:
        sent["Idempotency-Key"] = key
    return sent


def crop(record: str = "rec-1", **extra: Any) -> dict[str, Any]:
    return {"recordId": record, "projectId": "p1", "photoUrl": URL, "mode": "square", **extra}


def queued_jobs(redis_conn: redis.Redis, queue: str = contracts.QUEUE_FACE_CROP) -> list[str]:
    return rqjson.queue(queue, connection=redis_conn).job_ids


def test_every_image_queue_and_batch_post_route_is_idempotent(app: Flask) -> None:
    posts = {rule.endpoint for rule in app.url_map.iter_rules()
             if "POST" in (rule.methods or ()) and rule.rule.startswith(("/api/image-queue/", "/api/batch/"))}
    assert posts and posts == app.extensions["idempotent_endpoints"]


def test_a_retried_post_replays_the_first_answer_and_queues_once(app: Flask, client: FlaskClient,
                                                                  redis_conn: redis.Redis) -> None:
    first = client.post("/api/image-queue/crop-face-queue", json=crop(), headers=headers(app, "k-1"))
    assert first.status_code == 202, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    # The same body with other key order and spacing is the same request.
    again = client.post("/api/image-queue/crop-face-queue", headers={**headers(app, "k-1"),
                        "Content-Type": "application/json"},
                        data=json.dumps(dict(reversed(list(crop().items()))), indent=3))
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert queued_jobs(redis_conn) == [first.get_json()["jobId"]]
    # Without the key, or with another one, it is a new submission.
    other = client.post("/api/image-queue/crop-face-queue", json=crop(), headers=headers(app, "k-2"))
    assert other.status_code == 202 and other.get_json()["jobId"] != first.get_json()["jobId"]
    assert len(queued_jobs(redis_conn)) == 2


def test_the_same_key_for_another_request_is_refused(app: Flask, client: FlaskClient,
                                                      redis_conn: redis.Redis) -> None:
    assert client.post("/api/image-queue/crop-face-queue", json=crop(), headers=headers(app, "k")).status_code == 202
    changed = client.post("/api/image-queue/crop-face-queue", json=crop(mode="passport"), headers=headers(app, "k"))
    assert_error(changed, 422, "IDEMPOTENCY_KEY_REUSED")
    elsewhere = client.post("/api/image-queue/remove-bg-queue", json=crop(mode=None), headers=headers(app, "k"))
    assert_error(elsewhere, 422, "IDEMPOTENCY_KEY_REUSED")
    assert len(queued_jobs(redis_conn)) == 1
    assert queued_jobs(redis_conn, contracts.QUEUE_BACKGROUND_REMOVAL) == []


def test_keys_belong_to_their_vendor(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    acme = client.post("/api/image-queue/crop-face-queue", json=crop(), headers=headers(app, "shared"))
    globex = client.post("/api/image-queue/crop-face-queue", json=crop(mode="idcard"),
                         headers=headers(app, "shared", "globex"))
    assert acme.status_code == globex.status_code == 202
    assert acme.get_json()["jobId"] != globex.get_json()["jobId"]


def test_a_request_still_running_under_the_key_gets_409(app: Flask, client: FlaskClient,
                                                        redis_conn: redis.Redis) -> None:
    # What a first request that is still being processed leaves in Redis.
    redis_conn.set(idempotency.redis_key("acme", "busy"), json.dumps({"state": "running", "token": "t"}), ex=60)
    resp = client.post("/api/image-queue/crop-face-queue", json=crop(), headers=headers(app, "busy"))
    assert_error(resp, 409, "IDEMPOTENCY_KEY_IN_USE")
    assert resp.headers["Retry-After"] == str(idempotency.IN_USE_RETRY_AFTER_S)
    assert queued_jobs(redis_conn) == []


def test_errors_are_not_stored_so_a_corrected_retry_runs(app: Flask, client: FlaskClient,
                                                        redis_conn: redis.Redis) -> None:
    bad = client.post("/api/image-queue/crop-face-queue", json=crop(mode="selfie"), headers=headers(app, "fix-me"))
    assert_error(bad, 400, "VALIDATION_ERROR", "mode")
    assert redis_conn.get(idempotency.redis_key("acme", "fix-me")) is None
    good = client.post("/api/image-queue/crop-face-queue", json=crop(), headers=headers(app, "fix-me"))
    assert good.status_code == 202
    stored = json.loads(redis_conn.get(idempotency.redis_key("acme", "fix-me")) or b"{}")
    assert stored["state"] == "done" and stored["status"] == 202
    assert 0 < redis_conn.ttl(idempotency.redis_key("acme", "fix-me")) <= 24 * 3600


def test_malformed_keys_are_refused(app: Flask, client: FlaskClient) -> None:
    for key in ("", "has space", "x" * 256, "naïve"):
        resp = client.post("/api/image-queue/crop-face-queue", json=crop(),
                           headers={**headers(app), "Idempotency-Key": key})
        assert_error(resp, 400, "INVALID_IDEMPOTENCY_KEY")


def zip_bytes(count: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i in range(count):
            archive.writestr(f"p{i}.jpg", b"\xff\xd8\xff\xe0" + bytes(100))
    return buf.getvalue()


def upload(client: FlaskClient, app: Flask, data: bytes, key: str, project: str = "p1") -> Any:
    # The test client's multipart boundary differs in length from request to request.
    return client.post("/api/batch/upload-zip", headers=headers(app, key), content_type="multipart/form-data",
                       data={"projectId": project, "file": (io.BytesIO(data), "photos.zip")})


def test_zip_uploads_are_idempotent(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    first = upload(client, app, zip_bytes(2), "zip-1")
    assert first.status_code == 202, first.get_json()
    again = upload(client, app, zip_bytes(2), "zip-1")
    assert again.status_code == 202 and again.get_json()["batchId"] == first.get_json()["batchId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(queued_jobs(redis_conn, contracts.QUEUE_BATCH_INGESTION)) == 1
    assert_error(upload(client, app, zip_bytes(3), "zip-1"), 422, "IDEMPOTENCY_KEY_REUSED")
    assert_error(upload(client, app, zip_bytes(2), "zip-1", project="p2"), 422, "IDEMPOTENCY_KEY_REUSED")
    uploads = Path(app.extensions["image_queue"].settings.upload_dir)
    assert sorted(p.name for p in (uploads / "zips").iterdir()) == [f"{first.get_json()['batchId']}.zip"]
    assert list((uploads / "incoming").iterdir()) == []  # replayed and refused uploads are deleted


def test_a_replayed_upload_with_two_file_parts_leaves_neither_on_disk(app: Flask, client: FlaskClient) -> None:
    # Both parts named "file" are written to UPLOAD_DIR/incoming; a replay must delete both (issue 7 corpus).
    def send() -> Any:
        return client.post("/api/batch/upload-zip", headers=headers(app, "two-parts"),
                           content_type="multipart/form-data",
                           data={"projectId": "p1", "file": [(io.BytesIO(zip_bytes(1)), "a.zip"),
                                                             (io.BytesIO(b"second part"), "b.zip")]})

    assert send().status_code == 202
    assert send().headers["Idempotent-Replayed"] == "true"
    incoming = Path(app.extensions["image_queue"].settings.upload_dir) / "incoming"
    assert list(incoming.iterdir()) == []


# --- callbackUrl --------------------------------------------------------------------------------
def test_callback_url_goes_into_every_job_of_a_request(app: Flask, client: FlaskClient,
                                                       redis_conn: redis.Redis) -> None:
    single = client.post("/api/image-queue/crop-face-queue", json=crop(callbackUrl=HOOK), headers=headers(app))
    assert single.status_code == 202, single.get_json()
    assert rqjson.fetch(single.get_json()["jobId"], connection=redis_conn).kwargs["payload"]["callbackUrl"] == HOOK
    bulk = client.post("/api/image-queue/bulk-remove-bg", headers=headers(app), json={
        "recordIds": ["a", "b"], "projectId": "p1", "photoUrls": [URL, URL], "callbackUrl": HOOK})
    assert bulk.status_code == 202, bulk.get_json()
    for job_id in bulk.get_json()["jobIds"]:
        assert rqjson.fetch(job_id, connection=redis_conn).kwargs["payload"]["callbackUrl"] == HOOK
    status = client.get(f"/api/image-queue/job/{single.get_json()['jobId']}", headers=headers(app)).get_json()
    assert status["webhook"] == {"url": HOOK, "state": "pending", "event": None, "eventId": None, "attempts": 0}
    plain = client.post("/api/image-queue/crop-face-queue", json=crop("rec-2"), headers=headers(app)).get_json()
    assert "webhook" not in client.get(f"/api/image-queue/job/{plain['jobId']}", headers=headers(app)).get_json()


def test_callback_url_is_checked(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    for bad in ("ftp://hooks.example.com/x", "https://user:pw@hooks.example.com/", "not a url", 42):
        resp = client.post("/api/image-queue/crop-face-queue", json=crop(callbackUrl=bad), headers=headers(app))
        assert_error(resp, 400, "VALIDATION_ERROR", "callbackUrl")
    missing = client.post("/api/batch/add-images", headers=headers(app, vendor="nosecret"), json={
        "projectId": "p1", "images": [{"recordId": "r", "imageUrl": URL}], "callbackUrl": HOOK})
    body = assert_error(missing, 422, "WEBHOOK_SECRET_MISSING", "callbackUrl")
    assert "vendor webhook-secret nosecret" in body["error"]["message"]
    assert queued_jobs(redis_conn) == []


def test_batches_keep_their_callback_url(app: Flask, client: FlaskClient) -> None:
    urls = client.post("/api/batch/add-images", headers=headers(app), json={
        "projectId": "p1", "images": [{"recordId": "r", "imageUrl": URL}], "callbackUrl": HOOK})
    assert urls.status_code == 202, urls.get_json()
    zipped = client.post("/api/batch/upload-zip", headers=headers(app), content_type="multipart/form-data",
                         data={"projectId": "p1", "callbackUrl": HOOK, "file": (io.BytesIO(zip_bytes(1)), "a.zip")})
    assert zipped.status_code == 202, zipped.get_json()
    for answer in (urls, zipped):
        batch = client.get(f"/api/batch/status/{answer.get_json()['batchId']}", headers=headers(app)).get_json()
        assert batch["batch"]["webhook"]["url"] == HOOK and batch["batch"]["webhook"]["state"] == "pending"


def test_a_form_with_an_unnamed_part_and_a_key_is_a_4xx(app: Flask, client: FlaskClient) -> None:
    """Found by schemathesis: a part without a name reaches the fingerprint as None, which sorted
    against the other names raised TypeError (500)."""
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data\r\n\r\ntrue\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="projectId"\r\n\r\np1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="recordIds"\r\n\r\n["r1"]\r\n'
            f'--{boundary}--\r\n').encode()
    resp = client.post("/api/image-queue/bulk-remove-bg", headers=headers(app, "k-unnamed"), data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")
    assert_error(resp, 400, "VALIDATION_ERROR", "files[]")
