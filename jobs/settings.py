"""Settings module for `rq worker -c jobs.settings`.

RQ reads REDIS_URL from here. Importing this module also loads OpenCV and the Haar cascade
and configures logging once in the worker parent, before RQ forks a work-horse per job, so
each job starts without paying for those imports.
"""
from __future__ import annotations

import logging
import os

from jobs.config import Settings

REDIS_URL = Settings.from_env().redis_url

logging.basicConfig(
    level=os.environ.get("LOG_LEVEL", "INFO").upper(),
    format="%(asctime)s %(levelname)s %(name)s %(message)s",
)

if os.environ.get("IQ_SKIP_PRELOAD") != "1":
    from jobs import face_crop, tasks  # noqa: F401  (preload before fork)

    face_crop.preload()
    tasks.context()  # settings and storage built once; the database reconnects after fork
