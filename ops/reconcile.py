"""`python -m service.cli reconcile`: queue again what the database says is unfinished but Redis lost.

The database is the record of what vendors submitted; Redis holds the work queue. With AOF
persistence (compose, `./scripts/up`) a Redis crash loses nothing, but a Redis run without
persistence, a restore from an old snapshot or a flushed instance loses queued jobs while their
records stay 'queued' for ever. This walks the unfinished rows, older than ``--older-than``
seconds so that work submitted a moment ago is left alone, and for each:

- single job (face crop, background removal) whose RQ job is gone: queued again under the same
  job id with the payload kept in the row (the same storage key, so nothing is duplicated);
  a row from before payloads were kept is failed with JOB_LOST, which tells the vendor to
  submit again;
- single job whose RQ job failed for good but whose row was never told (a callback that could
  not reach the database): the row gets the job's final error;
- ZIP batch waiting for ingestion whose job is gone: ingestion queued again if the upload is
  still in UPLOAD_DIR, else the batch fails with SOURCE_MISSING;
- batch with pending images that no live chunk job covers: those images queued again in new
  chunks; pending images of a chunk job that failed for good get that job's error.
- URL-batch record rows still unfinished although their image finished (the database went away
  between the image's write and the record's): the row gets the image's outcome.

A job RQ calls 'queued' that sits in no queue (its worker died right after taking it) is put
back on its queue. Jobs that are queued, running, scheduled for a retry or deferred are left
to RQ. Running it
twice is harmless: the second run finds everything covered.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from core import contracts, rqjson
from core.batch_outcomes import fail_pending_items, mirror_batch_records
from core.batch_plan import BatchRef, chunk_job_id, chunk_ranges, enqueue_chunk, enqueue_ingest, ingest_job_id, zip_path
from core.config import Settings
from core.db.batches import BATCH_FAILED, BATCH_INGESTING, BATCH_PROCESSING, BATCH_QUEUED
from core.db.database import Database
from core.enqueue import JobSpec, enqueue_jobs
from core.errors import JOB_LOST, SOURCE_MISSING

log = logging.getLogger(__name__)

_OVER = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
# Queued, running, retrying, waiting for a rate-limit slot or a dependency: RQ will run it.
_LIVE = tuple(status for status in JobStatus if status not in (JobStatus.FINISHED, *_OVER))


@dataclass
class ReconcileResult:
    """What one run found and did (``dry_run``: what it would have done)."""

    records_checked: int = 0
    records_requeued: int = 0
    records_failed: int = 0  # JOB_LOST, or the final error of a job that failed unrecorded
    records_alive: int = 0  # their job is still queued/running/scheduled: left to RQ
    records_mirrored: int = 0  # batch records given their finished image's outcome
    jobs_restored: int = 0  # 'queued' jobs that were in no queue (a worker died right after taking them)
    batches_checked: int = 0
    ingests_requeued: int = 0
    batches_failed: int = 0
    chunks_requeued: int = 0
    images_requeued: int = 0
    images_failed: int = 0

    def summary(self) -> dict[str, int]:
        return asdict(self)


def _fetch(redis: Redis, job_id: str | None) -> Job | None:
    if not job_id:
        return None
    try:
        return rqjson.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return None


def _final_error(job: Job) -> tuple[str, str]:
    error = job.meta.get("error") or {}
    return (str(error.get("code") or "JOB_FAILED"),
            str(error.get("message") or "the job failed; see the dead-letter listing")[:2000])


class Reconciler:
    """One reconcile pass over the database against Redis."""

    def __init__(self, db: Database, redis: Redis, settings: Settings, *, older_than_s: float,
                 dry_run: bool = False, confirm_s: float = 2.0) -> None:
        self.db, self.redis, self.settings, self.dry_run = db, redis, settings, dry_run
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        self.cutoff = cutoff.strftime("%Y-%m-%d %H:%M:%S.%f")
        self.confirm_s = confirm_s
        self.result = ReconcileResult()
        self._listed: dict[str, set[str]] = {}  # queue key -> job ids in it (read once per run)
        self._suspects: list[Job] = []

    def run(self) -> ReconcileResult:
        after = 0
        batch_records: set[str] = set()  # batches owning unfinished record rows
        while page := self.db.unsettled_records(self.cutoff, after_id=after):
            after = page[-1]["id"]
            for row in page:
                if row["job_kind"] in contracts.SINGLE_JOB_KINDS:
                    self._record(row)
                elif row["job_kind"] in (contracts.KIND_BATCH_FACE_CROP, contracts.KIND_BATCH_REMOVE_BG) \
                        and row["current_job_id"]:
                    batch_records.add(row["current_job_id"])
        for batch in self.db.open_batches(self.cutoff):
            self._batch(batch)
        self._mirror(batch_records)
        self._restore_stranded()
        log.info("reconcile%s: %s", " (dry run)" if self.dry_run else "", self.result.summary())
        return self.result

    # --- single jobs ---------------------------------------------------------------------------
    def _record(self, row: dict[str, Any]) -> None:
        self.result.records_checked += 1
        job = _fetch(self.redis, row["current_job_id"])
        if job is not None:
            status = job.get_status()
            if status in _OVER:
                code, message = _final_error(job)
                self._fail_record(row, code, message)
            elif not self._suspect(job):
                self.result.records_alive += 1
            return
        payload = json.loads(row["job_payload"]) if row["job_payload"] else None
        if payload is None:
            self._fail_record(row, JOB_LOST, "The job was lost from the queue (Redis) and this record "
                                             "predates kept payloads; submit it again.")
            return
        self.result.records_requeued += 1
        if self.dry_run:
            return
        queue_name, func = contracts.SINGLE_JOB_KINDS[row["job_kind"]]
        queue = rqjson.queue(queue_name, connection=self.redis, default_timeout=self.settings.job_timeout_s)
        enqueue_jobs(queue, func, [JobSpec(row["current_job_id"], payload, row["vendor_id"], row["record_id"])],
                     self.settings)
        log.info("reconcile: vendor=%s record=%s job=%s queued again", row["vendor_id"], row["record_id"],
                 row["current_job_id"])

    def _in_a_list(self, job: Job, *, cached: bool) -> bool:
        queue = rqjson.queue(job.origin, connection=self.redis)
        for key in (queue.key, queue.intermediate_queue_key):
            if not cached:
                if self.redis.lpos(key, job.id) is not None:
                    return True
                continue
            if key not in self._listed:
                ids: list[bytes] = self.redis.lrange(key, 0, -1)  # type: ignore[assignment]
                self._listed[key] = {raw.decode() for raw in ids}
            if job.id in self._listed[key]:
                return True
        return False

    def _suspect(self, job: Job) -> bool:
        """Note a job RQ calls queued that sits in no queue list; True if it is one.

        A worker on several queues takes a job with BLPOP; killed before it marks the job
        started, it leaves the job 'queued' in no list, where no worker will ever see it.
        """
        if job.get_status() != JobStatus.QUEUED or not job.origin or self._in_a_list(job, cached=True):
            return False
        self._suspects.append(job)
        return True

    def _restore_stranded(self) -> None:
        """Put suspects still queued in no list after ``confirm_s`` back at the head of their queue.

        The wait tells a stranded job from one a live worker has just taken (it marks the job
        started within milliseconds).
        """
        if not self._suspects:
            return
        time.sleep(self.confirm_s)
        for job in self._suspects:
            if job.get_status(refresh=True) != JobStatus.QUEUED or self._in_a_list(job, cached=False):
                continue
            self.result.jobs_restored += 1
            if not self.dry_run:
                rqjson.queue(job.origin, connection=self.redis).push_job_id(job.id, at_front=True)
                log.warning("reconcile: job=%s was queued in no queue; put back on %s", job.id, job.origin)

    def _fail_record(self, row: dict[str, Any], code: str, message: str) -> None:
        self.result.records_failed += 1
        if self.dry_run:
            return
        self.db.update_record(row["vendor_id"], row["record_id"], {
            "processing_status": contracts.STATUS_FAILED, "error_code": code, "error_message": message,
        }, job_id=row["current_job_id"])
        log.warning("reconcile: vendor=%s record=%s failed %s: %s", row["vendor_id"], row["record_id"], code,
                    message)

    # --- batches -------------------------------------------------------------------------------
    def _mirror(self, batch_ids: set[str]) -> None:
        """Records of a URL batch whose image finished while the database dropped the mirror write."""
        for batch_id in sorted(batch_ids):
            if self.dry_run:
                batch = self.db.get_batch(batch_id)
                if batch is not None:
                    self.result.records_mirrored += len(self.db.unmirrored_outcomes(
                        batch_id, batch["vendor_id"], 0, 2**31 - 1))
            else:
                self.result.records_mirrored += mirror_batch_records(self.db, self.settings, batch_id)

    def _batch(self, batch: dict[str, Any]) -> None:
        self.result.batches_checked += 1
        ref = BatchRef(batch["batch_id"], batch["vendor_id"], int(batch["priority"]))
        if batch["status"] in (BATCH_QUEUED, BATCH_INGESTING):
            self._ingest(batch, ref)
        elif batch["status"] == BATCH_PROCESSING:
            self._chunks(ref)

    def _ingest(self, batch: dict[str, Any], ref: BatchRef) -> None:
        job = _fetch(self.redis, ingest_job_id(ref.batch_id))
        if job is not None and job.get_status() not in _OVER:
            self._suspect(job)  # taken by a worker that lost Redis before starting it?
            return
        path = zip_path(self.settings.upload_dir, ref.batch_id)
        if job is None and path.exists():
            self.result.ingests_requeued += 1
            if not self.dry_run:
                enqueue_ingest(self.redis, ref, str(path), self.settings)
            return
        code, message = (_final_error(job) if job is not None else
                         (SOURCE_MISSING, f"The batch's ingestion job was lost and its upload {path.name} "
                                          "is gone; upload the ZIP again."))
        self.result.batches_failed += 1
        if not self.dry_run:
            self.db.set_batch(ref.batch_id, status=BATCH_FAILED, error_code=code, error_message=message,
                              only_from=(BATCH_QUEUED, BATCH_INGESTING))

    def _chunk_jobs(self, batch_id: str) -> list[Job]:
        prefix = f"rq:job:{chunk_job_id(batch_id, 0)[:-1]}"
        ids = {key.decode()[len("rq:job:"):] for key in self.redis.scan_iter(match=f"{prefix}*", count=1000)}
        ids = {job_id for job_id in ids if ":" not in job_id}  # not rq:job:<id>:dependents and the like
        return [job for job in rqjson.fetch_many(sorted(ids), connection=self.redis) if job is not None]

    def _chunks(self, ref: BatchRef) -> None:
        live: list[tuple[int, int]] = []
        for job in self._chunk_jobs(ref.batch_id):
            first, last = int(job.args[1]), int(job.args[2])
            status = job.get_status()
            if status in _LIVE:  # a stranded chunk is restored at the end, so it covers its range too
                self._suspect(job)
                live.append((first, last))
            elif status in _OVER:
                code, message = _final_error(job)
                if self.dry_run:
                    self.result.images_failed += len(self.db.pending_items(ref.batch_id, first, last))
                else:
                    self.result.images_failed += fail_pending_items(
                        self.db, self.settings, self.redis, ref.batch_id, first, last, code, message)
        uncovered: list[int] = []
        after = -1
        while page := self.db.pending_seqs(ref.batch_id, after_seq=after):
            after = page[-1]
            uncovered += [seq for seq in page if not any(first <= seq <= last for first, last in live)]
        for first, last in chunk_ranges(uncovered, self.settings.batch_chunk_size):
            # The range's items may differ from the old chunk's: a fresh id if the old one is still kept.
            job_id = chunk_job_id(ref.batch_id, first)
            if Job.exists(job_id, connection=self.redis):
                job_id = f"{job_id}-r{int(datetime.now(UTC).timestamp())}"
            self.result.chunks_requeued += 1
            self.result.images_requeued += sum(1 for seq in uncovered if first <= seq <= last)
            if not self.dry_run:
                enqueue_chunk(self.redis, ref, first, last, self.settings, job_id=job_id)


def reconcile(db: Database, redis: Redis, settings: Settings, *, older_than_s: float = 60.0,
              dry_run: bool = False, confirm_s: float = 2.0) -> ReconcileResult:
    """Queue again what the database says is unfinished but Redis no longer holds (module docstring)."""
    return Reconciler(db, redis, settings, older_than_s=older_than_s, dry_run=dry_run, confirm_s=confirm_s).run()

