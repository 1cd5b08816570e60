"""Gunicorn settings; each can be overridden by its GUNICORN_* environment variable.

Platform conventions (Heroku, Dokku, Render, the Dockerfile): with ``PORT`` set and no
``GUNICORN_BIND``, the API listens on ``0.0.0.0:$PORT`` (reachable from outside the container);
``WEB_CONCURRENCY`` sets the worker count when ``GUNICORN_WORKERS`` does not. Without either,
``127.0.0.1:8000`` (the dev stack's loopback).
"""
import multiprocessing
import os

from core.config import Settings
from core.logs import logging_config

_port = os.environ.get("PORT", "").strip()
bind = os.environ.get("GUNICORN_BIND") or (f"0.0.0.0:{_port}" if _port else "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS") or os.environ.get("WEB_CONCURRENCY")
              or min(4, multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT_S", "120"))  # long ZIP uploads stream through
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None  # empty: no access log
errorlog = "-"
# LOG_FORMAT (text or json) and LOG_LEVEL, the same configuration as the workers' (core/logs.py);
# Gunicorn's own error and access lines go through it too.
_settings = Settings.from_env()
loglevel = _settings.log_level.lower()
logconfig_dict = logging_config(_settings, gunicorn_access_log=accesslog is not None)
# The app opens Redis/DB lazily, so preloading is safe and saves memory per worker.
preload_app = True
