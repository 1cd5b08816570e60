"""Idempotent POSTs: an ``Idempotency-Key`` header makes a retried submission answer the
original response instead of queueing the work twice.

``init_app`` wraps the view of every POST route of the image-queue and batch blueprints, after
authentication and the rate limits have run. For a request with the header, per vendor and key,
in Redis (``iq:idem:<vendor>:<sha256 of the key>``):

* no entry: ``SET NX`` a running marker (it expires after IDEMPOTENCY_LOCK_TTL_S, so a key is
  not blocked for ever by an API process that died mid-request), run the view; a 2xx answer is
  stored for IDEMPOTENCY_TTL_S with a fingerprint of the request, anything else (400, 503, an
  exception) removes the marker so that a retry runs afresh;
* the running marker: 409 ``IDEMPOTENCY_KEY_IN_USE`` with ``Retry-After``;
* a stored answer with the same fingerprint: that answer again (same status and body), with
  ``Idempotent-Replayed: true``; with another fingerprint: 422 ``IDEMPOTENCY_KEY_REUSED``.

The fingerprint is the endpoint plus the JSON body (parsed and re-serialised with sorted keys,
so key order and spacing do not matter). For a multipart upload (upload-zip) it is the form
fields plus, per file, its name, its size and a hash of its last 64 KiB, where a ZIP keeps its
central directory (every entry's name, size and CRC-32), instead of a hash of all its bytes:
hashing a 5 GB upload is not worth it. The marker is taken before the upload is read, so a
duplicate sent while the first upload is still streaming gets its 409 at once; an upload that
is replayed or refused is read (to compare it) and then deleted.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from flask import Flask, Response, current_app, request
from redis import Redis
from redis.exceptions import RedisError

from service.auth import current_vendor
from service.errors import ApiError
from service.extensions import backends

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as Stripe's keys (UUIDs fit)
BLUEPRINTS = ("image_queue", "batch")  # every POST route of these is idempotent
IN_USE_RETRY_AFTER_S = 2
REDIS_KEY = "iq:idem:{vendor}:{digest}"
FILE_TAIL_BYTES = 64 * 1024  # of an uploaded file, hashed into the fingerprint with its size

# Remove the marker only if it is still this request's own.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# Store the answer over this request's marker (or over nothing, if the marker expired).
_STORE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or not current then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class InvalidIdempotencyKey(ApiError):
    code = 400
    error_code = "INVALID_IDEMPOTENCY_KEY"


class IdempotencyKeyInUse(ApiError):
    code = 409
    error_code = "IDEMPOTENCY_KEY_IN_USE"


class IdempotencyKeyReused(ApiError):
    code = 422
    error_code = "IDEMPOTENCY_KEY_REUSED"


def redis_key(vendor_id: str, key: str) -> str:
    """Where a vendor's key is kept (the key itself is hashed: it may be any visible text)."""
    return REDIS_KEY.format(vendor=vendor_id, digest=hashlib.sha256(key.encode()).hexdigest()[:40])


def _file_digest(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(size - FILE_TAIL_BYTES, 0))
    digest = hashlib.sha256(f"{size}:".encode() + stream.read(FILE_TAIL_BYTES)).hexdigest()
    stream.seek(0)
    return digest


def fingerprint(max_upload_bytes: int) -> str:
    """What a request with the same key must match to get the stored answer."""
    if request.mimetype == "multipart/form-data":
        if request.content_length is not None and request.content_length > max_upload_bytes:
            basis = b"too large"  # the view refuses it with 413 without reading it
        else:
            request.max_content_length = max_upload_bytes  # reads the upload as the view would (UploadRequest)
            # str(): a malformed part may come with no name (None), which sorts against no string.
            parts = [f"{name}={value}" for name, value in sorted(request.form.items(multi=True),
                                                                   key=lambda item: (str(item[0]), str(item[1])))]
            parts += [f"{name}:{upload.filename}:{_file_digest(upload.stream)}"
                      for name, upload in sorted(request.files.items(multi=True), key=lambda item: str(item[0]))]
            basis = "\n".join(parts).encode()
    else:
        data = request.get_data(cache=True)  # cached: the view's json_body() reads it again
        try:
            basis = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
        except (ValueError, RecursionError):
            basis = data
    return hashlib.sha256(f"{request.method} {request.endpoint}\n".encode() + basis).hexdigest()


