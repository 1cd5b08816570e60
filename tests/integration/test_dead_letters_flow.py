"""Dead letters through the running stack: real failures in `rq worker`, then the admin API and
the CLI list, requeue and delete them, and the requeued jobs really finish.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from rq.registry import FailedJobRegistry

from core import contracts
from core.batch_plan import chunk_job_id
from tests.conftest import ROOT
from tests.integration.test_batch_flow import results, wait_batch
from tests.stack import PhotoServer, Stack, create_vendor, sqlite_stack, wait_for_job

pytestmark = pytest.mark.integration

ADMIN = ("ops", "dead-letter-admin-pass")


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dead-letter-stack")
    with sqlite_stack(redis_url, tmp, {"ADMIN_USERNAME": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1], "JOB_RETRIES": "1",
                                       "RATE_LIMIT_ENABLED": "false"}) as running:
        running.start_worker(contracts.QUEUE_FACE_CROP, *contracts.FACE_DETECTION_QUEUES)
        yield running


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return create_vendor(stack.env, "acme")


@pytest.fixture(scope="module")
def photos(astronaut_jpeg: bytes, noface_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/a.jpg"] = astronaut_jpeg
    server.files["/noface.jpg"] = noface_jpeg
    server.files["/page.jpg"] = b"<html>not an image</html>"
    yield server
    server.close()


def queue_crop(stack: Stack, key: str, record_id: str, url: str) -> str:
    resp = requests.post(f"{stack.base_url}/api/image-queue/crop-face-queue", headers={"X-API-Key": key},
                         json={"recordId": record_id, "projectId": "p1", "mode": "square", "photoUrl": url},
                         timeout=10)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


def record(stack: Stack, key: str, record_id: str) -> dict[str, Any]:
    resp = requests.get(f"{stack.base_url}/api/image-queue/record/{record_id}", headers={"X-API-Key": key},
                        timeout=5)
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["record"])


def admin_get(stack: Stack, query: str) -> dict[str, Any]:
    resp = requests.get(f"{stack.base_url}/api/admin/failed-jobs?{query}", auth=ADMIN, timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def admin_post(stack: Stack, action: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = requests.post(f"{stack.base_url}/api/admin/failed-jobs/{action}", json=body, auth=ADMIN, timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def cli(stack: Stack, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "service.cli", "dead-letters", *args], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_admin_routes_need_the_admin(stack: Stack, key: str) -> None:
    resp = requests.get(f"{stack.base_url}/api/admin/failed-jobs", headers={"X-API-Key": key}, timeout=5)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "ADMIN_AUTH_REQUIRED"
    assert resp.headers["WWW-Authenticate"].startswith("Basic")


def test_a_failed_job_is_listed_requeued_through_the_api_and_completes(
        stack: Stack, key: str, photos: PhotoServer, astronaut_jpeg: bytes) -> None:
    job_id = queue_crop(stack, key, "dl-late", photos.url("/late.jpg"))  # not there yet: permanent 404
    failed = wait_for_job(stack.base_url, key, job_id)
    assert failed["state"] == "failed" and failed["error"]["code"] == "IMAGE_NOT_FOUND", stack.logs()
    assert record(stack, key, "dl-late")["status"] == "failed"

    listed = admin_get(stack, "queue=face-crop&vendor=acme&code=IMAGE_NOT_FOUND")
    entry = next(job for job in listed["jobs"] if job["id"] == job_id)
    assert entry["recordId"] == "dl-late" and entry["attempts"] == 1 and entry["permanent"] is True
    assert listed["failedByQueue"]["face-crop"] >= 1

    photos.files["/late.jpg"] = astronaut_jpeg  # the vendor's host has the photo now
    body = admin_post(stack, "requeue", {"jobIds": [job_id]})
    assert body["requeued"] == 1 and body["jobIds"] == [job_id], body
    done = wait_for_job(stack.base_url, key, job_id)
    assert done["state"] == "completed", stack.logs()
    assert done["attempts"] == 2 and "error" not in done
    row = record(stack, key, "dl-late")
    assert row["status"] == "completed" and row["errorCode"] is None
    assert row["outputUrl"] == done["result"]["photoUrl"]
    assert job_id not in {job["id"] for job in admin_get(stack, "queue=face-crop")["jobs"]}


def test_a_dead_letter_whose_record_was_queued_again_is_left_alone(stack: Stack, key: str,
                                                                  photos: PhotoServer) -> None:
    old = queue_crop(stack, key, "dl-again", photos.url("/never-there.jpg"))
    assert wait_for_job(stack.base_url, key, old)["state"] == "failed"
    new = queue_crop(stack, key, "dl-again", photos.url("/a.jpg"))
    assert wait_for_job(stack.base_url, key, new)["state"] == "completed", stack.logs()

    body = admin_post(stack, "requeue", {"jobIds": [old]})
    assert body["requeued"] == 0 and body["skipped"][0]["reason"] == "RECORD_SUPERSEDED", body
    row = record(stack, key, "dl-again")
    assert row["status"] == "completed" and row["jobId"] == new


def test_a_dead_batch_chunk_is_requeued_with_the_cli_and_its_images_finish(
        stack: Stack, key: str, photos: PhotoServer, astronaut_jpeg: bytes) -> None:
    # Two images whose host answers 503 every time: the chunk spends its retry (JOB_RETRIES=1),
    # then on_chunk_failure fails them with FETCH_FAILED and the batch ends with errors.
    for path in ("/down-1.jpg", "/down-2.jpg"):
        photos.files[path] = astronaut_jpeg
        photos.fail_next[path] = [503] * 100
    images = [{"recordId": "b-ok", "imageUrl": photos.url("/a.jpg")},
              {"recordId": "b-noface", "imageUrl": photos.url("/noface.jpg")},
              {"recordId": "b-down-1", "imageUrl": photos.url("/down-1.jpg")},
              {"recordId": "b-down-2", "imageUrl": photos.url("/down-2.jpg")}]
    resp = requests.post(f"{stack.base_url}/api/batch/add-images", headers={"X-API-Key": key}, timeout=10,
                         json={"projectId": "p1", "priority": 6, "images": images})
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["batchId"]
    batch = wait_batch(stack, key, batch_id)
    assert batch["status"] == "completed_with_errors", stack.logs()
    assert (batch["progress"]["processed"], batch["progress"]["failed"]) == (4, 3)
    assert record(stack, key, "b-down-1")["errorCode"] == "FETCH_FAILED"

    chunk = chunk_job_id(batch_id, 0)
    listed = cli(stack, "list", "--queue", "face-detection", "--code", "FETCH_FAILED")
    assert chunk in listed and "face-detection-6" in listed

    for path in ("/down-1.jpg", "/down-2.jpg"):
        photos.fail_next[path] = []  # the host is back
    out = cli(stack, "requeue", "--queue", "face-detection", "--vendor", "acme")
    assert f"requeued {chunk}" in out and "requeued 1, skipped 0" in out, out

    batch = wait_batch(stack, key, batch_id)
    assert batch["status"] == "completed_with_errors", stack.logs()
    assert (batch["progress"]["processed"], batch["progress"]["failed"]) == (4, 1)  # only NO_FACE is left
    rows = {row["recordId"]: row for row in results(stack, key, batch_id)}
    assert rows["b-noface"]["status"] == "failed" and rows["b-noface"]["errorCode"] == "NO_FACE"
    for record_id in ("b-down-1", "b-down-2"):
        assert rows[record_id]["status"] == "completed" and rows[record_id]["outputUrl"]
        row = record(stack, key, record_id)
        assert row["status"] == "completed" and row["errorCode"] is None
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    assert chunk not in FailedJobRegistry(contracts.face_detection_queue(6), connection=conn)


def test_dead_letters_are_deleted_in_bulk(stack: Stack, key: str, photos: PhotoServer) -> None:
    job_ids = [queue_crop(stack, key, f"dl-page-{i}", photos.url("/page.jpg")) for i in range(3)]
    for job_id in job_ids:
        assert wait_for_job(stack.base_url, key, job_id)["error"]["code"] == "NOT_AN_IMAGE"
    body = admin_post(stack, "delete", {"queue": "face-crop", "code": "NOT_AN_IMAGE"})
    assert body["deleted"] == 3 and sorted(body["jobIds"]) == sorted(job_ids), body
    gone = requests.get(f"{stack.base_url}/api/image-queue/job/{job_ids[0]}", headers={"X-API-Key": key},
                        timeout=5)
    assert gone.status_code == 404
    assert record(stack, key, "dl-page-0")["status"] == "failed"  # the record keeps its history
    assert admin_get(stack, "code=NOT_AN_IMAGE")["count"] == 0
