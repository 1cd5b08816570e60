"""Dead letters: jobs in RQ's failed registries, listed, requeued or deleted in bulk.

Shared by the admin API (service/admin/routes.py) and the CLI (``python -m service.cli dead-letters``).
A dead letter is a job in the ``FailedJobRegistry`` of one of ``core.contracts.ALL_QUEUES``;
it is filtered by queue, vendor (``meta.vendor_id``), error code (``meta.error.code``, written
by the jobs' failure callbacks) and job id. Registries are read a page at a time, so a
registry of millions costs memory for one page.

Requeueing puts back what the failure callbacks had settled, so the job can really run again:

* **single jobs** (face crop, background removal): the vendor's record row goes back to
  ``queued`` with its error cleared, but only while the row still belongs to this job
  (``current_job_id``); a record queued again since then for a newer job is left alone and the
  dead letter is skipped (``RECORD_SUPERSEDED``: the old job would refuse to run anyway).
* **batch chunks**: ``on_chunk_failure`` had failed the chunk's leftover images with the
  chunk's error and counted them in the batch's ``processed``/``failed``. Those images (and only
  those: images that failed on their own, such as ``NO_FACE``, stay failed) go back to
  ``pending``, the counters drop by as many and a finished batch returns to ``processing``, all in
  one transaction (``Database.reopen_items``); URL batches' record rows go back to ``queued``.
  Images of a ZIP batch whose extracted file is gone cannot run again and stay failed; a chunk
  with nothing left to run is skipped (``NOTHING_TO_RETRY``).
* **ZIP ingestion**: only while the uploaded ZIP is still on disk (the failure callback removes
  it); the batch goes back from ``failed`` to ``queued``. Otherwise skipped (``SOURCE_GONE``).

Every requeued job gets its retries back (``JOB_RETRIES``), its ``meta.error`` cleared and
``meta.requeues`` counted. The database is changed before the job is requeued, and put back if
the requeue fails, so a worker never runs a job whose row still says failed.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.registry import FailedJobRegistry

from core import contracts, rqjson
from core.config import Settings
from core.contracts import ID_PATTERN, InvalidField
from core.db.batches import BATCH_FAILED, BATCH_QUEUED, ITEM_FAILED
from core.db.database import Database
from core.errors import RECORD_SUPERSEDED

log = logging.getLogger(__name__)

PAGE_SIZE = 200  # registry entries read per round trip
MAX_JOB_IDS = 1000  # explicit jobIds per call
MAX_LIST_LIMIT = 500
CODE_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# Shown for jobs that failed without our callbacks recording a code (e.g. before they existed).
UNKNOWN_CODE = "JOB_FAILED"

SINGLE_JOBS = {contracts.JOB_CROP_FACE: "face_crop", contracts.JOB_REMOVE_BACKGROUND: "remove_bg"}
KIND_CHUNK = "batch_chunk"
KIND_INGEST = "batch_ingest"
KIND_OTHER = "other"

# Reasons a requeue leaves a dead letter where it is.
RECORD_MISSING = "RECORD_MISSING"
BATCH_MISSING = "BATCH_MISSING"
NOTHING_TO_RETRY = "NOTHING_TO_RETRY"
SOURCE_GONE = "SOURCE_GONE"
NOT_FOUND = "NOT_FOUND"
CHANGED = "CHANGED"  # someone else requeued or deleted it meanwhile


# A filter given empty ("", [], an unset shell variable) is refused, never read as "no filter":
# it must not widen a bulk requeue or delete. Absent (None) means no filter.
def queue_names(value: Any, name: str = "queue") -> tuple[str, ...]:
    """Queue filter: a name of ALL_QUEUES, ``face-detection`` (all ten priorities), or a list of those."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InvalidField(name, "must name at least one queue")
    names: list[str] = []
    for item in values:
        if not isinstance(item, str):
            raise InvalidField(name, "must be a queue name or a list of queue names")
        if item not in contracts.ALL_QUEUES and item != contracts.QUEUE_FACE_DETECTION:
            raise InvalidField(name, f"unknown queue {item[:64]!r}; one of "
                                     f"{', '.join((*contracts.ALL_QUEUES, contracts.QUEUE_FACE_DETECTION))}")
        names.extend(contracts.FACE_DETECTION_QUEUES if item == contracts.QUEUE_FACE_DETECTION else [item])
    return tuple(dict.fromkeys(names))


