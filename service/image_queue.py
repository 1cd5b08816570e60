"""Blueprint /api/image-queue/*: queue face crops and background removals (single and bulk),
job status, queue stats."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from flask import Blueprint, Response, jsonify, url_for
from redis.exceptions import RedisError

from core import contracts, id_photos, metrics
from core import enqueue as jobqueue
from core.contracts import (
    validate_crop_options,
    validate_id,
    validate_mode,
    validate_photo_url,
    validate_remove_bg_options,
)
from core.enqueue import JobSpec
from core.payloads import ImageJobPayload
from service import direct_upload, webhooks
from service.auth import check_body_vendor, current_vendor, require_vendor
from service.errors import Conflict, NotFound, ServiceUnavailable, ValidationError
from service.extensions import backends
from service.listing import list_args
from service.validation import field, json_body, list_field, validated

log = logging.getLogger(__name__)

bp = Blueprint("image_queue", __name__, url_prefix="/api/image-queue")
bp.before_request(require_vendor)

# Stats groups of this API and the queue each reads (SPEC 3.1).
STATS_QUEUES = {
    "backgroundRemoval": contracts.QUEUE_BACKGROUND_REMOVAL,
    "faceCrop": contracts.QUEUE_FACE_CROP,
    "imageProcessing": contracts.QUEUE_IMAGE_PROCESSING,
}


def _submit(queue_name: str, func: str, kind: str, project_id: str, specs: list[JobSpec],
            body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the record rows, then enqueue; on a Redis failure mark the rows failed and answer 503."""
    b = backends()
    vendor_id = current_vendor()
    # Every queueing route accepts an optional callbackUrl: each job posts its own completion event.
    callback = webhooks.callback_url(json_body() if body is None else body, vendor_id)
    if callback is not None:
        for spec in specs:
            spec.payload["callbackUrl"] = callback
    rows = [(spec.record_id, spec.job_id, spec.payload["photoUrl"]) for spec in specs]
    b.db.queue_records(vendor_id, project_id, rows, job_kind=kind, payloads=[spec.payload for spec in specs])
    queue = b.queue(queue_name)
    try:
        jobqueue.enqueue_jobs(queue, func, specs, b.settings)
        seconds = jobqueue.estimate_seconds(queue, 0)
    except RedisError as exc:
        log.warning("vendor=%s enqueue failed, %d record(s) marked failed: %s", vendor_id, len(specs), exc)
        for spec in specs:
            b.db.update_record(vendor_id, spec.record_id, {
                "processing_status": contracts.STATUS_FAILED,
                "error_code": "ENQUEUE_FAILED",
                "error_message": "The job queue was unavailable; nothing was queued. Submit again.",
            }, job_id=spec.job_id)
        raise ServiceUnavailable("The job queue (Redis) is unavailable; nothing was queued. Retry later.") from exc
    metrics.images_submitted(b.redis, vendor_id, kind, len(specs))
    for spec in specs:
        log.info("vendor=%s job=%s queued %s for record %s", vendor_id, spec.job_id, kind, spec.record_id)
    return {"estimatedTime": jobqueue.describe_estimate(seconds), "estimatedSeconds": round(seconds, 1)}


def _accepted(body: dict[str, Any]) -> tuple[Response, int]:
    return jsonify(body), 202


# Job kind -> (queue, job function, words for the response message).
_KINDS = {
    kind: (*contracts.SINGLE_JOB_KINDS[kind], words)
    for kind, words in ((contracts.KIND_FACE_CROP, "face crop"), (contracts.KIND_REMOVE_BG, "background removal"),
                        (contracts.KIND_ID_PHOTO, "ID photo"))
}


