"""Batch jobs: ingest a ZIP into items and chunks, and crop the faces of a chunk of items.

Each image is a ``batch_items`` row; RQ runs one job per chunk (BATCH_CHUNK_SIZE images)
on the batch's priority queue, behind a per-vendor RateLimit. A chunk records every
image's outcome on its own: a bad image fails alone, permanent errors are final at once,
and transient ones make the chunk raise so RQ retries it — only its still-pending images
run again. When the retries are spent, ``on_chunk_failure`` fails what is left with the
last error, so every image ends completed or failed and the batch always finishes.
"""
from __future__ import annotations

import logging
import os
import resource
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job

from core import contracts, metrics, webhook_events
from core.batch_outcomes import batch_dir, cancel_batch, fail_pending_items, mirror_unmirrored, record_outcomes
from core.batch_plan import BatchRef, enqueue_chunk
from core.db.batches import (
    BATCH_CANCELED,
    BATCH_FAILED,
    BATCH_INGESTING,
    BATCH_PROCESSING,
    BATCH_QUEUED,
    ITEM_CANCELED,
    ITEM_COMPLETED,
    ITEM_FAILED,
    ITEM_PENDING,
    ITEM_SKIPPED,
)
from core.errors import (
    BATCH_NOT_FOUND,
    NO_IMAGES,
    SOURCE_MISSING,
    JobError,
    PermanentJobError,
    TransientJobError,
)
from core.logs import with_job_context
from jobs.context import Context, context
from jobs.previews import store_with_previews
from jobs.settle import settle_failure
from jobs.storage import safe_key

log = logging.getLogger(__name__)

INSERT_BATCH_ROWS = 500  # items written per INSERT while ingesting


def _ref(batch: dict[str, Any]) -> BatchRef:
    return BatchRef(batch["batch_id"], batch["vendor_id"], int(batch["priority"]),
                    batch.get("operation") or contracts.OPERATION_CROP_FACE)


class _Canceled(Exception):
    """The batch was canceled while its ZIP was being ingested."""


class _Ingest:
    """Buffers items, writes them in groups and queues a chunk whenever one is full."""

    def __init__(self, ctx: Context, redis: Redis, batch: dict[str, Any], resume_after: int) -> None:
        self.ctx, self.redis, self.batch = ctx, redis, batch
        self.resume_after = resume_after  # items up to this seq exist from an earlier run
        self.rows: list[dict[str, Any]] = []
        self.chunk: list[int] = []
        self.images = self.skipped = self.queued = 0

    def add(self, item: dict[str, Any]) -> None:
        if item["seq"] > self.resume_after:
            self.rows.append(item)
            if len(self.rows) >= INSERT_BATCH_ROWS:
                self._write()
        if item["status"] == ITEM_SKIPPED:
            self.skipped += 1
            return
        self.images += 1
        self.chunk.append(item["seq"])
        if len(self.chunk) >= self.ctx.settings.batch_chunk_size:
            self._queue_chunk()

    def _write(self) -> None:
        self.ctx.db.add_batch_items(self.batch["batch_id"], self.rows)
        self.rows = []

    def _queue_chunk(self) -> None:
        self._write()  # a chunk's items must exist before its job can run
        current = self.ctx.db.get_batch(self.batch["batch_id"])
        if current is None or current["status"] == BATCH_CANCELED:
            raise _Canceled()
        if enqueue_chunk(self.redis, _ref(self.batch), self.chunk[0], self.chunk[-1], self.ctx.settings):
            self.ctx.db.add_batch_queued(self.batch["batch_id"], len(self.chunk))
            metrics.images_submitted(self.redis, self.batch["vendor_id"],
                                     contracts.batch_kind(_ref(self.batch).operation), len(self.chunk))
        self.queued += len(self.chunk)
        self.chunk = []

    def finish(self) -> None:
        if self.chunk:
            self._queue_chunk()
        self._write()


