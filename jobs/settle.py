"""One place settles a failed job: classify the exception, stop retries if permanent, record it.

Every RQ failure callback (single jobs, batch chunks and ingestion, webhook deliveries) calls
``settle_failure`` first; job status and the dead-letter listing read the ``meta.error`` it writes.
"""
from __future__ import annotations

from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from core.errors import JOB_TIMEOUT, UNEXPECTED_ERROR, WORKER_DIED, JobError


def describe_failure(exc: BaseException | None, *, unexpected_code: str = UNEXPECTED_ERROR) -> tuple[str, str, bool]:
    """(code, message, permanent) for any exception a job raised."""
    if isinstance(exc, JobError):
        return exc.code, exc.message, exc.permanent
    if isinstance(exc, JobTimeoutException):
        return JOB_TIMEOUT, f"the job took longer than its timeout (JOB_TIMEOUT_S): {exc}", False
    if isinstance(exc, AbandonedJobError):
        return (WORKER_DIED, "the worker running this job stopped sending heartbeats (killed, or lost "
                "Redis) and the job was found abandoned", False)
    return unexpected_code, f"{type(exc).__name__}: {exc}", False


def settle_failure(job: Job, exc: BaseException | None, *,
                   unexpected_code: str = UNEXPECTED_ERROR) -> tuple[str, str, bool]:
    """In an RQ failure callback: stop retries for a permanent error and record it in job meta.

    Returns (code, message, final); RQ reads ``retries_left`` right after the callback, so a
    permanent error is never retried. Job status and the dead-letter listing read meta.error.
    """
    code, message, permanent = describe_failure(exc, unexpected_code=unexpected_code)
    if permanent:
        job.retries_left = 0
    final = not job.should_retry
    job.meta["error"] = {"code": code, "message": message, "permanent": permanent, "final": final}
    job.save_meta()
    return code, message, final
