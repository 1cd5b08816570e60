"""Enqueueing jobs by dotted name, reading their status, and estimating wait times.

The web tier never imports the job functions: it enqueues ``core.contracts.JOB_*`` paths.
Every job carries ``meta.vendor_id`` so status lookups can be scoped to the calling vendor.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq import Callback, Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.worker import Worker

from core import contracts, rqjson
from core.config import Settings

log = logging.getLogger(__name__)

# Used until a queue has finished any job: a face crop of a 1-3 MP photo takes well under 1 s.
DEFAULT_DURATION_S = {contracts.QUEUE_FACE_CROP: 1.0, contracts.QUEUE_BACKGROUND_REMOVAL: 5.0}

# RQ status -> the seed's state words (SPEC 3.1).
_STATES = {
    JobStatus.QUEUED: "waiting",
    JobStatus.DEFERRED: "waiting",
    JobStatus.STARTED: "active",
    JobStatus.FINISHED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled",  # stopped by DELETE /api/image-queue/job/<id> (cancel_job)
    JobStatus.CANCELED: "canceled",
    JobStatus.SCHEDULED: "delayed",
}


@dataclass(frozen=True)
class JobSpec:
    """One job to enqueue: its payload and who owns it."""

    job_id: str
    payload: dict[str, Any]
    vendor_id: str
    record_id: str


def new_job_id() -> str:
    """A fresh, unguessable job id."""
    return uuid.uuid4().hex


def job_retry(settings: Settings) -> Retry | None:
    """The one Retry policy of image jobs: JOB_RETRIES after JOB_RETRY_INTERVALS_S (None: no retry)."""
    if settings.job_retries <= 0:
        return None
    return Retry(max=settings.job_retries, interval=list(settings.job_retry_intervals_s))


def enqueue_jobs(queue: Queue, func: str, specs: list[JobSpec], settings: Settings) -> list[str]:
    """Enqueue all ``specs`` in one Redis round trip; returns their job ids."""
    prepared = [
        Queue.prepare_data(
            func,
            kwargs={"payload": spec.payload},
            job_id=spec.job_id,
            timeout=settings.job_timeout_s,
            result_ttl=settings.job_result_ttl_s,
            failure_ttl=settings.job_failure_ttl_s,
            retry=job_retry(settings),
            on_failure=Callback(contracts.ON_JOB_FAILURE),
            on_success=Callback(contracts.ON_JOB_SUCCESS),
            meta={
                "vendor_id": spec.vendor_id,
                "record_id": spec.record_id,
                "progress": 0,
                "attempts": 0,
                "max_attempts": 1 + max(settings.job_retries, 0),
            },
        )
        for spec in specs
    ]
    jobs = queue.enqueue_many(prepared)
    return [job.id for job in jobs]


def fetch_job(redis: Redis, job_id: str, vendor_id: str) -> Job | None:
    """The job if it exists and belongs to ``vendor_id`` (another vendor's job reads as absent)."""
    # ':' makes RQ read "<id>:<execution>" as job <id> (an alias); our job ids never hold one.
    if not contracts.ID_PATTERN.match(job_id) or ":" in job_id:
        return None
    try:
        job = rqjson.fetch(job_id, connection=redis)
    except (NoSuchJobError, ValueError):  # ValueError: RQ refuses ids with '.' or '@' (ID_PATTERN allows them)
        return None
    if job.meta.get("vendor_id") != vendor_id:
        return None
    return job


def job_state(job: Job) -> str:
    """The seed's word for the job's RQ status."""
    status = job.get_status(refresh=False)
    return _STATES.get(status, "waiting") if status else "waiting"


def job_view(job: Job) -> dict[str, Any]:
    """The job status response body (SPEC 3.1)."""
    state = job_state(job)
    meta = job.meta
    payload = (job.kwargs or {}).get("payload", {})
    body: dict[str, Any] = {
        "success": True,
        "id": job.id,
        "state": state,
        "progress": 100 if state == "completed" else int(meta.get("progress", 0)),
        "data": payload,
        "attempts": int(meta.get("attempts", 0)),
        "maxAttempts": int(meta.get("max_attempts", 1)),
        "createdAt": job.created_at.isoformat() if job.created_at else None,
        "startedAt": job.started_at.isoformat() if job.started_at else None,
        "finishedAt": job.ended_at.isoformat() if job.ended_at else None,
    }
    if state == "completed":
        body["result"] = job.return_value(refresh=False)
    elif meta.get("error"):
        # Last error; while state is delayed/waiting a retry is pending.
        body["error"] = meta["error"]
    elif state == "failed":
        body["error"] = {"code": "JOB_FAILED", "message": _last_line(job)}
    return body


class NotCancelable(Exception):
    """The job already finished (completed or failed): it cannot be canceled into another state."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


def cancel_job(redis: Redis, job: Job) -> str:
    """Cancel a job; returns the state it was in ("canceled" again when it already was).

    waiting, delayed: RQ's ``job.cancel()`` (it leaves its queue or registry for the canceled
    one). active: RQ's stop-job command to the worker running it, which kills the work horse and
    marks the job stopped (shown as canceled) without retrying; a job that finishes before the
    command arrives stays completed. completed, failed: ``NotCancelable``.
    """
    state = job_state(job)
    if state == "canceled":
        return state
    if state in ("completed", "failed"):
        raise NotCancelable(state)
    try:
        if state == "active":
            send_stop_job_command(redis, job.id)
        else:
            job.cancel()
    except InvalidJobOperation:  # it moved on meanwhile (finished, or stopped by another call)
        job.refresh()
        now = job_state(job)
        if now in ("completed", "failed"):
            raise NotCancelable(now) from None
    return state


def _last_line(job: Job) -> str:
    result = job.latest_result()
    text = (result.exc_string if result else None) or "failed"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def queue_counts(queue: Queue) -> dict[str, int]:
    """waiting, active, completed, failed, delayed for one queue."""
    # cleanup=False: RQ's registry cleanup runs failure callbacks (jobs.tasks, cv2) and belongs
    # to the workers' maintenance, not to a read in the web tier.
    return {
        "waiting": queue.count,
        "active": queue.started_job_registry.get_job_count(cleanup=False),
        "completed": queue.finished_job_registry.get_job_count(cleanup=False),
        "failed": queue.failed_job_registry.get_job_count(cleanup=False),
        "delayed": (queue.scheduled_job_registry.get_job_count(cleanup=False)
                    + queue.deferred_job_registry.get_job_count(cleanup=False)),
    }


def worker_count(queue: Queue) -> int:
    """Number of live `rq worker` processes listening on ``queue``."""
    return Worker.count(queue=queue)


def estimate_seconds(queue: Queue, extra_jobs: int) -> float:
    """Seconds until the last of ``extra_jobs`` new jobs finishes, from depth and recent durations."""
    redis = queue.connection
    raw: list[bytes] = redis.lrange(  # type: ignore[assignment]
        contracts.DURATIONS_KEY.format(queue=queue.name), 0, contracts.DURATIONS_KEPT - 1)
    durations = sorted(float(value) for value in raw)
    if durations:
        mean = sum(durations) / len(durations)
    else:
        mean = DEFAULT_DURATION_S.get(queue.name, 2.0)
    workers = max(worker_count(queue), 1)
    ahead = queue.count + queue.started_job_registry.get_job_count(cleanup=False)
    rounds = (ahead + extra_jobs + workers - 1) // workers
    return max(rounds, 1) * mean


def describe_estimate(seconds: float) -> str:
    """A human range such as '10-20 seconds' around an estimate."""
    low = max(1, int(seconds * 0.75))
    high = max(low + 1, int(seconds * 1.5 + 0.999))
    if high < 120:
        return f"{low}-{high} seconds"
    return f"{max(1, low // 60)}-{max(2, (high + 59) // 60)} minutes"
