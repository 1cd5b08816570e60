"""Item 7: a re-run never duplicates a result, and SIGTERM lets the running job finish.

Re-runs. For each job: wait until its worker has marked the record processing, take the
SQLite write lock so the worker's final UPDATE must wait, wait until its output file is in
storage (upload done, record not yet updated), then kill the worker (``both``: parent and
horse, the abandoned-job path; ``horse``: the horse alone, the immediate-retry path) and let
go of the lock. RQ runs the job again. A trigger counts every change of the record to
'completed': exactly one per record, and exactly one stored output per record.

Warm shutdown. A job fetching a slow photo; SIGTERM to its worker: the worker waits for the
job, which completes on its first attempt, then exits with status 0.
"""
from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from rq.worker import Worker

from core import contracts
from tests.reliability.harness import (
    RelStack,
    horse_of,
    is_output,
    kill_pid,
    portrait_jpegs,
    rel_stack,
    wait_until,
)
from tests.reliability.report import Report
from tests.stack import wait_for_job

PROFILES = {"quick": {"reruns": 2, "shutdowns": 1}, "full": {"reruns": 8, "shutdowns": 3}}
AUDIT = """
CREATE TABLE IF NOT EXISTS completions (record_id TEXT NOT NULL, output_url TEXT, at TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS count_completions AFTER UPDATE OF processing_status ON data_records
WHEN NEW.processing_status = 'completed' AND OLD.processing_status != 'completed'
BEGIN INSERT INTO completions VALUES (NEW.record_id, NEW.output_url, datetime('now')); END;
"""


def _record_status(rel: RelStack, record_id: str) -> str | None:
    rows = rel.query("SELECT processing_status FROM data_records WHERE record_id = ?", (record_id,))
    return rows[0][0] if rows else None


def _worker_pid_running(rel: RelStack, job_id: str) -> int | None:
    for worker in Worker.all(connection=rel.redis.client()):
        if worker.get_current_job_id() == job_id:
            return worker.pid
    return None


def _submit(rel: RelStack, record_id: str, path: str) -> str:
    resp = rel.post("/api/image-queue/crop-face-queue", {"projectId": "rel", "recordId": record_id,
                                                          "photoUrl": rel.photos.url(path), "mode": "square"})
    resp.raise_for_status()
    return str(resp.json()["jobId"])


def _rerun(rel: RelStack, index: int, mode: str) -> tuple[str, str, bool]:
    """Kill the worker of a new job between its upload and its record update; returns (record, job, hit)."""
    record_id = f"rerun-{index}"
    job_id = _submit(rel, record_id, "/slow.jpg")
    if not wait_until(lambda: _record_status(rel, record_id) == "processing", 30, 0.02):
        return record_id, job_id, False
    folder = rel.storage_dir / "acme" / "rel" / record_id
    lock = sqlite3.connect(rel.db_path, timeout=30, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the worker's completing UPDATE now waits (busy timeout 5 s)
        uploaded = wait_until(lambda: folder.exists() and any(
            not f.name.startswith(".") for f in folder.iterdir()), 20, 0.01)
        pid = _worker_pid_running(rel, job_id)
        hit = False
        horse = horse_of(pid) if pid else None
        if uploaded and pid and horse:
            if mode == "both":
                kill_pid(pid)
            hit = kill_pid(horse)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    return record_id, job_id, hit


def _warm_shutdown(rel: RelStack, index: int) -> dict[str, object]:
    """SIGTERM a worker while its job fetches a slow photo."""
    assert rel.supervisor is not None
    record_id = f"warm-{index}"
    job_id = _submit(rel, record_id, "/slower.jpg")
    wait_until(lambda: _record_status(rel, record_id) == "processing", 30, 0.02)
    pid = _worker_pid_running(rel, job_id)
    proc = next((p for p in rel.supervisor.alive() if p.pid == pid), None)
    if proc is None:
        return {"signalled": False}
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = proc.wait(60)
    exited_s = time.monotonic() - sent
    body = wait_for_job(rel.base_url, rel.key, job_id, timeout=30)
    return {"signalled": True, "exit code": code, "exited after s": exited_s, "state": body.get("state"),
            "attempts": body.get("attempts")}


def run(profile: str, workdir: Path) -> Report:
    p = PROFILES[profile]
    report = Report("duplicates", profile)
    with rel_stack(workdir, extra={"JOB_RETRY_INTERVALS_S": "1,1,1"}) as rel:
        with sqlite3.connect(rel.db_path) as conn:
            conn.executescript(AUDIT)
        photo = portrait_jpegs(1)[0]
        rel.photos.files["/slow.jpg"] = photo
        rel.photos.files["/slower.jpg"] = photo
        rel.photos.delays["/slow.jpg"] = 0.3
        rel.photos.delays["/slower.jpg"] = 2.5
        rel.supervise([(contracts.QUEUE_FACE_CROP,)] * 3)
        time.sleep(1.5)  # workers registered
        runs = [_rerun(rel, i, "both" if i % 2 == 0 else "horse") for i in range(p["reruns"])]
        shutdowns = [_warm_shutdown(rel, i) for i in range(p["shutdowns"])]
        finals = {job_id: wait_for_job(rel.base_url, rel.key, job_id, timeout=180) for _, job_id, _ in runs}
        completions = dict(rel.query("SELECT record_id, COUNT(*) FROM completions GROUP BY record_id"))
        outputs = {record: sum(1 for f in (rel.storage_dir / "acme" / "rel" / record).glob("*") if is_output(f))
                   for record, _, _ in runs}

    hits = sum(hit for _, _, hit in runs)
    report.check("jobs killed between upload and record update", hits, hits == p["reruns"], f"== {p['reruns']}")
    completed = sum(body.get("state") == "completed" for body in finals.values())
    report.check("re-run jobs completed", completed, completed == p["reruns"], f"== {p['reruns']}")
    reran = sum(int(body.get("attempts") or 0) >= 2 for body in finals.values())
    report.check("jobs that ran more than once", reran, reran == p["reruns"], f"== {p['reruns']}")
    extra_changes = sum(abs(completions.get(record, 0) - 1) for record, _, _ in runs)
    report.check("record changes to completed beyond one per record", extra_changes, extra_changes == 0, "== 0")
    extra_outputs = sum(abs(count - 1) for count in outputs.values())
    report.check("stored outputs beyond one per record", extra_outputs, extra_outputs == 0, "== 0")
    warm_ok = [s for s in shutdowns if s.get("signalled") and s.get("state") == "completed"
               and s.get("attempts") == 1 and s.get("exit code") == 0]
    report.check("SIGTERM mid-job: job completed on its first attempt, worker exited 0", len(warm_ok),
                 len(warm_ok) == p["shutdowns"], f"== {p['shutdowns']}")
    for shutdown in shutdowns:
        if shutdown.get("signalled"):
            report.figure("  seconds from SIGTERM to the worker's exit (job was fetching a 2.5 s photo)",
                          round(float(shutdown["exited after s"]), 2), "s")  # type: ignore[arg-type]
    return report.done()
