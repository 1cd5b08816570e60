"""Client for a pool of rembg servers (`rembg s`): round-robin over REMBG_URLS, per-instance health.

Each call POSTs the image to one instance's ``/api/remove`` (multipart ``file``, form fields
``model``, ``a`` alpha matting, ``om`` only mask; the jobs ask for the mask only and make the
cut-out themselves, jobs/imaging/background.py). If that instance cannot be reached, times
out, or answers anything but a PNG (5xx, 404, 429...), the call moves on to the next instance
within the same job attempt. A 4xx about the request itself (400, 413, 415, 422) is the image's
fault, not the instance's: it fails the job permanently (``REMBG_REJECTED``). When no instance
could take the image the job raises ``REMBG_UNAVAILABLE``, a transient error RQ retries.

Where the state lives, and why. RQ forks a work-horse per job and the workers run as many
processes, often on several hosts; what one job learns in its own memory ("this instance timed
out") dies with its horse, and every later job would wait out the same timeout again. So the
state every worker must share is kept in Redis, which they all use anyway:

* rotation: ``INCR`` on one key (``contracts.REMBG_ROUND_ROBIN_KEY``); call *n* starts at
  instance *n mod N*, so jobs spread evenly over the instances whichever worker runs them;
* health: one circuit breaker per instance (pybreaker's ``CircuitBreaker`` with its
  ``CircuitRedisStorage``): *closed* (in use) → *open* after a failure, skipped for
  REMBG_COOLDOWN_S → *half-open* once that has passed: the next call first probes
  ``GET /openapi.json`` (rembg has no health route) and then sends its image; success closes
  the breaker, failure opens it for another cool-down. The last error of each instance is
  kept too (``contracts.REMBG_LAST_ERROR_KEY``) for logs and the failure message.

When every instance is cooling down, a call does not fail blind: it half-opens each in turn
(probe, then the image), so a pool whose instances all blipped at once recovers on the next
job instead of refusing work for a whole cool-down, while a dead one costs only a refused
connection. If Redis itself fails, every breaker reads "closed" (pybreaker's fallback, or
state in memory) and the rotation starts at random: the pool degrades to trying instances in
turn, never to refusing work.
"""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pybreaker
import requests
from redis import Redis
from redis.exceptions import RedisError

from core import contracts
from core.config import Settings
from core.errors import REMBG_REJECTED, REMBG_UNAVAILABLE, PermanentJobError, TransientJobError

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAST_ERROR_TTL_S = 24 * 3600
# rembg answers these about the request itself (FastAPI validation, bad or oversized upload):
# another instance would answer the same, so the job fails at once.
_REJECTING_STATUSES = frozenset({400, 413, 415, 422})
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")


class InstanceError(Exception):
    """One instance failed (unreachable, timed out, wrong answer): try the next one."""


class ImageRejected(PermanentJobError):
    """An instance refused the image itself (4xx); retrying or rotating cannot help."""

    code = REMBG_REJECTED


@dataclass(frozen=True)
class RembgCall:
    """What to ask rembg for."""

    model: str
    alpha_matting: bool = False
    only_mask: bool = False

    def form(self) -> dict[str, str]:
        """The form fields of POST /api/remove (``model`` is always sent: rembg's default model
        is one it would download)."""
        return {"model": self.model, "a": _bool(self.alpha_matting), "om": _bool(self.only_mask)}


@dataclass(frozen=True)
class RembgResult:
    """rembg's PNG, the instance that made it, and the instances that failed before it."""

    png: bytes
    instance: str
    failed: dict[str, str] = field(default_factory=dict)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def describe_request_error(exc: requests.RequestException, settings_hint: str) -> str:
    """A short reason for a transport error ('connection refused', 'no answer within 30 s')."""
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within the timeout ({settings_hint})"
    if isinstance(exc, requests.ReadTimeout):
        return f"no answer within the timeout ({settings_hint})"
    text = str(exc)
    match = _ERRNO.search(text)
    if isinstance(exc, requests.ConnectionError):
        if "aborted" in text.lower() or "RemoteDisconnected" in text:  # e.g. the server died mid-request
            return f"connection dropped during the request: {match.group(0) if match else 'closed by the server'}"
        return f"cannot connect: {match.group(0) if match else type(exc).__name__}"
    return f"{type(exc).__name__}: {match.group(0) if match else exc}"


class _LastError(pybreaker.CircuitBreakerListener):
    """Keeps each instance's last failure in Redis and logs breaker transitions."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        try:
            self.redis.set(contracts.REMBG_LAST_ERROR_KEY.format(url=cb.name), str(exc)[:500],
                           ex=LAST_ERROR_TTL_S)
        except RedisError:
            log.warning("rembg instance %s: could not record its failure in Redis", cb.name)

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = getattr(old_state, "name", old_state)
        log.warning("rembg instance %s: %s -> %s", cb.name, old, new_state.name)


def _storage(redis: Redis, url: str) -> pybreaker.CircuitBreakerStorage:
    """The instance's breaker state in Redis; in memory for this call if Redis cannot be reached."""
    try:
        return pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis,
                                             namespace=contracts.REMBG_BREAKER_NAMESPACE.format(url=url))
    except RedisError as exc:
        log.warning("rembg instance %s: breaker state not readable from Redis (%s); assuming closed", url, exc)
        return pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)


