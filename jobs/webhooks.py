"""Completion webhooks: one signed event per finished job or batch, POSTed to its callbackUrl.

A job's success or failure callback (jobs/tasks.py), or the batch code when a batch reaches a
final status (jobs/batch.py), calls ``notify_job`` / ``notify_batch_if_final``. Those build the
event body once, claim the event in its Redis state hash and queue ``deliver`` on the
``webhooks`` queue with RQ's Retry (WEBHOOK_RETRIES after WEBHOOK_RETRY_INTERVALS_S). The claim
makes the triggers idempotent: a finished job that RQ runs again (at-least-once, SPEC 8) or a
batch that several chunks see finishing produces its event once. A job that runs again after
a failure (requeued from the failed registry) is a new event.

Each attempt signs the stored body with the vendor's current secret and the send time,
Stripe-style: ``X-ImageQueue-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``,
and POSTs it through the photo fetcher's address policy (the host is resolved once, refused if
private or loopback unless FETCH_ALLOW_NETWORKS allows it, and the connection pinned to the
checked IP). Redirects are not followed. Any 2xx is a delivery; anything else, a timeout or a
refused connection is retried; a refused address, a bad URL or a vendor without a secret fail
at once. The state hash (``contracts.WEBHOOK_STATE_KEY``) is what job and batch status show.

RQ 3's own ``Webhook`` is not used: it sends once, unsigned, from the worker, without address
checks or retries, and keeps no delivery state.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import requests
from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Queue, Retry, get_current_job
from rq.job import Job

from core import contracts
from core.config import Settings
from core.db.batches import BATCH_FINAL
from core.db.database import Database
from core.errors import FORBIDDEN_ADDRESS, INVALID_URL, JobError, PermanentJobError, TransientJobError
from core.logs import with_job_context

log = logging.getLogger(__name__)

USER_AGENT = "image-queue-webhooks/1.0"
SIGNATURE_HEADER = "X-ImageQueue-Signature"
EVENT_HEADER = "X-ImageQueue-Event"
EVENT_ID_HEADER = "X-ImageQueue-Event-Id"
ATTEMPT_HEADER = "X-ImageQueue-Delivery-Attempt"
# Error codes of a delivery (shown in the state's lastError and in RQ's failed registry).
WEBHOOK_FAILED = "WEBHOOK_FAILED"  # transient: not answered 2xx, timeout, connection refused
WEBHOOK_SECRET_MISSING = "WEBHOOK_SECRET_MISSING"  # permanent: the vendor has no signing secret
_RESPONSE_EXCERPT_BYTES = 300  # of a refusing receiver's answer, kept in lastError

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


class DeliveryFailed(TransientJobError):
    """The receiver did not take the event (non-2xx, timeout, connection error); RQ retries."""

    code = WEBHOOK_FAILED

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def _iso(when: datetime | None = None) -> str:
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
    body["timestamp"] = _iso()
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
        "projectId": current["project_id"], "status": status, "imageCount": int(current["image_count"]),
        "skipped": int(current["skipped"]),
        "progress": {"processed": int(current["processed"]), "total": int(current["image_count"]),
                     "failed": int(current["failed"])},
        "resultsUrl": f"/api/batch/{batch_id}/results",
    }
    if current.get("error_code"):
        body["error"] = {"code": current["error_code"], "message": current["error_message"]}
    body["timestamp"] = _iso()
    return _queue_delivery(connection, settings, "batch", batch_id, current["vendor_id"], current["callback_url"],
                           event, eid, body)


def _queue_delivery(connection: Redis, settings: Settings, kind: str, target_id: str, vendor_id: str, url: str,
                    event: str, eid: str, body: dict[str, Any]) -> bool:
    key = state_key(kind, target_id)
    retries = max(settings.webhook_retries, 0)
    fields = {
        "url": url, "event": event, "eventId": eid, "vendorId": vendor_id, "state": contracts.WEBHOOK_PENDING,
        "attempts": 0, "maxAttempts": 1 + retries, "createdAt": _iso(),
        "body": json.dumps(body, separators=(",", ":"), default=str),
    }
    args: list[Any] = [eid, settings.webhook_state_ttl_s]
    for name, value in fields.items():
        args += [name, value]
    if not connection.eval(_CLAIM, 1, key, *args):
        log.info("%s=%s vendor=%s %s already queued (event %s)", kind, target_id, vendor_id, event, eid)
        return False
    try:
        Queue(contracts.QUEUE_WEBHOOKS, connection=connection).enqueue(
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
def _state(connection: Redis, key: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = connection.hgetall(key)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def _session(settings: Settings) -> requests.Session:
    """A session that resolves, checks and pins every host like the photo fetcher (jobs/fetch.py)."""
    from requests_hardened import Config, HTTPSession

    from jobs.fetch import _PinningAdapter, parse_allow_networks

    timeout = settings.webhook_timeout_s
    session = HTTPSession(Config(ip_filter_enable=True, ip_filter_allow_loopback_ips=False, never_redirect=True,
                                 default_timeout=(timeout, timeout), user_agent_override=USER_AGENT))
    session.trust_env = False  # no proxy: it would resolve the name itself, defeating the pin
    allow = parse_allow_networks(tuple(settings.fetch_allow_networks))
    session.mount("http://", _PinningAdapter(is_https_proto=False, allow_networks=allow))
    session.mount("https://", _PinningAdapter(is_https_proto=True, allow_networks=allow))
    return session


def _post(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> int:
    """POST once; the status code of a 2xx answer, else DeliveryFailed / PermanentJobError."""
    from requests_hardened.ip_filter import InvalidIPAddress

    timeout = settings.webhook_timeout_s
    try:
        with _session(settings) as session, session.post(url, data=body, headers=headers, timeout=(timeout, timeout),
                                                         allow_redirects=False, stream=True) as response:
            if 200 <= response.status_code < 300:
                return response.status_code
            excerpt = response.raw.read(_RESPONSE_EXCERPT_BYTES, decode_content=True) or b""
            said = f"{url} answered HTTP {response.status_code}"
            if 300 <= response.status_code < 400:
                said += " (redirects are not followed; give the final URL as callbackUrl)"
            if excerpt.strip():
                said += f": {excerpt.decode('utf-8', 'replace').strip()}"
            raise DeliveryFailed(said, status_code=response.status_code)
    except InvalidIPAddress as exc:
        raise PermanentJobError(f"{url}: {exc}", code=FORBIDDEN_ADDRESS) from exc
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema) as exc:
        raise PermanentJobError(f"{url} is not a usable URL: {exc}", code=INVALID_URL) from exc
    except requests.exceptions.Timeout as exc:
        raise DeliveryFailed(f"{url}: no answer within WEBHOOK_TIMEOUT_S={timeout} s") from exc
    except requests.RequestException as exc:
        raise DeliveryFailed(f"{url}: {type(exc).__name__}: {exc}") from exc


def deliver(kind: str, target_id: str, eid: str) -> dict[str, Any]:
    """POST the stored event once, signed; raise so that RQ retries when it was not taken."""
    from jobs.tasks import context

    job = get_current_job()
    assert job is not None, "deliver runs inside an rq worker"
    connection, ctx = job.connection, context()
    key = state_key(kind, target_id)
    state = _state(connection, key)
    if state.get("eventId") != eid:
        log.info("%s=%s event %s superseded or expired; not sent", kind, target_id, eid)
        return {"sent": False, "reason": "superseded"}
    if state.get("state") == contracts.WEBHOOK_DELIVERED:  # this job ran again after delivering
        return {"sent": False, "reason": "already delivered"}
    vendor_id, url, event = state["vendorId"], state["url"], state["event"]
    attempt = int(connection.hincrby(key, "attempts", 1))  # type: ignore[arg-type]
    connection.hset(key, mapping={"lastAttemptAt": _iso(), "nextAttemptAt": ""})
    secret = ctx.db.get_webhook_secret(vendor_id)
    if not secret:
        raise PermanentJobError(f"vendor {vendor_id} has no webhook secret; an operator creates one with "
                                f"'python -m service.cli vendor webhook-secret {vendor_id}'",
                                code=WEBHOOK_SECRET_MISSING)
    body = state["body"].encode("utf-8")
    headers = {
        "Content-Type": "application/json", "Accept": "*/*",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        EVENT_HEADER: event, EVENT_ID_HEADER: eid, ATTEMPT_HEADER: str(attempt),
    }
    status = _post(url, body, headers, ctx.settings)
    connection.hset(key, mapping={"state": contracts.WEBHOOK_DELIVERED, "deliveredAt": _iso(),
                                  "lastStatusCode": status, "lastError": ""})
    log.info("%s=%s vendor=%s %s delivered to %s (HTTP %d, attempt %d)", kind, target_id, vendor_id, event, url,
             status, attempt)
    return {"sent": True, "statusCode": status, "attempt": attempt}


@with_job_context
def on_delivery_failure(job: Job, connection: Redis, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None, tb: TracebackType | None) -> None:
    """RQ failure callback of ``deliver``: record the attempt's error; ``failed`` once no retry is left."""
    kind, target_id, eid = job.args
    key = state_key(kind, target_id)
    if isinstance(exc_value, JobError):
        code, message = exc_value.code, exc_value.message
        if exc_value.permanent:
            job.retries_left = 0  # RQ reads this right after the callback: no retry
    else:
        code, message = WEBHOOK_FAILED, f"{type(exc_value).__name__}: {exc_value}"
    final = not job.should_retry
    fields: dict[str, Any] = {
        "lastError": f"{code}: {message}"[:1000],
        "lastStatusCode": getattr(exc_value, "status_code", None) or "",
        "state": contracts.WEBHOOK_FAILED if final else contracts.WEBHOOK_PENDING,
        "nextAttemptAt": "" if final else _iso(datetime.now(UTC) + timedelta(seconds=job.get_retry_interval())),
    }
    if _state(connection, key).get("eventId") == eid:  # not superseded by a newer event meanwhile
        connection.hset(key, mapping=fields)
    log.warning("%s=%s vendor=%s webhook %s attempt failed (%s%s): %s", kind, target_id,
                job.meta.get("webhook_vendor"), eid, code, "" if final else ", will retry", message)
