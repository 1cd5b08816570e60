#!/usr/bin/env python3
"""Face-crop throughput: decode + detect + crop + encode per photo, in a plain loop.

Builds ~30 portrait JPEGs of 1-3 MP in memory from scikit-image's astronaut and LFW faces,
runs ``jobs.face_crop.process`` over them in one process (one OpenCV thread, as a worker
does) and prints ms/image (mean, p50, p95), images/s and each step's share of the time.

    .venv/bin/python scripts/bench_crop.py [--photos 30] [--mode square]

``make_photos`` and ``plain_loop`` are reusable: the full-path measurement (HTTP -> worker
-> storage -> DB) can run over the same photos in the same run and be printed beside it.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from jobs import face_crop  # noqa: E402
from jobs.contracts import CROP_MODES, CropOptions  # noqa: E402
from jobs.errors import PermanentJobError  # noqa: E402

# Portrait sizes (width, height) between 1 and 3 megapixels.
SIZES = [(900, 1200), (1200, 1600), (1500, 2000), (1080, 1350), (1400, 1750)]
STEPS = ("decode", "detect", "crop", "encode")


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


def plain_loop(images: list[bytes], mode: str = "square", options: CropOptions | None = None) -> dict[str, Any]:
    """Run ``face_crop.process`` over ``images`` one after another; timing summary in ms."""
    options = options or CropOptions()
    face_crop.preload()  # as the worker parent does before forking
    face_crop.process(images[0], mode, options)  # warm-up: first-call allocations
    steps = dict.fromkeys(STEPS, 0.0)
    per_image: list[float] = []
    detected = failed = 0
    start = time.perf_counter()
    for data in images:
        t0 = time.perf_counter()
        try:
            result = face_crop.process(data, mode, options, timings=steps)
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
        "share": {step: steps[step] / step_total for step in STEPS},
    }


def print_summary(summary: dict[str, Any]) -> None:
    """One block of text per measured path."""
    print(f"{summary['label']}: {summary['images']} images, {summary['faces_detected']} faces detected,"
          f" {summary['failed']} failed")
    print(f"  ms/image  mean {summary['mean_ms']:.1f}  p50 {summary['p50_ms']:.1f}"
          f"  p95 {summary['p95_ms']:.1f}   {summary['images_per_s']:.2f} images/s")
    if summary.get("share"):
        print("  share     " + "  ".join(f"{step} {share:.0%}" for step, share in summary["share"].items()))


def main(argv: list[str] | None = None) -> int:
    """Build the photos, run the plain loop, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=30, help="number of photos (default 30)")
    parser.add_argument("--mode", choices=CROP_MODES, default="square")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    photos = make_photos(args.photos)
    megapixels = [Image.open(io.BytesIO(p)).size for p in photos]
    mp = [w * h / 1e6 for w, h in megapixels]
    print(f"built {len(photos)} JPEG portraits, {min(mp):.1f}-{max(mp):.1f} MP,"
          f" {sum(map(len, photos)) / len(photos) / 1024:.0f} KiB avg, in {time.perf_counter() - t0:.1f} s")
    print_summary(plain_loop(photos, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
