"""The photo itself instead of its URL (multipart ``file`` / ``files[]``), and ``wait`` for a quick answer.

The single routes (crop-face-queue, remove-bg-queue) take either a JSON body with ``photoUrl``
or a multipart form with the photo in ``file`` and the other fields as form fields (``options``
as JSON text). The file is streamed by werkzeug's form parser into UPLOAD_DIR (``UploadRequest``),
checked (at most FETCH_MAX_BYTES, like a fetched photo; JPEG, PNG, WebP, HEIC/HEIF or AVIF by its
bytes) and kept as ``UPLOAD_DIR/photos/<jobId>.<ext>``; the job's photoUrl is ``upload:<name>``
and the worker reads it from there (UPLOAD_DIR is shared, as for batches) and removes it when
the job ends (jobs/tasks.py), or the cancel route does.

The bulk routes (bulk-crop-face, bulk-remove-bg, bulk-id-photo) take the photos the same way:
a multipart form with one ``files[]`` part per photo (``files`` is accepted too), in the order
of ``recordIds`` (a JSON array as text, or the field repeated), each with the same guards and cap
as a single upload; the whole request may be at most BULK_MAX_ITEMS such photos.

``wait`` (seconds, 0-30, in the body or the query string): the route polls the job(s) it queued
for that long and answers 200 with the finished job(s) (as GET /job/<id>) when every one
completed or failed in time, else the usual 202 (at once when no live worker listens on the
jobs' queue).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from flask import request
from rq.job import Job
from werkzeug.datastructures import FileStorage

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


# Room for the form's other fields and the multipart framing, on top of the photos themselves.
_FORM_OVERHEAD_BYTES = 64 * 1024
# Fields a bulk form may repeat, or send as one JSON array in text.
_LIST_FIELDS = ("recordIds",)
# Fields a form sends as JSON text (objects or arrays).
_JSON_FIELDS = ("options",)
BULK_FILES = ("files[]", "files")


def form_body(settings: Settings, *, photos: int = 1) -> dict[str, Any]:
    """The request's fields: the JSON object, or the multipart form of up to ``photos`` photos
    (``options`` decoded from JSON text; ``recordIds`` from JSON text or repeated fields)."""
    if not is_multipart():
        return json_body()
    cap = photos * settings.fetch_max_bytes + _FORM_OVERHEAD_BYTES
    if request.content_length is not None and request.content_length > cap:
        what = "a photo" if photos == 1 else f"a request of at most {photos} photos (BULK_MAX_ITEMS)"
        raise PayloadTooLarge(f"The upload is {request.content_length} bytes; {what} may be at most "
                              f"{cap - _FORM_OVERHEAD_BYTES} bytes ({photos} x FETCH_MAX_BYTES).")
    # The app's MAX_CONTENT_LENGTH is for JSON bodies; a form carries photos (streamed to UPLOAD_DIR).
    request.max_content_length = cap
    body: dict[str, Any] = dict(request.form.items())
    for name in _JSON_FIELDS:
        raw = body.get(name)
        if isinstance(raw, str):
            try:
                body[name] = json.loads(raw) if raw.strip() else None
            except (ValueError, RecursionError):
                raise ValidationError(name, "must be a JSON object (as text in a multipart form)") from None
    for name in _LIST_FIELDS:
        values = request.form.getlist(name)
        if len(values) == 1 and values[0].lstrip().startswith("["):
            try:
                body[name] = json.loads(values[0])
            except (ValueError, RecursionError):
                raise ValidationError(name, "must be a JSON array (as text) or the field repeated") from None
        elif values:
            body[name] = values
    return body


def single_body(settings: Settings) -> dict[str, Any]:
    """The fields of a single-photo request (JSON, or a multipart form with one ``file``)."""
    return form_body(settings)


def bulk_files() -> list[FileStorage]:
    """The photos of a bulk multipart request, in order (``files[]`` parts, else ``files``)."""
    for name in BULK_FILES:
        found = request.files.getlist(name)
        if found:
            return found
    return []


def _keep(settings: Settings, upload: FileStorage, job_id: str, name: str) -> str:
    """Check one uploaded photo (size, kind by its bytes) and keep it for ``job_id``; its photoUrl."""
    temp_name = getattr(upload.stream, "name", None)
    upload.stream.flush()
    upload.stream.seek(0, os.SEEK_END)
    size = upload.stream.tell()
    if size > settings.fetch_max_bytes:
        raise PayloadTooLarge(f"'{name}' is {size} bytes; a photo may be at most {settings.fetch_max_bytes} "
                              "bytes (FETCH_MAX_BYTES).", details={"field": name})
    upload.stream.seek(0)
    kind = contracts.sniff_photo_type(upload.stream.read(64))
    if kind is None:
        raise UnsupportedMediaType(f"'{name}' is not a JPEG, PNG, WebP, HEIC/HEIF or AVIF image (judged by its "
                                   "bytes, not its name)", error_code="NOT_AN_IMAGE", details={"field": name})
    if not isinstance(temp_name, str):
        raise ApiError("the upload could not be kept; send it again", error_code="UPLOAD_FAILED")
    target = Path(settings.upload_dir) / "photos" / f"{job_id}.{_EXTENSIONS[kind]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    upload.stream.close()
    os.replace(temp_name, target)
    return contracts.UPLOAD_SCHEME + target.name


def store_upload(settings: Settings, job_id: str) -> str:
    """Keep the multipart ``file`` for job ``job_id``; returns the job's photoUrl (``upload:<name>``)."""
    upload = request.files.get("file")
    if upload is None:
        raise ValidationError("file", "is required in a multipart request: the photo as a file field named 'file' "
                                      "(or send JSON with photoUrl)")
    return _keep(settings, upload, job_id, "file")


def store_uploads(settings: Settings, job_ids: list[str]) -> list[str]:
    """Keep a bulk request's photos, one per job id in order; their photoUrls. All or none: on a
    bad photo those already kept are removed and the error names the bad one (``files[2]``)."""
    uploads = bulk_files()
    if len(uploads) != len(job_ids):
        raise ValidationError("files[]", f"must hold one photo per recordId ({len(job_ids)}), has {len(uploads)}: "
                                         "send each photo as a part named 'files[]', in the order of recordIds")
    kept: list[str] = []
    try:
        for index, (upload, job_id) in enumerate(zip(uploads, job_ids, strict=True)):
            kept.append(_keep(settings, upload, job_id, f"files[{index}]"))
    except Exception:
        for url in kept:
            discard_stored(settings, url)
        raise
    return kept


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
    views = finished_jobs([job], seconds)
    return None if views is None else views[0]


def finished_jobs(jobs: list[Job], seconds: float) -> list[dict[str, Any]] | None:
    """Poll the jobs up to ``seconds``; their status views once every one completed or failed, else None."""
    deadline = time.monotonic() + seconds
    waiting = list(jobs)
    while True:
        for job in waiting:
            job.refresh()
        waiting = [job for job in waiting if jobqueue.job_state(job) not in ("completed", "failed")]
        if not waiting:
            return [jobqueue.job_view(job) for job in jobs]
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0)))
