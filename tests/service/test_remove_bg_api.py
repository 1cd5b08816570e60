"""remove-bg-queue and bulk-remove-bg through Flask's test client on the real private Redis.

No workers run here: these tests check validation of the background-removal options, the
enqueued job and the record row. tests/integration/test_remove_bg_flow.py runs the jobs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core import contracts, rqjson
from core.contracts import InvalidField, RemoveBgOptions, remove_bg_options_from_dict, validate_remove_bg_options
from core.db.database import connect
from service import create_app
from service.auth import create_api_key

URL = "http://photos.example.com/a.jpg"
MODELS = ("u2netp", "u2net")


@pytest.fixture
def app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Flask:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = connect(db_url)
    db.migrate()
    db.create_vendor("acme", "Acme")
    app = create_app({"redis_url": redis_url, "database_url": db_url, "storage_dir": str(tmp_path / "files"),
                      "bulk_max_items": 5})
    app.config["KEY"] = create_api_key(db, "acme")
    app.config["DB_URL"] = db_url
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(app: Flask, client: FlaskClient, path: str, body: dict[str, Any]) -> Any:
    return client.post(f"/api/image-queue/{path}", json=body, headers={"X-API-Key": app.config["KEY"]})


def single(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"recordId": "rec-1", "projectId": "proj-1", "photoUrl": URL}
    body.update(changes)
    return body


def test_remove_bg_queue_enqueues_on_the_background_removal_queue(app: Flask, client: FlaskClient,
                                                                 redis_conn: redis.Redis) -> None:
    resp = post(app, client, "remove-bg-queue", single(options={"bgColor": "#FFF", "alphaMatting": True}))
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["success"] is True and body["recordId"] == "rec-1" and body["jobId"]
    assert body["message"] == "Background removal job queued for processing"
    assert body["estimatedSeconds"] > 0 and "seconds" in body["estimatedTime"]
    assert body["statusUrl"] == f"/api/image-queue/job/{body['jobId']}"
    job = rqjson.fetch(body["jobId"], connection=redis_conn)
    assert job.func_name == contracts.JOB_REMOVE_BACKGROUND == "jobs.tasks.remove_background"
    assert job.origin == contracts.QUEUE_BACKGROUND_REMOVAL
    assert job.retries_left == 3 and job.timeout == 60
    assert job.kwargs["payload"] == {
        "vendorId": "acme", "projectId": "proj-1", "recordId": "rec-1", "photoUrl": URL,
        "options": {"model": "u2netp", "bgColor": "#ffffff", "onlyMask": False, "alphaMatting": True}}
    assert rqjson.queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=redis_conn).count == 1
    row = connect(app.config["DB_URL"]).get_record("acme", "rec-1")
    assert row is not None and row["processing_status"] == "queued" and row["job_kind"] == "remove_bg"
    assert row["current_job_id"] == body["jobId"]


def test_bulk_remove_bg_queues_one_job_per_record(app: Flask, client: FlaskClient, redis_conn: redis.Redis) -> None:
    resp = post(app, client, "bulk-remove-bg", {"projectId": "p", "recordIds": ["a", "b", "c"],
                                                "photoUrls": [URL] * 3, "options": {"onlyMask": True}})
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["count"] == 3 and body["recordIds"] == ["a", "b", "c"] and len(set(body["jobIds"])) == 3
    assert body["message"] == "3 background removal jobs queued for processing" and body["estimatedTime"]
    assert rqjson.queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=redis_conn).count == 3
    job = rqjson.fetch(body["jobIds"][1], connection=redis_conn)
    assert job.kwargs["payload"]["recordId"] == "b" and job.kwargs["payload"]["options"]["onlyMask"] is True


@pytest.mark.parametrize("path, body, field", [
    ("remove-bg-queue", single(options={"model": "u2net"}), "options.model"),  # weights not on the servers
    ("remove-bg-queue", single(options={"bgColor": "red"}), "options.bgColor"),
    ("remove-bg-queue", single(options={"bgColor": [0, 0, 256]}), "options.bgColor"),
    ("remove-bg-queue", single(options={"bgColor": "#000", "onlyMask": True}), "options.bgColor"),
    ("remove-bg-queue", single(options={"onlyMask": "yes"}), "options.onlyMask"),
    ("remove-bg-queue", single(options={"alphaMatting": 1}), "options.alphaMatting"),
    ("remove-bg-queue", single(options={"format": "gif"}), "options.format"),
    ("remove-bg-queue", single(options={"maxSide": 0}), "options.maxSide"),
    ("remove-bg-queue", single(options={"format": "png", "quality": 80}), "options.quality"),
    ("remove-bg-queue", single(options="u2netp"), "options"),
    ("remove-bg-queue", single(photoUrl="ftp://x/a.jpg"), "photoUrl"),
    ("remove-bg-queue", single(recordId=None), "recordId"),
    ("bulk-remove-bg", {"projectId": "p", "recordIds": ["a", "b"], "photoUrls": [URL]}, "photoUrls"),
    ("bulk-remove-bg", {"projectId": "p", "recordIds": ["a", "a"], "photoUrls": [URL, URL]}, "recordIds[1]"),
    ("bulk-remove-bg", {"projectId": "p", "recordIds": list("abcdef"), "photoUrls": [URL] * 6}, "recordIds"),
    ("bulk-remove-bg", {"projectId": "p", "recordIds": ["a"], "photoUrls": ["nope"]}, "photoUrls[0]"),
])
def test_bad_requests_answer_400_naming_the_field_and_queue_nothing(
        app: Flask, client: FlaskClient, redis_conn: redis.Redis, path: str, body: dict[str, Any], field: str) -> None:
    resp = post(app, client, path, body)
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["details"]["field"] == field, error
    assert rqjson.queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=redis_conn).count == 0


def test_remove_bg_needs_an_api_key(client: FlaskClient) -> None:
    resp = client.post("/api/image-queue/remove-bg-queue", json=single())
    assert resp.status_code == 401 and resp.get_json()["success"] is False


@pytest.mark.parametrize("options, expected", [
    (None, RemoveBgOptions()),
    ({"model": "u2net", "bgColor": [1, 2, 3]}, RemoveBgOptions(model="u2net", bg_color=(1, 2, 3))),
    ({"bgColor": "0a0B0c", "alphaMatting": True}, RemoveBgOptions(bg_color=(10, 11, 12), alpha_matting=True)),
    ({"onlyMask": True, "bgColor": None}, RemoveBgOptions(only_mask=True)),
])
def test_options_validate_and_round_trip_through_the_payload(options: Any, expected: RemoveBgOptions) -> None:
    validated = validate_remove_bg_options(options, MODELS)
    assert validated == expected
    assert remove_bg_options_from_dict(validated.to_dict()) == expected


def test_default_model_is_the_first_of_rembg_models() -> None:
    assert validate_remove_bg_options({}, ("u2net", "u2netp")).model == "u2net"
    with pytest.raises(InvalidField) as info:
        validate_remove_bg_options({"model": "isnet-general-use"}, MODELS)
    assert info.value.field == "options.model" and "REMBG_MODELS" in info.value.message


def test_web_tier_does_not_import_the_rembg_client() -> None:
    import subprocess
    import sys

    code = ("import sys, service.wsgi; heavy = [m for m in ('jobs.rembg_pool', 'jobs.imaging.background', 'pybreaker') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
