"""Batch control through the running stack: cancel halfway, lists, results ZIPs, background-removal
batches. Gunicorn, the ingestion and face-detection `rq worker` subprocesses and three real
`rembg s` servers; outcomes checked in the API, the ZIP, the storage folder and UPLOAD_DIR.
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from core import contracts, rqjson
from tests.integration.test_batch_flow import make_zip, upload
from tests.rembg_servers import RembgServers, photo_jpeg
from tests.stack import PhotoServer, Stack, create_vendor, sqlite_stack

pytestmark = pytest.mark.integration

FINAL = ("completed", "completed_with_errors", "failed", "canceled")


@pytest.fixture(scope="module")
def stack(redis_url: str, rembg_servers: RembgServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    rembg_servers.revive()
    tmp = tmp_path_factory.mktemp("batch-control-stack")
    extra = {"BATCH_CHUNK_SIZE": "3", "BATCH_VENDOR_CONCURRENCY": "2", "STORAGE_BACKEND": "local",
             "REMBG_URLS": rembg_servers.urls, "RATE_LIMIT_ENABLED": "false"}
    with sqlite_stack(redis_url, tmp, extra) as running:
        running.start_worker(contracts.QUEUE_BATCH_INGESTION)
        running.start_worker(*contracts.FACE_DETECTION_QUEUES)
        yield running


@pytest.fixture(scope="module")
def keys(stack: Stack) -> dict[str, str]:
    return {vendor: create_vendor(stack.env, vendor) for vendor in ("acme", "globex")}


@pytest.fixture(scope="module")
def photos(astronaut_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/a.jpg"] = astronaut_jpeg
    yield server
    server.close()


def api(stack: Stack, key: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{stack.base_url}{path}", headers={"X-API-Key": key}, timeout=30, **kwargs)


def status(stack: Stack, key: str, batch_id: str) -> dict[str, Any]:
    return dict(api(stack, key, "GET", f"/api/batch/status/{batch_id}").json()["batch"])


def wait_until(stack: Stack, what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what}\n{stack.logs()}")


def rows(stack: Stack, key: str, batch_id: str) -> list[dict[str, Any]]:
    resp = api(stack, key, "GET", f"/api/batch/{batch_id}/results")
    return [json.loads(line) for line in resp.text.splitlines()]


def queues_drained(stack: Stack) -> bool:
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    return all(rqjson.queue(name, connection=conn).count == 0
               and rqjson.queue(name, connection=conn).started_job_registry.get_job_count(cleanup=False) == 0
               for name in contracts.FACE_DETECTION_QUEUES)


def test_a_batch_canceled_halfway_ends_canceled_with_exact_counts_and_no_stray_files(
        stack: Stack, keys: dict[str, str], astronaut_jpeg: bytes, noface_jpeg: bytes) -> None:
    key = keys["acme"]
    # Big enough that the cancel lands mid-way even on a fast, idle machine (a few images done).
    entries = [(f"people/p{i:03d}.jpg", astronaut_jpeg if i % 7 else noface_jpeg) for i in range(400)]
    resp = upload(stack, key, make_zip(entries), priority="5")
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["batchId"]
    wait_until(stack, "no image of the batch finished",
               lambda: status(stack, key, batch_id)["progress"]["processed"] >= 3)

    canceled = api(stack, key, "POST", f"/api/batch/{batch_id}/cancel")
    assert canceled.status_code == 200, canceled.text  # 400 images at 3 a chunk: far from done yet
    assert canceled.json()["batch"]["status"] == "canceled"
    wait_until(stack, "chunk jobs still queued or running", lambda: queues_drained(stack))

    batch = status(stack, key, batch_id)
    listed = rows(stack, key, batch_id)
    counts = Counter(row["status"] for row in listed)
    # A cancel during ingestion stops it too: the batch holds the images ingested by then.
    assert batch["status"] == "canceled" and 3 <= batch["imageCount"] <= 400 == len(entries)
    assert len(listed) == batch["imageCount"]
    assert batch["canceled"] == counts["canceled"] > 0
    assert batch["progress"]["processed"] == counts["completed"] + counts["failed"] >= 3
    assert batch["progress"]["failed"] == counts["failed"]
    assert batch["progress"]["processed"] + batch["canceled"] == batch["imageCount"] and counts["pending"] == 0
    # No stray files: the upload and the extracted images are gone, and storage holds exactly
    # the outputs of the completed images (an image finished as the cancel landed was removed).
    uploads = Path(stack.env["UPLOAD_DIR"])
    assert not (uploads / "batches" / batch_id).exists()
    assert not (uploads / "zips" / f"{batch_id}.zip").exists()
    stored = sorted(p.name for p in (Path(stack.env["STORAGE_DIR"]) / "acme" / "batches" / batch_id).glob("*"))
    assert stored == sorted(Path(row[column]).name for row in listed if row["status"] == "completed"
                            for column in ("outputUrl", "thumbnailUrl", "sourceThumbnailUrl"))
    again = api(stack, key, "POST", f"/api/batch/{batch_id}/cancel")  # idempotent
    assert again.status_code == 200 and again.json()["canceledNow"] == 0


def test_lists_page_and_are_vendor_scoped(stack: Stack, keys: dict[str, str], photos: PhotoServer) -> None:
    made: dict[str, list[str]] = {"acme": [], "globex": []}
    for vendor, count in (("acme", 3), ("globex", 2)):
        for n in range(count):
            images = [{"recordId": f"{vendor}-l{n}-{i}", "imageUrl": photos.url("/a.jpg")} for i in range(2)]
            body = {"projectId": "lists", "images": images}
            resp = api(stack, keys[vendor], "POST", "/api/batch/add-images", json=body)
            assert resp.status_code == 202, resp.text
            made[vendor].append(resp.json()["batchId"])
    for vendor, key in keys.items():
        seen: list[str] = []
        cursor = ""
        while True:
            page = api(stack, key, "GET", f"/api/batch?projectId=lists&limit=2&cursor={cursor}").json()
            assert len(page["batches"]) <= 2
            seen += [batch["batchId"] for batch in page["batches"]]
            cursor = page["nextCursor"]
            if not cursor:
                break
        assert seen == list(reversed(made[vendor]))
        records: list[str] = []
        cursor = ""
        while True:
            page = api(stack, key, "GET", f"/api/image-queue/records?projectId=lists&limit=3&cursor={cursor}").json()
            records += [record["recordId"] for record in page["records"]]
            cursor = page["nextCursor"]
            if not cursor:
                break
        assert sorted(records) == sorted(f"{vendor}-l{n}-{i}" for n in range(len(made[vendor])) for i in range(2))
    assert api(stack, keys["globex"], "GET", f"/api/batch/status/{made['acme'][0]}").status_code == 404
    assert api(stack, keys["globex"], "GET", f"/api/batch/{made['acme'][0]}/results.zip").status_code == 404


def _results_zip(stack: Stack, key: str, batch_id: str) -> zipfile.ZipFile:
    resp = api(stack, key, "GET", f"/api/batch/{batch_id}/results.zip")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(resp.content))
    assert archive.testzip() is None
    return archive


def test_results_zip_of_a_crop_batch_has_the_outputs_and_the_listing(
        stack: Stack, keys: dict[str, str], astronaut_jpeg: bytes, noface_jpeg: bytes) -> None:
    key = keys["acme"]
    resp = upload(stack, key, make_zip([("people/ann.jpg", astronaut_jpeg), ("people/bob.jpg", astronaut_jpeg),
                                        ("empty.jpg", noface_jpeg)]))
    batch_id = resp.json()["batchId"]
    wait_until(stack, "batch not finished", lambda: status(stack, key, batch_id)["status"] in FINAL)
    archive = _results_zip(stack, key, batch_id)
    assert archive.namelist() == ["outputs/people/ann.jpg", "outputs/people/bob.jpg", "results.jsonl",
                                  "results.csv", "batch.json"]
    with Image.open(io.BytesIO(archive.read("outputs/people/ann.jpg"))) as crop:
        assert crop.format == "JPEG" and crop.size == (300, 300)
    listed = {row["entry"]: row for row in map(json.loads, archive.read("results.jsonl").splitlines())}
    assert listed["people/ann.jpg"]["file"] == "outputs/people/ann.jpg"
    assert listed["empty.jpg"]["status"] == "failed" and listed["empty.jpg"]["file"] is None
    assert len(archive.read("results.csv").decode().splitlines()) == 4
    summary = json.loads(archive.read("batch.json"))
    assert summary["complete"] is True and summary["status"] == "completed_with_errors"


def test_a_zip_batch_of_background_removals_comes_back_as_pngs_with_alpha(stack: Stack, keys: dict[str, str]) -> None:
    key = keys["acme"]
    photo = photo_jpeg(320)
    resp = upload(stack, key, make_zip([(f"shop/item{i}.jpg", photo) for i in range(4)]), operation="removeBg")
    assert resp.status_code == 202, resp.text
    assert resp.json()["operation"] == "removeBg"
    batch_id = resp.json()["batchId"]
    batch = wait_until(stack, "background-removal batch not finished",
                       lambda: (lambda b: b if b["status"] in FINAL else None)(status(stack, key, batch_id)))
    assert batch["status"] == "completed" and batch["operation"] == "removeBg", batch
    archive = _results_zip(stack, key, batch_id)
    outputs = [name for name in archive.namelist() if name.startswith("outputs/")]
    assert outputs == [f"outputs/shop/item{i}.jpg.png" for i in range(4)]
    for name in outputs:
        with Image.open(io.BytesIO(archive.read(name))) as cut:
            assert cut.format == "PNG" and cut.mode == "RGBA" and cut.size == (320, 320)
            alpha = cut.getchannel("A")
            low, high = alpha.getextrema()
            assert low == 0 and high == 255  # a real cut-out: transparent background, opaque subject
    assert json.loads(archive.read("batch.json"))["operation"] == "removeBg"
    # The listing in the ZIP names each cut-out's thumbnail: WebP with the alpha kept, at most 256 px.
    for row in (json.loads(line) for line in archive.read("results.jsonl").splitlines()):
        with Image.open(io.BytesIO(requests.get(row["thumbnailUrl"], timeout=5).content)) as thumb:
            assert thumb.format == "WEBP" and thumb.mode == "RGBA" and max(thumb.size) <= 256
            low, high = thumb.getchannel("A").getextrema()
            assert low == 0 and high >= 250  # transparent background, opaque subject (area-averaged)
        with Image.open(io.BytesIO(requests.get(row["sourceThumbnailUrl"], timeout=5).content)) as source:
            assert source.format == "JPEG" and source.size == (256, 256)


def ensure_face_crop_worker(stack: Stack) -> None:
    """Start a face-crop worker unless one runs (the module's stack starts batch workers only)."""
    from rq import Worker

    queue = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis.Redis.from_url(stack.env["REDIS_URL"]))
    if Worker.count(queue=queue) == 0:
        stack.start_worker(contracts.QUEUE_FACE_CROP)
        wait_until(stack, "face-crop worker not up", lambda: Worker.count(queue=queue) > 0)


