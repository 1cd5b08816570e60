"""`python -m service.cli cleanup`: delete finished work older than the retention (CLEANUP_RETENTION_DAYS).

The first design document asks for periodic cleanup of old processed records. What goes, once
its last change is older than the retention:

- record rows that are ``completed`` or ``failed`` (never ``queued`` or ``processing``), and the
  output file and thumbnails each points at when local storage holds them (``STORAGE_BACKEND=local``; Cloudinary
  keeps its own copies: delete those with Cloudinary's tools if you want them gone);
- batches that are ``completed``, ``completed_with_errors`` or ``failed`` with no image still
  ``pending``, with their image rows, their local output files and thumbnails, and their folder of extracted
  images and uploaded ZIP under ``UPLOAD_DIR`` when still there;
- hidden temporary files (``.<name>.<random>.tmp``) a killed upload left in local storage, once
  an hour old.

Safe to run twice, and next to live traffic: each DELETE repeats the conditions it was selected
by, so a record or batch queued again in the meantime stays, and only the files of rows that
were really deleted are removed. Missing files are fine. Redis needs nothing: RQ expires
finished jobs itself (JOB_RESULT_TTL_S, JOB_FAILURE_TTL_S).

The SQL lives here rather than in core/db because that package had an owner at the time; it
uses only the engine's statement helpers and portable SQL (SQLite and MySQL).
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from core.batch_outcomes import batch_dir
from core.batch_plan import zip_path
from core.config import Settings
from core.db.database import Database

log = logging.getLogger(__name__)

FINISHED_RECORD = ("completed", "failed")
FINISHED_BATCH = ("completed", "completed_with_errors", "failed")
PAGE = 500
TEMP_FILE_AGE_S = 3600
# A row's stored files: the output and the thumbnails kept beside it (jobs/previews.py).
_FILE_COLUMNS = ("output_url", "thumbnail_url", "source_thumbnail_url")


@dataclass
class CleanupResult:
    """What one pass deleted (or, with ``dry_run``, would delete)."""

    records: int = 0
    batches: int = 0
    batch_items: int = 0
    files: int = 0
    uploads: int = 0
    temp_files: int = 0

    def summary(self) -> dict[str, int]:
        """camelCase counts for the CLI's JSON line."""
        return {"records": self.records, "batches": self.batches, "batchItems": self.batch_items,
                "files": self.files, "uploads": self.uploads, "tempFiles": self.temp_files}


def _in(values: list[Any]) -> str:
    return ", ".join("?" for _ in values)


