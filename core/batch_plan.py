"""How a batch becomes RQ jobs: chunk ranges, job ids, queues and the per-vendor rate limit.

Light (rq + contracts only): the web tier (add-images) and the ingestion job both enqueue
chunks through here. Chunk job ids are fixed by batch and range, so a re-run of the
ingestion job never queues a chunk twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from rq import Callback, RateLimit
from rq.job import Job

from core import contracts, rqjson
from core.config import Settings
from core.enqueue import job_retry


@dataclass(frozen=True)
class BatchRef:
    """What enqueueing needs to know about a batch."""

    batch_id: str
    vendor_id: str
    priority: int
    operation: str = "cropFace"  # contracts.BATCH_OPERATIONS


def chunk_job_id(batch_id: str, first_seq: int) -> str:
    """The RQ job id of the chunk starting at ``first_seq``."""
    return f"{batch_id}-c{first_seq}"


def ingest_job_id(batch_id: str) -> str:
    """The RQ job id of a batch's ingestion job."""
    return f"{batch_id}-ingest"


def zip_path(upload_dir: str, batch_id: str) -> Path:
    """Where an accepted ZIP waits for its ingestion job (UPLOAD_DIR, shared by API and workers)."""
    return Path(upload_dir) / "zips" / f"{batch_id}.zip"


def chunk_ranges(seqs: list[int], size: int) -> list[tuple[int, int]]:
    """(first, last) inclusive seq ranges covering ``seqs`` (sorted) in groups of ``size``."""
    return [(seqs[i], seqs[min(i + size, len(seqs)) - 1]) for i in range(0, len(seqs), size)]


def enqueue_chunk(redis: Redis, batch: BatchRef, first_seq: int, last_seq: int, settings: Settings, *,
                  job_id: str | None = None) -> bool:
    """Queue one chunk job unless it already exists; returns True if it was queued now.

    ``job_id`` overrides the fixed id (``reconcile`` re-queues a range whose old job is over).
    """
    job_id = job_id or chunk_job_id(batch.batch_id, first_seq)
    if Job.exists(job_id, connection=redis):
        return False
    queue = rqjson.queue(contracts.face_detection_queue(batch.priority), connection=redis)
    queue.enqueue(
        contracts.JOB_PROCESS_CHUNK,
        args=(batch.batch_id, first_seq, last_seq),
        job_id=job_id,
        job_timeout=settings.batch_chunk_timeout_s,
        result_ttl=settings.batch_chunk_result_ttl_s,
        failure_ttl=settings.job_failure_ttl_s,
        retry=job_retry(settings)
        if settings.job_retries > 0 else None,
        on_failure=Callback(contracts.ON_CHUNK_FAILURE),
        rate_limit=chunk_rate_limit(batch, settings),
        meta={"vendor_id": batch.vendor_id, "batch_id": batch.batch_id},
    )
    return True


def chunk_rate_limit(batch: BatchRef, settings: Settings) -> RateLimit:
    """The RQ RateLimit of a batch's chunks: per vendor and priority; background removals under
    their own, smaller key (BATCH_REMBG_CONCURRENCY) so one batch cannot take every rembg server."""
    if batch.operation in (contracts.OPERATION_REMOVE_BG, contracts.OPERATION_ID_PHOTO):  # both call rembg
        return RateLimit(f"batch:{batch.vendor_id}:removeBg:p{batch.priority}", settings.batch_rembg_concurrency)
    return RateLimit(f"batch:{batch.vendor_id}:p{batch.priority}", settings.batch_vendor_concurrency)


def enqueue_ingest(redis: Redis, batch: BatchRef, path: str, settings: Settings) -> str:
    """Queue the ingestion job of an uploaded ZIP."""
    queue = rqjson.queue(contracts.QUEUE_BATCH_INGESTION, connection=redis)
    job = queue.enqueue(
        contracts.JOB_INGEST_ZIP,
        args=(batch.batch_id, path),
        job_id=ingest_job_id(batch.batch_id),
        job_timeout=24 * 3600,  # a 5 GB ZIP of a million images takes a while to stream
        result_ttl=settings.job_result_ttl_s,
        failure_ttl=settings.job_failure_ttl_s,
        retry=job_retry(settings)
        if settings.job_retries > 0 else None,
        on_failure=Callback(contracts.ON_INGEST_FAILURE),
        meta={"vendor_id": batch.vendor_id, "batch_id": batch.batch_id},
    )
    return job.id
