#!/usr/bin/env python3
"""Background removal: a direct rembg call against our queue end to end, at 1, 3, 6 and 12 MP.

Photos are built here (scikit-image's astronaut scaled to each size, with sensor-like noise so
they compress like real photos, JPEG quality 90). For each size, in one run:

1. direct: POST each photo to one `rembg s` (u2netp) for its default cut-out, one at a time,
   as a caller would without us;
2. queue: the same photos through HTTP -> Gunicorn -> Redis -> ``--workers`` `rq worker`s ->
   the same rembg server (the mask of u2netp's 320x320 input) -> the worker's cut-out (PNG at
   BG_PNG_COMPRESS_LEVEL) -> local storage -> SQLite, submitted with bulk-remove-bg and timed
   until the last job is finished;

and prints one table: images/s of each, their ratio, the rembg server's CPU per photo (user +
system time of its process, from /proc/<pid>/stat), the output bytes, and whether the stored
cut-out's alpha equals the direct call's bit for bit.

``--concurrency`` measures the rembg server alone instead (mask requests as the workers send
them): photos/s and CPU per photo for each OMP_NUM_THREADS x concurrent requests given.
``--encoders`` times each encoding of real cut-outs (PNG levels 1, 3, 6; WebP lossless and lossy).
``--png-level`` and ``--workers`` change the queue side (BG_PNG_COMPRESS_LEVEL, rq workers).

    .venv/bin/python scripts/bench_bg.py [--sizes 1,3,6,12] [--photos 3] [--workers 1]
    .venv/bin/python scripts/bench_bg.py --concurrency [--threads 1,2] [--clients 1,2,4] [--mp 3]
    .venv/bin/python scripts/bench_bg.py --encoders [--sizes 1,3,6,12]

Needs the rembg virtualenv (.venv-rembg) and models/u2netp.onnx: ./scripts/test or
./scripts/up make both. Everything shares this machine's cores; the load average is printed.
"""
from __future__ import annotations

import argparse
import functools
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import redis as redis_lib  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402
from rq import Worker  # noqa: E402

from core import contracts, rqjson  # noqa: E402
from jobs.imaging.background import MODEL_INPUT_SIDES, prepare  # noqa: E402
from tests.conftest import free_port, redis_server_binary, wait_for_port  # noqa: E402
from tests.rembg_servers import REMBG_BIN, RembgServer, ensure_model  # noqa: E402
from tests.stack import PhotoServer, Stack, create_vendor, running_stack, stack_env  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def make_photo(megapixels: float, seed: int) -> bytes:
    """A 4:3 JPEG of about ``megapixels``: the astronaut scaled up, plus noise (sigma 4)."""
    from skimage import data

    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = round(width * 3 / 4)
    base = Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, 4, (height, width, 3))
    image = Image.fromarray(np.clip(np.asarray(base) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime (fields 14, 15)


def server_pid(server: RembgServer) -> int:
    assert server.proc is not None
    return server.proc.pid


def session() -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    return http


def direct(server: RembgServer, photos: list[bytes]) -> dict[str, Any]:
    """Each photo's default cut-out from rembg, one after another."""
    http = session()
    outputs = []
    cpu_before, started = cpu_s(server_pid(server)), time.perf_counter()
    for data in photos:
        resp = http.post(f"{server.url}/api/remove", files={"file": ("photo.jpg", data, "image/jpeg")},
                         data={"model": "u2netp"}, timeout=300)
        resp.raise_for_status()
        outputs.append(resp.content)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "images_per_s": len(photos) / elapsed, "outputs": outputs,
            "cpu_per_photo_s": (cpu_s(server_pid(server)) - cpu_before) / len(photos)}


def wait_workers(conn: redis_lib.Redis, count: int, stack: Stack) -> None:
    """Wait until ``count`` workers listen on background-removal."""
    queue = rqjson.queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=conn)
    deadline = time.monotonic() + 90
    while Worker.count(queue=queue) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not start:\n" + stack.logs())
        time.sleep(0.2)


