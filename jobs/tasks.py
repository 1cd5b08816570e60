"""The job functions `rq worker` runs. Thin: they wire fetch -> process -> storage -> records.

Jobs raise; RQ retries. ``on_job_failure`` (RQ's failure callback, run before RQ decides on a
retry) stops retries for permanent errors and writes the final failure to the record row.
Jobs run at least once (SPEC 8): a re-run of a job that already completed returns the stored
result without a second upload or a second record change, and the upload key is fixed per job
so a retry overwrites rather than adds.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job

from core import contracts, metrics, webhook_events
from core.errors import CANCELED, RECORD_SUPERSEDED, JobError, PermanentJobError
from core.logs import with_job_context
from core.payloads import ImageJobPayload
from jobs.context import Context, context
from jobs.previews import Output, StoredPreviews, store_with_previews
from jobs.settle import settle_failure
from jobs.storage import safe_key

log = logging.getLogger(__name__)



def _now() -> datetime:
    return datetime.now(UTC)


def _progress(job: Job | None, value: int) -> None:
    if job is not None:
        job.meta["progress"] = value
        job.save_meta()


def _begin(job: Job, ctx: Context, payload: ImageJobPayload,
           stored_result: Callable[[dict[str, Any], ImageJobPayload], dict[str, Any]] | None = None,
           ) -> dict[str, Any] | None:
    """Count the attempt and mark the record processing; returns a stored result on a re-run."""
    vendor_id, record_id = payload.vendor_id, payload.record_id
    record = ctx.db.get_record(vendor_id, record_id)
    if record is None or record.get("current_job_id") != job.id:
        raise PermanentJobError(
            f"record {record_id!r} is now owned by a newer job ({record and record.get('current_job_id')}); "
            "this job's result would be stale", code=RECORD_SUPERSEDED)
    if record.get("processing_status") == contracts.STATUS_CANCELED:  # canceled as a worker took it
        raise PermanentJobError(f"record {record_id!r}: job {job.id} was canceled", code=CANCELED)
    if record.get("processing_status") == contracts.STATUS_COMPLETED and record.get("output_url"):
        log.info("job=%s vendor=%s record=%s already completed; returning the stored result",
                 job.id, vendor_id, record_id)
        return (stored_result or _stored_result)(record, payload)
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    job.meta.pop("error", None)
    job.meta["progress"] = 5
    job.save_meta()
    ctx.db.update_record(vendor_id, record_id, {
        "processing_status": contracts.STATUS_PROCESSING,
        "attempts": job.meta["attempts"],
    }, job_id=job.id, chunk_fields=ctx.settings.db_update_chunk_fields)
    return None


def _stored_result(record: dict[str, Any], payload: ImageJobPayload) -> dict[str, Any]:
    return {
        "success": True,
        "recordId": payload.record_id,
        "mode": payload.mode,
        "photoUrl": record["output_url"],
        "faceDetected": bool(record.get("face_detected")),
        "faceCount": record.get("face_count"),
        "faceBox": record.get("face_box"),  # decoded by Records.get_record
        "width": record.get("output_width"),
        "height": record.get("output_height"),
        "faces": record.get("faces_json") or [],  # decoded by Records.get_record
        "rollDegrees": record.get("roll_degrees"),
        "sourceWidth": record.get("source_width"),
        "sourceHeight": record.get("source_height"),
        **_stored_previews(record),
    }


def _stored_previews(record: dict[str, Any]) -> dict[str, Any]:
    return {"thumbnailUrl": record.get("thumbnail_url"), "sourceThumbnailUrl": record.get("source_thumbnail_url")}


def _complete(job: Job, ctx: Context, image_job: ImageJobPayload, stem: str, output: Output,
              columns: dict[str, Any]) -> tuple[str, StoredPreviews]:
    """Store ``output`` (and its previews beside it) as ``<stem>-<job id>.<ext>``, then mark the
    record completed with the job's own ``columns``; the output's public URL and the previews."""
    key = safe_key(image_job.vendor_id, image_job.project_id, image_job.record_id,
                   f"{stem}-{job.id}.{output.extension}")
    url, previews = store_with_previews(ctx.storage, key, output)
    _progress(job, 90)
    ctx.db.update_record(image_job.vendor_id, image_job.record_id, {
        "processing_status": contracts.STATUS_COMPLETED,
        "output_url": url,
        **columns,
        **previews.to_columns(),
        "error_code": None,
        "error_message": None,
        "completed_at": _now(),
    }, job_id=job.id, chunk_fields=ctx.settings.db_update_chunk_fields)
    return url, previews


def crop_face(payload: dict[str, Any]) -> dict[str, Any]:
    """Fetch the photo, crop the largest face per ``mode``, store it, update the record."""
    from jobs.fetch import fetch_image
    from jobs.imaging import face_crop

    job = get_current_job()
    assert job is not None, "crop_face runs inside an rq worker"
    ctx = context()
    image_job = ImageJobPayload.from_dict(payload)
    vendor_id, record_id = image_job.vendor_id, image_job.record_id
    stored = _begin(job, ctx, image_job)
    if stored is not None:
        # The record row has no detector: a re-run returns the first
        # run's whole result while RQ still holds it (JOB_RESULT_TTL_S), else the stored fields.
        previous = job.return_value()
        if isinstance(previous, dict) and previous.get("photoUrl") == stored.get("photoUrl"):
            return previous
        return stored
    log.info("job=%s vendor=%s record=%s crop %s from %s", job.id, vendor_id, record_id,
             image_job.mode, image_job.photo_url)
    fetched = fetch_image(image_job.photo_url, ctx.settings)
    _progress(job, 30)
    options = contracts.crop_options_from_dict(image_job.options)
    result = face_crop.process(fetched.data, str(image_job.mode), options,
                               max_pixels=ctx.settings.max_image_pixels, detector=ctx.settings.face_detector,
                               thumbnail_px=ctx.settings.thumbnail_max_px)
    _progress(job, 70)
    details = result.to_result()
    url, previews = _complete(job, ctx, image_job, "face-crop", result, {
        "face_detected": details["faceDetected"],
        "face_count": details["faceCount"],
        "face_box": details["faceBox"],
        "output_width": details["width"],
        "output_height": details["height"],
        "faces_json": details["faces"],
        "roll_degrees": details["rollDegrees"],
        "source_width": details["sourceWidth"],
        "source_height": details["sourceHeight"],
    })
    log.info("job=%s vendor=%s record=%s completed: %s", job.id, vendor_id, record_id, url)
    return {"success": True, "recordId": record_id, "mode": image_job.mode, "photoUrl": url, **details,
            **previews.to_result()}


def _stored_bg_result(record: dict[str, Any], payload: ImageJobPayload) -> dict[str, Any]:
    url = record["output_url"]
    return {
        "success": True,
        "recordId": payload.record_id,
        "photoUrl": url,
        "format": {"jpg": "jpeg", "webp": "webp"}.get(url.rsplit(".", 1)[-1], "png"),
        "width": record.get("output_width"),
        "height": record.get("output_height"),
        "options": payload.options,
        **_stored_previews(record),
    }


def remove_background(payload: dict[str, Any]) -> dict[str, Any]:
    """Fetch the photo, remove its background (mask from a rembg server), store it, update the record."""
    # RQ passes the job's kwargs (core/enqueue.py: ``payload``) by name.
    from jobs.fetch import fetch_image
    from jobs.imaging import background
    from jobs.rembg_pool import RembgPool

    job = get_current_job()
    assert job is not None, "remove_background runs inside an rq worker"
    ctx = context()
    image_job = ImageJobPayload.from_dict(payload)
    vendor_id, record_id = image_job.vendor_id, image_job.record_id
    stored = _begin(job, ctx, image_job, _stored_bg_result)
    if stored is not None:
        return stored
    options = contracts.remove_bg_options_from_dict(image_job.options)
    log.info("job=%s vendor=%s record=%s remove background (%s) from %s", job.id, vendor_id, record_id,
             options.model, image_job.photo_url)
    fetched = fetch_image(image_job.photo_url, ctx.settings)
    _progress(job, 25)
    # rembg computes the mask; the worker composites and encodes the cut-out (jobs/imaging/background.py).
    output, removed = background.remove_background(
        fetched.data, options, RembgPool.from_settings(ctx.settings, job.connection),
        max_pixels=ctx.settings.max_image_pixels, png_level=ctx.settings.bg_png_compress_level,
        thumbnail_px=ctx.settings.thumbnail_max_px)
    job.meta["rembg_instance"] = removed.instance  # operators' view (rq-dashboard), not the vendor's
    _progress(job, 80)
    url, previews = _complete(job, ctx, image_job, "remove-bg", output,
                              {"output_width": output.width, "output_height": output.height})
    log.info("job=%s vendor=%s record=%s completed on %s: %s", job.id, vendor_id, record_id,
             removed.instance, url)
    return {"success": True, "recordId": record_id, "photoUrl": url, "format": output.format,
            "width": output.width, "height": output.height, "options": options.to_dict(), **previews.to_result()}


def _stored_id_photo_result(record: dict[str, Any], payload: ImageJobPayload) -> dict[str, Any]:
    report = record.get("report_json")  # decoded by Records.get_record
    return {
        "success": True,
        "recordId": payload.record_id,
        "photoUrl": record["output_url"],
        "width": record.get("output_width"),
        "height": record.get("output_height"),
        "faceBox": record.get("face_box"),
        "compliant": bool(report and report.get("compliant")),
        "report": report,
        **_stored_previews(record),
    }


def id_photo(payload: dict[str, Any]) -> dict[str, Any]:
    """Fetch the portrait, make the spec's ID photo on a plain background (mask from rembg), store it
    and its compliance report, update the record."""
    from core.id_photos import from_job_options
    from jobs.fetch import fetch_image
    from jobs.imaging import id_photo as maker
    from jobs.rembg_pool import RembgPool

    job = get_current_job()
    assert job is not None, "id_photo runs inside an rq worker"
    ctx = context()
    image_job = ImageJobPayload.from_dict(payload)
    vendor_id, record_id = image_job.vendor_id, image_job.record_id
    stored = _begin(job, ctx, image_job, _stored_id_photo_result)
    if stored is not None:
        return stored
    spec, options = from_job_options(image_job.options)
    log.info("job=%s vendor=%s record=%s id photo (%s) from %s", job.id, vendor_id, record_id, spec.name,
             image_job.photo_url)
    fetched = fetch_image(image_job.photo_url, ctx.settings)
    _progress(job, 25)
    result = maker.process(fetched.data, spec, options, RembgPool.from_settings(ctx.settings, job.connection),
                           max_pixels=ctx.settings.max_image_pixels, model=ctx.settings.rembg_models[0],
                           thumbnail_px=ctx.settings.thumbnail_max_px)
    job.meta["rembg_instance"] = result.rembg_instance
    _progress(job, 80)
    details = result.to_result()
    url, previews = _complete(job, ctx, image_job, "id-photo", result, {
        "face_detected": True,
        "face_count": 1,
        "face_box": details["faceBox"],
        "output_width": result.width,
        "output_height": result.height,
        "report_json": details["report"],
    })
    log.info("job=%s vendor=%s record=%s completed (compliant=%s): %s", job.id, vendor_id, record_id,
             details["compliant"], url)
    return {"success": True, "recordId": record_id, "photoUrl": url, "format": options.format, **details,
            **previews.to_result()}


@with_job_context
def on_job_failure(job: Job, connection: Redis, exc_type: type[BaseException] | None,
                   exc_value: BaseException | None, tb: TracebackType | None) -> None:
    """RQ failure callback: stop retries for permanent errors; record the final failure."""
    code, message, final = settle_failure(job, exc_value)
    payload = (job.kwargs or {}).get("payload") or {}
    vendor_id, record_id = payload.get("vendorId"), payload.get("recordId")
    log.warning("job=%s vendor=%s record=%s failed (%s%s): %s", job.id, vendor_id, record_id, code,
                "" if final else ", will retry", message)
    metrics.job_failed(connection, job, code, final=final)
    if final:
        _notify(job, connection, "job.failed", error={"code": code, "message": message})
        _discard_upload(payload)
    if not vendor_id or not record_id or code in (RECORD_SUPERSEDED, CANCELED):
        return
    fields: dict[str, Any] = {"error_code": code, "error_message": message[:2000]}
    fields["processing_status"] = contracts.STATUS_FAILED if final else contracts.STATUS_QUEUED
    try:
        context().db.update_record(vendor_id, record_id, fields, job_id=job.id)
    except JobError:
        # The job's own outcome is already decided; losing this write leaves the record in
        # 'processing', which `reconcile` finds. Log loudly rather than mask the job's error.
        log.exception("job=%s vendor=%s record=%s could not record its failure", job.id, vendor_id, record_id)


@with_job_context
def on_job_success(job: Job, connection: Redis, result: Any) -> None:
    """RQ success callback: count the job (/metrics); remember the duration for wait-time estimates."""
    metrics.job_succeeded(connection, job)
    _notify(job, connection, "job.completed", result=result)
    _discard_upload((job.kwargs or {}).get("payload") or {})
    if job.started_at is None:
        return
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
    seconds = max((_now() - started).total_seconds(), 0.0)
    key = contracts.DURATIONS_KEY.format(queue=job.origin)
    pipe = connection.pipeline()
    pipe.lpush(key, f"{seconds:.3f}")
    pipe.ltrim(key, 0, contracts.DURATIONS_KEPT - 1)
    pipe.execute()


def _discard_upload(payload: dict[str, Any]) -> None:
    """A photo sent as a file (photoUrl ``upload:<name>``) is removed once its job is over."""
    from jobs.phone_photos import discard_upload

    try:
        discard_upload(context().settings, payload.get("photoUrl"))
    except OSError:
        log.exception("could not remove the uploaded photo %s", payload.get("photoUrl"))


def _notify(job: Job, connection: Redis, event: str, **details: Any) -> None:
    """Queue the job's completion webhook when it has a callbackUrl (core/webhook_events.py).

    Runs inside RQ's callbacks, where an exception would turn the job's own outcome into a
    failure: a Redis error is logged instead (the job's outcome cannot be saved either then).
    """
    try:
        webhook_events.notify_job(job, connection, context().settings, event, **details)
    except RedisError:
        log.exception("job=%s could not queue its %s webhook", job.id, event)
