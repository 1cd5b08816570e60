"""Gunicorn settings; each can be overridden by its GUNICORN_* environment variable."""
import multiprocessing
import os

from core.config import Settings
from core.logs import logging_config

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", str(min(4, multiprocessing.cpu_count() * 2))))
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
