"""Connections the web tier holds: Redis, RQ queues and the database.

Nothing connects at import time. ``init_app`` stores a ``Backends`` holder on the app; the
Redis client and database open lazily on first use inside each Gunicorn worker process.
Redis gets short socket timeouts (``API_REDIS_TIMEOUT_S``) and a per-process circuit breaker
(service/redis_breaker.py, ``API_REDIS_COOLDOWN_S``) so that a down or hung Redis turns into a
quick 503, not a hang: after one failed call, the rest of the request and the requests that
follow fail at once until a probe finds Redis answering again.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis
from flask import Flask, current_app
from rq import Queue

from core import contracts, rqjson
from core.config import Settings
from core.db.database import Database, DatabaseUnavailable, connect
from service.redis_breaker import RedisBreaker, guarded_pool, ping_probe


@dataclass
class Backends:
    """Lazily opened Redis client, RQ queues and database for one app."""

    settings: Settings
    _redis: redis.Redis | None = None
    _db: Database | None = None
    _queues: dict[str, Queue] = field(default_factory=dict)
    _breakers: dict[str, RedisBreaker] = field(default_factory=dict)
    _breakers_lock: threading.Lock = field(default_factory=threading.Lock)
    _pools: list[redis.ConnectionPool] = field(default_factory=list)

    def breaker(self, url: str, timeout_s: float) -> RedisBreaker:
        """This app's breaker for the Redis at ``url`` (one per URL: the queues' client and the
        rate limiter's storage share it when they use the same Redis)."""
        with self._breakers_lock:
            if url not in self._breakers:
                self._breakers[url] = RedisBreaker(url.rsplit("@", 1)[-1], self.settings.api_redis_cooldown_s,
                                                   ping_probe(url, timeout_s))
            return self._breakers[url]

    def redis_pool(self, url: str, timeout_s: float) -> redis.ConnectionPool:
        """A connection pool for ``url`` behind its breaker, with ``timeout_s`` socket timeouts."""
        pool = guarded_pool(url, self.breaker(url, timeout_s), timeout_s, health_check_interval=30)
        self._pools.append(pool)  # closed with the app (close), like the queues' own
        return pool

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            pool = self.redis_pool(self.settings.redis_url, self.settings.api_redis_timeout_s)
            self._redis = redis.Redis(connection_pool=pool)
        return self._redis

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = connect(self.settings.database_url)
        return self._db

    def close(self) -> None:
        """Close the Redis pool and the database connection (tests; process exit does it otherwise)."""
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        for pool in self._pools:  # the queues' pool and the rate limiter's storage pool
            pool.disconnect()
        self._pools.clear()
        if self._db is not None:
            self._db.close()
        self._queues.clear()

    def queue(self, name: str) -> Queue:
        """The RQ queue called ``name`` (one of core.contracts.ALL_QUEUES)."""
        if name not in contracts.ALL_QUEUES:
            raise KeyError(f"unknown queue {name!r}; known: {', '.join(contracts.ALL_QUEUES)}")
        if name not in self._queues:
            self._queues[name] = rqjson.queue(name, connection=self.redis,
                                       default_timeout=self.settings.job_timeout_s)
        return self._queues[name]


def init_app(app: Flask, settings: Settings) -> None:
    """Attach a Backends holder to the app (no connection is made here)."""
    app.extensions["image_queue"] = Backends(settings)


def backends() -> Backends:
    """The current app's Backends."""
    return current_app.extensions["image_queue"]


def is_backend_outage(exc: BaseException) -> bool:
    """True for errors that mean Redis or the database is unreachable (answer 503)."""
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            DatabaseUnavailable))
