"""Background removal as a vendor sees it: HTTP -> Gunicorn -> Redis -> 3 `rq worker`s -> 3 real
`rembg s` servers (u2netp) -> local storage -> SQLite record rows.

The rembg servers only compute masks; the workers make and encode the cut-outs, which must
match a direct rembg call bit for bit. The photo is scikit-image's astronaut at 320 px (and a
phone-style EXIF-rotated JPEG), served from loopback. Instances are killed with SIGKILL, as a
crash would, and started again afterwards.
"""
from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from core import contracts, rqjson
from tests.conftest import free_port
from tests.jobs.imaging.test_background import direct_call, rotated_jpeg
from tests.rembg_servers import RembgServers, photo_jpeg
from tests.stack import PhotoServer, Stack, create_vendor, running_stack, stack_env, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def photos() -> Iterator[PhotoServer]:
    server = PhotoServer()
    server.files["/astronaut.jpg"] = photo_jpeg(320)
    server.files["/rotated.jpg"] = rotated_jpeg()
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(redis_url: str, rembg_servers: RembgServers,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(redis_url).flushall()
    rembg_servers.revive()
    tmp = tmp_path_factory.mktemp("bgstack")
    env = stack_env(redis_url=redis_url, database_url=f"sqlite:///{tmp / 'image-queue.sqlite3'}",
                    storage_dir=tmp / "files", port=free_port(),
                    extra={"REMBG_URLS": rembg_servers.urls, "REMBG_COOLDOWN_S": "2"})
    with running_stack(env, tmp / "logs") as running:
        for _ in range(3):  # the seed's background-removal concurrency
            running.start_worker(contracts.QUEUE_BACKGROUND_REMOVAL)
        yield running


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return create_vendor(stack.env, "acme")


@pytest.fixture
def servers(rembg_servers: RembgServers, stack: Stack) -> Iterator[RembgServers]:
    """All three servers up and the pool's shared state (rotation, breakers) fresh."""
    rembg_servers.revive()
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    keys = list(conn.scan_iter("iq:rembg:*"))
    if keys:
        conn.delete(*keys)
    yield rembg_servers
    rembg_servers.revive()  # a test may have killed some


def post(stack: Stack, key: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{stack.base_url}/api/image-queue/{path}", json=body, headers={"X-API-Key": key},
                         timeout=10)


def record(stack: Stack, key: str, record_id: str) -> dict[str, Any]:
    resp = requests.get(f"{stack.base_url}/api/image-queue/record/{record_id}", headers={"X-API-Key": key},
                        timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()["record"]


def bulk(stack: Stack, key: str, photos: PhotoServer, prefix: str, count: int) -> list[str]:
    resp = post(stack, key, "bulk-remove-bg", {"projectId": "p1", "recordIds": [f"{prefix}-{i}" for i in range(count)],
                                              "photoUrls": [photos.url("/astronaut.jpg")] * count})
    assert resp.status_code == 202, resp.text
    return resp.json()["jobIds"]


def instances_used(stack: Stack, job_ids: list[str]) -> Counter[str]:
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    return Counter(rqjson.fetch(job_id, connection=conn).meta["rembg_instance"] for job_id in job_ids)


def test_photo_comes_back_as_png_with_the_background_transparent(stack: Stack, key: str, photos: PhotoServer,
                                                                 servers: RembgServers) -> None:
    resp = post(stack, key, "remove-bg-queue", {"recordId": "rec-bg", "projectId": "p1",
                                                "photoUrl": photos.url("/astronaut.jpg")})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["jobId"]
    job = wait_for_job(stack.base_url, key, job_id, timeout=60)
    assert job["state"] == "completed", stack.logs()
    result = job["result"]
    assert result["photoUrl"].endswith(f"/remove-bg-{job_id}.png") and result["format"] == "png"
    assert (result["width"], result["height"]) == (320, 320) and job["attempts"] == 1 and job["progress"] == 100

    image = Image.open(io.BytesIO(requests.get(result["photoUrl"], timeout=5).content))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (320, 320)
    alpha = image.getchannel("A")
    assert alpha.getpixel((2, 2)) < 16, "the backdrop in the corner is transparent"
    assert alpha.getpixel((160, 160)) > 240, "the astronaut in the centre is kept"

    thumb = Image.open(io.BytesIO(requests.get(result["thumbnailUrl"], timeout=5).content))
    assert thumb.format == "WEBP" and thumb.mode == "RGBA" and thumb.size == (256, 256)
    assert thumb.getchannel("A").getpixel((2, 2)) < 16 and thumb.getchannel("A").getpixel((128, 128)) > 240

    row = record(stack, key, "rec-bg")
    assert row["status"] == "completed" and row["outputUrl"] == result["photoUrl"] and row["jobKind"] == "remove_bg"
    assert (row["thumbnailUrl"], row["sourceThumbnailUrl"]) == (result["thumbnailUrl"], result["sourceThumbnailUrl"])
    assert (row["width"], row["height"]) == (320, 320) and row["errorCode"] is None


def test_rerun_of_a_completed_job_returns_the_stored_result(stack: Stack, key: str, photos: PhotoServer,
                                                           servers: RembgServers) -> None:
    resp = post(stack, key, "remove-bg-queue", {"recordId": "rec-twice", "projectId": "p1",
                                                "photoUrl": photos.url("/astronaut.jpg")})
    job_id = resp.json()["jobId"]
    first = wait_for_job(stack.base_url, key, job_id, timeout=60)
    assert first["state"] == "completed", stack.logs()
    before, handled = record(stack, key, "rec-twice"), servers.removals()
    # At-least-once delivery: the same job runs again (as after its worker's parent died).
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    ended = rqjson.fetch(job_id, connection=conn).ended_at
    rqjson.queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=conn).enqueue_job(rqjson.fetch(job_id, connection=conn))
    deadline = time.monotonic() + 60
    while True:
        job = rqjson.fetch(job_id, connection=conn)
        if job.get_status() == "finished" and job.ended_at and ended and job.ended_at > ended:
            break
        assert time.monotonic() < deadline, f"the re-run did not finish: {job.get_status()}\n{stack.logs()}"
        time.sleep(0.1)
    second = wait_for_job(stack.base_url, key, job_id)
    assert second["result"] == first["result"]
    assert record(stack, key, "rec-twice") == before
    assert servers.removals() == handled  # not sent to rembg again
    outputs = list(Path(stack.env["STORAGE_DIR"]).glob("acme/p1/rec-twice/*"))
    assert sorted(path.name for path in outputs) == [f"remove-bg-{job_id}-source-thumb.jpg",
                                                     f"remove-bg-{job_id}-thumb.webp", f"remove-bg-{job_id}.png"]


def test_bg_color_flattens_to_a_jpeg(stack: Stack, key: str, photos: PhotoServer, servers: RembgServers) -> None:
    resp = post(stack, key, "remove-bg-queue", {"recordId": "rec-green", "projectId": "p1",
                                                "photoUrl": photos.url("/astronaut.jpg"),
                                                "options": {"bgColor": "#00ff00"}})
    job = wait_for_job(stack.base_url, key, resp.json()["jobId"], timeout=60)
    assert job["state"] == "completed", stack.logs()
    assert job["result"]["format"] == "jpeg" and job["result"]["photoUrl"].endswith(".jpg")
    assert job["data"]["options"]["bgColor"] == "#00ff00"
    image = Image.open(io.BytesIO(requests.get(job["result"]["photoUrl"], timeout=5).content))
    assert image.format == "JPEG" and image.mode == "RGB"
    red, green, blue = image.getpixel((2, 2))
    assert green > 220 and red < 40 and blue < 40


def test_cutout_of_an_exif_rotated_photo_matches_a_direct_rembg_call(stack: Stack, key: str, photos: PhotoServer,
                                                                     servers: RembgServers) -> None:
    resp = post(stack, key, "remove-bg-queue", {"recordId": "rec-rotated", "projectId": "p1",
                                                "photoUrl": photos.url("/rotated.jpg")})
    job = wait_for_job(stack.base_url, key, resp.json()["jobId"], timeout=60)
    assert job["state"] == "completed", stack.logs()
    assert (job["result"]["width"], job["result"]["height"]) == (480, 640), "upright, as rembg turns it"
    ours = Image.open(io.BytesIO(requests.get(job["result"]["photoUrl"], timeout=5).content))
    theirs = direct_call(servers[0].url, photos.files["/rotated.jpg"])
    assert ours.mode == theirs.mode == "RGBA" and ours.size == theirs.size
    assert ours.getchannel("A").tobytes() == theirs.getchannel("A").tobytes(), "alpha, bit for bit"
    assert ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("options, fmt, size, mode", [
    ({"format": "webp", "maxSide": 200}, "webp", (200, 200), "RGBA"),
    ({"format": "webp", "quality": 80}, "webp", (320, 320), "RGBA"),
    ({"onlyMask": True, "maxSide": 100}, "png", (100, 100), "L"),
    ({"bgColor": "#ffffff", "maxSide": 160, "quality": 70}, "jpeg", (160, 160), "RGB"),
])
def test_format_and_max_side(stack: Stack, key: str, photos: PhotoServer, servers: RembgServers,
                             options: dict[str, Any], fmt: str, size: tuple[int, int], mode: str) -> None:
    record_id = f"rec-{fmt}-{size[0]}-{mode}"
    resp = post(stack, key, "remove-bg-queue", {"recordId": record_id, "projectId": "p1",
                                                "photoUrl": photos.url("/astronaut.jpg"), "options": options})
    assert resp.status_code == 202, resp.text
    job = wait_for_job(stack.base_url, key, resp.json()["jobId"], timeout=60)
    assert job["state"] == "completed", stack.logs()
    result = job["result"]
    assert result["format"] == fmt and (result["width"], result["height"]) == size
    assert job["data"]["options"] == {"model": "u2netp", "bgColor": None, "onlyMask": False, "alphaMatting": False,
                                      **options}
    image = Image.open(io.BytesIO(requests.get(result["photoUrl"], timeout=5).content))
    assert image.format == fmt.upper() and image.mode == mode and image.size == size
    if mode != "RGB":
        alpha = image.getchannel("A") if mode == "RGBA" else image
        assert alpha.getpixel((2, 2)) < 16 and alpha.getpixel((size[0] // 2, size[1] // 2)) > 240
    assert record(stack, key, record_id)["outputUrl"] == result["photoUrl"]


def test_health_lists_every_rembg_instance(stack: Stack, servers: RembgServers) -> None:
    body = requests.get(f"{stack.base_url}/api/worker/health", timeout=10).json()
    assert [entry["url"] for entry in body["rembgInstances"]] == [server.url for server in servers]
    assert all(entry["status"] == "up" and entry["breaker"] == "closed" for entry in body["rembgInstances"])


def test_bulk_jobs_spread_evenly_over_the_instances(stack: Stack, key: str, photos: PhotoServer,
                                                    servers: RembgServers) -> None:
    before = servers.removals()
    job_ids = bulk(stack, key, photos, "even", 9)
    for job_id in job_ids:
        assert wait_for_job(stack.base_url, key, job_id, timeout=90)["state"] == "completed", stack.logs()
    handled = [after - was for after, was in zip(servers.removals(), before, strict=True)]
    assert handled == [3, 3, 3], handled  # counted from each rembg server's own access log
    assert instances_used(stack, job_ids) == Counter({server.url: 3 for server in servers})


def test_an_instance_killed_mid_run_loses_no_job(stack: Stack, key: str, photos: PhotoServer,
                                                 servers: RembgServers) -> None:
    before = sum(servers.removals())
    job_ids = bulk(stack, key, photos, "kill", 12)
    deadline = time.monotonic() + 60
    while sum(servers.removals()) - before < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    servers[1].kill()
    killed_at = servers[1].removals()
    jobs = [wait_for_job(stack.base_url, key, job_id, timeout=90) for job_id in job_ids]
    assert [job["state"] for job in jobs] == ["completed"] * 12, stack.logs()
    assert all(job["attempts"] == 1 for job in jobs), "a failed instance is left within the same attempt"
    assert servers[1].removals() == killed_at
    used = instances_used(stack, job_ids)
    assert used[servers[0].url] + used[servers[2].url] >= 12 - killed_at
    health = requests.get(f"{stack.base_url}/api/worker/health", timeout=10).json()
    assert [entry["status"] for entry in health["rembgInstances"]] == ["up", "down", "up"]
    assert health["status"] == "degraded"


def test_with_every_instance_down_jobs_retry_then_fail_with_the_reason(stack: Stack, key: str,
                                                                       photos: PhotoServer,
                                                                       servers: RembgServers) -> None:
    for server in servers:
        server.kill()
    resp = post(stack, key, "remove-bg-queue", {"recordId": "rec-down", "projectId": "p1",
                                                "photoUrl": photos.url("/astronaut.jpg")})
    job_id = resp.json()["jobId"]
    job = wait_for_job(stack.base_url, key, job_id, timeout=90, until=("failed",))
    assert job["attempts"] == 4, job  # the first attempt and JOB_RETRIES=3 retries
    error = job["error"]
    assert error["code"] == "REMBG_UNAVAILABLE" and error["permanent"] is False and error["final"] is True
    for server in servers:
        assert server.url in error["message"]
    assert "no rembg instance could remove the background" in error["message"]
    row = record(stack, key, "rec-down")
    assert row["status"] == "failed" and row["errorCode"] == "REMBG_UNAVAILABLE" and row["attempts"] == 4
    failed = rqjson.queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=redis.Redis.from_url(stack.env["REDIS_URL"]))
    assert job_id in failed.failed_job_registry.get_job_ids()
