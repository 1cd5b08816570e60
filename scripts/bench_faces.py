#!/usr/bin/env python3
"""Face detectors side by side on a labelled set: recall, false faces, time, passport framing.

The set is built in code from photos that ship in the scikit-image wheel: the astronaut
(frontal), camera (a 3/4 head) and the 100 aligned LFW faces, whose face boxes (and, for the
astronaut, eyes, mouth, chin and crown) are labelled by eye in ``bench_faces_labels.json``;
and generated variants of them: tilts of 10-35 degrees both ways, mirrored, dark, noisy, JPEG
quality 20-30, faces 3-10 % of a 6 MP frame, a 12 MP copy, grayscale, alpha, WebP, every EXIF
orientation, LFW faces pasted into 1-3 MP portraits, groups of 2-8 people. A variant's true
boxes and points come from the same geometric transform as its pixels (a turned face keeps
its upright box size, centred on the turned centre, as WIDER FACE boxes are drawn; quarter
turns swap width and height). Negatives: scikit-image photos without a face (textures, text,
a cat, a horse, products, microscopy, space), some enlarged, LFW's 100 non-face patches pasted
as faces would be, and generated ones (a document, an empty room, noise, shapes).

For each detector (default: yunet and haar, one run) it prints:
- recall: true faces matched one-to-one by a detected box with IoU >= 0.4, per group;
- false faces per negative (any box on a negative photo);
- detect ms p50 / p95: CPU time of the detector (every pass it ran, resizing included) on the
  pixels the crop pipeline decodes (``face_crop.find_faces``), one OpenCV thread, the fastest of
  ``--repeat`` runs per photo; also the p50 of photos with and without faces;
- passport output of every astronaut variant (``face_crop.process(..., "passport")``): the
  eye line's angle in the output (|roll|, from the labelled eyes mapped through the crop) and
  the head height (labelled chin to crown) as a fraction of the output height.

    .venv/bin/python scripts/bench_faces.py [--detectors yunet haar] [--render labels.png]
"""
from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from core.contracts import CropOptions  # noqa: E402
from core.errors import PermanentJobError  # noqa: E402
from jobs.imaging import face_crop  # noqa: E402
from jobs.imaging.detectors import Face  # noqa: E402
from jobs.imaging.photo import Photo  # noqa: E402

LABELS = json.loads((Path(__file__).resolve().parent / "bench_faces_labels.json").read_text())
MIN_IOU = 0.4
Point = tuple[float, float]
Matrix = np.ndarray  # 2x3 affine, source -> destination pixels


# --- truth ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Truth:
    """A labelled face: its box as centre and size, and named points (eyes, chin, crown...)."""

    cx: float
    cy: float
    w: float
    h: float
    points: dict[str, Point] = field(default_factory=dict)

    @classmethod
    def from_label(cls, label: dict[str, Any]) -> Truth:
        """From a labels-file entry."""
        x0, y0, x1, y1 = label["box"]
        names = ("right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth", "chin", "crown")
        points = {name: (float(label[name][0]), float(label[name][1])) for name in names if name in label}
        return cls((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, points)

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1)."""
        return self.cx - self.w / 2, self.cy - self.h / 2, self.cx + self.w / 2, self.cy + self.h / 2

    def moved(self, matrix: Matrix) -> Truth:
        """The same face after ``matrix``: centre and points mapped, size scaled, quarter turns swap w/h."""
        scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
        angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])) % 180
        w, h = (self.h, self.w) if 45 < angle < 135 else (self.w, self.h)
        cx, cy = _apply(matrix, (self.cx, self.cy))
        return Truth(cx, cy, w * scale, h * scale, {k: _apply(matrix, p) for k, p in self.points.items()})


def _apply(matrix: Matrix, point: Point) -> Point:
    x, y = point
    return (float(matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]),
            float(matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]))


def affine(scale: float = 1.0, degrees: float = 0.0, src: Point = (0.0, 0.0), dst: Point = (0.0, 0.0),
           mirror: bool = False) -> Matrix:
    """Source -> destination: optional mirror about x = src.x, turn by ``degrees`` (counter-clockwise as
    seen) and scale about ``src``, which lands on ``dst``."""
    matrix = cv2.getRotationMatrix2D(src, degrees, scale)
    if mirror:
        flip = np.array([[-1.0, 0.0, 2 * src[0]], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        matrix = matrix @ flip
    matrix[0, 2] += dst[0] - src[0]
    matrix[1, 2] += dst[1] - src[1]
    return matrix


@dataclass
class Sample:
    """An encoded photo, its group and its true faces in displayed (EXIF-rotated) pixels."""

    name: str
    group: str
    data: bytes
    faces: list[Truth]


# --- pixels ---------------------------------------------------------------------------------
def rgb(image: np.ndarray) -> np.ndarray:
    """Any scikit-image array as uint8 RGB."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    if image.ndim == 2:
        return np.dstack([image] * 3)
    return np.ascontiguousarray(image[:, :, :3])


