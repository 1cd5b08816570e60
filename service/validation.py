"""Reading and validating request bodies: JSON object or a clear 4xx naming the problem."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import request

from core.contracts import InvalidField
from service.errors import ApiError, ValidationError

T = TypeVar("T")


class UnsupportedMediaType(ApiError):
    code = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"


def json_body() -> dict[str, Any]:
    """The request body as a JSON object (400/415 otherwise)."""
    if not request.is_json:
        raise UnsupportedMediaType(
            f"Send a JSON body with 'Content-Type: application/json' (got {request.mimetype or 'none'!r})."
        )
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # deeply nested arrays: json raises this, not ValueError
        body = None
    if body is None:
        raise ApiError("The body is not valid JSON.", error_code="INVALID_JSON")
    if not isinstance(body, dict):
        raise ApiError("The JSON body must be an object.", error_code="INVALID_JSON")
    return body


def field(check: Callable[[Any, str], T], body: dict[str, Any], name: str) -> T:
    """Run a core.contracts validator on ``body[name]``, turning InvalidField into a 400."""
    try:
        return check(body.get(name), name)
    except InvalidField as exc:
        raise ValidationError(exc.field, exc.message) from None


def validated(check: Callable[..., T], *args: Any) -> T:
    """Run any contracts validator, turning InvalidField into a 400."""
    try:
        return check(*args)
    except InvalidField as exc:
        raise ValidationError(exc.field, exc.message) from None


def list_field(body: dict[str, Any], name: str, *, max_items: int) -> list[Any]:
    """A non-empty JSON array of at most ``max_items`` items."""
    value = body.get(name)
    if not isinstance(value, list):
        raise ValidationError(name, "is required and must be an array")
    if not value:
        raise ValidationError(name, "must not be empty")
    if len(value) > max_items:
        raise ValidationError(name, f"has {len(value)} items; the maximum per request is {max_items} "
                                    "(setting BULK_MAX_ITEMS); split the list or use the batch API")
    return value
