"""Issue 7, item 2 (the API's side): what clients get while Redis is down or frozen.

Probe threads call representative endpoints in a loop (health, a submission, job status,
batch status, queue stats, a request without a key) with a generous client timeout (10 s), so
a hang is measured, not hidden. Phases, on a private redis-server with AOF:

  baseline -> down (SIGKILL, D s) -> restarted (same port) -> recovery
           -> frozen (SIGSTOP, F s) -> SIGCONT -> recovery

Targets: while Redis is down every answer is a 503 (the unauthenticated probe may get its
deliberate 401), none is a 500 and none takes over 1 s; while it is frozen none takes over
0.5 s and none is a 500; afterwards submissions are accepted again within a few seconds.
Latency targets are ``timing`` checks (the bench script fails on them, CI prints them).
"""
from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.reliability.api_stack import ApiStack, api_stack
from tests.reliability.report import Report

CLIENT_TIMEOUT_S = 10.0  # generous: a hang shows up as a long latency, not as a client error
HUNG_S = 5.0
DOWN_LIMIT_S = 1.0
FROZEN_LIMIT_S = 0.5
RECOVERY_LIMIT_S = 5.0  # Redis back -> first 202 submission
PROBE_PAUSE_S = 0.02
PHOTO = "http://photos.example.com/a.jpg"
HIGH = "1000000/minute"


@dataclass(frozen=True)
class Profile:
    baseline_s: float
    downs_s: tuple[float, ...]
    frozen_s: float
    recovery_s: float


PROFILES = {
    "quick": Profile(baseline_s=3, downs_s=(5,), frozen_s=10, recovery_s=4),
    "full": Profile(baseline_s=5, downs_s=(5, 30), frozen_s=30, recovery_s=6),
}


@dataclass(frozen=True)
class Sample:
    """One probe request: when it ran, in which phase it started, and what it got (0: no answer)."""

    probe: str
    phase: str
    started: float
    ended: float
    status: int
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Probe:
    """A named request; ``allowed_down`` are the answers that are right while Redis is unavailable."""

    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: Callable[[], dict[str, Any] | None] = lambda: None
    allowed_down: frozenset[int] = frozenset({503})
    expected_up: frozenset[int] = frozenset({200})


@dataclass
class Timeline:
    """The current phase, and when each phase started (monotonic)."""

    phase: str = "baseline"
    marks: list[tuple[str, float]] = field(default_factory=list)

    def enter(self, phase: str) -> float:
        now = time.monotonic()
        self.phase = phase
        self.marks.append((phase, now))
        return now

    def window(self, phase: str) -> tuple[float, float]:
        """Start and end of a phase (end: the next mark, or now)."""
        for index, (name, start) in enumerate(self.marks):
            if name == phase:
                end = self.marks[index + 1][1] if index + 1 < len(self.marks) else time.monotonic()
                return start, end
        raise KeyError(phase)


class Prober:
    """One thread per probe, each looping until stopped; samples tagged with the phase at start."""

    def __init__(self, base_url: str, probes: list[Probe], timeline: Timeline) -> None:
        self.base_url = base_url
        self.probes = probes
        self.timeline = timeline
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(probe,), daemon=True) for probe in probes]

    def __enter__(self) -> Prober:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_S + 5)

    def _loop(self, probe: Probe) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            phase = self.timeline.phase
            started = time.monotonic()
            try:
                resp = session.request(probe.method, self.base_url + probe.path, headers=probe.headers,
                                       json=probe.body(), timeout=CLIENT_TIMEOUT_S)
                sample = Sample(probe.name, phase, started, time.monotonic(), resp.status_code)
            except requests.RequestException as exc:
                sample = Sample(probe.name, phase, started, time.monotonic(), 0, type(exc).__name__)
                session = requests.Session()
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(PROBE_PAUSE_S)

    def started_in(self, phase: str) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.phase == phase]

    def overlapping(self, phase: str) -> list[Sample]:
        """Samples whose request was in flight at any time during the phase (for latency bounds:
        a request that started just before SIGSTOP is held by the freeze too)."""
        start, end = self.timeline.window(phase)
        with self._lock:
            return [s for s in self.samples if s.started < end and s.ended > start]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]


