"""Rate limits (service/limits.py) through Flask's test client, on real redis-servers.

Exactness under concurrency across Gunicorn workers: tests/integration/test_rate_limits.py.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from core import contracts, rqjson
from core.db.database import Database, connect
from service import create_app, limits
from service.auth import create_api_key
from service.cli import cli
from tests.conftest import free_port, redis_server_binary, wait_for_port

URL = "http://photos.example.com/a.jpg"
HIGH = "1000/hour"


def crop(record: str = "rec-1", **changes: Any) -> dict[str, Any]:
    return {"recordId": record, "projectId": "proj-1", "photoUrl": URL, "mode": "square", **changes}


def remove_bg(record: str = "rec-1") -> dict[str, Any]:
    return {"recordId": record, "projectId": "proj-1", "photoUrl": URL}


class Api:
    """An app on a fresh SQLite database with vendors acme and globex."""

    def __init__(self, tmp_path: Path, redis_url: str, **settings: Any) -> None:
        self.db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
        self.db: Database = connect(self.db_url)
        self.db.migrate()
        for vendor in ("acme", "globex"):
            if self.db.get_vendor(vendor) is None:
                self.db.create_vendor(vendor, vendor.title())
        self.keys = {vendor: create_api_key(self.db, vendor) for vendor in ("acme", "globex")}
        base = {"redis_url": redis_url, "database_url": self.db_url, "storage_dir": str(tmp_path / "files"),
                "upload_dir": str(tmp_path / "uploads"), "rate_limit_override_cache_s": 0.0,
                "rate_limit_global": HIGH, "rate_limit_image_processing": HIGH,
                "rate_limit_background_removal": HIGH, "rate_limit_bulk": HIGH, "rate_limit_reads": HIGH}
        self.app: Flask = create_app({**base, **settings})
        self.client: FlaskClient = self.app.test_client()

    def post(self, path: str, body: Any, vendor: str | None = "acme", **headers: str) -> Any:
        if vendor is not None:
            headers["X-API-Key"] = self.keys.get(vendor, vendor)
        return self.client.post(f"/api/image-queue/{path}", json=body, headers=headers)

    def get(self, path: str, vendor: str | None = "acme", **headers: str) -> Any:
        if vendor is not None:
            headers["X-API-Key"] = self.keys.get(vendor, vendor)
        return self.client.get(path, headers=headers)


@pytest.fixture
def api_factory(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Any:
    def make(**settings: Any) -> Api:
        return Api(tmp_path, redis_url, **settings)
    return make


def limit_headers(resp: Any) -> tuple[int, int, int]:
    return (int(resp.headers["RateLimit-Limit"]), int(resp.headers["RateLimit-Remaining"]),
            int(resp.headers["RateLimit-Reset"]))


def assert_rate_limited(resp: Any, category: str, limit: int, window_s: int) -> dict[str, Any]:
    assert resp.status_code == 429, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["success"] is False and body["error"]["code"] == "RATE_LIMITED"
    assert body["error"]["details"]["limit"] == category, body
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= window_s
    assert body["error"]["details"]["retryAfter"] == retry_after
    assert limit_headers(resp)[:2] == (limit, 0)
    reset = limit_headers(resp)[2]
    assert time.time() < reset <= time.time() + window_s + 2
    return body


def counters(conn: redis.Redis) -> dict[str, int]:
    """Redis rate-limit counters by '<ip:… | vendor:…>/<category>'."""
    found = {}
    for key in conn.scan_iter("LIMITS:LIMITER/image-queue/*"):
        parts = key.decode().split("/")
        found[f"{parts[2]}/{parts[3]}"] = int(conn.get(key) or 0)
    return found


def test_processing_limit_answers_json_429_with_headers(api_factory: Any, redis_conn: redis.Redis) -> None:
    api = api_factory(rate_limit_image_processing="3/hour")
    for index in range(3):
        resp = api.post("crop-face-queue", crop(f"rec-{index}"))
        assert resp.status_code == 202, resp.get_json()
        limit, remaining, reset = limit_headers(resp)
        assert (limit, remaining) == (3, 2 - index)
        assert time.time() < reset <= time.time() + 3600 + 2  # Unix time of the window's end
    body = assert_rate_limited(api.post("crop-face-queue", crop("rec-refused")), "image-processing", 3, 3600)
    assert "3 per 1 hour" in body["error"]["message"]
    # The refused request did nothing: no record row, no job.
    assert api.db.get_record("acme", "rec-refused") is None
    assert rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn).count == 3


def test_every_route_counts_against_its_categories(api_factory: Any, redis_conn: redis.Redis) -> None:
    api = api_factory()
    adapter = api.app.url_map.bind("localhost")
    checked = []
    for rule in api.app.url_map.iter_rules():
        if rule.endpoint in limits.ENDPOINT_CATEGORIES:
            redis_conn.flushall()
            path = adapter.build(rule.endpoint, {arg: "x1" for arg in rule.arguments})
            method = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})[0]
            # Bodies are empty: a 400/415 still counts, like any answer of a limited route.
            resp = api.client.open(path, method=method, json={} if method == "POST" else None,
                                   headers={"X-API-Key": api.keys["acme"]})
            assert "RateLimit-Limit" in resp.headers, (rule.endpoint, resp.status_code)
            expected = {f"vendor:acme/{category}": 1 for category in limits.ENDPOINT_CATEGORIES[rule.endpoint]}
            assert counters(redis_conn) == expected, rule.endpoint
            checked.append(rule.endpoint)
    assert {"image_queue.crop_face_queue", "image_queue.bulk_crop_face", "image_queue.job_status"} <= set(checked)


def test_every_route_is_listed_or_exempt(api_factory: Any) -> None:
    app = api_factory().app
    unlisted = [rule.endpoint for rule in app.url_map.iter_rules()
                if rule.endpoint not in limits.ENDPOINT_CATEGORIES
                and rule.endpoint not in limits.EXEMPT_ENDPOINTS
                and rule.endpoint.split(".")[0] not in limits.EXEMPT_BLUEPRINTS]
    assert not unlisted, (f"routes {unlisted} count as reads (GET) or image processing (other methods) "
                          "until they get a line in service/limits.py ENDPOINT_CATEGORIES")


def test_background_removal_and_bulk_limits(api_factory: Any) -> None:
    api = api_factory(rate_limit_background_removal="3/hour", rate_limit_bulk="1/hour")
    assert api.post("remove-bg-queue", remove_bg("a")).status_code == 202
    resp = api.post("bulk-remove-bg", {"projectId": "p", "recordIds": ["b"], "photoUrls": [URL]})
    assert resp.status_code == 202, resp.get_json()
    # Headers show the scarcest of the three limits the request counted against: bulk, 0 left.
    assert limit_headers(resp)[:2] == (1, 0)
    resp = api.post("remove-bg-queue", remove_bg("c"))
    assert resp.status_code == 202 and limit_headers(resp)[:2] == (3, 0)
    assert_rate_limited(api.post("remove-bg-queue", remove_bg("d")), "background-removal", 3, 3600)
    assert_rate_limited(api.post("bulk-crop-face", {"projectId": "p", "recordIds": ["d"], "photoUrls": [URL],
                                                    "mode": "square"}), "bulk", 1, 3600)
    # Face crops count against neither.
    assert api.post("crop-face-queue", crop("e")).status_code == 202


def test_a_refused_request_costs_no_quota_of_its_other_limits(api_factory: Any, redis_conn: redis.Redis) -> None:
    api = api_factory(rate_limit_image_processing="6/hour", rate_limit_bulk="2/hour",
                      rate_limit_background_removal="1/hour")
    bulk = {"projectId": "p", "recordIds": ["b"], "photoUrls": [URL], "mode": "square"}
    statuses = [api.post("bulk-crop-face", {**bulk, "recordIds": [f"b{i}"]}).status_code for i in range(5)]
    assert statuses == [202, 202, 429, 429, 429]
    assert api.post("remove-bg-queue", remove_bg("bg-1")).status_code == 202
    assert_rate_limited(api.post("remove-bg-queue", remove_bg("bg-2")), "background-removal", 1, 3600)
    # 3 accepted requests counted image processing; the 4 refused ones counted nothing anywhere.
    assert counters(redis_conn) == {"vendor:acme/image-processing": 3, "vendor:acme/bulk": 2,
                                    "vendor:acme/background-removal": 1}
    resp = api.post("crop-face-queue", crop("c"))
    assert resp.status_code == 202 and limit_headers(resp)[:2] == (6, 2)


def test_the_limits_flask_limiter_evaluates_are_the_ones_counted_at_once(
        api_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    # service/atomic_limits.py counts request_plan()'s limits; Flask-Limiter asks about its own.
    api = api_factory(rate_limit_bulk="1/hour;5/day")
    with caplog.at_level(logging.ERROR, logger="service.atomic_limits"):
        for rule in api.app.url_map.iter_rules():
            if rule.endpoint not in limits.ENDPOINT_CATEGORIES:
                continue
            method = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})[0]
            path = api.app.url_map.bind("localhost").build(rule.endpoint, {arg: "x1" for arg in rule.arguments})
            for vendor in ("acme", None):
                api.client.open(path, method=method, json={} if method == "POST" else None,
                                headers={"X-API-Key": api.keys["acme"]} if vendor else {})
    assert "not in the request's plan" not in caplog.text


def test_reads_have_their_own_limit(api_factory: Any) -> None:
    api = api_factory(rate_limit_image_processing="2/hour", rate_limit_reads="4/minute")
    job_id = api.post("crop-face-queue", crop()).get_json()["jobId"]
    for _ in range(3):
        assert api.get(f"/api/image-queue/job/{job_id}").status_code == 200
    resp = api.get("/api/image-queue/record/rec-1")
    assert resp.status_code == 200 and limit_headers(resp)[:2] == (4, 0)
    assert_rate_limited(api.get("/api/image-queue/queue-stats"), "reads", 4, 60)
    # Polling used none of the processing quota.
    resp = api.post("crop-face-queue", crop("rec-2"))
    assert resp.status_code == 202 and limit_headers(resp)[:2] == (2, 0)


def test_a_bad_key_is_limited_by_ip_only(api_factory: Any, redis_conn: redis.Redis) -> None:
    api = api_factory(rate_limit_global="3/hour", rate_limit_image_processing="1/hour")
    answers = [api.post("crop-face-queue", crop(), vendor="iq_forged").status_code,
               api.post("crop-face-queue", crop(), vendor=None).status_code,
               api.get("/api/image-queue/job/x", vendor="iq_forged").status_code]
    assert answers == [401, 401, 401]
    assert_rate_limited(api.post("crop-face-queue", crop(), vendor="iq_forged"), "global", 3, 3600)
    assert counters(redis_conn) == {"ip:127.0.0.1/global": 3}  # the refused request cost nothing
    # A valid key is counted by its vendor, not by the exhausted IP.
    resp = api.post("crop-face-queue", crop())
    assert resp.status_code == 202 and limit_headers(resp)[:2] == (1, 0)
    assert counters(redis_conn) == {"ip:127.0.0.1/global": 3, "vendor:acme/image-processing": 1}


def test_vendors_are_isolated_and_a_body_vendor_id_changes_nothing(api_factory: Any,
                                                                  redis_conn: redis.Redis) -> None:
    api = api_factory(rate_limit_image_processing="2/hour")
    assert api.post("crop-face-queue", crop("a")).status_code == 202
    assert api.post("crop-face-queue", crop("b", vendorId="globex")).status_code == 403  # counted: acme's
    assert_rate_limited(api.post("crop-face-queue", crop("c", vendorId="globex")), "image-processing", 2, 3600)
    assert_rate_limited(api.post("crop-face-queue", crop("c", vendorId="acme")), "image-processing", 2, 3600)
    resp = api.post("crop-face-queue", crop("d"), vendor="globex")
    assert resp.status_code == 202 and limit_headers(resp)[:2] == (2, 1)
    assert counters(redis_conn)["vendor:globex/image-processing"] == 1


def test_health_files_and_index_are_not_limited(api_factory: Any, redis_conn: redis.Redis) -> None:
    api = api_factory(rate_limit_global="1/hour")
    for path in ["/api/worker/health", "/files/nothing.jpg", "/"] * 3:
        resp = api.client.get(path)
        assert resp.status_code != 429 and "RateLimit-Limit" not in resp.headers, path
    assert counters(redis_conn) == {}


def test_overrides_apply_without_restart_and_fall_back_when_cleared(api_factory: Any) -> None:
    api = api_factory(rate_limit_image_processing="2/hour")
    api.db.set_vendor_limits("acme", {"image-processing": "4/hour"})
    for index in range(4):
        assert api.post("crop-face-queue", crop(f"a{index}")).status_code == 202
    assert_rate_limited(api.post("crop-face-queue", crop("a9")), "image-processing", 4, 3600)
    resp = api.post("crop-face-queue", crop("g"), vendor="globex")  # others keep the default
    assert resp.status_code == 202 and limit_headers(resp)[0] == 2
    # Back to the default: a different limit is a different counter, so it starts empty.
    api.db.set_vendor_limits("acme", {"image-processing": None})
    resp = api.post("crop-face-queue", crop("b"))
    assert resp.status_code == 202 and limit_headers(resp)[:2] == (2, 1)


def test_a_broken_stored_override_is_ignored(api_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    api = api_factory(rate_limit_image_processing="2/hour")
    api.db.set_vendor_limits("acme", {"image-processing": "lots", "colour": "1/hour", "bulk": "7/hour"})
    with caplog.at_level(logging.WARNING, logger="service.limits"):
        resp = api.post("bulk-crop-face", {"projectId": "p", "recordIds": ["a"], "photoUrls": [URL],
                                           "mode": "square"})
    assert resp.status_code == 202 and limit_headers(resp)[:2] == (2, 1)
    assert "'lots' is not a rate limit" in caplog.text and "unknown category 'colour'" in caplog.text


def test_override_cache_keeps_a_vendors_limits_for_its_ttl(tmp_path: Path) -> None:
    db = connect(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    db.migrate()
    db.create_vendor("acme", "Acme")
    db.set_vendor_limits("acme", {"bulk": "20/hour"})
    now = [100.0]
    cache = limits.OverrideCache(10.0, clock=lambda: now[0])
    assert cache.get(db, "acme") == {"bulk": "20/hour"}
    db.set_vendor_limits("acme", {"bulk": "40/hour"})
    now[0] = 109.9
    assert cache.get(db, "acme") == {"bulk": "20/hour"}
    now[0] = 110.0
    assert cache.get(db, "acme") == {"bulk": "40/hour"}
    uncached = limits.OverrideCache(0.0, clock=lambda: now[0])
    assert uncached.get(db, "acme") == {"bulk": "40/hour"}
    db.set_vendor_limits("acme", {}, replace=True)
    assert uncached.get(db, "acme") == {}


@pytest.mark.parametrize(("setting", "value"), [("rate_limit_bulk", "lots"), ("rate_limit_global", "")])
def test_a_bad_limit_setting_fails_at_startup(setting: str, value: str) -> None:
    with pytest.raises(ValueError, match=setting.upper()):
        create_app({setting: value})


def test_limits_can_be_switched_off(api_factory: Any, redis_conn: redis.Redis) -> None:
    api = api_factory(rate_limit_enabled=False, rate_limit_image_processing="1/hour")
    for index in range(3):
        resp = api.post("crop-face-queue", crop(f"r{index}"))
        assert resp.status_code == 202 and "RateLimit-Limit" not in resp.headers
    assert counters(redis_conn) == {}


@pytest.mark.parametrize(("hops", "forwarded", "client"), [
    (0, "203.0.113.7", "127.0.0.1"),  # no proxy trusted: the header is ignored
    (1, "203.0.113.7", "203.0.113.7"),
    (1, "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the client wrote 6.6.6.6; our proxy appended the rest
    (2, "6.6.6.6, 203.0.113.7, 10.0.0.2", "203.0.113.7"),
    (2, "203.0.113.7", "127.0.0.1"),  # fewer entries than trusted hops: the peer
])
def test_client_ip_comes_from_x_forwarded_for_only_through_trusted_hops(
        api_factory: Any, redis_conn: redis.Redis, hops: int, forwarded: str, client: str) -> None:
    api = api_factory(trusted_proxy_hops=hops, rate_limit_global="2/hour")
    for _ in range(2):
        assert api.get("/api/image-queue/job/x", vendor=None, **{"X-Forwarded-For": forwarded}).status_code == 401
    assert counters(redis_conn) == {f"ip:{client}/global": 2}
    assert_rate_limited(api.get("/api/image-queue/job/x", vendor=None, **{"X-Forwarded-For": forwarded}),
                        "global", 2, 3600)


# --- Redis down or frozen -------------------------------------------------------------------------

@contextmanager
def private_redis(workdir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of this test's own, stopped (and thawed) afterwards whatever happens."""
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


