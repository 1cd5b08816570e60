"""`python -m ops.worker_alive`: exit 0 while an `rq worker` of this host is registered in Redis.

The healthcheck of compose's worker containers (and of any host that runs workers): RQ keeps
each live worker's key (``rq:worker:<name>``, with its hostname) for ``--worker-ttl`` seconds
after its last heartbeat, so a worker that died, hung past its TTL or lost Redis is gone from
the list within a minute (the Procfile's ``--worker-ttl 60``). Exit 1 says why otherwise.

Light on purpose (RQ and Redis only; no OpenCV): compose runs it every 30 s in each worker.
"""
from __future__ import annotations

import socket
import sys

from redis.exceptions import RedisError
from rq.worker import Worker

from core.config import Settings
from core.redis_urls import redact, redis_client

TIMEOUT_S = 5.0


def alive_workers(hostname: str, settings: Settings) -> list[str]:
    """Names of the workers registered from ``hostname``, with the queues they listen on."""
    conn = redis_client(settings.redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        return [f"{worker.name} ({', '.join(worker.queue_names())})"
                for worker in Worker.all(connection=conn) if worker.hostname == hostname]
    finally:
        conn.close()


def main() -> int:
    """Exit status 0 when this host has a live worker, else 1 (a message on stderr)."""
    settings = Settings.from_env()
    hostname = socket.gethostname()
    try:
        workers = alive_workers(hostname, settings)
    except RedisError as exc:
        print(f"worker check: Redis at {redact(settings.redis_url)} unavailable: {exc}", file=sys.stderr)
        return 1
    if not workers:
        print(f"worker check: no rq worker of host {hostname} is registered in Redis", file=sys.stderr)
        return 1
    print(f"worker check: {', '.join(workers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