def test_a_photo_sent_as_a_file_with_wait_comes_back_in_one_call(stack: Stack, keys: dict[str, str],
                                                                  astronaut_jpeg: bytes) -> None:
    import pillow_heif

    ensure_face_crop_worker(stack)
    heic = io.BytesIO()
    with Image.open(io.BytesIO(astronaut_jpeg)) as photo:
        pillow_heif.from_pillow(photo.convert("RGB")).save(heic, quality=90)
    for name, data in (("astronaut.jpg", astronaut_jpeg), ("astronaut.heic", heic.getvalue())):
        resp = requests.post(f"{stack.base_url}/api/image-queue/crop-face-queue", timeout=60,
                             headers={"X-API-Key": keys["acme"]},
                             data={"recordId": f"upload-{name}", "projectId": "direct", "mode": "passport",
                                   "wait": "30"},
                             files={"file": (name, data, "application/octet-stream")})
        assert resp.status_code == 200, resp.text  # finished within the wait: one call
        body = resp.json()
        assert body["state"] == "completed" and body["jobId"] and body["result"]["faceDetected"] is True
        assert body["data"]["photoUrl"].startswith("upload:")
        output = requests.get(body["result"]["photoUrl"], timeout=10)
        with Image.open(io.BytesIO(output.content)) as crop:
            assert crop.size == (body["result"]["width"], body["result"]["height"])
        pattern = f"{body['jobId']}.*"
        folder = Path(stack.env["UPLOAD_DIR"]) / "photos"
        wait_until(stack, "uploaded photo not removed after its job",
                   lambda folder=folder, pattern=pattern: not any(folder.glob(pattern)))


