#!/usr/bin/env python3
"""Batch face-crop throughput: a naive Haar pipeline beside ours with each detector (haar, yunet), in one run.

Builds ~40 portrait JPEGs of 1-3 MP in memory (scikit-image's LFW faces and astronaut pasted
at realistic sizes on photo backdrops, some stored sideways with an EXIF orientation), then:

1. single process, the pipelines interleaved image by image: ms/image and where the time goes
   (each step's ms and share: decode, detect, crop, encode), and recall against the known
   face boxes;
2. the plain-loop limit: the same decode+detect+crop+encode code over the same images, one
   process per core (``multiprocessing.Pool(os.cpu_count())``), the pipelines alternated
   over ``--rounds`` rounds: images/s, images/s per core and the speed-up;
3. end to end through the running stack, once per detector (FACE_DETECTOR), then ingest and
   fairness figures (with the default detector).

    .venv/bin/python scripts/bench_batch.py [--photos 40] [--rounds 3] [--face-range 0.10 0.55]

"naive" is the pipeline issue 4 measures against: full JPEG decode, OpenCV's default frontal
Haar cascade on a gray copy at most 1024 px long, scaleFactor 1.1, minNeighbors 5, minSize 40,
largest face, square crop (padding 0.20) from the full image, 300x300 JPEG. "haar" and "yunet"
are ``jobs.imaging.face_crop.process(..., "square", profile="batch", detector=...)`` as the
batch job runs it with that detector.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from core import rqjson  # noqa: E402
from core.contracts import CropOptions  # noqa: E402
from core.errors import PermanentJobError  # noqa: E402
from jobs.imaging import face_crop  # noqa: E402

# Portrait sizes (width, height) between 1 and 3 megapixels.
SIZES = [(900, 1200), (1200, 1600), (1500, 2000), (1080, 1350), (1400, 1750), (1200, 1500), (1000, 1400)]
STEPS = ("decode", "detect", "crop", "encode")
ASTRO_FACE = (172, 60, 275, 175)  # x0, y0, x1, y1 of the astronaut's face in the 512 px photo
# A box "finds" the face when its intersection over union with the true box is at least this.
MIN_IOU = 0.3
Box = tuple[int, int, int, int]
Crop = Callable[..., face_crop.CropResult]


# --- photos -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Portrait:
    """A JPEG and its true face box (x0, y0, x1, y1) in displayed (EXIF-rotated) pixels."""

    data: bytes
    face: tuple[float, float, float, float]
    size: tuple[int, int]


def _backdrops() -> list[np.ndarray | None]:
    from skimage import data

    # Photo backdrops (textures, a cat, a rocket) and plain studio gradients (None).
    return [data.coffee(), data.rocket(), data.chelsea(), data.immunohistochemistry(), None, None]


def portrait_set(n: int, seed: int = 0, face_range: tuple[float, float] = (0.10, 0.55)) -> list[Portrait]:
    """``n`` portraits with one known face each, its width log-uniform in ``face_range``
    (fractions of the photo's short side): LFW faces (4 in 5) and the astronaut (1 in 5)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    astro = data.astronaut()
    lfw = data.lfw_subset()[:100]  # the first 100 patches are faces
    backdrops = _backdrops()
    photos = []
    for i in range(n):
        canvas: np.ndarray
        width, height = SIZES[i % len(SIZES)]
        backdrop = backdrops[i % len(backdrops)]
        if backdrop is None:
            colour = rng.integers(140, 235, 3).astype(np.float32)
            shade = np.linspace(1.0, 0.8, height, dtype=np.float32)[:, None, None]
            noise = rng.normal(0, 4, (height, width, 1)).astype(np.float32)
            canvas = (colour * shade + noise).clip(0, 255).astype(np.uint8)
        else:
            canvas = cv2.GaussianBlur(cv2.resize(backdrop, (width, height), interpolation=cv2.INTER_CUBIC),
                                      (0, 0), 3)
        low, high = face_range
        face_w = round(float(np.exp(rng.uniform(np.log(low), np.log(high)))) * min(width, height))
        if i % 5 == 0:
            # Astronaut head and shoulders; his face box is 103/512 of that photo's width.
            side = round(face_w * 512 / (ASTRO_FACE[2] - ASTRO_FACE[0]))
            subject = cv2.resize(astro, (side, side), interpolation=cv2.INTER_CUBIC if side > 512 else cv2.INTER_AREA)
            x = round(rng.uniform(0, width - side)) if side < width else (width - side) // 2
            y = max(height - side, round(height * 0.05))
            x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + side), min(height, y + side)
            canvas[y0:y1, x0:x1] = subject[y0 - y:y1 - y, x0 - x:x1 - x]
            s = side / 512
            face = (x + ASTRO_FACE[0] * s, y + ASTRO_FACE[1] * s, x + ASTRO_FACE[2] * s, y + ASTRO_FACE[3] * s)
        else:
            patch = (lfw[(i * 7) % len(lfw)] * 255).astype(np.uint8)
            x = round(rng.uniform(0.05, 0.95) * (width - face_w))
            y = round(rng.uniform(0.1, 0.5) * (height - face_w))
            canvas[y:y + face_w, x:x + face_w] = cv2.resize(patch, (face_w, face_w),
                                                          interpolation=cv2.INTER_CUBIC)[:, :, None]
            face = (x, y, x + face_w, y + face_w)
        image = Image.fromarray(canvas)
        buf = io.BytesIO()
        if i % 8 == 3:
            # Stored sideways as a phone does, with EXIF orientation 6 to turn it upright.
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif)
        else:
            image.save(buf, "JPEG", quality=90)
        photos.append(Portrait(buf.getvalue(), face, (width, height)))
    return photos


