"""Job error classes: every failure a job can meet, as permanent or transient, with a code.

Adapters (fetch, storage, records, face_crop) turn library errors into these; tasks raise
them; RQ's failure callback (jobs.tasks.on_job_failure) reads ``permanent`` to decide whether
the job may be retried, and ``code`` is what vendors see in job status and the record row.
"""
from __future__ import annotations


class JobError(Exception):
    """Base class: a failure with a stable machine-readable code and a human message."""

    permanent: bool = False
    code: str = "JOB_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class PermanentJobError(JobError):
    """Retrying cannot help (bad URL, not an image, no face): fail at once."""

    permanent = True
    code = "PERMANENT_ERROR"


class TransientJobError(JobError):
    """May succeed later (timeouts, 5xx, database or storage briefly down): RQ retries."""

    permanent = False
    code = "TRANSIENT_ERROR"


# Permanent error codes
INVALID_URL = "INVALID_URL"  # not http(s), unparsable, credentials in URL
FORBIDDEN_ADDRESS = "FORBIDDEN_ADDRESS"  # resolves to private/loopback/link-local/metadata
IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"  # 404/410 or other 4xx from the image host
IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"  # bytes over FETCH_MAX_BYTES or pixels over MAX_IMAGE_PIXELS
NOT_AN_IMAGE = "NOT_AN_IMAGE"  # content is not a decodable JPEG/PNG/WebP
NO_FACE = "NO_FACE"  # no face found where the mode requires one
MULTIPLE_FACES = "MULTIPLE_FACES"  # ID photo: more than one face of comparable size
FACE_TOO_SMALL = "FACE_TOO_SMALL"  # ID photo: the head would be enlarged beyond id_photo.MAX_UPSCALE
FACE_CUT_OFF = "FACE_CUT_OFF"  # ID photo: the head touches the photo's edge (hair or chin cut off)
OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"  # ID photo: no JPEG quality fits options.maxBytes
RECORD_TOO_LARGE = "RECORD_TOO_LARGE"  # one field alone exceeds the DB packet limit
STORAGE_REJECTED = "STORAGE_REJECTED"  # storage refused the upload (credentials, config, bad file)
REMBG_REJECTED = "REMBG_REJECTED"  # a rembg server refused the image itself (4xx)
# ZIP batch ingest, whole archive (core/zipstream/archive.py ArchiveError; per-entry skip codes live there)
NOT_A_ZIP = "NOT_A_ZIP"  # the upload is not a ZIP archive (empty, an image, another archive type)
TRUNCATED_ARCHIVE = "TRUNCATED_ARCHIVE"  # the ZIP ends early (incomplete upload)
CORRUPT_ARCHIVE = "CORRUPT_ARCHIVE"  # the ZIP's structure is broken past recovery
TOO_MANY_ENTRIES = "TOO_MANY_ENTRIES"  # more entries than ZIP_MAX_ENTRIES
ARCHIVE_TOO_LARGE = "ARCHIVE_TOO_LARGE"  # images over ZIP_MAX_TOTAL_BYTES, or an unskippable bomb
# Transient error codes
FETCH_FAILED = "FETCH_FAILED"  # timeout, connection error, 5xx, 429
STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
REMBG_UNAVAILABLE = "REMBG_UNAVAILABLE"  # every rembg instance failed, timed out or is cooling down
JOB_TIMEOUT = "JOB_TIMEOUT"
WORKER_DIED = "WORKER_DIED"
# Job outcomes the settler and the operator tools write
RECORD_SUPERSEDED = "RECORD_SUPERSEDED"  # permanent: a newer job owns the record; this result would be stale
UNEXPECTED_ERROR = "UNEXPECTED_ERROR"  # transient: an exception no adapter classified (a bug: see the log)
JOB_LOST = "JOB_LOST"  # reconcile: Redis lost the job (restart without AOF); requeued from the database
CANCELED = "CANCELED"  # permanent: the vendor canceled the job or its batch before it ran
# Batches
NO_IMAGES = "NO_IMAGES"  # permanent: the ZIP holds no usable image
BATCH_NOT_FOUND = "BATCH_NOT_FOUND"  # permanent: the batch row is gone
SOURCE_MISSING = "SOURCE_MISSING"  # permanent: an extracted image or the upload is gone from UPLOAD_DIR
# Webhook delivery
WEBHOOK_FAILED = "WEBHOOK_FAILED"  # transient: not answered 2xx, timeout, connection refused
WEBHOOK_SECRET_MISSING = "WEBHOOK_SECRET_MISSING"  # permanent: the vendor has no signing secret
# Per-entry skip codes of a ZIP batch (core/zipstream/entries.py): the entry is skipped, not the batch
UNSAFE_PATH = "UNSAFE_PATH"
NESTED_ARCHIVE = "NESTED_ARCHIVE"
ENCRYPTED = "ENCRYPTED"
ENTRY_TOO_LARGE = "ENTRY_TOO_LARGE"
COMPRESSION_RATIO = "COMPRESSION_RATIO"
CORRUPT_ENTRY = "CORRUPT_ENTRY"
UNSUPPORTED_COMPRESSION = "UNSUPPORTED_COMPRESSION"
