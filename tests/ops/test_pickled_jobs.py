"""ops/pickled_jobs.py: jobs a pickling release left in Redis become JSON jobs our workers run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import PickleSerializer

from core import contracts, rqjson
from jobs.worker import ImageQueueWorker
from ops.pickled_jobs import convert_pickled_jobs


class RunsCodeWhenUnpickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def pickle_queue(conn: redis.Redis) -> Queue:
    """RQ's default before this release: pickle."""
    return Queue(contracts.QUEUE_WEBHOOKS, connection=conn, serializer=PickleSerializer)


def test_plain_pickled_jobs_are_converted_and_run(redis_conn: redis.Redis) -> None:
    old = pickle_queue(redis_conn)  # what the previous release wrote
    job = old.enqueue("builtins.dict", kwargs={"pair": ("a", "b")}, meta={"vendor_id": "v1", "attempts": 0})
    done = old.enqueue("builtins.len", "abc")
    old.remove(done)
    done.set_status(JobStatus.FINISHED)
    from rq.results import Result

    Result.create(done, Result.Type.SUCCESSFUL, ttl=600, return_value={"url": "x"})

    dry = convert_pickled_jobs(redis_conn, dry_run=True)
    assert sorted(dry.converted) == sorted([job.id, done.id])
    assert convert_pickled_jobs(redis_conn, dry_run=True).converted == dry.converted  # nothing changed
    report = convert_pickled_jobs(redis_conn)
    assert sorted(report.converted) == sorted([job.id, done.id]) and report.refused == {}
    assert rqjson.fetch(done.id, connection=redis_conn).return_value() == {"url": "x"}
    converted = rqjson.fetch(job.id, connection=redis_conn)
    assert converted.kwargs == {"pair": ["a", "b"]} and converted.meta["vendor_id"] == "v1"
    ImageQueueWorker([contracts.QUEUE_WEBHOOKS], connection=redis_conn).work(burst=True)
    assert rqjson.fetch(job.id, connection=redis_conn).return_value() == {"pair": ["a", "b"]}
    again = convert_pickled_jobs(redis_conn)  # safe to run twice
    assert again.converted == [] and again.already_json == 2


def test_a_pickle_naming_code_is_refused_not_run(redis_conn: redis.Redis, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    job = pickle_queue(redis_conn).enqueue("builtins.print",
                                                                         RunsCodeWhenUnpickled(str(marker)))
    before = redis_conn.hgetall(job.key)
    report = convert_pickled_jobs(redis_conn)
    assert not marker.exists()
    assert list(report.refused) == [job.id] and "posix.system" in report.refused[job.id]
    assert redis_conn.hgetall(job.key) == before  # left as it was
