"""image-queue web tier: create_app() builds the Flask app that runs under Gunicorn."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from core.config import Settings
from core.sentry import sentry_options
from service import dashboard, errors, extensions, idempotency, limits, metrics, request_context


def _start_sentry(settings: Settings) -> None:
    """Report unhandled errors to Sentry when SENTRY_DSN is set (core/sentry.py); else nothing."""
    options = sentry_options(settings)
    if options is None:
        return
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration

    sentry_sdk.init(**options, integrations=[FlaskIntegration()])


def create_app(overrides: dict[str, Any] | Settings | None = None) -> Flask:
    """Build the app: settings -> extensions -> blueprints -> error handlers.

    ``overrides`` is a Settings, or a dict of Settings field names (tests), applied over the
    environment.
    """
    if isinstance(overrides, Settings):
        settings = overrides
    else:
        settings = Settings.from_env(**(overrides or {}))
    _start_sentry(settings)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_json_bytes,
        SECRET_KEY=settings.secret_key or None,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    extensions.init_app(app, settings)
    request_context.init_app(app)  # X-Request-ID for logs, before the limiter's and routes' hooks
    limits.init_app(app, settings)  # per-IP and per-vendor rate limits, before any route's hooks

    from service.admin.routes import bp as admin_bp
    from service.batch import UploadRequest
    from service.batch import bp as batch_bp
    from service.console import bp as console_bp
    from service.health import bp as health_bp
    from service.image_queue import bp as image_queue_bp
    from service.openapi.docs import bp as docs_bp
    from service.usage import bp as usage_bp

    app.request_class = UploadRequest  # ZIP uploads stream to UPLOAD_DIR, never into memory
    app.register_blueprint(image_queue_bp)
    app.register_blueprint(batch_bp)
    app.register_blueprint(usage_bp)  # /api/usage: counts per operation and rate limits left
    app.register_blueprint(health_bp)
    app.register_blueprint(admin_bp)  # /api/admin/*: dead letters, admin credentials
    app.register_blueprint(docs_bp)  # /api/openapi.json and /api/docs
    app.register_blueprint(console_bp)  # /console: the web console's static files (docs/console.md)
    idempotency.init_app(app)  # Idempotency-Key on every image-queue and batch POST
    metrics.init_app(app)  # /metrics (Prometheus): METRICS_TOKEN or admin credentials
    dashboard.init_app(app, settings)  # rq-dashboard at /rq: admin credentials
    errors.init_app(app)

    @app.get("/")
    def index() -> dict[str, Any]:
        return {"success": True, "service": "image-queue",
                "docs": "/api/docs", "openapi": "/api/openapi.json", "health": "/api/worker/health"}

    logging.getLogger(__name__).debug("app created (storage=%s)", settings.effective_storage_backend)
    return app
