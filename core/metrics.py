"""Counters and duration histograms shared by every process, kept in Redis.

The API (several Gunicorn processes, several hosts) and the workers (a forked work-horse per
job) are different processes, so per-process Prometheus counters would each see a sliver and
die with their process. Instead each event is one pipelined ``HINCRBY``/``HINCRBYFLOAT`` on a
Redis hash, written where it happens (the workers' RQ callbacks and batch chunks, the API
when it queues), and /metrics (service/metrics.py) reads the hashes at scrape time.

Stdlib and redis only: the web tier imports this module.

Counts are events: a job re-run after a worker crash (at-least-once, SPEC 8) is counted again,
a job requeued from the failed registry counts its new outcome too. Each hash field is one
label set, a JSON array of the label values.
"""
from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from core import contracts

log = logging.getLogger(__name__)

JOBS_FINISHED = "iq:metrics:jobs_finished"  # [queue]
JOBS_FAILED = "iq:metrics:jobs_failed"  # [queue, code]: final failures, no retry left
JOB_RETRIES = "iq:metrics:job_retries"  # [queue, code]: failed attempts that RQ retries
JOB_DURATION = "iq:metrics:job_duration"  # [queue, outcome, le | "sum"]: one attempt, start to end
VENDOR_SUBMITTED = "iq:metrics:vendor_submitted"  # [vendor, kind]: images queued
VENDOR_FINISHED = "iq:metrics:vendor_finished"  # [vendor, kind, status]: images completed / failed
HTTP_REQUESTS = "iq:metrics:http_requests"  # [route, method, status]: API answers
HTTP_DURATION = "iq:metrics:http_duration"  # [route, method, le | "sum"]: request start to answer
ALL_HASHES = (JOBS_FINISHED, JOBS_FAILED, JOB_RETRIES, JOB_DURATION, VENDOR_SUBMITTED, VENDOR_FINISHED,
              HTTP_REQUESTS, HTTP_DURATION)

# Upper bounds (seconds) of the job duration buckets; a face crop takes well under a second,
# background removal a few, a batch chunk of 16 images up to a minute or two.
DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# Upper bounds (seconds) of the HTTP request buckets: most answers take milliseconds, a ZIP
# upload streams for minutes.
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
INF = "+Inf"
SUM = "sum"

COMPLETED = "completed"
FAILED = "failed"

# Job function -> the kind of image work it does (the record's job_kind).
KIND_OF_FUNCTION = {
    contracts.JOB_CROP_FACE: contracts.KIND_FACE_CROP,
    contracts.JOB_REMOVE_BACKGROUND: contracts.KIND_REMOVE_BG,
    contracts.JOB_PROCESS_CHUNK: contracts.KIND_BATCH_FACE_CROP,
}


def field(*labels: object) -> str:
    """The hash field of one label set."""
    return json.dumps([str(label) for label in labels], separators=(",", ":"))


def labels_of(raw: bytes | str) -> tuple[str, ...]:
    """Inverse of ``field``."""
    return tuple(json.loads(raw))


def bucket_of(seconds: float, buckets: tuple[float, ...] = DURATION_BUCKETS_S) -> str:
    """The smallest bucket bound holding ``seconds``, as written in the ``le`` label."""
    index = bisect.bisect_left(buckets, seconds)
    return INF if index == len(buckets) else repr(buckets[index])


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def elapsed_s(job: Job) -> float | None:
    """Seconds the job's current attempt ran (to its end, or to now), or None if it never started."""
    if job.started_at is None:
        return None
    started = _aware(job.started_at)
    ended = _aware(job.ended_at) if job.ended_at else None
    if ended is None or ended < started:  # still running, or an earlier attempt's end
        ended = datetime.now(UTC)
    return (ended - started).total_seconds()


def _write(redis: Redis, increments: Iterable[tuple[str, str, float]], *, level: int = logging.WARNING) -> None:
    # Metrics never decide a job's fate: a failed write is logged, not raised.
    pipe = redis.pipeline(transaction=False)
    for key, name, amount in increments:
        if isinstance(amount, int):
            pipe.hincrby(key, name, amount)
        else:
            pipe.hincrbyfloat(key, name, amount)
    try:
        pipe.execute()
    except RedisError as exc:
        log.log(level, "metrics not recorded (Redis unavailable): %s", exc)