def test_bulk_photos_sent_as_files_with_wait_come_back_in_one_call(stack: Stack, keys: dict[str, str],
                                                                   astronaut_jpeg: bytes) -> None:
    """bulk-crop-face with files[] and wait, through Gunicorn and a real worker; one photo is a
    phone-sized JPEG bigger than a JSON body may be (MAX_JSON_BYTES)."""
    ensure_face_crop_worker(stack)
    big = io.BytesIO()
    with Image.open(io.BytesIO(astronaut_jpeg)) as photo:
        photo.convert("RGB").resize((2400, 2400)).save(big, "JPEG", quality=97)
    assert len(big.getvalue()) > 1024 * 1024
    resp = requests.post(f"{stack.base_url}/api/image-queue/bulk-crop-face", timeout=60,
                         headers={"X-API-Key": keys["acme"]},
                         data={"recordIds": json.dumps(["bulk-small", "bulk-big"]), "projectId": "direct",
                               "mode": "square", "wait": "30"},
                         files=[("files[]", ("a.jpg", astronaut_jpeg, "image/jpeg")),
                                ("files[]", ("big.jpg", big.getvalue(), "image/jpeg"))])
    assert resp.status_code == 200, resp.text  # every job finished within the wait
    jobs = resp.json()["jobs"]
    assert [job["recordId"] for job in jobs] == ["bulk-small", "bulk-big"]
    assert all(job["state"] == "completed" and job["result"]["faceDetected"] for job in jobs), jobs
    records = api(stack, keys["acme"], "GET", "/api/image-queue/records?projectId=direct").json()["records"]
    assert {"bulk-small", "bulk-big"} <= {record["recordId"] for record in records if record["status"] == "completed"}


