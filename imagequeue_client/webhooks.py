"""Checking the signature of image-queue's completion webhooks in a receiver.

Every delivery carries ``X-ImageQueue-Signature: t=<unix time>,v1=<hex>``, where the hex is
HMAC-SHA256 over ``"<t>." + <the raw request body>`` keyed with the vendor's webhook secret.
Check it on the raw bytes (before any JSON parsing), reject old timestamps (replays), and use
the ``eventId`` to ignore an event you have already handled (deliveries are retried).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

SIGNATURE_HEADER = "X-ImageQueue-Signature"
EVENT_HEADER = "X-ImageQueue-Event"
EVENT_ID_HEADER = "X-ImageQueue-Event-Id"
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The signature is missing, malformed, too old or does not match."""


def compute_signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` with ``secret``."""
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, header: str | None, body: bytes | str, *,
                     tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> dict[str, Any]:
    """Check a delivery's ``X-ImageQueue-Signature`` header against its raw body and return the
    parsed event; SignatureError when it does not verify or is older than ``tolerance_s``."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: {header!r}")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp {timestamp} is more than {tolerance_s:g} s from now")
    expected = compute_signature(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureError("signature does not match (wrong secret, or the body was changed)")
    event: dict[str, Any] = json.loads(body)
    return event
