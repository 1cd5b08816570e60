"""jobs.worker.ImageQueueWorker: a work-horse that dies still gets its failure callback.

Real redis-server, a real forking worker in burst mode, a job that SIGKILLs its own horse.
"""
from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import redis
from rq import Callback, Retry
from rq.job import Job, JobStatus

from core import rqjson
from core.errors import WORKER_DIED
from jobs.worker import ImageQueueWorker, WorkHorseDied, describe_exit

CALLS = "test:worker:callbacks"


def die() -> None:
    """A job that kills the process running it, like the OOM killer would."""
    job_meta_note()
    os.kill(os.getpid(), signal.SIGKILL)


def job_meta_note() -> None:
    from rq import get_current_job

    job = get_current_job()
    assert job is not None
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    job.save_meta()


def remember_failure(job: Job, connection: redis.Redis, exc_type: Any, exc: Any, tb: Any) -> None:
    """Failure callback: note what it was called with (and the meta the horse saved)."""
    connection.rpush(CALLS, f"{job.id}|{exc_type.__name__}|{getattr(exc, 'code', '')}|{job.meta.get('attempts')}")


def test_describe_exit_words() -> None:
    assert describe_exit(signal.SIGKILL) == "killed by signal 9"
    assert describe_exit(1 << 8) == "exited with status 1"


def test_heartbeat_ttl_uses_the_configured_grace(redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_HEARTBEAT_GRACE_S", "10")
    queue = rqjson.queue("test-worker", connection=redis_conn)
    job = queue.enqueue(die, job_timeout=600)
    worker = ImageQueueWorker([queue], connection=redis_conn, job_monitoring_interval=5)
    assert worker.get_heartbeat_ttl(job) == 5 + 10
    assert worker.get_heartbeat_ttl(job, working_time=598) == 2 + 10  # never past the job's timeout
    monkeypatch.delenv("WORKER_HEARTBEAT_GRACE_S")
    assert ImageQueueWorker([queue], connection=redis_conn, job_monitoring_interval=5).get_heartbeat_ttl(job) == 65


def test_killed_horse_runs_the_failure_callback_and_rq_still_retries(redis_conn: redis.Redis) -> None:
    queue = rqjson.queue("test-worker", connection=redis_conn)
    job = queue.enqueue(die, job_id="dies-1", retry=Retry(max=1),
                        on_failure=Callback(remember_failure))
    ImageQueueWorker([queue], connection=redis_conn).work(burst=True)
    calls = [c.decode() for c in redis_conn.lrange(CALLS, 0, -1)]
    # Two attempts, both died: the callback ran each time, saw the horse's meta, and RQ
    # retried once before failing the job for good.
    assert calls == [f"dies-1|{WorkHorseDied.__name__}|{WORKER_DIED}|1",
                     f"dies-1|{WorkHorseDied.__name__}|{WORKER_DIED}|2"]
    job.refresh()
    assert job.get_status() == JobStatus.FAILED
    assert job.id in queue.failed_job_registry


def test_job_a_dead_worker_took_but_never_started_gets_the_failure_callback(redis_conn: redis.Redis) -> None:
    """RQ's maintenance fails such a job ("stuck in intermediate queue") without the callback."""
    import time as _time

    queue = rqjson.queue("test-worker", connection=redis_conn)
    job = queue.enqueue(die, job_id="taken-1", retry=Retry(max=1), on_failure=Callback(remember_failure))
    # A single-queue worker takes jobs with LMOVE into the intermediate queue; it died there.
    redis_conn.lmove(queue.key, queue.intermediate_queue_key)
    intermediate = queue.intermediate_queue
    worker = ImageQueueWorker([queue], connection=redis_conn)
    intermediate.cleanup(worker, queue)  # first sighting: RQ waits a minute
    redis_conn.set(intermediate.get_first_seen_key(job.id), _time.time() - 120)
    intermediate.cleanup(worker, queue)
    calls = [c.decode() for c in redis_conn.lrange(CALLS, 0, -1)]
    assert calls == [f"taken-1|{WorkHorseDied.__name__}|{WORKER_DIED}|None"]
    assert job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.SCHEDULED)  # RQ retries it


class RunsCodeWhenUnpickled:
    """What an attacker who can write to Redis would put in a pickled job: unpickling it runs a command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_job_is_failed_unread_and_the_worker_goes_on(redis_conn: redis.Redis, tmp_path: Any) -> None:
    """RQ's default (pickle) would run the payload's command; our workers read JSON only."""
    from rq import Queue
    from rq.serializers import PickleSerializer

    marker = tmp_path / "unpickled"
    hostile = Queue("test-worker", connection=redis_conn, serializer=PickleSerializer)  # RQ's default
    planted = hostile.enqueue("builtins.print", RunsCodeWhenUnpickled(str(marker)),
                              meta={"vendor_id": RunsCodeWhenUnpickled(str(marker))})
    queue = rqjson.queue("test-worker", connection=redis_conn)
    honest = queue.enqueue("builtins.len", "four")
    # Given pickle on the command line (`rq worker` passes its --serializer), the class still reads JSON.
    ImageQueueWorker([hostile], connection=redis_conn, serializer="pickle").work(burst=True)
    assert not marker.exists(), "the worker unpickled a job"
    assert planted.id in queue.failed_job_registry
    assert rqjson.fetch(honest.id, connection=redis_conn).return_value() == 4


def test_jobs_are_stored_as_json(redis_conn: redis.Redis) -> None:
    import json
    import zlib

    job = rqjson.queue("test-worker", connection=redis_conn).enqueue("builtins.len", kwargs={"obj": "ab"},
                                                                     meta={"vendor_id": "v1"})
    stored = redis_conn.hgetall(job.key)
    assert json.loads(zlib.decompress(stored[b"data"])) == ["builtins.len", None, [], {"obj": "ab"}]
    assert json.loads(stored[b"meta"]) == {"vendor_id": "v1"}
