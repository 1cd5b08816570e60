"""Logging of the API (Gunicorn) and the workers (`rq worker`): one configuration, text or JSON.

``LOG_FORMAT=json`` writes one JSON object per line (python-json-logger)::

    {"message": "...", "level": "INFO", "logger": "jobs.tasks", "process": 4242,
     "time": "2025-01-01T12:00:00.123+00:00", "job_id": "...", "vendor": "acme",
     "queue": "face-crop", "record_id": "rec-1"}

Context fields, added by ``ContextFilter`` to every line that has them:

* in a worker: ``job_id``, ``vendor``, ``queue``, ``record_id`` or ``batch_id``, from RQ's
  current job while a job runs, or from the job an RQ callback handles (``with_job_context``);
* in the API: ``request_id`` (the ``X-Request-ID`` the app answers with) and ``vendor`` once
  the API key is resolved, from ``flask.g``.

``LOG_FORMAT=text`` (the default; the dev stack's console) keeps plain lines. Our own messages
name ``job=… vendor=…`` in both formats. ``logging_config`` is the one dictConfig both use:
``jobs/settings.py`` applies it in every worker, ``service/gunicorn.conf.py`` hands it to
Gunicorn (``logconfig_dict``), which then formats its own error and access lines the same way.
"""
from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from typing import Any, TypeVar

from rq.job import Job, get_current_job

from core.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Fields of the JSON lines besides the context ones; renamed to short names below.
JSON_FORMAT = "%(message)s %(levelname)s %(name)s %(process)d"
JSON_RENAMES = {"levelname": "level", "name": "logger"}
CONTEXT_FIELDS = ("job_id", "vendor", "queue", "record_id", "batch_id", "request_id")

# The job an RQ callback is handling: RQ's own current job is unset outside the job function.
_bound_job: ContextVar[Job | None] = ContextVar("iq_log_job", default=None)


def _job_fields(job: Job) -> dict[str, Any]:
    meta = job.meta or {}
    fields: dict[str, Any] = {"job_id": job.id, "queue": job.origin}
    vendor = meta.get("vendor_id")
    if vendor is None:
        payload = (job.kwargs or {}).get("payload")
        if isinstance(payload, dict):
            vendor = payload.get("vendorId")
    if vendor is not None:
        fields["vendor"] = vendor
    for key in ("record_id", "batch_id"):
        if meta.get(key) is not None:
            fields[key] = meta[key]
    return fields


def _request_fields() -> dict[str, Any]:
    flask = sys.modules.get("flask")  # only the API has Flask; the workers never import it
    if flask is None or not flask.has_request_context():
        return {}
    fields = {}
    for attr, name in (("request_id", "request_id"), ("vendor_id", "vendor")):
        value = flask.g.get(attr)
        if value is not None:
            fields[name] = value
    return fields


class ContextFilter(logging.Filter):
    """Adds job_id/vendor/queue/record_id/batch_id (workers) or request_id/vendor (API) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = get_current_job() or _bound_job.get()
        fields = _job_fields(job) if job is not None else _request_fields()
        for name, value in fields.items():
            if not hasattr(record, name):  # an explicit extra= wins
                setattr(record, name, value)
        return True


@contextmanager
def job_context(job: Job) -> Iterator[None]:
    """Log lines inside the block carry ``job``'s id, vendor and queue."""
    token = _bound_job.set(job)
    try:
        yield
    finally:
        _bound_job.reset(token)


def with_job_context(callback: F) -> F:
    """Decorator for RQ callbacks (first argument: the job): their lines carry the job's context."""

    @wraps(callback)
    def wrapped(job: Job, *args: Any, **kwargs: Any) -> Any:
        with job_context(job):
            return callback(job, *args, **kwargs)

    return wrapped  # type: ignore[return-value]


def _formatter(log_format: str) -> dict[str, Any]:
    if log_format == "json":
        return {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": JSON_FORMAT,
                "rename_fields": JSON_RENAMES, "timestamp": "time"}
    return {"format": TEXT_FORMAT}


def logging_config(settings: Settings, *, gunicorn_access_log: bool | None = None) -> dict[str, Any]:
    """The dictConfig of a process: one stderr handler on the root logger, text or JSON.

    ``gunicorn_access_log``: None outside Gunicorn; else whether its access lines are kept
    (they then go through the same handler as everything else).
    """
    log_format = settings.log_format.strip().lower()
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT={settings.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    level = settings.log_level.strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"LOG_LEVEL={settings.log_level!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"main": _formatter(log_format)},
        "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                 "formatter": "main", "filters": ["context"]}},
        "root": {"level": level, "handlers": ["console"]},
    }
    if gunicorn_access_log is not None:
        # Gunicorn attached handlers of its own to these two; route them through ours instead.
        config["loggers"] = {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": ({"level": "INFO", "handlers": [], "propagate": True} if gunicorn_access_log
                                else {"handlers": [], "propagate": False}),
        }
    return config


def configure_logging(settings: Settings) -> None:
    """Apply ``logging_config`` to this process (the workers; Gunicorn applies it itself)."""
    logging.config.dictConfig(logging_config(settings))