def _queue_single(kind: str, project_id: str, spec: JobSpec, body: dict[str, Any]) -> tuple[Response, int]:
    """Queue one job and answer 202 with its id, status URL and estimate (200 with the finished
    job when ``wait`` was given and it finished in time)."""
    queue, func, words = _KINDS[kind]
    wait = direct_upload.wait_seconds(body)
    try:
        estimate = _submit(queue, func, kind, project_id, [spec], body)
    except Exception:
        direct_upload.discard_stored(backends().settings, spec.payload.get("photoUrl"))
        raise
    # No live worker on the queue: nothing can finish it in time, answer 202 at once.
    if wait and jobqueue.worker_count(backends().queue(queue)) > 0:
        job = jobqueue.fetch_job(backends().redis, spec.job_id, spec.vendor_id)
        finished = direct_upload.finished_job(job, wait) if job is not None else None
        if finished is not None:
            return jsonify({**finished, "jobId": spec.job_id, "recordId": spec.record_id}), 200
    return _accepted({
        "success": True,
        "jobId": spec.job_id,
        "recordId": spec.record_id,
        "message": f"{words.capitalize()} job queued for processing",
        "statusUrl": url_for("image_queue.job_status", job_id=spec.job_id),
        **estimate,
    })


def _queue_bulk(kind: str, request: _BulkRequest, specs: list[JobSpec]) -> tuple[Response, int]:
    """Queue a bulk request's jobs and answer 202 with their ids and the estimate (200 with every
    finished job when ``wait`` was given and all of them finished in time)."""
    queue, func, words = _KINDS[kind]
    wait = direct_upload.wait_seconds(request.body)
    try:
        estimate = _submit(queue, func, kind, request.project_id, specs, request.body)
    except Exception:
        for spec in specs:
            direct_upload.discard_stored(backends().settings, spec.payload.get("photoUrl"))
        raise
    if wait and jobqueue.worker_count(backends().queue(queue)) > 0:
        jobs = [jobqueue.fetch_job(backends().redis, spec.job_id, spec.vendor_id) for spec in specs]
        found = [job for job in jobs if job is not None]
        finished = direct_upload.finished_jobs(found, wait) if len(found) == len(specs) else None
        if finished is not None:
            return jsonify({"success": True, "count": len(specs),
                            "jobs": [{**view, "jobId": spec.job_id, "recordId": spec.record_id}
                                     for view, spec in zip(finished, specs, strict=True)]}), 200
    return _accepted({
        "success": True,
        "jobIds": [spec.job_id for spec in specs],
        "recordIds": [spec.record_id for spec in specs],
        "count": len(specs),
        "message": f"{len(specs)} {words} jobs queued for processing",
        **estimate,
    })


def _photo(body: dict[str, Any], job_id: str) -> str:
    """The job's photoUrl: the body's photoUrl, or the multipart ``file`` kept for the job."""
    if direct_upload.is_multipart():
        return direct_upload.store_upload(backends().settings, job_id)
    return field(validate_photo_url, body, "photoUrl")


def _with_uploads(route: Callable[[], tuple[Response, int]]) -> tuple[Response, int]:
    """Run a queueing route, then delete any multipart part no job took."""
    try:
        return route()
    finally:
        if direct_upload.is_multipart():
            direct_upload.discard_parts()


@bp.post("/crop-face-queue")
def crop_face_queue() -> tuple[Response, int]:
    """Queue one face crop (photoUrl in JSON, or the photo as multipart ``file``; optional ``wait``)."""
    return _with_uploads(_crop_face_queue)


@dataclass(frozen=True)
class _SingleRequest:
    """A single-photo request's owner and ids, read the same way by every single route."""

    vendor_id: str
    record_id: str
    project_id: str
    body: dict[str, Any]


def _single_request() -> _SingleRequest:
    vendor_id = current_vendor()
    body = direct_upload.single_body(backends().settings)
    check_body_vendor(body, vendor_id)
    record_id = field(validate_id, body, "recordId")
    return _SingleRequest(vendor_id, record_id, field(validate_id, body, "projectId"), body)


