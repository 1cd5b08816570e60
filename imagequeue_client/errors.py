"""Errors raised by the image-queue client; API errors carry the API's error code."""
from __future__ import annotations

from typing import Any

import requests


class ImageQueueError(Exception):
    """Base class of everything this package raises."""


class ApiError(ImageQueueError):
    """The API answered an error: ``status`` (HTTP), ``code`` (e.g. ``VALIDATION_ERROR``),
    ``message``, ``details`` and, for 429/503/409, ``retry_after`` in seconds."""

    def __init__(self, status: int, code: str, message: str, *, details: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after

    @property
    def field(self) -> str | None:
        """The request field a 400 names, if any."""
        return self.details.get("field") if isinstance(self.details, dict) else None


class BadRequest(ApiError):
    """400: a field is missing or wrong (``field`` names it)."""


class AuthenticationError(ApiError):
    """401: no API key, or an unknown or revoked one."""


class PermissionDenied(ApiError):
    """403: e.g. a vendorId in the body that is not the key's vendor."""


class NotFound(ApiError):
    """404: unknown id, or another vendor's."""


class Conflict(ApiError):
    """409: e.g. the same Idempotency-Key is still being processed."""


class PayloadTooLarge(ApiError):
    """413: the body or upload is over the server's limit."""


class UnsupportedMediaType(ApiError):
    """415: e.g. an upload that is not a ZIP."""


class Unprocessable(ApiError):
    """422: e.g. an Idempotency-Key reused for a different request."""


class RateLimited(ApiError):
    """429: a rate limit is exhausted; ``retry_after`` says for how long."""


class ServiceUnavailable(ApiError):
    """503: Redis or the database is down; retry after ``retry_after``."""


class ServerError(ApiError):
    """Any other 5xx."""


class TransportError(ImageQueueError):
    """The API could not be reached (connection refused, reset, timed out), retries included."""


class WaitTimeout(ImageQueueError):
    """A job or batch was not final within the wait's timeout; ``last`` is its last status."""

    def __init__(self, message: str, last: dict[str, Any]) -> None:
        super().__init__(message)
        self.last = last


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: AuthenticationError, 403: PermissionDenied, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 415: UnsupportedMediaType, 422: Unprocessable, 429: RateLimited, 503: ServiceUnavailable,
}


def error_from_response(response: requests.Response) -> ApiError:
    """The typed error for an API error answer (also for a non-JSON one, e.g. from a proxy)."""
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    retry_after: float | None = None
    header = response.headers.get("Retry-After", "").strip()
    if header:
        try:
            retry_after = max(float(header), 0.0)
        except ValueError:
            retry_after = None
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or f"HTTP_{status}")
    message = str(error.get("message") or response.reason or "error")
    return cls(status, code, message, details=error.get("details"), retry_after=retry_after)
