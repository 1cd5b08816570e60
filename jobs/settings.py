"""Settings module for `rq worker -c jobs.settings`.

RQ reads REDIS_URL from here (or, for a sentinel:// REDIS_URL, the SENTINEL dict it takes
instead: core/redis_urls.py). Importing this module also loads OpenCV and the Haar cascade
and configures logging once in the worker parent, before RQ forks a work-horse per job, so
each job starts without paying for those imports.
"""
from __future__ import annotations

import os

from core.config import Settings
from core.logs import configure_logging
from core.model_files import detector_problem
from core.redis_urls import rq_settings
from core.sentry import sentry_options

_settings = Settings.from_env()
_connection = rq_settings(_settings.redis_url)
REDIS_URL = _connection["REDIS_URL"]
SENTINEL = _connection.get("SENTINEL")

# LOG_FORMAT text or json, LOG_LEVEL (core/logs.py); RQ's own loggers use this handler too.
configure_logging(_settings)

# Jobs that failed for good (not vendors' bad input) go to Sentry when SENTRY_DSN is set.
_sentry = sentry_options(_settings)
if _sentry is not None:
    import sentry_sdk
    from sentry_sdk.integrations.rq import RqIntegration

    sentry_sdk.init(**_sentry, integrations=[RqIntegration()])

# A worker refuses to start when its face detector cannot run (FACE_DETECTOR unknown, or the
# YuNet model file missing or altered: the message says how to restore it), rather than take
# crop jobs and fail each one. The check reads one small file; it needs no OpenCV.
_face_problem = detector_problem(_settings.face_detector)
if _face_problem is not None:
    raise SystemExit(f"image-queue worker not started: {_face_problem}")

if os.environ.get("IQ_SKIP_PRELOAD") != "1":
    # Preloaded before fork; background, fetch and rembg_pool are imported by the job
    # functions and would cost each work-horse ~40 ms if left to them.
    from jobs import fetch, rembg_pool, tasks  # noqa: F401
    from jobs.imaging import background, face_crop  # noqa: F401

    face_crop.preload(_settings.face_detector)
    tasks.context()  # settings and storage built once; the database reconnects after fork
