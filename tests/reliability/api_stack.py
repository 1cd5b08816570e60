"""A private API stack for the api_faults and load scenarios: a redis-server this scenario can
SIGKILL, restart and SIGSTOP, an SQLite database, and Gunicorn as production runs it.

Everything started here is stopped on the way out, also on exceptions; a stopped (SIGSTOP)
Redis is always continued (SIGCONT) before it is killed, or it would linger as a zombie-in-waiting.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.conftest import free_port, redis_server_binary, wait_for_port
from tests.stack import Stack, create_vendor, running_stack, stack_env

# Limits high enough that scenarios are judged on faults and validation, not cut short by a 429
# (the limits have their own tests); the limiter itself stays on.
GENEROUS_LIMITS = {
    "RATE_LIMIT_GLOBAL": "1000000/minute",
    "RATE_LIMIT_IMAGE_PROCESSING": "1000000/minute",
    "RATE_LIMIT_BACKGROUND_REMOVAL": "1000000/minute",
    "RATE_LIMIT_BULK": "1000000/minute",
    "RATE_LIMIT_READS": "1000000/minute",
}


class PrivateRedis:
    """One redis-server on a fixed port in ``workdir``; with AOF (as compose configures it:
    appendfsync everysec, noeviction) a restart keeps the data."""

    def __init__(self, workdir: Path, port: int | None = None, *, appendonly: bool = True) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port and data folder) and wait until it accepts."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 (the child keeps its own copy)
        try:
            self.proc = subprocess.Popen(
                [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
                 "--maxmemory-policy", "noeviction", "--dir", str(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.stopped = False
        wait_for_port(self.port, 20)
        deadline = time.monotonic() + 20
        while True:  # the port opens before the AOF is loaded
            try:
                self.client().ping()
                return
            except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        """A plain client (generous timeouts) for the scenario's own checks."""
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=2)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what the AOF already has."""
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.cont()
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGSTOP: Redis hangs; connections still open (the kernel accepts them) but nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        """SIGCONT after stop()."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def close(self) -> None:
        """Continue if stopped, then kill: always safe to call."""
        self.kill()


@dataclass
class ApiStack:
    """Gunicorn on a private Redis and SQLite database, with one vendor and its key."""

    stack: Stack
    redis: PrivateRedis
    vendor: str
    key: str
    database_url: str

    @property
    def base_url(self) -> str:
        return self.stack.base_url


@contextmanager
def api_stack(workdir: Path, extra_env: dict[str, str] | None = None, *,
              vendor: str = "acme", unset: tuple[str, ...] = ()) -> Iterator[ApiStack]:
    """Start a private Redis and Gunicorn (no rq workers) in ``workdir``; stop both afterwards.

    REMBG_URLS points at a closed port so the health route never probes a stranger's server.
    ``unset`` names variables of tests.stack's environment to drop (e.g. GUNICORN_WORKERS, so
    that service/gunicorn.conf.py picks the production default).
    """
    server = PrivateRedis(workdir / "redis")
    database_url = f"sqlite:///{workdir / 'db.sqlite3'}"
    try:
        server.start()
        env = stack_env(redis_url=server.url, database_url=database_url, storage_dir=workdir / "files",
                        port=free_port(), extra={"REMBG_URLS": f"http://127.0.0.1:{free_port()}",
                                                 **(extra_env or {})})
        for name in unset:
            env.pop(name, None)
        with running_stack(env, workdir / "logs") as stack:
            key = create_vendor(env, vendor)
            yield ApiStack(stack, server, vendor, key, database_url)
    finally:
        server.close()
