"""Operators' surfaces: HTTP Basic with ADMIN_USERNAME / ADMIN_PASSWORD, and /metrics' bearer token.

``require_admin`` guards anything that is for operators, not vendors (rq-dashboard at /rq,
/api/admin/*). It works three ways::

    bp.before_request(require_admin)   # every route of a blueprint
    @require_admin                     # one view
    require_admin()                    # inside a view or hook: raises unless the caller is admin

Without ADMIN_PASSWORD every admin surface is switched off and answers 404 JSON: an unset
password never means open. Wrong or missing credentials answer 401 JSON with
``WWW-Authenticate: Basic`` (browsers then ask for them). Both the user name and the password
are compared with ``hmac.compare_digest``, always both, so timing tells nothing.

Admin routes are not rate limited (service/limits.py exempts them): the dashboard polls every
2.5 s. Use a long random ADMIN_PASSWORD; the admin surfaces belong behind the operators'
network or proxy, like Redis.
"""
from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, overload

from flask import request

from service.errors import NotFound, Unauthorized
from service.extensions import backends

F = TypeVar("F", bound=Callable[..., Any])

REALM = "image-queue admin"


class AdminUnauthorized(Unauthorized):
    """401 for admin surfaces: asks the client for HTTP Basic credentials."""

    error_code = "ADMIN_AUTH_REQUIRED"
    extra_headers = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def admin_enabled() -> bool:
    """True when ADMIN_PASSWORD is set (the admin surfaces exist at all)."""
    return bool(backends().settings.admin_password)


def is_admin() -> bool:
    """True when the request carries the admin's HTTP Basic credentials (and they are configured)."""
    settings = backends().settings
    if not settings.admin_password:
        return False
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user_ok = _same(auth.username or "", settings.admin_username)
    password_ok = _same(auth.password or "", settings.admin_password)
    return user_ok & password_ok


def _check_admin() -> None:
    if not admin_enabled():
        raise NotFound("Not found: admin endpoints are switched off (set ADMIN_PASSWORD to enable them).",
                       error_code="NOT_FOUND")
    if not is_admin():
        raise AdminUnauthorized("Admin credentials required: HTTP Basic with ADMIN_USERNAME and ADMIN_PASSWORD.")


@overload
def require_admin(view: None = None) -> None: ...
@overload
def require_admin(view: F) -> F: ...
def require_admin(view: F | None = None) -> F | None:
    """Raise 404 (admin off) or 401 unless the request is the admin's; with a view, decorate it."""
    if view is None:
        _check_admin()
        return None

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_admin()
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]


def metrics_enabled() -> bool:
    """True when /metrics has a credential configured (METRICS_TOKEN or ADMIN_PASSWORD)."""
    settings = backends().settings
    return bool(settings.metrics_token or settings.admin_password)


def require_metrics_reader() -> None:
    """/metrics: ``Authorization: Bearer <METRICS_TOKEN>`` or the admin's Basic credentials."""
    settings = backends().settings
    if not metrics_enabled():
        raise NotFound("Not found: /metrics is switched off (set METRICS_TOKEN or ADMIN_PASSWORD).",
                       error_code="NOT_FOUND")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if settings.metrics_token and scheme.lower() == "bearer" and _same(token.strip(), settings.metrics_token):
        return
    if is_admin():
        return
    raise AdminUnauthorized("Metrics credentials required: 'Authorization: Bearer <METRICS_TOKEN>' "
                            "or HTTP Basic with ADMIN_USERNAME and ADMIN_PASSWORD.")
