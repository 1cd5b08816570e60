"""Every RQ queue, job and worker of this project speaks JSON, never pickle.

RQ pickles a job's arguments, meta and result by default, and ``pickle.loads`` runs whatever the
bytes tell it to: anyone who can write one key to Redis could run code in every worker (and in
the API, which reads jobs back). RQ's ``JSONSerializer`` reads only data. Nothing of ours needs
more: payloads, meta and results are plain JSON objects (``core/payloads.py`` writes the
payload dict; job functions return dicts of strings and numbers).

This module is the one place that names the serializer. Queues, job lookups and workers are
built through it, ``jobs.worker.ImageQueueWorker`` forces it whatever `rq worker` is told,
``service/dashboard.py`` hands it to rq-dashboard, and RQ's own CLI is called with
``--serializer json`` where it reads jobs (docs/operations.md). Jobs queued by a release that
pickled are not read by this one: docs/operations.md ("JSON jobs") says how to drain or
convert them (``python -m ops.pickled_jobs``).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

SERIALIZER = JSONSerializer
# How `rq` CLI commands that read jobs are told (rq requeue/empty/info -S json).
CLI_SERIALIZER = "json"


def queue(name: str, connection: Redis, **kwargs: Any) -> Queue:
    """RQ's Queue ``name`` reading and writing JSON jobs."""
    return Queue(name, connection=connection, serializer=SERIALIZER, **kwargs)


def fetch(job_id: str, connection: Redis) -> Job:
    """RQ's Job.fetch for a JSON job (NoSuchJobError when it is gone)."""
    return Job.fetch(job_id, connection=connection, serializer=SERIALIZER)


def fetch_many(job_ids: Iterable[str], connection: Redis) -> list[Job | None]:
    """RQ's Job.fetch_many for JSON jobs: one round trip, None where a job is gone."""
    return Job.fetch_many(list(job_ids), connection=connection, serializer=SERIALIZER)


def create(func: str, connection: Redis, **kwargs: Any) -> Job:
    """RQ's Job.create with the JSON serializer (tests and tools that build a job by hand)."""
    return Job.create(func, connection=connection, serializer=SERIALIZER, **kwargs)