def _duration(queue: str, outcome: str, seconds: float | None) -> list[tuple[str, str, float]]:
    if seconds is None:
        return []
    return [(JOB_DURATION, field(queue, outcome, bucket_of(seconds)), 1),
            (JOB_DURATION, field(queue, outcome, SUM), float(seconds))]


def _vendor_of(job: Job) -> str | None:
    vendor = job.meta.get("vendor_id")
    if vendor is None:
        payload = (job.kwargs or {}).get("payload")
        if isinstance(payload, dict):
            vendor = payload.get("vendorId")
    return None if vendor is None else str(vendor)


def job_succeeded(redis: Redis, job: Job, *, count_image: bool = True) -> None:
    """A job finished: count it for its queue, time it, and count its image for its vendor.

    ``count_image=False`` for jobs that are not one image (batch chunks and ingestion count
    their images with ``images_finished``).
    """
    queue = job.origin
    increments = [(JOBS_FINISHED, field(queue), 1), *_duration(queue, COMPLETED, elapsed_s(job))]
    vendor, kind = _vendor_of(job), KIND_OF_FUNCTION.get(job.func_name or "")
    if count_image and vendor and kind:
        increments.append((VENDOR_FINISHED, field(vendor, kind, COMPLETED), 1))
    _write(redis, increments)


def job_failed(redis: Redis, job: Job, code: str, *, final: bool, count_image: bool = True) -> None:
    """A job attempt failed with ``code``: a retry (``final`` False) or the job's final failure."""
    queue = job.origin
    increments = _duration(queue, FAILED, elapsed_s(job))
    if not final:
        increments.append((JOB_RETRIES, field(queue, code), 1))
    else:
        increments.append((JOBS_FAILED, field(queue, code), 1))
        vendor, kind = _vendor_of(job), KIND_OF_FUNCTION.get(job.func_name or "")
        if count_image and vendor and kind:
            increments.append((VENDOR_FINISHED, field(vendor, kind, FAILED), 1))
    _write(redis, increments)


def images_submitted(redis: Redis, vendor: str, kind: str, count: int) -> None:
    """``count`` images of ``vendor`` were queued (API requests, ZIP ingestion)."""
    if count > 0:
        _write(redis, [(VENDOR_SUBMITTED, field(vendor, kind), count)])


def images_finished(redis: Redis, vendor: str, kind: str, *, completed: int, failed: int) -> None:
    """Images of ``vendor`` that reached their end (batch chunks record several at once)."""
    increments = [(VENDOR_FINISHED, field(vendor, kind, status), count)
                  for status, count in ((COMPLETED, completed), (FAILED, failed)) if count > 0]
    if increments:
        _write(redis, increments)


def http_request(redis: Redis, route: str, method: str, status: int, seconds: float) -> None:
    """One API answer: counted by route template, method and status, and timed.

    Logged at DEBUG when Redis is down: the API then answers 503 to every request, and a
    warning per request would drown the one that says Redis is down."""
    _write(redis, [(HTTP_REQUESTS, field(route, method, status), 1),
                   (HTTP_DURATION, field(route, method, bucket_of(seconds, HTTP_BUCKETS_S)), 1),
                   (HTTP_DURATION, field(route, method, SUM), float(seconds))], level=logging.DEBUG)


def read_all(redis: Redis) -> dict[str, dict[tuple[str, ...], float]]:
    """Every hash, as {key: {labels: value}} (raises RedisError: the caller reports Redis down)."""
    pipe = redis.pipeline(transaction=False)
    for key in ALL_HASHES:
        pipe.hgetall(key)
    raw: list[dict[bytes, bytes]] = pipe.execute()
    return {key: {labels_of(name): float(value) for name, value in values.items()}
            for key, values in zip(ALL_HASHES, raw, strict=True)}
