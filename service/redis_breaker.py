"""A per-process circuit breaker in front of every Redis connection of the web tier.

Why: a request touches Redis several times (rate-limit counters, idempotency key, enqueue,
estimate). With only socket timeouts, a hung Redis (SIGSTOP, a stuck host, a full network
buffer) costs each of those calls a full timeout, so one request takes several timeouts and
every Gunicorn thread is soon stuck. With the breaker, the first timeout or refused connection
*opens* it: every later Redis call of that process, in the same request or any other, fails at
once with ``RedisUnavailable`` (a ``redis.ConnectionError``, so the existing handlers answer 503
with ``Retry-After``) without touching the network. After ``cooldown_s`` the next call first runs
a cheap probe (PING on a fresh connection, same socket timeouts); only that one caller waits for
it, the others keep failing fast. A PONG closes the breaker, anything else opens it again.

The breaker sits in the connection class (``GuardedConnection``) rather than around client
calls, so RQ's pipelines, Flask-Limiter's Lua scripts and plain commands are all covered.
pybreaker (used for the rembg instances, jobs/rembg_pool.py) is not used here: its ``call()``
holds one lock for the whole call, which would serialise every Redis command of a Gunicorn
worker's threads.

What opens it: a failure to connect (refused, timed out, handshake timed out) and a timeout on
an open connection. An error on an open connection that is not a timeout (a reset or EOF after
a Redis restart) does not: the client retries it once on a new connection (``NO_BACKOFF_RETRY``),
and that connect decides.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

log = logging.getLogger(__name__)


class RedisUnavailable(RedisConnectionError):
    """Raised without any network call while the breaker is open (Redis recently failed)."""


class RedisBreaker:
    """Open after one failure; after ``cooldown_s`` one caller probes, the rest fail fast.

    Thread-safe; the lock guards only the state, never a network call.
    """

    def __init__(self, name: str, cooldown_s: float, probe: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.cooldown_s = cooldown_s
        self._probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self.times_opened = 0
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        """True from a failure until a probe succeeds."""
        return self._open_until is not None

    def before_call(self) -> None:
        """Return if a Redis call may go ahead, else raise RedisUnavailable at once."""
        with self._lock:
            if self._open_until is None:
                return
            if self._probing or self._clock() < self._open_until:
                raise RedisUnavailable(f"Redis at {self.name} failed recently ({self.last_error}); "
                                       "not trying again yet")
            self._probing = True
        self._run_probe()

    def _run_probe(self) -> None:
        """The trial after a cool-down: close on success, open for another cool-down on failure."""
        try:
            self._probe()
        except Exception as exc:  # noqa: BLE001 (any failure of the probe means: still unavailable)
            with self._lock:
                self._probing = False
                self._open_until = self._clock() + self.cooldown_s
                self.last_error = repr(exc)
            raise RedisUnavailable(f"Redis at {self.name} still unavailable: {exc!r}") from exc
        except BaseException:
            with self._lock:
                self._probing = False
            raise
        with self._lock:
            self._probing = False
            self._open_until = None
        log.warning("Redis at %s answers again: breaker closed", self.name)

    def failure(self, exc: BaseException) -> None:
        """A call failed because Redis is unreachable or hung: open (or keep open) the breaker."""
        with self._lock:
            was_closed = self._open_until is None
            self._open_until = self._clock() + self.cooldown_s
            self.last_error = repr(exc)
            if was_closed:
                self.times_opened += 1
        if was_closed:
            log.warning("Redis at %s failed (%r): breaker open, Redis calls fail fast for %.1f s, "
                        "then a probe", self.name, exc, self.cooldown_s)


class GuardedConnection(redis.Connection):
    """A redis-py connection that asks its breaker before using the network and reports to it."""

    def __init__(self, *args: Any, breaker: RedisBreaker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.breaker = breaker

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        self.breaker.before_call()
        try:
            super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not isinstance(exc, RedisUnavailable):
                self.breaker.failure(exc)
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.breaker.before_call()
        try:
            super().send_packed_command(command, check_health=check_health)
        except RedisTimeoutError as exc:
            self.breaker.failure(exc)
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except RedisTimeoutError as exc:
            self.breaker.failure(exc)
            raise


def no_backoff_retry() -> Retry:
    """One immediate retry, on connection errors only (a pooled connection Redis closed);
    never on timeouts: redis-py 6's default (3 retries, exponential backoff) would hold a
    request for seconds."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def ping_probe(url: str, timeout_s: float) -> Callable[[], None]:
    """A probe that PINGs ``url`` on a new connection with these socket timeouts."""
    def probe() -> None:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    return probe


def guarded_pool(url: str, breaker: RedisBreaker, timeout_s: float, **kwargs: Any) -> redis.ConnectionPool:
    """A connection pool for ``url`` whose connections go through ``breaker``, with short
    socket timeouts and no retry backoff.

    Only plain TCP (``redis://``) connections are guarded; ``rediss://`` and ``unix://`` keep
    redis-py's own connection classes (the timeouts still apply, the breaker does not).
    """
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                               "retry": no_backoff_retry(), **kwargs}
    if urlsplit(url).scheme != "redis":
        log.warning("Redis URL scheme %r: no circuit breaker (only redis:// is guarded)", urlsplit(url).scheme)
        return redis.ConnectionPool.from_url(url, **options)
    return redis.ConnectionPool.from_url(url, connection_class=GuardedConnection, breaker=breaker, **options)
