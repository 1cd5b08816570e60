"""Error reports to Sentry (core/sentry.py): with SENTRY_DSN, the API's unhandled errors (Flask
integration) and jobs that failed for good (RQ integration) reach the DSN's server; without it the
SDK is not even imported. A loopback stand-in plays Sentry; each case runs in a fresh process
because the SDK patches Flask, RQ and logging process-wide."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.errors import PermanentJobError, TransientJobError
from core.sentry import drop_expected_failures, sentry_options
from tests.conftest import ROOT


class SentryStandIn:
    """Collects the envelopes the SDK posts to /api/<project>/envelope/."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                stand_in.bodies.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.dsn = f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def text(self) -> str:
        return b"\n".join(self.bodies).decode(errors="replace")


@pytest.fixture
def sentry() -> Iterator[SentryStandIn]:
    stand_in = SentryStandIn()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


API_SCRIPT = """
import sys
from service import create_app
app = create_app({"redis_url": sys.argv[1], "database_url": sys.argv[2], "rembg_urls": ()})
def boom():
    raise RuntimeError("a bug in a view")
app.add_url_rule("/boom", "boom", boom)
assert app.test_client().get("/boom").status_code == 500
print("sentry_sdk imported:", "sentry_sdk" in sys.modules)
if "sentry_sdk" in sys.modules:
    import sentry_sdk
    sentry_sdk.flush(10)
"""

WORKER_SCRIPT = """
import sys
import redis
from rq import SimpleWorker
from core import rqjson
import jobs.settings  # what `rq worker -c jobs.settings` imports first: starts Sentry with the RQ integration
conn = redis.Redis.from_url(sys.argv[1])
queue = rqjson.queue("webhooks", connection=conn)
queue.enqueue("builtins.int", "not a number")  # fails for good: ValueError
SimpleWorker([queue], connection=conn, serializer=rqjson.SERIALIZER).work(burst=True)
import sentry_sdk
sentry_sdk.flush(10)
"""


def run(script: str, redis_url: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SENTRY_")}
    environ.update({"PYTHONPATH": str(ROOT), "IQ_SKIP_PRELOAD": "1", "REDIS_URL": redis_url,
                    "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **env})
    return subprocess.run([sys.executable, "-c", script, redis_url, environ["DATABASE_URL"]], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=120)


def test_an_unhandled_api_error_is_reported(sentry: SentryStandIn, redis_url: str, redis_conn: Any,
                                            tmp_path: Path) -> None:
    out = run(API_SCRIPT, redis_url, tmp_path, SENTRY_DSN=sentry.dsn, SENTRY_ENVIRONMENT="staging")
    assert out.returncode == 0, out.stderr
    assert "RuntimeError" in sentry.text() and "a bug in a view" in sentry.text()
    assert '"environment":"staging"' in sentry.text().replace(" ", "")


def test_without_a_dsn_nothing_is_imported_or_sent(sentry: SentryStandIn, redis_url: str, redis_conn: Any,
                                                   tmp_path: Path) -> None:
    out = run(API_SCRIPT, redis_url, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sentry_sdk imported: False" in out.stdout
    assert sentry.bodies == []


def test_a_job_that_failed_for_good_is_reported(sentry: SentryStandIn, redis_url: str, redis_conn: Any,
                                                tmp_path: Path) -> None:
    out = run(WORKER_SCRIPT, redis_url, tmp_path, SENTRY_DSN=sentry.dsn)
    assert out.returncode == 0, out.stderr
    assert "ValueError" in sentry.text() and "builtins.int" in sentry.text()


def test_vendor_input_failures_are_not_reported() -> None:
    event = {"message": "x"}
    assert drop_expected_failures(event, {"exc_info": (PermanentJobError, PermanentJobError("no face"), None)}) is None
    kept = {"exc_info": (TransientJobError, TransientJobError("rembg down"), None)}
    assert drop_expected_failures(event, kept) is event
    assert drop_expected_failures(event, {}) is event
    assert sentry_options(Settings()) is None
    options = sentry_options(Settings(sentry_dsn="http://k@h/1", sentry_traces_sample_rate=0.1))
    assert options is not None and options["send_default_pii"] is False and options["traces_sample_rate"] == 0.1