def through_queue(stack: Stack, key: str, conn: redis_lib.Redis, server: RembgServer, urls: list[str],
                  label: str) -> dict[str, Any]:
    """Submit ``urls`` with bulk-remove-bg; time until every job is finished; fetch the outputs."""
    queue = rqjson.queue(contracts.QUEUE_BACKGROUND_REMOVAL, connection=conn)
    done_before = queue.finished_job_registry.count + queue.failed_job_registry.count
    cpu_before, started = cpu_s(server_pid(server)), time.perf_counter()
    resp = requests.post(f"{stack.base_url}/api/image-queue/bulk-remove-bg", timeout=30, headers={"X-API-Key": key},
                         json={"projectId": "bench", "recordIds": [f"{label}-{i}" for i in range(len(urls))],
                               "photoUrls": urls})
    resp.raise_for_status()
    job_ids = resp.json()["jobIds"]
    deadline = time.monotonic() + 900
    while queue.finished_job_registry.count + queue.failed_job_registry.count - done_before < len(job_ids):
        if time.monotonic() > deadline:
            raise RuntimeError("the jobs did not finish:\n" + stack.logs())
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    cpu = cpu_s(server_pid(server)) - cpu_before
    outputs = []
    for job_id in job_ids:
        body = requests.get(f"{stack.base_url}/api/image-queue/job/{job_id}", headers={"X-API-Key": key},
                            timeout=10).json()
        if body.get("state") != "completed":
            raise RuntimeError(f"job {job_id} {body.get('state')}: {body.get('error')}\n{stack.logs()}")
        outputs.append(requests.get(body["result"]["photoUrl"], timeout=30).content)
    return {"seconds": elapsed, "images_per_s": len(job_ids) / elapsed, "outputs": outputs,
            "cpu_per_photo_s": cpu / len(job_ids)}


def alpha_agreement(ours: list[bytes], theirs: list[bytes]) -> str:
    """'n/n' cut-outs whose alpha equals the direct call's bit for bit (else the worst pixel)."""
    same, worst = 0, 0
    for mine, reference in zip(ours, theirs, strict=True):
        a = np.asarray(Image.open(io.BytesIO(mine)).getchannel("A"))
        b = np.asarray(Image.open(io.BytesIO(reference)).getchannel("A"))
        if a.shape == b.shape and np.array_equal(a, b):
            same += 1
        else:
            worst = max(worst, int(np.abs(a.astype(int) - b.astype(int)).max()) if a.shape == b.shape else 255)
    return f"{same}/{len(ours)}" + ("" if same == len(ours) else f" (max diff {worst})")


