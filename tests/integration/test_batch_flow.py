"""Batches through the running stack: ZIP uploads and URL lists -> Gunicorn -> ingestion and
face-detection `rq worker` subprocesses -> storage -> database, with every outcome checked.
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from core import contracts, rqjson
from core.batch_plan import chunk_job_id
from tests.stack import PhotoServer, Stack, create_vendor, sqlite_stack

pytestmark = pytest.mark.integration

FINAL = ("completed", "completed_with_errors", "failed")


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("batch-stack")
    with sqlite_stack(redis_url, tmp, {"BATCH_CHUNK_SIZE": "3", "BATCH_VENDOR_CONCURRENCY": "2"}) as running:
        running.start_worker(contracts.QUEUE_BATCH_INGESTION)
        running.start_worker(*contracts.FACE_DETECTION_QUEUES)
        yield running


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return create_vendor(stack.env, "acme")


@pytest.fixture(scope="module")
def photos(astronaut_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/a.jpg"] = astronaut_jpeg
    server.files["/flaky.jpg"] = astronaut_jpeg
    yield server
    server.close()


def make_zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buf.getvalue()


def upload(stack: Stack, key: str, data: bytes, **form: str) -> requests.Response:
    return requests.post(f"{stack.base_url}/api/batch/upload-zip", headers={"X-API-Key": key}, timeout=30,
                         data={"projectId": "p1", **form}, files={"file": ("photos.zip", data, "application/zip")})


def wait_batch(stack: Stack, key: str, batch_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    batch: dict[str, Any] = {}
    while time.monotonic() < deadline:
        batch = requests.get(f"{stack.base_url}/api/batch/status/{batch_id}", headers={"X-API-Key": key},
                             timeout=5).json()["batch"]
        if batch["status"] in FINAL:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} still {batch.get('status')}: {batch}\n{stack.logs()}")


def results(stack: Stack, key: str, batch_id: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{stack.base_url}/api/batch/{batch_id}/results", headers={"X-API-Key": key}, timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in resp.text.splitlines()]


def thumbnail(url: str | None) -> Image.Image:
    """A thumbnail, fetched through the API's file route and decoded."""
    assert url, "no thumbnail URL"
    resp = requests.get(url, timeout=5)
    assert resp.status_code == 200, url
    image = Image.open(io.BytesIO(resp.content))
    image.load()
    return image


