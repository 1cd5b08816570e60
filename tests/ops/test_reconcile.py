"""ops.reconcile against a real redis-server and SQLite: what Redis lost is queued again once.

The end-to-end proof (Redis without persistence killed mid-work, `python -m service.cli
reconcile`, workers finish everything) is tests/reliability/test_redis_faults.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq.job import Job, JobStatus

from core import contracts, rqjson
from core.batch_plan import BatchRef, chunk_job_id, enqueue_chunk, ingest_job_id, zip_path
from core.config import Settings
from core.db.batches import BATCH_FAILED, BATCH_PROCESSING, BATCH_QUEUED, ITEM_PENDING
from core.db.database import Database, connect
from core.enqueue import JobSpec, enqueue_jobs
from ops.reconcile import JOB_LOST, SOURCE_MISSING, reconcile


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "REDIS_URL": redis_url,
                              "UPLOAD_DIR": str(tmp_path / "uploads"), "STORAGE_DIR": str(tmp_path / "files"),
                              "BATCH_CHUNK_SIZE": "3"})


@pytest.fixture
def db(settings: Settings) -> Database:
    database = connect(settings.database_url)
    database.migrate()
    database.create_vendor("acme", "Acme")
    return database


def payload(record_id: str) -> dict[str, object]:
    return {"vendorId": "acme", "projectId": "p1", "recordId": record_id, "photoUrl": "https://x/a.jpg",
            "mode": "square", "options": {}}


def submit(db: Database, conn: redis.Redis, settings: Settings, record_id: str, job_id: str) -> None:
    """What the API's submit does: the row (with its payload), then the RQ job."""
    db.queue_records("acme", "p1", [(record_id, job_id, "https://x/a.jpg")], job_kind=contracts.KIND_FACE_CROP,
                     payloads=[payload(record_id)])
    enqueue_jobs(rqjson.queue(contracts.QUEUE_FACE_CROP, connection=conn), contracts.JOB_CROP_FACE,
                 [JobSpec(job_id, payload(record_id), "acme", record_id)], settings)


def test_lost_single_jobs_are_queued_again_with_their_payload_once(
        db: Database, redis_conn: redis.Redis, settings: Settings) -> None:
    submit(db, redis_conn, settings, "r1", "job-1")
    submit(db, redis_conn, settings, "r2", "job-2")
    redis_conn.flushall()  # Redis restarted without persistence
    submit(db, redis_conn, settings, "r3", "job-3")  # submitted after the restart: alive

    dry = reconcile(db, redis_conn, settings, older_than_s=0, dry_run=True)
    assert (dry.records_checked, dry.records_requeued, dry.records_alive) == (3, 2, 1)
    assert not Job.exists("job-1", connection=redis_conn)  # a dry run changes nothing

    result = reconcile(db, redis_conn, settings, older_than_s=0)
    assert (result.records_requeued, result.records_alive, result.records_failed) == (2, 1, 0)
    job = rqjson.fetch("job-1", connection=redis_conn)
    assert job.kwargs == {"payload": payload("r1")}
    assert job.meta["vendor_id"] == "acme" and job.retries_left == settings.job_retries
    assert job.failure_callback is not None  # same callbacks as a submitted job
    queue = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn)
    assert sorted(queue.job_ids) == ["job-1", "job-2", "job-3"]
    again = reconcile(db, redis_conn, settings, older_than_s=0)
    assert (again.records_requeued, again.records_alive) == (0, 3)  # running twice adds nothing
    assert len(queue.job_ids) == 3


def test_job_taken_by_a_worker_that_died_before_starting_it_is_put_back(
        db: Database, redis_conn: redis.Redis, settings: Settings) -> None:
    submit(db, redis_conn, settings, "r1", "job-1")
    queue = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=redis_conn)
    assert redis_conn.lpop(queue.key) == b"job-1"  # a multi-queue worker's BLPOP, then SIGKILL
    assert rqjson.fetch("job-1", connection=redis_conn).get_status() == JobStatus.QUEUED
    result = reconcile(db, redis_conn, settings, older_than_s=0, confirm_s=0.1)
    assert (result.jobs_restored, result.records_requeued, result.records_alive) == (1, 0, 0)
    assert queue.job_ids == ["job-1"]
    assert reconcile(db, redis_conn, settings, older_than_s=0).jobs_restored == 0  # once


