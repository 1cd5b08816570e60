#!/usr/bin/env python3
"""Background-removal throughput: one rembg server called directly, then through the queue.

In one run, on the same photos (real photos from scikit-image, resized to ``--side`` px):

1. direct: a plain loop POSTing each photo to one `rembg s` (u2netp) and waiting for the PNG;
2. queue: HTTP -> Gunicorn -> Redis -> ``--workers`` `rq worker`s on background-removal ->
   rembg pool -> local storage -> SQLite, with 1, 2 and 3 rembg servers in REMBG_URLS;
   every photo is submitted ``--repeat`` times through bulk-remove-bg and timed until the last
   job has finished;

and prints images/s for each, how the jobs spread over the servers, and each queue run's
images/s as a ratio of the direct loop's (below 1: overhead; above 1: the queue overlaps work
the direct loop does one after another). The cores are shared with whatever else runs on the
machine, so the direct loop is measured again after every queue run and each run is compared
with the mean of the two direct loops either side of it.

    .venv/bin/python scripts/bench_bg.py [--photos 8] [--side 480] [--repeat 3] [--workers 3]

Needs the rembg virtualenv (.venv-rembg) and models/u2netp.onnx: ./scripts/test or
./scripts/up make both. The servers run with onnxruntime's default threads unless
``--omp-threads`` is given; they all share this machine's cores.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis as redis_lib  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402
from rq import Queue, Worker  # noqa: E402

from core import contracts  # noqa: E402
from tests.conftest import free_port, redis_server_binary, wait_for_port  # noqa: E402
from tests.rembg_servers import REMBG_BIN, RembgServer, ensure_model  # noqa: E402
from tests.stack import PhotoServer, Stack, create_vendor, running_stack, stack_env  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def make_photos(n: int, side: int) -> list[bytes]:
    """``n`` JPEGs cycling through scikit-image's real photos, longest side ``side`` px."""
    from skimage import data

    photos = []
    for index in range(n):
        image = Image.fromarray(getattr(data, PHOTOS[index % len(PHOTOS)])()).convert("RGB")
        scale = side / max(image.size)
        # A slightly different size each round, so no two uploads are byte-identical.
        scale *= 1 - 0.02 * (index // len(PHOTOS))
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    return photos


def direct_loop(url: str, photos: list[bytes]) -> dict[str, Any]:
    """POST each photo to one rembg server, one after another."""
    session = requests.Session()
    session.trust_env = False
    started = time.perf_counter()
    for data in photos:
        resp = session.post(f"{url}/api/remove", files={"file": ("photo.jpg", data, "image/jpeg")},
                            data={"model": "u2netp"}, timeout=120)
        resp.raise_for_status()
    elapsed = time.perf_counter() - started
    return {"images": len(photos), "seconds": elapsed, "images_per_s": len(photos) / elapsed}


def print_direct(when: str, run: dict[str, Any]) -> None:
    """One line for a direct-loop measurement."""
    print(f"direct loop ({when}), 1 rembg server, 1 client: {run['images']} images in "
          f"{run['seconds']:.1f} s  {run['images_per_s']:.2f} images/s")


def wait_workers(conn: redis_lib.Redis, count: int, stack: Stack) -> None:
    """Wait until ``count`` workers listen on background-removal."""
    queue = Queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=conn)
    deadline = time.monotonic() + 90
    while Worker.count(queue=queue) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not start:\n" + stack.logs())
        time.sleep(0.2)


def queue_run(stack: Stack, key: str, conn: redis_lib.Redis, urls: list[str], label: str,
              servers: list[RembgServer]) -> dict[str, Any]:
    """Submit every URL through bulk-remove-bg and time until the last job is finished."""
    for stale in conn.scan_iter("iq:rembg:*"):
        conn.delete(stale)  # fresh rotation and breakers for each run
    queue = Queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=conn)
    done_before = queue.finished_job_registry.count + queue.failed_job_registry.count
    failed_before = queue.failed_job_registry.count
    handled_before = [server.removals() for server in servers]
    started = time.perf_counter()
    job_ids: list[str] = []
    limit = 100  # BULK_MAX_ITEMS
    for offset in range(0, len(urls), limit):
        chunk = range(offset, min(offset + limit, len(urls)))
        resp = requests.post(f"{stack.base_url}/api/image-queue/bulk-remove-bg", timeout=30,
                             headers={"X-API-Key": key},
                             json={"projectId": "bench", "recordIds": [f"{label}-{i}" for i in chunk],
                                   "photoUrls": [urls[i] for i in chunk]})
        resp.raise_for_status()
        job_ids += resp.json()["jobIds"]
    deadline = time.monotonic() + 900
    while True:
        done = queue.finished_job_registry.count + queue.failed_job_registry.count - done_before
        if done >= len(job_ids):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done}/{len(job_ids)} jobs finished:\n" + stack.logs())
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    return {"images": len(job_ids), "seconds": elapsed, "images_per_s": len(job_ids) / elapsed,
            "failed": queue.failed_job_registry.count - failed_before,
            "spread": [server.removals() - before for server, before in zip(servers, handled_before, strict=True)]}


