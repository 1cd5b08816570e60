"""The SDK's id_photo / bulk_id_photo and the CLI's `id-photo` send what the routes expect."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from imagequeue_client import Client
from tests.conftest import ROOT

SEEN: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            SEEN.append((self.path, body))
            data = json.dumps({"success": True, "jobId": "job-1", "recordId": "r1", "estimatedTime": "1-2 seconds"})
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_sdk_sends_spec_and_options(api: str) -> None:
    SEEN.clear()
    client = Client(api, "iq_test")
    client.id_photo("r1", "p", "http://photos.example/a.jpg", "us", options={"maxBytes": 240000})
    client.bulk_id_photo(["r1", "r2"], "p", ["http://photos.example/a.jpg"] * 2, {"widthMm": 40})
    assert SEEN[0] == ("/api/image-queue/id-photo-queue", {"recordId": "r1", "projectId": "p", "spec": "us",
                                                            "photoUrl": "http://photos.example/a.jpg",
                                                            "options": {"maxBytes": 240000}})
    assert SEEN[1][0] == "/api/image-queue/bulk-id-photo" and SEEN[1][1]["spec"] == {"widthMm": 40}


def test_cli_id_photo(api: str) -> None:
    SEEN.clear()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "imagequeue_client", "id-photo", "http://photos.example/a.jpg",
                          "--record", "r1", "--project", "p", "--spec", '{"widthMm": 40}', "--background",
                          "lightgrey", "--url", api, "--api-key", "iq_test"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    path, body = SEEN[0]
    assert path == "/api/image-queue/id-photo-queue"
    assert body["spec"] == {"widthMm": 40} and body["options"] == {"background": "lightgrey"}
