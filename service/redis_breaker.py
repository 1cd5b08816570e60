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

What opens it: a failure to connect (refused, timed out, handshake timed out; for Sentinel also
no sentinel naming a master) and a timeout on an open connection. An error on an open connection
that is not a timeout (a reset or EOF after a Redis restart) does not: the client retries it once
on a new connection (``no_backoff_retry``), and that connect decides. Nothing is retried while
the breaker is open.

Every URL form of core/redis_urls.py is guarded: ``redis://``, ``rediss://`` (TLS),
``unix://`` and ``sentinel://`` (the master's connections, and the sentinels' answer naming it).

redis-py internals this relies on (tests/service/test_redis_breaker.py checks each against the
installed redis-py): ``AbstractConnection.connect_check_health``, ``send_packed_command`` and
``read_response`` are where every command, pipeline and script connects, writes and reads;
``SentinelManagedConnection.connect`` asks the sentinels; ``Retry.is_retryable`` (redis-py 8)
filters retries.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from core.redis_urls import is_sentinel, parse_sentinel, redact, redis_client, redis_pool

log = logging.getLogger(__name__)


class RedisUnavailable(RedisConnectionError):
    """Raised without any network call while the breaker is open (Redis recently failed)."""


def describe(exc: BaseException) -> str:
    """``ConnectionError: Error 111 connecting to ...`` (redis-py 8's repr() drops the message)."""
    return f"{type(exc).__name__}: {exc}"


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
                self.last_error = describe(exc)
            raise RedisUnavailable(f"Redis at {self.name} still unavailable ({describe(exc)})") from exc
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
            self.last_error = describe(exc)
            if was_closed:
                self.times_opened += 1
        if was_closed:
            log.warning("Redis at %s failed (%s): breaker open, Redis calls fail fast for %.1f s, "
                        "then a probe", self.name, describe(exc), self.cooldown_s)


class _Guarded:
    """Asks the breaker before a redis-py connection uses the network, and reports failures to it.

    Mixed into each redis-py connection class (plain, TLS, unix socket, Sentinel-managed)."""

    breaker: RedisBreaker
    _sock: Any

    def __init__(self, *args: Any, breaker: RedisBreaker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.breaker = breaker

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        self.breaker.before_call()
        try:
            super().connect_check_health(  # type: ignore[misc]
                check_health=check_health, retry_socket_connect=retry_socket_connect)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not isinstance(exc, RedisUnavailable):
                self.breaker.failure(exc)
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.breaker.before_call()
        try:
            super().send_packed_command(command, check_health=check_health)  # type: ignore[misc]
        except RedisTimeoutError as exc:
            self.breaker.failure(exc)
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except RedisTimeoutError as exc:
            self.breaker.failure(exc)
            raise


class GuardedConnection(_Guarded, redis.Connection):
    """redis:// behind the breaker."""


class GuardedSSLConnection(_Guarded, redis.SSLConnection):
    """rediss:// (TLS) behind the breaker."""


class GuardedUnixConnection(_Guarded, redis.UnixDomainSocketConnection):
    """unix:// behind the breaker."""


class _GuardedSentinel(_Guarded):
    """A Sentinel-managed connection: asking the sentinels for the master is guarded too, so
    sentinels that are all down or hung cost one timeout each once, not on every request."""

    def connect(self) -> None:
        if self._sock:
            return
        self.breaker.before_call()
        try:
            super().connect()  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as exc:  # MasterNotFoundError included
            if not isinstance(exc, RedisUnavailable):
                self.breaker.failure(exc)
            raise


class GuardedSentinelConnection(_GuardedSentinel, SentinelManagedConnection):
    """sentinel:// behind the breaker."""


class GuardedSentinelSSLConnection(_GuardedSentinel, SentinelManagedSSLConnection):
    """sentinel://...?ssl=true behind the breaker."""


def no_backoff_retry(breaker: RedisBreaker) -> Retry:
    """One immediate retry, on connection errors only (a pooled connection Redis closed), and
    none once the breaker is open (the failed connect or timeout that opened it is the answer);
    never on timeouts: redis-py's default (3 retries, exponential backoff) would hold a request
    for seconds."""
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    retry.is_retryable = lambda _error: not breaker.is_open
    return retry


def ping_probe(url: str, timeout_s: float) -> Callable[[], None]:
    """A probe that PINGs ``url`` on a new connection with these socket timeouts."""
    def probe() -> None:
        client = redis_client(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
            client.connection_pool.disconnect()
    return probe


def guarded_pool(url: str, breaker: RedisBreaker, timeout_s: float, **kwargs: Any) -> redis.ConnectionPool:
    """A connection pool for ``url`` (any form of core/redis_urls.py) whose connections go
    through ``breaker``, with short socket timeouts and no retry backoff."""
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                               "retry": no_backoff_retry(breaker), "breaker": breaker, **kwargs}
    scheme = url.split("://", 1)[0]
    plain: type[redis.Connection] = {"rediss": GuardedSSLConnection, "unix": GuardedUnixConnection}.get(
        scheme, GuardedConnection)  # type: ignore[assignment]
    sentinel_class: type[redis.Connection] = GuardedSentinelConnection
    if is_sentinel(url) and parse_sentinel(url).ssl:
        sentinel_class = GuardedSentinelSSLConnection
    log.debug("Redis pool for %s behind its breaker", redact(url))
    return redis_pool(url, connection_class=plain, sentinel_connection_class=sentinel_class, **options)
