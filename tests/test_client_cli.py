"""The client CLI's progress bars (imagequeue_client/cli.py): shown on a terminal when tqdm is there,
never in a pipe unless asked, and never required: installed without its [cli] extra, it works the
same. Against a small stand-in API (the real stack drives it in tests/integration/test_client.py)."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import ROOT

JOB = {"success": True, "id": "job-1", "state": "completed", "progress": 100,
       "result": {"photoUrl": "http://cdn.example/x.jpg"}}
# A run of Python in which `import tqdm` fails, as in an install without the [cli] extra.
NO_TQDM = "import sys; sys.modules['tqdm'] = None; from imagequeue_client.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(202, {"success": True, "jobId": "job-1", "recordId": "r1", "message": "queued",
                               "estimatedTime": "1-2 seconds"})

        def do_GET(self) -> None:  # noqa: N802
            self._answer(200, JOB)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def crop(api: str, *extra: str) -> list[str]:
    return ["crop", "http://photos.example/a.jpg", "--record", "r1", "--project", "p", "--wait", "--url", api,
            "--api-key", "iq_test", *extra]


def run(argv: list[str], *, tty: bool, tqdm: bool = True) -> tuple[int, str, str]:
    """Run the CLI in a new process; stderr a terminal (a pty) or a pipe. Returns (status, stdout, stderr)."""
    command = [sys.executable, "-m", "imagequeue_client", *argv] if tqdm else [sys.executable, "-c", NO_TQDM, *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    if not tty:
        out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        return out.returncode, out.stdout, out.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns for the bar
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=follower, text=True) as proc:
        os.close(follower)
        stderr = b""
        while True:  # read the terminal until the process closes it
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            stderr += chunk
        os.close(leader)
        stdout, _ = proc.communicate(timeout=30)
    return proc.returncode, stdout, stderr.decode(errors="replace")


def test_a_terminal_gets_a_progress_bar(api: str) -> None:
    status, stdout, stderr = run(crop(api), tty=True)
    assert status == 0 and json.loads(stdout)["state"] == "completed"
    assert "100/100" in stderr


def test_no_bar_when_stderr_is_not_a_terminal(api: str) -> None:
    status, stdout, stderr = run(crop(api), tty=False)
    assert status == 0 and json.loads(stdout)["state"] == "completed"
    assert "100/100" not in stderr and "\r" not in stderr and "%|" not in stderr
    status, _, forced = run(crop(api, "--progress"), tty=False)
    assert status == 0 and "100/100" in forced


def test_without_tqdm_it_works_without_bars(api: str) -> None:
    status, stdout, stderr = run(crop(api), tty=True, tqdm=False)
    assert status == 0, stderr
    assert json.loads(stdout)["state"] == "completed"
    assert "100/100" not in stderr and "Traceback" not in stderr
    assert stderr.count("pip install 'imagequeue-client[cli]'") == 1
    status, stdout, stderr = run(crop(api), tty=False, tqdm=False)  # no terminal: not even the hint
    assert status == 0 and json.loads(stdout)["state"] == "completed" and "tqdm" not in stderr
