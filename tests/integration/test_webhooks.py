"""Completion webhooks through the running stack: Gunicorn -> rq workers -> the `webhooks` worker
-> a loopback receiver that checks every signature, with failures, retries and final states.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from core import contracts
from tests.conftest import ROOT, free_port
from tests.stack import PhotoServer, Stack, sqlite_stack, wait_for_job

pytestmark = pytest.mark.integration


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    def signed_with(self, secret: str) -> bool:
        """Checks X-ImageQueue-Signature the way the README tells receivers to (independently of the code)."""
        parts = dict(part.split("=", 1) for part in self.headers["X-ImageQueue-Signature"].split(","))
        expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + self.body, hashlib.sha256).hexdigest()
        return parts["t"].isdigit() and hmac.compare_digest(parts["v1"], expected)


class Receiver:
    """A loopback webhook receiver answering each path with programmed status codes (then 200)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.answers: dict[str, list[int]] = {}
        self.always: dict[str, int] = {}
        self.port = free_port()
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    queued = receiver.answers.get(self.path)
                    status = queued.pop(0) if queued else receiver.always.get(self.path, 200)
                    receiver.deliveries.append(Delivery(self.path, dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, path: str) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.path == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("webhook-stack")
    extra = {"WEBHOOK_RETRIES": "2", "WEBHOOK_RETRY_INTERVALS_S": "1,1", "WEBHOOK_TIMEOUT_S": "3",
             "BATCH_CHUNK_SIZE": "3"}
    with sqlite_stack(redis_url, tmp, extra) as running:
        running.start_worker(contracts.QUEUE_FACE_CROP, contracts.QUEUE_BATCH_INGESTION,
                             *contracts.FACE_DETECTION_QUEUES)
        running.start_worker(contracts.QUEUE_WEBHOOKS)
        yield running


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=stack.env, check=True,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def vendor(stack: Stack) -> dict[str, str]:
    created = subprocess.run([sys.executable, "-m", "service.cli", "vendor", "create", "hooked"], cwd=ROOT,
                             env=stack.env, check=True, capture_output=True, text=True)
    assert "webhook signing secret" in created.stderr and "whsec_" in created.stderr
    secret = created.stderr.split("whsec_", 1)[1].split()[0]
    return {"key": created.stdout.strip().splitlines()[-1], "secret": "whsec_" + secret}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def photos(astronaut_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/a.jpg"] = astronaut_jpeg
    yield server
    server.close()


def crop(stack: Stack, key: str, record: str, photo: str, callback: str) -> str:
    resp = requests.post(f"{stack.base_url}/api/image-queue/crop-face-queue", headers={"X-API-Key": key}, timeout=10,
                         json={"recordId": record, "projectId": "p1", "mode": "square", "photoUrl": photo,
                               "callbackUrl": callback})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


def wait_webhook(stack: Stack, key: str, path: str, timeout: float = 60) -> dict[str, Any]:
    """Poll a job's or batch's status until its webhook is delivered or failed; returns that status."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = requests.get(f"{stack.base_url}{path}", headers={"X-API-Key": key}, timeout=5).json()
        hook = (body.get("batch") or body).get("webhook") or {}
        if hook.get("state") in ("delivered", "failed"):
            return body
        time.sleep(0.2)
    raise TimeoutError(f"webhook of {path} not final: {body}\n{stack.logs()}")


def test_a_job_webhook_is_retried_until_the_receiver_takes_it(stack: Stack, vendor: dict[str, str],
                                                              receiver: Receiver, photos: PhotoServer) -> None:
    receiver.answers["/flaky"] = [500]
    job_id = crop(stack, vendor["key"], "rec-hook", photos.url("/a.jpg"), receiver.url("/flaky"))
    job = wait_for_job(stack.base_url, vendor["key"], job_id)
    assert job["state"] == "completed" and job["webhook"]["url"] == receiver.url("/flaky")
    status = wait_webhook(stack, vendor["key"], f"/api/image-queue/job/{job_id}")
    hook = status["webhook"]
    assert hook["state"] == "delivered" and hook["attempts"] == 2 and hook["maxAttempts"] == 3, hook
    assert hook["lastStatusCode"] == 200 and hook["deliveredAt"] and hook["event"] == "job.completed"
    tries = receiver.to("/flaky")
    assert [t.answered for t in tries] == [500, 200]
    assert all(t.signed_with(vendor["secret"]) for t in tries)
    assert {t.headers["X-ImageQueue-Event-Id"] for t in tries} == {hook["eventId"]}  # one event, sent twice
    assert [t.headers["X-ImageQueue-Delivery-Attempt"] for t in tries] == ["1", "2"]
    assert tries[0].body == tries[1].body and tries[1].headers["X-ImageQueue-Event"] == "job.completed"
    event = tries[1].event
    assert event["eventId"] == hook["eventId"] and event["jobId"] == job_id and event["vendorId"] == "hooked"
    assert event["recordId"] == "rec-hook" and event["result"]["photoUrl"] == status["result"]["photoUrl"]
    assert event["timestamp"].endswith("Z")


def test_deliveries_verify_with_an_off_the_shelf_standard_webhooks_library(
        stack: Stack, vendor: dict[str, str], receiver: Receiver, photos: PhotoServer) -> None:
    from standardwebhooks import Webhook

    job_id = crop(stack, vendor["key"], "rec-standard", photos.url("/a.jpg"), receiver.url("/standard"))
    assert wait_webhook(stack, vendor["key"], f"/api/image-queue/job/{job_id}")["webhook"]["state"] == "delivered"
    (delivery,) = receiver.to("/standard")
    headers = {name.lower(): value for name, value in delivery.headers.items()}
    assert headers["webhook-id"] == delivery.event["eventId"]
    assert Webhook(vendor["secret"]).verify(delivery.body, headers)["jobId"] == job_id


def test_a_receiver_that_never_takes_it_ends_failed(stack: Stack, vendor: dict[str, str], receiver: Receiver,
                                                    photos: PhotoServer) -> None:
    receiver.always["/down"] = 503
    job_id = crop(stack, vendor["key"], "rec-down", photos.url("/missing.jpg"), receiver.url("/down"))
    status = wait_webhook(stack, vendor["key"], f"/api/image-queue/job/{job_id}")
    assert status["state"] == "failed" and status["error"]["code"] == "IMAGE_NOT_FOUND"
    hook = status["webhook"]
    assert hook["state"] == "failed" and hook["event"] == "job.failed", hook
    assert hook["attempts"] == 3 and hook["lastStatusCode"] == 503 and "HTTP 503" in hook["lastError"]
    assert hook["deliveredAt"] is None and hook["nextAttemptAt"] is None
    tries = receiver.to("/down")
    assert len(tries) == 3 and all(t.signed_with(vendor["secret"]) for t in tries)
    assert tries[0].event["error"]["code"] == "IMAGE_NOT_FOUND"


def test_private_addresses_are_refused_at_once(stack: Stack, vendor: dict[str, str], photos: PhotoServer) -> None:
    job_id = crop(stack, vendor["key"], "rec-ssrf", photos.url("/a.jpg"), "http://169.254.169.254/latest/meta-data")
    hook = wait_webhook(stack, vendor["key"], f"/api/image-queue/job/{job_id}")["webhook"]
    assert hook["state"] == "failed" and hook["attempts"] == 1
    assert hook["lastError"].startswith("FORBIDDEN_ADDRESS") and "metadata" in hook["lastError"]


def test_batches_post_their_final_status(stack: Stack, vendor: dict[str, str], receiver: Receiver,
                                         photos: PhotoServer) -> None:
    images = [{"recordId": f"b{i}", "imageUrl": photos.url("/a.jpg")} for i in range(3)]
    images.append({"recordId": "b-missing", "imageUrl": photos.url("/nope.jpg")})
    resp = requests.post(f"{stack.base_url}/api/batch/add-images", headers={"X-API-Key": vendor["key"]}, timeout=10,
                         json={"projectId": "p1", "images": images, "callbackUrl": receiver.url("/batches")})
    assert resp.status_code == 202, resp.text
    batch_id = resp.json()["batchId"]
    batch = wait_webhook(stack, vendor["key"], f"/api/batch/status/{batch_id}")["batch"]
    assert batch["status"] == "completed_with_errors"
    assert batch["webhook"]["state"] == "delivered" and batch["webhook"]["attempts"] == 1
    (delivery,) = receiver.to("/batches")
    assert delivery.signed_with(vendor["secret"])
    event = delivery.event
    assert event["event"] == "batch.completed_with_errors" and event["batchId"] == batch_id
    assert event["progress"] == {"processed": 4, "total": 4, "failed": 1}
    assert event["resultsUrl"] == f"/api/batch/{batch_id}/results"

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("a.jpg", photos.files["/a.jpg"])
        archive.writestr("b.jpg", photos.files["/a.jpg"])
    truncated = data.getvalue()[: len(data.getvalue()) // 2]
    resp = requests.post(f"{stack.base_url}/api/batch/upload-zip", headers={"X-API-Key": vendor["key"]}, timeout=10,
                         data={"projectId": "p1", "callbackUrl": receiver.url("/zips")},
                         files={"file": ("cut.zip", truncated, "application/zip")})
    assert resp.status_code == 202, resp.text
    batch = wait_webhook(stack, vendor["key"], f"/api/batch/status/{resp.json()['batchId']}")["batch"]
    assert batch["status"] == "failed" and batch["webhook"]["state"] == "delivered"
    (delivery,) = receiver.to("/zips")
    assert delivery.event["event"] == "batch.failed" and delivery.event["error"]["code"] == "TRUNCATED_ARCHIVE"


def test_a_rotated_secret_signs_what_is_sent_afterwards(stack: Stack, vendor: dict[str, str], receiver: Receiver,
                                                        photos: PhotoServer) -> None:
    new_secret = cli(stack, "vendor", "webhook-secret", "hooked").stdout.strip()
    assert new_secret.startswith("whsec_") and new_secret != vendor["secret"]
    job_id = crop(stack, vendor["key"], "rec-rotated", photos.url("/a.jpg"), receiver.url("/rotated"))
    assert wait_webhook(stack, vendor["key"], f"/api/image-queue/job/{job_id}")["webhook"]["state"] == "delivered"
    (delivery,) = receiver.to("/rotated")
    assert delivery.signed_with(new_secret) and not delivery.signed_with(vendor["secret"])
    vendor["secret"] = new_secret
