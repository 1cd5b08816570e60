"""The `rq worker` class every worker line runs (``-w jobs.worker.ImageQueueWorker``).

RQ runs a job's failure callback when the job raises, and when a dead worker's job is found
abandoned, but not when the work-horse process itself dies (SIGKILL, the OOM killer, a
segfault in a native library), nor when its maintenance fails a job that a dead worker had
taken from the queue but not started: then RQ retries the job or fails it silently. A job whose last
attempt died that way would leave its record in 'processing', or a batch chunk's images
pending, for ever. This class runs the failure callback in that case too, so that
``jobs.tasks.on_job_failure`` / ``jobs.batch.on_chunk_failure`` settle the record either way.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from rq.callbacks import execute_failure_callback
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.worker import Worker

from core import rqjson
from core.config import Settings
from core.errors import WORKER_DIED, TransientJobError

log = logging.getLogger(__name__)


# How RQ's IntermediateQueue.cleanup words the failure it passes to handle_job_failure.
INTERMEDIATE_QUEUE_FAILURE = "Job was stuck in intermediate queue"


class WorkHorseDied(TransientJobError):
    """The process running the job died before the job could finish (raised by nobody; passed to callbacks)."""

    code = WORKER_DIED


def describe_exit(ret_val: int) -> str:
    """waitpid's status in words: 'killed by signal 9' or 'exited with status 1'."""
    if os.WIFSIGNALED(ret_val):
        return f"killed by signal {os.WTERMSIG(ret_val)}"
    if os.WIFEXITED(ret_val):
        return f"exited with status {os.WEXITSTATUS(ret_val)}"
    return f"ended with waitpid status {ret_val}"


class ImageQueueWorker(Worker):
    """rq's forking Worker, plus the failure callback for a work-horse that died, a
    configurable heartbeat grace (WORKER_HEARTBEAT_GRACE_S) instead of RQ's fixed 60 s, and
    JSON jobs only (core/rqjson.py), whatever `rq worker --serializer` says: a pickled job in
    Redis is failed as unreadable, never unpickled."""

    def __init__(self, queues: Any, *args: Any, **kwargs: Any) -> None:
        # `rq worker` builds its Queue objects with its own --serializer (pickle by default);
        # by name, RQ builds them again with this worker's.
        given = [queues] if isinstance(queues, str | Queue) else list(queues)
        names: list[str] = [queue if isinstance(queue, str) else queue.name for queue in given]
        kwargs["serializer"] = rqjson.SERIALIZER
        super().__init__(names, *args, **kwargs)
        self.heartbeat_grace_s = Settings.from_env().worker_heartbeat_grace_s

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """RQ's TTL (the next heartbeat's interval + 60 s) with our grace in place of its 60 s.

        A worker killed together with its horse leaves its job 'started'; nobody reports it, and
        RQ's maintenance only calls it abandoned once this TTL has lapsed. The grace bounds how
        long that job waits before its retry.
        """
        return super().get_heartbeat_ttl(job, working_time) - 60 + self.heartbeat_grace_s

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        self._settle(job, f"the worker process running this job was {describe_exit(ret_val)} before the job "
                          "finished")

    def handle_job_failure(self, job: Job, queue: Any, started_job_registry: Any = None, exc_string: str = "",
                           execution: Any = None) -> None:
        # RQ's maintenance fails a job a dead worker took but never started ("stuck in the
        # intermediate queue") through here, without the job's failure callback.
        if exc_string.startswith(INTERMEDIATE_QUEUE_FAILURE):
            self._settle(job, "the worker that took this job died before starting it")
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string,
                                   execution=execution)

    def _settle(self, job: Job, message: str) -> None:
        """Run the job's failure callback with WorkHorseDied before RQ decides on a retry."""
        ended_at = job.ended_at
        try:
            # The horse saved meta (attempts, progress) after this process fetched the job;
            # the callback must see and save on top of that, not on a stale copy.
            job.refresh()
        except NoSuchJobError:
            return
        job.ended_at = ended_at
        try:
            execute_failure_callback(job, self.death_penalty_class, WorkHorseDied, WorkHorseDied(message), None)
        except Exception:  # noqa: BLE001 (RQ must still record the failure and decide on a retry)
            log.exception("job=%s failure callback after its worker died raised", job.id)
