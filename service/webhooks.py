"""Completion webhooks, the web tier's side: the ``callbackUrl`` field, vendors' signing secrets
and the delivery state shown in job and batch status. Sending is the workers' (jobs/webhooks.py).
"""
from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

from redis import Redis

from core import contracts
from core.db.database import Database
from service.errors import ApiError
from service.extensions import backends
from service.validation import field

SECRET_PREFIX = "whsec_"
FIELD = "callbackUrl"


class WebhookSecretMissing(ApiError):
    code = 422
    error_code = "WEBHOOK_SECRET_MISSING"


def create_webhook_secret(db: Database, vendor_id: str) -> str:
    """Give the vendor a new signing secret (replacing any old one) and return it."""
    # whsec_<base64 of 32 random bytes>: the Standard Webhooks secret format, so vendors can
    # verify the webhook-signature header with off-the-shelf libraries too.
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    db.set_webhook_secret(vendor_id, secret)
    return secret


def callback_url(source: Mapping[str, Any], vendor_id: str) -> str | None:
    """The request's validated ``callbackUrl`` (None when absent); 400 when malformed, 422 when
    the vendor has no signing secret to sign its events with."""
    url = field(contracts.validate_callback_url, dict(source), FIELD)
    if url is not None and backends().db.get_webhook_secret(vendor_id) is None:
        raise WebhookSecretMissing(
            f"Vendor {vendor_id} has no webhook signing secret yet, so its events could not be signed. "
            f"An operator creates one with 'python -m service.cli vendor webhook-secret {vendor_id}'.",
            details={"field": FIELD})
    return url


def delivery_view(redis: Redis, kind: str, target_id: str, url: str | None) -> dict[str, Any] | None:
    """The ``webhook`` object of job ("job") or batch ("batch") status; None without a callbackUrl."""
    if not url:
        return None
    raw: dict[bytes, bytes] = redis.hgetall(contracts.WEBHOOK_STATE_KEY.format(kind=kind, id=target_id))  # type: ignore[assignment]
    state = {k.decode(): v.decode() for k, v in raw.items()}
    if not state:  # nothing to send before the job or batch is final
        return {"url": url, "state": contracts.WEBHOOK_PENDING, "event": None, "eventId": None, "attempts": 0}

    def number(name: str) -> int | None:
        return int(state[name]) if state.get(name) else None

    return {
        "url": state.get("url", url),
        "state": state.get("state"),
        "event": state.get("event"),
        "eventId": state.get("eventId"),
        "attempts": number("attempts") or 0,
        "maxAttempts": number("maxAttempts"),
        "lastStatusCode": number("lastStatusCode"),
        "lastError": state.get("lastError") or None,
        "lastAttemptAt": state.get("lastAttemptAt") or None,
        "nextAttemptAt": state.get("nextAttemptAt") or None,
        "deliveredAt": state.get("deliveredAt") or None,
    }
