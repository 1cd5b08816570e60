"""Shared by the hostile-input and tenant-isolation scenarios: a private stack, raw HTTP
requests with exact bytes, answer tallies and the crash evidence in the processes' logs.

The stack is the real one (redis-server, Gunicorn, `rq worker`) started in the scenario's own
folder, so a scenario never touches the test session's Redis or another scenario's files.
Requests go through http.client, not requests: the corpus needs paths, headers and bodies sent
exactly as written (dot segments, invalid UTF-8, odd Content-Types), which requests would fix up.
"""
from __future__ import annotations

import http.client
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.conftest import free_port
from tests.reliability.api_stack import PrivateRedis
from tests.stack import Stack, running_stack, stack_env


@contextmanager
def private_stack(workdir: Path, extra: dict[str, str],
                  workers: Sequence[Sequence[str]]) -> Iterator[Stack]:
    """A private redis-server, SQLite database, Gunicorn and one `rq worker` per queue list.

    Everything is stopped on the way out, also when the scenario raised.
    """
    server = PrivateRedis(workdir / "redis", appendonly=False)
    try:
        server.start()
        env = stack_env(redis_url=server.url,
                        database_url=f"sqlite:///{workdir / 'db.sqlite3'}",
                        storage_dir=workdir / "files", port=free_port(), extra=extra)
        with running_stack(env, workdir / "logs") as stack:
            for queues in workers:
                stack.start_worker(*queues)
            yield stack
    finally:
        server.close()


@dataclass
class Answer:
    """One HTTP answer; ``status`` 0 means the connection failed (no answer at all)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def send(base_url: str, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None, timeout: float = 30) -> Answer:
    """Send one request exactly as given (path and body bytes untouched); never raises for
    a refused or reset connection: that is an answer of status 0, counted as a failure."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        sent = {k.lower() for k in (headers or {})}
        for name, value in (headers or {}).items():
            try:
                conn.putheader(name, value)
            except UnicodeEncodeError:  # beyond latin-1: sent as its UTF-8 bytes, as a client might
                conn.putheader(name, value.encode())
        if "content-length" not in sent and (body or method in ("POST", "PUT", "PATCH")):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return Answer(response.status, response.read(), {k.lower(): v for k, v in response.getheaders()})
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, repr(exc).encode())
    finally:
        conn.close()


def answer_class(status: int) -> str:
    """'2xx', '3xx', '4xx', '5xx', or 'none' (no HTTP answer: status 0, or nonsense)."""
    if 200 <= status < 600:
        return f"{status // 100}xx"
    return "none"


@dataclass
class Tally:
    """Inputs tried per category and answers per class; keeps the first examples of each 5xx."""

    tried: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)

    def count(self, category: str, label: str, answer: Answer) -> Answer:
        self.tried[category] += 1
        cls = answer_class(answer.status)
        self.classes[cls] += 1
        self.statuses[answer.status] += 1
        if cls in ("5xx", "none") and len(self.bad) < 20:
            self.bad.append(f"{category}/{label}: {answer.status} {answer.text[:200]}")
        return answer

    @property
    def total(self) -> int:
        return sum(self.tried.values())


# The worker logs a job's traceback when the job raised; our own job errors are expected there.
_EXPECTED_EXC = re.compile(r"^(jobs\.errors\.)?(Permanent|Transient)?JobError\b|^[\w.]*(JobError|ArchiveError)\b")


def unexpected_tracebacks(log_dir: Path) -> tuple[int, int, list[str]]:
    """(tracebacks whose final exception is not one of the jobs' own errors, "Work-horse
    terminated" lines, first lines of each unexpected exception) over every process log."""
    unexpected, horse_deaths, examples = 0, 0, list[str]()
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        horse_deaths += sum("Work-horse terminated" in line or "work-horse terminated" in line.lower()
                            for line in lines)
        for index, line in enumerate(lines):
            if "Traceback (most recent call last)" not in line:
                continue
            final, end = _final_exception(lines, index + 1)
            if _chained(lines, end):
                continue  # a cause: the traceback that follows it ends the chain and is judged
            if not _EXPECTED_EXC.search(final):
                unexpected += 1
                if len(examples) < 5:
                    examples.append(f"{path.name}: {final[:200]}")
    return unexpected, horse_deaths, examples


def _final_exception(lines: list[str], start: int) -> tuple[str, int]:
    """The exception line that ends a traceback starting at ``start`` (the first unindented
    line) and its index."""
    for index in range(start, min(start + 400, len(lines))):
        line = lines[index]
        if line and not line.startswith((" ", "\t")) and not line.startswith("Traceback"):
            return line.strip(), index
    return "<traceback without an exception line>", start


def _chained(lines: list[str], end: int) -> bool:
    """Whether the traceback ending at ``end`` is the cause or context of a later one."""
    for line in lines[end + 1:end + 4]:
        if line.startswith(("The above exception was the direct cause", "During handling of the above")):
            return True
    return False


def processes_alive(stack: Stack) -> tuple[int, int]:
    """(processes of the stack still running, processes started): API plus workers."""
    procs = [stack.api, *stack.workers]
    return sum(proc.poll() is None for proc in procs), len(procs)


def api_healthy(stack: Stack) -> bool:
    """GET /api/worker/health answers 200 (the API is alive and can reach Redis and the DB)."""
    try:
        return requests.get(f"{stack.base_url}/api/worker/health", timeout=10).status_code == 200
    except requests.RequestException:
        return False


def wait_final(poll: Any, deadline: float, interval: float = 0.3) -> Any:
    """Call ``poll()`` until it returns something not None or ``deadline`` (monotonic) passes."""
    while True:
        result = poll()
        if result is not None or time.monotonic() >= deadline:
            return result
        time.sleep(interval)