def make_probes(api: ApiStack, job_id: str, batch_id: str) -> list[Probe]:
    key = {"X-API-Key": api.key}
    submit = Probe("submit", "POST", "/api/image-queue/crop-face-queue", key,
                   lambda: {"recordId": f"af-{uuid.uuid4().hex[:12]}", "projectId": "p", "photoUrl": PHOTO,
                            "mode": "square"}, expected_up=frozenset({202}))
    return [
        Probe("health", "GET", "/api/worker/health", {}),
        submit,
        Probe("job-status", "GET", f"/api/image-queue/job/{job_id}", key),
        Probe("batch-status", "GET", f"/api/batch/status/{batch_id}", key),
        Probe("queue-stats", "GET", "/api/image-queue/queue-stats", key),
        # Without a key: counted against the per-IP limit (Redis) before auth answers 401.
        Probe("no-key", "GET", "/api/image-queue/queue-stats", {}, allowed_down=frozenset({401, 503}),
              expected_up=frozenset({401})),
    ]


def seed(api: ApiStack) -> tuple[str, str]:
    """A job and a batch of the vendor's, for the status probes."""
    headers = {"X-API-Key": api.key}
    resp = requests.post(f"{api.base_url}/api/image-queue/crop-face-queue", headers=headers, timeout=10,
                         json={"recordId": "af-seed", "projectId": "p", "photoUrl": PHOTO, "mode": "square"})
    if resp.status_code != 202:
        raise RuntimeError(f"seed submission answered {resp.status_code}: {resp.text[:300]}")
    batch = requests.post(f"{api.base_url}/api/batch/add-images", headers=headers, timeout=10,
                          json={"projectId": "p", "priority": 5,
                                "images": [{"recordId": "af-batch-1", "imageUrl": PHOTO}]})
    if batch.status_code not in (200, 201, 202):
        raise RuntimeError(f"seed batch answered {batch.status_code}: {batch.text[:300]}")
    return resp.json()["jobId"], batch.json()["batchId"]


def first_accepted_after(prober: Prober, since: float) -> float | None:
    """Seconds from ``since`` to the end of the first 2xx submission that started after it."""
    with prober._lock:
        ok = [s.ended for s in prober.samples if s.probe == "submit" and s.started >= since and 200 <= s.status < 300]
    return min(ok) - since if ok else None


def wait_for_submission(prober: Prober, since: float, limit_s: float) -> float | None:
    """Wait (up to limit_s + 2 s) for a 2xx submission after ``since``; returns its delay."""
    deadline = since + limit_s + 2
    while time.monotonic() < deadline:
        delay = first_accepted_after(prober, since)
        if delay is not None:
            return delay
        time.sleep(0.1)
    return first_accepted_after(prober, since)


def phase_figures(report: Report, prober: Prober, probes: list[Probe], phase: str, *,
                  outage: bool, limit_s: float | None) -> None:
    """Record one phase's figures and checks."""
    started = prober.started_in(phase)
    statuses = Counter(s.status for s in started)
    report.figure(f"{phase}: requests", len(started))
    report.figure(f"{phase}: status counts", dict(sorted(statuses.items())))
    report.check(f"{phase}: 500 answers", statuses.get(500, 0), statuses.get(500, 0) == 0, "0")
    unanswered = [s for s in started if s.status == 0]
    report.check(f"{phase}: requests without an answer (client errors)", len(unanswered), not unanswered, "0")
    in_flight = prober.overlapping(phase)
    latencies = [s.seconds for s in in_flight]
    hung = sum(1 for value in latencies if value > HUNG_S)
    report.check(f"{phase}: requests hung > {HUNG_S:.0f} s", hung, hung == 0, "0")
    report.figure(f"{phase}: p99 latency", percentile(latencies, 99), "s")
    if limit_s is None:
        report.figure(f"{phase}: max latency", max(latencies, default=0.0), "s")
    else:
        over = sum(1 for value in latencies if value > limit_s)
        report.check(f"{phase}: max latency", max(latencies, default=0.0), over == 0, f"<= {limit_s} s",
                     "s", timing=True)
        report.figure(f"{phase}: requests over {limit_s} s", over)
    if outage:
        allowed = {probe.name: probe.allowed_down for probe in probes}
        # Requests that began in the first 0.3 s may have reached Redis before it went away, and
        # those still in flight at SIGCONT are served once Redis runs again: neither is judged.
        start, end = prober.timeline.window(phase)
        wrong = Counter(f"{s.probe}:{s.status}" for s in started
                        if s.started >= start + 0.3 and s.ended <= end and s.status not in allowed[s.probe])
        report.check(f"{phase}: answers other than 503 (401 for no-key)", dict(wrong), not wrong, "none")
        report.check(f"{phase}: 503 answers", statuses.get(503, 0), statuses.get(503, 0) > 0, "> 0")
    else:
        five = sum(n for code, n in statuses.items() if code >= 500)
        report.figure(f"{phase}: 5xx answers (breaker still open, expected briefly)", five)


