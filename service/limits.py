"""Rate limits (SPEC 3.3): Flask-Limiter counters in Redis, keyed by client IP or by vendor.

Who counts against what:

* A request **without a valid API key** (none, unknown, revoked) counts against the global
  limit of its client IP (``RATE_LIMIT_GLOBAL``), before authentication answers 401, so
  guessing keys is limited too. Nothing else counts it.
* A request **with a valid key** counts against its vendor's limits for the route's categories
  (``ENDPOINT_CATEGORIES``): image processing, background removal, bulk, reads. The vendor is
  the key's, never a body field. The per-IP limit does not apply to it: a vendor on a bigger
  plan (overrides, ``vendor set-limits``) is not capped by an IP it may share with others, and
  its polling (reads) uses nothing but its reads limit.
* Health, local files, ``/``, /metrics and the admin's /rq dashboard are not limited.

Every limit is checked in one pass by Flask-Limiter's ``before_request`` hook, which runs before
the blueprints' own hooks (authentication). It resolves the key itself (memoised for the request
here and in service/auth.py, so the database is asked once). The limits are Flask-Limiter
"application" (global) and "default" (vendor) limits with callables: the limit string is read per
request, so a vendor's overrides apply without a restart, and ``exempt_when`` picks per request
which limits apply.

A request is counted against every limit of its route or against none: all of them are checked
and counted in one Lua script (service/atomic_limits.py, ``request_plan`` below lists them), so a
request refused by one limit (429) costs nothing of the others. Counters are fixed windows in
Redis, exact under any concurrency, shared by every Gunicorn worker and API host; a window starts
at its first request.

Headers: ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (the Unix time, in
seconds, at which the window resets, as the seed shows) describe the limit that refused the
request, else the one with the least quota left; a 429 also carries ``Retry-After`` (seconds).
Flask-Limiter's own headers are off: they describe the limit with the shortest window instead.

Redis down or hung: the storage has socket timeouts (``RATE_LIMIT_STORAGE_TIMEOUT_S``), no retry
backoff, and its connections go through the app's Redis circuit breaker (service/redis_breaker.py),
so after one failed call every later one fails at once until a probe succeeds. Errors are neither
swallowed nor sent to an in-memory fallback (per-process counters would multiply every limit by
the number of processes, and queueing needs Redis anyway): a limited request answers 503 with
``Retry-After`` after at most one timeout, usually at once. Health stays unlimited and reports
Redis down.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import ApplicationLimit, Limit, RequestLimit
from flask_limiter.errors import RateLimitExceeded
from limits import parse_many
from limits.errors import StorageError
from werkzeug.middleware.proxy_fix import ProxyFix

from core.config import Settings
from core.db.database import Database
from core.redis_urls import check_url
from service.atomic_limits import AtomicLimiter, PlannedLimit
from service.auth import authenticate
from service.errors import ApiError, error_response
from service.extensions import backends, is_backend_outage

log = logging.getLogger(__name__)

# Limit categories: the Redis scope of each counter and the names used in 429 bodies and the CLI.
GLOBAL = "global"
IMAGE_PROCESSING = "image-processing"
BACKGROUND_REMOVAL = "background-removal"
BULK = "bulk"
READS = "reads"
VENDOR_CATEGORIES = (IMAGE_PROCESSING, BACKGROUND_REMOVAL, BULK, READS)

# The Settings field holding each category's default limit.
SETTINGS_FIELDS = {
    GLOBAL: "rate_limit_global",
    IMAGE_PROCESSING: "rate_limit_image_processing",
    BACKGROUND_REMOVAL: "rate_limit_background_removal",
    BULK: "rate_limit_bulk",
    READS: "rate_limit_reads",
}

# Endpoint -> the vendor limits it counts against. A new route gets a line here (a test fails
# until it has one); until then GET routes count as reads and every other method as processing.
# Routes of other issues are listed ahead of time: a line for a missing endpoint does nothing.
ENDPOINT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "image_queue.crop_face_queue": (IMAGE_PROCESSING,),
    "image_queue.bulk_crop_face": (IMAGE_PROCESSING, BULK),
    "image_queue.remove_bg_queue": (IMAGE_PROCESSING, BACKGROUND_REMOVAL),
    "image_queue.bulk_remove_bg": (IMAGE_PROCESSING, BACKGROUND_REMOVAL, BULK),
    # ID photos ask rembg for a mask: they count against background removal too (issue 13).
    "image_queue.id_photo_queue": (IMAGE_PROCESSING, BACKGROUND_REMOVAL),
    "image_queue.bulk_id_photo": (IMAGE_PROCESSING, BACKGROUND_REMOVAL, BULK),
    "batch.add_images": (IMAGE_PROCESSING, BULK),
    "batch.upload_zip": (IMAGE_PROCESSING, BULK),
    "image_queue.job_status": (READS,),
    "image_queue.record_status": (READS,),
    "image_queue.queue_stats": (READS,),
    "batch.batch_status": (READS,),
    "batch.batch_results": (READS,),
    "batch.batch_queue_stats": (READS,),
    # Cancels and lists cost no image work: counted as reads (issue 14).
    "image_queue.cancel_job": (READS,),
    "image_queue.list_records": (READS,),
    "batch.list_batches": (READS,),
    "batch.batch_cancel": (READS,),
    "batch.batch_results_zip": (READS,),
    "usage.usage": (READS,),
}
# Never limited: operators' probes and monitoring, local output files, the index, the
# admin's rq-dashboard (/rq polls every 2.5 s; it is behind ADMIN_PASSWORD, service/admin/auth.py),
# the admin API (/api/admin, same credentials), the API docs (/api/openapi.json, /api/docs) and
# the console's static files (/console: a page load fetches a dozen; its API calls are limited).
EXEMPT_BLUEPRINTS = frozenset({"health", "metrics", "rq_dashboard", "admin", "docs", "console"})
EXEMPT_ENDPOINTS = frozenset({"index", "static", "metrics"})

HEADER_LIMIT = "RateLimit-Limit"
HEADER_REMAINING = "RateLimit-Remaining"
HEADER_RESET = "RateLimit-Reset"
# Retry-After of the 503 answered while Redis is unreachable.
STORAGE_DOWN_RETRY_AFTER_S = 5
# Redis keys: LIMITS:LIMITER/image-queue/<ip:addr | vendor:id>/<category>/<amount>/<n>/<unit>
KEY_PREFIX = "image-queue"
MAX_CACHED_VENDORS = 10_000
LIMIT_NOTATION = "write e.g. '50/15 minutes', '30 per hour' or '10/minute;100/day'"

_VENDOR = "image_queue.rate_limit_vendor"  # request.environ memo keys
_OVERRIDES = "image_queue.rate_limit_overrides"


def check_limit(value: str, what: str = "") -> str:
    """``value`` if it is a valid limit string, else ValueError (naming the setting ``what``)."""
    try:
        parse_many(value)
    except ValueError:
        where = f"{what}=" if what else ""
        raise ValueError(f"{where}{value!r} is not a rate limit; {LIMIT_NOTATION}") from None
    return value


def default_limits(settings: Settings) -> dict[str, str]:
    """Each category's configured limit, checked (ValueError naming the setting)."""
    return {category: check_limit(getattr(settings, name), name.upper())
            for category, name in SETTINGS_FIELDS.items()}