class Cleanup:
    """One pass over the database and local storage; see the module docstring."""

    def __init__(self, db: Database, settings: Settings, *, retention_days: float, dry_run: bool = False) -> None:
        if retention_days < 0:
            raise ValueError(f"the retention must be 0 days or more, not {retention_days}")
        self.db, self.settings, self.dry_run = db, settings, dry_run
        cutoff = datetime.now(UTC) - timedelta(days=retention_days)
        self.cutoff = cutoff.strftime("%Y-%m-%d %H:%M:%S.%f")  # the engine's timestamp format
        self.result = CleanupResult()
        local = settings.effective_storage_backend == "local"
        self.storage_root = Path(settings.storage_dir).resolve() if local else None
        self.files_prefix = f"{settings.public_base_url.rstrip('/')}/files/"

    def run(self) -> CleanupResult:
        """Delete everything due; returns the counts."""
        self._records()
        self._batches()
        self._temp_files()
        return self.result

    # --- local files ----------------------------------------------------------------------
    def _local_path(self, url: str | None) -> Path | None:
        """The local-storage file behind an output URL, or None (Cloudinary, or not ours)."""
        if self.storage_root is None or not url or not url.startswith(self.files_prefix):
            return None
        path = (self.storage_root / unquote(url[len(self.files_prefix):])).resolve()
        return path if path.is_relative_to(self.storage_root) and path != self.storage_root else None

    def _delete_files(self, urls: list[str | None]) -> None:
        for url in urls:
            path = self._local_path(url)
            if path is None or not path.is_file():
                continue
            self.result.files += 1
            if not self.dry_run:
                path.unlink(missing_ok=True)
                self._prune_empty_parents(path.parent)

    def _prune_empty_parents(self, folder: Path) -> None:
        assert self.storage_root is not None
        while folder != self.storage_root and folder.is_relative_to(self.storage_root):
            try:
                folder.rmdir()  # only if empty
            except OSError:
                return
            folder = folder.parent

    def _temp_files(self) -> None:
        if self.storage_root is None or not self.storage_root.is_dir():
            return
        too_old = time.time() - TEMP_FILE_AGE_S
        for path in self.storage_root.rglob(".*.tmp"):
            try:
                if path.is_file() and path.stat().st_mtime < too_old:
                    self.result.temp_files += 1
                    if not self.dry_run:
                        path.unlink(missing_ok=True)
            except OSError as exc:  # removed meanwhile by its own upload
                log.debug("cleanup: skipped %s: %s", path, exc)

    # --- records --------------------------------------------------------------------------
    def _records(self) -> None:
        after = 0
        while True:
            page = self.db._fetch_all(
                "SELECT id, output_url, thumbnail_url, source_thumbnail_url FROM data_records"
                " WHERE processing_status IN (?, ?) AND updated_at < ?"
                " AND id > ? ORDER BY id LIMIT ?", (*FINISHED_RECORD, self.cutoff, after, PAGE))
            if not page:
                return
            after = page[-1]["id"]
            ids = [row["id"] for row in page]
            if self.dry_run:
                deleted = page
            else:
                # The same conditions again: a record queued again since the SELECT stays.
                self.db._write(f"DELETE FROM data_records WHERE id IN ({_in(ids)}) AND processing_status IN (?, ?)"
                               " AND updated_at < ?", (*ids, *FINISHED_RECORD, self.cutoff))
                kept = {row["id"] for row in self.db._fetch_all(
                    f"SELECT id FROM data_records WHERE id IN ({_in(ids)})", tuple(ids))}
                deleted = [row for row in page if row["id"] not in kept]
            self.result.records += len(deleted)
            self._delete_files([row[column] for row in deleted for column in _FILE_COLUMNS])

    # --- batches --------------------------------------------------------------------------
    def _due_batches(self, after: str) -> list[dict[str, Any]]:
        return self.db._fetch_all(
            "SELECT batch_id FROM batches b WHERE status IN (?, ?, ?) AND updated_at < ? AND batch_id > ?"
            " AND NOT EXISTS (SELECT 1 FROM batch_items i WHERE i.batch_id = b.batch_id AND i.status = 'pending')"
            " ORDER BY batch_id LIMIT ?", (*FINISHED_BATCH, self.cutoff, after, PAGE))

    def _batches(self) -> None:
        after = ""
        while page := self._due_batches(after):
            after = page[-1]["batch_id"]
            for row in page:
                self._batch(row["batch_id"])

    def _batch(self, batch_id: str) -> None:
        urls = [item[column] for item in self.db._fetch_all(
            "SELECT output_url, thumbnail_url, source_thumbnail_url FROM batch_items"
            " WHERE batch_id = ? AND output_url IS NOT NULL", (batch_id,)) for column in _FILE_COLUMNS]
        if not self.dry_run:
            gone = self.db._write(
                "DELETE FROM batches WHERE batch_id = ? AND status IN (?, ?, ?) AND updated_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM batch_items i WHERE i.batch_id = ? AND i.status = 'pending')",
                (batch_id, *FINISHED_BATCH, self.cutoff, batch_id))
            if not gone:  # reopened (dead letters requeued) since the SELECT
                return
        items = self.db._fetch_all("SELECT COUNT(*) AS n FROM batch_items WHERE batch_id = ?", (batch_id,))[0]["n"]
        if not self.dry_run:
            self.db._write("DELETE FROM batch_items WHERE batch_id = ?", (batch_id,))
        self.result.batches += 1
        self.result.batch_items += int(items)
        self._delete_files(urls)
        extracted, upload = batch_dir(self.settings, batch_id), zip_path(self.settings.upload_dir, batch_id)
        if extracted.is_dir() or upload.is_file():
            self.result.uploads += 1
            if not self.dry_run:
                shutil.rmtree(extracted, ignore_errors=True)
                upload.unlink(missing_ok=True)


def cleanup(db: Database, settings: Settings, *, retention_days: float | None = None,
            dry_run: bool = False) -> CleanupResult:
    """One cleanup pass with ``retention_days`` (default CLEANUP_RETENTION_DAYS)."""
    days = settings.cleanup_retention_days if retention_days is None else retention_days
    result = Cleanup(db, settings, retention_days=days, dry_run=dry_run).run()
    log.info("cleanup (%s days%s): %s", days, ", dry run" if dry_run else "", asdict(result))
    return result