def make_portraits(n: int) -> list[bytes]:
    """``n`` portrait JPEGs of 1-3 MP, each with one face 10-55 % of its short side."""
    return [p.data for p in portrait_set(n)]


# --- the two pipelines --------------------------------------------------------------------
_naive_cascade: Any = None


def naive_process(data: bytes, timings: dict[str, float] | None = None) -> face_crop.CropResult:
    """The naive pipeline: full decode, default cascade at <= 1024 px (1.1, 5, 40), square crop."""
    global _naive_cascade
    if _naive_cascade is None:
        _naive_cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades,  # type: ignore[attr-defined]
                                                            "haarcascade_frontalface_default.xml"))
    t0 = time.perf_counter()
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    bgr = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
    t1 = time.perf_counter()
    height, width = bgr.shape[:2]
    scale = min(1.0, 1024 / max(width, height))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    found = _naive_cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    faces: list[Box] = sorted(((round(x / scale), round(y / scale), round(w / scale), round(h / scale))
                               for x, y, w, h in found), key=lambda b: -b[2] * b[3])
    t2 = time.perf_counter()
    if not faces:
        raise PermanentJobError("no face", code="NO_FACE")
    out = face_crop.crop_face(bgr, faces[0], "square", CropOptions())
    t3 = time.perf_counter()
    encoded, content_type, extension = face_crop.encode_image(out, "jpeg", 92)
    t4 = time.perf_counter()
    if timings is not None:
        for step, seconds in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            timings[step] = timings.get(step, 0.0) + seconds
    x, y, w, h = faces[0]
    return face_crop.CropResult(encoded, content_type, extension, True, len(faces),
                                {"x": x, "y": y, "width": w, "height": h}, 300, 300,
                                faces=tuple(faces))


def haar_process(data: bytes, timings: dict[str, float] | None = None) -> face_crop.CropResult:
    """Our pipeline as the batch job runs it with FACE_DETECTOR=haar: square mode, the ``batch`` profile."""
    return face_crop.process(data, "square", CropOptions(), profile="batch", timings=timings, detector="haar")