def fitted(size: tuple[int, int], max_px: int = 256) -> tuple[int, int]:
    scale = min(1.0, max_px / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def test_zip_batch_reports_every_entry(stack: Stack, key: str, astronaut_jpeg: bytes, noface_jpeg: bytes) -> None:
    entries = [(f"people/p{i}.jpg", astronaut_jpeg) for i in range(5)] + [
        ("people/nobody.jpg", noface_jpeg),
        ("readme.txt", b"not an image"),
        ("../../etc/evil.jpg", astronaut_jpeg),
        ("inner.zip", make_zip([("x.jpg", astronaut_jpeg)])),
        ("broken.jpg", astronaut_jpeg[:2000]),
        ("__MACOSX/._p0.jpg", b"junk"),
    ]
    resp = upload(stack, key, make_zip(entries), priority="6")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    batch = wait_batch(stack, key, body["batchId"])
    assert batch["status"] == "completed_with_errors", batch
    # 5 faces + no-face + truncated JPEG are images; text, traversal and nested ZIP are skipped.
    assert batch["imageCount"] == 7 and batch["skipped"] == 3
    assert batch["progress"]["processed"] == 7 and batch["progress"]["failed"] == 2
    assert batch["progressPercent"] == 100.0 and batch["queued"] == 7
    rows = {row["entry"]: row for row in results(stack, key, body["batchId"])}
    assert len(rows) == 10 and "__MACOSX/._p0.jpg" not in rows
    for i in range(5):
        row = rows[f"people/p{i}.jpg"]
        assert row["status"] == "completed" and row["faceDetected"] is True
        assert (row["width"], row["height"]) == (300, 300)
        image = Image.open(io.BytesIO(requests.get(row["outputUrl"], timeout=5).content))
        assert image.size == (300, 300)
        # The worker's thumbnails (THUMBNAIL_MAX_PX 256): the ZIP's source is gone, its preview stays.
        assert max(thumbnail(row["thumbnailUrl"]).size) <= 256
        source = thumbnail(row["sourceThumbnailUrl"])
        assert max(source.size) == 256 and source.size == fitted(Image.open(io.BytesIO(astronaut_jpeg)).size)
        assert len(row["faces"]) >= 1 and row["faces"][0]["box"] == row["faceBox"]
        assert isinstance(row["rollDegrees"], float)
        assert (row["sourceWidth"], row["sourceHeight"]) == Image.open(io.BytesIO(astronaut_jpeg)).size
    assert rows["people/nobody.jpg"]["status"] == "failed" and rows["people/nobody.jpg"]["errorCode"] == "NO_FACE"
    assert rows["broken.jpg"]["status"] == "failed" and rows["broken.jpg"]["errorCode"] == "NOT_AN_IMAGE"
    assert rows["readme.txt"]["status"] == "skipped" and rows["readme.txt"]["errorCode"] == "NOT_AN_IMAGE"
    assert rows["../../etc/evil.jpg"]["errorCode"] == "UNSAFE_PATH"
    assert rows["inner.zip"]["errorCode"] == "NESTED_ARCHIVE"
    outputs = sorted(p.name for p in Path(stack.env["STORAGE_DIR"]).glob(f"acme/batches/{body['batchId']}/*"))
    assert len(outputs) == 15  # each of the 5 crops with its output and source thumbnails
    assert rows["people/nobody.jpg"]["thumbnailUrl"] is None and rows["people/nobody.jpg"]["faces"] is None
    uploads = Path(stack.env["UPLOAD_DIR"])
    assert not (uploads / "zips" / f"{body['batchId']}.zip").exists()  # the upload is removed after ingest
    assert not (uploads / "batches" / body["batchId"]).exists()  # and the extracted images once done

    csv_text = requests.get(f"{stack.base_url}/api/batch/{body['batchId']}/results?format=csv",
                            headers={"X-API-Key": key}, timeout=10).text
    assert len(csv_text.strip().splitlines()) == 11
    header = csv_text.splitlines()[0].split(",")
    assert header[-6:] == ["thumbnailUrl", "sourceThumbnailUrl", "faces", "rollDegrees", "sourceWidth",
                           "sourceHeight"]


def test_truncated_zip_fails_the_batch_with_a_reason(stack: Stack, key: str, astronaut_jpeg: bytes) -> None:
    data = make_zip([(f"p{i}.jpg", astronaut_jpeg) for i in range(3)])
    resp = upload(stack, key, data[: len(data) // 2])
    assert resp.status_code == 202, resp.text
    batch = wait_batch(stack, key, resp.json()["batchId"])
    assert batch["status"] == "failed"
    assert batch["error"]["code"] == "TRUNCATED_ARCHIVE" and batch["error"]["message"]
    # The images extracted before the cut had no chunk yet: the failure callback removes them
    # too, just after it marks the batch failed.
    extracted = Path(stack.env["UPLOAD_DIR"]) / "batches" / resp.json()["batchId"]
    deadline = time.monotonic() + 10
    while extracted.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not extracted.exists(), sorted(p.name for p in extracted.iterdir())


def test_url_batch_updates_records_and_retries_transient_failures(stack: Stack, key: str,
                                                                  photos: PhotoServer) -> None:
    photos.fail_next["/flaky.jpg"] = [503]
    images = [{"recordId": f"u{i}", "imageUrl": photos.url("/a.jpg")} for i in range(4)]
    images += [{"recordId": "u-flaky", "imageUrl": photos.url("/flaky.jpg")},
               {"recordId": "u-missing", "imageUrl": photos.url("/missing.jpg")}]
    resp = requests.post(f"{stack.base_url}/api/batch/add-images", headers={"X-API-Key": key}, timeout=10,
                         json={"projectId": "p1", "priority": 9, "images": images})
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["batchId"]
    batch = wait_batch(stack, key, batch_id)
    assert batch["status"] == "completed_with_errors"
    assert batch["progress"] == {**batch["progress"], "processed": 6, "total": 6, "failed": 1}
    rows = {row["recordId"]: row for row in results(stack, key, batch_id)}
    assert rows["u-flaky"]["status"] == "completed" and rows["u-flaky"]["attempts"] == 2
    assert rows["u0"]["attempts"] == 1  # only the image that failed transiently ran twice
    assert rows["u-missing"]["errorCode"] == "IMAGE_NOT_FOUND" and rows["u-missing"]["attempts"] == 1
    record = requests.get(f"{stack.base_url}/api/image-queue/record/u2", headers={"X-API-Key": key},
                          timeout=5).json()["record"]
    assert record["status"] == "completed" and record["outputUrl"] == rows["u2"]["outputUrl"]
    assert record["jobId"] == batch_id

    # At-least-once: a chunk that runs again (e.g. after its worker died) changes no count.
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    chunk = rqjson.fetch(chunk_job_id(batch_id, 0), connection=conn)
    rqjson.queue(chunk.origin, connection=conn).enqueue_job(chunk)
    deadline = time.monotonic() + 30
    while chunk.get_status(refresh=True) != "finished" and time.monotonic() < deadline:
        time.sleep(0.1)
    again = wait_batch(stack, key, batch_id)
    assert again["progress"]["processed"] == 6 and again["progress"]["failed"] == 1


def test_non_zip_is_refused_before_a_batch_exists(stack: Stack, key: str) -> None:
    resp = upload(stack, key, b"\xff\xd8\xff\xe0 a jpeg, not a zip")
    assert resp.status_code == 415 and resp.json()["error"]["code"] == "NOT_A_ZIP"
