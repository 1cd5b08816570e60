"""API keys: creation, hashing, and the per-request vendor lookup.

Keys are 32 random bytes (``iq_`` + urlsafe base64), shown once at creation and stored only
as their SHA-256: with that much entropy a slow password hash adds nothing.
"""
from __future__ import annotations

import hashlib
import secrets
from typing import Any

from flask import g, request

from core.db.database import Database
from service.errors import Forbidden, Unauthorized, ValidationError
from service.extensions import backends

KEY_PREFIX = "iq_"


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(db: Database, vendor_id: str) -> str:
    """Create and store a new key for ``vendor_id``; returns the key (never stored in clear)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    db.add_api_key(vendor_id, key[:10], hash_key(key))
    return key


def _presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def authenticate() -> str:
    """Resolve the calling vendor from the API key, store it on ``g`` and return it."""
    key = _presented_key()
    if not key:
        raise Unauthorized("Missing API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'.",
                           error_code="MISSING_API_KEY")
    if len(key) > 256:
        raise Unauthorized("Invalid API key.", error_code="INVALID_API_KEY")
    key_hash = hash_key(key)
    # The rate limiter (service/limits.py) resolves the key before this blueprint hook runs:
    # one database lookup per request, whoever asks first.
    looked_up = g.get("api_key_lookup")
    if looked_up is not None and looked_up[0] == key_hash:
        vendor_id = looked_up[1]
    else:
        vendor_id = backends().db.vendor_for_key_hash(key_hash)
        g.api_key_lookup = (key_hash, vendor_id)
    if vendor_id is None:
        raise Unauthorized("Invalid or revoked API key.", error_code="INVALID_API_KEY")
    g.vendor_id = vendor_id
    return vendor_id


def require_vendor() -> None:
    """``before_request`` hook: authenticate, or abort with 401."""
    authenticate()


def check_body_vendor(body: dict[str, Any], vendor_id: str) -> None:
    """The seeds' optional ``vendorId`` body field must name the key's own vendor."""
    if "vendorId" not in body or body["vendorId"] is None:
        return
    claimed = body["vendorId"]
    if not isinstance(claimed, (str, int)) or isinstance(claimed, bool):
        raise ValidationError("vendorId", "must be a string")
    if str(claimed) != vendor_id:
        raise Forbidden("vendorId in the body does not match the vendor of the API key.",
                        error_code="VENDOR_MISMATCH", details={"field": "vendorId"})


def current_vendor() -> str:
    """The vendor authenticated for this request."""
    return g.vendor_id
