"""Issue 7, item 3: the service's dependencies fail while jobs run; every job still finishes.

Three sub-scenarios, each on its own private stack in ``workdir`` (redis-server, Gunicorn,
`rq worker` processes, SQLite or a private mariadbd, local or stand-in Cloudinary storage):

* **rembg**: three real ``rembg s`` servers; mid-run one is SIGKILLed (crash) and another
  SIGSTOPped for longer than REMBG_READ_TIMEOUT_S (a hung instance), then both come back.
  Background-removal jobs must all complete, on the healthy instance while the others are
  out, and spread over all three again afterwards.
* **mysql**: a private mariadbd (never the machine's shared one) is stopped mid-batch
  (SIGTERM; in the full profile also SIGKILL), kept down a few seconds and started again.
  Every batch item and record must end with an outcome, counters must equal the item rows,
  each output must be stored exactly once.
* **storage**: the Cloudinary stand-in answers 500 and resets connections for a window while
  crop jobs upload; retries must carry every job to a completed record whose output exists.

Every sub-scenario also checks that nothing is half-written: no record or batch item marked
completed without an output, no temp files left, every stored output decodes.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import requests
from PIL import Image

from core import contracts, rqjson
from tests.cloudinary_standin import CloudinaryStandin, _Handler, _Pending
from tests.conftest import ROOT, free_port, redis_server_binary, wait_for_port
from tests.reliability.harness import is_output
from tests.reliability.report import Report
from tests.rembg_servers import REMBG_BIN, RembgServer, ensure_model, photo_jpeg
from tests.stack import PhotoServer, Stack, create_vendor, running_stack, stack_env

VENDOR = "acme"
# Storage keys of the previews beside an output, without extension (jobs/imaging/thumbnails.py).
PREVIEW_SUFFIXES = ("-thumb", "-source-thumb")
PROJECT = "p1"
MARIADBD = os.environ.get("IQ_MARIADBD") or shutil.which("mariadbd") or "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = os.environ.get("IQ_MARIADB_INSTALL_DB") or shutil.which("mariadb-install-db") or \
    "/usr/bin/mariadb-install-db"
TEMP_PATTERNS = ("*.part", ".*.tmp")  # fetch/ingest temp files, LocalStorage's atomic-write temp files


@dataclass(frozen=True)
class Plan:
    """Sizes and fault windows of one profile."""

    rembg_wave1: int  # background-removal jobs submitted before the faults
    rembg_wave2: int  # submitted once every instance is back
    rembg_stop_s: float  # how long the SIGSTOPped instance stays frozen
    rembg_restart_after_s: float  # how long the SIGKILLed instance stays dead before its restart
    mysql_batch: int  # images in the URL-list batch
    mysql_singles: int  # single crop jobs beside it
    mysql_down_s: float  # each outage's length
    mysql_kills: tuple[int, ...]  # signals stopping mariadbd, one outage each
    storage_jobs: int  # crop jobs uploading to the stand-in
    storage_window_s: float  # how long uploads fail
    retries: int  # JOB_RETRIES
    retry_intervals: str  # JOB_RETRY_INTERVALS_S: their sum must outlast each fault window

    @classmethod
    def of(cls, profile: str) -> Plan:
        if profile == "quick":
            return cls(rembg_wave1=9, rembg_wave2=3, rembg_stop_s=6.0, rembg_restart_after_s=0.0,
                       mysql_batch=60, mysql_singles=6, mysql_down_s=3.0, mysql_kills=(signal.SIGTERM,),
                       storage_jobs=12, storage_window_s=5.0, retries=3, retry_intervals="1,2,4")
        if profile == "full":
            return cls(rembg_wave1=48, rembg_wave2=12, rembg_stop_s=15.0, rembg_restart_after_s=8.0,
                       mysql_batch=300, mysql_singles=20, mysql_down_s=10.0,
                       mysql_kills=(signal.SIGTERM, signal.SIGKILL),
                       storage_jobs=60, storage_window_s=20.0, retries=5, retry_intervals="1,2,4,8,16")
        raise ValueError(f"unknown profile {profile!r}: quick or full")


# --- the whole scenario -------------------------------------------------------------------------
def run(profile: str, workdir: Path) -> Report:
    """All three sub-scenarios; one crashing is a failed figure and the others still run."""
    report = Report("dependencies", profile)
    for name, part in (("rembg", run_rembg), ("mysql", run_mysql), ("storage", run_storage)):
        try:
            part(profile, workdir / name, report)
        except Exception:  # noqa: BLE001 (reported as a failed figure with its traceback)
            report.check(f"{name}: ran to the end", traceback.format_exc(limit=6), False, "no exception")
    return report.done()


# --- shared plumbing ----------------------------------------------------------------------------
@contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A redis-server of this scenario only (no persistence), stopped afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop_process(proc)


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def base_env(plan: Plan, redis_url: str, database_url: str, folder: Path,
             extra: dict[str, str] | None = None) -> dict[str, str]:
    """Stack environment: short retries covering the fault window, no rate limits (load is the point)."""
    return stack_env(redis_url=redis_url, database_url=database_url, storage_dir=folder / "files",
                     port=free_port(), extra={
                         "JOB_RETRIES": str(plan.retries), "JOB_RETRY_INTERVALS_S": plan.retry_intervals,
                         "RATE_LIMIT_ENABLED": "false", "BULK_MAX_ITEMS": "100", **(extra or {})})


def post(stack: Stack, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON to the API; raises with the answer unless it is 202."""
    resp = requests.post(f"{stack.base_url}{path}", json=body, headers={"X-API-Key": key}, timeout=30)
    if resp.status_code != 202:
        raise AssertionError(f"POST {path} answered {resp.status_code}: {resp.text[:500]}")
    return dict(resp.json())