def compare(args: argparse.Namespace) -> int:
    """Direct call vs the queue at each size; one table."""
    sizes = [float(size) for size in args.sizes.split(",")]
    photos = {size: [make_photo(size, seed) for seed in range(args.photos)] for size in sizes}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = RembgServer(tmp / "rembg.log", omp_threads=args.omp_threads)
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp_name], stdout=subprocess.DEVNULL)
        photo_server = PhotoServer()
        rows = []
        try:
            server.start()
            server.wait_ready()
            direct(server, [photos[sizes[0]][0]])  # the first call loads the model
            wait_for_port(redis_port)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            env = stack_env(redis_url=redis_url, database_url=f"sqlite:///{tmp / 'bench.sqlite3'}",
                            storage_dir=tmp / "files", port=free_port(),
                            extra={"LOG_LEVEL": "WARNING", "REMBG_URLS": server.url, "RATE_LIMIT_ENABLED": "false",
                                   "JOB_TIMEOUT_S": "300", "REMBG_READ_TIMEOUT_S": "300",
                                   **({"BG_PNG_COMPRESS_LEVEL": str(args.png_level)} if args.png_level is not None
                                      else {})})
            conn = redis_lib.Redis.from_url(redis_url)
            with running_stack(env, tmp / "logs") as stack:
                key = create_vendor(env, "bench")
                for _ in range(args.workers):
                    stack.start_worker(contracts.QUEUE_BACKGROUND_REMOVAL)
                wait_workers(conn, args.workers, stack)
                photo_server.files["/warm-up.jpg"] = photos[sizes[0]][0]
                through_queue(stack, key, conn, server, [photo_server.url("/warm-up.jpg")], "warm-up")
                for size in sizes:
                    urls = []
                    for index, data in enumerate(photos[size]):
                        photo_server.files[f"/{size}-{index}.jpg"] = data
                        urls.append(photo_server.url(f"/{size}-{index}.jpg"))
                    # Direct, queue, direct again: the cores are shared, so each side is measured twice.
                    first = direct(server, photos[size])
                    queued = through_queue(stack, key, conn, server, urls, f"q{size}")
                    second = direct(server, photos[size])
                    rows.append((size, first, second, queued))
                    print(f"{size:g} MP done", flush=True)
        finally:
            photo_server.close()
            server.stop()
            redis_proc.terminate()
            redis_proc.wait(10)
    print()
    print(f"{args.photos} photos per size; {args.workers} rq worker(s); 1 rembg server (u2netp, OMP_NUM_THREADS="
          f"{args.omp_threads or 'unset'}); {os.cpu_count()} CPU cores; load average (1 min) now "
          f"{os.getloadavg()[0]:.2f}")
    print("| MP | direct images/s | queue images/s | queue / direct | rembg CPU per photo, direct -> queue "
          "| output KiB, direct -> queue | alpha = direct |")
    print("|---|---|---|---|---|---|---|")
    for size, first, second, queued in rows:
        rate = (first["images_per_s"] + second["images_per_s"]) / 2
        cpu = (first["cpu_per_photo_s"] + second["cpu_per_photo_s"]) / 2
        kib = [sum(map(len, run["outputs"])) / len(run["outputs"]) / 1024 for run in (first, queued)]
        print(f"| {size:g} | {rate:.2f} | {queued['images_per_s']:.2f} | {queued['images_per_s'] / rate:.2f} "
              f"| {cpu:.2f} s -> {queued['cpu_per_photo_s']:.2f} s | {kib[0]:.0f} -> {kib[1]:.0f} "
              f"| {alpha_agreement(queued['outputs'], first['outputs'])} |")
    return 0


