"""The records database's tables and migrations (``python -m service.cli migrate``).

``migrate`` creates what is missing and adds columns added after a table's first release, on
old and new databases alike; it is idempotent and safe when several processes run it at once.
"""
from __future__ import annotations

from typing import Any

from core.db.engine import _INTEGRITY, Engine, _now, log

SCHEMA_VERSION = 6  # 2: vendors.webhook_secret, batches.callback_url; 3: data_records.job_payload;
# 4: batches.canceled, batches.operation; 5: thumbnails, faces and roll of records and batch items;
# 6: source size of records and batch items

# Logical schema; {autoinc}, {ts} and {bool} are filled in by the dialect.
_TABLES: list[tuple[str, list[str], list[tuple[str, str]]]] = [
    ("schema_version", ["version INT NOT NULL PRIMARY KEY", "applied_at {ts} NOT NULL"], []),
    ("vendors", [
        "id VARCHAR(64) NOT NULL PRIMARY KEY", "name VARCHAR(255) NOT NULL",
        "created_at {ts} NOT NULL", "settings_json TEXT NULL",
    ], []),
    ("api_keys", [
        "id {autoinc}", "vendor_id VARCHAR(64) NOT NULL", "key_prefix VARCHAR(16) NOT NULL",
        # sha256 hex of the key. Keys are 32-byte random tokens, so a fast unsalted hash is
        # right: there is nothing to brute-force, and lookups by hash stay one index probe.
        "key_hash CHAR(64) NOT NULL UNIQUE", "created_at {ts} NOT NULL", "revoked_at {ts} NULL",
        "FOREIGN KEY (vendor_id) REFERENCES vendors (id)",
    ], [("ix_api_keys_vendor", "vendor_id")]),
    ("data_records", [
        "id {autoinc}", "vendor_id VARCHAR(64) NOT NULL", "project_id VARCHAR(128) NOT NULL",
        "record_id VARCHAR(128) NOT NULL", "processing_status VARCHAR(16) NOT NULL",
        "job_kind VARCHAR(32) NULL", "current_job_id VARCHAR(64) NULL", "source_url TEXT NULL",
        "output_url TEXT NULL", "face_detected {bool} NULL", "face_count INT NULL",
        "face_box TEXT NULL", "output_width INT NULL", "output_height INT NULL",
        "error_code VARCHAR(64) NULL", "error_message TEXT NULL", "attempts INT NOT NULL DEFAULT 0",
        "created_at {ts} NOT NULL", "updated_at {ts} NOT NULL", "completed_at {ts} NULL",
        "UNIQUE (vendor_id, record_id)",
    ], [("ix_records_status", "vendor_id, processing_status"),
        ("ix_records_project", "vendor_id, project_id")]),
]
_TABLES += [  # batches and their items (core/db/batches.py)
    ("batches", [
        "batch_id VARCHAR(64) NOT NULL PRIMARY KEY", "vendor_id VARCHAR(64) NOT NULL",
        "project_id VARCHAR(128) NOT NULL", "status VARCHAR(32) NOT NULL", "source VARCHAR(16) NOT NULL",
        "image_count INT NOT NULL DEFAULT 0", "queued INT NOT NULL DEFAULT 0",
        "processed INT NOT NULL DEFAULT 0", "failed INT NOT NULL DEFAULT 0",
        "skipped INT NOT NULL DEFAULT 0", "priority INT NOT NULL DEFAULT 5", "mode VARCHAR(16) NOT NULL",
        "options_json TEXT NULL", "error_code VARCHAR(64) NULL", "error_message TEXT NULL",
        "created_at {ts} NOT NULL", "updated_at {ts} NOT NULL", "completed_at {ts} NULL",
    ], [("ix_batches_vendor", "vendor_id, status")]),
    ("batch_items", [
        "batch_id VARCHAR(64) NOT NULL", "seq INT NOT NULL", "record_id VARCHAR(128) NULL",
        "entry_name VARCHAR(1024) NULL", "source TEXT NULL", "status VARCHAR(16) NOT NULL",
        "output_url TEXT NULL", "face_detected {bool} NULL", "face_count INT NULL", "face_box TEXT NULL",
        "output_width INT NULL", "output_height INT NULL", "error_code VARCHAR(64) NULL",
        "error_message TEXT NULL", "attempts INT NOT NULL DEFAULT 0", "updated_at {ts} NULL",
        "PRIMARY KEY (batch_id, seq)",
    ], [("ix_batch_items_status", "batch_id, status")]),
]

