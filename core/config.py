"""Every setting of image-queue, named once, read from the environment in one place.

Stdlib only: the web tier (service/) and the workers (jobs/) both read their settings
through ``Settings.from_env()``. Units are in the names (``_S`` seconds, ``_BYTES`` bytes).
README.md "Settings" lists each one; keep the two in step.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class SettingError(ValueError):
    """A setting's value cannot be read; the message names the variable and what it expects."""


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(text)
    return value in _TRUE


def _expected(name: str, default: Any) -> str:
    """What a setting's value must look like, in words, with its unit and default."""
    unit = next((words for suffix, words in (("_s", " of seconds"), ("_bytes", " of bytes"), ("_days", " of days"))
                 if name.endswith(suffix)), "")
    if isinstance(default, bool):
        return f"true or false (also 1/0, yes/no, on/off); default {str(default).lower()}"
    if isinstance(default, int):
        return f"a whole number{unit}, e.g. {default} (the default)"
    if isinstance(default, float):
        return f"a number{unit}, e.g. {default:g} (the default)"
    return f"comma-separated whole numbers{unit}, e.g. {','.join(map(str, default))} (the default)"


@dataclass(frozen=True)
class Settings:
    """All settings; field names are the environment variable names in lower case."""

    # --- connections -------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    # sqlite:///relative/or/absolute/path.sqlite3  or  mysql://user:pass@host:3306/dbname
    database_url: str = f"sqlite:///{ROOT / 'var' / 'image-queue.sqlite3'}"
    # "local" or "cloudinary"; empty means cloudinary when CLOUDINARY_URL is set, else local.
    storage_backend: str = ""
    cloudinary_url: str = ""
    # Cloudinary folder every upload goes under (public ids: <folder>/<vendor>/<project>/...).
    cloudinary_folder: str = "image-queue"
    storage_dir: str = str(ROOT / "var" / "storage")
    # Absolute URL the local storage's files are served under (the app serves /files/).
    public_base_url: str = "http://127.0.0.1:8000"

    # --- image fetching ----------------------------------------------------------------
    fetch_max_bytes: int = 25 * 1024 * 1024
    fetch_connect_timeout_s: float = 5.0
    fetch_read_timeout_s: float = 20.0
    fetch_max_redirects: int = 5
    # CIDRs that are normally refused (loopback, private) but allowed here; tests and the
    # dev stack set 127.0.0.0/8 so they can serve photos from loopback. Empty in production.
    fetch_allow_networks: tuple[str, ...] = ()
    max_image_pixels: int = 60_000_000

    # --- face detection (jobs/imaging/detectors; docs/faces.md) -------------------------
    # The face detector of crop jobs and batches that do not name one (options.detector):
    # "yunet" (a small CNN with landmarks; its model file is committed and md5-checked when a
    # worker starts) or "haar" (OpenCV's Haar cascades, the seeds' detector). Read by workers.
    face_detector: str = "yunet"

    # --- jobs --------------------------------------------------------------------------
    job_timeout_s: int = 60
    job_retries: int = 3  # retries after the first attempt
    job_retry_intervals_s: tuple[int, ...] = (2, 4, 8)
    job_result_ttl_s: int = 7 * 24 * 3600
    job_failure_ttl_s: int = 30 * 24 * 3600
    # Seconds past a job's heartbeat interval before RQ may call it abandoned (RQ's own is 60).
    worker_heartbeat_grace_s: int = 60
    bulk_max_items: int = 100
    # Max fields per UPDATE statement; halves on MySQL's packet-too-large error.
    db_update_chunk_fields: int = 10

    # --- background removal (jobs/rembg_pool.py) ---------------------------------------
    # rembg servers (`rembg s`), used in rotation; the dev stack starts one on port 7000.
    rembg_urls: tuple[str, ...] = ("http://127.0.0.1:7000",)
    # Models whose weights every rembg server holds (scripts/fetch-models puts u2netp there);
    # the first is the default. rembg would try to download any other one.
    rembg_models: tuple[str, ...] = ("u2netp",)
    rembg_connect_timeout_s: float = 2.0
    rembg_read_timeout_s: float = 30.0  # one image's round trip; u2netp takes ~0.3-1 s on a CPU
    # An instance that failed or timed out is skipped this long, then probed (GET /openapi.json).
    rembg_cooldown_s: int = 30
    rembg_probe_timeout_s: float = 1.0  # that probe, and the health route's
    # zlib level (0-9) of the cut-out PNGs the workers encode (jobs/imaging/cutout.py). 1 is
    # ~4x faster than 6 at 12 MP for ~14-18 % more bytes (docs/background.md has the measurements).
    bg_png_compress_level: int = 1
    # Long side (pixels) of the previews the workers keep of each source and output, made from the
    # pixels already decoded (jobs/imaging/thumbnails.py) and shown by the console; 0 turns them off.
    thumbnail_max_px: int = 256

    # --- batches -----------------------------------------------------------------------
    # Folder shared by the API (uploads) and the ingestion/face-detection workers (extracted images).
    upload_dir: str = str(ROOT / "var" / "uploads")
    batch_max_upload_bytes: int = 5 * 1024**3
    batch_max_images_per_request: int = 10_000  # add-images list length
    batch_chunk_size: int = 32  # images per RQ job (measured: 16 -> 0.83, 32 -> 0.85 of the plain-loop limit)
    batch_chunk_timeout_s: int = 600
    # Chunks of one vendor and priority queued or running at once (RQ RateLimit): one vendor's
    # huge batch waits in its own line instead of filling the queue ahead of other vendors.
    batch_vendor_concurrency: int = 4
    # Background-removal chunks (operation removeBg) of one vendor and priority queued or running
    # at once (their own RQ RateLimit key): each runs one rembg call at a time, so one vendor's
    # batch holds at most this many rembg calls and single jobs keep the rest of the servers.
    batch_rembg_concurrency: int = 2
    batch_chunk_result_ttl_s: int = 600
    # ZIP ingest guards (core/zipstream/archive.py ArchiveLimits; README "ZIP guards").
    zip_max_entries: int = 1_100_000  # entries of any kind; more fails the batch (TOO_MANY_ENTRIES)
    zip_max_total_bytes: int = 50 * 1024**3  # uncompressed bytes of all images; more fails the batch
    zip_max_entry_bytes: int = 50 * 1024**2  # one entry uncompressed; bigger ones are skipped
    zip_max_ratio: float = 200.0  # uncompressed/compressed of one entry; higher ones are skipped

    # --- web tier ----------------------------------------------------------------------
    max_json_bytes: int = 1 * 1024 * 1024
    # Socket timeouts of the API's REDIS_URL client: the longest one hung Redis call holds a
    # request before its 503 (service/redis_breaker.py then fails the rest at once).
    api_redis_timeout_s: float = 0.25
    # After a Redis call failed, an API process answers 503 at once for this long, then probes.
    api_redis_cooldown_s: float = 1.0
    secret_key: str = field(default="", repr=False)

    # --- rate limits (service/limits.py; README "Rate limits") ---------------------------
    # Values use the `limits` notation, unit included: "100/15 minutes", "30 per hour",
    # several joined by ";" ("10/minute;100/day"). Vendor limits can be overridden per vendor
    # with `python -m service.cli vendor set-limits`.
    rate_limit_enabled: bool = True
    rate_limit_global: str = "100/15 minutes"  # per client IP; requests without a valid API key
    rate_limit_image_processing: str = "50/15 minutes"  # per vendor; every queueing POST
    rate_limit_background_removal: str = "30/hour"  # per vendor; remove-bg-queue, bulk-remove-bg
    rate_limit_bulk: str = "10/hour"  # per vendor; bulk-* and batch uploads
    rate_limit_reads: str = "600/minute"  # per vendor; job/record/batch status and stats
    # Redis holding the counters, shared by every Gunicorn worker and API host; empty: REDIS_URL.
    rate_limit_storage_url: str = ""
    # Socket timeouts of that Redis: a hung Redis costs a request at most this long (then 503).
    rate_limit_storage_timeout_s: float = 0.25
    # How long an API process reuses a vendor's overrides before reading them again.
    rate_limit_override_cache_s: float = 10.0
    # Proxies in front of the API whose X-Forwarded-For entries are trusted (0: use the peer).
    trusted_proxy_hops: int = 0

    # --- completion webhooks (jobs/webhooks.py; README "Clients") ---------------------------
    # Deliveries are POSTed through the photo fetcher's address checks (FETCH_ALLOW_NETWORKS).
    webhook_timeout_s: float = 10.0  # connect and read timeout of one delivery attempt
    webhook_retries: int = 5  # retries after the first attempt of a delivery that was not answered 2xx
    webhook_retry_intervals_s: tuple[int, ...] = (10, 30, 120, 600, 3600)  # wait before each retry
    webhook_state_ttl_s: int = 30 * 24 * 3600  # how long a delivery's state stays readable

    # --- idempotent POSTs (service/idempotency.py) -----------------------------------------
    idempotency_ttl_s: int = 24 * 3600  # how long a key's first response is replayed
    # How long a request holds its key while it runs (a duplicate meanwhile gets 409); bounds
    # how long a key stays blocked when an API process dies mid-request.
    idempotency_lock_ttl_s: int = 600

    # --- operators (service/admin/auth.py) -----------------------------------------------
    # HTTP Basic credentials of the admin endpoints (dead letters, dashboard). An empty
    # password switches them off: they answer 404, never open.
    admin_username: str = "admin"
    admin_password: str = field(default="", repr=False)
    # Bearer token Prometheus sends to /metrics (the admin credentials also work there);
    # /metrics answers 404 when neither this nor ADMIN_PASSWORD is set.
    metrics_token: str = field(default="", repr=False)
    # How long /metrics reuses its probe of the rembg servers (an API process's own cache).
    metrics_rembg_cache_s: float = 5.0

    # --- logs (core/logs.py) -----------------------------------------------------------
    # "json": one JSON object per line with job_id/vendor/request_id fields; "text": plain lines.
    log_format: str = "text"
    log_level: str = "INFO"

    # --- error reports (core/sentry.py) ------------------------------------------------
    # Sentry DSN: the API's unhandled errors and jobs that failed for good (not vendors' bad
    # input) are reported there. Empty: the SDK is not even imported and nothing is sent.
    sentry_dsn: str = field(default="", repr=False)
    sentry_environment: str = "production"
    sentry_traces_sample_rate: float = 0.0  # share of requests and jobs traced (performance); 0: none

    # --- housekeeping (ops/cleanup.py; python -m service.cli cleanup) ----------------------
    # Finished records, batches and local output files older than this many days are deleted.
    cleanup_retention_days: int = 90

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read every field from ``env`` (default os.environ) by its upper-case name."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            default = getattr(cls, f.name)
            try:
                if isinstance(default, bool):
                    values[f.name] = _bool(raw)
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                elif f.name in ("job_retry_intervals_s", "webhook_retry_intervals_s"):
                    values[f.name] = _int_list(raw)
                elif isinstance(default, tuple):
                    values[f.name] = _str_list(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise SettingError(f"{f.name.upper()}={raw!r} is not valid: expected "
                                   f"{_expected(f.name, default)}") from None
        return replace(cls(**values), **overrides)

    @property
    def effective_storage_backend(self) -> str:
        """The storage backend in use: explicit setting, else by presence of CLOUDINARY_URL."""
        if self.storage_backend:
            return self.storage_backend
        return "cloudinary" if self.cloudinary_url else "local"
