"""HTTP -> Gunicorn -> Redis -> `rq worker` subprocess -> storage -> database, as a vendor sees it.

Runs once on SQLite and once on the real MariaDB. The photo host is a loopback HTTP server
(the stack allows 127.0.0.0/8 explicitly, as the dev stack does).
"""
from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from core import contracts, rqjson
from core.db.database import connect
from tests.conftest import free_port
from tests.stack import PhotoServer, Stack, create_vendor, running_stack, stack_env, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def photos(astronaut_jpeg: bytes, noface_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/astronaut.jpg"] = astronaut_jpeg
    server.files["/flaky.jpg"] = astronaut_jpeg
    server.files["/noface.jpg"] = noface_jpeg
    server.files["/html.jpg"] = b"<html><body>not an image</body></html>"
    yield server
    server.close()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'image-queue.sqlite3'}"
    return str(request.getfixturevalue("mysql_url"))


@pytest.fixture(scope="module")
def stack(redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(redis_url).flushall()
    tmp = tmp_path_factory.mktemp("stack")
    env = stack_env(redis_url=redis_url, database_url=database_url, storage_dir=tmp / "files",
                    port=free_port())
    with running_stack(env, tmp / "logs") as running:
        running.start_worker(contracts.QUEUE_FACE_CROP)
        yield running


@pytest.fixture(scope="module")
def keys(stack: Stack) -> dict[str, str]:
    return {vendor: create_vendor(stack.env, vendor) for vendor in ("acme", "globex")}


def post(stack: Stack, key: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{stack.base_url}{path}", json=body, headers={"X-API-Key": key}, timeout=10)


def record(stack: Stack, key: str, record_id: str) -> dict[str, Any]:
    resp = requests.get(f"{stack.base_url}/api/image-queue/record/{record_id}", headers={"X-API-Key": key},
                        timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()["record"]


def test_passport_crop_completes_with_framed_photo(stack: Stack, keys: dict[str, str], photos: PhotoServer) -> None:
    resp = post(stack, keys["acme"], "/api/image-queue/crop-face-queue",
                {"recordId": "rec-pass", "projectId": "p1", "mode": "passport",
                 "photoUrl": photos.url("/astronaut.jpg")})
    assert resp.status_code == 202, resp.text
    job = wait_for_job(stack.base_url, keys["acme"], resp.json()["jobId"])
    assert job["state"] == "completed", stack.logs()
    result = job["result"]
    assert result["faceDetected"] is True and result["faceCount"] >= 1
    assert (result["width"], result["height"]) == (413, 531)
    box = result["faceBox"]
    # The astronaut's face sits around x 340-480, y 120-300 in the 1024 px photo.
    assert 250 < box["x"] + box["width"] / 2 < 560 and 60 < box["y"] + box["height"] / 2 < 360, box
    assert job["attempts"] == 1 and job["progress"] == 100

    image = Image.open(io.BytesIO(requests.get(result["photoUrl"], timeout=5).content))
    assert image.format == "JPEG" and image.size == (413, 531)

    row = record(stack, keys["acme"], "rec-pass")
    assert row["status"] == "completed" and row["outputUrl"] == result["photoUrl"]
    assert row["faceDetected"] is True and row["faceBox"] == box
    assert (row["width"], row["height"]) == (413, 531) and row["errorCode"] is None
    # Issue 12: every face and the roll are kept in the row, as the job returned them.
    assert row["faces"] == result["faces"] and row["faces"][0]["box"] == box
    assert row["rollDegrees"] == result["rollDegrees"] and isinstance(row["rollDegrees"], float)
    # Issue 15 item 3: the worker's thumbnails, beside the output, at most 256 px.
    assert (row["thumbnailUrl"], row["sourceThumbnailUrl"]) == (result["thumbnailUrl"], result["sourceThumbnailUrl"])
    thumb = Image.open(io.BytesIO(requests.get(result["thumbnailUrl"], timeout=5).content))
    assert thumb.format == "JPEG" and thumb.size == (199, 256)  # 413x531 shrunk
    source = Image.open(io.BytesIO(requests.get(result["sourceThumbnailUrl"], timeout=5).content))
    assert source.format == "JPEG" and source.size == (256, 256)  # the 1024 px astronaut


def test_bulk_square_crops_all_complete(stack: Stack, keys: dict[str, str], photos: PhotoServer) -> None:
    ids = [f"bulk-{i}" for i in range(4)]
    resp = post(stack, keys["acme"], "/api/image-queue/bulk-crop-face",
                {"recordIds": ids, "projectId": "p1", "mode": "square",
                 "photoUrls": [photos.url("/astronaut.jpg")] * 4})
    assert resp.status_code == 202, resp.text
    for job_id, record_id in zip(resp.json()["jobIds"], ids, strict=True):
        job = wait_for_job(stack.base_url, keys["acme"], job_id)
        assert job["state"] == "completed", stack.logs()
        assert (job["result"]["width"], job["result"]["height"]) == (300, 300)
        assert record(stack, keys["acme"], record_id)["status"] == "completed"


def test_transient_fetch_failure_is_retried(stack: Stack, keys: dict[str, str], photos: PhotoServer) -> None:
    photos.fail_next["/flaky.jpg"] = [503, 503]
    hits_before = photos.hits.get("/flaky.jpg", 0)
    resp = post(stack, keys["acme"], "/api/image-queue/crop-face-queue",
                {"recordId": "rec-flaky", "projectId": "p1", "mode": "square",
                 "photoUrl": photos.url("/flaky.jpg")})
    job = wait_for_job(stack.base_url, keys["acme"], resp.json()["jobId"], timeout=60)
    assert job["state"] == "completed", stack.logs()
    assert job["attempts"] == 3
    assert photos.hits["/flaky.jpg"] - hits_before == 3
    assert record(stack, keys["acme"], "rec-flaky")["attempts"] == 3


@pytest.mark.parametrize("path, mode, code", [
    ("/noface.jpg", "passport", "NO_FACE"),
    ("/missing.jpg", "square", "IMAGE_NOT_FOUND"),
    ("/html.jpg", "idcard", "NOT_AN_IMAGE"),
])
def test_permanent_failure_fails_at_once_with_code(stack: Stack, keys: dict[str, str], photos: PhotoServer,
                                                   path: str, mode: str, code: str) -> None:
    record_id = f"rec-perm-{code.lower()}"
    resp = post(stack, keys["acme"], "/api/image-queue/crop-face-queue",
                {"recordId": record_id, "projectId": "p1", "mode": mode, "photoUrl": photos.url(path)})
    job = wait_for_job(stack.base_url, keys["acme"], resp.json()["jobId"])
    assert job["state"] == "failed", stack.logs()
    assert job["error"]["code"] == code and job["error"]["permanent"] is True
    assert job["attempts"] == 1
    row = record(stack, keys["acme"], record_id)
    assert row["status"] == "failed" and row["errorCode"] == code and row["errorMessage"]
    failed = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis.Redis.from_url(stack.env["REDIS_URL"]))
    assert resp.json()["jobId"] in failed.failed_job_registry.get_job_ids()


def test_rerun_of_completed_job_changes_nothing(stack: Stack, keys: dict[str, str], photos: PhotoServer) -> None:
    resp = post(stack, keys["acme"], "/api/image-queue/crop-face-queue",
                {"recordId": "rec-twice", "projectId": "p1", "mode": "square",
                 "photoUrl": photos.url("/astronaut.jpg")})
    job_id = resp.json()["jobId"]
    first = wait_for_job(stack.base_url, keys["acme"], job_id)
    before = record(stack, keys["acme"], "rec-twice")
    hits = photos.hits["/astronaut.jpg"]
    # At-least-once delivery: the same job runs again (as after its worker's parent died).
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    job = rqjson.fetch(job_id, connection=conn)
    rqjson.queue(contracts.QUEUE_FACE_CROP, connection=conn).enqueue_job(job)
    time.sleep(0.5)
    second = wait_for_job(stack.base_url, keys["acme"], job_id)
    assert second["result"] == first["result"]
    assert record(stack, keys["acme"], "rec-twice") == before
    assert photos.hits["/astronaut.jpg"] == hits  # not fetched, processed or uploaded again
    outputs = list(Path(stack.env["STORAGE_DIR"]).glob("acme/p1/rec-twice/*"))
    assert len(outputs) == 3, outputs  # the crop and its two thumbnails, written once


def test_vendor_isolation_through_the_stack(stack: Stack, keys: dict[str, str], photos: PhotoServer) -> None:
    resp = post(stack, keys["acme"], "/api/image-queue/crop-face-queue",
                {"recordId": "rec-private", "projectId": "p1", "mode": "square",
                 "photoUrl": photos.url("/astronaut.jpg")})
    job_id = resp.json()["jobId"]
    other = requests.get(f"{stack.base_url}/api/image-queue/job/{job_id}", headers={"X-API-Key": keys["globex"]},
                         timeout=5)
    assert other.status_code == 404 and other.json()["error"]["code"] == "JOB_NOT_FOUND"
    assert wait_for_job(stack.base_url, keys["acme"], job_id)["state"] == "completed"


def test_health_sees_the_worker(stack: Stack) -> None:
    body = requests.get(f"{stack.base_url}/api/worker/health", timeout=5).json()
    assert body["redis"]["status"] == "up" and body["db"]["status"] == "up"
    assert body["workers"][contracts.QUEUE_FACE_CROP] == 1


def test_records_are_in_the_database(stack: Stack, keys: dict[str, str]) -> None:
    db = connect(stack.env["DATABASE_URL"])
    row = db.get_record("acme", "rec-pass")
    assert row is not None and row["processing_status"] == "completed"
    assert db.get_record("globex", "rec-pass") is None