# Columns added after their table's first release. CREATE TABLE IF NOT EXISTS never adds a
# column to an existing table, so migrate() adds each one that is missing, on old and new
# databases alike: (table, column, definition).
_ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("vendors", "webhook_secret", "VARCHAR(128) NULL"),  # HMAC key of the vendor's completion webhooks
    ("batches", "callback_url", "TEXT NULL"),  # the batch's completion webhook (README "Clients")
    # The queued job's payload (JSON), so `reconcile` can queue it again when Redis lost it.
    ("data_records", "job_payload", "TEXT NULL"),
    ("batches", "canceled", "INT NOT NULL DEFAULT 0"),  # items canceled by POST /api/batch/<id>/cancel
    # What the batch does to each image (contracts.BATCH_OPERATIONS); rows from before it crop faces.
    ("batches", "operation", "VARCHAR(16) NOT NULL DEFAULT 'cropFace'"),
    # An ID photo's compliance report (JSON; jobs/imaging/report.py), decoded by Records.get_record.
    ("data_records", "report_json", "TEXT NULL"),
    # Previews of the output and the source (jobs/imaging/thumbnails.py), stored beside the output.
    ("data_records", "thumbnail_url", "TEXT NULL"),
    ("data_records", "source_thumbnail_url", "TEXT NULL"),
    ("batch_items", "thumbnail_url", "TEXT NULL"),
    ("batch_items", "source_thumbnail_url", "TEXT NULL"),
    # Every face found (JSON list of box, score, landmarks) and the chosen face's eye-line angle.
    ("data_records", "faces_json", "TEXT NULL"),
    ("data_records", "roll_degrees", "DOUBLE PRECISION NULL"),
    ("batch_items", "faces_json", "TEXT NULL"),
    ("batch_items", "roll_degrees", "DOUBLE PRECISION NULL"),
    # The photo's size after EXIF rotation: the space of face_box and faces_json (the console
    # draws the boxes over the source's thumbnail by it).
    ("data_records", "source_width", "INT NULL"),
    ("data_records", "source_height", "INT NULL"),
    ("batch_items", "source_width", "INT NULL"),
    ("batch_items", "source_height", "INT NULL"),
]


class Schema(Engine):
    """Creating and upgrading the tables."""

    def migrate(self) -> None:
        """Create missing tables and indexes and record the schema version (idempotent)."""
        def work(cur: Any) -> None:
            for table, columns, indexes in _TABLES:
                for statement in self.dialect.create_table(table, columns, indexes):
                    self._execute(cur, statement)
            for table, column, definition in _ADDED_COLUMNS:
                self._add_column(cur, table, column, definition)
            self._execute(cur, "SELECT 1 FROM schema_version WHERE version = ?", (SCHEMA_VERSION,))
            if cur.fetchone() is None:
                try:
                    self._execute(cur, "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                                  (SCHEMA_VERSION, _now()))
                except Exception as exc:  # another process migrated at the same moment
                    if self.dialect.classify(exc) != _INTEGRITY:
                        raise
        self._run(work)

    def _columns(self, cur: Any, table: str) -> set[str]:
        self._execute(cur, f"SELECT * FROM {table} WHERE 1 = 0")
        cur.fetchall()
        return {str(d[0]).lower() for d in cur.description}

    def _add_column(self, cur: Any, table: str, column: str, definition: str) -> None:
        """ALTER TABLE ... ADD COLUMN unless the column exists (idempotent, race-tolerant)."""
        if column in self._columns(cur, table):
            return
        try:
            self._execute(cur, f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        except Exception:
            if column not in self._columns(cur, table):  # not another migrate() adding it meanwhile
                raise
        log.info("schema: added column %s.%s", table, column)