def test_rows_changed_recently_are_left_alone(db: Database, redis_conn: redis.Redis, settings: Settings) -> None:
    submit(db, redis_conn, settings, "r1", "job-1")
    redis_conn.flushall()
    result = reconcile(db, redis_conn, settings, older_than_s=3600)
    assert result.records_checked == 0 and not Job.exists("job-1", connection=redis_conn)


def test_row_without_payload_fails_job_lost(db: Database, redis_conn: redis.Redis, settings: Settings) -> None:
    db.queue_record("acme", "p1", "old", job_id="job-old", job_kind=contracts.KIND_FACE_CROP, source_url=None)
    result = reconcile(db, redis_conn, settings, older_than_s=0)
    assert result.records_failed == 1
    record = db.get_record("acme", "old")
    assert record is not None
    assert (record["processing_status"], record["error_code"]) == (contracts.STATUS_FAILED, JOB_LOST)


def test_job_failed_for_good_but_row_not_told_gets_the_jobs_error(
        db: Database, redis_conn: redis.Redis, settings: Settings) -> None:
    submit(db, redis_conn, settings, "r1", "job-1")
    job = rqjson.fetch("job-1", connection=redis_conn)
    job.meta["error"] = {"code": "WORKER_DIED", "message": "killed by signal 9", "final": True}
    job.save_meta()
    job.set_status(JobStatus.FAILED)
    result = reconcile(db, redis_conn, settings, older_than_s=0)
    assert result.records_failed == 1
    record = db.get_record("acme", "r1")
    assert record is not None
    assert (record["processing_status"], record["error_code"]) == (contracts.STATUS_FAILED, "WORKER_DIED")


def url_batch(db: Database, batch_id: str, images: int) -> BatchRef:
    db.create_batch(batch_id, "acme", "p1", source="urls", priority=5, mode="square", options={},
                    status=BATCH_PROCESSING)
    db.add_batch_items(batch_id, [{"seq": i, "record_id": f"{batch_id}-r{i}", "source": f"https://x/{i}.jpg",
                                   "status": ITEM_PENDING} for i in range(images)])
    return BatchRef(batch_id, "acme", 5)


def test_pending_batch_images_no_live_chunk_covers_are_queued_again(
        db: Database, redis_conn: redis.Redis, settings: Settings) -> None:
    ref = url_batch(db, "b1", 7)
    enqueue_chunk(redis_conn, ref, 0, 2, settings)  # still alive: items 0-2 covered
    result = reconcile(db, redis_conn, settings, older_than_s=0)
    assert (result.chunks_requeued, result.images_requeued) == (2, 4)  # 3-5 and 6
    jobs = {job_id: rqjson.fetch(job_id, connection=redis_conn).args
            for job_id in (chunk_job_id("b1", 3), chunk_job_id("b1", 6))}
    assert jobs == {chunk_job_id("b1", 3): ["b1", 3, 5], chunk_job_id("b1", 6): ["b1", 6, 6]}
    assert reconcile(db, redis_conn, settings, older_than_s=0).chunks_requeued == 0