def _queue_single_photo(kind: str, request: _SingleRequest, options: dict[str, Any],
                        mode: str | None = None) -> tuple[Response, int]:
    """Keep the photo (URL or uploaded file) and queue its one job, once its options are valid."""
    direct_upload.wait_seconds(request.body)  # a bad wait is a 400 before anything is kept
    job_id = jobqueue.new_job_id()
    url = _photo(request.body, job_id)
    payload = ImageJobPayload(request.vendor_id, request.project_id, request.record_id, url, options, mode=mode)
    spec = JobSpec(job_id, payload.to_dict(), request.vendor_id, request.record_id)
    return _queue_single(kind, request.project_id, spec, request.body)


def _crop_face_queue() -> tuple[Response, int]:
    request = _single_request()
    mode = field(validate_mode, request.body, "mode")
    options = validated(validate_crop_options, mode, request.body.get("options"))
    return _queue_single_photo(contracts.KIND_FACE_CROP, request, options.to_dict(), mode)


@dataclass(frozen=True)
class _BulkRequest:
    """A bulk request's owner, project and fields (JSON, or a multipart form with ``files[]``)."""

    vendor_id: str
    project_id: str
    body: dict[str, Any]


def _bulk_request() -> _BulkRequest:
    vendor_id = current_vendor()
    body = direct_upload.form_body(backends().settings, photos=backends().settings.bulk_max_items)
    check_body_vendor(body, vendor_id)
    direct_upload.wait_seconds(body)  # a bad wait is a 400 before anything is kept
    return _BulkRequest(vendor_id, field(validate_id, body, "projectId"), body)


def _record_ids(body: dict[str, Any], limit: int) -> list[str]:
    """The request's recordIds: a non-empty list of valid ids, each once."""
    record_ids: list[str] = []
    for index, raw_id in enumerate(list_field(body, "recordIds", max_items=limit)):
        record_id = validated(validate_id, raw_id, f"recordIds[{index}]")
        if record_id in record_ids:
            raise ValidationError(f"recordIds[{index}]", f"repeats {record_id!r}; each record once per request")
        record_ids.append(record_id)
    return record_ids


def _bulk_specs(request: _BulkRequest, options: dict[str, Any], mode: str | None = None) -> list[JobSpec]:
    """One job per record of a bulk request, its photo from ``photoUrls`` or the ``files[]`` kept for it.
    Called once every other field is valid, so photos are kept only for a request that will be queued."""
    settings = backends().settings
    record_ids = _record_ids(request.body, settings.bulk_max_items)
    job_ids = [jobqueue.new_job_id() for _ in record_ids]
    if direct_upload.is_multipart():
        urls = direct_upload.store_uploads(settings, job_ids)
    else:
        raw_urls = list_field(request.body, "photoUrls", max_items=settings.bulk_max_items)
        if len(raw_urls) != len(record_ids):
            raise ValidationError("photoUrls", f"must have as many items as recordIds ({len(record_ids)}), "
                                               f"has {len(raw_urls)}")
        urls = [validated(validate_photo_url, raw, f"photoUrls[{index}]") for index, raw in enumerate(raw_urls)]
    return [JobSpec(job_id, ImageJobPayload(request.vendor_id, request.project_id, record_id, url, options,
                                            mode=mode).to_dict(), request.vendor_id, record_id)
            for job_id, record_id, url in zip(job_ids, record_ids, urls, strict=True)]


@bp.post("/bulk-crop-face")
def bulk_crop_face() -> tuple[Response, int]:
    """Queue face crops for a list of records (at most BULK_MAX_ITEMS; photoUrls, or photos as ``files[]``)."""
    return _with_uploads(_bulk_crop_face)


def _bulk_crop_face() -> tuple[Response, int]:
    request = _bulk_request()
    mode = field(validate_mode, request.body, "mode")
    options = validated(validate_crop_options, mode, request.body.get("options")).to_dict()
    return _queue_bulk(contracts.KIND_FACE_CROP, request, _bulk_specs(request, options, mode))


