#!/usr/bin/env python3
"""ID photos: framing accuracy per spec, bad inputs flagged, and cost beside a plain background removal.

Portraits are built in code (tests/portraits.py: scikit-image's astronaut upright, turned by
8-25 degrees, off-centre, large and small, on plain, dark, white, gradient and noise
backdrops). Each good portrait goes through the ID-photo path (jobs/imaging/id_photo.py) for
every built-in spec against one real `rembg s` (u2netp, one thread), and its output is measured
against the astronaut's *labelled* points carried through the job's own photo -> output map
(scripts/bench_faces_labels.json: iris centres, chin, top of the hair): head height (hair top to
chin) and eye line in mm, and the roll of the labelled eye line. A portrait is "in spec" when
both are inside the spec's ranges and |roll| <= 1 degree.

Bad inputs (two people, a tiny face, a blurred face, the head cut off) must fail with their
code, or complete with the named check failed.

Cost: on the same good portraits, one at a time, in one run: a plain rembg call (the photo POSTed
to `rembg s` for its default cut-out), our background removal path (jobs/imaging/background.py:
mask of the 320x320 model input, cut-out made and PNG-encoded here) and the ID photo; images/s
of each and the ID photo's time per photo over the plain removal's.

    .venv/bin/python scripts/bench_idphoto.py                     # starts its own rembg server
    .venv/bin/python scripts/bench_idphoto.py --rembg http://127.0.0.1:7000
    .venv/bin/python scripts/bench_idphoto.py --picture docs/images/id-photo-before-after.png
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.contracts import RemoveBgOptions  # noqa: E402
from core.errors import PermanentJobError  # noqa: E402
from core.id_photos import SPECS, IdPhotoOptions  # noqa: E402
from jobs.imaging import background, id_photo  # noqa: E402
from jobs.rembg_pool import RembgCall, RembgResult  # noqa: E402
from tests import portraits  # noqa: E402

MAX_ROLL = 1.0


class Direct:
    """A one-server mask source (the workers use the pool; the benchmark times the same HTTP calls)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()

    def remove(self, image: bytes, call: RembgCall, *, content_type: str = "image/png",
               filename: str = "photo.png") -> RembgResult:
        """POST /api/remove as the pool does."""
        resp = self.session.post(f"{self.url}/api/remove", files={"file": (filename, image, content_type)},
                                 data=call.form(), timeout=120)
        resp.raise_for_status()
        return RembgResult(resp.content, self.url)

    def plain(self, data: bytes) -> bytes:
        """rembg's own default cut-out of the photo."""
        resp = self.session.post(f"{self.url}/api/remove", files={"file": ("photo.jpg", data, "image/jpeg")},
                                 data={"model": "u2netp"}, timeout=120)
        resp.raise_for_status()
        return resp.content


def measure_truth(result: id_photo.IdPhotoResult, points: dict[str, tuple[float, float]],
                  height_mm: float) -> tuple[float, float, float]:
    """(head mm, eye line mm above the bottom, roll degrees) of the labelled points in the output."""
    matrix = result.transform
    out = {name: matrix @ np.array([x, y, 1.0]) for name, (x, y) in points.items()}
    per_mm = result.height / height_mm
    head = (out["chin"][1] - out["hair_top"][1]) / per_mm
    eyes_y = (out["right_eye"][1] + out["left_eye"][1]) / 2
    eye = (result.height - eyes_y) / per_mm
    right, left = out["right_eye"], out["left_eye"]
    roll = math.degrees(math.atan2(left[1] - right[1], left[0] - right[0]))
    return head, eye, roll


def framing(source: Direct, photos: dict[str, bytes]) -> dict[str, list[str]]:
    """Print each spec's in-spec share; returns the misses per spec."""
    misses: dict[str, list[str]] = {}
    print(f"{'spec':9s} {'in spec':>9s} {'head mm (min-max)':>19s} {'eyes mm (min-max)':>19s} {'max |roll|':>10s}")
    for name, spec in SPECS.items():
        heads, eyes, rolls, missed = [], [], [], []
        for label, data in photos.items():
            points = portraits.portrait_points(**portraits.GOOD_ARGS[label])
            try:
                result = id_photo.process(data, spec, IdPhotoOptions(), source)
            except PermanentJobError as exc:
                missed.append(f"{label}: {exc.code}")
                continue
            head, eye, roll = measure_truth(result, points, spec.height_mm)
            heads.append(head)
            eyes.append(eye)
            rolls.append(abs(roll))
            ok = (spec.head_min_mm <= head <= spec.head_max_mm and spec.eye_min_mm <= eye <= spec.eye_max_mm
                  and abs(roll) <= MAX_ROLL)
            if not ok:
                missed.append(f"{label}: head {head:.1f} eyes {eye:.1f} roll {roll:.2f}")
        good = len(photos) - len(missed)
        print(f"{name:9s} {good:>3d}/{len(photos):<3d}{100 * good / len(photos):4.0f}% "
              f"{min(heads):8.1f}-{max(heads):4.1f} ({spec.head_min_mm:g}-{spec.head_max_mm:g})"
              f" {min(eyes):6.1f}-{max(eyes):4.1f} ({spec.eye_min_mm:g}-{spec.eye_max_mm:g}) {max(rolls):9.2f}")
        misses[name] = missed
    return misses


