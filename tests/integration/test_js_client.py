"""The JavaScript client (clients/js, `@image-queue/client`) from the Python suite, on node's own
test runner: its types and routes against the OpenAPI document the app builds (and the check
failing on doctored copies of the document and of the types), its unit tests (a scripted local
server), and its live test against the real stack: Gunicorn, rq workers, Redis, `rembg s`.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service import create_app
from tests.conftest import ROOT
from tests.rembg_servers import RembgServers, photo_jpeg
from tests.stack import PhotoServer, Stack, all_workers_stack, create_vendor

JS = ROOT / "clients" / "js"
CHECK = JS / "scripts" / "check-openapi.mjs"
DTS = JS / "src" / "index.d.ts"
NODE_MAJOR = 20


@pytest.fixture(scope="module")
def node() -> str:
    """node >= 20 (scripts/test installs it); missing or older fails, loudly."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node >= 20 is needed by the JavaScript client's tests (apt-get install nodejs)", pytrace=False)
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < NODE_MAJOR:
        pytest.fail(f"node >= {NODE_MAJOR} is needed by the JavaScript client's tests; found {version}", pytrace=False)
    return found


def run_node(node: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def tap_counts(output: str) -> dict[str, int]:
    """The summary of node's TAP reporter: tests, pass, fail, skipped, ..."""
    return {name: int(count) for name, count in re.findall(r"^# (\w+) (\d+)$", output, re.MULTILINE)}


# --- the types and routes against the OpenAPI document ---------------------------------------
@pytest.fixture(scope="module")
def document(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The OpenAPI document the app serves at /api/openapi.json, built offline by the app factory."""
    tmp = tmp_path_factory.mktemp("js-openapi")
    app = create_app({"redis_url": redis_url, "database_url": f"sqlite:///{tmp / 'db.sqlite3'}"})
    try:
        resp = app.test_client().get("/api/openapi.json")
        assert resp.status_code == 200
        doc: dict[str, Any] = resp.get_json()
        return doc
    finally:
        app.extensions["image_queue"].close()


def check(node: str, doc: dict[str, Any], tmp_path: Path, dts: Path = DTS) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(doc))
    return run_node(node, str(CHECK), str(path), "--dts", str(dts))


def test_the_client_has_every_operation_and_field_of_the_openapi_document(
        node: str, document: dict[str, Any], tmp_path: Path) -> None:
    result = check(node, document, tmp_path)
    assert result.returncode == 0, result.stderr
    operations, fields = map(int, re.search(r"ok: (\d+) operations and (\d+) fields", result.stdout).groups())
    vendor_operations = [op for item in document["paths"].values() for op in item.values()
                         if {"ApiKey": []} in op.get("security", [])]
    assert operations > len(vendor_operations) >= 11 and fields > 200


def _new_answer_field(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["JobQueued"]["properties"]["doctored"] = {"type": "integer"}


def _new_finished_field(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["JobStatus"]["properties"]["doctored"] = {"type": "integer"}


def _new_form_field(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["CropFaceForm"]["properties"]["doctored"] = {"type": "string"}


def _new_operation(doc: dict[str, Any]) -> None:
    doc["paths"]["/api/batch/{batchId}/doctored"] = {"post": {
        "operationId": "batch.doctored.post", "security": [{"ApiKey": []}],
        "responses": {"200": {"description": "canceled"}}}}


def _new_request_field(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["AddImagesRequest"]["properties"]["doctored"] = {"type": "array",
                                                                                 "items": {"type": "string"}}


def _new_nested_field(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["Batch"]["properties"]["progress"]["properties"]["doctored"] = {"type": "integer"}


def _new_enum_value(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["Mode"]["enum"].append("doctored")


def _now_required(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["RemoveBgRequest"]["required"].append("callbackUrl")


@pytest.mark.parametrize(("doctor", "problem"), [
    (_new_answer_field, r"cropFace answer 202 \(JobQueued\)\.doctored: not declared in JobQueued"),
    (_new_finished_field, r"cropFace answer 200 \(JobFinished\)\.doctored: not declared in JobFinished"),
    (_new_form_field, r"cropFace form \(CropFaceUpload\)\.doctored: not declared in CropFaceUpload"),
    (_new_operation, r"POST /api/batch/\{batchId\}/doctored \(batch\.doctored\.post\): no client method"),
    (_new_request_field, r"addImages request \(AddImagesRequest\)\.doctored: not declared"),
    (_new_nested_field, r"batchStatus answer \(BatchStatusAnswer\)\.batch\.progress\.doctored: not declared in "
                        r"BatchProgress"),
    (_new_enum_value, r"cropFace request \(CropFaceRequest\)\.mode: enum value\(s\) doctored missing"),
    (_now_required, r"removeBackground request \(RemoveBgRequest\)\.callbackUrl: required by the document, optional"),
])
def test_the_check_fails_on_a_doctored_document(node: str, document: dict[str, Any], tmp_path: Path,
                                                doctor: Any, problem: str) -> None:
    doc = copy.deepcopy(document)
    doctor(doc)
    result = check(node, doc, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(problem, result.stderr), result.stderr


def test_the_check_fails_on_doctored_types(node: str, document: dict[str, Any], tmp_path: Path) -> None:
    source = DTS.read_text()
    dropped = re.sub(r"(export interface Batch \{[^}]*?)\n  progressPercent: number;", r"\1", source)
    renamed = source.replace("  cropFace(body: CropFaceRequest", "  cropFaces(body: CropFaceRequest")
    assert dropped != source and renamed != source
    for text, problem in [(dropped, r"batchStatus answer \(BatchStatusAnswer\)\.batch\.progressPercent: not declared"),
                          (renamed, r"ImageQueueClient\.cropFace is not declared in index\.d\.ts")]:
        doctored = tmp_path / "index.d.ts"
        doctored.write_text(text)
        result = check(node, document, tmp_path, doctored)
        assert result.returncode == 1 and re.search(problem, result.stderr), result.stderr


def test_the_unit_tests_pass_on_node(node: str) -> None:
    # Without IMAGEQUEUE_URL the live file skips: it runs in the test below, against a stack of its own.
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMAGEQUEUE_")}
    result = run_node(node, "--test", "--test-reporter=tap", "clients/js/test/", env=env)
    counts = tap_counts(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    assert counts["fail"] == 0 and counts["pass"] >= 20, counts


# --- live: the real stack ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(redis_url: str, rembg_servers: RembgServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    rembg_servers.revive()
    with all_workers_stack(redis_url, rembg_servers.urls, tmp_path_factory.mktemp("js-stack"),
                           batch_chunk_size=4) as running:
        yield running


@pytest.fixture(scope="module")
def photos(astronaut_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/a.jpg"] = astronaut_jpeg
    server.files["/slow.jpg"] = astronaut_jpeg
    server.delays["/slow.jpg"] = 8.0  # a job still fetching it can be canceled
    yield server
    server.close()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_live_suite_passes_against_the_stack(node: str, stack: Stack, photos: PhotoServer,
                                                 tmp_path: Path) -> None:
    key = create_vendor(stack.env, "js-client")
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("people/one.jpg", photo_jpeg(320))
        zipped.writestr("people/two.jpg", photo_jpeg(256))
    env = {**stack.env, "IMAGEQUEUE_URL": stack.base_url, "IMAGEQUEUE_API_KEY": key,
           "IMAGEQUEUE_PHOTO_URL": photos.url("/a.jpg"), "IMAGEQUEUE_MISSING_URL": photos.url("/missing.jpg"),
           "IMAGEQUEUE_ZIP_PATH": str(archive), "IMAGEQUEUE_SLOW_PHOTO_URL": photos.url("/slow.jpg")}
    result = run_node(node, "--test", "--test-reporter=tap", "clients/js/test/live.test.mjs", env=env, timeout=540)
    counts = tap_counts(result.stdout)
    report = f"{result.stdout[-8000:]}\n{result.stderr[-2000:]}\n{stack.logs()}"
    assert result.returncode == 0, report
    assert counts.get("fail") == 0 and counts.get("skipped") == 0 and counts.get("pass", 0) >= 9, report
