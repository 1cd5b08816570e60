"""API errors and the handlers that turn every error into the JSON error shape (SPEC 3).

Every response carries ``success``; errors look like
``{"success": false, "error": {"code": ..., "message": ..., "details": ...}}``.
No HTML error page ever leaves the app, and bad input never becomes a 500.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(HTTPException):
    """An HTTP error with a machine-readable code; subclasses set ``code`` and ``error_code``."""

    code = 400
    error_code = "BAD_REQUEST"
    # Headers every answer of this error carries (e.g. WWW-Authenticate on a 401).
    extra_headers: dict[str, str] = {}

    def __init__(
        self,
        message: str,
        *,
        details: Any = None,
        error_code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(description=message)
        self.message = message
        self.details = details
        if error_code:
            self.error_code = error_code
        self.retry_after = retry_after


class ValidationError(ApiError):
    """400: a field is missing or wrong; ``details.field`` names it."""

    code = 400
    error_code = "VALIDATION_ERROR"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", details={"field": field, "reason": message})


class Unauthorized(ApiError):
    code = 401
    error_code = "UNAUTHORIZED"


class Forbidden(ApiError):
    code = 403
    error_code = "FORBIDDEN"


class NotFound(ApiError):
    code = 404
    error_code = "NOT_FOUND"


class Conflict(ApiError):
    """409: the target's state does not allow the request (canceling a finished job)."""

    code = 409
    error_code = "CONFLICT"


class ServiceUnavailable(ApiError):
    """503: Redis or the database is down; clients should retry after ``Retry-After``."""

    code = 503
    error_code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: int = 5, details: Any = None) -> None:
        super().__init__(message, retry_after=retry_after, details=details)


# Codes werkzeug raises on its own (routing, body parsing, size limits) and ours for them.
_WERKZEUG_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    408: "REQUEST_TIMEOUT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMITED",
    431: "HEADERS_TOO_LARGE",
    503: "SERVICE_UNAVAILABLE",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    """Build the JSON error response."""
    body: dict[str, Any] = {"success": False, "error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# A refused request's unread body (too large, or refused before it was read: bad key, rate
# limit, wrong content type) is read and dropped up to this much before the answer goes, so a
# client still sending it can finish and read the 4xx (closing with unread data makes the kernel
# send a reset, and most clients then report a broken pipe instead of the answer). nginx calls
# this lingering close; Gunicorn does not do it.
LINGER_MAX_BYTES = 8 << 20
LINGER_MAX_S = 2.0
_LINGER_READ = 64 << 10


def drain_refused_body() -> int:
    """Read and drop what is left of a refused request body (bounded); returns the bytes dropped.

    Nothing is read when the declared length exceeds the bound: the client would still be sending.
    """
    if not has_request_context():
        return 0
    declared = request.content_length
    if declared is not None and declared > LINGER_MAX_BYTES:
        return 0
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return 0
    dropped = 0
    deadline = time.monotonic() + LINGER_MAX_S
    try:
        while dropped < LINGER_MAX_BYTES and time.monotonic() < deadline:
            chunk = stream.read(_LINGER_READ)
            if not chunk:
                break
            dropped += len(chunk)
    except (OSError, ValueError):  # the client went away, or the server's stream is closed
        pass
    return dropped


def _handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        headers.update(exc.extra_headers)
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return error_response(status, exc.error_code, exc.message, exc.details, headers)
    original = exc.get_response()
    for name in ("Retry-After", "Allow"):
        if name in original.headers:
            headers[name] = original.headers[name]
    message = exc.description or exc.name
    return error_response(status, _WERKZEUG_CODES.get(status, exc.name.upper().replace(" ", "_")), message,
                          headers=headers)


def _handle_unexpected(exc: Exception) -> Response:
    # Deliberately broad: a bug must still answer JSON, and the log keeps the traceback.
    from service.extensions import is_backend_outage

    if is_backend_outage(exc):
        log.warning("backend unavailable: %s", exc)
        return error_response(503, "SERVICE_UNAVAILABLE", f"A backend is unavailable: {exc}",
                              headers={"Retry-After": "5"})
    log.exception("unhandled error")
    return error_response(500, "INTERNAL_ERROR", "Internal server error; it has been logged.")


def _drain_after_refusal(response: Response) -> Response:
    if response.status_code >= 400:
        drain_refused_body()
    return response


def init_app(app: Flask) -> None:
    """Register the JSON handlers for every HTTP error and for unexpected exceptions, and the
    bounded drain of a refused request's unread body."""
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
    app.after_request(_drain_after_refusal)
