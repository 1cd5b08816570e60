"""ops.cleanup on SQLite and MariaDB: finished work past the retention goes, with its local files;
unfinished work, recent work and anything queued again meanwhile stays; a second pass finds nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core import contracts
from core.batch_outcomes import batch_dir
from core.batch_plan import zip_path
from core.config import Settings
from core.db.batches import BATCH_COMPLETED, BATCH_FAILED, ITEM_COMPLETED, ITEM_PENDING
from core.db.database import Database
from ops.cleanup import cleanup
from tests.conftest import ROOT
from tests.records_db import db  # noqa: F401 (a fixture, found by name)

BASE = "http://api.example.com"


@pytest.fixture
def acme(db: Database) -> Database:  # noqa: F811 (the fixture imported above)
    """``db`` with vendor acme and no records or batches (MariaDB's database lives per module)."""
    for table in ("batch_items", "batches", "data_records"):
        db._write(f"DELETE FROM {table}")
    if db.get_vendor("acme") is None:
        db.create_vendor("acme", "Acme")
    return db


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"STORAGE_DIR": str(tmp_path / "files"), "UPLOAD_DIR": str(tmp_path / "uploads"),
                              "PUBLIC_BASE_URL": BASE, "STORAGE_BACKEND": "local"})


def stored(settings: Settings, key: str) -> str:
    """A local output file and its URL, as LocalStorage writes them."""
    path = Path(settings.storage_dir) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"jpeg")
    return f"{BASE}/files/{key}"


def age(database: Database, table: str, where: str, days: float) -> None:
    when = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S.%f")
    database._write(f"UPDATE {table} SET updated_at = ? WHERE {where}", (when,))


def record(database: Database, settings: Settings, record_id: str, status: str, days: float) -> Path:
    database.queue_record("acme", "p1", record_id, job_id=f"job-{record_id}", job_kind=contracts.KIND_FACE_CROP,
                    source_url="https://x/a.jpg")
    url = stored(settings, f"acme/p1/{record_id}/face-crop-job-{record_id}.jpg")
    if status != "queued":
        database.update_record("acme", record_id, {"processing_status": status, "output_url": url})
    age(database, "data_records", f"record_id = '{record_id}'", days)
    return Path(settings.storage_dir) / f"acme/p1/{record_id}/face-crop-job-{record_id}.jpg"


def batch(database: Database, settings: Settings, batch_id: str, status: str, days: float, *,
          pending: bool = False) -> Path:
    database.create_batch(batch_id, "acme", "p1", source="zip", priority=5, mode="square", options={})
    database.add_batch_items(batch_id, [{"seq": seq, "record_id": None, "entry_name": f"{seq}.jpg", "source": None,
                                   "status": ITEM_PENDING} for seq in range(3)])
    for seq in range(2) if pending else range(3):
        database._write("UPDATE batch_items SET status = ?, output_url = ? WHERE batch_id = ? AND seq = ?",
                  (ITEM_COMPLETED, stored(settings, f"acme/batches/{batch_id}/{seq}.jpg"), batch_id, seq))
    database.set_batch(batch_id, status=status)
    age(database, "batches", f"batch_id = '{batch_id}'", days)
    extracted = batch_dir(settings, batch_id)
    extracted.mkdir(parents=True)
    (extracted / "2.jpg").write_bytes(b"jpeg")
    zip_path(settings.upload_dir, batch_id).parent.mkdir(parents=True, exist_ok=True)
    zip_path(settings.upload_dir, batch_id).write_bytes(b"PK")
    return Path(settings.storage_dir) / f"acme/batches/{batch_id}/0.jpg"


