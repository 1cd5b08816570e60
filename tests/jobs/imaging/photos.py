"""Photos for the face tests, built from scikit-image's astronaut with her labelled points.

The labels (face box, eyes, mouth, chin, crown) are the ones ``scripts/bench_faces.py`` uses,
read by eye and stored in ``scripts/bench_faces_labels.json``; a generated photo's points go
through the same affine map as its pixels.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage import data

from tests.conftest import ROOT

LABELS = json.loads((ROOT / "scripts" / "bench_faces_labels.json").read_text())["astronaut"]
ASTRO_BOX = tuple(LABELS["box"])  # x0, y0, x1, y1
POINTS = ("right_eye", "left_eye", "right_mouth", "left_mouth", "chin", "crown")


def encode(image: np.ndarray, fmt: str = "JPEG", orientation: int = 1, **params: Any) -> bytes:
    """Encode upright ``image``; with an EXIF ``orientation`` store it turned so that viewers turn it back."""
    picture = Image.fromarray(image)
    store = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
             7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}[orientation]
    buf = io.BytesIO()
    if store is None:
        picture.save(buf, fmt, **params)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture.transpose(store).save(buf, fmt, exif=exif, **params)
    return buf.getvalue()


@dataclass(frozen=True)
class Portrait:
    """An upright RGB photo of the astronaut and her labelled points in it."""

    pixels: np.ndarray
    points: dict[str, tuple[float, float]]
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (the label box's centre moved, size scaled)

    def eye_angle(self) -> float:
        """Angle of the labelled eye line, degrees (clockwise positive, as Face.roll_degrees)."""
        (rx, ry), (lx, ly) = self.points["right_eye"], self.points["left_eye"]
        return math.degrees(math.atan2(ly - ry, lx - rx))


def astronaut(degrees: float = 0.0, scale: float = 1.0, size: tuple[int, int] | None = None,
              centre: tuple[float, float] | None = None) -> Portrait:
    """The astronaut turned by ``degrees`` (counter-clockwise as seen) and scaled about her face,
    which lands on ``centre`` of a ``size`` canvas (default: her photo, unchanged size)."""
    astro = data.astronaut()
    x0, y0, x1, y1 = ASTRO_BOX
    face = ((x0 + x1) / 2, (y0 + y1) / 2)
    width, height = size or (512, 512)
    if centre is None:
        centre = face if size is None else (width / 2, height * 0.42)
    matrix = cv2.getRotationMatrix2D(face, degrees, scale)
    matrix[0, 2] += centre[0] - face[0]
    matrix[1, 2] += centre[1] - face[1]
    pixels = cv2.warpAffine(astro, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)

    def moved(point: tuple[float, float]) -> tuple[float, float]:
        return (float(matrix[0, 0] * point[0] + matrix[0, 1] * point[1] + matrix[0, 2]),
                float(matrix[1, 0] * point[0] + matrix[1, 1] * point[1] + matrix[1, 2]))

    cx, cy = moved(face)
    half_w, half_h = (x1 - x0) * scale / 2, (y1 - y0) * scale / 2
    return Portrait(pixels, {name: moved(tuple(LABELS[name])) for name in POINTS},  # type: ignore[arg-type]
                    (cx - half_w, cy - half_h, cx + half_w, cy + half_h))


def iou(box: dict[str, int] | tuple[float, float, float, float], truth: tuple[float, float, float, float]) -> float:
    """IoU of a faceBox dict or (x, y, w, h) with an (x0, y0, x1, y1) box."""
    if isinstance(box, dict):
        box = (box["x"], box["y"], box["width"], box["height"])
    x, y, w, h = box
    ix = max(0.0, min(x + w, truth[2]) - max(x, truth[0]))
    iy = max(0.0, min(y + h, truth[3]) - max(y, truth[1]))
    inter = ix * iy
    return inter / (w * h + (truth[2] - truth[0]) * (truth[3] - truth[1]) - inter)


def apply(transform: Any, point: tuple[float, float]) -> tuple[float, float]:
    """A photo point in the output, through ``CropResult.transform``."""
    (a, b, c), (d, e, f) = transform
    return a * point[0] + b * point[1] + c, d * point[0] + e * point[1] + f


def group(sizes: list[float], canvas: tuple[int, int] = (1800, 900)) -> tuple[np.ndarray, list[tuple[float, ...]]]:
    """Astronaut heads side by side, each scaled by ``sizes``; the photo and their label boxes (x0, y0, x1, y1)."""
    astro = data.astronaut()
    head = astro[0:300, 100:360]  # head and shoulders, 260x300
    width, height = canvas
    image = np.full((height, width, 3), 205, np.uint8)
    boxes = []
    x = 20
    for scale in sizes:
        w, h = round(260 * scale), round(300 * scale)
        image[40:40 + h, x:x + w] = cv2.resize(head, (w, h), interpolation=cv2.INTER_AREA)
        x0, y0, x1, y1 = ASTRO_BOX
        boxes.append((x + (x0 - 100) * scale, 40 + y0 * scale, x + (x1 - 100) * scale, 40 + y1 * scale))
        x += w + 30
    return image, boxes