def _optional_id(value: Any, name: str) -> str | None:
    if value is None:
        return None
    return contracts.validate_id(value, name)


def _optional_code(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not CODE_PATTERN.match(value):
        raise InvalidField(name, "must be an error code such as IMAGE_NOT_FOUND (letters, digits, _)")
    return value.upper()


def _job_ids(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise InvalidField(name, "must be a non-empty array of job ids")
    if len(value) > MAX_JOB_IDS:
        raise InvalidField(name, f"has {len(value)} ids; at most {MAX_JOB_IDS} per call (filter by queue, "
                                 "vendor or code to act on more)")
    ids = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not ID_PATTERN.match(item):
            raise InvalidField(f"{name}[{index}]", "must be a job id")
        ids.append(item)
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class Filter:
    """Which dead letters to act on; every given part must match."""

    queues: tuple[str, ...] = ()  # empty: every queue
    vendor: str | None = None
    code: str | None = None
    job_ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, queue: Any = None, vendor: Any = None, code: Any = None, job_ids: Any = None) -> Filter:
        """Validate raw values (JSON body, query string or CLI); InvalidField names the bad one."""
        return cls(queue_names(queue), _optional_id(vendor, "vendor"), _optional_code(code, "code"),
                   _job_ids(job_ids, "jobIds"))

    @property
    def empty(self) -> bool:
        """True when nothing narrows it down (bulk changes refuse that)."""
        return not (self.queues or self.vendor or self.code or self.job_ids)

    def searched_queues(self) -> tuple[str, ...]:
        """The queues whose failed registries are read."""
        return self.queues or contracts.ALL_QUEUES

    def matches(self, job: Job) -> bool:
        """Vendor and code match (queue and id are matched by where the job is looked up)."""
        if self.vendor is not None and job.meta.get("vendor_id") != self.vendor:
            return False
        return self.code is None or error_code(job) == self.code


def error_code(job: Job) -> str:
    """The code the job's failure callback recorded, else UNKNOWN_CODE."""
    error = job.meta.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error["code"]
    return UNKNOWN_CODE


def job_kind(job: Job) -> str:
    """face_crop, remove_bg, batch_chunk, batch_ingest or other, from the job's function path."""
    func = job.func_name
    if func in SINGLE_JOBS:
        return SINGLE_JOBS[func]
    if func == contracts.JOB_PROCESS_CHUNK:
        return KIND_CHUNK
    if func == contracts.JOB_INGEST_ZIP:
        return KIND_INGEST
    return KIND_OTHER


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _from_timestamp(value: float | None) -> str | None:
    if value is None or value == float("inf"):
        return None
    return _iso(datetime.fromtimestamp(value, UTC))


def describe(job: Job, expires_at: float | None = None) -> dict[str, Any]:
    """The listing entry of one dead letter (camelCase, JSON-ready)."""
    meta = job.meta
    raw_error = meta.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    kind = job_kind(job)
    payload = ((job.kwargs or {}).get("payload") or {}) if kind in SINGLE_JOBS.values() else {}
    message = error.get("message")
    if not message:
        result = job.latest_result()
        lines = [line for line in ((result.exc_string if result else None) or "").splitlines() if line.strip()]
        message = lines[-1].strip() if lines else "failed"
    failed_at = job.ended_at
    if failed_at is None and expires_at is not None and job.failure_ttl:
        failed_at = datetime.fromtimestamp(expires_at - job.failure_ttl, UTC)
    entry: dict[str, Any] = {
        "id": job.id,
        "queue": job.origin,
        "kind": kind,
        "func": job.func_name,
        "vendor": meta.get("vendor_id"),
        "code": error_code(job),
        "message": str(message)[:2000],
        "permanent": error.get("permanent"),
        "failedAt": _iso(failed_at),
        "expiresAt": _from_timestamp(expires_at),
        "attempts": meta.get("attempts"),
        "requeues": int(meta.get("requeues", 0)),
        "recordId": meta.get("record_id") or payload.get("recordId"),
        "batchId": meta.get("batch_id"),
    }
    if kind == KIND_CHUNK and len(job.args) == 3:
        entry["firstSeq"], entry["lastSeq"] = int(job.args[1]), int(job.args[2])
    return entry


@dataclass
class Outcome:
    """What a bulk requeue or delete did."""

    done: list[str] = field(default_factory=list)  # job ids requeued / deleted
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {id, queue, reason, message}
    more: bool = False  # stopped at the limit; there may be more matching dead letters

    def skip(self, job_id: str, queue: str | None, reason: str, message: str) -> None:
        """Note a dead letter left where it is, and why."""
        self.skipped.append({"id": job_id, "queue": queue, "reason": reason, "message": message})

    @property
    def matched(self) -> int:
        """Dead letters that matched the filter (acted on or skipped)."""
        return len(self.done) + len(self.skipped)


class DeadLetters:
    """List, requeue and delete failed jobs (see the module docstring)."""

    def __init__(self, redis: Redis, db: Database, settings: Settings) -> None:
        self.redis = redis
        self.db = db
        self.settings = settings

    def registry(self, queue: str) -> FailedJobRegistry:
        """The failed registry of one queue."""
        return FailedJobRegistry(queue, connection=self.redis)

    def counts(self) -> dict[str, int]:
        """Dead letters per queue (expired entries dropped first)."""
        return {queue: self.registry(queue).count for queue in contracts.ALL_QUEUES}

    # --- reading -----------------------------------------------------------------------------
    def _scan(self, flt: Filter, removed: Callable[[], int]) -> Iterator[tuple[Job, float | None]]:
        """Matching dead letters, a registry page at a time.

        ``removed()`` tells how many entries the caller took out of the registry since the last
        call, so paging stays exact while it requeues or deletes what it is given.
        """
        for queue in flt.searched_queues():
            registry = self.registry(queue)
            registry.cleanup()
            start = 0
            while True:
                entries: list[tuple[bytes, float]] = self.redis.zrange(  # type: ignore[assignment]
                    registry.key, start, start + PAGE_SIZE - 1, withscores=True)
                if not entries:
                    break
                ids = [raw.decode() for raw, _ in entries]
                stale = 0
                for job_id, job, (_, score) in zip(ids, rqjson.fetch_many(ids, connection=self.redis), entries,
                                                   strict=True):
                    if job is None:  # the job's hash expired or was deleted: a dangling entry
                        registry.remove(job_id)
                        stale += 1
                    elif flt.matches(job):
                        yield job, score
                start += len(ids) - stale - removed()

    def _by_ids(self, flt: Filter, outcome: Outcome | None) -> Iterator[tuple[Job, float | None]]:
        wanted = set(flt.searched_queues())
        for job_id, job in zip(flt.job_ids, rqjson.fetch_many(list(flt.job_ids), connection=self.redis), strict=True):
            score: float | None = None
            if job is not None:
                score = self.redis.zscore(self.registry(job.origin).key, job.id)
            if job is None or job.origin not in wanted or score is None:
                if outcome is not None:
                    outcome.skip(job_id, None if job is None else job.origin, NOT_FOUND,
                                 "not a dead letter of the queues searched (unknown id, expired, not failed, "
                                 "or already requeued)")
                continue
            if flt.matches(job):
                yield job, score

    def list(self, flt: Filter, *, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` matching dead letters after skipping ``offset``; and whether more match."""
        found: list[dict[str, Any]] = []
        source = self._by_ids(flt, None) if flt.job_ids else self._scan(flt, lambda: 0)
        for index, (job, score) in enumerate(source):
            if index < offset:
                continue
            if len(found) == limit:
                return found, True
            found.append(describe(job, score))
        return found, False

    # --- changing ----------------------------------------------------------------------------
    def _apply(self, flt: Filter, act: Callable[[Job, Outcome], bool], limit: int | None) -> Outcome:
        if flt.empty:
            raise InvalidField("filter", "give at least one of queue, vendor, code or jobIds")
        outcome = Outcome()
        taken = 0
        seen: set[str] = set()

        def removed() -> int:
            nonlocal taken
            count, taken = taken, 0
            return count

        source = self._by_ids(flt, outcome) if flt.job_ids else self._scan(flt, removed)
        for job, _score in source:
            if job.id in seen:  # requeued by this run and already failed again: leave it
                continue
            if limit is not None and len(outcome.done) + len(outcome.skipped) >= limit:
                outcome.more = True
                break
            seen.add(job.id)
            if act(job, outcome):
                taken += 1
        return outcome

    def delete(self, flt: Filter, *, limit: int | None = None) -> Outcome:
        """Delete matching dead letters (job hash, results and registry entry)."""
        def act(job: Job, outcome: Outcome) -> bool:
            job.delete()
            outcome.done.append(job.id)
            log.info("dead letter job=%s queue=%s vendor=%s code=%s deleted", job.id, job.origin,
                     job.meta.get("vendor_id"), error_code(job))
            return True
        return self._apply(flt, act, limit)

    def requeue(self, flt: Filter, *, limit: int | None = None) -> Outcome:
        """Requeue matching dead letters, putting their records and batch items back first."""
        return self._apply(flt, self._requeue_one, limit)

    def _requeue_one(self, job: Job, outcome: Outcome) -> bool:
        kind = job_kind(job)
        undo: Callable[[], None] | None = _nothing
        if kind in SINGLE_JOBS.values():
            undo = self._reopen_record(job, outcome)
        elif kind == KIND_CHUNK:
            undo = self._reopen_chunk(job, outcome)
        elif kind == KIND_INGEST:
            undo = self._reopen_ingest(job, outcome)
        if undo is None:
            return False
        code = error_code(job)
        job.meta.pop("error", None)
        job.meta["progress"] = 0
        job.meta["requeues"] = int(job.meta.get("requeues", 0)) + 1
        if job.retry_intervals is not None:  # it was queued with RQ retries: give them back
            job.retries_left = self.settings.job_retries
            if "max_attempts" in job.meta:
                job.meta["max_attempts"] = int(job.meta.get("attempts", 0)) + 1 + self.settings.job_retries
        try:
            self.registry(job.origin).requeue(job)
        except InvalidJobOperation:
            undo()
            outcome.skip(job.id, job.origin, CHANGED, "no longer in the failed registry (requeued or deleted "
                                                      "by someone else meanwhile)")
            return False
        except Exception:
            undo()
            raise
        outcome.done.append(job.id)
        log.info("dead letter job=%s queue=%s vendor=%s code=%s requeued", job.id, job.origin,
                 job.meta.get("vendor_id"), code)
        return True

    def _reopen_record(self, job: Job, outcome: Outcome) -> Callable[[], None] | None:
        payload = (job.kwargs or {}).get("payload") or {}
        vendor_id, record_id = payload.get("vendorId"), payload.get("recordId")
        if not vendor_id or not record_id:
            return _nothing
        record = self.db.get_record(vendor_id, record_id)
        if record is None:
            outcome.skip(job.id, job.origin, RECORD_MISSING, f"record {record_id!r} of vendor {vendor_id!r} "
                                                            "no longer exists")
            return None
        if record.get("current_job_id") != job.id:
            outcome.skip(job.id, job.origin, RECORD_SUPERSEDED,
                         f"record {record_id!r} was queued again since (job {record.get('current_job_id')}); "
                         "this job's result would be stale, so it is left failed")
            return None
        before = {"processing_status": record["processing_status"], "error_code": record["error_code"],
                  "error_message": record["error_message"]}
        self.db.update_record(vendor_id, record_id, {"processing_status": contracts.STATUS_QUEUED,
                                                     "error_code": None, "error_message": None}, job_id=job.id)

        def undo() -> None:
            self.db.update_record(vendor_id, record_id, before, job_id=job.id)
        return undo

    def _reopen_chunk(self, job: Job, outcome: Outcome) -> Callable[[], None] | None:
        batch_id, first_seq, last_seq = job.args
        batch = self.db.get_batch(batch_id)
        if batch is None:
            outcome.skip(job.id, job.origin, BATCH_MISSING, f"batch {batch_id} no longer exists")
            return None
        code = error_code(job)
        error = job.meta.get("error") or {}
        candidates = self.db.failed_items(batch_id, first_seq, last_seq, code)
        gone = [item for item in candidates
                if batch["source"] == "zip" and not Path(str(item["source"])).is_file()]
        seqs = [item["seq"] for item in candidates if item not in gone]
        reopened = self.db.reopen_items(batch_id, seqs, code) if seqs else []
        pending = self.db.pending_items(batch_id, first_seq, last_seq)
        if not pending:
            why = (f"{len(gone)} image(s) failed with {code} but their extracted files are gone; upload them "
                   "again" if gone else f"no image of items {first_seq}-{last_seq} is pending or failed with {code}")
            outcome.skip(job.id, job.origin, NOTHING_TO_RETRY, why)
            return None
        records = {item["seq"]: item["record_id"] for item in candidates if item["record_id"]}
        for seq in reopened:
            if seq in records:
                self.db.update_record(batch["vendor_id"], records[seq], {
                    "processing_status": contracts.STATUS_QUEUED, "error_code": None, "error_message": None,
                }, job_id=batch_id)
        log.info("dead letter job=%s batch=%s: %d image(s) back to pending, %d with files gone", job.id, batch_id,
                 len(reopened), len(gone))
        message = str(error.get("message") or "requeue failed")[:2000]

        def undo() -> None:
            failed = [{"seq": seq, "record_id": records.get(seq), "status": ITEM_FAILED, "error_code": code,
                       "error_message": message} for seq in reopened]
            self.db.record_item_outcomes(batch_id, failed)
            for seq in reopened:
                if seq in records:
                    self.db.update_record(batch["vendor_id"], records[seq], {
                        "processing_status": contracts.STATUS_FAILED, "error_code": code,
                        "error_message": message}, job_id=batch_id)
        return undo

    def _reopen_ingest(self, job: Job, outcome: Outcome) -> Callable[[], None] | None:
        batch_id, path = job.args[0], job.args[1]
        if not Path(path).is_file():
            outcome.skip(job.id, job.origin, SOURCE_GONE, "the uploaded ZIP was removed when its ingestion "
                                                          "failed; upload it again")
            return None
        batch = self.db.get_batch(batch_id)
        if batch is None:
            outcome.skip(job.id, job.origin, BATCH_MISSING, f"batch {batch_id} no longer exists")
            return None
        before = {"status": batch["status"], "error_code": batch["error_code"],
                  "error_message": batch["error_message"]}
        self.db.set_batch(batch_id, status=BATCH_QUEUED, error_code=None, error_message=None,
                          only_from=(BATCH_FAILED,))

        def undo() -> None:
            self.db.set_batch(batch_id, only_from=(BATCH_QUEUED,), **before)
        return undo


def _nothing() -> None:
    return None