def yunet_process(data: bytes, timings: dict[str, float] | None = None) -> face_crop.CropResult:
    """Our pipeline as the batch job runs it with FACE_DETECTOR=yunet (the default)."""
    return face_crop.process(data, "square", CropOptions(), profile="batch", timings=timings, detector="yunet")


PIPELINES: dict[str, Crop] = {"naive": naive_process, "haar": haar_process, "yunet": yunet_process}


# --- measuring ----------------------------------------------------------------------------
def _run_one(args: tuple[Crop, bytes]) -> tuple[face_crop.CropResult | None, float]:
    """``func(data)`` (None on a permanent error such as no face) and the CPU seconds it took."""
    func, data = args
    cpu = time.process_time()
    try:
        result: face_crop.CropResult | None = func(data)
    except PermanentJobError:
        result = None
    return result, time.process_time() - cpu


WARM_UP: list[bytes] = []  # set before the pool forks: one photo each worker runs first


def _warm(_: int) -> int:
    face_crop.preload("yunet")
    for func in PIPELINES.values():
        for data in WARM_UP:
            _run_one((func, data))
    return os.getpid()


def plain_loop(func: Crop, images: list[bytes], processes: int,
               pool: Any | None = None) -> dict[str, Any]:
    """Run ``func`` over ``images`` with ``processes`` worker processes (1: in this process).

    Returns images, wall seconds, images/s, images/s per process, the CPU seconds the
    workers spent in ``func`` (less disturbed than wall time by other work on the machine)
    and the results (None where ``func`` raised a permanent error such as no face).
    """
    start = time.perf_counter()
    if processes == 1:
        runs = [_run_one((func, data)) for data in images]
    else:
        assert pool is not None, "pass a Pool of `processes` workers"
        runs = pool.map(_run_one, [(func, data) for data in images], chunksize=1)
    seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": seconds, "images_per_s": len(images) / seconds,
            "per_core": len(images) / seconds / processes, "cpu_seconds": sum(cpu for _, cpu in runs),
            "results": [result for result, _ in runs]}


def step_profile(photos: list[Portrait]) -> dict[str, dict[str, Any]]:
    """Single process, the pipelines interleaved image by image: ms/image and step shares."""
    steps = {name: dict.fromkeys(STEPS, 0.0) for name in PIPELINES}
    per_image: dict[str, list[float]] = {name: [] for name in PIPELINES}
    results: dict[str, list[face_crop.CropResult | None]] = {name: [] for name in PIPELINES}
    for index, photo in enumerate(photos):
        names = list(PIPELINES) if index % 2 == 0 else list(reversed(PIPELINES))
        for name in names:
            t0 = time.perf_counter()
            try:
                result: face_crop.CropResult | None = PIPELINES[name](photo.data, timings=steps[name])
            except PermanentJobError:
                result = None
            per_image[name].append((time.perf_counter() - t0) * 1000)
            results[name].append(result)
    summary = {}
    for name in PIPELINES:
        total = sum(steps[name].values()) or 1.0
        summary[name] = {"mean_ms": statistics.fmean(per_image[name]),
                         "p50_ms": float(np.percentile(per_image[name], 50)),
                         "p95_ms": float(np.percentile(per_image[name], 95)),
                         "step_ms": {s: steps[name][s] * 1000 / len(photos) for s in STEPS},
                         "share": {s: steps[name][s] / total for s in STEPS},
                         "results": results[name]}
    return summary


def _iou(box: Box, truth: tuple[float, float, float, float]) -> float:
    x, y, w, h = box
    ix = max(0.0, min(x + w, truth[2]) - max(x, truth[0]))
    iy = max(0.0, min(y + h, truth[3]) - max(y, truth[1]))
    inter = ix * iy
    return inter / (w * h + (truth[2] - truth[0]) * (truth[3] - truth[1]) - inter)


