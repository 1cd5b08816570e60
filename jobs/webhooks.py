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

import logging
import time
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import requests
from redis import Redis
from redis.typing import EncodableT, FieldT
from rq import get_current_job
from rq.job import Job

from core import contracts
from core.config import Settings
from core.errors import (
    FORBIDDEN_ADDRESS,
    INVALID_URL,
    WEBHOOK_FAILED,
    WEBHOOK_SECRET_MISSING,
    PermanentJobError,
    TransientJobError,
)
from core.logs import with_job_context
from core.webhook_events import delivery_state, iso_timestamp, sign, standard_signature, state_key
from jobs.context import context
from jobs.pinned_http import pinned_session
from jobs.settle import settle_failure

log = logging.getLogger(__name__)

USER_AGENT = "image-queue-webhooks/1.0"
SIGNATURE_HEADER = "X-ImageQueue-Signature"
EVENT_HEADER = "X-ImageQueue-Event"
EVENT_ID_HEADER = "X-ImageQueue-Event-Id"
ATTEMPT_HEADER = "X-ImageQueue-Delivery-Attempt"
# Error codes of a delivery (shown in the state's lastError and in RQ's failed registry).
_RESPONSE_EXCERPT_BYTES = 300  # of a refusing receiver's answer, kept in lastError

class DeliveryFailed(TransientJobError):
    """The receiver did not take the event (non-2xx, timeout, connection error); RQ retries."""

    code = WEBHOOK_FAILED

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def _session(settings: Settings) -> requests.Session:
    """A session that resolves, checks and pins every host like the photo fetcher (jobs/pinned_http.py)."""
    timeout = settings.webhook_timeout_s
    return pinned_session(timeout=(timeout, timeout), user_agent=USER_AGENT,
                          allow_networks=settings.fetch_allow_networks)


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
    job = get_current_job()
    assert job is not None, "deliver runs inside an rq worker"
    connection, ctx = job.connection, context()
    key = state_key(kind, target_id)
    state = delivery_state(connection, key)
    if state.get("eventId") != eid:
        log.info("%s=%s event %s superseded or expired; not sent", kind, target_id, eid)
        return {"sent": False, "reason": "superseded"}
    if state.get("state") == contracts.WEBHOOK_DELIVERED:  # this job ran again after delivering
        return {"sent": False, "reason": "already delivered"}
    vendor_id, url, event = state["vendorId"], state["url"], state["event"]
    attempt = int(connection.hincrby(key, "attempts", 1))
    connection.hset(key, mapping={"lastAttemptAt": iso_timestamp(), "nextAttemptAt": ""})
    secret = ctx.db.get_webhook_secret(vendor_id)
    if not secret:
        raise PermanentJobError(f"vendor {vendor_id} has no webhook secret; an operator creates one with "
                                f"'python -m service.cli vendor webhook-secret {vendor_id}'",
                                code=WEBHOOK_SECRET_MISSING)
    body = state["body"].encode("utf-8")
    now = int(time.time())
    headers = {
        "Content-Type": "application/json", "Accept": "*/*",
        SIGNATURE_HEADER: sign(secret, body, now),
        EVENT_HEADER: event, EVENT_ID_HEADER: eid, ATTEMPT_HEADER: str(attempt),
        # Standard Webhooks headers, for receivers that verify with an off-the-shelf library.
        "webhook-id": eid, "webhook-timestamp": str(now),
    }
    standard = standard_signature(secret, eid, now, body)
    if standard is not None:
        headers["webhook-signature"] = standard
    status = _post(url, body, headers, ctx.settings)
    connection.hset(key, mapping={"state": contracts.WEBHOOK_DELIVERED, "deliveredAt": iso_timestamp(),
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
    code, message, final = settle_failure(job, exc_value, unexpected_code=WEBHOOK_FAILED)
    fields: dict[FieldT, EncodableT] = {
        "lastError": f"{code}: {message}"[:1000],
        "lastStatusCode": getattr(exc_value, "status_code", None) or "",
        "state": contracts.WEBHOOK_FAILED if final else contracts.WEBHOOK_PENDING,
        "nextAttemptAt": "" if final else iso_timestamp(
            datetime.now(UTC) + timedelta(seconds=job.get_retry_interval())),
    }
    if delivery_state(connection, key).get("eventId") == eid:  # not superseded by a newer event meanwhile
        connection.hset(key, mapping=fields)
    log.warning("%s=%s vendor=%s webhook %s attempt failed (%s%s): %s", kind, target_id,
                job.meta.get("webhook_vendor"), eid, code, "" if final else ", will retry", message)
