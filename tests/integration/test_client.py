"""The Python client (imagequeue_client) against the running stack: the SDK in-process, the CLI as
a subprocess, and Idempotency-Key behaviour through Gunicorn (lost answers, concurrent duplicates).
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from core import contracts, rqjson
from imagequeue_client import AuthenticationError, BadRequest, Client, NotFound
from service import idempotency
from tests.conftest import ROOT, free_port
from tests.stack import PhotoServer, Stack, create_vendor, sqlite_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("client-stack")
    with sqlite_stack(redis_url, tmp, {"BATCH_CHUNK_SIZE": "4"}) as running:
        running.start_worker(contracts.QUEUE_FACE_CROP, contracts.QUEUE_BATCH_INGESTION,
                             *contracts.FACE_DETECTION_QUEUES)
        yield running


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return create_vendor(stack.env, "sdk")


@pytest.fixture(scope="module")
def client(stack: Stack, key: str) -> Iterator[Client]:
    with Client(stack.base_url, key, timeout=10) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def photos(astronaut_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/a.jpg"] = astronaut_jpeg
    yield server
    server.close()


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def jobs_for_record(stack: Stack, record_id: str) -> list[str]:
    """Every RQ job in Redis whose payload is for this record."""
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    ids = [key.decode().split(":", 2)[2] for key in conn.scan_iter("rq:job:*") if key.count(b":") == 2]
    jobs = [job for job in rqjson.fetch_many(ids, connection=conn) if job is not None]
    return [job.id for job in jobs if (job.kwargs or {}).get("payload", {}).get("recordId") == record_id]


# --- SDK -----------------------------------------------------------------------------------
def test_sdk_queues_waits_and_downloads(client: Client, photos: PhotoServer, tmp_path: Path) -> None:
    queued = client.crop_face("sdk-1", "p1", photos.url("/a.jpg"), "passport")
    seen: list[str] = []
    job = client.wait_for_job(queued["jobId"], timeout=60, on_update=lambda body: seen.append(body["state"]))
    assert job["state"] == "completed" and seen[-1] == "completed"
    saved = client.download(job["result"]["photoUrl"], tmp_path / "out" / "sdk-1.jpg")
    assert image_size(saved) == (413, 531)
    assert client.record("sdk-1")["status"] == "completed"
    bulk = client.bulk_crop_face(["sdk-2", "sdk-3"], "p1", [photos.url("/a.jpg")] * 2)
    assert [client.wait_for_job(job_id, timeout=60)["state"] for job_id in bulk["jobIds"]] == ["completed"] * 2
    assert set(client.queue_stats()) >= {"backgroundRemoval", "faceCrop", "imageProcessing"}
    # No background-removal worker runs here: the jobs wait in their queue.
    single = client.remove_background("sdk-bg", "p1", photos.url("/a.jpg"), options={"bgColor": "#ffffff"})
    several = client.bulk_remove_background(["sdk-bg2", "sdk-bg3"], "p1", [photos.url("/a.jpg")] * 2)
    assert client.job(single["jobId"])["state"] == "waiting" and several["count"] == 2


def test_sdk_batches_from_urls_and_zip(client: Client, photos: PhotoServer, astronaut_jpeg: bytes,
                                       tmp_path: Path) -> None:
    batch = client.add_images("p1", [("u1", photos.url("/a.jpg")), {"recordId": "u2", "imageUrl": photos.url("/x")}])
    final = client.wait_for_batch(batch["batchId"], timeout=90, poll_interval=0.2)
    assert final["status"] == "completed_with_errors" and final["progress"]["failed"] == 1
    rows = {row["recordId"]: row for row in client.batch_results(batch["batchId"])}
    assert rows["u1"]["status"] == "completed" and rows["u2"]["errorCode"] == "IMAGE_NOT_FOUND"
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("one.jpg", astronaut_jpeg)
        archive.writestr("two.jpg", astronaut_jpeg)
    progress: list[tuple[int, int]] = []
    uploaded = client.upload_zip(path, "p1", priority=7, on_progress=lambda sent, total: progress.append((sent, total)))
    assert uploaded["imageCount"] == 2 and progress[-1][0] == progress[-1][1] > path.stat().st_size
    assert client.wait_for_batch(uploaded["batchId"], timeout=90, poll_interval=0.2)["status"] == "completed"
    assert client.batch_queue_stats()["faceDetection"]["failed"] == 0


def test_sdk_errors_carry_the_api_code(stack: Stack, client: Client, photos: PhotoServer) -> None:
    with pytest.raises(AuthenticationError) as denied:
        Client(stack.base_url, "iq_not-a-key", retries=0).job("x")
    assert denied.value.status == 401 and denied.value.code == "INVALID_API_KEY"
    with pytest.raises(BadRequest) as bad:
        client.crop_face("sdk-bad", "p1", photos.url("/a.jpg"), "selfie")
    assert bad.value.code == "VALIDATION_ERROR" and bad.value.field == "mode"
    with pytest.raises(NotFound) as missing:
        client.job("0" * 32)
    assert missing.value.code == "JOB_NOT_FOUND"


class DropFirstAnswer:
    """A loopback HTTP proxy that forwards the first request but hangs up instead of answering it:
    the server did the work, the client never heard back (what a retried submission meets)."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self.port = free_port()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.post(upstream + self.path, data=body, headers=headers, timeout=10)
                proxy.seen.append({"key": self.headers.get("Idempotency-Key"), "status": answer.status_code,
                                   "replayed": answer.headers.get("Idempotent-Replayed"), "body": answer.json()})
                if len(proxy.seen) == 1:
                    self.close_connection = True  # hang up without a word
                    return
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Idempotent-Replayed"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_lost_answer_is_retried_with_the_same_key_and_queues_once(stack: Stack, key: str,
                                                                      photos: PhotoServer) -> None:
    proxy = DropFirstAnswer(stack.base_url)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", key, retries=2, backoff_s=0.1) as sdk:
            answer = sdk.crop_face("sdk-lost", "p1", photos.url("/a.jpg"))
    finally:
        proxy.close()
    first, second = proxy.seen
    assert first["status"] == second["status"] == 202 and first["key"] == second["key"] and first["key"]
    assert second["replayed"] == "true" and first["replayed"] is None
    assert answer["jobId"] == first["body"]["jobId"] == second["body"]["jobId"]
    assert jobs_for_record(stack, "sdk-lost") == [answer["jobId"]]


