"""Settings module for `rq worker -c jobs.settings`.

RQ reads REDIS_URL from here. Importing this module also loads OpenCV and the Haar cascade
and configures logging once in the worker parent, before RQ forks a work-horse per job, so
each job starts without paying for those imports.
"""
from __future__ import annotations

import os

from core.config import Settings
from core.logs import configure_logging

_settings = Settings.from_env()
REDIS_URL = _settings.redis_url

# LOG_FORMAT text or json, LOG_LEVEL (core/logs.py); RQ's own loggers use this handler too.
configure_logging(_settings)

if os.environ.get("IQ_SKIP_PRELOAD") != "1":
    # Preloaded before fork; background, fetch and rembg_pool are imported by the job
    # functions and would cost each work-horse ~40 ms if left to them.
    from jobs import fetch, rembg_pool, tasks  # noqa: F401
    from jobs.imaging import background, face_crop  # noqa: F401

    face_crop.preload()
    tasks.context()  # settings and storage built once; the database reconnects after fork
