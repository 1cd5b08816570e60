"""Operators' surfaces through Flask's test client on the real private Redis: admin auth on
/rq (rq-dashboard) and /metrics, request ids, the metrics written to Redis and read back, and
the JSON log lines with their context fields.

tests/integration/test_operations.py drives the same through Gunicorn, real workers and
headless Chromium.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import logging.config
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from core import contracts, metrics, rqjson
from core.config import Settings
from core.db.database import connect
from core.logs import job_context, logging_config
from service import create_app
from service.auth import create_api_key
from tests.conftest import free_port

PASSWORD = "correct horse battery staple"
TOKEN = "prom-token-0123456789"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = basic("admin", PASSWORD)


@pytest.fixture
def make_app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Any]:
    apps: list[Flask] = []
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = connect(db_url)
    db.migrate()
    db.create_vendor("acme", "Acme")

    def make(**settings: Any) -> Flask:
        base = {"redis_url": redis_url, "database_url": db_url, "storage_dir": str(tmp_path / "files"),
                "rembg_urls": ()}
        app = create_app({**base, **settings})
        app.config["KEY"] = create_api_key(db, "acme")
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["image_queue"].close()
    db.close()


def assert_json_error(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.get_json()["error"]["code"] == code


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_admin_surfaces_are_off_without_a_password(make_app: Any) -> None:
    client = make_app().test_client()
    for path in ("/rq/", "/rq/0/data/queues.json", "/metrics"):
        assert_json_error(client.get(path, headers=ADMIN), 404, "NOT_FOUND")


def test_dashboard_needs_the_admin_credentials(make_app: Any) -> None:
    client = make_app(admin_password=PASSWORD).test_client()
    for headers in ({}, basic("admin", "wrong"), basic("root", PASSWORD), {"Authorization": f"Bearer {PASSWORD}"}):
        resp = client.get("/rq/", headers=headers)
        assert_json_error(resp, 401, "ADMIN_AUTH_REQUIRED")
        assert resp.headers["WWW-Authenticate"].startswith('Basic realm="image-queue admin"')
    resp = client.get("/rq/", headers=ADMIN)
    assert resp.status_code == 200 and "RQ dashboard" in resp.get_data(as_text=True)
    # A vendor's API key opens nothing here.
    assert_json_error(client.get("/rq/", headers={"X-API-Key": client.application.config["KEY"]}),
                      401, "ADMIN_AUTH_REQUIRED")


def test_dashboard_reads_our_redis_and_is_not_rate_limited(make_app: Any, redis_conn: redis.Redis) -> None:
    app = make_app(admin_password=PASSWORD, admin_username="ops", rate_limit_global="2/hour")
    rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn).enqueue("os.getpid")
    client = app.test_client()
    for _ in range(5):  # the page polls every 2.5 s; the global per-IP limit must not apply
        resp = client.get("/rq/0/data/queues.json", headers=basic("ops", PASSWORD))
        assert resp.status_code == 200, resp.get_data(as_text=True)
    queues = {queue["name"]: queue["count"] for queue in resp.get_json()["queues"]}
    assert queues == {contracts.QUEUE_FACE_CROP: 1}
    assert not [key for key in redis_conn.scan_iter("LIMITS:*")], "dashboard requests were counted"


def test_dashboard_shows_a_json_job(make_app: Any, redis_conn: redis.Redis) -> None:
    """rq-dashboard reads jobs with our JSON serializer (with pickle it fails to decode them)."""
    app = make_app(admin_password=PASSWORD, admin_username="ops")
    job = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn).enqueue(
        contracts.JOB_CROP_FACE, kwargs={"payload": {"vendorId": "v1"}}, meta={"vendor_id": "v1"})
    resp = app.test_client().get(f"/rq/0/data/job/{job.id}.json", headers=basic("ops", PASSWORD))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["description"] == f"{contracts.JOB_CROP_FACE}(payload={{'vendorId': 'v1'}})"


def test_rq_cli_reads_our_queues(redis_url: str, redis_conn: redis.Redis) -> None:
    """`rq info` (counts) and `rq requeue -S json` (reads jobs) work on JSON jobs, as docs/operations.md says."""
    import subprocess
    import sys
    from pathlib import Path

    rq_cli = str(Path(sys.executable).with_name("rq"))
    queue = rqjson.queue(contracts.QUEUE_WEBHOOKS, connection=redis_conn)
    job = queue.enqueue("builtins.len", 3)
    info = subprocess.run([rq_cli, "info", "--url", redis_url, "--only-queues", contracts.QUEUE_WEBHOOKS],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "1 queues, 1 jobs total" in info.stdout, info.stdout + info.stderr
    job.set_status("failed")
    queue.failed_job_registry.add(job, ttl=600)
    queue.remove(job)
    requeue = subprocess.run([rq_cli, "requeue", "--url", redis_url, "-S", rqjson.CLI_SERIALIZER, "--queue",
                              contracts.QUEUE_WEBHOOKS, "--all"], capture_output=True, text=True, timeout=60)
    assert requeue.returncode == 0, requeue.stdout + requeue.stderr
    assert queue.job_ids == [job.id]


def test_metrics_accepts_the_token_or_the_admin(make_app: Any) -> None:
    client = make_app(metrics_token=TOKEN).test_client()
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain; version=")
    assert samples(resp.get_data(as_text=True))[("imagequeue_redis_up", ())] == 1
    for headers in ({}, {"Authorization": "Bearer nope"}, ADMIN):  # no admin password configured here
        assert_json_error(client.get("/metrics", headers=headers), 401, "ADMIN_AUTH_REQUIRED")
    assert_json_error(client.get("/rq/", headers=ADMIN), 404, "NOT_FOUND")  # the token opens /metrics only

    both = make_app(metrics_token=TOKEN, admin_password=PASSWORD).test_client()
    assert both.get("/metrics", headers=ADMIN).status_code == 200
    assert_json_error(both.get("/rq/", headers={"Authorization": f"Bearer {TOKEN}"}), 401, "ADMIN_AUTH_REQUIRED")


def test_metrics_with_redis_down_still_answers(make_app: Any) -> None:
    client = make_app(metrics_token=TOKEN, redis_url=f"redis://127.0.0.1:{free_port()}/0").test_client()
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    found = samples(resp.get_data(as_text=True))
    assert found[("imagequeue_redis_up", ())] == 0
    assert not [name for name, _ in found if name.startswith("imagequeue_queue_jobs")]


def test_request_id_is_echoed_or_made(make_app: Any) -> None:
    client = make_app().test_client()
    made = client.get("/").headers["X-Request-ID"]
    assert len(made) == 32
    assert client.get("/", headers={"X-Request-ID": "lb-1234.abc"}).headers["X-Request-ID"] == "lb-1234.abc"
    replaced = client.get("/", headers={"X-Request-ID": "bad id\x7f"}).headers["X-Request-ID"]
    assert replaced != "bad id\x7f" and len(replaced) == 32


def _job(redis_conn: redis.Redis, queue: str, func: str, seconds: float, vendor: str = "acme") -> Any:
    job = rqjson.queue(queue, connection=redis_conn).enqueue(func, kwargs={"payload": {"vendorId": vendor}},
                                                      meta={"vendor_id": vendor})
    job.started_at = datetime.now(UTC) - timedelta(seconds=seconds)
    job.ended_at = datetime.now(UTC)
    return job


def test_counters_and_histogram_round_trip(make_app: Any, redis_conn: redis.Redis) -> None:
    client = make_app(metrics_token=TOKEN).test_client()
    fast = _job(redis_conn, contracts.QUEUE_FACE_CROP, contracts.JOB_CROP_FACE, 0.3)
    slow = _job(redis_conn, contracts.QUEUE_FACE_CROP, contracts.JOB_CROP_FACE, 7.0)
    huge = _job(redis_conn, contracts.QUEUE_BACKGROUND_REMOVAL, contracts.JOB_REMOVE_BACKGROUND, 500.0, "globex")
    metrics.job_succeeded(redis_conn, fast)
    metrics.job_succeeded(redis_conn, slow)
    metrics.job_failed(redis_conn, huge, "REMBG_UNAVAILABLE", final=False)
    metrics.job_failed(redis_conn, huge, "REMBG_UNAVAILABLE", final=True)
    metrics.images_submitted(redis_conn, "acme", contracts.KIND_FACE_CROP, 2)
    metrics.images_finished(redis_conn, "acme", contracts.KIND_BATCH_FACE_CROP, completed=5, failed=0)

    found = samples(client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True))

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert value("imagequeue_jobs_finished_total", queue="face-crop") == 2
    assert value("imagequeue_job_retries_total", queue="background-removal", code="REMBG_UNAVAILABLE") == 1
    assert value("imagequeue_jobs_failed_total", queue="background-removal", code="REMBG_UNAVAILABLE") == 1
    assert value("imagequeue_vendor_images_submitted_total", vendor="acme", kind="face_crop") == 2
    assert value("imagequeue_vendor_images_finished_total", vendor="acme", kind="face_crop", status="completed") == 2
    assert value("imagequeue_vendor_images_finished_total", vendor="globex", kind="remove_bg", status="failed") == 1
    assert value("imagequeue_vendor_images_finished_total", vendor="acme", kind="batch_face_crop",
                 status="completed") == 5
    # Cumulative buckets: 0.3 s lands in le=0.5, 7 s in le=10, 500 s only in +Inf.
    fc = {"queue": "face-crop", "outcome": "completed"}
    assert value("imagequeue_job_duration_seconds_bucket", le="0.25", **fc) == 0
    assert value("imagequeue_job_duration_seconds_bucket", le="0.5", **fc) == 1
    assert value("imagequeue_job_duration_seconds_bucket", le="5.0", **fc) == 1
    assert value("imagequeue_job_duration_seconds_bucket", le="10.0", **fc) == 2
    assert value("imagequeue_job_duration_seconds_bucket", le="+Inf", **fc) == 2
    assert value("imagequeue_job_duration_seconds_count", **fc) == 2
    assert value("imagequeue_job_duration_seconds_sum", **fc) == pytest.approx(7.3, abs=0.05)
    bg = {"queue": "background-removal", "outcome": "failed"}
    assert value("imagequeue_job_duration_seconds_bucket", le="120.0", **bg) == 0
    assert value("imagequeue_job_duration_seconds_count", **bg) == 2  # both attempts are timed
    # Live queue depths: the four jobs above were enqueued and never run.
    assert value("imagequeue_queue_jobs", queue="face-crop", state="waiting") == 2
    assert value("imagequeue_workers", queue="face-crop") == 0


def _json_lines(settings: Settings, emit: Any) -> list[dict[str, Any]]:
    stream = io.StringIO()
    config = logging_config(settings)
    config["handlers"]["console"]["stream"] = stream
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logging.config.dictConfig(config)
    try:
        emit()
    finally:
        root.handlers, root.level = saved[0], saved[1]
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_log_lines_carry_the_request_context(make_app: Any) -> None:
    app = make_app()
    log = logging.getLogger("service.test")

    def emit() -> None:
        with app.test_request_context("/", headers={"X-Request-ID": "req-42"}):
            app.preprocess_request()
            log.info("before the key is known")
            from flask import g
            g.vendor_id = "acme"
            log.warning("vendor=%s something", "acme")
        log.info("outside any request")

    lines = _json_lines(Settings(log_format="json"), emit)
    assert [line["message"] for line in lines] == ["before the key is known", "vendor=acme something",
                                                    "outside any request"]
    assert lines[0]["request_id"] == "req-42" and "vendor" not in lines[0]
    assert lines[1]["request_id"] == "req-42" and lines[1]["vendor"] == "acme" and lines[1]["level"] == "WARNING"
    assert "request_id" not in lines[2] and lines[2]["logger"] == "service.test" and "time" in lines[2]


def test_json_log_lines_carry_the_job_context(redis_conn: redis.Redis) -> None:
    job = rqjson.queue("face-detection-5", connection=redis_conn).enqueue(
        "os.getpid", meta={"vendor_id": "acme", "batch_id": "b1"})
    log = logging.getLogger("jobs.test")

    def emit() -> None:
        with job_context(job):
            log.info("in a callback")
        log.info("after it")

    first, second = _json_lines(Settings(log_format="json"), emit)
    assert (first["job_id"], first["vendor"], first["queue"], first["batch_id"]) == (
        job.id, "acme", "face-detection-5", "b1")
    assert "job_id" not in second


def test_log_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT='xml'"):
        logging_config(Settings(log_format="xml"))
    with pytest.raises(ValueError, match="LOG_LEVEL='loud'"):
        logging_config(Settings(log_level="loud"))
    assert logging_config(Settings())["formatters"]["main"] == {"format": "%(asctime)s %(levelname)s %(name)s "
                                                                          "%(message)s"}


def test_dashboard_actions_only_from_its_own_page(make_app: Any, redis_conn: redis.Redis) -> None:
    client = make_app(admin_password=PASSWORD).test_client()
    queue = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn)
    job = queue.enqueue("os.getpid")
    delete = f"/rq/job/{job.id}/delete"
    for headers in ({}, {"Origin": "https://evil.example"}, {"Referer": "http://evil.example/rq/"}):
        assert_json_error(client.post(delete, headers={**ADMIN, **headers}), 403, "CROSS_SITE_REQUEST")
    # requeue_all changes jobs on GET too
    assert_json_error(client.get("/rq/requeue/face-crop", headers=ADMIN), 403, "CROSS_SITE_REQUEST")
    assert queue.count == 1
    resp = client.post(delete, headers={**ADMIN, "Origin": "http://localhost"})
    assert resp.status_code == 200 and resp.get_json() == {"status": "OK"}
    assert queue.count == 0
    # The credentials still come first: a same-origin POST without them is a 401.
    assert_json_error(client.post(delete, headers={"Origin": "http://localhost"}), 401, "ADMIN_AUTH_REQUIRED")
