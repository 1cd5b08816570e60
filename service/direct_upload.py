"""The photo itself instead of its URL (multipart ``file``), and ``wait`` for a quick answer.

The single routes (crop-face-queue, remove-bg-queue) take either a JSON body with ``photoUrl``
or a multipart form with the photo in ``file`` and the other fields as form fields (``options``
as JSON text). The file is streamed by werkzeug's form parser into UPLOAD_DIR (``UploadRequest``),
checked (at most FETCH_MAX_BYTES, like a fetched photo; JPEG, PNG, WebP, HEIC/HEIF or AVIF by its
bytes) and kept as ``UPLOAD_DIR/photos/<jobId>.<ext>``; the job's photoUrl is ``upload:<name>``
and the worker reads it from there (UPLOAD_DIR is shared, as for batches) and removes it when
the job ends (jobs/tasks.py), or the cancel route does.

``wait`` (seconds, 0-30, in the body or the query string): the route polls the job it queued
for that long and answers 200 with the finished job (as GET /job/<id>) when it completed or
failed in time, else the usual 202 (at once when no live worker listens on the job's queue).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from flask import request
from rq.job import Job

from core import contracts
from core import enqueue as jobqueue
from core.config import Settings
from service.errors import ApiError, ValidationError
from service.validation import UnsupportedMediaType, json_body

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/heic": "heic",
               "image/avif": "avif"}
_POLL_S = 0.1


class PayloadTooLarge(ApiError):
    code = 413
    error_code = "PAYLOAD_TOO_LARGE"


def is_multipart() -> bool:
    """Whether the photo comes as a multipart upload."""
    return request.mimetype == "multipart/form-data"


def single_body(settings: Settings) -> dict[str, Any]:
    """The request's fields: the JSON object, or the multipart form (``options`` decoded from JSON)."""
    if not is_multipart():
        return json_body()
    if request.content_length is not None and request.content_length > settings.fetch_max_bytes + 64 * 1024:
        raise PayloadTooLarge(f"The upload is {request.content_length} bytes; a photo may be at most "
                              f"{settings.fetch_max_bytes} bytes (FETCH_MAX_BYTES).")
    body: dict[str, Any] = dict(request.form.items())
    raw = body.get("options")
    if isinstance(raw, str):
        try:
            body["options"] = json.loads(raw) if raw.strip() else None
        except (ValueError, RecursionError):
            raise ValidationError("options", "must be a JSON object (as text in a multipart form)") from None
    return body


def store_upload(settings: Settings, job_id: str) -> str:
    """Keep the multipart ``file`` for job ``job_id``; returns the job's photoUrl (``upload:<name>``)."""
    upload = request.files.get("file")
    if upload is None:
        raise ValidationError("file", "is required in a multipart request: the photo as a file field named 'file' "
                                      "(or send JSON with photoUrl)")
    temp_name = getattr(upload.stream, "name", None)
    upload.stream.flush()
    upload.stream.seek(0, os.SEEK_END)
    size = upload.stream.tell()
    if size > settings.fetch_max_bytes:
        raise PayloadTooLarge(f"'file' is {size} bytes; a photo may be at most {settings.fetch_max_bytes} "
                              "bytes (FETCH_MAX_BYTES).")
    upload.stream.seek(0)
    head = upload.stream.read(64)
    kind = contracts.sniff_photo_type(head)
    if kind is None:
        raise UnsupportedMediaType("'file' is not a JPEG, PNG, WebP, HEIC/HEIF or AVIF image (judged by its "
                                   "bytes, not its name)", error_code="NOT_AN_IMAGE")
    if not isinstance(temp_name, str):
        raise ApiError("the upload could not be kept; send it again", error_code="UPLOAD_FAILED")
    target = Path(settings.upload_dir) / "photos" / f"{job_id}.{_EXTENSIONS[kind]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    upload.stream.close()
    os.replace(temp_name, target)
    return contracts.UPLOAD_SCHEME + target.name


def discard_parts() -> None:
    """Delete what the form parser wrote that no job took (runs after every multipart request)."""
    for _name, upload in request.files.items(multi=True):
        name = getattr(upload.stream, "name", None)
        upload.close()
        if isinstance(name, str):
            Path(name).unlink(missing_ok=True)


def discard_stored(settings: Settings, photo_url: str | None) -> None:
    """Remove a kept photo (its job was canceled, or never queued)."""
    if photo_url and photo_url.startswith(contracts.UPLOAD_SCHEME):
        name = photo_url[len(contracts.UPLOAD_SCHEME):]
        if contracts.UPLOAD_NAME.match(name):
            (Path(settings.upload_dir) / "photos" / name).unlink(missing_ok=True)


def wait_seconds(body: dict[str, Any]) -> float | None:
    """The request's ``wait`` (body or query string): None when absent, else 0-MAX_WAIT_S seconds."""
    raw = body.get("wait", request.args.get("wait"))
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if isinstance(raw, bool) or not 0 <= value <= contracts.MAX_WAIT_S:
        raise ValidationError("wait", f"must be a number of seconds from 0 to {contracts.MAX_WAIT_S}")
    return value


def finished_job(job: Job, seconds: float) -> dict[str, Any] | None:
    """Poll the job up to ``seconds``; its status view once completed or failed, else None."""
    deadline = time.monotonic() + seconds
    while True:
        job.refresh()
        state = jobqueue.job_state(job)
        if state in ("completed", "failed"):
            return jobqueue.job_view(job)
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0)))