def test_an_active_job_is_stopped_by_its_worker_and_stays_canceled(stack: Stack, keys: dict[str, str],
                                                                    photos: PhotoServer,
                                                                    astronaut_jpeg: bytes) -> None:
    ensure_face_crop_worker(stack)
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    photos.files["/slow.jpg"] = astronaut_jpeg
    photos.delays["/slow.jpg"] = 5.0  # the job is active (fetching) while it is canceled
    key = keys["acme"]
    resp = api(stack, key, "POST", "/api/image-queue/crop-face-queue",
               json={"recordId": "stop-me", "projectId": "p", "mode": "square", "photoUrl": photos.url("/slow.jpg")})
    job_id = resp.json()["jobId"]
    wait_until(stack, "job never became active",
               lambda: api(stack, key, "GET", f"/api/image-queue/job/{job_id}").json()["state"] == "active")
    canceled = api(stack, key, "DELETE", f"/api/image-queue/job/{job_id}")
    assert canceled.status_code == 200 and canceled.json()["previousState"] == "active", canceled.text
    assert wait_until(stack, "the worker did not stop the job", lambda: conn.hget(f"rq:job:{job_id}", "status")
                      == b"stopped")
    job = api(stack, key, "GET", f"/api/image-queue/job/{job_id}").json()
    assert job["state"] == "canceled" and "result" not in job
    record = api(stack, key, "GET", "/api/image-queue/record/stop-me").json()["record"]
    assert record["status"] == "canceled" and record["outputUrl"] is None
    again = api(stack, key, "DELETE", f"/api/image-queue/job/{job_id}")
    assert again.status_code == 200 and again.json()["previousState"] == "canceled"