def parse_override(value: str) -> str | None:
    """A vendor override as given to the CLI: a limit string, or 'default' (None: drop it)."""
    value = value.strip()
    if value.lower() == "default":
        return None
    return check_limit(value)


def valid_overrides(vendor_id: str, stored: dict[str, str]) -> dict[str, str]:
    """The usable part of a vendor's stored overrides; anything else is logged and ignored."""
    usable = {}
    for category, value in stored.items():
        try:
            if category not in VENDOR_CATEGORIES:
                raise ValueError(f"unknown category {category!r}")
            usable[category] = check_limit(value)
        except ValueError as exc:
            log.warning("vendor=%s ignoring rate-limit override (%s); fix it with "
                        "'python -m service.cli vendor set-limits'", vendor_id, exc)
    return usable


def effective_limits(settings: Settings, overrides: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Category -> (limit, "override" or "default") for a vendor with these overrides."""
    defaults = default_limits(settings)
    return {category: (overrides[category], "override") if category in overrides
            else (defaults[category], "default") for category in VENDOR_CATEGORIES}


def categories_for(endpoint: str, method: str) -> tuple[str, ...]:
    """The vendor limits a route counts against (ENDPOINT_CATEGORIES, else by method)."""
    listed = ENDPOINT_CATEGORIES.get(endpoint)
    if listed is not None:
        return listed
    return (READS,) if method in ("GET", "HEAD") else (IMAGE_PROCESSING,)


class OverrideCache:
    """Vendors' rate-limit overrides, reused by one process for ``ttl_s`` seconds (0: not kept)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, dict[str, str]]] = {}

    def get(self, db: Database, vendor_id: str) -> dict[str, str]:
        """The vendor's usable overrides, from the cache or the database."""
        now = self._clock()
        entry = self._entries.get(vendor_id)
        if entry is not None and now < entry[0]:
            return entry[1]
        overrides = valid_overrides(vendor_id, db.get_vendor_limits(vendor_id) or {})
        if self.ttl_s > 0:
            if len(self._entries) >= MAX_CACHED_VENDORS:
                self._entries.clear()
            self._entries[vendor_id] = (now + self.ttl_s, overrides)
        return overrides


@dataclass
class RateLimits:
    """One app's limiter, its configured limits and its cache of vendor overrides."""

    limiter: AtomicLimiter
    defaults: dict[str, str]
    overrides: OverrideCache


def _state() -> RateLimits:
    return current_app.extensions["rate_limits"]


def client_ip() -> str:
    """The client's address: the TCP peer, or the X-Forwarded-For entry that ProxyFix trusted."""
    return f"ip:{request.remote_addr or 'unknown'}"


def request_vendor() -> str | None:
    """The vendor of the request's API key, or None (no key, unknown or revoked key, database down)."""
    env: dict[str, Any] = request.environ
    if _VENDOR not in env:
        try:
            env[_VENDOR] = authenticate()
        except ApiError:
            env[_VENDOR] = None
        except Exception as exc:
            if not is_backend_outage(exc):
                raise
            env[_VENDOR] = None  # limited by IP; the blueprint's own auth hook answers 503
    return env[_VENDOR]


def _vendor_key() -> str:
    return f"vendor:{request_vendor()}"


def _vendor_overrides(vendor_id: str) -> dict[str, str]:
    env: dict[str, Any] = request.environ
    if _OVERRIDES not in env:
        env[_OVERRIDES] = _state().overrides.get(backends().db, vendor_id)
    return env[_OVERRIDES]


def _vendor_limit(category: str) -> Callable[[], str]:
    def limit() -> str:
        vendor_id = request_vendor()
        if vendor_id is not None:
            override = _vendor_overrides(vendor_id).get(category)
            if override:
                return override
        return _state().defaults[category]
    return limit


def _not_applicable(category: str) -> Callable[[], bool]:
    def exempt() -> bool:
        return request_vendor() is None or category not in categories_for(request.endpoint or "", request.method)
    return exempt


def _has_valid_key() -> bool:
    return request_vendor() is not None


def _unlimited() -> bool:
    return (request.method == "OPTIONS" or request.blueprint in EXEMPT_BLUEPRINTS
            or (request.endpoint or "") in EXEMPT_ENDPOINTS)


def request_plan() -> list[PlannedLimit]:
    """Every limit the current request counts against, keyed as Flask-Limiter keys them
    (prefix, IP or vendor, category): the set service/atomic_limits.py counts in one step."""
    if _unlimited():
        return []
    vendor_id = request_vendor()
    if vendor_id is None:
        return [(item, (KEY_PREFIX, client_ip(), GLOBAL)) for item in parse_many(_state().defaults[GLOBAL])]
    return [(item, (KEY_PREFIX, _vendor_key(), category))
            for category in categories_for(request.endpoint or "", request.method)
            for item in parse_many(_vendor_limit(category)())]


def vendor_limits_now(vendor_id: str) -> list[dict[str, Any]]:
    """Each of the vendor's limit categories with its limit, where it comes from, and per window
    what is left now and when it resets (``GET /api/usage``). Reads the counters; counts nothing.
    Empty while RATE_LIMIT_ENABLED is off."""
    state = current_app.extensions.get("rate_limits")
    if state is None:
        return []
    overrides = _vendor_overrides(vendor_id)
    strategy = state.limiter.limiter
    found = []
    for category in VENDOR_CATEGORIES:
        limit = overrides.get(category) or state.defaults[category]
        windows = []
        for item in parse_many(limit):
            reset_at, remaining = strategy.get_window_stats(item, KEY_PREFIX, f"vendor:{vendor_id}", category)
            windows.append({"limit": item.amount, "per": f"{item.multiples} {item.GRANULARITY.name}"
                            + ("s" if item.multiples != 1 else ""),
                            "remaining": int(remaining), "resetsInSeconds": max(0, math.ceil(reset_at - time.time()))})
        found.append({"category": category, "limit": limit,
                      "source": "override" if category in overrides else "default", "windows": windows})
    return found


def _headline(evaluated: list[RequestLimit]) -> RequestLimit:
    breached = [limit for limit in evaluated if limit.breached]
    if breached:
        return breached[0]
    return min(evaluated, key=lambda limit: (limit.remaining, -limit.reset_at))


def _add_headers(response: Response) -> Response:
    evaluated = _state().limiter.current_limits
    if not evaluated:
        return response
    try:
        shown = _headline(evaluated)
        response.headers[HEADER_LIMIT] = str(shown.limit.amount)
        response.headers[HEADER_REMAINING] = str(shown.remaining)
        response.headers[HEADER_RESET] = str(shown.reset_at)
    except StorageError as exc:  # the request itself was counted; only the headers are lost
        log.warning("rate-limit headers left out, Redis unavailable: %s", exc.storage_error)
    return response


def _rate_limited(exc: RateLimitExceeded) -> Response:
    category = exc.limit.scope if isinstance(exc.limit.scope, str) else GLOBAL
    keyed_by = "client IP" if category == GLOBAL else "vendor"
    retry_after = STORAGE_DOWN_RETRY_AFTER_S
    shown = _state().limiter.current_limit
    if shown is not None:
        try:
            retry_after = max(1, math.ceil(shown.window.reset_time - time.time()))
        except StorageError:
            pass
    vendor_id = request_vendor()
    log.info("vendor=%s ip=%s rate limited by %s (%s)", vendor_id, request.remote_addr, category, exc.limit.limit)
    return error_response(
        429, "RATE_LIMITED",
        f"Too many requests: the {category} limit allows {exc.limit.limit} per {keyed_by}. "
        f"Retry in {retry_after} s.",
        details={"limit": category, "policy": str(exc.limit.limit), "per": keyed_by,
                 "retryAfter": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def _storage_unavailable(exc: StorageError) -> Response:
    log.warning("rate-limit storage (Redis) unavailable, answering 503: %r", exc.storage_error)
    return error_response(
        503, "SERVICE_UNAVAILABLE",
        "Redis, which holds the rate limits and the job queues, is unavailable; nothing was done. "
        f"Retry in {STORAGE_DOWN_RETRY_AFTER_S} s.",
        details={"backend": "redis"}, headers={"Retry-After": str(STORAGE_DOWN_RETRY_AFTER_S)},
    )


def init_app(app: Flask, settings: Settings) -> None:
    """Trust TRUSTED_PROXY_HOPS proxies, then limit every route by IP or vendor (connects nothing).

    One Limiter per app: Flask-Limiter keeps its storage on the instance, so a shared one would
    move every app's counters to whichever app was initialised last.
    """
    if settings.trusted_proxy_hops < 0:
        raise ValueError(f"TRUSTED_PROXY_HOPS must be 0 or more, not {settings.trusted_proxy_hops}")
    if settings.trusted_proxy_hops:
        # Each trusted proxy appends the address it saw: the entry that many hops from the
        # end is the client; anything before it may be forged by the client.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_hops)  # type: ignore[method-assign]
    defaults = default_limits(settings)
    if not settings.rate_limit_enabled:
        log.warning("RATE_LIMIT_ENABLED is off: no request is rate limited")
        return
    storage_url = settings.rate_limit_storage_url or settings.redis_url
    check_url(storage_url, "RATE_LIMIT_STORAGE_URL" if settings.rate_limit_storage_url else "REDIS_URL")
    # The counters' connections go through the app's Redis circuit breaker (service/redis_breaker.py),
    # shared with the queues' client when both use the same Redis: one timeout opens it for both.
    pool = app.extensions["image_queue"].redis_pool(storage_url, settings.rate_limit_storage_timeout_s)
    storage_options: dict[str, Any] = {"connection_pool": pool, "wrap_exceptions": True}
    limiter = AtomicLimiter(
        key_func=client_ip,
        application_limits=[ApplicationLimit(limit_provider=defaults[GLOBAL], key_function=client_ip,
                                             scope=GLOBAL, exempt_when=_has_valid_key)],
        default_limits=[Limit(limit_provider=_vendor_limit(category), key_function=_vendor_key,
                              scope=category, shared=True, exempt_when=_not_applicable(category))
                        for category in VENDOR_CATEGORIES],
        strategy="fixed-window",
        # Only picks limits' RedisStorage; the connections are the pool's (any URL form of
        # core/redis_urls.py: redis, rediss, unix, sentinel).
        storage_uri="redis://",
        storage_options=storage_options,
        headers_enabled=False,
        swallow_errors=False,
        in_memory_fallback_enabled=False,
        key_prefix=KEY_PREFIX,
        plan=request_plan,
    )
    limiter.request_filter(_unlimited)
    app.extensions["rate_limits"] = RateLimits(limiter, defaults,
                                               OverrideCache(settings.rate_limit_override_cache_s))
    limiter.init_app(app)
    app.after_request(_add_headers)
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    app.register_error_handler(StorageError, _storage_unavailable)
