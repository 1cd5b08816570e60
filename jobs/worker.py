"""The `rq worker` class every worker line runs (``-w jobs.worker.ImageQueueWorker``).

RQ runs a job's failure callback when the job raises, and when a dead worker's job is found
abandoned, but not when the work-horse process itself dies (SIGKILL, the OOM killer, a
segfault in a native library): then RQ retries the job or fails it silently. A job whose last
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
from rq.worker import Worker

from .config import Settings
from .errors import WORKER_DIED, TransientJobError

log = logging.getLogger(__name__)


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
    """rq's forking Worker, plus the failure callback for a work-horse that died, and a
    configurable heartbeat grace (WORKER_HEARTBEAT_GRACE_S) instead of RQ's fixed 60 s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
        ended_at = job.ended_at
        try:
            # The horse saved meta (attempts, progress) after this process fetched the job;
            # the callback must see and save on top of that, not on a stale copy.
            job.refresh()
        except NoSuchJobError:
            return
        job.ended_at = ended_at
        exc = WorkHorseDied(f"the worker process running this job was {describe_exit(ret_val)} "
                            "before the job finished")
        try:
            execute_failure_callback(job, self.death_penalty_class, WorkHorseDied, exc, None)
        except Exception:  # noqa: BLE001 (RQ must still record the failure and decide on a retry)
            log.exception("job=%s failure callback after the work-horse died raised", job.id)
