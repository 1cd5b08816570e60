"""Rate limits under concurrency: 50 requests at once against Gunicorn with 2 workers x 4 threads.

Each limit lets exactly N through; the others get a JSON 429 with Retry-After and RateLimit-*
headers. The counters are in the suite's Redis, shared by both Gunicorn workers. No rq workers:
accepted jobs just wait in their queues.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from core.config import Settings
from core.db.database import connect
from service.auth import create_api_key
from tests.conftest import ROOT, free_port
from tests.stack import Stack, running_stack, stack_env

pytestmark = pytest.mark.integration

BURST = 50
PHOTO = "http://photos.example.com/a.jpg"
VENDOR_LIMITS = {  # small per-vendor limits; the per-IP one is out of the way
    "RATE_LIMIT_GLOBAL": "10000/hour",
    "RATE_LIMIT_IMAGE_PROCESSING": "5/hour",
    "RATE_LIMIT_BACKGROUND_REMOVAL": "4/hour",
    "RATE_LIMIT_BULK": "3/hour",
    "RATE_LIMIT_READS": "7/minute",
    "RATE_LIMIT_OVERRIDE_CACHE_S": "0",
    # The access log names the Gunicorn worker (pid) that answered each request.
    "GUNICORN_ACCESSLOG": "-",
    "GUNICORN_CMD_ARGS": "--access-logformat 'worker=%(p)s status=%(s)s'",
}
IP_LIMITS = {"RATE_LIMIT_GLOBAL": "6/hour", "RATE_LIMIT_IMAGE_PROCESSING": "10000/hour"}
# SPEC 3.3's defaults, whatever the test process's environment says.
DEFAULT_LIMITS = {name.upper(): getattr(Settings(), name) for name in (
    "rate_limit_global", "rate_limit_image_processing", "rate_limit_background_removal", "rate_limit_bulk",
    "rate_limit_reads")}


def start(redis_url: str, tmp: Path, extra: dict[str, str]) -> Iterator[Stack]:
    env = stack_env(redis_url=redis_url, database_url=f"sqlite:///{tmp / 'db.sqlite3'}",
                    storage_dir=tmp / "files", port=free_port(), extra=extra)
    with running_stack(env, tmp / "logs") as stack:
        yield stack


@pytest.fixture(scope="module")
def vendor_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(redis_url).flushall()
    yield from start(redis_url, tmp_path_factory.mktemp("vendor-limits"), VENDOR_LIMITS)


@pytest.fixture(scope="module")
def ip_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start(redis_url, tmp_path_factory.mktemp("ip-limits"), IP_LIMITS)


@pytest.fixture(scope="module")
def default_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start(redis_url, tmp_path_factory.mktemp("default-limits"), DEFAULT_LIMITS)


def new_vendor(stack: Stack, **overrides: str) -> tuple[str, str]:
    """A fresh vendor (its own counters) with these limit overrides, and its key."""
    vendor = f"v-{uuid.uuid4().hex[:8]}"
    db = connect(stack.env["DATABASE_URL"])
    db.create_vendor(vendor, vendor)
    db.set_vendor_limits(vendor, {category.replace("_", "-"): limit for category, limit in overrides.items()})
    return vendor, create_api_key(db, vendor)


def burst(stack: Stack, call: Callable[[int], tuple[str, str, dict[str, Any]]]) -> list[requests.Response]:
    """Send BURST requests at once; ``call(i)`` gives (method, path, requests kwargs)."""
    return concurrently(stack, BURST, call)


def concurrently(stack: Stack, count: int,
                 call: Callable[[int], tuple[str, str, dict[str, Any]]]) -> list[requests.Response]:
    """Send ``count`` requests at once; ``call(i)`` gives (method, path, requests kwargs)."""
    def send(index: int) -> requests.Response:
        method, path, kwargs = call(index)
        return requests.request(method, stack.base_url + path, timeout=30, **kwargs)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(send, range(count)))


def send_one(stack: Stack, request: tuple[str, str, dict[str, Any]]) -> requests.Response:
    method, path, kwargs = request
    return requests.request(method, stack.base_url + path, timeout=10, **kwargs)


def assert_exactly(responses: list[requests.Response], passed: int, status: int, category: str,
                   window_s: int) -> None:
    """``passed`` answered ``status`` with correct headers, the rest a JSON 429 naming ``category``."""
    counts = Counter(resp.status_code for resp in responses)
    assert counts == {status: passed, 429: len(responses) - passed}, counts
    now = time.time()
    for resp in responses:
        limit, remaining, reset = (int(resp.headers[f"RateLimit-{name}"]) for name in ("Limit", "Remaining", "Reset"))
        assert limit == passed, resp.headers
        assert now - 5 < reset <= now + window_s + 2, resp.headers  # Unix time of the window's end
        if resp.status_code == 429:
            body = resp.json()
            assert body["success"] is False and body["error"]["code"] == "RATE_LIMITED", body
            assert body["error"]["details"]["limit"] == category, body
            assert remaining == 0
            assert 1 <= int(resp.headers["Retry-After"]) <= window_s
        else:
            assert 0 <= remaining < passed
            assert "Retry-After" not in resp.headers


def crop(key: str, index: int, **extra: Any) -> tuple[str, str, dict[str, Any]]:
    body = {"recordId": f"rec-{index}", "projectId": "p", "photoUrl": PHOTO, "mode": "square", **extra}
    return "POST", "/api/image-queue/crop-face-queue", {"json": body, "headers": {"X-API-Key": key}}


def test_image_processing_lets_exactly_n_through(vendor_stack: Stack) -> None:
    vendor, key = new_vendor(vendor_stack)
    responses = burst(vendor_stack, lambda i: crop(key, i))
    assert_exactly(responses, 5, 202, "image-processing", 3600)
    # Only the accepted requests wrote a record row.
    db = connect(vendor_stack.env["DATABASE_URL"])
    assert sum(db.get_record(vendor, f"rec-{i}") is not None for i in range(BURST)) == 5


# A request is counted by every limit checked before the one that refuses it (processing comes
# first), so the tests of the narrower limits raise processing out of the way for their vendor.

def test_background_removal_lets_exactly_n_through(vendor_stack: Stack) -> None:
    _, key = new_vendor(vendor_stack, image_processing="1000/hour")
    responses = burst(vendor_stack, lambda i: (
        "POST", "/api/image-queue/remove-bg-queue",
        {"json": {"recordId": f"bg-{i}", "projectId": "p", "photoUrl": PHOTO}, "headers": {"X-API-Key": key}}))
    assert_exactly(responses, 4, 202, "background-removal", 3600)


def test_bulk_lets_exactly_n_through(vendor_stack: Stack) -> None:
    _, key = new_vendor(vendor_stack, image_processing="1000/hour")
    responses = burst(vendor_stack, lambda i: (
        "POST", "/api/image-queue/bulk-crop-face",
        {"json": {"projectId": "p", "recordIds": [f"b-{i}"], "photoUrls": [PHOTO], "mode": "square"},
         "headers": {"X-API-Key": key}}))
    assert_exactly(responses, 3, 202, "bulk", 3600)


def test_reads_let_exactly_n_through_and_leave_processing_alone(vendor_stack: Stack) -> None:
    _, key = new_vendor(vendor_stack)
    job_id = send_one(vendor_stack, crop(key, 0)).json()["jobId"]
    responses = burst(vendor_stack, lambda i: (
        "GET", f"/api/image-queue/job/{job_id}", {"headers": {"X-API-Key": key}}))
    assert_exactly(responses, 7, 200, "reads", 60)
    resp = send_one(vendor_stack, crop(key, 1))
    assert resp.status_code == 202 and resp.headers["RateLimit-Remaining"] == "3"  # 2 of 5 used


def test_one_vendor_exhausting_its_limit_leaves_another_untouched(vendor_stack: Stack) -> None:
    _, key_a = new_vendor(vendor_stack)
    vendor_b, key_b = new_vendor(vendor_stack)

    # Vendor A fires 50 at once, half of them claiming vendor B in the body; B fires 50 at the same time.
    def mixed(index: int) -> tuple[str, str, dict[str, Any]]:
        if index % 2:
            return crop(key_b, index)
        return crop(key_a, index, **({"vendorId": vendor_b} if index % 4 == 0 else {}))

    with ThreadPoolExecutor(max_workers=2) as pool:  # two bursts at once: 100 requests, 50 per vendor
        first, second = pool.map(lambda _: burst(vendor_stack, mixed), range(2))
    responses = first + second
    of_b = [resp for index, resp in enumerate(responses) if index % 2]
    of_a = [resp for index, resp in enumerate(responses) if not index % 2]
    assert_exactly(of_b, 5, 202, "image-processing", 3600)
    counts = Counter(resp.status_code for resp in of_a)
    # A's forged vendorId requests are refused (403) or limited, and count against A alone.
    assert counts[429] == len(of_a) - 5 and counts[202] + counts[403] == 5, counts


def test_an_override_set_with_the_cli_applies_to_the_running_api(vendor_stack: Stack) -> None:
    vendor, key = new_vendor(vendor_stack)
    out = subprocess.run([sys.executable, "-m", "service.cli", "vendor", "set-limits", vendor,
                          "--image-processing", "8/hour"], cwd=ROOT, env=vendor_stack.env,
                         capture_output=True, text=True, check=True)
    assert "8/hour" in out.stdout
    assert_exactly(burst(vendor_stack, lambda i: crop(key, i)), 8, 202, "image-processing", 3600)


def test_the_ip_limit_counts_bad_keys_and_ignores_a_forged_x_forwarded_for(
        ip_stack: Stack, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushall()
    # TRUSTED_PROXY_HOPS=0: each request claims another client address; none is believed.
    responses = burst(ip_stack, lambda i: (
        "GET", "/api/image-queue/job/x",
        {"headers": {"X-API-Key": f"iq_forged_{i}", "X-Forwarded-For": f"198.51.100.{i}"}}))
    assert_exactly(responses, 6, 401, "global", 3600)
    # A valid key is counted by its vendor, not by the exhausted address.
    _, key = new_vendor(ip_stack)
    statuses = Counter(resp.status_code for resp in burst(ip_stack, lambda i: crop(key, i)))
    assert statuses == {202: BURST}, statuses


def test_both_gunicorn_workers_answered(vendor_stack: Stack) -> None:
    _, key = new_vendor(vendor_stack)
    assert_exactly(burst(vendor_stack, lambda i: crop(key, i)), 5, 202, "image-processing", 3600)
    assert vendor_stack.log_dir is not None
    deadline = time.monotonic() + 10
    while True:  # access log lines are written after the responses
        log = (vendor_stack.log_dir / "api.log").read_text(errors="replace")
        answered = Counter(re.findall(r"worker=<(\d+)> status=(\d+)", log))
        if sum(answered.values()) >= BURST or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # Both workers took part in this module's bursts, and the totals above were still exact.
    assert len({pid for pid, _ in answered}) == 2, answered


def test_refused_requests_cost_no_quota_on_the_default_limits(default_stack: Stack, redis_url: str) -> None:
    # The scenario, as a new vendor meets it: 25 bulk requests at once, then 40 background
    # removals at once. The 15 bulk requests the bulk limit refuses must not use image processing.
    vendor, key = new_vendor(default_stack)
    bulk = concurrently(default_stack, 25, lambda i: (
        "POST", "/api/image-queue/bulk-crop-face",
        {"json": {"projectId": "p", "recordIds": [f"bulk-{i}"], "photoUrls": [PHOTO], "mode": "square"},
         "headers": {"X-API-Key": key}}))
    assert Counter(resp.status_code for resp in bulk) == {202: 10, 429: 15}
    assert {resp.json()["error"]["details"]["limit"] for resp in bulk if resp.status_code == 429} == {"bulk"}
    removals = concurrently(default_stack, 40, lambda i: (
        "POST", "/api/image-queue/remove-bg-queue",
        {"json": {"recordId": f"bg-{i}", "projectId": "p", "photoUrl": PHOTO}, "headers": {"X-API-Key": key}}))
    assert Counter(resp.status_code for resp in removals) == {202: 30, 429: 10}
    assert {resp.json()["error"]["details"]["limit"] for resp in removals
            if resp.status_code == 429} == {"background-removal"}
    conn = redis.Redis.from_url(redis_url)
    counted = {key.decode().split("/")[3]: int(conn.get(key) or 0)
               for key in conn.scan_iter(f"LIMITS:LIMITER/image-queue/vendor:{vendor}/*")}
    assert counted == {"bulk": 10, "image-processing": 40, "background-removal": 30}
    resp = send_one(default_stack, crop(key, 0))
    assert resp.status_code == 202 and resp.headers["RateLimit-Remaining"] == "9"  # 50 - 41