def run(profile: str, workdir: Path) -> Report:
    """Run the scenario on a private stack in ``workdir``."""
    plan = PROFILES[profile]
    report = Report("api_faults", profile)
    env = {"RATE_LIMIT_GLOBAL": HIGH, "RATE_LIMIT_IMAGE_PROCESSING": HIGH, "RATE_LIMIT_BULK": HIGH,
           "RATE_LIMIT_READS": HIGH}
    with api_stack(workdir, env) as api:
        job_id, batch_id = seed(api)
        probes = make_probes(api, job_id, batch_id)
        timeline = Timeline()
        timeline.enter("baseline")
        with Prober(api.base_url, probes, timeline) as prober:
            time.sleep(plan.baseline_s)
            phases: list[tuple[str, bool, float | None]] = [("baseline", False, None)]
            for down_s in plan.downs_s:
                name = f"down {down_s:.0f} s"
                timeline.enter(name)
                api.redis.kill()
                time.sleep(down_s)
                # Requests in flight while redis-server boots may be served: not the down phase's.
                timeline.enter(f"restarting after {down_s:.0f} s")
                api.redis.start()
                back = timeline.enter(f"after down {down_s:.0f} s")
                delay = wait_for_submission(prober, back, RECOVERY_LIMIT_S)
                report.check(f"after down {down_s:.0f} s: Redis back -> first 202 submission",
                             -1.0 if delay is None else delay, delay is not None and delay <= RECOVERY_LIMIT_S,
                             f"<= {RECOVERY_LIMIT_S} s", "s")
                time.sleep(max(0.0, plan.recovery_s - (time.monotonic() - back)))
                phases += [(name, True, DOWN_LIMIT_S), (f"restarting after {down_s:.0f} s", False, None),
                           (f"after down {down_s:.0f} s", False, None)]
            name = f"frozen {plan.frozen_s:.0f} s"
            timeline.enter(name)
            api.redis.stop()
            try:
                time.sleep(plan.frozen_s)
            finally:
                api.redis.cont()
            back = timeline.enter("after freeze")
            delay = wait_for_submission(prober, back, RECOVERY_LIMIT_S)
            report.check("after freeze: SIGCONT -> first 202 submission", -1.0 if delay is None else delay,
                         delay is not None and delay <= RECOVERY_LIMIT_S, f"<= {RECOVERY_LIMIT_S} s", "s")
            time.sleep(max(0.0, plan.recovery_s - (time.monotonic() - back)))
            phases += [(name, True, FROZEN_LIMIT_S), ("after freeze", False, None)]
            timeline.enter("end")
        for phase, outage, limit_s in phases:
            phase_figures(report, prober, probes, phase, outage=outage, limit_s=limit_s)
        total_500 = sum(1 for s in prober.samples if s.status == 500)
        report.check("500 answers, whole run", total_500, total_500 == 0, "0")
        expected = {probe.name: probe.expected_up for probe in probes}
        baseline_end = timeline.window("baseline")[1]  # requests still in flight at the kill may get 503
        unexpected = Counter(f"{s.probe}:{s.status}" for s in prober.started_in("baseline")
                             if s.ended < baseline_end and s.status not in expected[s.probe])
        report.check("baseline: unexpected answers (not 200/202, 401 for no-key)", dict(unexpected),
                     not unexpected, "none")
        report.note(f"{len(probes)} probe threads ({', '.join(p.name for p in probes)}), client timeout "
                    f"{CLIENT_TIMEOUT_S:.0f} s; Gunicorn {api.stack.env['GUNICORN_WORKERS']} workers x "
                    f"{api.stack.env.get('GUNICORN_THREADS', '4')} threads; Redis with AOF (everysec), "
                    "restarted on the same port; no rq workers (submissions just queue). Latencies count "
                    "every request in flight during the phase; status checks those started in it.")
    return report.done()
