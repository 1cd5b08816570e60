#!/usr/bin/env python3
"""Face-crop throughput per detector (haar and yunet side by side): a plain loop, and the full
path through the running stack, in one run.

Builds ~30 portrait JPEGs of 1-3 MP in memory from scikit-image's astronaut and LFW faces,
runs ``jobs.imaging.face_crop.process`` over them in one process (one OpenCV thread, as a worker
does) for each detector and prints ms/image (mean, p50, p95), images/s and where the time goes
(each step's ms and share: decode, detect, level (passport/idcard), crop, encode, and the source
and output thumbnails the workers keep, ``--thumbnail-px``, THUMBNAIL_MAX_PX's default 256).

    .venv/bin/python scripts/bench_crop.py [--photos 30] [--mode square] [--detectors haar yunet]

Then it starts the stack (private Redis, Gunicorn, the dev stack's 3 + 5 workers on the
face-crop queue, local storage, SQLite), submits the same photos (each ``--repeat`` times)
through bulk-crop-face with ``options.detector`` set, once per detector, and prints images/s end
to end and its ratio to the plain loop.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from core import rqjson  # noqa: E402
from core.contracts import CROP_MODES, CropOptions  # noqa: E402
from core.errors import PermanentJobError  # noqa: E402
from jobs.imaging import face_crop  # noqa: E402

# Portrait sizes (width, height) between 1 and 3 megapixels.
SIZES = [(900, 1200), (1200, 1600), (1500, 2000), (1080, 1350), (1400, 1750)]
STEPS = ("decode", "detect", "level", "crop", "encode", "thumbnails")
DETECTORS = ("haar", "yunet")


def make_photos(n: int = 30, seed: int = 0) -> list[bytes]:
    """``n`` portrait JPEGs (1-3 MP): the astronaut and upscaled LFW faces on varied backdrops."""
    from skimage import data

    rng = np.random.default_rng(seed)
    astro = Image.fromarray(data.astronaut())
    lfw = data.lfw_subset()[:100]  # the first 100 patches are faces
    photos = []
    for i in range(n):
        width, height = SIZES[i % len(SIZES)]
        backdrop = rng.integers(150, 235, 3)
        # A soft vertical gradient plus sensor-like noise, so JPEG sizes are realistic.
        shade = np.linspace(1.0, 0.8, height)[:, None, None]
        canvas = (backdrop[None, None, :] * shade
                  + rng.normal(0, 4, (height, width, 3))).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(canvas)
        if i % 2 == 0:
            # Astronaut head and shoulders, face 25-40 % of the photo's width.
            side = round(width * rng.uniform(0.95, 1.35))
            subject = astro.resize((side, side), Image.Resampling.BICUBIC)
            x = (width - side) // 2 + round(rng.uniform(-0.08, 0.08) * width)
            image.paste(subject, (x, height - side))
        else:
            # An LFW face (tightly cropped) upscaled to 35-50 % of the width, upper half.
            patch = (lfw[rng.integers(len(lfw))] * 255).astype(np.uint8)
            side = round(width * rng.uniform(0.35, 0.5))
            face = Image.fromarray(patch).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
            image.paste(face, ((width - side) // 2, round(height * 0.2)))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    return photos


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def plain_loop(images: list[bytes], mode: str = "square", options: CropOptions | None = None,
               thumbnail_px: int = 0) -> dict[str, Any]:
    """Run ``face_crop.process`` over ``images`` one after another; timing summary in ms.

    ``thumbnail_px`` > 0 also makes the source and output thumbnails, as the workers do
    (THUMBNAIL_MAX_PX); their cost shows as the ``thumbnails`` step.
    """
    options = options or CropOptions()
    face_crop.preload(options.detector or face_crop.DEFAULT_DETECTOR)  # as the worker parent does
    face_crop.process(images[0], mode, options)  # warm-up: first-call allocations
    steps = dict.fromkeys(STEPS, 0.0)
    per_image: list[float] = []
    detected = failed = 0
    start = time.perf_counter()
    for data in images:
        t0 = time.perf_counter()
        try:
            result = face_crop.process(data, mode, options, timings=steps, thumbnail_px=thumbnail_px)
            detected += result.face_detected
        except PermanentJobError:
            failed += 1
        per_image.append((time.perf_counter() - t0) * 1000)
    total_s = time.perf_counter() - start
    step_total = sum(steps.values()) or 1.0
    return {
        "label": f"plain loop ({mode}, 1 process, cv2 threads={cv2.getNumThreads()})",
        "images": len(images),
        "faces_detected": detected,
        "failed": failed,
        "mean_ms": statistics.fmean(per_image),
        "p50_ms": _percentile(per_image, 50),
        "p95_ms": _percentile(per_image, 95),
        "images_per_s": len(images) / total_s,
        "step_ms": {step: steps[step] * 1000 / len(images) for step in STEPS},
        "share": {step: steps[step] / step_total for step in STEPS},
    }


def print_summary(summaries: dict[str, dict[str, Any]]) -> None:
    """The plain loop of each detector, side by side."""
    names = list(summaries)
    first = summaries[names[0]]
    print(f"{first['label']}, {first['images']} images:")
    print("".ljust(26) + "".join(name.rjust(14) for name in names))
    rows = [("faces detected", lambda s: f"{s['faces_detected']}"), ("failed (no face)", lambda s: f"{s['failed']}"),
            ("images/s", lambda s: f"{s['images_per_s']:.2f}"), ("ms/image mean", lambda s: f"{s['mean_ms']:.1f}"),
            ("ms/image p50", lambda s: f"{s['p50_ms']:.1f}"), ("ms/image p95", lambda s: f"{s['p95_ms']:.1f}")]
    rows += [(f"  {step} ms (share)", lambda s, step=step: f"{s['step_ms'][step]:.1f} ({s['share'][step]:.0%})")
             for step in STEPS]
    for label, cell in rows:
        print(f"  {label}".ljust(26) + "".join(cell(summaries[name]).rjust(14) for name in names))


def full_path(photos: list[bytes], *, mode: str, repeat: int, face_crop_workers: int,
              image_processing_workers: int, detector: str = "yunet") -> dict[str, Any]:
    """Images/s through HTTP -> Gunicorn -> Redis -> rq workers -> local storage -> SQLite.

    Starts a private redis-server, Gunicorn and the dev stack's worker mix (``face_crop`` and
    ``image_processing`` Procfile lines, which both drain face-crop), submits every photo
    ``repeat`` times through bulk-crop-face and times until the last job has finished.
    """
    import subprocess
    import tempfile
    from pathlib import Path

    import redis as redis_lib
    import requests

    from core import contracts
    from tests.conftest import free_port, redis_server_binary, wait_for_port
    from tests.stack import PhotoServer, create_vendor, running_stack, stack_env

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp_name], stdout=subprocess.DEVNULL)
        server = PhotoServer()
        try:
            wait_for_port(redis_port)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            env = stack_env(redis_url=redis_url, database_url=f"sqlite:///{tmp / 'bench.sqlite3'}",
                            storage_dir=tmp / "files", port=free_port(),
                            extra={"LOG_LEVEL": "WARNING", "RATE_LIMIT_ENABLED": "false"})
            for index, data in enumerate(photos):
                server.files[f"/p{index}.jpg"] = data
            urls = [server.url(f"/p{index % len(photos)}.jpg") for index in range(len(photos) * repeat)]
            with running_stack(env, tmp / "logs") as stack:
                key = create_vendor(env, "bench")
                conn = redis_lib.Redis.from_url(redis_url)
                queue = rqjson.queue(contracts.QUEUE_FACE_CROP, connection=conn)
                # Submit everything first: Redis memory per queued job, then the workers' pace.
                memory_before = int(conn.info("memory")["used_memory"])
                submit_started = time.perf_counter()
                job_ids: list[str] = []
                for offset in range(0, len(urls), 100):
                    chunk = range(offset, min(offset + 100, len(urls)))
                    resp = requests.post(f"{stack.base_url}/api/image-queue/bulk-crop-face", timeout=30,
                                         headers={"X-API-Key": key},
                                         json={"projectId": "bench", "mode": mode, "options": {"detector": detector},
                                               "recordIds": [f"r{i}" for i in chunk],
                                               "photoUrls": [urls[i] for i in chunk]})
                    resp.raise_for_status()
                    job_ids += resp.json()["jobIds"]
                submitted = time.perf_counter() - submit_started
                bytes_per_job = (int(conn.info("memory")["used_memory"]) - memory_before) / len(job_ids)
                started = time.perf_counter()
                for _ in range(face_crop_workers):
                    stack.start_worker(contracts.QUEUE_FACE_CROP)
                for _ in range(image_processing_workers):
                    stack.start_worker(contracts.QUEUE_IMAGE_PROCESSING, contracts.QUEUE_FACE_CROP,
                                       contracts.QUEUE_BACKGROUND_REMOVAL)
                deadline = time.monotonic() + 600
                while True:
                    done = (queue.finished_job_registry.get_job_count(cleanup=False)
                            + queue.failed_job_registry.get_job_count(cleanup=False))
                    if done >= len(job_ids):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {done}/{len(job_ids)} jobs finished:\n" + stack.logs())
                    time.sleep(0.05)
                elapsed = time.perf_counter() - started
                failed = queue.failed_job_registry.count
        finally:
            server.close()
            redis_proc.terminate()
            redis_proc.wait(10)
    return {"images": len(job_ids), "seconds": elapsed, "submit_seconds": submitted,
            "images_per_s": len(job_ids) / elapsed, "failed": failed, "redis_bytes_per_job": bytes_per_job,
            "workers": face_crop_workers + image_processing_workers}


def main(argv: list[str] | None = None) -> int:
    """Build the photos, run the plain loop, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=30, help="number of photos (default 30)")
    parser.add_argument("--mode", choices=CROP_MODES, default="square")
    parser.add_argument("--repeat", type=int, default=4, help="full path: submit each photo this many times")
    parser.add_argument("--face-crop-workers", type=int, default=3, help="full path: Procfile face_crop workers")
    parser.add_argument("--image-processing-workers", type=int, default=5,
                        help="full path: Procfile image_processing workers (they drain face-crop too)")
    parser.add_argument("--no-full-path", action="store_true", help="only the plain loop")
    parser.add_argument("--thumbnail-px", type=int, default=256,
                        help="plain loop: thumbnails' long side as THUMBNAIL_MAX_PX (default 256; 0: none)")
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS),
                        help="face detectors to compare (default: both)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    photos = make_photos(args.photos)
    megapixels = [Image.open(io.BytesIO(p)).size for p in photos]
    mp = [w * h / 1e6 for w, h in megapixels]
    print(f"built {len(photos)} JPEG portraits, {min(mp):.1f}-{max(mp):.1f} MP,"
          f" {sum(map(len, photos)) / len(photos) / 1024:.0f} KiB avg, in {time.perf_counter() - t0:.1f} s")
    loops = {name: plain_loop(photos, args.mode, CropOptions(detector=name), args.thumbnail_px)
             for name in args.detectors}
    print_summary(loops)
    if len(loops) == 2:
        print(f"  speed-up yunet / haar: {loops['yunet']['images_per_s'] / loops['haar']['images_per_s']:.2f}x")
    if args.no_full_path:
        return 0
    cores = os.cpu_count() or 1
    for name in args.detectors:
        full = full_path(photos, mode=args.mode, repeat=args.repeat, face_crop_workers=args.face_crop_workers,
                         image_processing_workers=args.image_processing_workers, detector=name)
        print(f"full path, {name} (HTTP -> Gunicorn -> Redis -> {full['workers']} rq workers -> local storage"
              " -> SQLite):")
        print(f"  {full['images']} jobs ({args.repeat}x the same photos), {full['failed']} failed,"
              f" {full['seconds']:.1f} s from starting the workers (submitted first, in"
              f" {full['submit_seconds']:.2f} s)  {full['images_per_s']:.2f} images/s"
              f" = {full['images_per_s'] / cores:.2f} images/s per core")
        print(f"  Redis used_memory per queued job: {full['redis_bytes_per_job']:.0f} bytes")
        per_process = loops[name]["images_per_s"]
        print(f"  ratio full path / plain loop (1 process):        {full['images_per_s'] / per_process:.2f}")
        print(f"  ratio full path / plain loop x {cores} cores (limit):"
              f" {full['images_per_s'] / (per_process * cores):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