@bp.post("/remove-bg-queue")
def remove_bg_queue() -> tuple[Response, int]:
    """Queue one background removal (photoUrl in JSON, or the photo as multipart ``file``; optional ``wait``)."""
    return _with_uploads(_remove_bg_queue)


def _remove_bg_queue() -> tuple[Response, int]:
    request = _single_request()
    options = validated(validate_remove_bg_options, request.body.get("options"), backends().settings.rembg_models)
    return _queue_single_photo(contracts.KIND_REMOVE_BG, request, options.to_dict())


@bp.post("/bulk-remove-bg")
def bulk_remove_bg() -> tuple[Response, int]:
    """Queue background removals for a list of records (at most BULK_MAX_ITEMS; photoUrls or ``files[]``)."""
    return _with_uploads(_bulk_remove_bg)


def _bulk_remove_bg() -> tuple[Response, int]:
    request = _bulk_request()
    options = validated(validate_remove_bg_options, request.body.get("options"), backends().settings.rembg_models)
    return _queue_bulk(contracts.KIND_REMOVE_BG, request, _bulk_specs(request, options.to_dict()))


def _json_field(name: str, text: str) -> Any:
    """A form field sent as JSON text (a multipart form sends a custom ID-photo spec that way)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ValidationError(name, "is not valid JSON") from None


def _id_photo_options(body: dict[str, Any]) -> dict[str, Any]:
    """The job options of an ID-photo request: its ``spec`` and ``options``, validated (400 naming the field)."""
    spec, options = validated(id_photos.validate_request, body.get("spec"), body.get("options"))
    return id_photos.job_options(spec, options)


@bp.post("/id-photo-queue")
def id_photo_queue() -> tuple[Response, int]:
    """Queue one ID photo (photoUrl in JSON, or the photo as multipart ``file``; optional ``wait``)."""
    return _with_uploads(_id_photo_queue)


def _id_photo_queue() -> tuple[Response, int]:
    request = _single_request()
    spec = request.body.get("spec")
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        request = replace(request, body={**request.body, "spec": _json_field("spec", spec)})
    return _queue_single_photo(contracts.KIND_ID_PHOTO, request, _id_photo_options(request.body))


@bp.post("/bulk-id-photo")
def bulk_id_photo() -> tuple[Response, int]:
    """Queue ID photos for a list of records (at most BULK_MAX_ITEMS; photoUrls or ``files[]``), one spec
    and options for all."""
    return _with_uploads(_bulk_id_photo)


def _bulk_id_photo() -> tuple[Response, int]:
    request = _bulk_request()
    spec = request.body.get("spec")
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        request = replace(request, body={**request.body, "spec": _json_field("spec", spec)})
    return _queue_bulk(contracts.KIND_ID_PHOTO, request, _bulk_specs(request, _id_photo_options(request.body)))


@bp.get("/job/<job_id>")
def job_status(job_id: str) -> Response:
    """State, progress, data and result or error of one of the vendor's jobs."""
    job = jobqueue.fetch_job(backends().redis, job_id, current_vendor())
    if job is None:
        raise NotFound(f"No job {job_id!r} for this vendor (unknown, expired, or another vendor's).",
                       error_code="JOB_NOT_FOUND")
    view = jobqueue.job_view(job)
    webhook = webhooks.delivery_view(backends().redis, "job", job.id, view["data"].get("callbackUrl"))
    if webhook is not None:
        view["webhook"] = webhook
    return jsonify(view)