def _discard_uploads() -> None:
    """Delete what the form parser wrote for a request whose view will not run."""
    for _name, upload in request.files.items(multi=True):  # values() would skip a repeated field name
        name = getattr(upload.stream, "name", None)
        upload.close()
        if isinstance(name, str):
            Path(name).unlink(missing_ok=True)


def _replay(stored: dict[str, Any]) -> Response:
    response = current_app.response_class(stored["body"], status=stored["status"], mimetype=stored["mimetype"])
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _claim(redis: Redis, where: str, marker: str, lock_ttl_s: int) -> dict[str, Any] | None:
    """Take the key (None), or return what holds it: a running marker or a stored answer."""
    for _ in range(3):  # the holder may expire between our SET NX and GET
        if redis.set(where, marker, nx=True, ex=lock_ttl_s):
            return None
        raw = redis.get(where)
        if raw is not None:
            return json.loads(raw)
    return {"state": "running"}


def _release(redis: Redis, where: str, marker: str) -> None:
    try:
        redis.eval(_RELEASE, 1, where, marker)
    except RedisError as exc:  # the marker expires on its own (IDEMPOTENCY_LOCK_TTL_S)
        log.warning("idempotency key %s not released: %s", where, exc)


def _idempotent(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not KEY_PATTERN.match(key):
            raise InvalidIdempotencyKey(f"{HEADER} must be 1-255 visible ASCII characters (a UUID is a good choice).",
                                        details={"header": HEADER})
        b = backends()
        settings = b.settings
        vendor_id = current_vendor()
        where = redis_key(vendor_id, key)
        marker = json.dumps({"state": "running", "token": secrets.token_hex(8)})
        held = _claim(b.redis, where, marker, settings.idempotency_lock_ttl_s)
        if held is not None:
            if held.get("state") != "done":
                raise IdempotencyKeyInUse(
                    f"A request with this {HEADER} is still being processed; retry in {IN_USE_RETRY_AFTER_S} s "
                    "to get its answer.", retry_after=IN_USE_RETRY_AFTER_S)
            try:
                same = held.get("fingerprint") == fingerprint(settings.batch_max_upload_bytes)
            finally:
                _discard_uploads()
            if not same:
                raise IdempotencyKeyReused(
                    f"This {HEADER} was already used for a different request (another route or body) within "
                    f"the last {settings.idempotency_ttl_s} s (IDEMPOTENCY_TTL_S); use a new key for a new request.",
                    details={"header": HEADER})
            log.info("vendor=%s %s replayed (%s)", vendor_id, request.path, HEADER)
            return _replay(held)
        try:
            print_ = fingerprint(settings.batch_max_upload_bytes)
            response = current_app.make_response(view(*args, **kwargs))
        except BaseException:
            _release(b.redis, where, marker)
            raise
        if not 200 <= response.status_code < 300 or response.is_streamed:
            _release(b.redis, where, marker)
            return response
        done = json.dumps({"state": "done", "fingerprint": print_, "status": response.status_code,
                           "mimetype": response.mimetype, "body": response.get_data(as_text=True),
                           "createdAt": datetime.now(UTC).isoformat()})
        try:
            if not b.redis.eval(_STORE, 1, where, marker, done, str(settings.idempotency_ttl_s)):
                log.warning("vendor=%s %s: its marker expired and was taken meanwhile; answer not stored",
                            vendor_id, where)
        except RedisError as exc:  # the work is queued: answer it; a retry gets 409 until the marker expires
            log.warning("vendor=%s answer for %s not stored: %s", vendor_id, where, exc)
        return response

    return wrapper


def init_app(app: Flask) -> None:
    """Make every POST route of the image-queue and batch blueprints idempotent (call after
    registering them)."""
    wrapped = set()
    for rule in app.url_map.iter_rules():
        if "POST" in (rule.methods or ()) and rule.endpoint.split(".", 1)[0] in BLUEPRINTS:
            if rule.endpoint not in wrapped:
                app.view_functions[rule.endpoint] = _idempotent(app.view_functions[rule.endpoint])
                wrapped.add(rule.endpoint)
    app.extensions["idempotent_endpoints"] = frozenset(wrapped)