def _batch_job(batch_id: str) -> tuple[Job, Context, dict[str, Any]]:
    """The running RQ job, the worker context and the batch it works on (which must exist)."""
    job = get_current_job()
    assert job is not None, "batch jobs run inside an rq worker"
    ctx = context()
    batch = ctx.db.get_batch(batch_id)
    if batch is None:
        raise PermanentJobError(f"batch {batch_id} does not exist", code=BATCH_NOT_FOUND)
    return job, ctx, batch


def ingest_zip(batch_id: str, path: str) -> dict[str, Any]:
    """Stream the uploaded ZIP entry by entry into batch items and queue their chunks."""
    job, ctx, batch = _batch_job(batch_id)
    if batch["status"] == BATCH_CANCELED:  # canceled before its ingestion started
        cancel_batch(ctx.db, ctx.settings, job.connection, batch)
        metrics.job_succeeded(job.connection, job)
        return {"batchId": batch_id, "images": 0, "skipped": 0, "canceled": True}
    ctx.db.set_batch(batch_id, status=BATCH_INGESTING, only_from=(BATCH_QUEUED, BATCH_INGESTING))
    existing = ctx.db.batch_items(batch_id, after_seq=-1, limit=1)
    resume_after = -1
    if existing:  # a re-run after a crash: find the last item already written
        resume_after = _last_seq(ctx, batch_id)
    folder = batch_dir(ctx.settings, batch_id)
    folder.mkdir(parents=True, exist_ok=True)
    ingest = _Ingest(ctx, job.connection, batch, resume_after)
    log.info("job=%s vendor=%s batch=%s ingesting %s", job.id, batch["vendor_id"], batch_id, path)
    try:
        _ingest_entries(ingest, folder, path, resume_after)
    except _Canceled:
        # The vendor canceled meanwhile: cancel the items written since, remove the files.
        cancel_batch(ctx.db, ctx.settings, job.connection, batch)
        log.info("job=%s vendor=%s batch=%s canceled during ingestion; stopped", job.id, batch["vendor_id"],
                 batch_id)
        metrics.job_succeeded(job.connection, job)
        return {"batchId": batch_id, "images": ingest.images, "skipped": ingest.skipped, "canceled": True,
                "peakRssKb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    if ingest.images == 0:
        raise PermanentJobError(f"the ZIP holds no usable image ({ingest.skipped} entries skipped; "
                                "see the results listing for why)", code=NO_IMAGES)
    ctx.db.set_batch(batch_id, status=BATCH_PROCESSING, only_from=(BATCH_INGESTING,))
    ctx.db.finish_batch_if_done(batch_id)
    webhook_events.notify_batch_if_final(ctx.db, ctx.settings, job.connection, batch_id, batch)
    Path(path).unlink(missing_ok=True)
    log.info("job=%s vendor=%s batch=%s ingested %d images (%d skipped) in %d chunks", job.id,
             batch["vendor_id"], batch_id, ingest.images, ingest.skipped,
             -(-ingest.images // ctx.settings.batch_chunk_size))
    metrics.job_succeeded(job.connection, job)
    # Peak RSS of this work-horse (kB): the ingest's memory must stay flat whatever the ZIP size.
    return {"batchId": batch_id, "images": ingest.images, "skipped": ingest.skipped,
            "peakRssKb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _ingest_entries(ingest: _Ingest, folder: Path, path: str, resume_after: int) -> None:
    """Stream the ZIP's entries into items and chunks (raises _Canceled when the batch is canceled)."""
    from core.zipstream.archive import ArchiveLimits, ImageEntry, iter_archive

    for entry in iter_archive(path, ArchiveLimits.from_settings(ingest.ctx.settings)):
        if isinstance(entry, ImageEntry):
            extension = entry.content_type.rsplit("/", 1)[-1].replace("jpeg", "jpg")
            source = folder / f"{entry.index}.{extension}"
            if entry.index > resume_after:
                _write_file(source, entry.data)
            ingest.add({"seq": entry.index, "entry_name": entry.name[:1024], "source": str(source),
                        "status": ITEM_PENDING})
        else:
            ingest.add({"seq": entry.index, "entry_name": entry.name[:1024], "status": ITEM_SKIPPED,
                        "error_code": entry.code, "error_message": entry.reason[:2000]})
    ingest.finish()


def _last_seq(ctx: Context, batch_id: str) -> int:
    last, after = -1, -1
    while True:
        page = ctx.db.batch_items(batch_id, after_seq=after, limit=5000)
        if not page:
            return last
        last = after = page[-1]["seq"]


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@with_job_context
def on_ingest_failure(job: Job, connection: Redis, exc_type: type[BaseException] | None,
                      exc_value: BaseException | None, tb: TracebackType | None) -> None:
    """RQ failure callback of ingest_zip: permanent errors and spent retries fail the batch."""
    code, message, final = settle_failure(job, exc_value)
    batch_id, path = job.args[0], job.args[1]
    log.warning("job=%s batch=%s ingestion failed (%s): %s", job.id, batch_id, code, message)
    metrics.job_failed(connection, job, code, final=final)
    if not final:
        return
    ctx = context()
    ctx.db.set_batch(batch_id, status=BATCH_FAILED, error_code=code, error_message=message[:2000],
                     only_from=(BATCH_QUEUED, BATCH_INGESTING))
    webhook_events.notify_batch_if_final(ctx.db, ctx.settings, connection, batch_id)
    Path(path).unlink(missing_ok=True)
    # Images extracted before the failure but never chunked (a cut ZIP) have no job left to
    # remove them; once every queued image is processed nothing needs the folder (else the
    # last chunk's _record removes it, seeing the batch failed).
    batch = ctx.db.get_batch(batch_id)
    if batch is not None and int(batch["processed"]) >= int(batch["queued"]):
        shutil.rmtree(batch_dir(ctx.settings, batch_id), ignore_errors=True)


def process_chunk(batch_id: str, first_seq: int, last_seq: int) -> dict[str, Any]:
    """Process every pending image of one chunk by the batch's operation (crop the face, or remove
    the background); record each outcome; retry only transient ones.

    Before each image the chunk re-reads the batch's status: once it is canceled the chunk stops.
    Images it finished but had not recorded when the cancel landed stay canceled (outcomes only
    move pending items) and their stored outputs are removed again.
    """
    from jobs.fetch import fetch_image
    from jobs.imaging import face_crop

    job, ctx, batch = _batch_job(batch_id)
    operation = batch.get("operation") or contracts.OPERATION_CROP_FACE
    kind = contracts.batch_kind(operation)
    mirror_unmirrored(ctx.db, ctx.settings, batch, first_seq, last_seq)
    items = ctx.db.pending_items(batch_id, first_seq, last_seq)
    if not items:  # a re-run after everything was recorded
        ctx.db.finish_batch_if_done(batch_id)
        webhook_events.notify_batch_if_final(ctx.db, ctx.settings, job.connection, batch_id, batch)
        metrics.job_succeeded(job.connection, job, count_image=False)
        return {"processed": 0, "failed": 0, "retry": 0}
    ctx.db.count_attempt(batch_id, [item["seq"] for item in items])
    outcomes: list[dict[str, Any]] = []
    transient: list[tuple[int, JobError]] = []
    keys: dict[int, tuple[str, ...]] = {}  # per seq: the output's storage key and its thumbnails'
    remover: _BackgroundRemover | _IdPhotoMaker | None = None
    if operation == contracts.OPERATION_REMOVE_BG:
        remover = _BackgroundRemover(ctx, job.connection, batch)
    elif operation == contracts.OPERATION_ID_PHOTO:
        remover = _IdPhotoMaker(ctx, job.connection, batch)
    options = contracts.crop_options_from_dict(batch["options"]) if remover is None else None
    for item in items:
        if _canceled(ctx, batch_id):
            log.info("job=%s vendor=%s batch=%s canceled; chunk %d-%d stops", job.id, batch["vendor_id"],
                     batch_id, first_seq, last_seq)
            break
        try:
            if batch["source"] == "urls":
                data = fetch_image(item["source"], ctx.settings).data
            else:
                data = _read_source(item["source"])
            if remover is not None:
                outcome, stored_keys = remover.run(item, data)
                keys[item["seq"]] = stored_keys
                outcomes.append(outcome)
                continue
            assert options is not None
            result = _crop(face_crop, data, batch["mode"], options, ctx.settings.max_image_pixels,
                           ctx.settings.face_detector, ctx.settings.thumbnail_max_px)
            key = safe_key(batch["vendor_id"], "batches", batch_id, f"{item['seq']:07d}.{result.extension}")
            url, previews = store_with_previews(ctx.storage, key, result)
            keys[item["seq"]] = (key, *previews.keys)
            details = result.to_result()
            outcomes.append({"seq": item["seq"], "record_id": item["record_id"], "source": item["source"],
                             "status": ITEM_COMPLETED,
                             "output_url": url, "face_detected": details["faceDetected"],
                             "face_count": details["faceCount"], "face_box": details["faceBox"],
                             "output_width": details["width"], "output_height": details["height"],
                             "faces_json": details["faces"], "roll_degrees": details["rollDegrees"],
                             "source_width": details["sourceWidth"], "source_height": details["sourceHeight"],
                             **previews.to_columns()})
        except JobError as exc:
            if not exc.permanent:
                transient.append((item["seq"], exc))
                continue
            outcomes.append({"seq": item["seq"], "record_id": item["record_id"], "source": item["source"],
                             "status": ITEM_FAILED,
                             "error_code": exc.code, "error_message": exc.message[:2000]})
    recorded = record_outcomes(ctx.db, ctx.settings, batch, outcomes)
    for outcome in outcomes:  # finished as the batch was canceled: not part of its results
        if outcome["seq"] not in recorded and outcome["seq"] in keys and _item_canceled(ctx, batch_id, outcome):
            for stored in keys[outcome["seq"]]:  # the output and its thumbnails
                ctx.storage.delete(stored)
    webhook_events.notify_batch_if_final(ctx.db, ctx.settings, job.connection, batch_id, batch)
    outcomes = [outcome for outcome in outcomes if outcome["seq"] in recorded]
    failed = sum(o["status"] == ITEM_FAILED for o in outcomes)
    metrics.images_finished(job.connection, batch["vendor_id"], kind,
                            completed=len(outcomes) - failed, failed=failed)
    log.info("job=%s vendor=%s batch=%s chunk %d-%d: %d done, %d to retry", job.id, batch["vendor_id"],
             batch_id, first_seq, last_seq, len(outcomes), len(transient))
    if transient and not _canceled(ctx, batch_id):
        seq, first = transient[0]
        raise TransientJobError(f"{len(transient)} image(s) of this chunk hit transient errors and will be "
                                f"retried (first: item {seq}: {first.message})", code=first.code)
    metrics.job_succeeded(job.connection, job, count_image=False)
    return {"processed": len(outcomes), "failed": sum(o["status"] == ITEM_FAILED for o in outcomes), "retry": 0}


def _canceled(ctx: Context, batch_id: str) -> bool:
    current = ctx.db.get_batch(batch_id)
    return current is None or current["status"] == BATCH_CANCELED


def _item_canceled(ctx: Context, batch_id: str, outcome: dict[str, Any]) -> bool:
    rows = ctx.db.batch_items(batch_id, after_seq=int(outcome["seq"]) - 1, limit=1)
    return bool(rows) and rows[0]["seq"] == outcome["seq"] and rows[0]["status"] == ITEM_CANCELED


class _BackgroundRemover:
    """Background removal of batch images: the single job's path (jobs.imaging.background with the
    rembg pool), output stored under the batch's key."""

    def __init__(self, ctx: Context, connection: Redis, batch: dict[str, Any]) -> None:
        from jobs.rembg_pool import RembgPool

        self.ctx, self.batch = ctx, batch
        self.options = contracts.remove_bg_options_from_dict(batch["options"])
        self.pool = RembgPool.from_settings(ctx.settings, connection)

    def run(self, item: dict[str, Any], data: bytes) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The item's completed outcome and the storage keys of its output and thumbnails."""
        from jobs.imaging import background

        output, _removed = background.remove_background(
            data, self.options, self.pool, max_pixels=self.ctx.settings.max_image_pixels,
            png_level=self.ctx.settings.bg_png_compress_level, thumbnail_px=self.ctx.settings.thumbnail_max_px)
        key = safe_key(self.batch["vendor_id"], "batches", self.batch["batch_id"],
                       f"{item['seq']:07d}.{output.extension}")
        url, previews = store_with_previews(self.ctx.storage, key, output)
        return ({"seq": item["seq"], "record_id": item["record_id"], "source": item["source"],
                 "status": ITEM_COMPLETED, "output_url": url, "output_width": output.width,
                 "output_height": output.height, **previews.to_columns()}, (key, *previews.keys))


class _IdPhotoMaker:
    """ID photos of batch images: the single job's path (jobs.imaging.id_photo with the rembg pool).

    Batch items have no column for the report: its verdict is in the item's face fields only as
    far as they go, and the whole report is in single jobs' results and records."""

    def __init__(self, ctx: Context, connection: Redis, batch: dict[str, Any]) -> None:
        from core.id_photos import from_job_options
        from jobs.rembg_pool import RembgPool

        self.ctx, self.batch = ctx, batch
        self.spec, self.options = from_job_options(batch["options"])
        self.pool = RembgPool.from_settings(ctx.settings, connection)

    def run(self, item: dict[str, Any], data: bytes) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The item's completed outcome and the storage keys of its output and thumbnails."""
        from jobs.imaging import id_photo

        result = id_photo.process(data, self.spec, self.options, self.pool,
                                  max_pixels=self.ctx.settings.max_image_pixels,
                                  model=self.ctx.settings.rembg_models[0],
                                  thumbnail_px=self.ctx.settings.thumbnail_max_px)
        key = safe_key(self.batch["vendor_id"], "batches", self.batch["batch_id"],
                       f"{item['seq']:07d}.{result.extension}")
        url, previews = store_with_previews(self.ctx.storage, key, result)
        return ({"seq": item["seq"], "record_id": item["record_id"], "source": item["source"],
                 "status": ITEM_COMPLETED, "output_url": url, "face_detected": True, "face_count": 1,
                 "face_box": result.face_box, "output_width": result.width, "output_height": result.height,
                 **previews.to_columns()}, (key, *previews.keys))


def _crop(face_crop: Any, data: bytes, mode: str, options: contracts.CropOptions, max_pixels: int,
          detector: str, thumbnail_px: int = 0) -> Any:
    """The batch's face crop: options.detector, else FACE_DETECTOR (``detector``).

    Haar searches with its ``batch`` profile: the fast ``portrait`` search (faces >= 10% of the
    short side) and, only on no face, the general one, from the same decode, so batch recall is
    never below the single-job pipeline's. YuNet's coarse-to-fine passes are the same for both.
    """
    return face_crop.process(data, mode, options, max_pixels=max_pixels, profile="batch", detector=detector,
                             thumbnail_px=thumbnail_px)


def _read_source(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PermanentJobError(f"the extracted image {path} is gone (UPLOAD_DIR must be shared by the "
                                "API and the batch workers)", code=SOURCE_MISSING) from None
    except OSError as exc:
        raise TransientJobError(f"cannot read extracted image {path}: {exc}") from exc


@with_job_context
def on_chunk_failure(job: Job, connection: Redis, exc_type: type[BaseException] | None,
                     exc_value: BaseException | None, tb: TracebackType | None) -> None:
    """RQ failure callback of process_chunk: once no retry is left, fail what is still pending."""
    code, message, final = settle_failure(job, exc_value)
    metrics.job_failed(connection, job, code, final=final, count_image=False)
    if not final:
        return
    batch_id, first_seq, last_seq = job.args
    ctx = context()
    left = fail_pending_items(ctx.db, ctx.settings, connection, batch_id, first_seq, last_seq, code, message)
    log.warning("job=%s batch=%s chunk %d-%d gave up on %d image(s): %s", job.id, batch_id, first_seq,
                last_seq, left, message)