def wait_jobs(redis_url: str, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Poll RQ until every job is finished or failed (retries spent); returns id -> last status."""
    conn = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while True:
        for job_id, job in zip(job_ids, rqjson.fetch_many(job_ids, connection=conn), strict=True):
            status = None if job is None else job.get_status(refresh=False)
            statuses[job_id] = "missing" if status is None else str(getattr(status, "value", status))
        if all(status in ("finished", "failed") for status in statuses.values()) or time.monotonic() > deadline:
            conn.close()
            return statuses
        time.sleep(0.25)


def job_views(stack: Stack, key: str, job_ids: list[str]) -> list[dict[str, Any]]:
    """Each job's status as the vendor reads it from the API."""
    views = []
    for job_id in job_ids:
        resp = requests.get(f"{stack.base_url}/api/image-queue/job/{job_id}", headers={"X-API-Key": key}, timeout=10)
        views.append(resp.json() if resp.status_code == 200 else {"id": job_id, "state": f"HTTP {resp.status_code}"})
    return views


def job_timings(redis_url: str, job_ids: list[str]) -> list[tuple[float, float]]:
    """(seconds from creation to the end, seconds of the last attempt's run) of each finished job."""
    conn = redis.Redis.from_url(redis_url)
    timings = []
    for job in rqjson.fetch_many(job_ids, connection=conn):
        if job is not None and job.ended_at and job.started_at and job.created_at:
            timings.append(((job.ended_at - job.created_at).total_seconds(),
                            (job.ended_at - job.started_at).total_seconds()))
    conn.close()
    return timings


def query(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one SELECT, on a fresh connection (SQL with ``?`` placeholders)."""
    if database_url.startswith("sqlite:///"):
        sconn = sqlite3.connect(database_url[len("sqlite:///"):], timeout=10)
        try:
            return list(sconn.execute(sql, params).fetchall())
        finally:
            sconn.close()
    import mysql.connector

    parts = urlsplit(database_url)
    mconn = mysql.connector.connect(host=parts.hostname, port=parts.port or 3306,
                                    user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
                                    database=parts.path.strip("/"), connection_timeout=10)
    try:
        cur = mconn.cursor()
        cur.execute(sql.replace("?", "%s"), params)
        return [tuple(row) for row in cur.fetchall()]
    finally:
        mconn.close()


def count(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> int:
    """The single number a COUNT(*) query returns."""
    return int(query(database_url, sql, params)[0][0])


def temp_files(*folders: Path) -> list[str]:
    """Temp files left behind under the folders (a half-written file never renamed into place)."""
    found: list[str] = []
    for folder in folders:
        if folder.exists():
            for pattern in TEMP_PATTERNS:
                found += [str(path) for path in folder.rglob(pattern)]
    return found


def undecodable(paths: list[Path]) -> list[str]:
    """Stored files that are not complete images."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as exc:  # noqa: BLE001 (any decoding error is the finding)
            bad.append(f"{path.name}: {exc}")
    return bad


def check_nothing_half_written(report: Report, prefix: str, database_url: str, env: dict[str, str]) -> None:
    """No completed row without its output, no row left mid-flight, no temp file left behind."""
    completed_no_output = count(database_url, "SELECT COUNT(*) FROM data_records WHERE processing_status ="
                                              " 'completed' AND (output_url IS NULL OR output_url = '')")
    report.check(f"{prefix}: records completed without output_url", completed_no_output,
                 completed_no_output == 0, "0")
    mid_flight = count(database_url, "SELECT COUNT(*) FROM data_records WHERE processing_status IN"
                                     " ('queued', 'processing')")
    report.check(f"{prefix}: records left queued/processing", mid_flight, mid_flight == 0, "0")
    failed_silent = count(database_url, "SELECT COUNT(*) FROM data_records WHERE processing_status = 'failed'"
                                        " AND (error_code IS NULL OR error_code = '')")
    report.check(f"{prefix}: records failed without a reason", failed_silent, failed_silent == 0, "0")
    items_no_output = count(database_url, "SELECT COUNT(*) FROM batch_items WHERE status = 'completed'"
                                          " AND (output_url IS NULL OR output_url = '')")
    report.check(f"{prefix}: batch items completed without output_url", items_no_output, items_no_output == 0, "0")
    left = temp_files(Path(env["STORAGE_DIR"]), Path(env["UPLOAD_DIR"]))
    report.check(f"{prefix}: temp files left in STORAGE_DIR/UPLOAD_DIR", len(left), not left, "0")
    if left:
        report.note(f"{prefix}: temp files: {left[:5]}")


def local_outputs(env: dict[str, str], *parts: str) -> list[Path]:
    """Stored outputs (not temp files, not the thumbnails kept beside them) under STORAGE_DIR/parts."""
    folder = Path(env["STORAGE_DIR"]).joinpath(*parts)
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if is_output(p))


def workers_alive(stack: Stack) -> int:
    """Worker processes of the stack still running."""
    return sum(proc.poll() is None for proc in stack.workers)


# --- rembg ----------------------------------------------------------------------------------------
class _Frozen:
    """SIGSTOPped process groups, resumed (SIGCONT) on exit whatever happened."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def stop(self, server: RembgServer) -> None:
        assert server.proc is not None
        os.killpg(server.proc.pid, signal.SIGSTOP)
        self.pids.add(server.proc.pid)

    def resume(self, server: RembgServer) -> None:
        assert server.proc is not None
        if server.proc.pid in self.pids:
            os.killpg(server.proc.pid, signal.SIGCONT)
            self.pids.discard(server.proc.pid)

    def resume_all(self) -> None:
        for pid in list(self.pids):
            try:
                os.killpg(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.pids.clear()


def _rembg_servers(folder: Path, stack: ExitStack) -> tuple[list[RembgServer], _Frozen]:
    """Three real `rembg s` (u2netp), started together, not yet ready; each stopped at exit (SIGCONT first)."""
    if not REMBG_BIN.exists():
        raise RuntimeError(f"{REMBG_BIN} is missing: ./scripts/test creates the rembg virtualenv "
                           "(requirements-rembg.txt), or set IQ_REMBG_VENV")
    ensure_model()
    folder.mkdir(parents=True, exist_ok=True)
    servers = [RembgServer(folder / f"rembg-{i}.log") for i in range(3)]
    frozen = _Frozen()
    for server in servers:
        stack.callback(server.stop)
    stack.callback(frozen.resume_all)  # runs first: a stopped process cannot be terminated
    for server in servers:
        server.start()  # the caller waits for them (wait_ready) after starting the rest of the stack
    return servers, frozen


def _warm_up(servers: list[RembgServer], photo: bytes) -> float:
    """Load the model in every server (rembg does it on the first call), then time one warm call each.

    Returns the slowest warm call: the pool's read timeout is set from it, so that a healthy
    but busy server on this shared machine is not mistaken for a hung one.
    """
    slowest = 0.0
    for server in servers:
        for _ in range(2):
            began = time.monotonic()
            resp = requests.post(f"{server.url}/api/remove", files={"file": ("photo.jpg", photo, "image/jpeg")},
                                 data={"model": "u2netp"}, timeout=180)
            if resp.status_code != 200:
                raise RuntimeError(f"rembg at {server.url} answered {resp.status_code} to the warm-up call")
        slowest = max(slowest, time.monotonic() - began)
    return slowest


def _failovers(stack: Stack, url: str) -> int:
    """Calls the workers logged as failed on this instance before moving to the next one."""
    pattern = re.compile(rf"rembg instance {re.escape(url)} failed, trying the next one")
    folder = stack.log_dir
    if folder is None:
        return 0
    return sum(len(pattern.findall(path.read_text(errors="replace"))) for path in folder.glob("worker-*.log"))


def _migrate_and_vendor(env: dict[str, str]) -> str:
    """Create the schema and the vendor (the real CLI) while the rembg servers load; returns its key."""
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    return create_vendor(env, VENDOR)


def _wait_removals(servers: list[RembgServer], base: list[int], at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(s.removals() for s in servers) - sum(base) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rembg servers handled fewer than {at_least} images in {timeout}s")
        time.sleep(0.05)


def _bulk_remove_bg(stack: Stack, key: str, photos: PhotoServer, prefix: str, count_: int) -> list[str]:
    body = post(stack, key, "/api/image-queue/bulk-remove-bg", {
        "projectId": PROJECT, "recordIds": [f"{prefix}-{i}" for i in range(count_)],
        "photoUrls": [photos.url("/photo.jpg")] * count_})
    return list(body["jobIds"])


def run_rembg(profile: str, workdir: Path, report: Report) -> None:
    """One rembg server crashes and another hangs mid-run; jobs move to the healthy one and finish."""
    plan = Plan.of(profile)
    with ExitStack() as stack_:
        servers, frozen = _rembg_servers(workdir / "rembg", stack_)
        redis_url = stack_.enter_context(private_redis(workdir / "redis"))
        photos = PhotoServer()
        stack_.callback(photos.close)
        photos.files["/photo.jpg"] = photo_jpeg(320)
        database_url = f"sqlite:///{workdir / 'db.sqlite3'}"
        env = base_env(plan, redis_url, database_url, workdir, {
            "REMBG_URLS": ",".join(s.url for s in servers), "REMBG_CONNECT_TIMEOUT_S": "1",
            "REMBG_PROBE_TIMEOUT_S": "1", "REMBG_COOLDOWN_S": "2"})
        key = _migrate_and_vendor(env)
        for server in servers:
            server.wait_ready()
        warm = _warm_up(servers, photos.files["/photo.jpg"])
        read_timeout = round(min(20.0, max(4.0, 4 * warm)), 1)
        stop_s = max(plan.rembg_stop_s, read_timeout + 2)  # frozen for longer than the pool waits
        report.figure("rembg: slowest warm call before the faults", round(warm, 2), "s")
        report.figure("rembg: REMBG_READ_TIMEOUT_S (4 x that, 4-20 s) / SIGSTOP length", (read_timeout, stop_s), "s")
        env["REMBG_READ_TIMEOUT_S"] = str(read_timeout)
        stack = stack_.enter_context(running_stack(env, workdir / "logs"))
        for _ in range(3):  # the seed's background-removal concurrency
            stack.start_worker(contracts.QUEUE_BACKGROUND_REMOVAL)

        counts: dict[str, list[int]] = {"start": [s.removals() for s in servers]}
        wave1 = _bulk_remove_bg(stack, key, photos, "w1", plan.rembg_wave1)
        _wait_removals(servers, counts["start"], max(2, plan.rembg_wave1 // 5), 60)
        counts.update(_rembg_faults(plan, servers, frozen, stop_s))
        statuses = wait_jobs(redis_url, wave1, 120 if profile == "quick" else 240)
        servers[1].wait_ready()
        # Wave 2 checks that every instance is back in the rotation. An instance that failed in
        # the last REMBG_COOLDOWN_S is skipped by design, and with mask-only calls wave 1 can
        # end inside that window: let the cool-downs run out first.
        time.sleep(float(env["REMBG_COOLDOWN_S"]) + 1)
        back = [s.removals() for s in servers]
        wave2 = _bulk_remove_bg(stack, key, photos, "w2", plan.rembg_wave2)
        statuses.update(wait_jobs(redis_url, wave2, 90))
        counts["after"] = [s.removals() - b for s, b in zip(servers, back, strict=True)]
        _rembg_checks(report, stack, key, plan, servers, wave1 + wave2, statuses, counts)
        _rembg_timings(report, stack, redis_url, servers, wave1 + wave2, read_timeout)
        check_nothing_half_written(report, "rembg", database_url, env)
        report.check("rembg: workers alive", workers_alive(stack), workers_alive(stack) == 3, "3")


def _rembg_faults(plan: Plan, servers: list[RembgServer], frozen: _Frozen, stop_s: float) -> dict[str, list[int]]:
    """SIGKILL server 1 and SIGSTOP server 2 for ``stop_s``; restart / SIGCONT them. Returns removal counts.

    ``at_fault``: counts right after the faults; ``during``: what each served while the faults
    lasted; ``while_out``: what the killed one served while dead and the stopped one while frozen.
    """
    dead, slow = servers[1], servers[2]
    began = time.monotonic()
    dead.kill()
    frozen.stop(slow)
    at_fault = [s.removals() for s in servers]  # after the faults: a call ending meanwhile is "before"
    dead_served: int | None = None
    while time.monotonic() - began < stop_s or dead_served is None:
        if dead_served is None and time.monotonic() - began >= plan.rembg_restart_after_s:
            dead_served = dead.removals() - at_fault[1]
            dead.start()  # back once its model is loaded (wait_ready later)
        time.sleep(0.1)
    during = [s.removals() - a for s, a in zip(servers, at_fault, strict=True)]
    frozen.resume(slow)
    return {"at_fault": at_fault, "during": during, "while_out": [dead_served, during[2]]}


def _rembg_timings(report: Report, stack: Stack, redis_url: str, servers: list[RembgServer], job_ids: list[str],
                   read_timeout: float) -> None:
    """How often the pool met the faults, and what they cost the jobs in time."""
    hung = _failovers(stack, servers[2].url)
    report.check("rembg: calls that timed out on the SIGSTOPped instance", hung, hung >= 1,
                 ">= 1 (the hang was really hit)")
    report.figure("rembg: failed calls on the SIGKILLed instance", _failovers(stack, servers[1].url))
    timings = job_timings(redis_url, job_ids)
    worst_run = max((run for _, run in timings), default=0.0)
    report.check("rembg: max job run time (last attempt)", round(worst_run, 2),
                 worst_run <= read_timeout + 10, f"<= REMBG_READ_TIMEOUT_S + 10 = {read_timeout + 10:.0f}",
                 "s", timing=True)
    report.figure("rembg: max job latency (queued to done)", round(max((t for t, _ in timings), default=0.0), 2), "s")


def _rembg_checks(report: Report, stack: Stack, key: str, plan: Plan, servers: list[RembgServer],
                  job_ids: list[str], statuses: dict[str, str], counts: dict[str, list[int]]) -> None:
    """Job outcomes, stored outputs and where the traffic went."""
    total = plan.rembg_wave1 + plan.rembg_wave2
    views = job_views(stack, key, job_ids)
    completed = sum(view.get("state") == "completed" for view in views)
    failed = sum(view.get("state") == "failed" for view in views)
    stuck = sum(status not in ("finished", "failed") for status in statuses.values())
    report.check("rembg: jobs completed", completed, completed == total, f"{total} of {total}")
    report.check("rembg: jobs failed", failed, failed == 0, "0")
    report.check("rembg: jobs stuck (not finished)", stuck, stuck == 0, "0")
    report.figure("rembg: jobs that needed a retry", sum(int(view.get("attempts") or 0) > 1 for view in views))
    # Exactly one stored output per record, named after the record's own job, a PNG with alpha.
    wrong_count, bad_png = 0, []
    for view in views:
        record_id = view.get("data", {}).get("recordId", "?")
        files = local_outputs(stack.env, VENDOR, PROJECT, record_id)
        if len(files) != 1 or files[0].name != f"remove-bg-{view.get('id')}.png":
            wrong_count += 1
            continue
        with Image.open(files[0]) as image:
            image.load()
            alpha = image.getchannel("A") if image.mode == "RGBA" else None
            if image.format != "PNG" or alpha is None or alpha.getpixel((2, 2)) > 16 or \
                    alpha.getpixel((image.width // 2, image.height // 2)) < 240:
                bad_png.append(files[0].name)
    report.check("rembg: records without exactly one stored output", wrong_count, wrong_count == 0, "0")
    report.check("rembg: outputs not a PNG with a transparent background", len(bad_png), not bad_png, "0")
    during, after = counts["during"], counts["after"]
    report.figure("rembg: removals per instance before the faults [healthy, killed, stopped]",
                  [a - s for a, s in zip(counts["at_fault"], counts["start"], strict=True)])
    report.figure("rembg: removals per instance during the faults", during)
    while_out = counts["while_out"]
    report.check("rembg: removals by the killed (while dead) and stopped (while frozen) instances", while_out,
                 while_out == [0, 0] and during[0] > 0, "[0, 0], and > 0 on the healthy one meanwhile")
    report.check("rembg: removals per instance after SIGCONT/restart (wave 2)", after,
                 all(n >= 1 for n in after) and sum(after) == plan.rembg_wave2,
                 f">= 1 each, {plan.rembg_wave2} in all")


# --- MySQL restarted mid-batch -----------------------------------------------------------------
class MariaDB:
    """A private mariadbd on its own datadir and port (never the machine's shared server)."""

    def __init__(self, folder: Path) -> None:
        for binary in (MARIADBD, MARIADB_INSTALL_DB):
            if not Path(binary).exists():
                raise RuntimeError(f"{binary} is not installed: the MySQL scenario needs MariaDB's server "
                                   "binaries (apt-get install mariadb-server; CI has /usr/sbin/mariadbd)")
        self.folder = folder
        self.datadir = folder / "mysql"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/iq"

    def install(self) -> None:
        """Create the datadir (root without password) and the ``iq`` database."""
        out = subprocess.run([MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}",
                              "--auth-root-authentication-method=normal", "--skip-test-db"],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({out.returncode}):\n"
                               f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
        self.start()
        import mysql.connector

        conn = mysql.connector.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True)
        conn.cursor().execute("CREATE DATABASE iq CHARACTER SET utf8mb4")
        conn.close()

    def start(self, timeout: float = 60) -> float:
        """Start mariadbd and wait until it takes connections; returns the seconds that took."""
        began = time.monotonic()
        log = open(self.folder / "mariadbd.log", "ab")  # noqa: SIM115 (the child holds it)
        self.proc = subprocess.Popen([
            MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.folder / 'mysql.sock'}",
            f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-networking=0", "--user=root",
            f"--pid-file={self.folder / 'mariadbd.pid'}", "--innodb-buffer-pool-size=32M",
            "--max-connections=200"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        import mysql.connector

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited ({self.proc.returncode}):\n{self.log()}")
            try:
                mysql.connector.connect(host="127.0.0.1", port=self.port, user="root", connection_timeout=1).close()
                return time.monotonic() - began
            except mysql.connector.Error:
                if time.monotonic() - began > timeout:
                    raise TimeoutError(f"mariadbd not up after {timeout}s:\n{self.log()}") from None
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop it with ``sig`` and wait for the process to end (SIGKILL if SIGTERM hangs)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        path = self.folder / "mariadbd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _batch_state(database_url: str, batch_id: str) -> dict[str, Any]:
    row = query(database_url, "SELECT status, image_count, processed, failed FROM batches WHERE batch_id = ?",
                (batch_id,))[0]
    return dict(zip(("status", "image_count", "processed", "failed"), row, strict=True))


def _wait_processed(database_url: str, batch_id: str, at_least: int, timeout: float) -> int:
    """Block until the batch counts ``at_least`` processed images; returns the count seen."""
    deadline = time.monotonic() + timeout
    while True:
        processed = int(_batch_state(database_url, batch_id)["processed"])
        if processed >= at_least or time.monotonic() > deadline:
            return processed
        time.sleep(0.05)


def _wait_batch_final(database_url: str, batch_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = _batch_state(database_url, batch_id)
        except Exception:  # noqa: BLE001 (the database may still be coming back)
            state = {"status": "unreadable"}
        if state["status"] in ("completed", "completed_with_errors", "failed") or time.monotonic() > deadline:
            return state
        time.sleep(0.25)


def run_mysql(profile: str, workdir: Path, report: Report) -> None:
    """mariadbd stopped mid-batch and started again: every image ends once, counters stay exact."""
    plan = Plan.of(profile)
    with ExitStack() as stack_:
        db = MariaDB(workdir / "mariadb")
        stack_.callback(db.stop)
        db.install()
        redis_url = stack_.enter_context(private_redis(workdir / "redis"))
        photos = PhotoServer()
        stack_.callback(photos.close)
        photos.files["/face.jpg"] = photo_jpeg(480)
        env = base_env(plan, redis_url, db.url, workdir, {"BATCH_CHUNK_SIZE": "5", "BATCH_VENDOR_CONCURRENCY": "4"})
        stack = stack_.enter_context(running_stack(env, workdir / "logs"))
        stack.start_worker(*contracts.FACE_DETECTION_QUEUES)
        stack.start_worker(*contracts.FACE_DETECTION_QUEUES)
        stack.start_worker(contracts.QUEUE_FACE_CROP)
        key = create_vendor(env, VENDOR)

        images = [{"recordId": f"b{i}", "imageUrl": photos.url("/face.jpg")} for i in range(plan.mysql_batch)]
        batch_id = str(post(stack, key, "/api/batch/add-images", {"projectId": PROJECT, "images": images})["batchId"])
        singles = list(post(stack, key, "/api/image-queue/bulk-crop-face", {
            "projectId": PROJECT, "mode": "square", "recordIds": [f"s{i}" for i in range(plan.mysql_singles)],
            "photoUrls": [photos.url("/face.jpg")] * plan.mysql_singles})["jobIds"])
        outages, answers_while_down = _restart_mid_batch(plan, db, stack, key, batch_id)
        recovered = time.monotonic()
        final = _wait_batch_final(db.url, batch_id, 240)
        statuses = wait_jobs(redis_url, singles, 120)
        report.figure("mysql: outages (signal, images processed when it went down, seconds down, start-up s)",
                      outages)
        report.figure("mysql: seconds from the last restart to the batch's end", round(time.monotonic() - recovered, 1))
        report.check("mysql: API answers while the database is down", answers_while_down,
                     all(code == 503 for code in answers_while_down), "503 each (never a 500)")
        pending_at_fault = [plan.mysql_batch - seen for _, seen, _, _ in outages]
        report.check("mysql: images still pending when the database went down", pending_at_fault,
                     all(n > 0 for n in pending_at_fault), "> 0 each (the outage was mid-batch)")
        _mysql_checks(report, stack, key, plan, db.url, batch_id, final, singles, statuses)
        check_nothing_half_written(report, "mysql", db.url, env)
        report.check("mysql: workers alive", workers_alive(stack), workers_alive(stack) == 3, "3")


def _restart_mid_batch(plan: Plan, db: MariaDB, stack: Stack, key: str,
                       batch_id: str) -> tuple[list[tuple[str, int, float, float]], list[int]]:
    """Stop mariadbd once per signal of the plan, at evenly spread points of the batch; start it again.

    Returns (signal, images processed when it went down, seconds down, start-up seconds) per
    outage, and the HTTP status the API answered a batch status read with while it was down.
    """
    outages, answers = [], []
    for index, sig in enumerate(plan.mysql_kills):
        threshold = plan.mysql_batch * (index + 1) // (len(plan.mysql_kills) + 2)
        seen = _wait_processed(db.url, batch_id, threshold, 120)
        went_down = time.monotonic()
        db.stop(sig)
        answers.append(requests.get(f"{stack.base_url}/api/batch/status/{batch_id}", headers={"X-API-Key": key},
                                    timeout=30).status_code)
        time.sleep(max(0.0, plan.mysql_down_s - (time.monotonic() - went_down)))
        startup = db.start()
        outages.append((signal.Signals(sig).name, seen, round(time.monotonic() - went_down, 1), round(startup, 1)))
    return outages, answers


def _mysql_checks(report: Report, stack: Stack, key: str, plan: Plan, database_url: str, batch_id: str,
                  final: dict[str, Any], singles: list[str], statuses: dict[str, str]) -> None:
    """Batch and single-job outcomes after the restarts, counted from the rows themselves."""
    by_status = dict(query(database_url, "SELECT status, COUNT(*) FROM batch_items WHERE batch_id = ?"
                                         " GROUP BY status", (batch_id,)))
    done, failed = int(by_status.get("completed", 0)), int(by_status.get("failed", 0))
    unfinished = sum(int(n) for status, n in by_status.items() if status not in ("completed", "failed"))
    report.check("mysql: batch status", final.get("status"), final.get("status") == "completed", "completed")
    report.check("mysql: batch items completed", done, done == plan.mysql_batch, f"{plan.mysql_batch}")
    report.check("mysql: batch items pending/unfinished", unfinished, unfinished == 0, "0")
    silent = count(database_url, "SELECT COUNT(*) FROM batch_items WHERE batch_id = ? AND status = 'failed'"
                                 " AND (error_code IS NULL OR error_code = '')", (batch_id,))
    report.check("mysql: batch items failed without a reason", silent, silent == 0, "0")
    counters = (int(final.get("processed", -1)), int(final.get("failed", -1)), int(final.get("image_count", -1)))
    report.check("mysql: batch counters (processed, failed, images) vs item rows", counters,
                 counters == (done + failed, failed, plan.mysql_batch) and done + failed == plan.mysql_batch,
                 f"({done + failed}, {failed}, {plan.mysql_batch}) from COUNT(*) over batch_items")
    resp = requests.get(f"{stack.base_url}/api/batch/status/{batch_id}", headers={"X-API-Key": key}, timeout=10)
    shown = resp.json().get("batch", {}) if resp.status_code == 200 else {}
    api_view = (resp.status_code, shown.get("status"), shown.get("progress", {}).get("processed"))
    report.check("mysql: API batch status after the restarts (HTTP, status, processed)", api_view,
                 api_view == (200, "completed", done + failed), f"(200, 'completed', {done + failed})")
    files = local_outputs(stack.env, VENDOR, "batches", batch_id)
    report.check("mysql: batch output files vs completed items", (len(files), done), len(files) == done,
                 "equal (each image stored exactly once)")
    bad = undecodable(files)
    report.check("mysql: batch outputs that do not decode", len(bad), not bad, "0")
    dup_items = count(database_url, "SELECT COUNT(*) FROM (SELECT batch_id, seq FROM batch_items"
                                    " GROUP BY batch_id, seq HAVING COUNT(*) > 1) d")
    dup_records = count(database_url, "SELECT COUNT(*) FROM (SELECT vendor_id, record_id FROM data_records"
                                      " GROUP BY vendor_id, record_id HAVING COUNT(*) > 1) d")
    report.check("mysql: duplicate rows (batch_items, data_records)", (dup_items, dup_records),
                 dup_items == 0 and dup_records == 0, "(0, 0)")
    records = count(database_url, "SELECT COUNT(*) FROM data_records WHERE vendor_id = ?", (VENDOR,))
    report.check("mysql: record rows", records, records == plan.mysql_batch + plan.mysql_singles,
                 f"{plan.mysql_batch + plan.mysql_singles}")
    report.figure("mysql: batch images that needed a retry",
                  count(database_url, "SELECT COUNT(*) FROM batch_items WHERE batch_id = ? AND attempts > 1",
                        (batch_id,)))
    views = job_views(stack, key, singles)
    completed = sum(view.get("state") == "completed" for view in views)
    stuck = sum(status not in ("finished", "failed") for status in statuses.values())
    report.check("mysql: single crop jobs completed", completed, completed == plan.mysql_singles,
                 f"{plan.mysql_singles}")
    report.check("mysql: single crop jobs stuck", stuck, stuck == 0, "0")
    wrong = 0
    for view in views:
        outputs = local_outputs(stack.env, VENDOR, PROJECT, str(view.get("data", {}).get("recordId", "?")))
        wrong += len(outputs) != 1 or bool(undecodable(outputs))
    report.check("mysql: single jobs without exactly one stored output", wrong, wrong == 0, "0")


# --- storage uploads failing for a while -------------------------------------------------------
class FlakyStandin(CloudinaryStandin):
    """The Cloudinary stand-in, failing every upload during a time window, in three phases.

    First third: HTTP 500 answers. Second third: the connection is reset (RST) before the
    upload is read into storage, as a load balancer dropping requests would. Last third: the
    output's upload is stored, then the connection is reset instead of answering: the worker
    cannot know it succeeded, retries, and must overwrite the same public_id rather than add one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.window = (0.0, 0.0)
        self.answered_500 = 0
        self.resets = 0
        self.dropped_answers = 0

    def fail_for(self, seconds: float) -> None:
        now = time.monotonic()
        self.window = (now, now + seconds)

    def phase(self) -> str:
        """'ok', '500', 'reset' or 'lost-answer' for a request arriving now."""
        began, ends = self.window
        now = time.monotonic()
        if not began <= now < ends:
            return "ok"
        return ("500", "reset", "lost-answer")[min(2, int(3 * (now - began) / (ends - began)))]

    def _take_pending(self, action: str) -> _Pending | None:
        if action == "upload" and self.phase() == "500":
            with self._lock:
                self.answered_500 += 1
            return _Pending(action, status=500, message="Stand-in outage (500 Internal Server Error)")
        return super()._take_pending(action)

    def start(self, port: int = 0) -> FlakyStandin:
        super().start(port)
        assert self._server is not None
        self._server.RequestHandlerClass = type("FlakyHandler", (_ResettingHandler,), {"standin": self})
        return self


class _ResettingHandler(_Handler):
    standin: FlakyStandin
    drop_answer = False

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        phase = self.standin.phase() if "/image/upload" in self.path else "ok"
        if phase == "reset":
            with self.standin._lock:
                self.standin.resets += 1
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._reset()
            return
        self.drop_answer = phase == "lost-answer"
        super().do_POST()

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        # Outputs only: their re-upload is what must land on the same public_id. (A thumbnail's
        # lost answer is retried the same way, but every retry re-stores thumbnails anyway.)
        output = not str(payload.get("public_id", "")).endswith(PREVIEW_SUFFIXES)
        if self.drop_answer and status == 200 and output:
            with self.standin._lock:
                self.standin.dropped_answers += 1
            self._reset()
            return
        super()._send_json(status, payload)


def run_storage(profile: str, workdir: Path, report: Report) -> None:
    """Uploads fail (500, then connection resets) for a window; retries carry every job through."""
    plan = Plan.of(profile)
    with ExitStack() as stack_:
        standin = FlakyStandin().start()
        stack_.callback(standin.stop)
        redis_url = stack_.enter_context(private_redis(workdir / "redis"))
        photos = PhotoServer()
        stack_.callback(photos.close)
        photos.files["/face.jpg"] = photo_jpeg(480)
        database_url = f"sqlite:///{workdir / 'db.sqlite3'}"
        env = base_env(plan, redis_url, database_url, workdir, {
            "STORAGE_BACKEND": "cloudinary", "CLOUDINARY_URL": standin.cloudinary_url,
            "CLOUDINARY_FOLDER": "iq-rel"})
        stack = stack_.enter_context(running_stack(env, workdir / "logs"))
        stack.start_worker(contracts.QUEUE_FACE_CROP)
        stack.start_worker(contracts.QUEUE_FACE_CROP)
        key = create_vendor(env, VENDOR)
        record_ids = [f"c{i}" for i in range(plan.storage_jobs)]
        job_ids = list(post(stack, key, "/api/image-queue/bulk-crop-face", {
            "projectId": PROJECT, "mode": "square", "recordIds": record_ids,
            "photoUrls": [photos.url("/face.jpg")] * plan.storage_jobs})["jobIds"])
        _wait_for(lambda: len(standin.uploads) >= max(1, plan.storage_jobs // 6), 60, "uploads before the window")
        standin.fail_for(plan.storage_window_s)
        uploaded_before = len(standin.uploads)
        statuses = wait_jobs(redis_url, job_ids, 180 if profile == "quick" else 300)
        report.figure("storage: fault window (500, then resets, then answers lost)", plan.storage_window_s, "s")
        report.figure("storage: uploads before the window", uploaded_before)
        faults = (standin.answered_500, standin.resets, standin.dropped_answers)
        report.check("storage: uploads answered 500 / reset / stored but answer reset", faults,
                     faults[0] > 0 and faults[1] + faults[2] > 0, "> 0 each of 500 and resets (outage really hit)")
        _storage_checks(report, stack, key, plan, standin, database_url, job_ids, record_ids, statuses)
        check_nothing_half_written(report, "storage", database_url, env)
        report.check("storage: workers alive", workers_alive(stack), workers_alive(stack) == 2, "2")


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout}s")
        time.sleep(0.02)


def _storage_checks(report: Report, stack: Stack, key: str, plan: Plan, standin: FlakyStandin,
                    database_url: str, job_ids: list[str], record_ids: list[str], statuses: dict[str, str]) -> None:
    """Every job completed; each record's output_url names one existing upload, one per record."""
    views = job_views(stack, key, job_ids)
    completed = sum(view.get("state") == "completed" for view in views)
    stuck = sum(status not in ("finished", "failed") for status in statuses.values())
    report.check("storage: jobs completed", completed, completed == plan.storage_jobs, f"{plan.storage_jobs}")
    report.check("storage: jobs stuck", stuck, stuck == 0, "0")
    retried = sum(int(view.get("attempts") or 0) > 1 for view in views)
    report.check("storage: jobs that needed a retry", retried, retried > 0, "> 0 (retries did the work)")
    rows = dict(query(database_url, "SELECT record_id, output_url FROM data_records WHERE vendor_id = ?", (VENDOR,)))
    missing, undecoded = 0, 0
    expected_ids = set()
    for view in views:
        record_id = str(view.get("data", {}).get("recordId"))
        expected_ids.add(f"iq-rel/{VENDOR}/{PROJECT}/{record_id}/face-crop-{view.get('id')}")
        url = rows.get(record_id)
        resp = requests.get(url, timeout=10) if url else None
        if resp is None or resp.status_code != 200:
            missing += 1
            continue
        try:
            Image.open(io.BytesIO(resp.content)).load()
        except Exception:  # noqa: BLE001 (an undecodable upload is the finding)
            undecoded += 1
    report.check("storage: records whose output_url is not a stored upload", missing, missing == 0, "0")
    report.check("storage: uploads that do not decode", undecoded, undecoded == 0, "0")
    with standin._lock:
        uploads = {public_id: asset.upload_count for public_id, asset in standin.uploads.items()}
    # The thumbnails kept beside each output (jobs/previews.py): two per record, counted apart.
    previews = {public_id for public_id in uploads if public_id.endswith(PREVIEW_SUFFIXES)}
    stored = {public_id: count for public_id, count in uploads.items() if public_id not in previews}
    report.check("storage: thumbnails vs records", (len(previews), len(record_ids)),
                 previews == {f"{public_id}{suffix}" for public_id in expected_ids for suffix in PREVIEW_SUFFIXES},
                 "two per record (output and source), none extra")
    extra = sorted(set(stored) - expected_ids)
    report.check("storage: distinct public_ids vs records", (len(stored), len(record_ids)),
                 set(stored) == expected_ids, "equal: one public_id per record, none extra")
    if extra:
        report.note(f"storage: unexpected public_ids {extra[:5]}")
    # Outputs only: a retry re-stores a job's thumbnails whatever failed after them, so their
    # overwrites are expected; an output is re-uploaded only when its own answer was lost.
    overwrites = sum(n - 1 for n in stored.values())
    report.check("storage: overwrites of an output vs its answers lost after storing",
                 (overwrites, standin.dropped_answers), overwrites == standin.dropped_answers,
                 "equal: an output re-uploaded only where its answer was lost")