def paste(canvas: np.ndarray, subject: np.ndarray, matrix: Matrix, feather: float = 0.0) -> None:
    """Draw ``subject`` (RGB) onto ``canvas`` through ``matrix``, its edges faded over ``feather`` px."""
    height, width = canvas.shape[:2]
    sh, sw = subject.shape[:2]
    corners = np.array([_apply(matrix, (x, y)) for x, y in ((0, 0), (sw, 0), (sw, sh), (0, sh))])
    x0, y0 = max(0, int(corners[:, 0].min()) - 1), max(0, int(corners[:, 1].min()) - 1)
    x1, y1 = min(width, int(corners[:, 0].max()) + 2), min(height, int(corners[:, 1].max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    local = matrix.copy()
    local[0, 2] -= x0
    local[1, 2] -= y0
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(subject, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = np.ones(subject.shape[:2], np.float32)
    if feather > 0:
        edge = max(1, int(feather))
        mask = cv2.copyMakeBorder(mask[edge:-edge, edge:-edge], edge, edge, edge, edge, cv2.BORDER_CONSTANT, 0)
        mask = cv2.GaussianBlur(mask, (0, 0), feather / 2)
    alpha = cv2.warpAffine(mask, local, size, flags=cv2.INTER_LINEAR)[:, :, None]
    region = canvas[y0:y1, x0:x1]
    region[:] = (warped * alpha + region * (1 - alpha)).astype(np.uint8)


def scene(width: int, height: int, rng: np.random.Generator, kind: int) -> np.ndarray:
    """A backdrop without faces: a studio gradient, or a blurred enlarged scikit-image photo."""
    from skimage import data

    sources: list[Callable[[], np.ndarray]] = [data.coffee, data.rocket, data.brick, data.gravel,
                                               data.stereo_motorcycle, data.grass]
    if kind % 3 == 0:
        colour = rng.integers(120, 235, 3).astype(np.float32)
        shade = np.linspace(1.0, 0.78, height, dtype=np.float32)[:, None, None]
        noise = rng.normal(0, 3, (height, width, 1)).astype(np.float32)
        return (colour * shade + noise).clip(0, 255).astype(np.uint8)
    source = sources[kind % len(sources)]()
    if isinstance(source, tuple):
        source = source[0]
    image = cv2.resize(rgb(source), (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(image, (0, 0), max(2.0, width / 400))


def encode(image: np.ndarray, fmt: str = "JPEG", orientation: int = 1, **params: Any) -> bytes:
    """Encode upright ``image``; with an EXIF ``orientation``, store it turned so that viewers turn it back."""
    picture = Image.fromarray(image)
    store = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
             7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}[orientation]
    buf = io.BytesIO()
    if store is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture.transpose(store).save(buf, fmt, exif=exif, **params)
    else:
        picture.save(buf, fmt, **params)
    return buf.getvalue()


# --- the labelled set ---------------------------------------------------------------------------
def lfw_head(patch: np.ndarray, side: int) -> np.ndarray:
    """An aligned 25x25 LFW face as a ``side`` px RGB head: the face, feathered into a blurred
    enlargement of itself (hair, ears and neck as a soft halo), 1.6x the face's size."""
    face = cv2.resize((patch * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    outer = round(side * 1.6)
    halo = cv2.GaussianBlur(cv2.resize(face, (outer, outer), interpolation=cv2.INTER_LINEAR), (0, 0), side / 10)
    head = rgb(halo)
    offset = (outer - side) / 2
    paste(head, rgb(face), affine(dst=(offset, offset)), feather=side / 12)
    return head


def lfw_truth(side: int) -> Truth:
    """The LFW face box of a head from ``lfw_head``, in the head's pixels."""
    x0, y0, x1, y1 = LABELS["lfw_face"]["box"]
    k = side / LABELS["lfw_face"]["size"][0]
    offset = (round(side * 1.6) - side) / 2
    return Truth(offset + (x0 + x1) / 2 * k, offset + (y0 + y1) / 2 * k, (x1 - x0) * k, (y1 - y0) * k)


def astronaut_samples(rng: np.random.Generator) -> Iterator[Sample]:
    """The astronaut as shot, enlarged, turned, mirrored, darkened, noisy, compressed, small, gray,
    transparent, WebP and in every EXIF orientation."""
    from skimage import data

    astro = data.astronaut()
    truth = Truth.from_label(LABELS["astronaut"])
    centre = (truth.cx, truth.cy)
    yield Sample("astronaut", "astronaut", encode(astro, quality=92), [truth])
    big = cv2.resize(astro, (1600, 1600), interpolation=cv2.INTER_LANCZOS4)
    yield Sample("astronaut 1600 px", "astronaut", encode(big, quality=90), [truth.moved(affine(1600 / 512))])
    canvas = scene(4000, 3000, rng, 0)
    matrix = affine(3000 / 512, dst=(500 + truth.cx * 3000 / 512, truth.cy * 3000 / 512), src=centre)
    paste(canvas, astro, matrix)
    yield Sample("astronaut 12 MP", "astronaut", encode(canvas, quality=90), [truth.moved(matrix)])
    for degrees in (10, -10, 15, -15, 20, -20, 25, -25, 30, -30, 35, -35):
        canvas = scene(900, 900, rng, 0)
        matrix = affine(1.4, degrees, centre, (450, 420))
        paste(canvas, astro, matrix, feather=20)
        yield Sample(f"astronaut tilted {degrees:+d}", "tilted", encode(canvas, quality=90), [truth.moved(matrix)])
    mirror = affine(1.0, 0.0, (255.5, 0), (255.5, 0), mirror=True)
    yield Sample("astronaut mirrored", "astronaut", encode(np.ascontiguousarray(astro[:, ::-1]), quality=90),
                 [truth.moved(mirror)])
    for gain in (0.35, 0.2):
        dark = (255 * (astro / 255.0) ** 1.6 * gain).astype(np.uint8)
        yield Sample(f"astronaut dark x{gain}", "dark/noisy/JPEG", encode(dark, quality=90), [truth])
    for sigma in (12, 25):
        noisy = (astro + rng.normal(0, sigma, astro.shape)).clip(0, 255).astype(np.uint8)
        yield Sample(f"astronaut noise {sigma}", "dark/noisy/JPEG", encode(noisy, quality=90), [truth])
    for quality in (20, 25, 30):
        yield Sample(f"astronaut JPEG q{quality}", "dark/noisy/JPEG", encode(big, quality=quality),
                     [truth.moved(affine(1600 / 512))])
    for fraction in (0.03, 0.04, 0.05, 0.07, 0.10):
        canvas = scene(3000, 2000, rng, round(fraction * 100))
        scale = fraction * 3000 / truth.w
        dst = (float(rng.uniform(0.2, 0.8) * 3000), float(rng.uniform(0.25, 0.6) * 2000))
        matrix = affine(scale, 0.0, centre, dst)
        paste(canvas, astro, matrix, feather=4 * scale)
        yield Sample(f"astronaut face {fraction:.0%} of 6 MP", "small faces", encode(canvas, quality=90),
                     [truth.moved(matrix)])
    gray = cv2.cvtColor(astro, cv2.COLOR_RGB2GRAY)
    yield Sample("astronaut gray JPEG", "astronaut", encode(gray, quality=90), [truth])
    yield Sample("astronaut gray PNG", "astronaut", encode(gray, "PNG"), [truth])
    alpha = np.full(astro.shape[:2], 255, np.uint8)
    cv2.circle(alpha, (224, 150), 320, 0, thickness=200)  # transparent around the head and shoulders
    rgba = np.dstack([astro, alpha])
    yield Sample("astronaut RGBA PNG", "astronaut", encode(rgba, "PNG"), [truth])
    yield Sample("astronaut WebP", "astronaut", encode(astro, "WEBP", quality=80), [truth])
    portrait = scene(600, 800, rng, 0)
    matrix = affine(1.0, 0.0, centre, (300, 300))
    paste(portrait, astro, matrix, feather=10)
    for orientation in range(1, 9):
        yield Sample(f"astronaut EXIF {orientation}", "EXIF", encode(portrait, orientation=orientation, quality=90),
                     [truth.moved(matrix)])


def camera_samples(rng: np.random.Generator) -> Iterator[Sample]:
    """The 3/4 head of camera(): as shot, mirrored, enlarged, dark, noisy, compressed, turned."""
    from skimage import data

    camera = rgb(data.camera())
    truth = Truth.from_label(LABELS["camera"])
    yield Sample("camera", "3/4 heads", encode(camera[:, :, 0], "PNG"), [truth])
    yield Sample("camera mirrored", "3/4 heads", encode(np.ascontiguousarray(camera[:, ::-1]), quality=90),
                 [truth.moved(affine(1.0, 0.0, (255.5, 0), (255.5, 0), mirror=True))])
    big = cv2.resize(camera, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    yield Sample("camera 1024 px", "3/4 heads", encode(big, quality=90), [truth.moved(affine(2.0))])
    yield Sample("camera dark", "3/4 heads", encode((camera * 0.35).astype(np.uint8), quality=90), [truth])
    noisy = (camera + rng.normal(0, 15, camera.shape)).clip(0, 255).astype(np.uint8)
    yield Sample("camera noise 15", "3/4 heads", encode(noisy, quality=90), [truth])
    yield Sample("camera JPEG q25", "3/4 heads", encode(big, quality=25), [truth.moved(affine(2.0))])
    canvas = scene(700, 700, rng, 0)
    matrix = affine(1.0, 15, (truth.cx, truth.cy), (350, 330))
    paste(canvas, camera, matrix, feather=15)
    yield Sample("camera tilted +15", "3/4 heads", encode(canvas, quality=90), [truth.moved(matrix)])


PORTRAIT_SIZES = [(900, 1200), (1200, 1600), (1500, 2000), (1080, 1350), (1400, 1750), (1200, 1500)]


def lfw_samples(rng: np.random.Generator) -> Iterator[Sample]:
    """The 100 LFW faces, one per 1-3 MP portrait, 10-50 % of the short side, some turned,
    mirrored, dark, noisy, compressed or stored sideways."""
    from skimage import data

    faces = data.lfw_subset()[:100]
    for index, patch in enumerate(faces):
        width, height = PORTRAIT_SIZES[index % len(PORTRAIT_SIZES)]
        canvas = scene(width, height, rng, index)
        side = round(float(np.exp(rng.uniform(np.log(0.10), np.log(0.50)))) * min(width, height))
        head = lfw_head(patch, side)
        truth = lfw_truth(side)
        degrees = float(rng.choice([-1, 1]) * rng.uniform(10, 25)) if index % 4 == 1 else 0.0
        dst = (float(rng.uniform(0.3, 0.7) * width), float(rng.uniform(0.3, 0.5) * height))
        matrix = affine(1.0, degrees, (truth.cx, truth.cy), dst, mirror=index % 5 == 2)
        paste(canvas, head, matrix, feather=side / 8)
        tags = [f"{degrees:+.0f} deg"] if degrees else []
        if index % 5 == 2:
            tags.append("mirrored")
        if index % 7 == 3:
            canvas = (canvas * 0.3).astype(np.uint8)
            tags.append("dark")
        if index % 9 == 4:
            canvas = (canvas + rng.normal(0, 15, canvas.shape)).clip(0, 255).astype(np.uint8)
            tags.append("noisy")
        quality = 25 if index % 11 == 5 else 90
        orientation = 6 if index % 13 == 6 else 1
        name = f"lfw {index} ({side * 100 // min(width, height)} %{', ' if tags else ''}{', '.join(tags)})"
        yield Sample(name, "LFW portraits", encode(canvas, orientation=orientation, quality=quality),
                     [truth.moved(matrix)])


def group_samples(rng: np.random.Generator) -> Iterator[Sample]:
    """Groups of 2-8 people (LFW heads, the astronaut in some) in 2400x1600 scenes; one group of
    equal sizes (the largest-face rule then falls on score and position)."""
    from skimage import data

    faces = data.lfw_subset()[:100]
    astro = data.astronaut()
    astro_truth = Truth.from_label(LABELS["astronaut"])
    for count in range(2, 9):
        width, height = 2400, 1600
        canvas = scene(width, height, rng, count + 1)
        truths = []
        columns = min(count, 4)
        rows = math.ceil(count / columns)
        cell_w, cell_h = width / columns, height / (rows + 0.5)
        for slot in range(count):
            row, col = divmod(slot, columns)
            fraction = 0.09 if count == 3 else float(rng.uniform(0.06, 0.13))
            face_w = fraction * width
            centre = ((col + 0.5) * cell_w + float(rng.uniform(-0.1, 0.1)) * cell_w,
                      (row + 0.6) * cell_h + float(rng.uniform(-0.05, 0.05)) * cell_h)
            if slot == 0 and count % 2 == 0:
                scale = face_w / astro_truth.w
                matrix = affine(scale, 0.0, (astro_truth.cx, astro_truth.cy), centre)
                crop = astro[0:300, 100:360]
                matrix = matrix @ np.array([[1, 0, 100], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
                paste(canvas, crop, matrix, feather=6 * scale)
                truths.append(Truth(astro_truth.cx - 100, astro_truth.cy, astro_truth.w, astro_truth.h).moved(matrix))
            else:
                side = round(face_w / (LABELS["lfw_face"]["box"][2] - LABELS["lfw_face"]["box"][0]) * 25)
                head = lfw_head(faces[(count * 11 + slot * 7) % 100], side)
                truth = lfw_truth(side)
                matrix = affine(1.0, 0.0, (truth.cx, truth.cy), centre)
                paste(canvas, head, matrix, feather=side / 8)
                truths.append(truth.moved(matrix))
        yield Sample(f"group of {count}", "groups", encode(canvas, quality=90), truths)


def negative_samples(rng: np.random.Generator) -> Iterator[Sample]:
    """Photos without a face: scikit-image's (native and enlarged), LFW non-face patches pasted
    as faces would be, and generated ones (a document, an empty room, noise, shapes)."""
    from skimage import data

    natives = {
        "brick": data.brick, "cell": data.cell, "cat (chelsea)": data.chelsea, "chessboard": data.checkerboard,
        "clock": data.clock, "coffee cup": data.coffee, "colour wheel": data.colorwheel, "grass": data.grass,
        "gravel": data.gravel, "horse silhouette": data.horse, "hubble deep field": data.hubble_deep_field,
        "immunohistochemistry": data.immunohistochemistry, "logo": data.logo,
        "microaneurysms": data.microaneurysms, "moon": data.moon, "page of text": data.page,
        "phantom": data.shepp_logan_phantom, "retina": data.retina, "rocket": data.rocket, "text": data.text,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
    }
    for name, load in natives.items():
        image = rgb(load())
        yield Sample(name, "negatives", encode(image, quality=90), [])
    for name in ("coffee cup", "rocket", "cat (chelsea)", "motorcycle", "page of text", "brick", "retina",
                 "horse silhouette"):
        image = rgb(natives[name]())
        scale = 2000 / max(image.shape[:2])
        big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        yield Sample(f"{name} 2000 px", "negatives", encode(big, quality=88), [])
    others = data.lfw_subset()[100:]
    for mosaic in range(10):
        canvas = scene(1600, 1200, rng, mosaic)
        for slot in range(10):
            side = round(float(rng.uniform(0.08, 0.14)) * 1600)
            head = lfw_head(others[mosaic * 10 + slot], side)
            centre = ((slot % 5 + 0.5) * 320, (slot // 5 + 0.5) * 600)
            paste(canvas, head, affine(1.0, 0.0, (head.shape[1] / 2, head.shape[0] / 2), centre), feather=side / 8)
        yield Sample(f"LFW non-faces {mosaic}", "negatives", encode(canvas, quality=90), [])
    yield from generated_negatives(rng)


def generated_negatives(rng: np.random.Generator) -> Iterator[Sample]:
    """A typed document, an empty room, noise, stripes, shapes, a dark frame."""
    doc = np.full((2000, 1600, 3), 250, np.uint8)
    words = "the quick brown fox jumps over a lazy dog while invoices totals and dates line up".split()
    for line in range(40):
        text = " ".join(rng.choice(words, 8))
        cv2.putText(doc, text, (80, 100 + line * 45), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 20), 2, cv2.LINE_AA)
    yield Sample("typed document", "negatives", encode(doc, quality=85), [])
    room = np.zeros((1200, 1600, 3), np.uint8)
    room[:] = (205, 200, 190)
    cv2.fillPoly(room, [np.array([[0, 1200], [1600, 1200], [1200, 800], [400, 800]])], (120, 90, 60))
    cv2.fillPoly(room, [np.array([[0, 0], [400, 200], [400, 800], [0, 1200]])], (185, 180, 170))
    cv2.rectangle(room, (700, 250), (1000, 550), (235, 240, 250), -1)
    cv2.rectangle(room, (700, 250), (1000, 550), (90, 80, 70), 8)
    cv2.line(room, (850, 250), (850, 550), (90, 80, 70), 6)
    cv2.rectangle(room, (1150, 350), (1350, 850), (140, 110, 80), -1)
    cv2.circle(room, (1320, 600), 10, (60, 60, 60), -1)
    room = cv2.GaussianBlur(room, (0, 0), 2)
    yield Sample("empty room", "negatives", encode(room, quality=90), [])
    yield Sample("noise", "negatives", encode(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8), quality=90), [])
    stripes = np.zeros((1000, 1000, 3), np.uint8)
    stripes[:, :] = ((np.sin(np.arange(1000) / 9.0)[:, None, None] * 100 + 128)
                     * np.ones((1, 1000, 3))).astype(np.uint8)
    yield Sample("stripes", "negatives", encode(stripes, quality=90), [])
    shapes = np.full((1200, 1600, 3), 235, np.uint8)
    for _ in range(25):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        centre = (int(rng.integers(100, 1500)), int(rng.integers(100, 1100)))
        axes = (int(rng.integers(30, 160)), int(rng.integers(30, 160)))
        cv2.ellipse(shapes, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    yield Sample("shapes (products)", "negatives", encode(shapes, quality=90), [])
    yield Sample("dark frame", "negatives", encode(np.full((900, 1200, 3), 12, np.uint8), quality=90), [])


def build_set(seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(photos with faces, photos without), built deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    positives = [*astronaut_samples(rng), *camera_samples(rng), *lfw_samples(rng), *group_samples(rng)]
    return positives, list(negative_samples(rng))


# --- measuring ----------------------------------------------------------------------------
def iou(box: tuple[float, float, float, float], truth: Truth) -> float:
    """Intersection over union of an (x, y, w, h) box and a true face."""
    x, y, w, h = box
    tx0, ty0, tx1, ty1 = truth.box()
    ix = max(0.0, min(x + w, tx1) - max(x, tx0))
    iy = max(0.0, min(y + h, ty1) - max(y, ty0))
    inter = ix * iy
    return inter / (w * h + truth.w * truth.h - inter)


def match(faces: list[Face], truths: list[Truth]) -> int:
    """True faces matched one-to-one (greedy by IoU) by a detected box with IoU >= MIN_IOU."""
    pairs = sorted(((iou(f.box, t), i, j) for i, f in enumerate(faces) for j, t in enumerate(truths)), reverse=True)
    used_f: set[int] = set()
    used_t: set[int] = set()
    for score, i, j in pairs:
        if score < MIN_IOU:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_t)


def detect(name: str, data: bytes, repeat: int) -> tuple[list[Face], float, float]:
    """Faces as the crop pipeline finds them, and the detector's and the decode's CPU seconds
    (each the fastest of ``repeat`` runs: other work on the machine only ever adds time)."""
    finder = face_crop.get_detector(name)
    best_detect = best_decode = math.inf
    faces: list[Face] = []
    for _ in range(repeat):
        timings: dict[str, float] = {}
        faces, _ = face_crop.find_faces(Photo(data, 10**9), finder, timings, clock=time.thread_time)
        best_detect = min(best_detect, timings.get("detect", 0.0))
        best_decode = min(best_decode, timings.get("decode", 0.0))
    return faces, best_detect, best_decode


def passport(name: str, sample: Sample) -> tuple[float, float, float] | None:
    """|roll| in degrees, head ratio and eye-line height of the passport crop, from the labelled points."""
    truth = sample.faces[0]
    try:
        result = face_crop.process(sample.data, "passport", CropOptions(detector=name, format="png"),
                                   max_pixels=10**9)
    except PermanentJobError:
        return None
    assert result.transform is not None
    matrix = np.array(result.transform)
    right, left = _apply(matrix, truth.points["right_eye"]), _apply(matrix, truth.points["left_eye"])
    chin, crown = _apply(matrix, truth.points["chin"]), _apply(matrix, truth.points["crown"])
    # A mirrored photo swaps which labelled eye is on the left: the line's angle, folded to +-90.
    roll = abs((math.degrees(math.atan2(left[1] - right[1], left[0] - right[0])) + 90) % 180 - 90)
    head = math.dist(chin, crown) / result.height
    eyes_up = (result.height - (right[1] + left[1]) / 2) / result.height
    return roll, head, eyes_up


def run(name: str, positives: list[Sample], negatives: list[Sample], repeat: int) -> dict[str, Any]:
    """Every figure of one detector."""
    face_crop.get_detector(name).detect(np.zeros((64, 64, 3), np.uint8))  # warm-up
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    detect_ms, decode_ms, misses = [], [], []
    for sample in positives:
        faces, detect_s, decode_s = detect(name, sample.data, repeat)
        found = match(faces, sample.faces)
        groups[sample.group][0] += found
        groups[sample.group][1] += len(sample.faces)
        if found < len(sample.faces):
            misses.append(f"{sample.name} ({found}/{len(sample.faces)})")
        detect_ms.append(detect_s * 1000)
        decode_ms.append(decode_s * 1000)
    false_faces, false_on = 0, []
    for sample in negatives:
        faces, detect_s, decode_s = detect(name, sample.data, repeat)
        false_faces += len(faces)
        if faces:
            false_on.append(f"{sample.name} ({len(faces)})")
        detect_ms.append(detect_s * 1000)
        decode_ms.append(decode_s * 1000)
    framing = [passport(name, s) for s in positives if "crown" in s.faces[0].points] if positives else []
    return {"groups": dict(groups), "misses": misses, "false": false_faces, "false_on": false_on,
            "detect_ms": detect_ms, "decode_ms": decode_ms, "passport": framing}


def report(results: dict[str, dict[str, Any]], positives: list[Sample], negatives: list[Sample]) -> None:
    """The side-by-side table."""
    names = list(results)
    col = 16
    print("\n" + "".ljust(34) + "".join(n.rjust(col) for n in names))
    first = results[names[0]]["groups"]
    for group in first:
        total = first[group][1]
        cells = "".join(f"{results[n]['groups'][group][0]}/{total}".rjust(col) for n in names)
        print(f"  recall {group} ".ljust(34) + cells)
    faces_total = sum(v[1] for v in first.values())
    cells = "".join(f"{sum(v[0] for v in results[n]['groups'].values()) / faces_total:.3f}".rjust(col) for n in names)
    print(f"recall, {faces_total} faces (IoU >= {MIN_IOU})".ljust(34) + cells)
    cells = "".join(f"{results[n]['false']} ({results[n]['false'] / len(negatives):.3f})".rjust(col) for n in names)
    print(f"false faces on {len(negatives)} negatives (per neg.)".ljust(34) + cells)
    for label, q in (("p50", 50), ("p95", 95)):
        cells = "".join(f"{np.percentile(results[n]['detect_ms'], q):.1f}".rjust(col) for n in names)
        print(f"detect ms {label} (CPU, 1 thread)".ljust(34) + cells)
    split = len(positives)
    for label, part in (("with faces", slice(0, split)), ("negatives", slice(split, None))):
        cells = "".join(f"{np.percentile(results[n]['detect_ms'][part], 50):.1f}".rjust(col) for n in names)
        print(f"  p50, photos {label}".ljust(34) + cells)
    cells = "".join(f"{statistics.fmean(results[n]['detect_ms']):.1f}".rjust(col) for n in names)
    print("detect ms mean".ljust(34) + cells)
    cells = "".join(f"{np.percentile(results[n]['decode_ms'], 50):.1f}".rjust(col) for n in names)
    print("decode ms p50 (for detection)".ljust(34) + cells)
    print("passport crops of the astronaut variants:")
    for n in names:
        framing = [f for f in results[n]["passport"] if f is not None]
        total = len(results[n]["passport"])
        results[n]["framing"] = framing, total
    cells = "".join(f"{len(results[n]['framing'][0])}/{results[n]['framing'][1]}".rjust(col) for n in names)
    print("  cropped (face found)".ljust(34) + cells)
    rows: list[tuple[str, Callable[[list[tuple[float, float, float]]], str]]] = [
        ("  |roll| <= 1 deg after levelling", lambda f: f"{sum(r <= 1.0 for r, _, _ in f)}/{len(f)}"),
        ("  |roll| p50 / max, deg", lambda f: f"{np.median([r for r, _, _ in f]):.2f} / {max(r for r, _, _ in f):.1f}"),
        ("  head ratio in 70-80 %", lambda f: f"{sum(0.70 <= h <= 0.80 for _, h, _ in f)}/{len(f)}"),
        ("  head ratio min-max", lambda f: f"{min(h for _, h, _ in f):.2f}-{max(h for _, h, _ in f):.2f}"),
        ("  eye line 50-70 % up", lambda f: f"{sum(0.50 <= e <= 0.70 for _, _, e in f)}/{len(f)}"),
    ]
    for label, cell in rows:
        print(label.ljust(34) + "".join((cell(results[n]["framing"][0]) if results[n]["framing"][0] else "-")
                                        .rjust(col) for n in names))
    for n in names:
        print(f"\n{n} missed: {', '.join(results[n]['misses']) or 'none'}")
        print(f"{n} false faces on: {', '.join(results[n]['false_on']) or 'none'}")


def render(path: Path, positives: list[Sample]) -> None:
    """A contact sheet of the base photos and some variants with their true boxes and points drawn."""
    picks = [s for s in positives if s.name in ("astronaut", "camera", "astronaut tilted +35", "astronaut mirrored",
                                                 "astronaut EXIF 6", "group of 5", "lfw 1 (", "lfw 0 (")
             or s.name.startswith(("lfw 0 ", "lfw 1 ", "lfw 2 ", "astronaut face 5%"))]
    tiles = []
    for sample in picks:
        photo = Photo(sample.data, 10**9)
        pixels = photo.decode(1.0).pixels
        image = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else cv2.cvtColor(
            pixels[:, :, :3], cv2.COLOR_RGB2BGR)
        image = np.ascontiguousarray(image)
        scale = 480 / max(image.shape[:2])
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for truth in sample.faces:
            x0, y0, x1, y1 = (round(v * scale) for v in truth.box())
            cv2.rectangle(image, (x0, y0), (x1, y1), (0, 255, 0), 1)
            for px, py in truth.points.values():
                cv2.circle(image, (round(px * scale), round(py * scale)), 2, (0, 0, 255), -1)
        tile = np.full((500, 480, 3), 255, np.uint8)
        tile[:image.shape[0], :image.shape[1]] = image
        cv2.putText(tile, sample.name[:40], (4, 495), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % 4:
        tiles.append(np.full((500, 480, 3), 255, np.uint8))
    rows = [np.hstack(tiles[i:i + 4]) for i in range(0, len(tiles), 4)]
    cv2.imwrite(str(path), np.vstack(rows))
    print(f"wrote {path} ({len(picks)} photos with their labels)")


def main(argv: list[str] | None = None) -> int:
    """Build the set, run each detector, print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--detectors", nargs="+", default=["yunet", "haar"], choices=["yunet", "haar"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", type=Path, help="write a contact sheet of labelled photos here and stop")
    parser.add_argument("--repeat", type=int, default=3, help="time each detection this many times, keep the fastest")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    positives, negatives = build_set(args.seed)
    faces = sum(len(s.faces) for s in positives)
    print(f"built {len(positives)} photos with {faces} labelled faces and {len(negatives)} negatives"
          f" in {time.perf_counter() - t0:.0f} s (OpenCV {cv2.__version__}, 1 thread)")
    if args.render:
        render(args.render, positives)
        return 0
    results = {name: run(name, positives, negatives, args.repeat) for name in args.detectors}
    report(results, positives, negatives)
    return 0


if __name__ == "__main__":
    sys.exit(main())
