"""Item 1: SIGKILL random workers mid-job, many times over a running batch and single jobs.

Three ways a worker dies, chosen at random for each kill:

- ``horse``: the work-horse running the job (the OOM killer's usual victim). The worker
  parent sees it die; jobs.worker.ImageQueueWorker runs the failure callback and RQ retries.
- ``parent``: the worker process only. Its horse finishes the job on its own.
- ``both``: the parent, then the horse (a container or host dying). Nobody is left to report
  the job: RQ's maintenance finds it abandoned once its heartbeat lapses, and retries it.

The supervisor restarts dead workers as scripts/respawn and compose's restart policy do.
Afterwards every record and batch image must have ended completed or failed with a reason,
none pending or processing, batch counters exact, one stored output per record or image.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import requests

from core import contracts, rqjson
from tests.reliability.harness import (
    RelStack,
    horse_of,
    is_output,
    kill_pid,
    make_zip,
    outputs_per_record,
    portrait_jpegs,
    rel_stack,
    settle_figures,
    submit_crops,
    upload_zip,
    wait_until,
)
from tests.reliability.report import Report

PROFILES = {
    # images in the ZIP batch, single crop jobs, kills, chunk size
    "quick": {"images": 200, "singles": 16, "kills": 12, "chunk": 8},
    "full": {"images": 1200, "singles": 80, "kills": 100, "chunk": 8},
}
SETTLE_TIMEOUT_S = 240  # RQ's abandoned-job handling (~65 s with the test workers' intervals) plus retries
FINAL_BATCH = ("completed", "completed_with_errors", "failed")


def _busy_workers(rel: RelStack) -> list[tuple[int, int]]:
    """(parent pid, horse pid) of every worker running a job now."""
    assert rel.supervisor is not None
    pairs = []
    for proc in rel.supervisor.alive():
        horse = horse_of(proc.pid)
        if horse:
            pairs.append((proc.pid, horse))
    return pairs


def _ingesting_parents(rel: RelStack) -> set[int]:
    """Parent pids of the workers running a batch's ZIP ingestion now."""
    from rq.worker import Worker

    with rel.redis.client() as conn:
        return {worker.pid for worker in Worker.all(connection=conn)
                if worker.pid and (worker.get_current_job_id() or "").endswith("-ingest")}


def _kill_loop(rel: RelStack, kills: int, rng: random.Random, done: callable) -> dict[str, int]:  # type: ignore[valid-type]
    """Kill ``kills`` busy workers at random moments; returns how many of each kind."""
    counts = {"horse": 0, "parent": 0, "both": 0}
    ingest_kills = [0]
    idle_since = time.monotonic()
    while sum(counts.values()) < kills:
        busy = _busy_workers(rel)
        if not busy:
            if done() or time.monotonic() - idle_since > 30:
                break
            time.sleep(0.05)
            continue
        idle_since = time.monotonic()
        # A ZIP's ingestion killed on every attempt fails its batch by design (retries spent), which
        # is not what this scenario measures: leave the ingestion job at most two kills.
        ingesting = _ingesting_parents(rel) if ingest_kills[0] >= 2 else set()
        busy = [pair for pair in busy if pair[0] not in ingesting]
        if not busy:
            time.sleep(0.05)
            continue
        parent, horse = rng.choice(busy)
        if parent in _ingesting_parents(rel):
            ingest_kills[0] += 1
        mode = rng.choices(["horse", "parent", "both"], weights=[5, 3, 2])[0]
        if mode == "horse":
            hit = kill_pid(horse)
        elif mode == "parent":
            hit = kill_pid(parent)
        else:
            hit = kill_pid(parent) and (kill_pid(horse) or True)
        if hit:
            counts[mode] += 1
        time.sleep(rng.uniform(0.15, 0.5))
    return counts


def _where(rel: RelStack, job_id: str) -> str:
    """Where RQ holds a job: status, meta and each list or registry it is in (for a failure's note)."""

    conn = rel.redis.client()
    job = rqjson.fetch(job_id, connection=conn)
    queue = rqjson.queue(job.origin, connection=conn)
    places = {"queue": conn.lpos(queue.key, job_id) is not None,
              "intermediate": conn.lpos(queue.intermediate_queue_key, job_id) is not None,
              "started": job_id in queue.started_job_registry, "scheduled": job_id in queue.scheduled_job_registry,
              "failed": job_id in queue.failed_job_registry}
    return f"{job_id} status={job.get_status()} retries_left={job.retries_left} meta={job.meta} in={places}"


