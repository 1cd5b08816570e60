"""Photos sent as files (multipart ``file``) and ``wait``, through Flask's test client (no workers)."""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core import rqjson
from tests.service.apps import vendor_app
from tests.service.test_api import assert_error

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 200
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 100


@pytest.fixture
def app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Flask]:
    with vendor_app(redis_url, tmp_path, upload_dir=str(tmp_path / "uploads"), storage_dir=str(tmp_path / "files"),
                    fetch_max_bytes=10_000) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def send(app: Flask, client: FlaskClient, path: str, data: bytes | None, **form: str) -> object:
    fields: dict[str, object] = {"recordId": "rec-1", "projectId": "p", **form}
    if data is not None:
        fields["file"] = (io.BytesIO(data), "photo.bin")
    return client.post(f"/api/image-queue/{path}", headers={"X-API-Key": app.config["KEYS"]["acme"]},
                       content_type="multipart/form-data", data=fields)


def photos(tmp_path: Path) -> list[str]:
    folder = tmp_path / "uploads" / "photos"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_photo_sent_as_a_file_is_kept_for_its_job(app: Flask, client: FlaskClient, redis_conn: redis.Redis,
                                                    tmp_path: Path) -> None:
    resp = send(app, client, "crop-face-queue", JPEG, mode="square", options='{"format": "png"}')
    assert resp.status_code == 202, resp.get_json()  # type: ignore[attr-defined]
    job_id = resp.get_json()["jobId"]  # type: ignore[attr-defined]
    job = rqjson.fetch(job_id, connection=redis_conn)
    assert job.kwargs["payload"]["photoUrl"] == f"upload:{job_id}.jpg"
    assert job.kwargs["payload"]["options"]["format"] == "png"
    assert photos(tmp_path) == [f"{job_id}.jpg"]
    assert list((tmp_path / "uploads" / "incoming").iterdir()) == []  # the form parser's part was moved
    heic = send(app, client, "remove-bg-queue", HEIC)
    assert heic.status_code == 202, heic.get_json()  # type: ignore[attr-defined]
    assert f"{heic.get_json()['jobId']}.heic" in photos(tmp_path)  # type: ignore[attr-defined]
    # Canceling the job removes its photo.
    client.delete(f"/api/image-queue/job/{job_id}", headers={"X-API-Key": app.config["KEYS"]["acme"]})
    assert f"{job_id}.jpg" not in photos(tmp_path)


