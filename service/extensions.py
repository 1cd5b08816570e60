"""Connections the web tier holds: Redis, RQ queues and the database.

Nothing connects at import time. ``init_app`` stores a ``Backends`` holder on the app; the
Redis client and database open lazily on first use inside each Gunicorn worker process.
Redis gets short socket timeouts so that a hung Redis turns into a quick 503, not a hang.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import redis
from flask import Flask, current_app
from rq import Queue

from jobs import contracts
from jobs.config import Settings
from jobs.records import Database, DatabaseUnavailable, connect

# Seconds a Redis call may take before the API gives up and answers 503.
REDIS_SOCKET_TIMEOUT_S = 0.5


@dataclass
class Backends:
    """Lazily opened Redis client, RQ queues and database for one app."""

    settings: Settings
    _redis: redis.Redis | None = None
    _db: Database | None = None
    _queues: dict[str, Queue] = field(default_factory=dict)

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.settings.redis_url,
                socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
                health_check_interval=30,
            )
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
        if self._db is not None:
            self._db.close()
        self._queues.clear()

    def queue(self, name: str) -> Queue:
        """The RQ queue called ``name`` (one of jobs.contracts.ALL_QUEUES)."""
        if name not in contracts.ALL_QUEUES:
            raise KeyError(f"unknown queue {name!r}; known: {', '.join(contracts.ALL_QUEUES)}")
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.redis,
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
