"""Pieces the fault scenarios share: a Redis they may kill, supervised workers they may kill,
and the checks that prove nothing was lost or half-written.

Everything runs as real processes: redis-server, Gunicorn and `rq worker -w
jobs.worker.ImageQueueWorker` exactly as tests/stack.py starts them for the integration tests.
"""
from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from tests.conftest import ROOT, free_port
from tests.reliability.api_stack import GENEROUS_LIMITS, PrivateRedis
from tests.stack import PhotoServer, Stack, create_vendor, running_stack, stack_env


class Supervisor:
    """Keeps worker slots running, as scripts/respawn and compose's restart policy do.

    A dead worker is started again under a new name within ``check_s``; ``restarts`` counts them.
    """

    def __init__(self, stack: Stack, slots: list[tuple[str, ...]], check_s: float = 0.2) -> None:
        self.stack, self.check_s = stack, check_s
        self.slots = [list(queues) for queues in slots]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self.generation = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        for queues in self.slots:
            self.procs.append(self._spawn(queues))
        self._thread.start()

    def _spawn(self, queues: list[str]) -> subprocess.Popen[bytes]:
        self.generation += 1
        return self.stack.start_worker(*queues, name=f"rel-{os.getpid()}-{self.generation}")

    def _loop(self) -> None:
        while not self._stop.wait(self.check_s):
            with self._lock:
                for index, proc in enumerate(self.procs):
                    if proc.poll() is not None:
                        self.procs[index] = self._spawn(self.slots[index])
                        self.restarts += 1

    def alive(self) -> list[subprocess.Popen[bytes]]:
        with self._lock:
            return [proc for proc in self.procs if proc.poll() is None]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a worker's work-horse while it runs a job)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


def horse_of(pid: int) -> int | None:
    """The work-horse of worker ``pid``, if it is running a job.

    RQ forks the horse into its own process group (os.setsid); the worker's other child, the
    --with-scheduler process, stays in the worker's group.
    """
    for child in children(pid):
        try:
            if os.getpgid(child) == child:
                return child
        except ProcessLookupError:
            continue
    return None


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


@dataclass
class RelStack:
    """A running stack for one scenario, with a vendor key and a photo server."""

    stack: Stack
    redis: PrivateRedis
    key: str
    photos: PhotoServer
    workdir: Path
    env: dict[str, str]
    supervisor: Supervisor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    @property
    def db_path(self) -> Path:
        return self.workdir / "db.sqlite3"

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "files"

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def post(self, path: str, body: dict[str, Any], timeout: float = 10) -> requests.Response:
        return requests.post(f"{self.base_url}{path}", json=body, headers=self.headers(), timeout=timeout)

    def get(self, path: str, timeout: float = 10) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", headers=self.headers(), timeout=timeout)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            return conn.execute(sql, params).fetchall()

    def start_reconciler(self, every_s: float = 5, older_than_s: float = 20) -> subprocess.Popen[bytes]:
        """The Procfile's `reconciler` line, with intervals scaled down for a test."""
        log = open(self.workdir / "logs" / "reconciler.log", "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "reconcile", "--every", str(every_s),
                                 "--older-than", str(older_than_s)], cwd=ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.extras.setdefault("procs", []).append(proc)
        return proc

    def supervise(self, slots: list[tuple[str, ...]]) -> Supervisor:
        self.supervisor = Supervisor(self.stack, slots)
        self.supervisor.start()
        return self.supervisor


@contextmanager
def rel_stack(workdir: Path, *, appendonly: bool = True, extra: dict[str, str] | None = None) -> Iterator[RelStack]:
    """Private Redis + SQLite + Gunicorn (+ workers the scenario adds) in ``workdir``."""
    with ExitStack() as stack:
        server = PrivateRedis(workdir / "redis", appendonly=appendonly)
        server.start()
        stack.callback(server.close)
        env = stack_env(redis_url=server.url, database_url=f"sqlite:///{workdir / 'db.sqlite3'}",
                        storage_dir=workdir / "files", port=free_port(),
                        extra={**GENEROUS_LIMITS, "JOB_RETRY_INTERVALS_S": "1,2,4", **(extra or {})})
        running = stack.enter_context(running_stack(env, workdir / "logs"))
        photos = PhotoServer()
        stack.callback(photos.close)
        rel = RelStack(running, server, create_vendor(env, "acme"), photos, workdir, env)
        try:
            yield rel
        finally:
            if rel.supervisor is not None:
                rel.supervisor.stop()
            for proc in rel.extras.get("procs", []):
                proc.terminate()
                proc.wait(10)


