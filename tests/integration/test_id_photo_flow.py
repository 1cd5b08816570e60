"""ID photos as a vendor sees them: HTTP -> Gunicorn -> Redis -> `rq worker` (image-processing) ->
a real `rembg s` server (u2netp, the mask only) -> local storage -> SQLite record rows.

Portraits are built in code from scikit-image's astronaut (tests/portraits.py) and served from
loopback. The output is checked by reading it back: pixel size, dpi, the background colour in
the corners, an upright face (found again by YuNet) at the spec's height, and the report.
"""
from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import requests
from PIL import Image

from core import contracts
from tests import portraits
from tests.conftest import free_port
from tests.rembg_servers import RembgServers
from tests.stack import PhotoServer, Stack, create_vendor, running_stack, stack_env, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def photos() -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/portrait.jpg"] = portraits.jpeg(portraits.portrait(1024, angle=8))
    server.files["/two.jpg"] = portraits.jpeg(portraits.two_people())
    server.files["/tiny.jpg"] = portraits.jpeg(portraits.tiny_face())
    server.files["/cut.jpg"] = portraits.jpeg(portraits.head_cut_off())
    server.files["/blurred.jpg"] = portraits.jpeg(portraits.blurred())
    server.files["/empty.jpg"] = portraits.jpeg(portraits.canvas((600, 800), (90, 110, 140)))
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(redis_url: str, rembg_servers: RembgServers,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(redis_url).flushall()
    rembg_servers.revive()
    tmp = tmp_path_factory.mktemp("idphotostack")
    env = stack_env(redis_url=redis_url, database_url=f"sqlite:///{tmp / 'image-queue.sqlite3'}",
                    storage_dir=tmp / "files", port=free_port(), extra={"REMBG_URLS": rembg_servers.urls})
    with running_stack(env, tmp / "logs") as running:
        for _ in range(2):
            running.start_worker(contracts.QUEUE_IMAGE_PROCESSING)
        yield running


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return create_vendor(stack.env, "acme")


def post(stack: Stack, key: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{stack.base_url}/api/image-queue/{path}", json=body, headers={"X-API-Key": key},
                         timeout=10)


def run(stack: Stack, key: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = post(stack, key, "id-photo-queue", {"projectId": "p1", **body})
    assert resp.status_code == 202, resp.text
    return wait_for_job(stack.base_url, key, resp.json()["jobId"], timeout=90)


def eyes_in(image: Image.Image) -> tuple[tuple[float, float], tuple[float, float]]:
    """The eyes YuNet finds in the output (an independent look at it)."""
    from jobs.imaging.detectors import get_detector

    faces = get_detector("yunet").detect(np.asarray(image.convert("RGB")))
    assert len(faces) == 1 and faces[0].landmarks is not None, "exactly one face in the ID photo"
    return faces[0].landmarks[0], faces[0].landmarks[1]


@pytest.mark.parametrize("spec, size, eye_range_mm, height_mm", [
    ("icao", (413, 531), (22.5, 31.5), 45.0),
    ("us", (600, 600), (28.6, 34.9), 50.8),
])
def test_id_photo_is_framed_levelled_and_reported(stack: Stack, key: str, photos: PhotoServer, spec: str,
                                                  size: tuple[int, int], eye_range_mm: tuple[float, float],
                                                  height_mm: float) -> None:
    job = run(stack, key, {"recordId": f"rec-{spec}", "photoUrl": photos.url("/portrait.jpg"), "spec": spec})
    assert job["state"] == "completed", (job, stack.logs())
    result = job["result"]
    assert (result["width"], result["height"]) == size and result["dpi"] == 300
    assert result["compliant"] is True, result["report"]
    image = Image.open(io.BytesIO(requests.get(result["photoUrl"], timeout=5).content))
    assert image.format == "JPEG" and image.size == size
    assert tuple(round(v) for v in image.info["dpi"]) == (300, 300)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    for corner in (pixels[:8, :8], pixels[:8, -8:]):
        assert np.abs(corner - 255).max() <= 6, "white background in the top corners"
    right, left = eyes_in(image)
    roll = math.degrees(math.atan2(left[1] - right[1], left[0] - right[0]))
    assert abs(roll) <= 2.0, f"upright face (YuNet's eye line, {roll:.1f} degrees)"  # its landmarks are +-1 deg
    eye_mm = (size[1] - (right[1] + left[1]) / 2) / (size[1] / height_mm)
    assert eye_range_mm[0] <= eye_mm <= eye_range_mm[1], f"eye line {eye_mm:.1f} mm above the bottom"
    report = result["report"]
    assert {check["name"] for check in report["checks"]} == {
        "headHeight", "eyeLine", "roll", "yaw", "oneFace", "faceLargeEnough", "sharpness", "highlights",
        "shadows", "background"}
    assert all(check["pass"] and check["measured"] is not None for check in report["checks"])
    head = next(check for check in report["checks"] if check["name"] == "headHeight")
    assert report["spec"]["headMinMm"] <= head["measured"] <= report["spec"]["headMaxMm"]

    row = requests.get(f"{stack.base_url}/api/image-queue/record/rec-{spec}", headers={"X-API-Key": key},
                       timeout=5).json()["record"]
    assert row["status"] == "completed" and row["jobKind"] == "id_photo" and row["outputUrl"] == result["photoUrl"]
    assert row["report"] == report and (row["width"], row["height"]) == size
    # Previews for the console: the ID photo's and the source's, stored beside the output.
    assert (row["thumbnailUrl"], row["sourceThumbnailUrl"]) == (result["thumbnailUrl"], result["sourceThumbnailUrl"])
    thumb = Image.open(io.BytesIO(requests.get(result["thumbnailUrl"], timeout=5).content))
    assert thumb.format == "JPEG" and thumb.size == (round(256 * size[0] / size[1]), 256)
    source = Image.open(io.BytesIO(requests.get(result["sourceThumbnailUrl"], timeout=5).content))
    assert source.format == "JPEG" and max(source.size) == 256
    assert result["thumbnailUrl"] == result["photoUrl"].rsplit(".", 1)[0] + "-thumb.jpg"


def test_grey_background_png_and_dpi(stack: Stack, key: str, photos: PhotoServer) -> None:
    job = run(stack, key, {"recordId": "rec-grey", "photoUrl": photos.url("/portrait.jpg"), "spec": "icao",
                           "options": {"background": "#e0e0e0", "format": "png", "dpi": 400}})
    assert job["state"] == "completed", (job, stack.logs())
    image = Image.open(io.BytesIO(requests.get(job["result"]["photoUrl"], timeout=5).content))
    assert image.format == "PNG" and image.size == (551, 709)
    assert tuple(round(v) for v in image.info["dpi"]) == (400, 400)
    assert image.convert("RGB").getpixel((3, 3)) == (224, 224, 224)


def test_max_bytes_is_honoured(stack: Stack, key: str, photos: PhotoServer) -> None:
    job = run(stack, key, {"recordId": "rec-small", "photoUrl": photos.url("/portrait.jpg"), "spec": "us",
                           "options": {"maxBytes": 30000}})
    assert job["state"] == "completed", (job, stack.logs())
    assert len(requests.get(job["result"]["photoUrl"], timeout=5).content) <= 30000


@pytest.mark.parametrize("path, code", [
    ("/two.jpg", "MULTIPLE_FACES"),
    ("/tiny.jpg", "FACE_TOO_SMALL"),
    ("/cut.jpg", "FACE_CUT_OFF"),
    ("/empty.jpg", "NO_FACE"),
])
def test_bad_photos_fail_with_their_code(stack: Stack, key: str, photos: PhotoServer, path: str, code: str) -> None:
    record_id = f"rec-bad-{code.lower()}"
    job = run(stack, key, {"recordId": record_id, "photoUrl": photos.url(path), "spec": "icao"})
    assert job["state"] == "failed" and job["error"]["code"] == code, job
    assert job["attempts"] == 1, "permanent: not retried"
    row = requests.get(f"{stack.base_url}/api/image-queue/record/{record_id}", headers={"X-API-Key": key},
                       timeout=5).json()["record"]
    assert row["status"] == "failed" and row["errorCode"] == code


def test_blurred_photo_completes_but_is_not_compliant(stack: Stack, key: str, photos: PhotoServer) -> None:
    job = run(stack, key, {"recordId": "rec-blur", "photoUrl": photos.url("/blurred.jpg"), "spec": "icao"})
    assert job["state"] == "completed", (job, stack.logs())
    report = job["result"]["report"]
    failed = [check["name"] for check in report["checks"] if not check["pass"]]
    assert report["compliant"] is False and job["result"]["compliant"] is False and "sharpness" in failed


@pytest.mark.parametrize("body, field", [
    ({"spec": "passport"}, "spec"),
    ({}, "spec"),
    ({"spec": {"widthMm": 35, "heightMm": 45}}, "spec.dpi"),
    ({"spec": "icao", "options": {"background": "#0000ff"}}, "options.background"),
    ({"spec": "icao", "options": {"format": "webp"}}, "options.format"),
    ({"spec": "icao", "options": {"dpi": 5000}}, "options.dpi"),
    ({"spec": "icao", "options": {"format": "png", "maxBytes": 50000}}, "options.maxBytes"),
    ({"spec": "icao", "options": {"colour": "white"}}, "options.colour"),
])
def test_bad_requests_are_400_naming_the_field(stack: Stack, key: str, photos: PhotoServer,
                                               body: dict[str, Any], field: str) -> None:
    resp = post(stack, key, "id-photo-queue", {"recordId": "rec-400", "projectId": "p1",
                                               "photoUrl": photos.url("/portrait.jpg"), **body})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and field in str(error), error


def test_bulk_id_photos(stack: Stack, key: str, photos: PhotoServer) -> None:
    resp = post(stack, key, "bulk-id-photo", {"projectId": "p1", "recordIds": ["rec-b1", "rec-b2"],
                                              "photoUrls": [photos.url("/portrait.jpg")] * 2,
                                              "spec": {"widthMm": 40, "heightMm": 50, "dpi": 200, "headMinMm": 30,
                                                       "headMaxMm": 36, "eyeMinMm": 27, "eyeMaxMm": 35}})
    assert resp.status_code == 202, resp.text
    for job_id in resp.json()["jobIds"]:
        job = wait_for_job(stack.base_url, key, job_id, timeout=90)
        assert job["state"] == "completed", (job, stack.logs())
        assert (job["result"]["width"], job["result"]["height"]) == (315, 394) and job["result"]["compliant"]


def test_id_photo_batch(stack: Stack, key: str, photos: PhotoServer) -> None:
    stack.start_worker(contracts.face_detection_queue(5))
    resp = requests.post(f"{stack.base_url}/api/batch/add-images", headers={"X-API-Key": key}, timeout=10, json={
        "projectId": "p1", "operation": "idPhoto", "options": {"spec": "idcard"},
        "images": [{"recordId": "rec-batch-good", "imageUrl": photos.url("/portrait.jpg")},
                   {"recordId": "rec-batch-two", "imageUrl": photos.url("/two.jpg")}]})
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["batchId"]
    deadline = time.monotonic() + 120
    while True:
        batch = requests.get(f"{stack.base_url}/api/batch/status/{batch_id}", headers={"X-API-Key": key},
                             timeout=5).json()["batch"]
        if batch["status"] in ("completed", "completed_with_errors", "failed"):
            break
        assert time.monotonic() < deadline, (batch, stack.logs())
        time.sleep(0.3)
    assert batch["status"] == "completed_with_errors" and batch["operation"] == "idPhoto", batch
    rows = {record_id: requests.get(f"{stack.base_url}/api/image-queue/record/{record_id}",
                                    headers={"X-API-Key": key}, timeout=5).json()["record"]
            for record_id in ("rec-batch-good", "rec-batch-two")}
    assert rows["rec-batch-good"]["status"] == "completed" and rows["rec-batch-good"]["jobKind"] == "batch_id_photo"
    assert (rows["rec-batch-good"]["width"], rows["rec-batch-good"]["height"]) == (450, 600)
    assert rows["rec-batch-two"]["errorCode"] == "MULTIPLE_FACES"


def test_photo_sent_as_a_file_with_wait_answers_the_finished_job(stack: Stack, key: str, photos: PhotoServer) -> None:
    resp = requests.post(f"{stack.base_url}/api/image-queue/id-photo-queue", headers={"X-API-Key": key}, timeout=60,
                         data={"recordId": "rec-file", "projectId": "p1", "wait": "30",
                               "spec": '{"widthMm": 35, "heightMm": 45, "dpi": 300, "headMinMm": 32, '
                                       '"headMaxMm": 36, "eyeMinMm": 22.5, "eyeMaxMm": 31.5}',
                               "options": '{"background": "lightgrey"}'},
                         files={"file": ("portrait.jpg", photos.files["/portrait.jpg"], "image/jpeg")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["state"] == "completed" and body["recordId"] == "rec-file"
    assert (body["result"]["width"], body["result"]["height"]) == (413, 531) and body["result"]["compliant"]
    assert body["result"]["report"]["spec"]["name"] == "custom"