def recall(photos: list[Portrait], results: list[face_crop.CropResult | None]) -> dict[str, int]:
    """found: a box on the true face; cropped: the largest box (the one cropped) is it; false: other boxes."""
    found = cropped = false = 0
    for photo, result in zip(photos, results, strict=True):
        boxes = list(result.faces) if result is not None else []
        hits = [_iou(box, photo.face) >= MIN_IOU for box in boxes]
        found += any(hits)
        cropped += bool(hits) and hits[0]
        false += hits.count(False)
    return {"found": found, "cropped": cropped, "false": false, "total": len(photos)}


# ---------------------------------------------------------------------------------------------
# End to end: the running stack (private Redis, Gunicorn, rq workers, local storage, SQLite).


class BenchStack:
    """A private redis-server plus the API; workers are started per section."""

    def __init__(self, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        from tests.conftest import free_port, redis_server_binary, wait_for_port
        from tests.stack import running_stack, stack_env

        self.tmp = tmp
        port = free_port()
        self.redis_proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp)], stdout=subprocess.DEVNULL)
        wait_for_port(port)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        env = stack_env(redis_url=self.redis_url, database_url=f"sqlite:///{tmp / 'bench.sqlite3'}",
                        storage_dir=tmp / "files", port=free_port(),
                        extra={"LOG_LEVEL": "WARNING", "GUNICORN_ACCESSLOG": "", "RATE_LIMIT_ENABLED": "false",
                               **(extra_env or {})})
        self._cm = running_stack(env, tmp / "logs")
        self.stack = self._cm.__enter__()
        from tests.stack import create_vendor

        self.keys = {vendor: create_vendor(env, vendor) for vendor in ("vendor-a", "vendor-b")}

    def redis(self) -> Any:
        import redis as redis_lib

        return redis_lib.Redis.from_url(self.redis_url)

    def start_workers(self, queues: tuple[str, ...], count: int) -> None:
        from rq import Worker

        conn = self.redis()
        queue = rqjson.queue(queues[0], connection=conn)
        before = Worker.count(queue=queue)
        for _ in range(count):
            self.stack.start_worker(*queues)
        deadline = time.monotonic() + 60
        while Worker.count(queue=queue) < before + count:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start:\n" + self.stack.logs())
            time.sleep(0.1)

    def upload(self, vendor: str, path: Path, priority: int = 5) -> dict[str, Any]:
        import requests

        with path.open("rb") as handle:
            resp = requests.post(f"{self.stack.base_url}/api/batch/upload-zip", timeout=600,
                                 headers={"X-API-Key": self.keys[vendor]},
                                 data={"projectId": "bench", "priority": str(priority)},
                                 files={"file": (path.name, handle, "application/zip")})
        resp.raise_for_status()
        return resp.json()

    def batch(self, vendor: str, batch_id: str) -> dict[str, Any]:
        import requests

        resp = requests.get(f"{self.stack.base_url}/api/batch/status/{batch_id}",
                            headers={"X-API-Key": self.keys[vendor]}, timeout=10)
        resp.raise_for_status()
        return resp.json()["batch"]

    def wait_status(self, vendor: str, batch_id: str, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            batch = self.batch(vendor, batch_id)
            if batch["status"] in statuses:
                return batch
            if time.monotonic() > deadline:
                raise RuntimeError(f"batch {batch_id} still {batch['status']}: {batch}\n{self.stack.logs()}")
            time.sleep(0.1)

    def api_peak_rss_kb(self) -> int:
        """Largest VmHWM among the Gunicorn processes (master and workers)."""
        pids = [self.stack.api.pid]
        children = Path(f"/proc/{self.stack.api.pid}/task/{self.stack.api.pid}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
        peaks = []
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]))
        return max(peaks)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self.redis_proc.terminate()
        self.redis_proc.wait(10)


def write_zip(path: Path, entries: Iterator[tuple[str, bytes]], compress: bool = False) -> int:
    """Write a ZIP from (name, bytes) pairs; returns the entry count."""
    count = 0
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
            count += 1
    return count


