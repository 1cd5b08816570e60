"""options.detector from the API to the worker: validated by core.contracts (400 naming the
choices), carried in the job payload, honoured by single jobs and batches run by a real RQ
SimpleWorker on the private Redis, and FACE_DETECTOR as the default.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from rq import SimpleWorker

from core import contracts, model_files, rqjson
from core.contracts import CropOptions, FoundFace, InvalidField, crop_options_from_dict, validate_crop_options
from jobs import context as worker_context
from jobs.imaging import face_crop
from tests.conftest import ROOT
from tests.service.apps import vendor_app
from tests.stack import PhotoServer


# --- contracts ------------------------------------------------------------------------------
def test_detector_option_is_validated_and_round_trips() -> None:
    assert validate_crop_options("square", {}).detector is None
    for name in contracts.FACE_DETECTORS:
        options = validate_crop_options("passport", {"detector": name})
        assert options.detector == name
        assert crop_options_from_dict(options.to_dict()) == options
    with pytest.raises(InvalidField) as info:
        validate_crop_options("square", {"detector": "cnn"})
    assert info.value.field == "options.detector" and "yunet, haar" in info.value.message
    with pytest.raises(InvalidField):
        validate_crop_options("square", {"detector": ["yunet"]})
    assert crop_options_from_dict({}).detector is None  # payloads queued before the option existed


def test_found_face_round_trips() -> None:
    face = FoundFace({"x": 1, "y": 2, "width": 3, "height": 4}, 0.9,
                     {name: {"x": 1, "y": 1} for name in contracts.LANDMARK_NAMES})
    assert FoundFace.from_dict(face.to_dict()) == face
    assert FoundFace.from_dict({"box": {"x": 0, "y": 0, "width": 1, "height": 1}}).to_dict()["landmarks"] is None


# --- API and worker -----------------------------------------------------------------------------
@pytest.fixture
def photos(astronaut_jpeg: bytes) -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/astronaut.jpg"] = astronaut_jpeg
    yield server
    server.close()


@pytest.fixture
def app(redis_conn: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    with vendor_app(redis_url, tmp_path, storage_dir=str(tmp_path / "files"), upload_dir=str(tmp_path / "up")) as app:
        settings = app.extensions["image_queue"].settings
        # The in-process worker reads the same environment a real one would.
        for name, value in {"REDIS_URL": redis_url, "DATABASE_URL": settings.database_url,
                            "STORAGE_DIR": str(tmp_path / "files"), "UPLOAD_DIR": str(tmp_path / "up"),
                            "FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("FACE_DETECTOR", raising=False)
        worker_context.context.cache_clear()
        yield app
    worker_context.context.cache_clear()


def post(app: Flask, path: str, body: dict[str, Any]) -> Any:
    return app.test_client().post(path, json=body, headers={"X-API-Key": app.config["KEYS"]["acme"]})


def crop(app: Flask, photos: PhotoServer, record_id: str, mode: str, options: dict[str, Any] | None) -> str:
    body: dict[str, Any] = {"recordId": record_id, "projectId": "p", "mode": mode,
                            "photoUrl": photos.url("/astronaut.jpg")}
    if options is not None:
        body["options"] = options
    resp = post(app, "/api/image-queue/crop-face-queue", body)
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["jobId"])


def run_jobs(redis_conn: redis.Redis, *queues: str) -> None:
    SimpleWorker([rqjson.queue(name, connection=redis_conn) for name in queues], connection=redis_conn,
                 serializer=rqjson.SERIALIZER).work(burst=True)


@pytest.mark.parametrize(("path", "body"), [
    ("/api/image-queue/crop-face-queue", {"recordId": "r", "projectId": "p", "mode": "square",
                                          "photoUrl": "http://photos.example.com/a.jpg"}),
    ("/api/image-queue/bulk-crop-face", {"recordIds": ["r"], "projectId": "p", "mode": "square",
                                         "photoUrls": ["http://photos.example.com/a.jpg"]}),
    ("/api/batch/add-images", {"projectId": "p", "images": [{"recordId": "r",
                                                             "imageUrl": "http://photos.example.com/a.jpg"}]}),
])
def test_unknown_detector_is_a_400_naming_the_choices(app: Flask, path: str, body: dict[str, Any]) -> None:
    resp = post(app, path, {**body, "options": {"detector": "cnn"}})
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["details"]["field"] == "options.detector"
    assert "yunet, haar" in error["message"]


def test_single_jobs_use_the_requested_detector(app: Flask, photos: PhotoServer, redis_conn: redis.Redis) -> None:
    haar_id = crop(app, photos, "r-haar", "passport", {"detector": "haar"})
    yunet_id = crop(app, photos, "r-yunet", "passport", {"detector": "yunet"})
    default_id = crop(app, photos, "r-default", "square", None)
    assert rqjson.fetch(haar_id, connection=redis_conn).kwargs["payload"]["options"]["detector"] == "haar"
    run_jobs(redis_conn, contracts.QUEUE_FACE_CROP)
    haar = rqjson.fetch(haar_id, connection=redis_conn).return_value()
    yunet = rqjson.fetch(yunet_id, connection=redis_conn).return_value()
    default = rqjson.fetch(default_id, connection=redis_conn).return_value()
    assert haar["detector"] == "haar" and haar["rollDegrees"] is None
    assert haar["faces"][0]["landmarks"] is None and haar["faces"][0]["score"] is None
    assert yunet["detector"] == "yunet" and yunet["rollDegrees"] is not None
    assert set(yunet["faces"][0]["landmarks"]) == set(contracts.LANDMARK_NAMES)
    assert default["detector"] == "yunet" and (default["width"], default["height"]) == (300, 300)
    for result in (haar, yunet, default):
        assert result["faceDetected"] and result["faceCount"] == 1 and result["faces"][0]["box"] == result["faceBox"]


def test_face_detector_setting_is_the_default(app: Flask, photos: PhotoServer, redis_conn: redis.Redis,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACE_DETECTOR", "haar")
    worker_context.context.cache_clear()
    plain = crop(app, photos, "r1", "square", None)
    asked = crop(app, photos, "r2", "square", {"detector": "yunet"})
    run_jobs(redis_conn, contracts.QUEUE_FACE_CROP)
    assert rqjson.fetch(plain, connection=redis_conn).return_value()["detector"] == "haar"
    assert rqjson.fetch(asked, connection=redis_conn).return_value()["detector"] == "yunet"


def test_batches_use_the_requested_detector(app: Flask, photos: PhotoServer, redis_conn: redis.Redis,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    original = face_crop.process

    def recording(data: bytes, mode: str, options: CropOptions, **kwargs: Any) -> face_crop.CropResult:
        result = original(data, mode, options, **kwargs)
        used.append(result.detector)
        return result

    monkeypatch.setattr(face_crop, "process", recording)
    for detector in ("haar", "yunet", None):
        body: dict[str, Any] = {"projectId": "p", "mode": "square", "images": [
            {"recordId": f"b-{detector}-{i}", "imageUrl": photos.url("/astronaut.jpg")} for i in range(2)]}
        if detector:
            body["options"] = {"detector": detector}
        resp = post(app, "/api/batch/add-images", body)
        assert resp.status_code in (200, 201, 202), resp.get_json()
        run_jobs(redis_conn, *contracts.FACE_DETECTION_QUEUES)
    assert used == ["haar", "haar", "yunet", "yunet", "yunet", "yunet"]


# --- a missing or altered model: workers refuse to start, health shows it ---------------------------
def _start_settings(env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Import jobs.settings as `rq worker -c jobs.settings` does, without loading OpenCV."""
    return subprocess.run([sys.executable, "-c", f"{prelude}import jobs.settings"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "IQ_SKIP_PRELOAD": "1", **env})


