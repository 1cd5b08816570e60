"""The web tier's Redis circuit breaker (service/redis_breaker.py): one failure opens it, the
rest fail at once, one caller probes after the cool-down."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.db.database import connect
from service import create_app
from service.auth import create_api_key
from service.redis_breaker import RedisBreaker, RedisUnavailable, guarded_pool
from tests.conftest import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """A probe whose outcome the test sets; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = True
        self.delay_s = 0.0

    def __call__(self) -> None:
        self.calls += 1
        time.sleep(self.delay_s)
        if self.fail:
            raise redis.exceptions.ConnectionError("still down")


def test_one_failure_opens_and_later_calls_fail_without_probing() -> None:
    clock, probe = Clock(), Probe()
    breaker = RedisBreaker("r", 1.0, probe, clock)
    breaker.before_call()  # closed: goes ahead
    breaker.failure(redis.exceptions.TimeoutError("Timeout reading"))
    assert breaker.is_open and breaker.times_opened == 1
    for _ in range(3):
        with pytest.raises(RedisUnavailable, match="failed recently"):
            breaker.before_call()
    assert probe.calls == 0


def test_after_the_cooldown_a_probe_reopens_or_closes() -> None:
    clock, probe = Clock(), Probe()
    breaker = RedisBreaker("r", 1.0, probe, clock)
    breaker.failure(ConnectionError("refused"))
    clock.now += 1.01
    with pytest.raises(RedisUnavailable, match="still unavailable"):
        breaker.before_call()
    assert probe.calls == 1 and breaker.is_open
    with pytest.raises(RedisUnavailable, match="failed recently"):  # a new cool-down started
        breaker.before_call()
    assert probe.calls == 1
    clock.now += 1.01
    probe.fail = False
    breaker.before_call()
    assert probe.calls == 2 and not breaker.is_open
    breaker.before_call()
    assert probe.calls == 2 and breaker.times_opened == 1


def test_only_one_caller_probes_while_the_others_fail_fast() -> None:
    clock, probe = Clock(), Probe()
    probe.delay_s, probe.fail = 0.3, False
    breaker = RedisBreaker("r", 1.0, probe, clock)
    breaker.failure(ConnectionError("refused"))
    clock.now += 2
    outcomes: list[str] = []

    def call() -> None:
        started = time.monotonic()
        try:
            breaker.before_call()
            outcomes.append("through")
        except RedisUnavailable:
            outcomes.append(f"refused in {time.monotonic() - started:.2f}")

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert probe.calls == 1
    assert outcomes.count("through") == 1, outcomes
    assert all(o == "through" or float(o.split()[-1]) < 0.2 for o in outcomes), outcomes
    assert not breaker.is_open


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a frozen (SIGSTOPped) Redis."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def test_a_frozen_redis_costs_one_timeout_then_nothing(silent_port: int) -> None:
    url = f"redis://127.0.0.1:{silent_port}/0"
    probe = Probe()
    breaker = RedisBreaker(url, 5.0, probe)
    client = redis.Redis(connection_pool=guarded_pool(url, breaker, 0.2))
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.set("k", "v")
    first = time.monotonic() - started
    assert 0.15 < first < 0.6, first  # one socket timeout, no retry with backoff
    for _ in range(20):  # refused by the open breaker (RedisUnavailable), never another socket timeout
        with pytest.raises(RedisUnavailable):
            client.get("k")
        pipe = client.pipeline()
        pipe.incr("a")
        pipe.expire("a", 5)
        with pytest.raises(RedisUnavailable):
            pipe.execute()
    assert breaker.times_opened == 1 and probe.calls == 0
    client.connection_pool.disconnect()


def test_a_refused_connection_opens_it_and_a_live_redis_closes_it(redis_url: str) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    breaker = RedisBreaker(closed, 0.05, lambda: None)
    client = redis.Redis(connection_pool=guarded_pool(closed, breaker, 0.2))
    with pytest.raises(redis.exceptions.ConnectionError) as refused:
        client.ping()
    assert not isinstance(refused.value, RedisUnavailable) and breaker.is_open
    with pytest.raises(RedisUnavailable):
        client.ping()
    # A working Redis behind a breaker: commands, pipelines and scripts go through.
    live = redis.Redis(connection_pool=guarded_pool(redis_url, RedisBreaker(redis_url, 1.0, lambda: None), 0.2))
    assert live.ping() is True
    pipe = live.pipeline()
    pipe.set("breaker-test", 1)
    pipe.incr("breaker-test")
    assert pipe.execute() == [True, 2]
    assert live.eval("return redis.call('GET', KEYS[1])", 1, "breaker-test") == b"2"
    live.delete("breaker-test")


