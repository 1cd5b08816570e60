"""Completion webhook events: build one signed-later event per finished job or batch and queue it.

A job's success or failure callback (jobs/tasks.py), or the batch code when a batch reaches a
final status, calls ``notify_job`` / ``notify_batch_if_final``. Those build the event body once,
claim the event in its Redis state hash and queue ``jobs.webhooks.deliver`` (by dotted name) on
the ``webhooks`` queue with RQ's Retry (WEBHOOK_RETRIES after WEBHOOK_RETRY_INTERVALS_S). The
claim makes the triggers idempotent: a finished job that RQ runs again (at-least-once, SPEC 8) or
a batch that several chunks see finishing produces its event once. Light (redis, rq), so the
operator tools can finish a batch too; the HTTP delivery lives in jobs/webhooks.py.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Retry
from rq.job import Job

from core import contracts, rqjson
from core.config import Settings
from core.db.batches import BATCH_FINAL
from core.db.database import Database

log = logging.getLogger(__name__)

# Claim an event: unless the hash already holds this event id, replace it with the new state.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'eventId') == ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
_JOB_TYPES = {contracts.JOB_CROP_FACE: contracts.KIND_FACE_CROP,
              contracts.JOB_REMOVE_BACKGROUND: contracts.KIND_REMOVE_BG}


def iso_timestamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_key(kind: str, target_id: str) -> str:
    """The Redis hash holding the delivery state of a job's ("job") or batch's ("batch") webhook."""
    return contracts.WEBHOOK_STATE_KEY.format(kind=kind, id=target_id)


def event_id(kind: str, target_id: str, event: str, generation: int | str = "") -> str:
    """A stable event id: the same outcome of the same run always gets the same one."""
    digest = hashlib.sha256(f"{kind}:{target_id}:{event}:{generation}".encode()).hexdigest()
    return f"evt_{digest[:32]}"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-ImageQueue-Signature value: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


STANDARD_SECRET_PREFIX = "whsec_"


def standard_signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str | None:
    """The Standard Webhooks ``webhook-signature`` value, or None for a secret it cannot use.

    Standard Webhooks (the spec behind off-the-shelf verifiers such as the ``standardwebhooks``
    package) signs "<webhook-id>.<webhook-timestamp>.<body>" with HMAC-SHA256 keyed by the
    base64-decoded part of a ``whsec_<base64>`` secret, and sends ``v1,<base64 digest>``.
    Secrets made before these headers existed are URL-safe tokens, not base64: those get no
    standard signature (rotating the secret gives one); X-ImageQueue-Signature signs either way.
    """
    encoded = secret.removeprefix(STANDARD_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not key:
        return None
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


# --- triggers (run in the job callbacks and the batch code) ----------------------------------
def notify_job(job: Job, connection: Redis, settings: Settings, event: str, *,
               result: Any = None, error: dict[str, Any] | None = None) -> bool:
    """Queue the job's final event if its payload has a callbackUrl; True when queued now."""
    payload = (job.kwargs or {}).get("payload") or {}
    url = payload.get("callbackUrl")
    if not url:
        return False
    # A run that starts counts an attempt (jobs.tasks._begin); a re-run of a finished job does not.
    eid = event_id("job", job.id, event, int(job.meta.get("attempts", 0)))
    body: dict[str, Any] = {
        "eventId": eid, "event": event, "jobId": job.id, "jobType": _JOB_TYPES.get(job.func_name or ""),
        "vendorId": payload.get("vendorId"), "projectId": payload.get("projectId"),
        "recordId": payload.get("recordId"),
    }
    if error is not None:
        body["error"] = error
    else:
        body["result"] = result
    body["timestamp"] = iso_timestamp()
    return _queue_delivery(connection, settings, "job", job.id, str(payload.get("vendorId")), url, event, eid, body)


def notify_batch_if_final(db: Database, settings: Settings, connection: Redis, batch_id: str,
                          known: dict[str, Any] | None = None) -> bool:
    """Queue the batch's final event if it has a callbackUrl and is final; True when queued now.

    Safe to call whenever the batch may have just finished: the event is claimed once.
    ``known``: the batch row as read earlier; one without a callbackUrl skips the database.
    """
    if known is not None and not known.get("callback_url"):
        return False
    current = db.get_batch(batch_id)
    if current is None or not current.get("callback_url") or current["status"] not in BATCH_FINAL:
        return False
    batch_id, status = current["batch_id"], current["status"]
    event = f"batch.{status}"
    eid = event_id("batch", batch_id, event)
    body: dict[str, Any] = {
        "eventId": eid, "event": event, "batchId": batch_id, "vendorId": current["vendor_id"],
        "projectId": current["project_id"], "status": status,
        "operation": current.get("operation") or contracts.OPERATION_CROP_FACE,
        "imageCount": int(current["image_count"]), "skipped": int(current["skipped"]),
        "canceled": int(current.get("canceled") or 0),
        "progress": {"processed": int(current["processed"]), "total": int(current["image_count"]),
                     "failed": int(current["failed"])},
        "resultsUrl": f"/api/batch/{batch_id}/results",
        "resultsZipUrl": f"/api/batch/{batch_id}/results.zip",
    }
    if current.get("error_code"):
        body["error"] = {"code": current["error_code"], "message": current["error_message"]}
    body["timestamp"] = iso_timestamp()
    return _queue_delivery(connection, settings, "batch", batch_id, current["vendor_id"], current["callback_url"],
                           event, eid, body)


def _queue_delivery(connection: Redis, settings: Settings, kind: str, target_id: str, vendor_id: str, url: str,
                    event: str, eid: str, body: dict[str, Any]) -> bool:
    key = state_key(kind, target_id)
    retries = max(settings.webhook_retries, 0)
    fields = {
        "url": url, "event": event, "eventId": eid, "vendorId": vendor_id, "state": contracts.WEBHOOK_PENDING,
        "attempts": 0, "maxAttempts": 1 + retries, "createdAt": iso_timestamp(),
        "body": json.dumps(body, separators=(",", ":"), default=str),
    }
    args: list[Any] = [eid, settings.webhook_state_ttl_s]
    for name, value in fields.items():
        args += [name, value]
    if not connection.eval(_CLAIM, 1, key, *args):
        log.info("%s=%s vendor=%s %s already queued (event %s)", kind, target_id, vendor_id, event, eid)
        return False
    try:
        rqjson.queue(contracts.QUEUE_WEBHOOKS, connection=connection).enqueue(
            contracts.JOB_DELIVER_WEBHOOK,
            args=(kind, target_id, eid),
            job_id=f"webhook-{eid}",
            job_timeout=int(2 * settings.webhook_timeout_s) + 10,
            result_ttl=settings.webhook_state_ttl_s,
            failure_ttl=settings.webhook_state_ttl_s,
            retry=Retry(max=retries, interval=list(settings.webhook_retry_intervals_s)) if retries else None,
            on_failure=Callback(contracts.ON_WEBHOOK_FAILURE),
            meta={"webhook_vendor": vendor_id, "webhook_event": event},
        )
    except RedisError:
        connection.hdel(key, "eventId")  # let the next trigger claim the event again
        raise
    log.info("%s=%s vendor=%s %s queued for %s (event %s)", kind, target_id, vendor_id, event, url, eid)
    return True


# --- the delivery job (queue "webhooks") -------------------------------------------------------
def delivery_state(connection: Redis, key: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = connection.hgetall(key)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}
