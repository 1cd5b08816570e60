"""rq-dashboard mounted at /rq, for the admin only (service/admin/auth.py).

rq-dashboard 0.9 is a Flask blueprint; it reads the queues of ``RQ_DASHBOARD_REDIS_URL``,
which is set to our REDIS_URL, so it shows exactly the queues, jobs, failed jobs (the
dead-letter queue) and workers of this deployment. Its pages and JSON calls are HTML and its
own JSON, not our error shape: that is accepted under /rq only.

The blueprint object is a module global of rq_dashboard, shared by every app of a process
(tests make many), so the admin check is an app-level hook for that blueprint rather than a
hook added to the blueprint itself, which would pile up one per app.

The dashboard's buttons (requeue, delete, empty, compact) POST with the admin's Basic
credentials, which browsers send by themselves, also for a form on another site: those
requests must come from a page of this host (``Origin``, else ``Referer``), or answer 403.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import rq_dashboard
from flask import Flask, request
from rq_dashboard.web import setup_rq_connection

from core import rqjson
from core.config import Settings
from core.redis_urls import dashboard_url
from service.admin.auth import require_admin
from service.errors import Forbidden

URL_PREFIX = "/rq"
BLUEPRINT = rq_dashboard.blueprint.name  # "rq_dashboard"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Changes jobs even when asked with GET (requeues every failed job of a queue).
CHANGES_ON_GET = frozenset({f"{BLUEPRINT}.requeue_all"})


def _from_this_host() -> bool:
    source = request.headers.get("Origin") or request.headers.get("Referer") or ""
    return bool(source) and urlsplit(source).netloc == request.host


def _guard() -> None:
    if request.blueprint != BLUEPRINT:
        return
    require_admin()
    changes = request.method not in SAFE_METHODS or request.endpoint in CHANGES_ON_GET
    if changes and not _from_this_host():
        raise Forbidden("Dashboard actions must come from the dashboard's own page (Origin or Referer of this "
                        "host); refused as a possible cross-site request.", error_code="CROSS_SITE_REQUEST")


def init_app(app: Flask, settings: Settings) -> None:
    """Mount the dashboard at /rq behind the admin credentials (404 while ADMIN_PASSWORD is unset)."""
    app.config["RQ_DASHBOARD_REDIS_URL"] = dashboard_url(settings.redis_url)  # sentinel:// spelled its way
    app.config["RQ_DASHBOARD_POLL_INTERVAL"] = 2500  # ms between the pages' refreshes
    # Jobs are JSON (core/rqjson.py); the dashboard's config is a module global of rq_dashboard.
    rq_dashboard.web.config.serializer = rqjson.SERIALIZER
    setup_rq_connection(app)  # a client object only; it connects on first use
    app.before_request(_guard)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
