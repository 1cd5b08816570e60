"""The worker's settings, database and storage: built once per process, passed to helpers.

Job functions (jobs/tasks.py, jobs/batch.py, jobs/webhooks.py) call ``context()`` once at their
top and hand the ``Context`` down explicitly, so helpers never reach for globals.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from core.config import Settings
from core.db.database import Database, connect
from jobs.storage import Storage, storage_from_settings


@dataclass(frozen=True)
class Context:
    """Per-process settings, database and storage (the DB reconnects itself after fork)."""

    settings: Settings
    db: Database
    storage: Storage


@lru_cache(maxsize=1)
def context() -> Context:
    """Build the worker context once per process from the environment."""
    settings = Settings.from_env()
    return Context(settings, connect(settings.database_url), storage_from_settings(settings))