# --- photos and submissions --------------------------------------------------------------------
def portrait_jpegs(count: int, size: int = 480) -> list[bytes]:
    """``count`` distinct JPEGs with one frontal face (scikit-image's astronaut, shifted and tinted)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    base = Image.fromarray(data.astronaut()).resize((size, size))
    out = []
    for index in range(count):
        pixels = np.asarray(base).astype("int16")
        pixels = np.clip(pixels + (index % 23) - 11, 0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def make_zip(images: list[bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for index, data in enumerate(images):
            archive.writestr(f"photos/{index:06d}.jpg", data)
    return buf.getvalue()


def upload_zip(rel: RelStack, data: bytes) -> str:
    resp = requests.post(f"{rel.base_url}/api/batch/upload-zip", headers=rel.headers(), timeout=120,
                         data={"projectId": "rel"}, files={"file": ("photos.zip", data, "application/zip")})
    resp.raise_for_status()
    return str(resp.json()["batchId"])


def submit_crops(rel: RelStack, urls: list[str], prefix: str) -> list[str]:
    """One crop-face-queue request per URL; returns the job ids."""
    ids = []
    for index, url in enumerate(urls):
        resp = rel.post("/api/image-queue/crop-face-queue",
                        {"projectId": "rel", "recordId": f"{prefix}-{index}", "photoUrl": url, "mode": "square"})
        resp.raise_for_status()
        ids.append(resp.json()["jobId"])
    return ids


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (requests.RequestException, redis.RedisError, sqlite3.Error):
            pass
        time.sleep(interval)
    return False


# --- the "nothing lost, nothing half-written" checks -----------------------------------------------
def settle_figures(rel: RelStack) -> dict[str, int]:
    """Counts over the records database and the storage folder after every job should have ended."""
    q = rel.query
    figures = {
        "records": q("SELECT COUNT(*) FROM data_records")[0][0],
        "records completed": q("SELECT COUNT(*) FROM data_records WHERE processing_status = 'completed'")[0][0],
        "records failed": q("SELECT COUNT(*) FROM data_records WHERE processing_status = 'failed'")[0][0],
        "records failed without a reason": q(
            "SELECT COUNT(*) FROM data_records WHERE processing_status = 'failed'"
            " AND (error_code IS NULL OR error_code = '')")[0][0],
        "records completed without output": q(
            "SELECT COUNT(*) FROM data_records WHERE processing_status = 'completed' AND output_url IS NULL")[0][0],
        "records stuck queued/processing": q(
            "SELECT COUNT(*) FROM data_records WHERE processing_status IN ('queued', 'processing')")[0][0],
        "batch items pending": q("SELECT COUNT(*) FROM batch_items WHERE status = 'pending'")[0][0],
        "batch items completed": q("SELECT COUNT(*) FROM batch_items WHERE status = 'completed'")[0][0],
        "batch items failed": q("SELECT COUNT(*) FROM batch_items WHERE status = 'failed'")[0][0],
        "batch counters off": q(
            "SELECT COUNT(*) FROM batches b WHERE b.processed != (SELECT COUNT(*) FROM batch_items i"
            " WHERE i.batch_id = b.batch_id AND i.status IN ('completed', 'failed'))"
            " OR b.failed != (SELECT COUNT(*) FROM batch_items i WHERE i.batch_id = b.batch_id"
            " AND i.status = 'failed')")[0][0],
    }
    files = [p for p in rel.storage_dir.rglob("*") if p.is_file()]
    figures["stored files"] = len(files)
    figures["partial files"] = sum(1 for p in files if p.name.endswith(".part") or ".tmp" in p.name)
    return figures


def is_output(path: Path) -> bool:
    """A stored output: not a hidden temporary file, nor a thumbnail kept beside an output (jobs/previews.py)."""
    return path.is_file() and not path.name.startswith(".") and "-thumb." not in path.name


def outputs_per_record(rel: RelStack) -> dict[str, int]:
    """Stored outputs per single-job record folder (storage keys are vendor/project/record/...)."""
    counts: dict[str, int] = {}
    base = rel.storage_dir / "acme" / "rel"
    if base.exists():
        for folder in base.iterdir():
            counts[folder.name] = sum(1 for p in folder.rglob("*") if is_output(p))
    return counts


def random_delay(low: float, high: float, rng: random.Random) -> None:
    time.sleep(rng.uniform(low, high))