def run(profile: str, workdir: Path) -> Report:
    p = PROFILES[profile]
    report = Report("worker_death", profile)
    rng = random.Random(7)
    extra = {"BATCH_CHUNK_SIZE": str(p["chunk"]), "BATCH_VENDOR_CONCURRENCY": "8", "JOB_RETRY_INTERVALS_S": "1,1,2"}
    with rel_stack(workdir, extra=extra) as rel:
        photos = portrait_jpegs(8)
        for index, data in enumerate(photos):
            rel.photos.files[f"/p{index}.jpg"] = data
        rel.supervise([
            (contracts.QUEUE_BATCH_INGESTION, *contracts.FACE_DETECTION_QUEUES),
            (*contracts.FACE_DETECTION_QUEUES, contracts.QUEUE_FACE_CROP),
            (contracts.QUEUE_FACE_CROP, *contracts.FACE_DETECTION_QUEUES),
        ])
        rel.start_reconciler()  # as the Procfile runs it: puts back jobs a killed worker took
        batch_id = upload_zip(rel, make_zip(portrait_jpegs(p["images"], size=360)))
        urls = [rel.photos.url(f"/p{i % len(photos)}.jpg") for i in range(p["singles"])]
        started = time.monotonic()
        job_ids = submit_crops(rel, urls[: p["singles"] // 2], "s")

        def batch_status() -> str:
            resp = rel.get(f"/api/batch/status/{batch_id}")
            return str(resp.json()["batch"]["status"]) if resp.status_code == 200 else f"HTTP {resp.status_code}"

        def all_done() -> bool:
            stuck = rel.query("SELECT COUNT(*) FROM data_records WHERE processing_status IN ('queued', 'processing')")
            return batch_status() in FINAL_BATCH and stuck[0][0] == 0

        counts = _kill_loop(rel, p["kills"] // 2, rng, all_done)
        job_ids += submit_crops(rel, urls[p["singles"] // 2:], "t")  # more work arrives mid-chaos
        more = _kill_loop(rel, p["kills"] - sum(counts.values()), rng, all_done)
        counts = {kind: counts[kind] + more[kind] for kind in counts}
        last_kill = time.monotonic()
        settled = wait_until(all_done, SETTLE_TIMEOUT_S, interval=0.5)
        settle_s = time.monotonic() - last_kill
        total_s = time.monotonic() - started
        figures = settle_figures(rel)
        batch = rel.get(f"/api/batch/status/{batch_id}").json()["batch"]
        states = [requests.get(f"{rel.base_url}/api/image-queue/job/{job_id}", headers=rel.headers(),
                               timeout=10).json().get("state") for job_id in job_ids]
        per_record = outputs_per_record(rel)
        completed_records = {row[0] for row in rel.query(
            "SELECT record_id FROM data_records WHERE processing_status = 'completed' AND job_kind = 'face_crop'")}
        restored = sum(int(json.loads(line).get("jobs_restored", 0)) for line in
                       (workdir / "logs" / "reconciler.log").read_text().splitlines() if line.startswith("{"))
        worker_died = rel.query("SELECT COUNT(*) FROM batch_items WHERE error_code = 'WORKER_DIED'")[0][0] + \
            rel.query("SELECT COUNT(*) FROM data_records WHERE error_code = 'WORKER_DIED'")[0][0]
        restarts = rel.supervisor.restarts if rel.supervisor else 0
        unfinished = [job_id for job_id, state in zip(job_ids, states, strict=True)
                      if state not in ("completed", "failed")]
        for job_id in unfinished:
            report.note(f"unfinished job: {_where(rel, job_id)}")

    kills_done = sum(counts.values())
    report.check("workers killed mid-job", kills_done, kills_done >= p["kills"] * 0.9, f">= {int(p['kills'] * 0.9)}")
    for kind, count in counts.items():
        report.figure(f"  kills of kind {kind}", count)
    report.figure("worker restarts by the supervisor", restarts)
    report.figure("jobs the reconciler put back (taken by a worker killed before starting them)", restored)
    report.check("everything settled after the last kill", settled, settled, "true")
    report.check("seconds from the last kill until every job ended", round(settle_s, 1),
                 settle_s <= SETTLE_TIMEOUT_S, f"<= {SETTLE_TIMEOUT_S}", "s", timing=True)
    report.figure("seconds for the whole run", round(total_s, 1), "s")
    report.check("batch final", batch["status"], batch["status"] in FINAL_BATCH, "completed[_with_errors]")
    report.check("batch images (completed + failed) == images", figures["batch items completed"]
                 + figures["batch items failed"], figures["batch items completed"] + figures["batch items failed"]
                 == p["images"], f"== {p['images']}")
    report.figure("batch images completed", figures["batch items completed"])
    report.figure("images and records failed WORKER_DIED (every retry killed)", worker_died)
    report.check("batch images pending", figures["batch items pending"], figures["batch items pending"] == 0, "== 0")
    report.check("batch counters off", figures["batch counters off"], figures["batch counters off"] == 0, "== 0")
    report.check("records stuck queued/processing", figures["records stuck queued/processing"],
                 figures["records stuck queued/processing"] == 0, "== 0")
    report.check("records failed without a reason", figures["records failed without a reason"],
                 figures["records failed without a reason"] == 0, "== 0")
    report.check("records completed without output", figures["records completed without output"],
                 figures["records completed without output"] == 0, "== 0")
    report.check("single jobs not completed/failed", sum(s not in ("completed", "failed") for s in states),
                 all(s in ("completed", "failed") for s in states), "== 0")
    extra_outputs = sum(max(count - 1, 0) for count in per_record.values())
    report.check("single-job records with more than one output", extra_outputs, extra_outputs == 0, "== 0")
    missing = len(completed_records - set(per_record))
    report.check("completed single-job records without a stored file", missing, missing == 0, "== 0")
    batch_files = sum(1 for f in (workdir / "files" / "acme" / "batches").rglob("*") if is_output(f))
    report.check("stored batch outputs == completed images", batch_files,
                 batch_files == figures["batch items completed"], f"== {figures['batch items completed']}")
    report.figure("hidden temp files left by killed uploads (never served)", figures["partial files"])
    return report.done()
