"""Blueprint: liveness (/livez, cheap), worker health (really checks Redis, the database and the
workers) and local files."""
from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, send_from_directory
from redis.exceptions import RedisError

from core import contracts, model_files
from core import enqueue as jobqueue
from core.db.database import DatabaseUnavailable
from service.errors import NotFound
from service.extensions import backends
from service.rembg_health import rembg_instances

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


def _check(fn: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        fn()
    except (RedisError, DatabaseUnavailable, OSError) as exc:
        return {"status": "down", "error": str(exc)}
    return {"status": "up", "latencyMs": round((time.perf_counter() - started) * 1000, 1)}


@bp.get("/livez")
def livez() -> dict[str, Any]:
    """The process is up and serving: no Redis, database or rembg call, so a container probe
    never restarts a healthy API because a backend is down (/api/worker/health says that)."""
    return {"success": True, "status": "alive"}


@bp.get("/api/worker/health")
def worker_health() -> tuple[Response, int]:
    """healthy: Redis, DB, a worker on every seed queue, every rembg instance up and the face
    model file intact; degraded: some queue has no worker, some rembg instance is down or the
    face model FACE_DETECTOR needs is missing or altered (faceModel); else unhealthy."""
    b = backends()
    redis_check = _check(b.redis.ping)
    db_check = _check(b.db.ping)
    body: dict[str, Any] = {"success": True, "redis": redis_check, "db": db_check}
    workers: dict[str, int] = {}
    sizes: dict[str, int] = {}
    if redis_check["status"] == "up":
        try:
            for name in contracts.ALL_QUEUES:
                queue = b.queue(name)
                workers[name] = jobqueue.worker_count(queue)
                sizes[name] = queue.count
        except RedisError as exc:
            redis_check = body["redis"] = {"status": "down", "error": str(exc)}
    body["workers"] = workers
    body["queueSizes"] = sizes
    body["bgRemovalQueueSize"] = sizes.get(contracts.QUEUE_BACKGROUND_REMOVAL)
    body["faceCropQueueSize"] = sizes.get(contracts.QUEUE_FACE_CROP)
    rembg = rembg_instances(b.settings, b.redis if redis_check["status"] == "up" else None)
    body["rembgInstances"] = rembg
    face_model = _face_model(b.settings.face_detector)
    body["faceModel"] = face_model
    if redis_check["status"] != "up" or db_check["status"] != "up":
        status = "unhealthy"
    elif (any(workers.get(name, 0) == 0 for name in contracts.DEFAULT_WORKERS)
          or any(instance["status"] != "up" for instance in rembg)
          or (face_model["required"] and face_model["status"] != model_files.OK)):
        status = "degraded"
    else:
        status = "healthy"
    body["status"] = status
    body["success"] = status != "unhealthy"
    body["timestamp"] = datetime.now(UTC).isoformat()
    code = 503 if status == "unhealthy" else 200
    return jsonify(body), code


def _face_model(detector: str) -> dict[str, Any]:
    """The YuNet model file as this host sees it: ok, missing or bad md5 (workers with
    FACE_DETECTOR=yunet refuse to start without it; the message says how to restore it)."""
    checked = model_files.check(model_files.YUNET)
    return {"status": checked.status, "file": model_files.YUNET.relative_path, "detector": detector,
            "required": detector == "yunet", "message": checked.message}


@bp.get("/files/<path:key>")
def local_file(key: str) -> Response:
    """Serve an output stored by LocalStorage (the embedded default; Cloudinary serves its own)."""
    settings = backends().settings
    if settings.effective_storage_backend != "local":
        raise NotFound("Files are served by the storage backend, not by this app.")
    root = Path(settings.storage_dir)
    return send_from_directory(root, key, max_age=3600)