@contextmanager
def network_failures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The Redis calls that really went to the network and failed (each pays a connect error or a
    socket timeout), by breaker name; calls the open breaker refuses at once are not in it."""
    from service.redis_breaker import RedisBreaker

    failures: list[str] = []
    original = RedisBreaker.failure

    def counted(self: RedisBreaker, exc: BaseException) -> None:
        failures.append(self.name)
        original(self, exc)

    monkeypatch.setattr(RedisBreaker, "failure", counted)
    yield failures


def assert_unavailable(resp: Any) -> None:
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(resp.headers["Retry-After"]) > 0


def wait_out_the_breaker(api: Api) -> None:
    """After a Redis failure the app answers 503 at once for API_REDIS_COOLDOWN_S, then probes
    (service/redis_breaker.py)."""
    time.sleep(api.app.extensions["image_queue"].settings.api_redis_cooldown_s + 0.05)


def test_redis_stopped_answers_503_with_retry_after_then_recovers(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    with private_redis(tmp_path, port) as server:
        api = Api(tmp_path, f"redis://127.0.0.1:{port}/0", rate_limit_image_processing="5/hour")
        assert api.post("crop-face-queue", crop("before")).status_code == 202
        server.terminate()
        server.wait(10)
        with network_failures(monkeypatch) as failures:
            for call in (lambda: api.post("crop-face-queue", crop("during")),
                         lambda: api.get("/api/image-queue/record/before"),
                         lambda: api.post("crop-face-queue", crop(), vendor="iq_forged")):
                assert_unavailable(call())
        # One refused connection per Redis pool, then the open breaker answers at once.
        assert failures and len(failures) == len(set(failures)), failures
        assert api.db.get_record("acme", "during") is None  # nothing was accepted
        health = api.client.get("/api/worker/health")  # not limited: it reports the outage itself
        assert health.status_code == 503 and health.get_json()["redis"]["status"] == "down"
    with private_redis(tmp_path, port):
        wait_out_the_breaker(api)
        resp = api.post("crop-face-queue", crop("after"))
        assert resp.status_code == 202 and limit_headers(resp)[:2] == (5, 4)  # a fresh Redis: counts anew


def test_redis_frozen_answers_503_within_the_storage_timeout(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    with private_redis(tmp_path, port) as server:
        api = Api(tmp_path, f"redis://127.0.0.1:{port}/0", rate_limit_image_processing="5/hour")
        assert api.post("crop-face-queue", crop("before")).status_code == 202
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with network_failures(monkeypatch) as failures:
                for call in (lambda: api.post("crop-face-queue", crop("during")),
                             lambda: api.get("/api/image-queue/record/before"),
                             lambda: api.post("crop-face-queue", crop(), vendor="iq_forged")) * 2:
                    assert_unavailable(call())  # never Redis's own hang: the socket timeout ends it
            # At most one socket timeout (RATE_LIMIT_STORAGE_TIMEOUT_S) per Redis pool, then the
            # open breaker answers at once (its probes after each cool-down are not failures).
            assert failures and len(failures) == len(set(failures)), failures
        finally:
            os.kill(server.pid, signal.SIGCONT)
        wait_out_the_breaker(api)
        resp = api.post("crop-face-queue", crop("after"))
        assert resp.status_code == 202 and limit_headers(resp)[0] == 5
        # Thawed, Redis runs the commands it had already received: the two refused "during"
        # requests may or may not have counted (README "Rate limits").
        assert 1 <= limit_headers(resp)[1] <= 3
        assert api.db.get_record("acme", "during") is None


# --- CLI -------------------------------------------------------------------------------------------

def test_cli_sets_shows_and_clears_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("RATE_LIMIT_BULK", "10/hour")
    db = connect(db_url)
    db.migrate()
    db.create_vendor("acme", "Acme")
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli, ["vendor", *args], catch_exceptions=False)

    out = run("set-limits", "acme", "--bulk", "20/hour", "--image-processing", "200 per 15 minutes")
    assert out.exit_code == 0, out.output
    assert db.get_vendor_limits("acme") == {"bulk": "20/hour", "image-processing": "200 per 15 minutes"}
    assert "20/hour" in out.output and "(override)" in out.output
    assert run("set-limits", "acme", "--bulk", "default").exit_code == 0
    assert db.get_vendor_limits("acme") == {"image-processing": "200 per 15 minutes"}
    shown = run("show-limits", "acme").output
    assert "bulk                 10/hour" in shown and "200 per 15 minutes       (override)" in shown
    bad = run("set-limits", "acme", "--reads", "lots")
    assert bad.exit_code == 2 and "'lots' is not a rate limit" in bad.output
    assert run("set-limits", "acme").exit_code == 2  # nothing to change
    missing = run("set-limits", "nobody", "--bulk", "1/hour")
    assert missing.exit_code == 1 and "no vendor 'nobody'" in missing.output
    assert run("set-limits", "acme", "--clear").exit_code == 0
    assert db.get_vendor_limits("acme") == {}