def bad_inputs(source: Direct) -> int:
    """Print how each bad input was flagged; returns how many were flagged rightly (all specs)."""
    right = total = 0
    for label, (make, expected) in portraits.BAD.items():
        data = portraits.jpeg(make())
        for name, spec in SPECS.items():
            total += 1
            try:
                result = id_photo.process(data, spec, IdPhotoOptions(), source)
                failed = [check.name for check in result.report.checks if not check.passed]
                got = "completed, failed checks: " + (", ".join(failed) or "none")
                flagged = expected.startswith("check:") and expected[6:] in failed and not result.report.compliant
            except PermanentJobError as exc:
                got, flagged = exc.code, exc.code == expected
            right += flagged
            if name == "icao" or not flagged:
                print(f"  {label:13s} {name:9s} expected {expected:17s} got {got:40s} {'ok' if flagged else 'MISSED'}")
    print(f"bad inputs flagged rightly: {right}/{total} ({100 * right / total:.0f}%)")
    return right


def cost(source: Direct, photos: dict[str, bytes], rounds: int) -> None:
    """images/s of a plain rembg call, our background removal and the ID photo (icao), same photos."""
    timings: dict[str, list[float]] = {"plain rembg call": [], "background removal (queue path)": [],
                                       "ID photo (icao)": []}
    spec = SPECS["icao"]
    for data in photos.values():  # warm-up: sessions, model, detector
        source.plain(data)
        break
    for _ in range(rounds):
        for data in photos.values():
            start = time.perf_counter()
            source.plain(data)
            timings["plain rembg call"].append(time.perf_counter() - start)
            start = time.perf_counter()
            background.remove_background(data, RemoveBgOptions(), source, max_pixels=60_000_000, png_level=1)
            timings["background removal (queue path)"].append(time.perf_counter() - start)
            start = time.perf_counter()
            id_photo.process(data, spec, IdPhotoOptions(), source)
            timings["ID photo (icao)"].append(time.perf_counter() - start)
    base = float(np.median(timings["background removal (queue path)"]))
    plain = float(np.median(timings["plain rembg call"]))
    print(f"{'path':34s} {'images/s':>9s} {'median s':>9s} {'/ bg removal':>13s} {'/ plain call':>13s}")
    for name, values in timings.items():
        median = float(np.median(values))
        print(f"{name:34s} {len(values) / sum(values):9.2f} {median:9.3f} {median / base:13.2f} {median / plain:13.2f}")


def picture(source: Direct, path: Path) -> None:
    """Before / after: a turned portrait on a gradient, and its ICAO and US photos (PNG, small)."""
    args = portraits.GOOD_ARGS["tilted-on-gradient"]
    before = portraits.portrait(**args)
    data = portraits.jpeg(before)
    afters = [Image.open(io.BytesIO(id_photo.process(data, SPECS[name], IdPhotoOptions(), source).data))
              for name in ("icao", "us")]
    height = 300
    tiles = [before.resize((height, height), Image.Resampling.LANCZOS)]
    tiles += [after.resize((round(after.width * height / after.height), height), Image.Resampling.LANCZOS)
              for after in afters]
    gap = 12
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) + 1), height + 2 * gap),
                      (200, 200, 200))
    x = gap
    for tile in tiles:
        sheet.paste(tile.convert("RGB"), (x, gap))
        x += tile.width + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=192, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> int:
    """Run the benchmark (starting a rembg server unless --rembg names one)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rembg", help="a running rembg server's URL (default: start one here)")
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds over the good portraits")
    parser.add_argument("--picture", type=Path, help="also write the before/after PNG here")
    args = parser.parse_args()
    server = None
    url = args.rembg
    if url is None:
        from tests.rembg_servers import RembgServer, ensure_model

        ensure_model()
        server = RembgServer(Path(tempfile.mkdtemp()) / "rembg.log")
        server.start()
        server.wait_ready()
        url = server.url
    try:
        source = Direct(url)
        photos = {label: portraits.jpeg(make()) for label, make in portraits.GOOD.items()}
        print(f"{len(photos)} good portraits, {len(portraits.BAD)} bad inputs; rembg at one server, u2netp\n")
        misses = framing(source, photos)
        for name, missed in misses.items():
            for miss in missed:
                print(f"  {name}: {miss}")
        print()
        bad_inputs(source)
        print()
        cost(source, photos, args.rounds)
        if args.picture:
            picture(source, args.picture)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