def test_old_finished_work_goes_and_nothing_else(acme: Database, settings: Settings) -> None:
    database = acme
    old_done = record(database, settings, "old-done", "completed", 100)
    old_failed = record(database, settings, "old-failed", "failed", 100)
    old_queued = record(database, settings, "old-queued", "queued", 100)  # unfinished: never touched
    old_processing = record(database, settings, "old-processing", "processing", 100)
    recent_done = record(database, settings, "recent-done", "completed", 10)
    done_batch = batch(database, settings, "b-done", BATCH_COMPLETED, 100)
    failed_with_pending = batch(database, settings, "b-failed-pending", BATCH_FAILED, 100, pending=True)
    recent_batch = batch(database, settings, "b-recent", BATCH_COMPLETED, 10)
    temp = Path(settings.storage_dir) / "acme" / ".x.jpg.abc.tmp"
    temp.write_bytes(b"partial")
    os.utime(temp, (time.time() - 7200, time.time() - 7200))

    dry = cleanup(database, settings, retention_days=90, dry_run=True)
    assert dry.summary() == {"records": 2, "batches": 1, "batchItems": 3, "files": 5, "uploads": 1, "tempFiles": 1}
    assert old_done.exists() and database.get_record("acme", "old-done") is not None  # a dry run changes nothing

    result = cleanup(database, settings, retention_days=90)
    assert result.summary() == dry.summary()
    assert database.get_record("acme", "old-done") is None and database.get_record("acme", "old-failed") is None
    assert not old_done.exists() and not old_failed.exists() and not old_done.parent.exists()
    for kept in ("old-queued", "old-processing", "recent-done"):
        assert database.get_record("acme", kept) is not None, kept
    assert old_queued.exists() and old_processing.exists() and recent_done.exists()
    assert database.get_batch("b-done") is None and database.batch_items("b-done") == [] and not done_batch.exists()
    assert not batch_dir(settings, "b-done").exists() and not zip_path(settings.upload_dir, "b-done").exists()
    assert database.get_batch("b-failed-pending") is not None and failed_with_pending.exists()  # an image still runs
    assert len(database.batch_items("b-failed-pending")) == 3 and batch_dir(settings, "b-failed-pending").exists()
    assert database.get_batch("b-recent") is not None and recent_batch.exists()
    assert not temp.exists()

    again = cleanup(database, settings, retention_days=90)
    assert again.summary() == {"records": 0, "batches": 0, "batchItems": 0, "files": 0, "uploads": 0, "tempFiles": 0}


def test_a_record_queued_again_after_it_was_selected_stays(acme: Database, settings: Settings) -> None:
    database = acme
    old = record(database, settings, "r1", "completed", 100)
    original = database._fetch_all

    def requeue_between_select_and_delete(sql: str, params: tuple[object, ...]) -> list[dict[str, object]]:
        rows = original(sql, params)
        if sql.startswith("SELECT id, output_url,") and "FROM data_records" in sql and rows:  # submitted again
            database.queue_record("acme", "p1", "r1", job_id="job-new", job_kind=contracts.KIND_FACE_CROP,
                            source_url="https://x/b.jpg")
        return rows

    database._fetch_all = requeue_between_select_and_delete  # type: ignore[method-assign]
    result = cleanup(database, settings, retention_days=90)
    assert result.records == 0 and result.files == 0
    assert database.get_record("acme", "r1")["processing_status"] == "queued" and old.exists()  # type: ignore[index]


def test_storage_elsewhere_keeps_files_and_cloudinary_urls_are_left_alone(acme: Database, tmp_path: Path) -> None:
    database = acme
    settings = Settings.from_env({"STORAGE_DIR": str(tmp_path / "files"), "PUBLIC_BASE_URL": BASE,
                                  "CLOUDINARY_URL": "cloudinary://k:s@cloud", "UPLOAD_DIR": str(tmp_path / "up")})
    path = record(database, settings, "r1", "completed", 100)
    assert cleanup(database, settings, retention_days=90).summary()["records"] == 1
    assert path.exists()  # not local storage: the file is not ours to delete


def test_the_cli_runs_a_pass_and_reports_json(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "STORAGE_DIR": str(tmp_path / "f"),
           "UPLOAD_DIR": str(tmp_path / "u"), "CLEANUP_RETENTION_DAYS": "30"}
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "service.cli", "cleanup", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"dryRun": True, "retentionDays": 30, "records": 0, "batches": 0,
                                      "batchItems": 0, "files": 0, "uploads": 0, "tempFiles": 0}
