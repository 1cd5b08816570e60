"""Blueprint /api/batch/*: ZIP uploads and URL lists of images, batch status, results, stats.

A ZIP upload is streamed by werkzeug's form parser straight into a file under UPLOAD_DIR
(``UploadRequest``) and renamed into place: it is never held in memory. The ingestion job
then streams it entry by entry (jobs/batch.py). URL lists are written as batch items here
and their chunks queued at once.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, Request, Response, current_app, jsonify, request, stream_with_context, url_for
from redis.exceptions import RedisError

from core import contracts, id_photos, metrics, rqjson
from core.batch_outcomes import cancel_batch
from core.batch_plan import BatchRef, chunk_ranges, enqueue_chunk, enqueue_ingest, ingest_job_id, zip_path
from core.contracts import (
    InvalidField,
    validate_crop_options,
    validate_id,
    validate_mode,
    validate_operation,
    validate_photo_url,
    validate_priority,
    validate_remove_bg_options,
)
from core.db.batches import (
    BATCH_CANCELED,
    BATCH_FAILED,
    BATCH_FINAL,
    BATCH_PROCESSING,
    BATCH_QUEUED,
    BATCH_STATUSES,
    ITEM_PENDING,
)
from core.enqueue import queue_counts
from service import webhooks
from service.auth import check_body_vendor, current_vendor, require_vendor
from service.batch_results import RESULT_COLUMNS, OutputReader, csv_lines, items, result_row, results_zip
from service.errors import ApiError, Conflict, NotFound, ServiceUnavailable, ValidationError
from service.extensions import backends
from service.listing import list_args
from service.validation import UnsupportedMediaType, field, json_body, validated

log = logging.getLogger(__name__)

bp = Blueprint("batch", __name__, url_prefix="/api/batch")
bp.before_request(require_vendor)

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class PayloadTooLarge(ApiError):
    code = 413
    error_code = "PAYLOAD_TOO_LARGE"


class UploadRequest(Request):
    """Writes uploaded files straight into UPLOAD_DIR/incoming instead of memory or /tmp."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        folder = Path(current_app.extensions["image_queue"].settings.upload_dir) / "incoming"
        folder.mkdir(parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(dir=folder, prefix="upload-", suffix=".part", delete=False)


def new_batch_id() -> str:
    """A fresh batch id."""
    return "b" + uuid.uuid4().hex


def _discard_uploads() -> None:
    # items(multi=True): a second file part under the same name is on disk too (values() skips it).
    for _name, storage in request.files.items(multi=True):
        name = getattr(storage.stream, "name", None)
        storage.close()
        if isinstance(name, str):
            Path(name).unlink(missing_ok=True)


def _batch_options(operation: str, mode: str, raw: Any) -> dict[str, Any]:
    """The batch's ``options``: the operation's options, validated now (400 naming the field)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else None
        except (ValueError, RecursionError):  # deep nesting raises RecursionError, not ValueError
            raise ValidationError("options", "must be a JSON object") from None
    if operation == contracts.OPERATION_REMOVE_BG:
        return validated(validate_remove_bg_options, raw, backends().settings.rembg_models).to_dict()
    if operation == contracts.OPERATION_ID_PHOTO:
        # The spec travels inside the options: {"spec": "icao" | {...custom}, "background": ..., ...}.
        raw = dict(raw) if isinstance(raw, dict) else raw
        if not isinstance(raw, dict) or "spec" not in raw:
            raise ValidationError("options.spec", "is required for idPhoto: icao, us, schengen, idcard or a custom "
                                                  "spec object")
        spec = raw.pop("spec")
        try:
            checked, checked_options = id_photos.validate_request(spec, raw)
        except InvalidField as exc:
            field = exc.field if exc.field.startswith("options") else f"options.{exc.field}"
            raise ValidationError(field, exc.message) from None
        return id_photos.job_options(checked, checked_options)
    return validated(validate_crop_options, mode, raw).to_dict()


def _operation(source: Any) -> str:
    try:
        return validate_operation(source.get("operation"))
    except InvalidField as exc:
        raise ValidationError(exc.field, exc.message) from None


@bp.post("/upload-zip")
def upload_zip() -> tuple[Response, int]:
    """Accept a ZIP (multipart field ``file``) of up to BATCH_MAX_UPLOAD_BYTES and queue its ingestion."""
    b = backends()
    settings = b.settings
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("Send the ZIP as multipart/form-data with the file in the field 'file'.")
    if request.content_length is not None and request.content_length > settings.batch_max_upload_bytes:
        raise PayloadTooLarge(f"The upload is {request.content_length} bytes; the limit is "
                              f"{settings.batch_max_upload_bytes} (BATCH_MAX_UPLOAD_BYTES).")
    request.max_content_length = settings.batch_max_upload_bytes
    try:
        return _accept_zip(b)
    finally:
        _discard_uploads()


def _accept_zip(b: Any) -> tuple[Response, int]:
    settings = b.settings
    form = request.form
    vendor_id = current_vendor()
    check_body_vendor(dict(form), vendor_id)
    project_id = field(validate_id, form, "projectId")
    priority = field(validate_priority, form, "priority")
    operation = _operation(form)
    mode = field(validate_mode, {"mode": form.get("mode") or "square"}, "mode")
    options = _batch_options(operation, mode, form.get("options"))
    callback = webhooks.callback_url(form, vendor_id)
    upload = request.files.get("file")
    if upload is None:
        raise ValidationError("file", "is required: the ZIP file as a multipart file field named 'file'")
    temp_name = getattr(upload.stream, "name", None)
    upload.stream.flush()
    upload.stream.seek(0)
    head = upload.stream.read(4)
    if head not in ZIP_MAGIC:
        raise UnsupportedMediaType(f"'file' is not a ZIP archive (it starts with {head!r}); upload a .zip",
                                   error_code="NOT_A_ZIP")
    batch_id = new_batch_id()
    target = zip_path(settings.upload_dir, batch_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    assert isinstance(temp_name, str)
    upload.stream.close()
    os.replace(temp_name, target)
    from core.zipstream.archive import count_image_entries  # reads the central directory only: cheap

    image_count = count_image_entries(target)
    b.db.create_batch(batch_id, vendor_id, project_id, source="zip", priority=priority, mode=mode,
                      options=options, status=BATCH_QUEUED, callback_url=callback, operation=operation)
    try:
        enqueue_ingest(b.redis, BatchRef(batch_id, vendor_id, priority, operation), str(target), settings)
    except RedisError as exc:
        b.db.set_batch(batch_id, status=BATCH_FAILED, error_code="ENQUEUE_FAILED",
                       error_message="The job queue was unavailable; nothing was queued. Upload again.")
        target.unlink(missing_ok=True)
        raise ServiceUnavailable("The job queue (Redis) is unavailable; nothing was queued. Retry later.") from exc
    log.info("vendor=%s batch=%s ZIP accepted (%s bytes, ~%s images, priority %d)", vendor_id, batch_id,
             target.stat().st_size, image_count, priority)
    return jsonify({
        "success": True,
        "batchId": batch_id,
        "status": BATCH_QUEUED,
        "operation": operation,
        "imageCount": image_count,
        "queued": 0,
        "message": f"ZIP accepted; {image_count if image_count is not None else 'its'} images are being "
                   "extracted and queued",
        "statusUrl": url_for("batch.batch_status", batch_id=batch_id),
    }), 202


@bp.post("/add-images")
def add_images() -> tuple[Response, int]:
    """Queue a list of {recordId, imageUrl} as one batch."""
    b = backends()
    settings = b.settings
    vendor_id = current_vendor()
    body = json_body()
    check_body_vendor(body, vendor_id)
    project_id = field(validate_id, body, "projectId")
    priority = field(validate_priority, body, "priority")
    operation = _operation(body)
    # Only an absent or null mode means the default: {"mode": {}} or 0 is a 400, not square.
    mode = field(validate_mode, {"mode": "square" if body.get("mode") is None else body["mode"]}, "mode")
    options = _batch_options(operation, mode, body.get("options"))
    callback = webhooks.callback_url(body, vendor_id)
    images = body.get("images")
    if not isinstance(images, list) or not images:
        raise ValidationError("images", "is required: a non-empty array of {recordId, imageUrl}")
    if len(images) > settings.batch_max_images_per_request:
        raise ValidationError("images", f"has {len(images)} items; at most {settings.batch_max_images_per_request}"
                                        " per request (BATCH_MAX_IMAGES_PER_REQUEST); upload a ZIP or split it")
    seen: set[str] = set()
    items: list[dict[str, Any]] = []
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            raise ValidationError(f"images[{index}]", "must be an object {recordId, imageUrl}")
        record_id = validated(validate_id, image.get("recordId"), f"images[{index}].recordId")
        if record_id in seen:
            raise ValidationError(f"images[{index}].recordId", f"repeats {record_id!r}; each record once per batch")
        seen.add(record_id)
        url = validated(validate_photo_url, image.get("imageUrl"), f"images[{index}].imageUrl")
        items.append({"seq": index, "record_id": record_id, "source": url, "status": ITEM_PENDING})
    batch_id = new_batch_id()
    b.db.create_batch(batch_id, vendor_id, project_id, source="urls", priority=priority, mode=mode,
                      options=options, status=BATCH_PROCESSING, callback_url=callback, operation=operation)
    b.db.add_batch_items(batch_id, items)
    b.db.queue_records(vendor_id, project_id, [(i["record_id"], batch_id, i["source"]) for i in items],
                       job_kind=contracts.batch_kind(operation))
    ref = BatchRef(batch_id, vendor_id, priority, operation)
    queued = 0
    try:
        for first, last in chunk_ranges([item["seq"] for item in items], settings.batch_chunk_size):
            enqueue_chunk(b.redis, ref, first, last, settings)
            queued += last - first + 1
    except RedisError as exc:
        b.db.add_batch_queued(batch_id, queued)
        log.warning("vendor=%s batch=%s enqueue failed after %d images: %s", vendor_id, batch_id, queued, exc)
        raise ServiceUnavailable(f"The job queue (Redis) became unavailable after {queued} of {len(items)} "
                                 f"images of batch {batch_id} were queued; run 'reconcile' or submit again.") from exc
    b.db.add_batch_queued(batch_id, queued)
    metrics.images_submitted(b.redis, vendor_id, contracts.batch_kind(operation), queued)
    log.info("vendor=%s batch=%s %d image URLs queued (priority %d)", vendor_id, batch_id, queued, priority)
    return jsonify({
        "success": True,
        "batchId": batch_id,
        "status": BATCH_PROCESSING,
        "operation": operation,
        "imageCount": len(items),
        "queued": queued,
        "message": f"{queued} images queued for processing",
        "statusUrl": url_for("batch.batch_status", batch_id=batch_id),
    }), 202


def _owned_batch(batch_id: str) -> dict[str, Any]:
    batch = None
    if contracts.ID_PATTERN.match(batch_id):
        batch = backends().db.get_batch(batch_id, current_vendor())
    if batch is None:
        raise NotFound(f"No batch {batch_id!r} for this vendor.", error_code="BATCH_NOT_FOUND")
    return batch


@bp.get("/status/<batch_id>")
def batch_status(batch_id: str) -> Response:
    """Batch progress (SPEC 3.2)."""
    return jsonify({"success": True, "batch": _batch_view(_owned_batch(batch_id))})


def _batch_view(batch: dict[str, Any], *, webhook: bool = True) -> dict[str, Any]:
    """A batch as the status, list and cancel routes show it."""
    total = int(batch["image_count"])
    processed = int(batch["processed"])
    view = {
        "batchId": batch["batch_id"],
        "projectId": batch["project_id"],
        "status": batch["status"],
        "priority": batch["priority"],
        "operation": batch.get("operation") or contracts.OPERATION_CROP_FACE,
        "mode": batch["mode"],
        "imageCount": total,
        "queued": int(batch["queued"]),
        "skipped": int(batch["skipped"]),
        "canceled": int(batch.get("canceled") or 0),
        "progress": {"processed": processed, "total": total, "failed": int(batch["failed"]),
                     "updatedAt": batch["updated_at"]},
        "progressPercent": round(processed * 100.0 / total, 1) if total else 0.0,
        "createdAt": batch["created_at"],
        "completedAt": batch["completed_at"],
        "resultsUrl": url_for("batch.batch_results", batch_id=batch["batch_id"]),
        "resultsZipUrl": url_for("batch.batch_results_zip", batch_id=batch["batch_id"]),
    }
    if batch["error_code"]:
        view["error"] = {"code": batch["error_code"], "message": batch["error_message"]}
    if webhook:
        delivery = webhooks.delivery_view(backends().redis, "batch", batch["batch_id"], batch.get("callback_url"))
        if delivery is not None:
            view["webhook"] = delivery
    return view


@bp.get("")
def list_batches() -> Response:
    """The vendor's batches, newest first, by projectId and status, a page at a time (?cursor=)."""
    project_id, status, cursor, limit = list_args(BATCH_STATUSES)
    try:
        page = backends().db.list_batches(current_vendor(), project_id=project_id, status=status, cursor=cursor,
                                          limit=limit)
    except ValueError as exc:
        raise ValidationError("cursor", str(exc)) from None
    return jsonify({"success": True, "batches": [_batch_view(row, webhook=False) for row in page.rows],
                    "nextCursor": page.next_cursor, "limit": limit})


@bp.post("/<batch_id>/cancel")
def batch_cancel(batch_id: str) -> Response:
    """Cancel a batch: its pending images become ``canceled`` and will not run (idempotent).

    Images already finished keep their outcome; a chunk running now stops before its next
    image. The uploaded ZIP and extracted images are removed and the batch's webhook fires.
    A batch that already finished (completed, with errors, failed): 409 naming its status.
    """
    b = backends()
    batch = _owned_batch(batch_id)
    if batch["status"] in BATCH_FINAL and batch["status"] != BATCH_CANCELED:
        raise Conflict(f"Batch {batch_id} is already {batch['status']}; only a queued or running batch can be "
                       "canceled.", error_code="BATCH_NOT_CANCELABLE", details={"status": batch["status"]})
    if batch["status"] == BATCH_QUEUED:  # its ingestion has not started: take it off the queue
        _cancel_rq_job(b.redis, ingest_job_id(batch_id))
    canceled = cancel_batch(b.db, b.settings, b.redis, batch)
    log.info("vendor=%s batch=%s canceled (%d pending images)", batch["vendor_id"], batch_id, canceled)
    current = b.db.get_batch(batch_id) or batch
    return jsonify({"success": True, "batch": _batch_view(current), "canceledNow": canceled,
                    "message": f"Batch canceled; {canceled} pending image(s) will not be processed."})


def _cancel_rq_job(redis: Any, job_id: str) -> None:
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import JobStatus

    try:
        job = rqjson.fetch(job_id, connection=redis)
        if job.get_status() in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            job.cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass  # gone or already moving: the job sees the batch canceled and stops


@bp.get("/<batch_id>/results.zip")
def batch_results_zip(batch_id: str) -> Response:
    """Every finished output plus results.jsonl, results.csv and batch.json, as one streamed ZIP."""
    batch = _owned_batch(batch_id)
    b = backends()
    body = results_zip(b.db, batch, OutputReader(b.settings))
    response = Response(stream_with_context(body), mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="{batch["batch_id"]}-results.zip"'
    response.headers["X-Batch-Status"] = batch["status"]
    return response


@bp.get("/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    """Every image's outcome, streamed as JSON lines (default) or CSV (?format=csv)."""
    batch = _owned_batch(batch_id)
    fmt = request.args.get("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise ValidationError("format", "must be jsonl or csv")
    db = backends().db

    def rows() -> Iterator[dict[str, Any]]:
        for item in items(db, batch["batch_id"]):
            yield result_row(item)

    def jsonl() -> Iterator[str]:
        for row in rows():
            yield json.dumps(row, separators=(",", ":")) + "\n"

    def as_csv() -> Iterator[str]:
        return csv_lines(rows(), RESULT_COLUMNS)

    if fmt == "csv":
        response = Response(stream_with_context(as_csv()), mimetype="text/csv")
        response.headers["Content-Disposition"] = f'attachment; filename="{batch["batch_id"]}.csv"'
        return response
    return Response(stream_with_context(jsonl()), mimetype="application/x-ndjson")


@bp.get("/queue-stats")
def batch_queue_stats() -> Response:
    """faceDetection (all priority queues together) and batchIngestion counts."""
    b = backends()
    detection = {"active": 0, "completed": 0, "failed": 0, "delayed": 0, "waiting": 0}
    by_priority = {}
    for priority in contracts.BATCH_PRIORITIES:
        counts = queue_counts(b.queue(contracts.face_detection_queue(priority)))
        by_priority[str(priority)] = counts
        for key, value in counts.items():
            detection[key] += value
    return jsonify({"success": True, "stats": {
        "faceDetection": detection,
        "faceDetectionByPriority": by_priority,
        "batchIngestion": queue_counts(b.queue(contracts.QUEUE_BATCH_INGESTION)),
        "timestamp": int(datetime.now(UTC).timestamp() * 1000),
    }})