def test_a_duplicate_sent_while_the_first_runs_gets_409_then_the_answer(stack: Stack, key: str,
                                                                         photos: PhotoServer) -> None:
    body = json.dumps({"recordId": "sdk-race", "projectId": "p1", "mode": "square",
                       "photoUrl": photos.url("/a.jpg")}).encode()
    idem = str(uuid.uuid4())
    port = int(stack.base_url.rsplit(":", 1)[1])
    # The first request: headers and half of its body; the server takes the key, then waits for the rest.
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    first.sendall(f"POST /api/image-queue/crop-face-queue HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                  f"Idempotency-Key: {idem}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                  "Connection: close\r\n\r\n".encode() + body[:20])
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    deadline = time.monotonic() + 10
    while conn.get(idempotency.redis_key("sdk", idem)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    duplicate = requests.post(f"{stack.base_url}/api/image-queue/crop-face-queue", data=body, timeout=10,
                              headers={"X-API-Key": key, "Idempotency-Key": idem, "Content-Type": "application/json"})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert int(duplicate.headers["Retry-After"]) > 0

    # The SDK meets the same 409, waits Retry-After and asks again: by then it gets the first answer.
    statuses: list[int] = []
    session = requests.Session()
    session.hooks["response"].append(lambda response, *args, **kwargs: statuses.append(response.status_code))
    outcome: dict[str, Any] = {}
    sdk = Client(stack.base_url, key, session=session)
    thread = threading.Thread(target=lambda: outcome.update(sdk.crop_face(
        "sdk-race", "p1", photos.url("/a.jpg"), "square", idempotency_key=idem)))
    thread.start()
    while 409 not in statuses and time.monotonic() < deadline:
        time.sleep(0.05)
    first.sendall(body[20:])
    raw = b""
    while chunk := first.recv(65536):
        raw += chunk
    first.close()
    thread.join(30)
    head, _, answer = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 202"), raw
    job_id = json.loads(answer)["jobId"]
    assert statuses == [409, 202] and outcome["jobId"] == job_id
    assert jobs_for_record(stack, "sdk-race") == [job_id]


# --- CLI -----------------------------------------------------------------------------------
def run_cli(stack: Stack, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "IMAGEQUEUE_URL": stack.base_url}
    env.pop("IMAGEQUEUE_API_KEY", None)
    if key is not None:
        env["IMAGEQUEUE_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "imagequeue_client", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_crops_waits_and_downloads(stack: Stack, key: str, photos: PhotoServer, tmp_path: Path) -> None:
    # stderr is a pipe here: --progress asks for the bars anyway (tests/test_client_cli.py: without it).
    out = run_cli(stack, "crop", photos.url("/a.jpg"), "--record", "cli-1", "--project", "p1", "--mode", "passport",
                  "--download", str(tmp_path), "--progress", key=key)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["state"] == "completed" and job["downloaded"] == [str(tmp_path / "cli-1.jpg")]
    assert image_size(tmp_path / "cli-1.jpg") == (413, 531)
    assert "100/100" in out.stderr  # the job's progress bar reached the end

    status = run_cli(stack, "status", job["id"], key=key)
    assert status.returncode == 0 and json.loads(status.stdout)["result"] == job["result"]
    queued = run_cli(stack, "remove-bg", photos.url("/a.jpg"), "--record", "cli-bg", "--project", "p1",
                     "--bg-color", "#00ff00", key=key)
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["jobId"] and "queued background removal job" in queued.stderr
    denied = run_cli(stack, "status", job["id"], key="iq_wrong")
    assert denied.returncode == 1 and "INVALID_API_KEY" in denied.stderr
    missing = run_cli(stack, "status", job["id"])
    assert missing.returncode == 2 and "IMAGEQUEUE_API_KEY" in missing.stderr


def test_cli_uploads_a_zip_watches_it_and_downloads_every_result(stack: Stack, key: str, astronaut_jpeg: bytes,
                                                                 noface_jpeg: bytes, tmp_path: Path) -> None:
    path = tmp_path / "people.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("people/ann.jpg", "people/bob.jpg", "carl.jpg"):
            archive.writestr(name, astronaut_jpeg)
        archive.writestr("people/nobody.jpg", noface_jpeg)
        archive.writestr("notes.txt", b"not a photo")
    out_dir = tmp_path / "results"
    # The key given as an option this time, after the command.
    out = run_cli(stack, "batch-zip", str(path), "--project", "p1", "--priority", "8", "--download", str(out_dir),
                  "--api-key", key, "--progress")
    assert out.returncode == 3, out.stderr  # completed_with_errors: the photo without a face
    batch = json.loads(out.stdout)
    assert batch["status"] == "completed_with_errors" and batch["progress"]["processed"] == 4
    assert sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*.jpg")) == [
        "carl.jpg", "people/ann.jpg", "people/bob.jpg"]
    for saved in out_dir.rglob("*.jpg"):
        assert image_size(saved) == (300, 300)
    manifest = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert {row["entry"]: row["status"] for row in manifest} == {
        "people/ann.jpg": "completed", "people/bob.jpg": "completed", "carl.jpg": "completed",
        "people/nobody.jpg": "failed", "notes.txt": "skipped"}
    assert "4/4" in out.stderr and "downloaded 3 file(s)" in out.stderr


def test_cli_queues_a_csv_of_urls(stack: Stack, key: str, photos: PhotoServer, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["recordId", "imageUrl"])
        writer.writerows([["csv-1", photos.url("/a.jpg")], ["csv-2", photos.url("/a.jpg")]])
    out = run_cli(stack, "batch-urls", str(path), "--project", "p1", "--watch", "--progress", key=key)
    assert out.returncode == 0, out.stderr
    batch = json.loads(out.stdout)
    assert batch["status"] == "completed" and batch["progress"]["total"] == 2
    assert "2/2" in out.stderr
    listing = run_cli(stack, "batch-status", batch["batchId"], key=key)
    assert json.loads(listing.stdout)["status"] == "completed"
    assert os.path.getsize(path) > 0


# --- cancel, lists, results ZIP, photos sent as files (issue 14) -----------------------------------
def test_sdk_sends_a_file_cancels_lists_and_downloads_the_results_zip(client: Client, photos: PhotoServer,
                                                                       astronaut_jpeg: bytes, tmp_path: Path) -> None:
    from imagequeue_client import Conflict

    photo = tmp_path / "me.jpg"
    photo.write_bytes(astronaut_jpeg)
    done = client.crop_face("sdk-file", "p-sdk", mode="square", file=photo, wait=30)
    assert done["state"] == "completed" and done["result"]["faceDetected"] is True

    batch = client.add_images("p-sdk", [("sdk-z1", photos.url("/a.jpg")), ("sdk-z2", photos.url("/a.jpg"))])
    assert client.wait_for_batch(batch["batchId"], timeout=120)["status"] == "completed"
    seen: list[int] = []
    target = client.download_results(batch["batchId"], tmp_path / "out" / "results.zip", on_progress=seen.append)
    with zipfile.ZipFile(target) as archive:
        assert [n for n in archive.namelist() if n.startswith("outputs/")] == ["outputs/sdk-z1.jpg",
                                                                             "outputs/sdk-z2.jpg"]
    assert seen and seen[-1] == target.stat().st_size
    assert batch["batchId"] in [b["batchId"] for b in client.iter_batches(project_id="p-sdk", page_size=1)]
    assert {"sdk-file", "sdk-z1", "sdk-z2"} <= {r["recordId"] for r in client.iter_records(project_id="p-sdk")}
    with pytest.raises(Conflict) as finished:
        client.cancel_batch(batch["batchId"])
    assert finished.value.code == "BATCH_NOT_CANCELABLE"
    with pytest.raises(Conflict):
        client.cancel_job(done["jobId"])


def test_cli_downloads_a_results_zip_without_a_terminal(stack: Stack, key: str, client: Client,
                                                        photos: PhotoServer, tmp_path: Path) -> None:
    batch = client.add_images("p-cli-zip", [("cli-z1", photos.url("/a.jpg"))])
    client.wait_for_batch(batch["batchId"], timeout=120)
    target = tmp_path / "r.zip"
    out = run_cli(stack, "batch", "results-zip", batch["batchId"], "-o", str(target), key=key)
    assert out.returncode == 0, out.stderr
    assert "%|" not in out.stderr and "saved" in out.stderr  # no bar: stderr is not a terminal
    with zipfile.ZipFile(target) as archive:
        assert "outputs/cli-z1.jpg" in archive.namelist() and "results.csv" in archive.namelist()
    listed = run_cli(stack, "batch", "list", "--project", "p-cli-zip", key=key)
    assert listed.returncode == 0 and json.loads(listed.stdout.splitlines()[0])["batchId"] == batch["batchId"]


def test_sdk_sends_bulk_files_with_wait_and_reads_usage(stack: Stack, client: Client, key: str,
                                                        astronaut_jpeg: bytes, tmp_path: Path) -> None:
    first, second = tmp_path / "one.jpg", tmp_path / "two.jpg"
    first.write_bytes(astronaut_jpeg)
    second.write_bytes(astronaut_jpeg)
    done = client.bulk_crop_face(["bulk-sdk-1", "bulk-sdk-2"], "p-usage", mode="passport", files=[first, second],
                                 wait=30)
    assert [job["recordId"] for job in done["jobs"]] == ["bulk-sdk-1", "bulk-sdk-2"]
    assert all(job["state"] == "completed" and job["result"]["width"] == 413 for job in done["jobs"])

    usage = client.usage(project_id="p-usage")
    assert usage["operations"]["cropFace"]["single"]["completed"] == 2
    assert usage["operations"]["removeBg"]["single"]["total"] == 0
    out = run_cli(stack, "usage", "--project", "p-usage", key=key)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["operations"]["cropFace"]["single"]["total"] == 2