def e2e_zip(photos: list[bytes], count: int, workers: int, detector: str = "yunet") -> dict[str, Any]:
    """A ZIP of ``count`` portrait JPEGs through the running stack (FACE_DETECTOR=``detector``): images/s."""
    from core import contracts

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        zip_path = tmp / "portraits.zip"
        write_zip(zip_path, ((f"p{i:05d}.jpg", photos[i % len(photos)]) for i in range(count)))
        zip_mb = zip_path.stat().st_size / 1e6
        bench = BenchStack(tmp, {"FACE_DETECTOR": detector})
        try:
            bench.start_workers((contracts.QUEUE_BATCH_INGESTION,), 1)
            bench.start_workers(contracts.FACE_DETECTION_QUEUES, workers)
            started = time.perf_counter()
            body = bench.upload("vendor-a", zip_path)
            batch = bench.wait_status("vendor-a", body["batchId"], ("completed", "completed_with_errors", "failed"),
                                      timeout=3600)
            elapsed = time.perf_counter() - started
        finally:
            bench.close()
    return {"images": batch["imageCount"], "failed": batch["progress"]["failed"], "seconds": elapsed,
            "images_per_s": batch["imageCount"] / elapsed, "status": batch["status"],
            "zip_mb": zip_mb}


def tiny_jpeg() -> bytes:
    """A real 16x16 JPEG (about 600 bytes)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 150, 120)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def e2e_ingest(entries: int) -> dict[str, Any]:
    """Upload and ingest a ZIP of ``entries`` tiny images with no face-detection workers running."""

    from core import contracts
    from core.batch_plan import ingest_job_id

    data = tiny_jpeg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        zip_path = tmp / "small.zip"
        write_zip(zip_path, ((f"dir{i // 1000}/img{i:06d}.jpg", data) for i in range(entries)))
        zip_mb = zip_path.stat().st_size / 1e6
        bench = BenchStack(tmp, {"BATCH_VENDOR_CONCURRENCY": "4"})
        try:
            bench.start_workers((contracts.QUEUE_BATCH_INGESTION,), 1)
            conn = bench.redis()
            memory_before = int(conn.info("memory")["used_memory"])
            rss_before = bench.api_peak_rss_kb()
            started = time.perf_counter()
            body = bench.upload("vendor-a", zip_path)
            uploaded = time.perf_counter() - started
            batch = bench.wait_status("vendor-a", body["batchId"], ("processing", "failed"), timeout=3600)
            elapsed = time.perf_counter() - started
            memory_after = int(conn.info("memory")["used_memory"])
            job = rqjson.fetch(ingest_job_id(body["batchId"]), connection=conn)
            result = job.return_value() or {}
            api_rss = bench.api_peak_rss_kb()
        finally:
            bench.close()
    return {"entries": entries, "zip_mb": zip_mb, "upload_s": uploaded, "seconds": elapsed,
            "entries_per_s": entries / elapsed, "queued": batch["queued"], "status": batch["status"],
            "redis_bytes_per_pending": (memory_after - memory_before) / max(batch["imageCount"], 1),
            "ingest_peak_rss_mb": result.get("peakRssKb", 0) / 1024, "api_peak_rss_mb": api_rss / 1024,
            "api_peak_rss_before_mb": rss_before / 1024}


def e2e_fairness(photo: bytes, backlog: int, workers: int) -> dict[str, Any]:
    """Vendor B's one-image batch while vendor A has ``backlog`` images queued at the same priority."""
    import requests

    from core import contracts
    from tests.stack import PhotoServer

    server = PhotoServer()
    server.files["/p.jpg"] = photo
    with tempfile.TemporaryDirectory() as tmp_name:
        bench = BenchStack(Path(tmp_name), {"BATCH_MAX_IMAGES_PER_REQUEST": str(max(backlog, 1))})
        try:
            url = server.url("/p.jpg")
            resp = requests.post(f"{bench.stack.base_url}/api/batch/add-images", timeout=600,
                                 headers={"X-API-Key": bench.keys["vendor-a"]},
                                 json={"projectId": "bench", "images": [{"recordId": f"a{i}", "imageUrl": url}
                                                                        for i in range(backlog)]})
            resp.raise_for_status()
            a_id = resp.json()["batchId"]
            bench.start_workers(contracts.FACE_DETECTION_QUEUES, workers)
            time.sleep(3)  # A's work is under way
            started = time.perf_counter()
            resp = requests.post(f"{bench.stack.base_url}/api/batch/add-images", timeout=60,
                                 headers={"X-API-Key": bench.keys["vendor-b"]},
                                 json={"projectId": "bench", "images": [{"recordId": "b0", "imageUrl": url}]})
            resp.raise_for_status()
            bench.wait_status("vendor-b", resp.json()["batchId"], ("completed", "completed_with_errors"), timeout=600)
            waited = time.perf_counter() - started
            a_batch = bench.batch("vendor-a", a_id)
        finally:
            bench.close()
            server.close()
    return {"backlog": backlog, "b_wait_s": waited, "a_processed": a_batch["progress"]["processed"],
            "a_remaining": a_batch["imageCount"] - a_batch["progress"]["processed"]}


