"""What an operator sees of the running stack (Gunicorn + a real `rq worker`, LOG_FORMAT=json):
rq-dashboard at /rq in headless Chromium, /metrics scraped and parsed, and the JSON log lines
of the worker and the API.

One workload runs first (module fixture): face crops for two vendors (one without a face),
a background removal of a file that is no image, a two-image batch and a job parked on a
queue no worker serves. Every test reads what that workload left behind.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
import redis
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from core import contracts, rqjson
from tests.conftest import free_port
from tests.stack import PhotoServer, Stack, create_vendor, sqlite_stack, wait_for_job

pytestmark = pytest.mark.integration

ADMIN_USER, ADMIN_PASSWORD = "ops", "dashboard-pass-4242"
METRICS_TOKEN = "scrape-token-4242"
WORKER_NAME = "ops-test-worker"
BATCH_QUEUE = contracts.face_detection_queue(5)
SERVED_QUEUES = (contracts.QUEUE_FACE_CROP, contracts.QUEUE_BACKGROUND_REMOVAL, BATCH_QUEUE)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                  # rq-dashboard fills its tables from XHR after load: let virtual time run them.
                  "--virtual-time-budget=8000"]


class RembgStandIn:
    """Answers GET /openapi.json like an idle `rembg s` (what the health probe asks)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self.send_response(200 if self.path == "/openapi.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def rembg_up() -> Iterator[RembgStandIn]:
    server = RembgStandIn()
    yield server
    server.close()


DEAD_REMBG = f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def stack(redis_url: str, rembg_up: RembgStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ops-stack")
    extra = {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "ADMIN_USERNAME": ADMIN_USER,
             "ADMIN_PASSWORD": ADMIN_PASSWORD, "METRICS_TOKEN": METRICS_TOKEN,
             "REMBG_URLS": f"{rembg_up.url},{DEAD_REMBG}", "REMBG_PROBE_TIMEOUT_S": "0.5"}
    with sqlite_stack(redis_url, tmp, extra) as running:
        running.start_worker(*SERVED_QUEUES, name=WORKER_NAME)
        yield running


@dataclass
class Workload:
    """What the workload queued: job ids by expected outcome and the API's request ids."""

    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job id -> error code
    vendor_of: dict[str, str] = field(default_factory=dict)
    request_ids: dict[str, str] = field(default_factory=dict)  # job id -> X-Request-ID of its POST
    batch_id: str = ""
    parked_job: str = ""


def _post(stack: Stack, key: str, path: str, body: dict[str, Any]) -> requests.Response:
    resp = requests.post(f"{stack.base_url}{path}", json=body, headers={"X-API-Key": key}, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp


@pytest.fixture(scope="module")
def workload(stack: Stack, redis_url: str, astronaut_jpeg: bytes, noface_jpeg: bytes) -> Iterator[Workload]:
    photos = PhotoServer()
    photos.files["/face.jpg"] = astronaut_jpeg
    photos.files["/noface.jpg"] = noface_jpeg
    photos.files["/page.jpg"] = b"<html><body>not an image</body></html>"
    keys = {vendor: create_vendor(stack.env, vendor) for vendor in ("acme", "globex")}
    done = Workload()
    crops = [("acme", "r1", "/face.jpg", "square"), ("acme", "r2", "/face.jpg", "square"),
             ("acme", "r3", "/noface.jpg", "passport"), ("globex", "g1", "/face.jpg", "square")]
    queued: list[tuple[str, str]] = []
    for vendor, record, photo, mode in crops:
        resp = _post(stack, keys[vendor], "/api/image-queue/crop-face-queue",
                     {"recordId": record, "projectId": "p", "mode": mode, "photoUrl": photos.url(photo)})
        queued.append((vendor, resp.json()["jobId"]))
        done.request_ids[resp.json()["jobId"]] = resp.headers["X-Request-ID"]
    resp = _post(stack, keys["acme"], "/api/image-queue/remove-bg-queue",
                 {"recordId": "r4", "projectId": "p", "photoUrl": photos.url("/page.jpg")})
    queued.append(("acme", resp.json()["jobId"]))
    resp = _post(stack, keys["acme"], "/api/batch/add-images",
                 {"projectId": "p", "priority": 5, "images": [{"recordId": "b1", "imageUrl": photos.url("/face.jpg")},
                                                              {"recordId": "b2",
                                                               "imageUrl": photos.url("/noface.jpg")}]})
    done.batch_id = resp.json()["batchId"]
    done.parked_job = rqjson.queue(contracts.QUEUE_IMAGE_PROCESSING,
                            connection=redis.Redis.from_url(redis_url)).enqueue("os.getpid").id
    for vendor, job_id in queued:
        job = wait_for_job(stack.base_url, keys[vendor], job_id)
        done.vendor_of[job_id] = vendor
        if job["state"] == "completed":
            done.completed.append(job_id)
        else:
            done.failed[job_id] = job["error"]["code"]
    deadline = time.monotonic() + 60
    batch: dict[str, Any] = {}
    while time.monotonic() < deadline:
        batch = requests.get(f"{stack.base_url}/api/batch/status/{done.batch_id}",
                             headers={"X-API-Key": keys["acme"]}, timeout=5).json()["batch"]
        if batch["status"] not in ("queued", "ingesting", "processing"):
            break
        time.sleep(0.2)
    photos.close()
    assert len(done.completed) == 3, (done, stack.logs())
    assert sorted(done.failed.values()) == ["NOT_AN_IMAGE", "NO_FACE"], (done, stack.logs())
    assert batch["status"] == "completed_with_errors", (batch, stack.logs())
    yield done


def scrape(stack: Stack, **headers: str) -> requests.Response:
    return requests.get(f"{stack.base_url}/metrics", headers=headers, timeout=10)


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_what_the_workers_did(stack: Stack, workload: Workload, rembg_up: RembgStandIn) -> None:
    assert scrape(stack).status_code == 401
    assert scrape(stack, Authorization="Bearer wrong").status_code == 401
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    expected = [
        ("imagequeue_jobs_finished_total", {"queue": "face-crop"}, 3),
        ("imagequeue_jobs_finished_total", {"queue": BATCH_QUEUE}, 1),  # one chunk of two images
        ("imagequeue_jobs_failed_total", {"queue": "face-crop", "code": "NO_FACE"}, 1),
        ("imagequeue_jobs_failed_total", {"queue": "background-removal", "code": "NOT_AN_IMAGE"}, 1),
        ("imagequeue_vendor_images_submitted_total", {"vendor": "acme", "kind": "face_crop"}, 3),
        ("imagequeue_vendor_images_submitted_total", {"vendor": "globex", "kind": "face_crop"}, 1),
        ("imagequeue_vendor_images_submitted_total", {"vendor": "acme", "kind": "remove_bg"}, 1),
        ("imagequeue_vendor_images_submitted_total", {"vendor": "acme", "kind": "batch_face_crop"}, 2),
        ("imagequeue_vendor_images_finished_total", {"vendor": "acme", "kind": "face_crop",
                                                     "status": "completed"}, 2),
        ("imagequeue_vendor_images_finished_total", {"vendor": "acme", "kind": "face_crop", "status": "failed"}, 1),
        ("imagequeue_vendor_images_finished_total", {"vendor": "globex", "kind": "face_crop",
                                                     "status": "completed"}, 1),
        ("imagequeue_vendor_images_finished_total", {"vendor": "acme", "kind": "remove_bg", "status": "failed"}, 1),
        ("imagequeue_vendor_images_finished_total", {"vendor": "acme", "kind": "batch_face_crop",
                                                     "status": "completed"}, 1),
        ("imagequeue_vendor_images_finished_total", {"vendor": "acme", "kind": "batch_face_crop",
                                                     "status": "failed"}, 1),
        ("imagequeue_job_duration_seconds_count", {"queue": "face-crop", "outcome": "completed"}, 3),
        ("imagequeue_job_duration_seconds_count", {"queue": "face-crop", "outcome": "failed"}, 1),
        ("imagequeue_job_duration_seconds_count", {"queue": "background-removal", "outcome": "failed"}, 1),
        ("imagequeue_queue_jobs", {"queue": "face-crop", "state": "completed"}, 3),
        ("imagequeue_queue_jobs", {"queue": "face-crop", "state": "failed"}, 1),
        ("imagequeue_queue_jobs", {"queue": "face-crop", "state": "waiting"}, 0),
        ("imagequeue_queue_jobs", {"queue": "background-removal", "state": "failed"}, 1),
        ("imagequeue_queue_jobs", {"queue": "image-processing", "state": "waiting"}, 1),
        ("imagequeue_workers", {"queue": "face-crop"}, 1),
        ("imagequeue_workers", {"queue": BATCH_QUEUE}, 1),
        ("imagequeue_workers", {"queue": "image-processing"}, 0),
        ("imagequeue_redis_up", {}, 1),
        ("imagequeue_rembg_up", {"instance": rembg_up.url}, 1),
        ("imagequeue_rembg_up", {"instance": DEAD_REMBG}, 0),
        ("imagequeue_rembg_breaker_state", {"instance": DEAD_REMBG, "state": "closed"}, 1),
    ]
    want = {(name, frozenset(labels.items())): value for name, labels, value in expected}
    # The batch's last counters are written just after its status turns final: read until they settle.
    deadline = time.monotonic() + 20
    while True:
        resp = scrape(stack, **bearer)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain; version=")
        found = parse(resp.text)
        got = {key: found.get(key) for key in want}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert got == want, {key: (got[key], want[key]) for key in want if got[key] != want[key]}
    # No transient error happened, so no retry was counted.
    assert not [key for key in found if key[0] == "imagequeue_job_retries_total"]
    # Histogram shape: cumulative buckets ending at +Inf == count, a positive sum.
    labels = frozenset({"queue": "face-crop", "outcome": "completed"}.items())
    buckets = sorted(((float(dict(key[1])["le"]), value) for key, value in found.items()
                      if key[0] == "imagequeue_job_duration_seconds_bucket"
                      and key[1] - {("le", dict(key[1])["le"])} == labels))
    assert [bound for bound, _ in buckets][-1] == float("inf") and len(buckets) == 12
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False)) and buckets[-1][1] == 3
    assert found[("imagequeue_job_duration_seconds_sum", labels)] > 0
    # The admin's Basic credentials open /metrics as well.
    assert requests.get(f"{stack.base_url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=10).status_code == 200


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("headless Chromium is needed for the dashboard test: apt-get install chromium "
                    "(./scripts/test installs it when run as root)", pytrace=False)
    return found


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Load ``url`` in a fresh headless Chromium profile; stdout has the DOM with --dump-dom."""
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=90)


def dom_of(stack: Stack, path: str, profile: Path, *, auth: bool = True) -> str:
    host = stack.base_url.removeprefix("http://")
    credentials = f"{ADMIN_USER}:{ADMIN_PASSWORD}@" if auth else ""
    done = browse(f"http://{credentials}{host}{path}", profile, "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def queue_rows(dom: str) -> dict[str, list[int]]:
    """The queues table as Chromium rendered it: name -> queued, deferred, scheduled, started,
    finished, failed, canceled."""
    rows = re.findall(r'<tr data-role="queue">\s*<td>([^<]+)</td>(.*?)</tr>', dom, re.S)
    return {name: [int(n) for n in re.findall(r">(\d+)</a>", cells)] for name, cells in rows
            if "<%" not in name}


def test_dashboard_in_headless_chromium(stack: Stack, workload: Workload, tmp_path: Path) -> None:
    rows = queue_rows(dom_of(stack, "/rq/", tmp_path / "profile-queues"))
    assert set(SERVED_QUEUES) | {contracts.QUEUE_IMAGE_PROCESSING} <= set(rows), rows
    assert rows["face-crop"][4:6] == [3, 1], rows["face-crop"]  # finished, failed
    assert rows["background-removal"][5] == 1
    assert rows[BATCH_QUEUE][4] == 1
    assert rows[contracts.QUEUE_IMAGE_PROCESSING][0] == 1  # the parked job waits

    workers = dom_of(stack, "/rq/0/view/workers", tmp_path / "profile-workers")
    assert WORKER_NAME in workers and "face-crop" in workers.split(WORKER_NAME, 1)[1][:2000], workers[-3000:]

    failed_id = next(job for job, code in workload.failed.items() if code == "NO_FACE")
    failed = dom_of(stack, "/rq/0/view/jobs/face-crop/failed/8/asc/1", tmp_path / "profile-failed")
    assert failed_id in failed and "NO_FACE" in failed, failed[-3000:]
    job_page = dom_of(stack, f"/rq/0/view/job/{failed_id}", tmp_path / "profile-job")
    assert failed_id in job_page and "jobs.tasks.crop_face" in job_page

    # Without credentials: a 401 challenge, which headless Chromium cannot answer, and no data.
    assert "face-crop" not in dom_of(stack, "/rq/", tmp_path / "profile-anonymous", auth=False)
    anonymous = requests.get(f"{stack.base_url}/rq/0/data/queues.json", timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic ")

    shot = tmp_path / "rq.png"
    host = stack.base_url.removeprefix("http://")
    done = browse(f"http://{ADMIN_USER}:{ADMIN_PASSWORD}@{host}/rq/", tmp_path / "profile-shot",
                  f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-3000:]
    assert shot.stat().st_size > 10_000
    with Image.open(shot) as image:
        assert image.size == (1280, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, f"the screenshot is nearly blank ({len(colours)} colours): {shot}"


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{path.name}: not a JSON line with LOG_FORMAT=json: {line!r}")
    return parsed


def test_logs_are_json_with_job_and_request_context(stack: Stack, workload: Workload) -> None:
    assert stack.log_dir is not None
    worker = json_lines(stack.log_dir / "worker-0.log")
    ours = [line for line in worker if line["logger"].startswith("jobs.")]
    chunk_job = f"{workload.batch_id}-c0"
    owners = {**workload.vendor_of, chunk_job: "acme"}
    assert ours, worker[-20:]
    for line in ours:
        assert line.get("job_id") in owners, line
        assert line.get("vendor") == owners[line["job_id"]], line
        assert line.get("queue") in SERVED_QUEUES, line
    seen = {line["job_id"] for line in ours}
    assert set(owners) <= seen, set(owners) - seen
    # The failure callback's line (RQ runs it outside the job function) carries the job too.
    failure_lines = [line for line in ours if "failed (NO_FACE" in line["message"]]
    assert [line["job_id"] for line in failure_lines] == [k for k, v in workload.failed.items() if v == "NO_FACE"]
    assert any(line["logger"] == "rq.worker" for line in worker)  # RQ's own lines are JSON too
    assert any(line.get("batch_id") == workload.batch_id for line in ours)

    api = json_lines(stack.log_dir / "api.log")
    queued = {line["message"].split("job=")[1].split()[0]: line for line in api
              if line["logger"] == "service.image_queue" and " queued " in line["message"]}
    for job_id, request_id in workload.request_ids.items():
        assert queued[job_id]["request_id"] == request_id, queued[job_id]
        assert queued[job_id]["vendor"] == workload.vendor_of[job_id]
