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


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _bool(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


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

    # --- jobs --------------------------------------------------------------------------
    job_timeout_s: int = 60
    job_retries: int = 3  # retries after the first attempt
    job_retry_intervals_s: tuple[int, ...] = (2, 4, 8)
    job_result_ttl_s: int = 7 * 24 * 3600
    job_failure_ttl_s: int = 30 * 24 * 3600
    bulk_max_items: int = 100
    # Max fields per UPDATE statement; halves on MySQL's packet-too-large error.
    db_update_chunk_fields: int = 10

    # --- web tier ----------------------------------------------------------------------
    max_json_bytes: int = 1 * 1024 * 1024
    secret_key: str = field(default="", repr=False)

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
            if isinstance(default, bool):
                values[f.name] = _bool(raw)
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            elif f.name == "job_retry_intervals_s":
                values[f.name] = _int_list(raw)
            elif isinstance(default, tuple):
                values[f.name] = _str_list(raw)
            else:
                values[f.name] = raw
        return replace(cls(**values), **overrides)

    @property
    def effective_storage_backend(self) -> str:
        """The storage backend in use: explicit setting, else by presence of CLOUDINARY_URL."""
        if self.storage_backend:
            return self.storage_backend
        return "cloudinary" if self.cloudinary_url else "local"
