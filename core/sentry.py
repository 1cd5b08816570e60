"""Error reports to Sentry (SENTRY_DSN): the options both the API and the workers start the SDK with.

Stdlib only: the SDK itself is imported by the caller (service/__init__.py with the Flask
integration, jobs/settings.py with the RQ one), and only when SENTRY_DSN is set, so without a
DSN nothing is imported, started or sent.

What is reported: unhandled exceptions of the API (every one is a bug: bad input is a 4xx) and
jobs that failed for good with anything but a permanent job error. Permanent job errors
(``NO_FACE``, ``IMAGE_NOT_FOUND``, ``NOT_AN_IMAGE`` ...) are the vendor's input, recorded on the
record and in the dead-letter queue, and are dropped here; transient ones that ran out of
retries (Redis, database, storage or every rembg instance down for minutes) are reported.
"""
from __future__ import annotations

from typing import Any

from core.config import Settings
from core.errors import PermanentJobError


def drop_expected_failures(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """Sentry ``before_send``: None (not sent) for a vendor-input failure of a job."""
    exc_info = hint.get("exc_info")
    if exc_info and isinstance(exc_info[1], PermanentJobError):
        return None
    return event


def sentry_options(settings: Settings) -> dict[str, Any] | None:
    """Keyword arguments for ``sentry_sdk.init`` (integrations aside), or None without a DSN."""
    if not settings.sentry_dsn:
        return None
    return {"dsn": settings.sentry_dsn, "environment": settings.sentry_environment,
            "traces_sample_rate": settings.sentry_traces_sample_rate, "send_default_pii": False,
            "before_send": drop_expected_failures}
