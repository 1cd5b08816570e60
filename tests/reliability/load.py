"""Issue 7, item 4: sustained single-job submissions against Gunicorn on loopback, with wrk.

wrk POSTs valid crop-face-queue bodies (a unique recordId per request: run label, wrk thread
number, per-thread counter) with the vendor's key, at a couple of connection counts. Each
connection count runs as two consecutive halves, so "requests/s held" is the second half's
rate over the first's. A Lua ``response()`` counts status codes per wrk thread and ``done()``
writes them with wrk's latency percentiles as one JSON line.

Afterwards nothing accepted may be lost: the vendor's face-crop jobs in Redis (queue plus
registries) and the record rows in SQLite must both match the 202s. wrk stops each run while
up to one request per connection is still in flight; such a request may be accepted by the
API without wrk seeing its 202, so the jobs may exceed the 202s seen by at most the number of
connections per run, never fall short of them.

Limits are raised first with the real CLI (``vendor set-limits``), so no 429 is expected; any
would be counted and shown apart. There are no rq workers: accepted jobs just queue.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from core import contracts, rqjson
from tests.conftest import ROOT
from tests.reliability.api_stack import ApiStack, api_stack
from tests.reliability.report import Report

PROJECT = "load"
PHOTO = "http://photos.example.com/a.jpg"
WRK_THREADS = 2
WRK_TIMEOUT_S = 10
# p99 per connection count on a shared 2-core machine; 32 connections are twice Gunicorn's 16
# threads (4 workers x 4), so half of them wait for a thread.
P99_TARGET_S = {8: 0.5, 32: 1.0}
SETTLE_S = 1.0  # no new rows or jobs for this long: the requests wrk cut off are done
HELD_TARGET = 0.8  # second half's requests/s over the first's
MIN_RPS = 50.0  # the floor a working stack reaches easily even on a busy 2-core machine
HIGH = "1000000/minute"


@dataclass(frozen=True)
class Profile:
    half_s: int
    connections: tuple[int, ...]


PROFILES = {
    "quick": Profile(half_s=3, connections=(8, 32)),
    "full": Profile(half_s=30, connections=(8, 32)),
}

LUA = r"""
-- Each wrk thread numbers its own requests; (run label, thread number, counter) is unique.
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("thread_no", next_id)
  table.insert(threads, thread)
end