@bp.delete("/job/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel one of the vendor's jobs: waiting/delayed ones never run, an active one is stopped.

    The record row becomes ``canceled`` (unless the job finished first). Idempotent: canceling
    a canceled job answers the same. A completed or failed job: 409 naming its state.
    """
    b = backends()
    vendor_id = current_vendor()
    job = jobqueue.fetch_job(b.redis, job_id, vendor_id)
    if job is None:
        raise NotFound(f"No job {job_id!r} for this vendor (unknown, expired, or another vendor's).",
                       error_code="JOB_NOT_FOUND")
    try:
        was = jobqueue.cancel_job(b.redis, job)
    except jobqueue.NotCancelable as exc:
        raise Conflict(f"Job {job_id} is already {exc.state}; only waiting, delayed or active jobs can be "
                       "canceled.", error_code="JOB_NOT_CANCELABLE", details={"state": exc.state}) from None
    record_id = job.meta.get("record_id")
    if record_id:
        b.db.cancel_record(vendor_id, str(record_id), job.id)
    direct_upload.discard_stored(b.settings, ((job.kwargs or {}).get("payload") or {}).get("photoUrl"))
    log.info("vendor=%s job=%s canceled (was %s)", vendor_id, job.id, was)
    message = {"active": "The worker running this job was told to stop it; its record is marked canceled.",
               "canceled": "The job was already canceled."}.get(was, "The job was canceled; it will not run.")
    return jsonify({"success": True, "id": job.id, "state": "canceled", "previousState": was,
                    "message": message})


@bp.get("/records")
def list_records() -> Response:
    """The vendor's records, newest first, by projectId and status, a page at a time (?cursor=)."""
    project_id, status, cursor, limit = list_args(contracts.RECORD_STATUSES)
    try:
        page = backends().db.list_records(current_vendor(), project_id=project_id, status=status, cursor=cursor,
                                          limit=limit)
    except ValueError as exc:
        raise ValidationError("cursor", str(exc)) from None
    return jsonify({"success": True, "records": [_record_view(row) for row in page.rows],
                    "nextCursor": page.next_cursor, "limit": limit})


@bp.get("/record/<record_id>")
def record_status(record_id: str) -> Response:
    """The vendor's record row: status, output URL, face fields, error."""
    record = None
    if contracts.ID_PATTERN.match(record_id):
        record = backends().db.get_record(current_vendor(), record_id)
    if record is None:
        raise NotFound(f"No record {record_id!r} for this vendor.", error_code="RECORD_NOT_FOUND")
    return jsonify({"success": True, "record": _record_view(record)})


def _record_view(row: dict[str, Any]) -> dict[str, Any]:
    keys = {
        "record_id": "recordId", "project_id": "projectId", "processing_status": "status",
        "job_kind": "jobKind", "current_job_id": "jobId", "source_url": "sourceUrl",
        "output_url": "outputUrl", "face_detected": "faceDetected", "face_count": "faceCount",
        "face_box": "faceBox", "faces_json": "faces", "roll_degrees": "rollDegrees",
        "source_width": "sourceWidth", "source_height": "sourceHeight",
        "output_width": "width", "output_height": "height", "thumbnail_url": "thumbnailUrl",
        "source_thumbnail_url": "sourceThumbnailUrl", "error_code": "errorCode", "error_message": "errorMessage",
        "attempts": "attempts",
        "created_at": "createdAt", "updated_at": "updatedAt", "completed_at": "completedAt",
    }
    view = {out: row.get(key) for key, out in keys.items()}
    if view["faceDetected"] is not None:
        view["faceDetected"] = bool(view["faceDetected"])
    for name in ("faceBox", "faces"):
        text = view[name]
        if isinstance(text, str):
            view[name] = json.loads(text)
    report = row.get("report_json")
    if report is not None:  # ID photos only
        view["report"] = json.loads(report) if isinstance(report, str) else report
    return view


@bp.get("/queue-stats")
def queue_stats() -> Response:
    """waiting/active/completed/failed/delayed per queue."""
    b = backends()
    body: dict[str, Any] = {"success": True}
    for key, name in STATS_QUEUES.items():
        body[key] = jobqueue.queue_counts(b.queue(name))
    return jsonify(body)
