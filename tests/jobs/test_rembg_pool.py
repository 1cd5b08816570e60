"""The rembg client pool against three real `rembg s` servers and the real Redis.

A new RembgPool per call stands for a new RQ work-horse per job: whatever the pool must
remember between calls (rotation, cool-downs) has to come from Redis, and these tests show
it does.
"""
from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from PIL import Image

from core import contracts
from core.config import Settings
from core.errors import REMBG_REJECTED, REMBG_UNAVAILABLE, PermanentJobError, TransientJobError
from jobs.rembg_pool import RembgCall, RembgPool
from service.rembg_health import rembg_instances
from tests.conftest import free_port
from tests.rembg_servers import RembgServers, photo_jpeg

U2NETP = RembgCall("u2netp")


@pytest.fixture(scope="module")
def photo() -> bytes:
    return photo_jpeg(320)


@pytest.fixture
def servers(rembg_servers: RembgServers, redis_conn: redis.Redis) -> RembgServers:
    rembg_servers.revive()  # a test before may have killed one
    return rembg_servers


def new_pool(urls: list[str], conn: redis.Redis, **options: float) -> RembgPool:
    return RembgPool(urls, conn, **options)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung rembg)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_calls_rotate_evenly_over_instances_across_pools(servers: RembgServers, redis_conn: redis.Redis,
                                                         photo: bytes) -> None:
    urls = [server.url for server in servers]
    before = servers.removals()
    used = [new_pool(urls, redis_conn).remove(photo, U2NETP).instance for _ in range(6)]
    assert used == urls + urls  # the rotation continues across pools (work-horses) via Redis
    after = servers.removals()
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2, 2]


def test_output_is_a_png_whose_alpha_cuts_out_the_background(servers: RembgServers, redis_conn: redis.Redis,
                                                             photo: bytes) -> None:
    result = new_pool([servers[0].url], redis_conn).remove(photo, U2NETP)
    image = Image.open(io.BytesIO(result.png))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (320, 320)
    alpha = image.getchannel("A")
    # The astronaut photo: backdrop in the top corners, her suit in the centre, face at (145, 80).
    assert alpha.getpixel((2, 2)) < 16 and alpha.getpixel((317, 2)) < 16
    assert alpha.getpixel((160, 160)) > 240 and alpha.getpixel((145, 80)) > 240
    mask = new_pool([servers[0].url], redis_conn).remove(photo, RembgCall("u2netp", only_mask=True))
    assert Image.open(io.BytesIO(mask.png)).mode == "L"


def test_dead_instance_is_skipped_for_its_cooldown_then_probed_and_used_again(
        servers: RembgServers, redis_conn: redis.Redis, photo: bytes) -> None:
    urls = [server.url for server in servers]
    servers[1].kill()
    results = [new_pool(urls, redis_conn, cooldown_s=600).remove(photo, U2NETP) for _ in range(6)]
    assert all(result.instance != urls[1] for result in results)
    failures = [result.failed[urls[1]] for result in results if urls[1] in result.failed]
    assert len(failures) == 1, "after one failure the instance is skipped, not tried again"
    assert "cannot connect" in failures[0] and "Connection refused" in failures[0]
    assert new_pool(urls, redis_conn).state(urls[1]) == "open"
    assert redis_conn.get(contracts.REMBG_LAST_ERROR_KEY.format(url=urls[1])).decode() == failures[0]

    servers[1].start()
    servers[1].wait_ready()
    probes_before, removals_before = servers[1].probes(), servers[1].removals()
    time.sleep(1.1)  # past a 1 s cool-down (opened_at is kept in whole seconds)
    results = [new_pool(urls, redis_conn, cooldown_s=1).remove(photo, U2NETP) for _ in range(3)]
    assert urls[1] in [result.instance for result in results]
    assert servers[1].probes() == probes_before + 1, "probed with GET /openapi.json before use"
    assert servers[1].removals() == removals_before + 1
    assert new_pool(urls, redis_conn).state(urls[1]) == "closed"


def test_all_instances_down_is_a_transient_error_naming_each(redis_conn: redis.Redis, photo: bytes) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    with pytest.raises(TransientJobError) as info:
        new_pool(dead, redis_conn, cooldown_s=600).remove(photo, U2NETP)
    assert info.value.code == REMBG_UNAVAILABLE
    for url in dead:
        assert url in info.value.message
    assert "cannot connect" in info.value.message and "REMBG_URLS" in info.value.message
    assert all(new_pool(dead, redis_conn).state(url) == "open" for url in dead)
    # All cooling down: the next call still gives each its half-open trial instead of failing blind.
    with pytest.raises(TransientJobError) as again:
        new_pool(dead, redis_conn, cooldown_s=600).remove(photo, U2NETP)
    assert again.value.message.count("probe failed") == 3


def test_a_hung_instance_times_out_and_the_call_moves_on(servers: RembgServers, silent_server: str,
                                                         redis_conn: redis.Redis, photo: bytes) -> None:
    # 5 s: long enough for the real server on a busy machine, short for a test.
    pool = new_pool([silent_server, servers[0].url], redis_conn, read_timeout_s=5)
    result = pool.remove(photo, U2NETP)
    assert result.instance == servers[0].url
    assert "no answer within the timeout (REMBG_READ_TIMEOUT_S)" in result.failed[silent_server]
    assert pool.state(silent_server) == "open"


def test_a_4xx_about_the_request_is_permanent_and_not_held_against_the_instance(
        servers: RembgServers, redis_conn: redis.Redis, photo: bytes) -> None:
    urls = [servers[0].url, servers[1].url]
    removals_before = servers[1].removals()
    with pytest.raises(PermanentJobError) as info:
        new_pool(urls, redis_conn).remove(photo, RembgCall("no-such-model"))
    assert info.value.code == REMBG_REJECTED and "HTTP 422" in info.value.message
    assert new_pool(urls, redis_conn).state(urls[0]) == "closed"
    assert servers[1].removals() == removals_before  # not sent elsewhere: it would be refused there too


def test_health_lists_each_instance_live_and_as_the_workers_see_it(servers: RembgServers,
                                                                   redis_conn: redis.Redis, photo: bytes) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    urls = [servers[0].url, dead]
    new_pool([dead, servers[0].url], redis_conn).remove(photo, U2NETP)  # trips the dead one's breaker
    entries = rembg_instances(Settings(rembg_urls=tuple(urls)), redis_conn)
    assert [entry["url"] for entry in entries] == urls
    assert entries[0]["status"] == "up" and entries[0]["breaker"] == "closed" and entries[0]["latencyMs"] >= 0
    assert entries[1]["status"] == "down" and entries[1]["breaker"] == "open"
    assert "refused" in entries[1]["error"].lower()