def test_batch_record_left_behind_by_a_lost_mirror_write_gets_its_images_outcome(
        db: Database, redis_conn: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import tasks

    ref = url_batch(db, "b2", 2)
    db.queue_records("acme", "p1", [("b2-r0", "b2", "https://x/0.jpg"), ("b2-r1", "b2", "https://x/1.jpg")],
                     job_kind=contracts.KIND_BATCH_FACE_CROP)
    # The chunk wrote both items' outcomes, then lost the database before the record rows.
    db.record_item_outcomes("b2", [
        {"seq": 0, "record_id": "b2-r0", "source": "https://x/0.jpg", "status": "completed",
         "output_url": "http://files/b2/0.jpg", "face_detected": True, "face_count": 1,
         "face_box": {"x": 1, "y": 2, "width": 3, "height": 4}, "output_width": 300, "output_height": 300},
        {"seq": 1, "record_id": "b2-r1", "source": "https://x/1.jpg", "status": "failed",
         "error_code": "NO_FACE", "error_message": "no face"}])
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("STORAGE_DIR", settings.storage_dir)
    tasks.context.cache_clear()
    try:
        result = reconcile(db, redis_conn, settings, older_than_s=0)
    finally:
        tasks.context.cache_clear()
    assert result.records_mirrored == 2 and ref.batch_id == "b2"
    done, failed = db.get_record("acme", "b2-r0"), db.get_record("acme", "b2-r1")
    assert done is not None and failed is not None
    assert (done["processing_status"], done["output_url"]) == (contracts.STATUS_COMPLETED, "http://files/b2/0.jpg")
    assert (failed["processing_status"], failed["error_code"]) == (contracts.STATUS_FAILED, "NO_FACE")
    assert reconcile(db, redis_conn, settings, older_than_s=0).records_mirrored == 0


def test_chunks_waiting_for_a_rate_limit_slot_cover_their_images(
        db: Database, redis_conn: redis.Redis, settings: Settings) -> None:
    one_slot = Settings.from_env({"BATCH_VENDOR_CONCURRENCY": "1", "BATCH_CHUNK_SIZE": "3"})
    ref = url_batch(db, "b3", 6)
    enqueue_chunk(redis_conn, ref, 0, 2, one_slot)
    enqueue_chunk(redis_conn, ref, 3, 5, one_slot)
    assert rqjson.fetch(chunk_job_id("b3", 3), connection=redis_conn).get_status() == JobStatus.RATE_LIMITED
    result = reconcile(db, redis_conn, settings, older_than_s=0)
    assert (result.chunks_requeued, result.images_requeued, result.jobs_restored) == (0, 0, 0)


def test_zip_batch_whose_ingest_job_was_lost(db: Database, redis_conn: redis.Redis, settings: Settings) -> None:
    for batch_id, keep_upload in (("zkept", True), ("zgone", False)):
        db.create_batch(batch_id, "acme", "p1", source="zip", priority=5, mode="square", options={},
                        status=BATCH_QUEUED)
        if keep_upload:
            path = zip_path(settings.upload_dir, batch_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"PK\x05\x06" + bytes(18))
    result = reconcile(db, redis_conn, settings, older_than_s=0)
    assert (result.ingests_requeued, result.batches_failed) == (1, 1)
    # A worker took the ingestion job and lost Redis before starting it: put back once.
    assert redis_conn.lpop(rqjson.queue(contracts.QUEUE_BATCH_INGESTION, connection=redis_conn).key) is not None
    again = reconcile(db, redis_conn, settings, older_than_s=0, confirm_s=0.1)
    assert (again.ingests_requeued, again.jobs_restored) == (0, 1)
    assert rqjson.queue(contracts.QUEUE_BATCH_INGESTION, connection=redis_conn).job_ids == [ingest_job_id("zkept")]
    assert rqjson.fetch(ingest_job_id("zkept"), connection=redis_conn).args[0] == "zkept"
    gone = db.get_batch("zgone")
    assert gone is not None and (gone["status"], gone["error_code"]) == (BATCH_FAILED, SOURCE_MISSING)


def test_cli_prints_the_summary(db: Database, redis_conn: redis.Redis, settings: Settings,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import cli

    submit(db, redis_conn, settings, "r1", "job-1")
    redis_conn.flushall()
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    out = CliRunner().invoke(cli, ["reconcile", "--older-than", "0"])
    assert out.exit_code == 0, out.output
    assert '"records_requeued": 1' in out.output and '"dryRun": false' in out.output
    assert Job.exists("job-1", connection=redis_conn)