def main(argv: list[str] | None = None) -> int:
    """Start the servers and the stack, run the direct loop and the three queue runs, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=8, help="distinct photos (default 8)")
    parser.add_argument("--side", type=int, default=480, help="longest side in px (default 480)")
    parser.add_argument("--repeat", type=int, default=3, help="queue runs: submit each photo this many times")
    parser.add_argument("--workers", type=int, default=3, help="rq workers on background-removal (default 3)")
    parser.add_argument("--omp-threads", type=int, default=None,
                        help="OMP_NUM_THREADS for each rembg server (default: onnxruntime's own)")
    args = parser.parse_args(argv)
    if not REMBG_BIN.exists():
        raise SystemExit(f"{REMBG_BIN} is missing: run ./scripts/test or ./scripts/up first")
    ensure_model()
    photos = make_photos(args.photos, args.side)
    sizes = [Image.open(io.BytesIO(p)).size for p in photos]
    print(f"{len(photos)} photos ({', '.join(PHOTOS)}), {min(sizes)}-{max(sizes)} px, "
          f"{sum(map(len, photos)) / len(photos) / 1024:.0f} KiB avg; {os.cpu_count()} CPU cores; "
          f"rembg threads: {args.omp_threads or 'onnxruntime default'}; "
          "load average (1 min) at the start: {:.2f}".format(os.getloadavg()[0]))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        servers = [RembgServer(tmp / f"rembg-{i}.log", omp_threads=args.omp_threads) for i in range(3)]
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp_name], stdout=subprocess.DEVNULL)
        photo_server = PhotoServer()
        try:
            for server in servers:
                server.start()
            for server in servers:
                server.wait_ready()
                direct_loop(server.url, photos[:1])  # warm-up: the first call loads the model
            directs = [direct_loop(servers[0].url, photos * args.repeat)]
            print_direct("first", directs[0])

            wait_for_port(redis_port)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            for index, data in enumerate(photos):
                photo_server.files[f"/p{index}.jpg"] = data
            urls = [photo_server.url(f"/p{i % len(photos)}.jpg") for i in range(len(photos) * args.repeat)]
            env = stack_env(redis_url=redis_url, database_url=f"sqlite:///{tmp / 'bench.sqlite3'}",
                            storage_dir=tmp / "files", port=free_port(),
                            extra={"LOG_LEVEL": "WARNING", "REMBG_URLS": servers[0].url})
            conn = redis_lib.Redis.from_url(redis_url)
            results = []
            with running_stack(env, tmp / "logs") as stack:
                key = create_vendor(env, "bench")
                for count in (1, 2, 3):
                    stack.stop_workers()
                    stack.env["REMBG_URLS"] = ",".join(server.url for server in servers[:count])
                    for _ in range(args.workers):
                        stack.start_worker(contracts.QUEUE_BACKGROUND_REMOVAL)
                    wait_workers(conn, args.workers, stack)
                    run = queue_run(stack, key, conn, urls, f"s{count}", servers)
                    results.append((count, run))
                    print(f"queue, {args.workers} workers, {count} rembg server(s): {run['images']} jobs in "
                          f"{run['seconds']:.1f} s  {run['images_per_s']:.2f} images/s, {run['failed']} failed,"
                          f" per server {run['spread'][:count]}")
                    # The cores are shared with whatever else runs here: measure the direct loop
                    # again after each queue run and compare each run with the loops either side.
                    directs.append(direct_loop(servers[0].url, photos * args.repeat))
                    print_direct(f"after the {count}-server run", directs[-1])
        finally:
            photo_server.close()
            for server in servers:
                server.stop()
            redis_proc.terminate()
            redis_proc.wait(10)
    for index, (count, run) in enumerate(results):
        direct_rate = (directs[index]["images_per_s"] + directs[index + 1]["images_per_s"]) / 2
        print(f"ratio queue ({count} server{'s' if count > 1 else ''}) / direct loop (mean of the two loops "
              f"either side, {direct_rate:.2f} images/s): {run['images_per_s'] / direct_rate:.2f}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
