"""Real `rembg s` servers on loopback ports for the background-removal tests.

They run from the rembg virtualenv (.venv-rembg, or IQ_REMBG_VENV; ./scripts/test makes it)
with the u2netp model that scripts/fetch-models puts in models/ (run here too: idempotent).
One onnxruntime thread each: three servers share this machine's few cores with the workers.
Each server's access log is its own file, so tests count the images every instance handled.
"""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port

REMBG_VENV = Path(os.environ.get("IQ_REMBG_VENV") or ROOT / ".venv-rembg")
REMBG_BIN = REMBG_VENV / "bin" / "rembg"
MODEL_DIR = Path(os.environ.get("U2NET_HOME") or ROOT / "models")
_REMOVE_LINE = re.compile(rb'"POST /api/remove HTTP/1\.1" 200')


class RembgServer:
    """One `rembg s` process; can be killed and started again on the same port."""

    def __init__(self, log_path: Path, port: int | None = None, *, omp_threads: int | None = 1) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.omp_threads = omp_threads  # None: onnxruntime's default (every core)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, as listed in REMBG_URLS."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process (appending to its log); wait_ready() waits for it."""
        env = dict(os.environ, U2NET_HOME=str(MODEL_DIR), BROWSER="true", PYTHONUNBUFFERED="1")
        env.pop("OMP_NUM_THREADS", None)
        if self.omp_threads is not None:
            env["OMP_NUM_THREADS"] = str(self.omp_threads)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(REMBG_BIN), "s", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 240) -> None:
        """Block until GET /openapi.json answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"rembg s on port {self.port} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if requests.get(f"{self.url}/openapi.json", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"rembg s on port {self.port} not up after {timeout}s:\n{self.log()}")

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would: in-flight requests get their connection reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def removals(self) -> int:
        """Successful POST /api/remove calls this server has answered (from its access log)."""
        return len(_REMOVE_LINE.findall(self._read())) if self.log_path.exists() else 0

    def probes(self) -> int:
        """Successful GET /openapi.json calls this server has answered (from its access log)."""
        return self._read().count(b'"GET /openapi.json HTTP/1.1" 200')

    def _read(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def log(self) -> str:
        """The tail of the server's output."""
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


class RembgServers(list[RembgServer]):
    """The session's servers."""

    @property
    def urls(self) -> str:
        """The REMBG_URLS value for all of them."""
        return ",".join(server.url for server in self)

    def revive(self) -> None:
        """Start again any server a test killed, and wait until all answer."""
        for server in self:
            if not server.alive():
                server.start()
        for server in self:
            server.wait_ready()

    def removals(self) -> list[int]:
        """Per-server count of images handled so far."""
        return [server.removals() for server in self]


def ensure_model() -> None:
    """Run scripts/fetch-models (no-op when the model is in place with the right md5)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch-models"), "--model-dir", str(MODEL_DIR)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"scripts/fetch-models failed; rembg has no model:\n{proc.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def rembg_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RembgServers]:
    """Three real `rembg s` servers (u2netp) for the whole session; revive() after killing one."""
    if not REMBG_BIN.exists():
        pytest.fail(f"{REMBG_BIN} is missing: run ./scripts/test (it creates the rembg virtualenv from "
                    "requirements-rembg.txt) or set IQ_REMBG_VENV", pytrace=False)
    ensure_model()
    logs = tmp_path_factory.mktemp("rembg")
    servers = RembgServers(RembgServer(logs / f"rembg-{i}.log") for i in range(3))
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def photo_jpeg(side: int = 320) -> bytes:
    """scikit-image's astronaut (a real photo: person in front of a backdrop), ``side`` px, JPEG."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()
