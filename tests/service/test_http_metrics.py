"""Per-route HTTP metrics on /metrics (service/metrics.py): counts by route template, method and
status, 5xx errors and latency histograms, shared by every API process through Redis."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from core.db.database import connect
from service import create_app
from service.auth import create_api_key

TOKEN = "prom-token-0123456789"
BODY = {"recordId": "r1", "projectId": "p", "photoUrl": "http://photos.example.com/a.jpg", "mode": "square"}


def make_app(redis_url: str, tmp_path: Path) -> tuple[Flask, str]:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = connect(db_url)
    db.migrate()
    db.create_vendor("acme", "Acme")
    app = create_app({"redis_url": redis_url, "database_url": db_url, "storage_dir": str(tmp_path / "files"),
                      "rembg_urls": (), "metrics_token": TOKEN})

    def boom() -> Any:
        raise RuntimeError("a bug")

    app.add_url_rule("/boom", "boom", boom)
    return app, create_api_key(db, "acme")


def samples(app: Flask) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_requests_are_counted_and_timed_by_route_template(redis_conn: redis.Redis, redis_url: str,
                                                          tmp_path: Path) -> None:
    app, key = make_app(redis_url, tmp_path)
    client = app.test_client()
    headers = {"X-API-Key": key}
    assert client.post("/api/image-queue/crop-face-queue", json=BODY, headers=headers).status_code == 202
    assert client.post("/api/image-queue/crop-face-queue", json={}, headers=headers).status_code == 400
    for job_id in ("nope-1", "nope-2"):  # two ids, one route
        assert client.get(f"/api/image-queue/job/{job_id}", headers=headers).status_code == 404
    assert client.get("/boom").status_code == 500
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/livez").status_code == 200  # the liveness probe is not counted: it touches no Redis
    found = samples(app)

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    crop = {"route": "/api/image-queue/crop-face-queue", "method": "POST"}
    assert value("imagequeue_http_requests_total", **crop, status="202") == 1
    assert value("imagequeue_http_requests_total", **crop, status="400") == 1
    assert value("imagequeue_http_requests_total", route="/api/image-queue/job/<job_id>", method="GET",
                 status="404") == 2
    assert value("imagequeue_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value("imagequeue_http_request_errors_total", route="/boom", method="GET") == 1
    assert value("imagequeue_http_request_errors_total", **crop) == 0
    assert not any(labels and dict(labels).get("route") == "/livez" for _, labels in found)
    assert value("imagequeue_http_request_duration_seconds_count", **crop) == 2
    assert value("imagequeue_http_request_duration_seconds_bucket", **crop, le="+Inf") == 2
    assert 0 < value("imagequeue_http_request_duration_seconds_sum", **crop) < 10
    # The numbers live in Redis: another process (another app here) answers the same.
    (tmp_path / "other").mkdir()
    other, _ = make_app(redis_url, tmp_path / "other")
    assert samples(other)[("imagequeue_http_requests_total", tuple(sorted({**crop, "status": "202"}.items())))] == 1
