"""Start and stop the real stack for integration tests: Gunicorn and `rq worker` processes.

Processes get the same commands as the Procfile; only the environment (ports, database,
storage folder, short retry intervals) is the test's own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import requests

from tests.conftest import ROOT, free_port, wait_for_port

VENV_BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """A running API and its workers."""

    base_url: str
    env: dict[str, str]
    api: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start_worker(self, *queues: str, name: str | None = None) -> subprocess.Popen[bytes]:
        """Start one `rq worker` like the Procfile's lines."""
        index = len(self.workers)
        log: IO[bytes] | int = subprocess.DEVNULL
        if self.log_dir:
            log = open(self.log_dir / f"worker-{index}.log", "wb")  # noqa: SIM115 (closed in close())
            self._logs.append(log)
        cmd = [str(VENV_BIN / "rq"), "worker", "-c", "jobs.settings", "-w", "jobs.worker.ImageQueueWorker",
               "--with-scheduler",
               # Short intervals (with WORKER_HEARTBEAT_GRACE_S=10 below) so that a job whose worker was
               # killed is found abandoned within ~20 s, not RQ's default ~2 min.
               "--worker-ttl", "30", "--maintenance-interval", "5", "--job-monitoring-interval", "5",
               "-n", name or f"test-worker-{os.getpid()}-{index}", *queues]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        """Stop every worker (SIGTERM: warm shutdown), killing stragglers."""
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()

    def close(self) -> None:
        """Stop workers and the API; close log files."""
        self.stop_workers()
        self.api.terminate()
        try:
            self.api.wait(15)
        except subprocess.TimeoutExpired:
            self.api.kill()
            self.api.wait()
        for handle in self._logs:
            handle.close()

    def logs(self) -> str:
        """All process logs, for assertion messages."""
        if not self.log_dir:
            return ""
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
                         for path in sorted(self.log_dir.glob("*.log")))


def stack_env(*, redis_url: str, database_url: str, storage_dir: Path, port: int,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the API and workers of a test stack."""
    env = dict(os.environ)
    env.update({
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "STORAGE_DIR": str(storage_dir),
        "UPLOAD_DIR": str(storage_dir.parent / "uploads"),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
        "JOB_RETRY_INTERVALS_S": "1,1,1",
        "WORKER_HEARTBEAT_GRACE_S": "10",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        "GUNICORN_ACCESSLOG": "",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    env.update(extra or {})
    return env


@contextmanager
def running_stack(env: dict[str, str], log_dir: Path) -> Iterator[Stack]:
    """Migrate, start Gunicorn, yield; stop everything afterwards."""
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    port = int(env["GUNICORN_BIND"].rsplit(":", 1)[1])
    log_dir.mkdir(parents=True, exist_ok=True)
    api_log = open(log_dir / "api.log", "wb")  # noqa: SIM115 (closed by Stack.close)
    api = subprocess.Popen([str(VENV_BIN / "gunicorn"), "-c", "service/gunicorn.conf.py", "service.wsgi:app"],
                           cwd=ROOT, env=env, stdout=api_log, stderr=subprocess.STDOUT)
    stack = Stack(f"http://127.0.0.1:{port}", env, api, log_dir=log_dir, _logs=[api_log])
    try:
        wait_for_port(port, 30)
        yield stack
    finally:
        stack.close()


@contextmanager
def sqlite_stack(redis_url: str, tmp: Path, extra: dict[str, str] | None = None) -> Iterator[Stack]:
    """The API on a flushed Redis, SQLite and local storage under ``tmp``; the caller starts workers."""
    import redis

    redis.Redis.from_url(redis_url).flushall()
    env = stack_env(redis_url=redis_url, database_url=f"sqlite:///{tmp / 'db.sqlite3'}",
                    storage_dir=tmp / "files", port=free_port(), extra=extra)
    with running_stack(env, tmp / "logs") as running:
        yield running


@contextmanager
def all_workers_stack(redis_url: str, rembg_urls: str, tmp: Path, *, batch_chunk_size: int) -> Iterator[Stack]:
    """A stack with every worker a client drives (single crops, batch ingestion and detection in one
    worker, background removal in another) on a flushed Redis, SQLite and local storage under ``tmp``."""
    from core import contracts

    with sqlite_stack(redis_url, tmp, {"BATCH_CHUNK_SIZE": str(batch_chunk_size), "REMBG_URLS": rembg_urls}) as running:
        running.start_worker(contracts.QUEUE_FACE_CROP, contracts.QUEUE_BATCH_INGESTION,
                             *contracts.FACE_DETECTION_QUEUES)
        running.start_worker(contracts.QUEUE_BACKGROUND_REMOVAL)
        yield running


def create_vendor(env: dict[str, str], vendor_id: str) -> str:
    """Create a vendor with the real CLI; returns its API key."""
    out = subprocess.run([sys.executable, "-m", "service.cli", "vendor", "create", vendor_id],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def wait_for_job(base_url: str, key: str, job_id: str, *, timeout: float = 60,
                 until: tuple[str, ...] = ("completed", "failed")) -> dict[str, Any]:
    """Poll job status until its state is in ``until``; returns the last body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = requests.get(f"{base_url}/api/image-queue/job/{job_id}", headers={"X-API-Key": key}, timeout=5)
        body = resp.json()
        if body.get("state") in until:
            return body
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {body.get('state')!r} after {timeout}s: {body}")


class PhotoServer:
    """A loopback HTTP server the workers fetch photos from, with programmable failures."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_next: dict[str, list[int]] = {}
        self.hits: dict[str, int] = {}
        self.delays: dict[str, float] = {}  # seconds to wait before answering (a slow image host)
        self.port = free_port()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                server.hits[path] = server.hits.get(path, 0) + 1
                if path in server.delays:
                    time.sleep(server.delays[path])
                failures = server.fail_next.get(path)
                if failures:
                    self.send_response(failures.pop(0))
                    self.end_headers()
                    return
                data = server.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()
