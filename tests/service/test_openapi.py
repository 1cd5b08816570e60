"""The OpenAPI document stays true to the app: every route documented, nothing documented that is
not a route, a valid OpenAPI 3 document, limits taken from the app's settings; and the docs page
works from local files only. The live check of answers against it: tests/integration/test_api_fuzz.py.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from core import contracts
from service import create_app
from service.openapi.document import OPERATIONS
from tests.service.test_api import assert_error

# Routes left out on purpose: Flask's static files and rq-dashboard's own pages under /rq.
NOT_DOCUMENTED = re.compile(r"^(/static/|/rq(/|$))")


@pytest.fixture
def app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"redis_url": redis_url, "database_url": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                      "admin_password": "pw", "metrics_token": "tok", "bulk_max_items": 7,
                      "batch_max_images_per_request": 9, "rembg_models": ("u2netp", "silueta")})
    yield app
    app.extensions["image_queue"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    resp = client.get("/api/openapi.json")  # no key needed
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()


def as_openapi(rule: str) -> str:
    """/job/<job_id> -> /job/{jobId}, /files/<path:key> -> /files/{key}."""
    def camel(match: re.Match[str]) -> str:
        head, *rest = match.group(1).split("_")
        return "{" + head + "".join(part.title() for part in rest) + "}"
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", camel, rule)


def routes(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if NOT_DOCUMENTED.match(rule.rule):
            continue
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            found.add((as_openapi(rule.rule), method.lower()))
    return found


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method): op for path, item in document["paths"].items() for method, op in item.items()}


def test_the_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.0")


def test_every_route_is_documented_and_every_documented_operation_is_a_route(
        app: Flask, document: dict[str, Any]) -> None:
    documented = operations(document)
    missing = routes(app) - set(documented)
    assert not missing, f"routes missing from the OpenAPI document (add them to service/openapi/document.py): {missing}"
    extra = set(documented) - routes(app)
    assert not extra, f"documented operations that are not routes of the app: {extra}"
    undocumented = [key for key, op in documented.items() if op.get("x-undocumented")]
    assert not undocumented, f"routes without an entry in service/openapi/document.py OPERATIONS: {undocumented}"
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert not set(OPERATIONS) - endpoints, "OPERATIONS entries for endpoints that no longer exist"
    for (path, method), op in documented.items():
        assert op["summary"] and op["responses"], (path, method)
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)


def test_security_and_error_answers_match_what_each_route_does(document: dict[str, Any]) -> None:
    ops = operations(document)
    vendor = ops[("/api/image-queue/crop-face-queue", "post")]
    assert vendor["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert {"202", "400", "401", "403", "413", "415", "429", "503"} <= set(vendor["responses"])
    assert "RateLimit-Remaining" in vendor["responses"]["202"]["headers"]
    for path in ("/api/image-queue/crop-face-queue", "/api/image-queue/bulk-remove-bg", "/api/batch/add-images",
                 "/api/batch/upload-zip"):  # every queueing POST is idempotent and takes a callbackUrl
        assert "Idempotency-Key" in {p["name"] for p in ops[(path, "post")]["parameters"]}, path
        assert {"409", "422"} <= set(ops[(path, "post")]["responses"]), path
    assert {"200", "404", "401", "429", "503"} <= set(ops[("/api/image-queue/job/{jobId}", "get")]["responses"])
    for path in ("/api/admin/failed-jobs", "/api/admin/failed-jobs/requeue", "/api/admin/failed-jobs/delete"):
        op = ops.get((path, "get")) or ops[(path, "post")]
        assert op["security"] == [{"AdminBasic": []}] and {"401", "404"} <= set(op["responses"])
    for public in ("/api/worker/health", "/livez", "/api/openapi.json", "/api/docs", "/"):
        assert ops[(public, "get")]["security"] == []
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": schemes["ApiKey"]["description"]}
    assert schemes["AdminBasic"]["scheme"] == "basic"
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["success", "error"]
    assert "Retry-After" in document["components"]["responses"]["E429"]["headers"]


def test_request_schemas_follow_the_validators_and_settings(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["Mode"]["enum"] == list(contracts.CROP_MODES)
    assert schemas["Id"]["anyOf"][0]["pattern"] == contracts.ID_PATTERN.pattern
    assert schemas["PhotoUrl"]["maxLength"] == contracts.MAX_URL_LENGTH
    crop = schemas["CropOptions"]["properties"]
    assert set(crop) == {"padding", "outputWidth", "outputHeight", "format", "quality", "noFace", "detector"}
    assert crop["detector"]["enum"] == [*contracts.FACE_DETECTORS, None]
    assert schemas["CropOptions"]["additionalProperties"] is False
    assert (crop["outputWidth"]["minimum"], crop["outputWidth"]["maximum"]) == (16, contracts.MAX_OUTPUT_SIDE)
    assert crop["noFace"]["enum"] == list(contracts.NO_FACE_POLICIES)
    assert schemas["RemoveBgOptions"]["properties"]["model"]["enum"] == ["u2netp", "silueta", None]
    for name in ("BulkCropFaceRequest", "BulkRemoveBgRequest"):
        assert schemas[name]["properties"]["recordIds"]["maxItems"] == 7
    assert schemas["AddImagesRequest"]["properties"]["images"]["maxItems"] == 9
    assert set(schemas["CropFaceRequest"]["required"]) == {"recordId", "projectId", "photoUrl", "mode"}
    for name in ("CropFaceRequest", "BulkCropFaceRequest", "RemoveBgRequest", "BulkRemoveBgRequest",
                 "AddImagesRequest", "UploadZipForm"):
        assert "callbackUrl" in schemas[name]["properties"], name
    queues = set(schemas["QueueName"]["enum"])
    assert set(contracts.ALL_QUEUES) <= queues


def test_docs_page_is_served_from_local_files(client: FlaskClient) -> None:
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/api/openapi.json" in html and "SwaggerUIBundle" in html
    assert "http://" not in html and "https://" not in html  # no CDN: the machine may have no network
    assets = re.findall(r'(?:src|href)="(/api/docs/[^"]+)"', html)
    assert len(assets) >= 4
    for asset in assets:
        with client.get(asset) as resp:  # a file response: close it
            assert resp.status_code == 200 and len(resp.data) > 100, asset
    with client.get("/api/docs/swagger-ui-bundle.js") as resp:
        # Flask takes it from the system's mime.types; both are documented.
        assert resp.mimetype in ("application/javascript", "text/javascript")
    assert_error(client.get("/api/docs/index.html"), 404, "NOT_FOUND")
    assert_error(client.get("/api/docs/../../README.md"), 404, "NOT_FOUND")