function init(args)
  label = args[1]
  key = args[2]
  counter = 0
  statuses = {}
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"recordId":"%s-%d-%d","projectId":"load","photoUrl":"http://photos.example.com/a.jpg","mode":"square"}',
    label, thread_no, counter)
  return wrk.format("POST", "/api/image-queue/crop-face-queue",
                    {["Content-Type"] = "application/json", ["X-API-Key"] = key}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests":%d,"duration_us":%d,"statuses":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class WrkRun:
    """One wrk run's JSON figures."""

    label: str
    connections: int
    requests: int
    seconds: float
    statuses: Counter[int]
    errors: dict[str, int]
    latency_s: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def socket_errors(self) -> int:
        return sum(self.errors[name] for name in ("connect", "read", "write", "timeout"))


@dataclass
class Totals:
    """Everything the runs saw, for the loss check."""

    accepted: int = 0
    in_flight_bound: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


def require_wrk() -> str:
    """wrk's path, or a clear failure: the scenario measures nothing without it."""
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed: `apt-get install -y wrk` (./scripts/test installs it "
                           "when missing); the load scenario cannot run without it")
    return found


def run_wrk(wrk: str, api: ApiStack, script: Path, label: str, connections: int, seconds: int) -> WrkRun:
    """Run wrk once and parse the JSON line its done() wrote."""
    cmd = [wrk, f"-t{min(WRK_THREADS, connections)}", f"-c{connections}", f"-d{seconds}s",
           f"--timeout={WRK_TIMEOUT_S}s", "--latency", "-s", str(script), api.base_url, "--", label, api.key]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + WRK_TIMEOUT_S + 30)
    line = next((text for text in out.stdout.splitlines() if text.startswith("WRK-JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(line.removeprefix("WRK-JSON "))
    return WrkRun(label, connections, data["requests"], data["duration_us"] / 1e6,
                  Counter({int(code): n for code, n in data["statuses"].items()}), data["errors"],
                  {name: value / 1e6 for name, value in data["latency_us"].items()})


def set_high_limits(api: ApiStack) -> None:
    """Raise the vendor's limits with the real CLI, so the load measures the API, not the limiter."""
    subprocess.run([sys.executable, "-m", "service.cli", "vendor", "set-limits", api.vendor,
                    "--image-processing", HIGH, "--reads", HIGH], cwd=ROOT, env=api.stack.env, check=True,
                   capture_output=True, text=True)


def queued_jobs(redis_url: str) -> int:
    """Face-crop jobs Redis holds: waiting plus every registry (no workers: all should wait)."""
    conn = redis.Redis.from_url(redis_url)
    try:
        queue = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=conn)
        registries = (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry,
                      queue.scheduled_job_registry, queue.deferred_job_registry)
        return queue.count + sum(registry.get_job_count(cleanup=False) for registry in registries)
    finally:
        conn.close()


def record_rows(database_url: str) -> dict[str, int]:
    """The load project's record rows by processing status, and how many distinct jobs they name."""
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
        rows = db.execute("SELECT processing_status, COUNT(*), COUNT(DISTINCT current_job_id) FROM data_records"
                          " WHERE project_id = ? GROUP BY processing_status", (PROJECT,)).fetchall()
        distinct = db.execute("SELECT COUNT(DISTINCT record_id) FROM data_records WHERE project_id = ?",
                              (PROJECT,)).fetchone()[0]
    counts = {status: n for status, n, _ in rows}
    counts["distinct record ids"] = distinct
    counts["distinct job ids"] = sum(jobs for _, _, jobs in rows)
    return counts


def settled_counts(api: ApiStack, limit_s: float = 20.0) -> tuple[int, dict[str, int]]:
    """Jobs in Redis and record rows once the API has finished the requests wrk cut off
    (Gunicorn still works through what was accepted when wrk closed its connections)."""
    deadline = time.monotonic() + limit_s
    last = (queued_jobs(api.redis.url), record_rows(api.database_url))
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = (queued_jobs(api.redis.url), record_rows(api.database_url))
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= SETTLE_S:
            break
    return last


def connection_figures(report: Report, halves: list[WrkRun]) -> None:
    """Figures of one connection count (its two halves)."""
    c = halves[0].connections
    requests = sum(run.requests for run in halves)
    seconds = sum(run.seconds for run in halves)
    statuses: Counter[int] = sum((run.statuses for run in halves), Counter())
    report.figure(f"c={c}: requests", requests)
    report.check(f"c={c}: requests/s", requests / seconds, requests / seconds >= MIN_RPS, f">= {MIN_RPS:.0f}",
                 "req/s", timing=True)
    report.figure(f"c={c}: requests/s, first half / second half",
                  f"{halves[0].rps:.1f} / {halves[1].rps:.1f}")
    held = halves[1].rps / halves[0].rps if halves[0].rps else 0.0
    report.check(f"c={c}: requests/s held (second half / first)", held, held >= HELD_TARGET,
                 f">= {HELD_TARGET}", timing=True)
    worst = max(halves, key=lambda run: run.latency_s["p99"])
    report.figure(f"c={c}: p50 latency (halves)", " / ".join(f"{run.latency_s['p50'] * 1000:.1f}" for run in halves),
                  "ms")
    target = P99_TARGET_S.get(c, 1.0)
    report.check(f"c={c}: p99 latency (worse half)", worst.latency_s["p99"], worst.latency_s["p99"] <= target,
                 f"<= {target} s", "s", timing=True)
    report.figure(f"c={c}: max latency", max(run.latency_s["max"] for run in halves), "s")
    report.figure(f"c={c}: status counts", dict(sorted(statuses.items())))
    five = sum(n for code, n in statuses.items() if code >= 500)
    report.check(f"c={c}: 5xx answers", five, five == 0, "0")
    report.check(f"c={c}: 429 answers", statuses.get(429, 0), statuses.get(429, 0) == 0, "0 (limits raised)")
    other = {code: n for code, n in statuses.items() if code not in (202, 429) and code < 500}
    report.check(f"c={c}: other non-2xx answers", other, not other, "none")
    socket_errors = {name: sum(run.errors[name] for run in halves) for name in ("connect", "read", "write", "timeout")}
    report.check(f"c={c}: socket errors (connect/read/write/timeout)", socket_errors,
                 not any(socket_errors.values()), "all 0")


def run(profile: str, workdir: Path) -> Report:
    """Run the scenario on a private stack in ``workdir``."""
    plan = PROFILES[profile]
    wrk = require_wrk()
    report = Report("load", profile)
    script = workdir / "submit.lua"
    workdir.mkdir(parents=True, exist_ok=True)
    script.write_text(LUA)
    totals = Totals()
    # Production's Gunicorn settings: service/gunicorn.conf.py's own worker count, no access log
    # (tests.stack turns it off; writing a line per request would measure the log, not the API).
    with api_stack(workdir, {"RATE_LIMIT_GLOBAL": HIGH}, unset=("GUNICORN_WORKERS",)) as api:
        set_high_limits(api)
        for connections in plan.connections:
            halves = [run_wrk(wrk, api, script, f"c{connections}h{half}", connections, plan.half_s)
                      for half in (1, 2)]
            connection_figures(report, halves)
            for half in halves:
                totals.accepted += half.statuses.get(202, 0)
                totals.statuses.update(half.statuses)
                totals.in_flight_bound += connections
        jobs, rows = settled_counts(api)
        gunicorn_conf = subprocess.run(
            [sys.executable, "-c", "import runpy; c = runpy.run_path('service/gunicorn.conf.py'); "
             "print(c['workers'], c['threads'], c['worker_class'])"],
            cwd=ROOT, env=api.stack.env, capture_output=True, text=True).stdout.split()
    report.figure("202 answers seen by wrk", totals.accepted)
    report.figure("record rows by status", {k: v for k, v in rows.items() if not k.startswith("distinct")})
    queued_rows = rows.get(contracts.STATUS_QUEUED, 0)
    report.check("face-crop jobs in Redis - 202s seen (requests cut off in flight)", jobs - totals.accepted,
                 0 <= jobs - totals.accepted <= totals.in_flight_bound,
                 f"0..{totals.in_flight_bound} (never fewer jobs than 202s)")
    report.check("record rows (queued) == jobs in Redis", f"{queued_rows} == {jobs}", queued_rows == jobs, "equal")
    report.check("record rows with one distinct record id and job each",
                 f"{rows['distinct record ids']} ids, {rows['distinct job ids']} jobs, {sum_rows(rows)} rows",
                 rows["distinct record ids"] == rows["distinct job ids"] == sum_rows(rows), "all equal")
    report.check("requests made", sum(totals.statuses.values()), sum(totals.statuses.values()) > 0, "> 0")
    report.note(f"wrk -t{WRK_THREADS} --latency --timeout {WRK_TIMEOUT_S}s, {plan.half_s} s x 2 halves per "
                f"connection count; Gunicorn {' '.join(gunicorn_conf) or '?'} (workers threads class, "
                "service/gunicorn.conf.py defaults), no access log; SQLite; private Redis with AOF; "
                "no rq workers, so every accepted job stays queued; vendor limits raised with "
                "`service.cli vendor set-limits`.")
    return report.done()


def sum_rows(rows: dict[str, int]) -> int:
    """Rows of every status (leaving out the distinct counts)."""
    return sum(n for status, n in rows.items() if not status.startswith("distinct"))