def test_bad_uploads_are_4xx_naming_the_problem(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    assert_error(send(app, client, "crop-face-queue", b"GIF89a" + b"\0" * 50, mode="square"), 415, "NOT_AN_IMAGE")
    assert_error(send(app, client, "crop-face-queue", JPEG + b"\0" * 20_000, mode="square"), 413,
                 "PAYLOAD_TOO_LARGE")
    assert_error(send(app, client, "crop-face-queue", None, mode="square"), 400, "VALIDATION_ERROR", "file")
    assert_error(send(app, client, "crop-face-queue", JPEG, mode="selfie"), 400, "VALIDATION_ERROR", "mode")
    assert_error(send(app, client, "crop-face-queue", JPEG, mode="square", wait="31"), 400, "VALIDATION_ERROR",
                 "wait")
    assert_error(send(app, client, "remove-bg-queue", JPEG, options="{bad"), 400, "VALIDATION_ERROR", "options")
    assert photos(tmp_path) == []
    assert list((tmp_path / "uploads" / "incoming").iterdir()) == []


def test_wait_answers_202_at_once_when_no_worker_could_run_the_job(app: Flask, client: FlaskClient) -> None:
    """No live worker on the queue (none runs here): nothing can finish in time, so no waiting.
    tests/integration/test_batch_control_flow.py gets the 200 from real workers."""
    resp = client.post("/api/image-queue/crop-face-queue", headers={"X-API-Key": app.config["KEYS"]["acme"]},
                       json={"recordId": "r", "projectId": "p", "mode": "square", "wait": 30,
                             "photoUrl": "http://photos.example.com/a.jpg"})
    assert resp.status_code == 202 and resp.get_json()["jobId"]


def test_a_photo_larger_than_a_json_body_is_accepted(redis_url: str, tmp_path: Path, redis_conn: redis.Redis) -> None:
    """MAX_JSON_BYTES caps JSON bodies; a form's cap is FETCH_MAX_BYTES per photo (it was 413 before)."""
    with vendor_app(redis_url, tmp_path, upload_dir=str(tmp_path / "uploads"), max_json_bytes=50_000,
                    fetch_max_bytes=250_000) as app:
        client = app.test_client()
        big = JPEG + b"\0" * 200_000  # two stay under the test client's 500 kB spooling (it leaks that file)
        resp = send(app, client, "crop-face-queue", big, mode="square")
        assert resp.status_code == 202, resp.get_json()  # type: ignore[attr-defined]
        bulk = bulk_send(app, client, "bulk-remove-bg", [big, big], recordIds='["a", "b"]')
        assert bulk.status_code == 202, bulk.get_json()  # type: ignore[attr-defined]
        assert_error(client.post("/api/image-queue/crop-face-queue", headers={"X-API-Key": app.config["KEYS"]["acme"]},
                                 json={"recordId": "r", "projectId": "p", "mode": "square",
                                       "photoUrl": "http://photos.example.com/" + "a" * 60_000}),
                     413, "PAYLOAD_TOO_LARGE")


def bulk_send(app: Flask, client: FlaskClient, path: str, files: list[bytes], part: str = "files[]",
              **form: object) -> object:
    fields: list[tuple[str, object]] = [("projectId", "p"), *form.items()]
    fields += [(part, (io.BytesIO(data), f"photo{index}.bin")) for index, data in enumerate(files)]
    from werkzeug.datastructures import MultiDict

    return client.post(f"/api/image-queue/{path}", headers={"X-API-Key": app.config["KEYS"]["acme"]},
                       content_type="multipart/form-data", data=MultiDict(fields))


def test_bulk_photos_sent_as_files_are_kept_one_per_job(app: Flask, client: FlaskClient, redis_conn: redis.Redis,
                                                        tmp_path: Path) -> None:
    resp = bulk_send(app, client, "bulk-crop-face", [JPEG, HEIC], recordIds='["r1", "r2"]', mode="passport",
                     options='{"format": "png"}')
    assert resp.status_code == 202, resp.get_json()  # type: ignore[attr-defined]
    body = resp.get_json()  # type: ignore[attr-defined]
    assert body["recordIds"] == ["r1", "r2"] and body["count"] == 2
    payloads = [rqjson.fetch(job_id, connection=redis_conn).kwargs["payload"] for job_id in body["jobIds"]]
    assert [p["photoUrl"] for p in payloads] == [f"upload:{body['jobIds'][0]}.jpg", f"upload:{body['jobIds'][1]}.heic"]
    assert [p["recordId"] for p in payloads] == ["r1", "r2"]
    assert {p["mode"] for p in payloads} == {"passport"} and payloads[0]["options"]["format"] == "png"
    assert photos(tmp_path) == sorted([f"{body['jobIds'][0]}.jpg", f"{body['jobIds'][1]}.heic"])
    # recordIds as repeated fields, and parts named "files", work too.
    again = bulk_send(app, client, "bulk-id-photo", [JPEG], part="files", recordIds="r3", spec="us")
    assert again.status_code == 202, again.get_json()  # type: ignore[attr-defined]
    assert list((tmp_path / "uploads" / "incoming").iterdir()) == []


def test_bad_bulk_uploads_are_4xx_naming_the_photo_and_keep_nothing(app: Flask, client: FlaskClient,
                                                                    tmp_path: Path) -> None:
    gif = b"GIF89a" + b"\0" * 50
    assert_error(bulk_send(app, client, "bulk-remove-bg", [JPEG, gif], recordIds='["a", "b"]'), 415,
                 "NOT_AN_IMAGE")
    resp = bulk_send(app, client, "bulk-remove-bg", [JPEG, gif], recordIds='["a", "b"]')
    assert resp.get_json()["error"]["details"] == {"field": "files[1]"}  # type: ignore[attr-defined]
    assert_error(bulk_send(app, client, "bulk-remove-bg", [JPEG, JPEG + b"\0" * 20_000], recordIds='["a", "b"]'),
                 413, "PAYLOAD_TOO_LARGE")
    assert_error(bulk_send(app, client, "bulk-remove-bg", [JPEG], recordIds='["a", "b"]'), 400, "VALIDATION_ERROR",
                 "files[]")
    assert_error(bulk_send(app, client, "bulk-remove-bg", [JPEG, JPEG], recordIds='["a", "a"]'), 400,
                 "VALIDATION_ERROR", "recordIds[1]")
    assert_error(bulk_send(app, client, "bulk-remove-bg", [JPEG], recordIds='["a"'), 400, "VALIDATION_ERROR",
                 "recordIds")
    assert_error(bulk_send(app, client, "bulk-crop-face", [JPEG], recordIds='["a"]', mode="selfie"), 400,
                 "VALIDATION_ERROR", "mode")
    assert_error(bulk_send(app, client, "bulk-crop-face", [JPEG], recordIds='["a"]', mode="square", wait="99"),
                 400, "VALIDATION_ERROR", "wait")
    assert photos(tmp_path) == []
    assert list((tmp_path / "uploads" / "incoming").iterdir()) == []


def test_bulk_wait_answers_202_at_once_when_no_worker_could_run_the_jobs(app: Flask, client: FlaskClient) -> None:
    resp = client.post("/api/image-queue/bulk-remove-bg", headers={"X-API-Key": app.config["KEYS"]["acme"]},
                       json={"recordIds": ["a"], "projectId": "p", "wait": 30,
                             "photoUrls": ["http://photos.example.com/a.jpg"]})
    assert resp.status_code == 202 and resp.get_json()["jobIds"]
