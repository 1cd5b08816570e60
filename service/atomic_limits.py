"""All of a request's rate limits checked and counted in one atomic step (one Lua script in Redis).

Flask-Limiter checks a request's limits one after the other and counts each as it goes
(limits' fixed window: one INCRBY+EXPIRE per limit). A request refused by its third limit has
then already been counted by the first two: a vendor refused 15 times by the bulk limit has
lost 15 image-processing requests it never got. Here a request is counted against every limit
of its route or against none.

How it plugs into Flask-Limiter without changing what Flask-Limiter decides (which limits apply,
their keys, the 429, the headers): ``AtomicLimiter`` is a ``flask_limiter.Limiter`` whose
strategy (its public ``limiter`` property) is ``AllOrNothingFixedWindow``. On the first ``hit``
of a request, that strategy asks ``plan()`` (service/limits.py) for every (limit, key) the
request counts against, runs ``CHECK_AND_COUNT`` once with all of them, and keeps the answer
in the request: the following ``hit`` calls and the header's ``get_window_stats`` read it
without another round trip. Redis runs a script alone, so the check and the count cannot
interleave with another request's: exact under any concurrency, across processes and hosts.

The counters stay limits' own fixed-window keys (``LIMITS:LIMITER/...``, expiry set by the
first increment), so changing this back loses nothing.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, has_request_context, request
from flask_limiter import Limiter
from limits import RateLimitItem
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, RateLimiter
from limits.util import WindowStats
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# KEYS: the counters. ARGV[1]: the request's cost; then per key its limit and its window (s).
# Every counter is read first; only when each has room for the cost are they all incremented
# (a counter's expiry is set by the increment that creates it, like limits' incr_expire.lua).
# Returns: 1 if counted (0 if refused), then per key its count and its TTL in seconds.
CHECK_AND_COUNT = """
local cost = tonumber(ARGV[1])
local counts = {}
local allowed = 1
for i, key in ipairs(KEYS) do
    counts[i] = tonumber(redis.call('GET', key) or '0')
    if counts[i] + cost > tonumber(ARGV[2 * i]) then
        allowed = 0
    end
end
local result = {allowed}
for i, key in ipairs(KEYS) do
    if allowed == 1 then
        counts[i] = redis.call('INCRBY', key, cost)
        if counts[i] == cost then
            redis.call('EXPIRE', key, ARGV[2 * i + 1])
        end
    end
    result[2 * i] = counts[i]
    result[2 * i + 1] = redis.call('TTL', key)
end
return result
"""

# One limit of a request: the parsed limit and Flask-Limiter's identifiers (prefix, key, scope).
PlannedLimit = tuple[RateLimitItem, Sequence[str]]

_OUTCOME = "image_queue.rate_limit_outcome"  # request.environ memo key


@dataclass(frozen=True)
class Counted:
    """One counter after the request's atomic step: its count (after the increment, or as it
    stood when the request was refused), its TTL, and whether it had no room for the request."""

    limit: RateLimitItem
    count: int
    ttl_s: int
    breached: bool

    def window(self) -> WindowStats:
        """Reset time and remaining quota, as limits' get_window_stats reports them."""
        return WindowStats(time.time() + max(self.ttl_s, 0), max(0, self.limit.amount - self.count))


class AllOrNothingFixedWindow(FixedWindowRateLimiter):
    """limits' fixed window, except that the first hit of a request checks and counts all of
    the request's limits (``plan()``) in one script, and later hits only read that outcome."""

    def __init__(self, storage: RedisStorage, plan: Callable[[], list[PlannedLimit]]) -> None:
        super().__init__(storage)
        self.plan = plan
        self.redis_storage = storage
        self._script = storage.get_connection().register_script(CHECK_AND_COUNT.encode())

    def _outcome(self) -> tuple[bool, dict[str, Counted]] | None:
        if not has_request_context():
            return None
        env: dict[str, Any] = request.environ
        if _OUTCOME not in env:
            env[_OUTCOME] = self.check_and_count(self.plan())
        return env[_OUTCOME]

    def check_and_count(self, planned: list[PlannedLimit], cost: int = 1) -> tuple[bool, dict[str, Counted]]:
        """Count ``cost`` against every planned limit if each has room, else against none."""
        planned = list({item.key_for(*identifiers): (item, identifiers) for item, identifiers in planned}.values())
        if not planned:
            return True, {}
        keys = [item.key_for(*identifiers) for item, identifiers in planned]
        args: list[int] = [cost]
        for item, _ in planned:
            args += [item.amount, item.get_expiry()]
        try:
            raw = self._script(keys=[self.redis_storage.prefixed_key(key) for key in keys], args=args)
        except RedisError as exc:  # answered 503 by service/limits.py, like limits' own errors
            raise StorageError(exc) from exc
        allowed = bool(raw[0])
        counted = {}
        for index, (key, (item, _)) in enumerate(zip(keys, planned, strict=True)):
            count = int(raw[1 + 2 * index])
            counted[key] = Counted(item, count, int(raw[2 + 2 * index]),
                                   breached=not allowed and count + cost > item.amount)
        return allowed, counted

    def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        """True unless the request's atomic step refused it because of this limit."""
        outcome = self._outcome()
        key = item.key_for(*identifiers)
        if outcome is None or key not in outcome[1]:
            # Flask-Limiter evaluated a limit plan() did not list: count it alone, as before.
            log.error("rate limit %s (%s) is not in the request's plan; counted on its own", item, key)
            return super().hit(item, *identifiers, cost=cost)
        allowed, counted = outcome
        return allowed or not counted[key].breached

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        """The window as the atomic step left it (no extra Redis call), else read from Redis."""
        outcome = request.environ.get(_OUTCOME) if has_request_context() else None
        key = item.key_for(*identifiers)
        if outcome is not None and key in outcome[1]:
            return outcome[1][key].window()
        return super().get_window_stats(item, *identifiers)


class AtomicLimiter(Limiter):
    """Flask-Limiter with ``AllOrNothingFixedWindow`` as its strategy (Redis storage only)."""

    def __init__(self, *args: Any, plan: Callable[[], list[PlannedLimit]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plan = plan
        self._all_or_nothing: AllOrNothingFixedWindow | None = None

    def init_app(self, app: Flask) -> None:
        """Flask-Limiter's own set-up, then the all-or-nothing strategy on its storage."""
        super().init_app(app)
        if not isinstance(self.storage, RedisStorage):
            raise TypeError(f"rate limits need a Redis storage, not {type(self.storage).__name__}")
        self._all_or_nothing = AllOrNothingFixedWindow(self.storage, self._plan)

    @property
    def limiter(self) -> RateLimiter:
        """The strategy Flask-Limiter counts every request with."""
        if self._all_or_nothing is None:
            return super().limiter
        return self._all_or_nothing