# --- report -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Build the portraits, measure naive and ours, print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=40, help="number of portraits (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="portrait generator seed (default 0)")
    parser.add_argument("--face-range", type=float, nargs=2, default=(0.10, 0.55), metavar=("LOW", "HIGH"),
                        help="face width as a fraction of the short side (default 0.10 0.55)")
    parser.add_argument("--rounds", type=int, default=3, help="plain-loop rounds, naive and ours alternated")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="plain-loop worker processes (default: one per core)")
    parser.add_argument("--e2e-images", type=int, default=2000, help="end to end: JPEGs in the ZIP (default 2000)")
    parser.add_argument("--ingest-entries", type=int, default=100_000, help="ingest: small entries (default 100000)")
    parser.add_argument("--backlog", type=int, default=10_000, help="fairness: vendor A's queued images")
    parser.add_argument("--skip-e2e", action="store_true", help="only the in-process measurements")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    t0 = time.perf_counter()
    photos = portrait_set(args.photos, args.seed, tuple(args.face_range))
    images = [p.data for p in photos]
    mp = [w * h / 1e6 for w, h in (p.size for p in photos)]
    print(f"built {len(photos)} JPEG portraits, {min(mp):.1f}-{max(mp):.1f} MP,"
          f" {sum(map(len, images)) / len(images) / 1024:.0f} KiB avg, faces {args.face_range[0]:.0%}-"
          f"{args.face_range[1]:.0%} of the short side, in {time.perf_counter() - t0:.1f} s")
    face_crop.preload("yunet")
    for func in PIPELINES.values():
        _run_one((func, images[0]))  # warm-up: first-call allocations
    names = list(PIPELINES)

    # 1. Single process, step shares, recall.
    single = step_profile(photos)
    print(f"\nsingle process (cv2 threads={cv2.getNumThreads()}), {', '.join(names)} interleaved per image:")
    for name, s in single.items():
        print(f"  {name:5s} ms/image mean {s['mean_ms']:6.1f}  p50 {s['p50_ms']:6.1f}  p95 {s['p95_ms']:6.1f}   "
              + "  ".join(f"{step} {s['step_ms'][step]:5.1f} ms ({s['share'][step]:.0%})" for step in STEPS))
    for name in names[1:]:
        print(f"  speed-up (mean ms/image naive / {name}): {single['naive']['mean_ms'] / single[name]['mean_ms']:.2f}x")
    for name in names[1:]:
        twice = sum(r is not None and r.decodes > 1 for r in single[name]["results"])
        print(f"  {name} decoded {twice}/{len(photos)} photos twice (crop needed more pixels than detection)")
    print(f"\nrecall (a box with IoU >= {MIN_IOU} on the true face; 'cropped': the largest box is it):")
    for name, s in single.items():
        r = recall(photos, s["results"])
        print(f"  {name:5s} found {r['found']}/{r['total']}  cropped {r['cropped']}/{r['total']}"
              f"  false boxes {r['false']}")

    # 2. Plain-loop limit: one process per core.
    processes = args.processes
    WARM_UP[:] = images[:1]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PIPELINES}
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_warm, range(processes), chunksize=1)
        for round_no in range(args.rounds):
            order = names if round_no % 2 == 0 else list(reversed(names))
            for name in order:
                runs[name].append(plain_loop(PIPELINES[name], images, processes, pool))
    print(f"\nplain-loop limit: {len(images)} images x {args.rounds} rounds, {processes} processes"
          f" on {os.cpu_count()} cores, {', '.join(names)} alternated:")
    rate, cpu_ms = {}, {}
    for name, name_runs in runs.items():
        total_images = sum(r["images"] for r in name_runs)
        rate[name] = total_images / sum(r["seconds"] for r in name_runs)
        cpu_ms[name] = sum(r["cpu_seconds"] for r in name_runs) * 1000 / total_images
        rounds = "  ".join(f"{r['images_per_s']:.2f}" for r in name_runs)
        print(f"  {name:5s} {rate[name]:6.2f} images/s  = {rate[name] / processes:5.2f} images/s per core"
              f"   CPU {cpu_ms[name]:6.1f} ms/image = {1000 / cpu_ms[name]:5.1f} images/s per CPU second"
              f"   (rounds: {rounds} images/s)")
    for name in names[1:]:
        print(f"  speed-up {name} / naive: {rate[name] / rate['naive']:.2f}x in images/s,"
              f" {cpu_ms['naive'] / cpu_ms[name]:.2f}x in CPU time per image")
    if "haar" in rate and "yunet" in rate:
        print(f"  speed-up yunet / haar: {rate['yunet'] / rate['haar']:.2f}x in images/s,"
              f" {cpu_ms['haar'] / cpu_ms['yunet']:.2f}x in CPU time per image")

    # 3. End to end through the running stack (HTTP -> Gunicorn -> Redis -> rq workers -> storage -> DB).
    if args.skip_e2e:
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return 0
    for name in ("haar", "yunet"):
        e2e = e2e_zip(images, args.e2e_images, processes, detector=name)
        print(f"\nend to end, FACE_DETECTOR={name}: a ZIP of {e2e['images']} portrait JPEGs (the photos above,"
              f" repeated; {e2e['zip_mb']:.0f} MB) uploaded, ingested and cropped by {processes} face-detection"
              " workers:")
        print(f"  {e2e['seconds']:.1f} s, {e2e['images_per_s']:.2f} images/s"
              f" = {e2e['images_per_s'] / processes:.2f} images/s per core, status {e2e['status']},"
              f" {e2e['failed']} failed")
        print(f"  ratio end-to-end / plain-loop limit ({name}, {processes} processes):"
              f" {e2e['images_per_s'] / rate[name]:.2f}")

    ingest = e2e_ingest(args.ingest_entries)
    print(f"\ningest: a ZIP of {ingest['entries']} small JPEG entries ({ingest['zip_mb']:.1f} MB),"
          " no face-detection worker running:")
    print(f"  upload {ingest['upload_s']:.1f} s; upload + ingest {ingest['seconds']:.1f} s ="
          f" {ingest['entries_per_s']:.0f} entries/s; {ingest['queued']} queued; status {ingest['status']}")
    print(f"  peak RSS: ingest work-horse {ingest['ingest_peak_rss_mb']:.0f} MB, API (largest Gunicorn process)"
          f" {ingest['api_peak_rss_mb']:.0f} MB (before the upload {ingest['api_peak_rss_before_mb']:.0f} MB)")
    print(f"  Redis used_memory per pending image: {ingest['redis_bytes_per_pending']:.1f} bytes")

    fair = e2e_fairness(images[0], args.backlog, processes)
    print(f"\nfairness: vendor A has {fair['backlog']} images queued (same priority); vendor B sends one:")
    print(f"  B's image done after {fair['b_wait_s']:.1f} s; meanwhile A: {fair['a_processed']} processed,"
          f" {fair['a_remaining']} still waiting")

    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