def _bad_copy(tmp_path: Path) -> Path:
    bad = tmp_path / "face_detection_yunet_s_640.onnx"
    bad.write_bytes(model_files.YUNET.path.read_bytes()[:-10] + bytes(10))
    return bad


def test_worker_refuses_to_start_without_its_model(tmp_path: Path, redis_url: str) -> None:
    ok = _start_settings({"REDIS_URL": redis_url, "FACE_DETECTOR": "yunet"})
    assert ok.returncode == 0, ok.stderr
    prelude = ("from core import model_files; model_files.YUNET = model_files.ModelFile('YuNet face detection "
               f"model', {str(_bad_copy(tmp_path))!r}, model_files.YUNET.md5, 'FACE_DETECTOR', 'haar'); ")
    bad = _start_settings({"REDIS_URL": redis_url}, prelude)
    assert bad.returncode == 1
    assert "image-queue worker not started" in bad.stderr and "expected 4ae92eeb150c82ce15ac80738b3b8167" in bad.stderr
    assert "restore it from the repository (`git checkout -- " in bad.stderr and "FACE_DETECTOR=haar" in bad.stderr
    # FACE_DETECTOR=haar runs without the file; an unknown detector does not start.
    assert _start_settings({"REDIS_URL": redis_url, "FACE_DETECTOR": "haar"}, prelude).returncode == 0
    unknown = _start_settings({"REDIS_URL": redis_url, "FACE_DETECTOR": "cnn"})
    assert unknown.returncode == 1 and "use one of yunet, haar" in unknown.stderr


def test_health_shows_the_face_model(app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = app.test_client()
    model = client.get("/api/worker/health").get_json()["faceModel"]
    assert model["status"] == "ok" and model["required"] and model["detector"] == "yunet"
    assert model["file"] == "jobs/imaging/weights/face_detection_yunet_s_640.onnx"
    for path, status in ((_bad_copy(tmp_path), "bad md5"), (tmp_path / "gone.onnx", "missing")):
        monkeypatch.setattr(model_files, "YUNET", model_files.ModelFile(
            "YuNet face detection model", str(path), model_files.YUNET.md5, "FACE_DETECTOR", "haar"))
        body = client.get("/api/worker/health").get_json()
        assert body["faceModel"]["status"] == status and "git checkout" in body["faceModel"]["message"]
        assert body["status"] in ("degraded", "unhealthy")  # never healthy without the model
