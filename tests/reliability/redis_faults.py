"""Item 2 (workers' side): Redis crashes, outages and a Redis that kept nothing.

1. ``crash``: with AOF as compose configures it (appendonly yes, everysec), SIGKILL Redis
   while a client submits single jobs, start it again a second later: every submission the API
   accepted (202) still has its job, and every job ends.
2. ``outage``: Redis down for D seconds (quick: 5; full: 5, 30 and 120) in the middle of a
   ZIP batch and single jobs: busy workers exit (SPEC 8), the supervisor restarts them, and once
   Redis is back every job ends; meanwhile the API answers 503, never 500.
3. ``reconcile``: Redis WITHOUT persistence killed while jobs wait (single jobs, a URL batch and
   a ZIP batch waiting for ingestion): the jobs are gone; `python -m service.cli reconcile`
   queues them again from the database, and workers finish every one exactly once.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from rq.job import Job

from core import contracts
from tests.conftest import ROOT
from tests.reliability.harness import (
    RelStack,
    make_zip,
    outputs_per_record,
    portrait_jpegs,
    rel_stack,
    settle_figures,
    upload_zip,
    wait_until,
)
from tests.reliability.report import Report

PROFILES = {
    "quick": {"outages": [5], "batch": 120, "submissions": 60, "lost_singles": 20, "lost_batch": 30},
    "full": {"outages": [5, 30, 120], "batch": 400, "submissions": 200, "lost_singles": 60, "lost_batch": 120},
}
SETTLE_TIMEOUT_S = 300
FINAL_BATCH = ("completed", "completed_with_errors", "failed")
WORKER_SLOTS = [
    (contracts.QUEUE_BATCH_INGESTION, *contracts.FACE_DETECTION_QUEUES),
    (contracts.QUEUE_FACE_CROP, *contracts.FACE_DETECTION_QUEUES),
    (*contracts.FACE_DETECTION_QUEUES, contracts.QUEUE_FACE_CROP),
]


@dataclass
class Submitter:
    """Submits single crop jobs one after another, retrying 503s, in a thread."""

    rel: RelStack
    count: int
    prefix: str
    accepted: list[str] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    max_latency_s: float = 0.0

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        index = 0
        while index < self.count:
            body = {"projectId": "rel", "recordId": f"{self.prefix}-{index}", "mode": "square",
                    "photoUrl": self.rel.photos.url(f"/p{index % 4}.jpg")}
            started = time.monotonic()
            try:
                resp = self.rel.post("/api/image-queue/crop-face-queue", body, timeout=10)
                code = resp.status_code
            except requests.RequestException:
                code = 0
            self.max_latency_s = max(self.max_latency_s, time.monotonic() - started)
            self.codes[code] = self.codes.get(code, 0) + 1
            if code == 202:
                self.accepted.append(resp.json()["jobId"])
                index += 1
            else:
                time.sleep(0.1)  # what a vendor's client does on 503: back off, submit again
            time.sleep(0.03)


def _batch_final(rel: RelStack, batch_id: str) -> bool:
    resp = rel.get(f"/api/batch/status/{batch_id}")  # 503 for a moment after Redis is back: ask again
    return resp.status_code == 200 and resp.json()["batch"]["status"] in FINAL_BATCH


def _all_settled(rel: RelStack, batch_ids: list[str]) -> bool:
    stuck = rel.query("SELECT COUNT(*) FROM data_records WHERE processing_status IN ('queued', 'processing')")
    return stuck[0][0] == 0 and all(_batch_final(rel, batch_id) for batch_id in batch_ids)


def _api_probe(rel: RelStack, stop: threading.Event, codes: dict[int, int], latencies: list[float]) -> None:
    """While Redis is down: health and a submission, as fast as they answer."""
    index = 0
    while not stop.is_set():
        for method, path, body in (("GET", "/api/health", None),
                                   ("POST", "/api/image-queue/crop-face-queue",
                                    {"projectId": "rel", "recordId": f"probe-{index}", "mode": "square",
                                     "photoUrl": rel.photos.url("/p0.jpg")})):
            started = time.monotonic()
            try:
                resp = requests.request(method, f"{rel.base_url}{path}", json=body, headers=rel.headers(),
                                        timeout=10)
                code = resp.status_code
            except requests.RequestException:
                code = 0
            latencies.append(time.monotonic() - started)
            codes[code] = codes.get(code, 0) + 1
            index += 1
        time.sleep(0.05)


def _outage(rel: RelStack, seconds: float, report: Report) -> None:
    """Kill Redis for ``seconds`` while the API is probed; start it again."""
    stop = threading.Event()
    codes: dict[int, int] = {}
    latencies: list[float] = []
    rel.redis.kill()
    probe = threading.Thread(target=_api_probe, args=(rel, stop, codes, latencies), daemon=True)
    probe.start()
    time.sleep(seconds)
    stop.set()
    probe.join(15)
    rel.redis.start()
    label = f"Redis down {seconds:g} s"
    server_errors = sum(n for code, n in codes.items() if code >= 500 and code != 503)
    report.check(f"{label}: API answers other than 503 (5xx or no answer)", server_errors + codes.get(0, 0),
                 server_errors + codes.get(0, 0) == 0, "== 0")
    report.figure(f"{label}: API requests answered 503", codes.get(503, 0))
    slowest = max(latencies, default=0.0)
    report.check(f"{label}: slowest API answer", round(slowest, 3), slowest <= 1.0, "<= 1 s", "s", timing=True)


def _settle(rel: RelStack, batch_ids: list[str], label: str, report: Report) -> None:
    started = time.monotonic()
    settled = wait_until(lambda: _all_settled(rel, batch_ids), SETTLE_TIMEOUT_S)
    report.check(f"{label}: every job ended", settled, settled, "true")
    report.check(f"{label}: seconds after Redis came back until every job ended", round(time.monotonic() - started, 1),
                 settled, f"<= {SETTLE_TIMEOUT_S}", "s", timing=True)


def _integrity(rel: RelStack, report: Report, label: str) -> None:
    figures = settle_figures(rel)
    for name in ("records stuck queued/processing", "records failed without a reason",
                 "records completed without output", "batch items pending", "batch counters off"):
        report.check(f"{label}: {name}", figures[name], figures[name] == 0, "== 0")
    extra = sum(max(count - 1, 0) for count in outputs_per_record(rel).values())
    report.check(f"{label}: records with more than one stored output", extra, extra == 0, "== 0")
    report.figure(f"{label}: records completed / failed",
                  f"{figures['records completed']} / {figures['records failed']}")
    report.figure(f"{label}: batch images completed / failed",
                  f"{figures['batch items completed']} / {figures['batch items failed']}")


def _crash_and_outages(profile: dict, workdir: Path, report: Report) -> None:  # type: ignore[type-arg]
    with rel_stack(workdir, appendonly=True, extra={"BATCH_CHUNK_SIZE": "8", "BATCH_VENDOR_CONCURRENCY": "8"}) as rel:
        for index, data in enumerate(portrait_jpegs(4)):
            rel.photos.files[f"/p{index}.jpg"] = data
        zip_data = make_zip(portrait_jpegs(profile["batch"], size=360))
        supervisor = rel.supervise(WORKER_SLOTS)
        rel.start_reconciler()  # as the Procfile runs it
        time.sleep(1)
        # 1. crash: SIGKILL while submissions stream in, restart a second later.
        submitter = Submitter(rel, profile["submissions"], "crash")
        submitter.thread.start()
        wait_until(lambda: len(submitter.accepted) >= profile["submissions"] // 3, 60, 0.05)
        accepted_before = len(submitter.accepted)
        rel.redis.kill()
        time.sleep(1)
        rel.redis.start()
        submitter.thread.join(180)
        conn = rel.redis.client()
        lost = sum(not Job.exists(job_id, connection=conn) for job_id in submitter.accepted)
        report.figure("crash: submissions accepted before the SIGKILL", accepted_before)
        report.figure("crash: submissions accepted in all", len(submitter.accepted))
        report.figure("crash: API answers during the run", json.dumps(dict(sorted(submitter.codes.items()))))
        report.check("crash: accepted submissions whose job Redis lost", lost, lost == 0, "== 0")
        bad = sum(n for code, n in submitter.codes.items() if code >= 500 and code != 503) + submitter.codes.get(0, 0)
        report.check("crash: API answers other than 202/503", bad, bad == 0, "== 0")
        # 2. outages mid-batch.
        batch_ids = []
        for seconds in profile["outages"]:
            batch_id = upload_zip(rel, zip_data)
            batch_ids.append(batch_id)
            wait_until(lambda bid=batch_id: rel.query(  # type: ignore[misc]
                "SELECT COUNT(*) FROM batch_items WHERE status = 'completed' AND batch_id = ?", (bid,))[0][0] > 8,
                60, 0.1)
            _outage(rel, seconds, report)
            _settle(rel, batch_ids, f"Redis down {seconds:g} s", report)
        report.figure("worker restarts by the supervisor (workers exit when Redis drops)", supervisor.restarts)
        _integrity(rel, report, "crash + outages")
        states = [requests.get(f"{rel.base_url}/api/image-queue/job/{job_id}", headers=rel.headers(),
                               timeout=10).json().get("state") for job_id in submitter.accepted]
        unfinished = sum(state not in ("completed", "failed") for state in states)
        report.check("crash: accepted jobs not completed/failed", unfinished, unfinished == 0, "== 0")


def _reconcile(profile: dict, workdir: Path, report: Report) -> None:  # type: ignore[type-arg]
    with rel_stack(workdir, appendonly=False) as rel:
        for index, data in enumerate(portrait_jpegs(4)):
            rel.photos.files[f"/p{index}.jpg"] = data
        # No workers yet: everything waits in Redis.
        singles = Submitter(rel, profile["lost_singles"], "lost")
        singles._run()
        images = [{"recordId": f"lost-b{i}", "imageUrl": rel.photos.url(f"/p{i % 4}.jpg")}
                  for i in range(profile["lost_batch"])]
        resp = rel.post("/api/batch/add-images", {"projectId": "rel", "images": images})
        resp.raise_for_status()
        url_batch = resp.json()["batchId"]
        zip_batch = upload_zip(rel, make_zip(portrait_jpegs(12, size=360)))
        rel.redis.kill()
        rel.redis.start()  # empty: no persistence
        conn = rel.redis.client()
        lost = sum(not Job.exists(job_id, connection=conn) for job_id in singles.accepted)
        report.check("no persistence: single jobs lost by the Redis restart", lost, lost == len(singles.accepted),
                     f"== {len(singles.accepted)} (all: nothing kept)")
        out = subprocess.run([sys.executable, "-m", "service.cli", "reconcile", "--older-than", "0"], cwd=ROOT,
                             env=rel.env, capture_output=True, text=True, timeout=120)
        summary = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
        report.check("reconcile exit status", out.returncode, out.returncode == 0, "== 0")
        report.figure("reconcile summary", json.dumps(summary, sort_keys=True))
        report.check("reconcile: single jobs queued again", summary.get("records_requeued"),
                     summary.get("records_requeued") == len(singles.accepted), f"== {len(singles.accepted)}")
        report.check("reconcile: URL-batch images queued again", summary.get("images_requeued"),
                     summary.get("images_requeued") == profile["lost_batch"], f"== {profile['lost_batch']}")
        report.check("reconcile: ZIP ingestions queued again", summary.get("ingests_requeued"),
                     summary.get("ingests_requeued") == 1, "== 1")
        rel.supervise(WORKER_SLOTS)
        started = time.monotonic()
        settled = wait_until(lambda: _all_settled(rel, [url_batch, zip_batch]), SETTLE_TIMEOUT_S)
        report.check("no persistence: every job ended after reconcile", settled, settled, "true")
        report.figure("no persistence: seconds from workers' start until every job ended",
                      round(time.monotonic() - started, 1), "s")
        figures = settle_figures(rel)
        expected = len(singles.accepted) + profile["lost_batch"]
        report.check("no persistence: records completed", figures["records completed"],
                     figures["records completed"] == expected, f"== {expected}")
        zip_done = rel.query("SELECT processed FROM batches WHERE batch_id = ?", (zip_batch,))[0][0]
        report.check("no persistence: ZIP batch images processed", zip_done, zip_done == 12, "== 12")
        again = subprocess.run([sys.executable, "-m", "service.cli", "reconcile", "--older-than", "0"], cwd=ROOT,
                               env=rel.env, capture_output=True, text=True, timeout=120)
        second = json.loads(again.stdout.strip().splitlines()[-1]) if again.returncode == 0 else {}
        requeued = sum(second.get(k, 1) for k in ("records_requeued", "images_requeued", "ingests_requeued"))
        report.check("reconcile run again afterwards: things queued again", requeued, requeued == 0, "== 0")
        _integrity(rel, report, "no persistence")


def run(profile: str, workdir: Path) -> Report:
    p = PROFILES[profile]
    report = Report("redis", profile)
    _crash_and_outages(p, workdir / "aof", report)
    _reconcile(p, workdir / "nopersist", report)
    return report.done()