class RembgPool:
    """Round-robin over rembg instances whose health (circuit breakers) is shared in Redis."""

    def __init__(self, urls: Sequence[str], redis: Redis, *, connect_timeout_s: float = 2.0,
                 read_timeout_s: float = 30.0, probe_timeout_s: float = 1.0, cooldown_s: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.urls = [url.rstrip("/") for url in urls if url.strip()]
        if not self.urls:
            raise ValueError("REMBG_URLS is empty: list the rembg servers, e.g. http://127.0.0.1:7000")
        self.redis = redis
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.probe_timeout = (min(connect_timeout_s, probe_timeout_s), probe_timeout_s)
        self.session = session or requests.Session()
        self.session.trust_env = False  # internal servers: never through an HTTP(S)_PROXY
        listener = _LastError(redis)
        self.breakers = {
            url: pybreaker.CircuitBreaker(
                fail_max=1,
                reset_timeout=cooldown_s,
                exclude=[ImageRejected],
                listeners=[listener],
                state_storage=_storage(redis, url),
                name=url,
                throw_new_error_on_trip=False,  # keep the real reason, not "breaker opened"
            )
            for url in self.urls
        }

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis) -> RembgPool:
        """A pool over REMBG_URLS with the REMBG_* timeouts and cool-down."""
        return cls(settings.rembg_urls, redis, connect_timeout_s=settings.rembg_connect_timeout_s,
                   read_timeout_s=settings.rembg_read_timeout_s,
                   probe_timeout_s=settings.rembg_probe_timeout_s, cooldown_s=settings.rembg_cooldown_s)

    # --- rotation and health ---------------------------------------------------------------
    def rotation(self) -> list[str]:
        """The instances in the order the next call tries them (shared round-robin start)."""
        try:
            start = int(self.redis.incr(contracts.REMBG_ROUND_ROBIN_KEY)) - 1
        except RedisError:
            start = random.randrange(len(self.urls))
        start %= len(self.urls)
        return self.urls[start:] + self.urls[:start]

    def state(self, url: str) -> str:
        """'closed' (in use), 'open' (cooling down) or 'half-open' (to be probed)."""
        return self.breakers[url].current_state

    def probe(self, url: str) -> None:
        """GET /openapi.json (rembg answers 200 when it is up); raise InstanceError otherwise."""
        try:
            response = self.session.get(f"{url}/openapi.json", timeout=self.probe_timeout)
        except requests.RequestException as exc:
            raise InstanceError(f"probe failed: {describe_request_error(exc, 'REMBG_PROBE_TIMEOUT_S')}") from exc
        if response.status_code != 200:
            raise InstanceError(f"probe GET /openapi.json answered HTTP {response.status_code}")

    # --- the call ----------------------------------------------------------------------------
    def remove(self, image: bytes, call: RembgCall, *, content_type: str = "image/jpeg",
               filename: str = "photo.jpg") -> RembgResult:
        """Background removal by the first instance in rotation that can do it."""
        failed: dict[str, str] = {}
        cooling: list[str] = []
        for url in self.rotation():
            try:
                png = self.breakers[url].call(self._send, url, image, call, content_type, filename)
            except pybreaker.CircuitBreakerError:
                cooling.append(url)
                continue
            except InstanceError as exc:
                log.warning("rembg instance %s failed, trying the next one: %s", url, exc)
                failed[url] = str(exc)
                continue
            return RembgResult(png, url, failed)
        # Every instance that was not cooling down failed, or all were cooling down: rather than
        # fail blind, give each cooling one its half-open trial now (a probe, then the image).
        for url in cooling:
            breaker = self.breakers[url]
            breaker.half_open()
            try:
                png = breaker.call(self._send, url, image, call, content_type, filename)
            except pybreaker.CircuitBreakerError:
                failed[url] = "cooling down after an earlier failure: " + self.last_error(url)
                continue
            except InstanceError as exc:
                failed[url] = str(exc)
                continue
            log.info("rembg instance %s is back after its cool-down", url)
            return RembgResult(png, url, failed)
        reasons = "; ".join(f"{url}: {reason}" for url, reason in failed.items())
        raise TransientJobError(
            f"no rembg instance could remove the background ({len(self.urls)} in REMBG_URLS): {reasons}. "
            "Check that the rembg servers are running and reachable from the workers.",
            code=REMBG_UNAVAILABLE)

    def last_error(self, url: str) -> str:
        """The instance's last recorded failure, or 'unknown'."""
        try:
            raw = self.redis.get(contracts.REMBG_LAST_ERROR_KEY.format(url=url))
        except RedisError:
            return "unknown"
        return raw.decode() if isinstance(raw, bytes) else "unknown"

    def _send(self, url: str, image: bytes, call: RembgCall, content_type: str, filename: str) -> bytes:
        """One POST /api/remove (probing first when the breaker is half-open)."""
        if self.breakers[url].current_state == pybreaker.STATE_HALF_OPEN:
            self.probe(url)
        try:
            response = self.session.post(f"{url}/api/remove", files={"file": (filename, image, content_type)},
                                         data=call.form(), timeout=self.timeout)
        except requests.RequestException as exc:
            which = "REMBG_CONNECT_TIMEOUT_S" if isinstance(exc, requests.ConnectTimeout) else "REMBG_READ_TIMEOUT_S"
            raise InstanceError(describe_request_error(exc, which)) from exc
        status = response.status_code
        if status == 200 and response.content.startswith(PNG_SIGNATURE):
            return response.content
        detail = response.text[:300].strip() if status != 200 else "a body that is not a PNG"
        if status in _REJECTING_STATUSES:
            raise ImageRejected(f"rembg at {url} refused the image (HTTP {status}): {detail}")
        raise InstanceError(f"HTTP {status}: {detail}")