def test_the_api_answers_503_at_once_after_the_first_timeout(silent_port: int, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = connect(db_url)
    db.migrate()
    db.create_vendor("acme", "Acme")
    key = create_api_key(db, "acme")
    app = create_app({"redis_url": f"redis://127.0.0.1:{silent_port}/0", "database_url": db_url,
                      "storage_dir": str(tmp_path / "files"), "upload_dir": str(tmp_path / "uploads"),
                      "api_redis_cooldown_s": 30.0})
    backends = app.extensions["image_queue"]
    client = app.test_client()
    body = {"recordId": "r1", "projectId": "p", "photoUrl": "http://photos.example.com/a.jpg", "mode": "square"}
    timings = []
    for _ in range(4):
        started = time.monotonic()
        resp = client.post("/api/image-queue/crop-face-queue", json=body, headers={"X-API-Key": key})
        timings.append(time.monotonic() - started)
        assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0, resp.get_data(as_text=True)
    health = client.get("/api/worker/health")
    assert health.status_code == 503 and health.get_json()["redis"]["status"] == "down"
    # The limiter's storage and the queues' client share the one breaker of this Redis.
    assert len(backends._breakers) == 1
    assert timings[0] < 0.5 + 0.3, timings  # one RATE_LIMIT_STORAGE_TIMEOUT_S (0.25 s)
    assert max(timings[1:]) < 0.1, timings
    assert db.get_record("acme", "r1") is None
    backends.close()


# --- the redis-py internals service/redis_breaker.py relies on (checked against the installed redis-py) ---

def test_the_redis_py_methods_the_breaker_overrides_are_still_there() -> None:
    import inspect

    from redis.connection import AbstractConnection
    from redis.retry import Retry
    from redis.sentinel import SentinelManagedConnection

    from service.redis_breaker import GuardedSentinelConnection, GuardedSSLConnection, no_backoff_retry

    params = inspect.signature(AbstractConnection.connect_check_health).parameters
    assert {"check_health", "retry_socket_connect"} <= set(params)
    assert list(inspect.signature(AbstractConnection.send_packed_command).parameters)[1:] == ["command", "check_health"]
    assert "read_response" in vars(AbstractConnection) and "connect" in vars(SentinelManagedConnection)
    assert isinstance(inspect.getattr_static(Retry, "is_retryable"), property)  # redis-py 8's retry filter
    breaker = RedisBreaker("r", 1.0, lambda: None)
    retry = no_backoff_retry(breaker)
    assert retry.get_retries() == 1 and retry.is_retryable is not None and retry.is_retryable(ConnectionError())
    breaker.failure(ConnectionError("refused"))
    assert not retry.is_retryable(ConnectionError())  # nothing is retried while the breaker is open
    for cls in (GuardedSSLConnection, GuardedSentinelConnection):  # the breaker's methods come first
        assert cls.__mro__.index(next(c for c in cls.__mro__ if c.__name__ == "_Guarded")) < \
            cls.__mro__.index(AbstractConnection)


def test_a_connection_redis_closed_is_retried_once_without_opening_the_breaker(redis_url: str) -> None:
    breaker = RedisBreaker(redis_url, 5.0, lambda: None)
    client = redis.Redis(connection_pool=guarded_pool(redis_url, breaker, 0.5))
    client.client_setname("breaker-victim")
    assert client.ping() is True
    admin = redis.Redis.from_url(redis_url)
    victims = [c["id"] for c in admin.client_list() if c.get("name") == "breaker-victim"]
    assert victims and admin.client_kill_filter(_id=victims[0]) == 1  # Redis closes our pooled connection
    assert client.set("after-kill", "1") is True  # EOF on the old socket, one retry on a new one
    assert not breaker.is_open and breaker.times_opened == 0
    admin.delete("after-kill")
    client.connection_pool.disconnect()