def concurrency(args: argparse.Namespace) -> int:
    """One rembg server alone, mask requests: photos/s and CPU per photo for threads x clients."""
    # What the workers send: u2netp's 320x320 input (jobs/imaging/background.py), not the photo.
    photos = [prepare(make_photo(args.mp, seed), max_pixels=10**9, model_side=MODEL_INPUT_SIDES["u2netp"]).data
              for seed in range(4)]
    print(f"u2netp masks of {args.mp:g} MP photos as the workers ask for them (the model's 320x320 input, om); "
          f"{args.requests} requests per cell; {os.cpu_count()} CPU cores")
    print("| OMP_NUM_THREADS | concurrent requests | photos/s | rembg CPU per photo | cores busy |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        for threads in [int(t) for t in args.threads.split(",")]:
            server = RembgServer(Path(tmp_name) / f"rembg-{threads}.log", omp_threads=threads)
            server.start()
            try:
                server.wait_ready()
                mask(server.url, photos[0])  # load the model
                for clients in [int(c) for c in args.clients.split(",")]:
                    cpu_before, started = cpu_s(server_pid(server)), time.perf_counter()
                    send_masks(server.url, photos, args.requests, clients)
                    elapsed = time.perf_counter() - started
                    cpu = cpu_s(server_pid(server)) - cpu_before
                    print(f"| {threads} | {clients} | {args.requests / elapsed:.2f} | {cpu / args.requests:.2f} s "
                          f"| {cpu / elapsed:.2f} |", flush=True)
            finally:
                server.stop()
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    return 0


def encoders(args: argparse.Namespace) -> int:
    """Time and size of each encoding of real cut-outs (u2netp masks from one rembg server)."""
    from jobs.imaging import cutout

    sizes = [float(size) for size in args.sizes.split(",")]
    variants: dict[str, Callable[[Image.Image], bytes]] = {
        **{f"PNG level {level}": functools.partial(cutout.encode_png, level=level) for level in (1, 3, 6)},
        "WebP lossless (method 0)": functools.partial(cutout.encode_webp, quality=None),
        "WebP lossy q90, exact alpha (method 0)": functools.partial(cutout.encode_webp, quality=90),
    }
    rows: dict[str, list[str]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp_name:
        server = RembgServer(Path(tmp_name) / "rembg.log", omp_threads=1)
        server.start()
        try:
            server.wait_ready()
            for size in sizes:
                prepared = prepare(make_photo(size, 0), max_pixels=10**9, model_side=MODEL_INPUT_SIDES["u2netp"])
                small = Image.open(io.BytesIO(mask(server.url, prepared.data)))
                cut = cutout.naive_cutout(prepared.image, small.resize(prepared.image.size, Image.Resampling.LANCZOS))
                for name, encode in variants.items():
                    started = time.process_time()
                    data = encode(cut)
                    rows[name].append(f"{time.process_time() - started:.2f} s, {len(data) / 1024:.0f} KiB")
        finally:
            server.stop()
    print(f"CPU time and size of one cut-out per size; {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| encoding | " + " | ".join(f"{size:g} MP" for size in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


def mask(url: str, data: bytes, http: requests.Session | None = None) -> bytes:
    resp = (http or session()).post(f"{url}/api/remove", files={"file": ("photo.png", data, "image/png")},
                                    data={"model": "u2netp", "om": "true"}, timeout=300)
    resp.raise_for_status()
    return resp.content


def send_masks(url: str, photos: list[bytes], count: int, clients: int) -> None:
    """``count`` mask requests over ``clients`` concurrent connections."""
    lock, sent = threading.Lock(), [0]

    def client() -> None:
        http = session()
        while True:
            with lock:
                if sent[0] >= count:
                    return
                index = sent[0]
                sent[0] += 1
            mask(url, photos[index % len(photos)], http)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments; run the comparison or the concurrency measurement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,3,6,12", help="megapixels, comma-separated (default 1,3,6,12)")
    parser.add_argument("--photos", type=int, default=3, help="photos per size (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="rq workers on background-removal (default 1)")
    parser.add_argument("--png-level", type=int, default=None, help="BG_PNG_COMPRESS_LEVEL (default: the setting's)")
    parser.add_argument("--omp-threads", type=int, default=1, help="OMP_NUM_THREADS of the rembg server (default 1)")
    parser.add_argument("--concurrency", action="store_true", help="measure the rembg server alone instead")
    parser.add_argument("--encoders", action="store_true", help="measure the cut-out encodings instead")
    parser.add_argument("--threads", default="1,2", help="--concurrency: OMP_NUM_THREADS values (default 1,2)")
    parser.add_argument("--clients", default="1,2,4", help="--concurrency: concurrent requests (default 1,2,4)")
    parser.add_argument("--mp", type=float, default=3, help="--concurrency: photo size in MP (default 3)")
    parser.add_argument("--requests", type=int, default=12, help="--concurrency: requests per cell (default 12)")
    args = parser.parse_args(argv)
    if not REMBG_BIN.exists():
        raise SystemExit(f"{REMBG_BIN} is missing: run ./scripts/test or ./scripts/up first")
    ensure_model()
    print(f"load average (1 min) at the start: {os.getloadavg()[0]:.2f}", flush=True)
    if args.encoders:
        return encoders(args)
    return concurrency(args) if args.concurrency else compare(args)


if __name__ == "__main__":
    sys.exit(main())
