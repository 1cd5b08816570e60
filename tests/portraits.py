"""Portraits built in code for the ID-photo tests and benchmark (scikit-image's astronaut).

Good ones: the astronaut scaled, turned, moved off-centre, on different backdrops (the photo
pasted on a larger canvas of a plain or a gradient colour). Bad ones: two people side by side,
a tiny face in a large frame, a blurred face, the head cut off at the top.
The astronaut (512 px) has the top of her hair 15 px below the top edge and her eyes at y ~101.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

Backdrop = tuple[int, int, int] | str


def astronaut(side: int = 512) -> Image.Image:
    """The astronaut, ``side`` px square (Lanczos)."""
    from skimage import data

    image = Image.fromarray(data.astronaut())
    return image if side == 512 else image.resize((side, side), Image.Resampling.LANCZOS)


def canvas(size: tuple[int, int], backdrop: Backdrop) -> Image.Image:
    """A plain canvas, or a vertical gradient (``"gradient"``) or noise (``"noise"``)."""
    width, height = size
    if backdrop == "gradient":
        ramp = np.linspace(40, 200, height, dtype=np.float32)[:, None, None]
        pixels = np.broadcast_to(ramp * np.array([0.6, 0.8, 1.0], dtype=np.float32), (height, width, 3))
        return Image.fromarray(pixels.astype(np.uint8))
    if backdrop == "noise":
        rng = np.random.default_rng(7)
        return Image.fromarray(rng.integers(60, 200, (height, width, 3), dtype=np.uint8))
    assert isinstance(backdrop, tuple)
    return Image.new("RGB", size, backdrop)


def portrait(side: int = 1024, *, angle: float = 0.0, offset: tuple[float, float] = (0.0, 0.0),
             frame: float = 1.4, backdrop: Backdrop = (90, 110, 140)) -> Image.Image:
    """The astronaut at ``side`` px, turned by ``angle`` degrees (counter-clockwise), on a canvas
    ``frame`` times larger, moved by ``offset`` (shares of the spare room, -1..1)."""
    person = astronaut(side)
    if angle:
        person = person.rotate(angle, Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))
    width = height = round(side * frame)
    out = canvas((width, height), backdrop)
    spare = width - side
    x = round(spare / 2 * (1 + offset[0]))
    # Keep some room above the hair: the astronaut's own backdrop starts at her top edge.
    y = round(spare / 2 * (1 + offset[1]))
    out.paste(person, (x, y))
    return out


# The astronaut's labelled points (scripts/bench_faces_labels.json; 512 px photo): the subject's
# right and left eye (iris centres), the lowest point of the chin, the top of the hair.
LABELS = {"right_eye": (202.5, 100.5), "left_eye": (246.5, 102.5), "chin": (222.0, 172.0),
          "hair_top": (224.0, 15.0)}


def portrait_points(side: int = 1024, *, angle: float = 0.0, offset: tuple[float, float] = (0.0, 0.0),
                    frame: float = 1.4, **_: object) -> dict[str, tuple[float, float]]:
    """Where ``portrait`` (same arguments) puts the astronaut's labelled points."""
    width = round(side * frame)
    spare = width - side
    x0 = round(spare / 2 * (1 + offset[0]))
    y0 = round(spare / 2 * (1 + offset[1]))
    centre = side / 2
    a = math.radians(angle)
    points = {}
    for name, (x, y) in LABELS.items():
        px, py = (x + 0.5) * side / 512, (y + 0.5) * side / 512  # pixel centres, scaled
        dx, dy = px - centre, py - centre
        rx = centre + dx * math.cos(a) + dy * math.sin(a)  # PIL's rotate: counter-clockwise as seen
        ry = centre - dx * math.sin(a) + dy * math.cos(a)
        points[name] = (rx + x0, ry + y0)
    return points


def two_people(side: int = 700) -> Image.Image:
    """Two astronauts side by side."""
    person = astronaut(side)
    out = canvas((2 * side, side + 100), (120, 120, 120))
    out.paste(person, (0, 100))
    out.paste(person, (side, 100))
    return out


def tiny_face(side: int = 200, frame: int = 1600) -> Image.Image:
    """The astronaut ``side`` px in a ``frame`` px canvas: far too few pixels for an ID photo."""
    out = canvas((frame, frame), (100, 120, 90))
    out.paste(astronaut(side), ((frame - side) // 2, (frame - side) // 3))
    return out


def blurred(side: int = 1024, radius: float = 6.0) -> Image.Image:
    """A good portrait, out of focus."""
    return portrait(side).filter(ImageFilter.GaussianBlur(radius))


def head_cut_off(side: int = 1024) -> Image.Image:
    """The astronaut with the top of her head cut off (the frame starts at her forehead)."""
    person = astronaut(side)
    top = round(side * 45 / 512)  # between the top of the hair (15) and the eyes (101)
    return person.crop((0, top, side, side))


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    """JPEG bytes."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# Good portraits: the arguments of ``portrait`` (and ``portrait_points``).
GOOD_ARGS: dict[str, dict[str, Any]] = {
    "upright": {"side": 1024},
    "upright-large": {"side": 1600, "frame": 1.2},
    "upright-small": {"side": 800, "frame": 1.6},
    "tilted-left-8": {"side": 1024, "angle": 8},
    "tilted-right-12": {"side": 1024, "angle": -12},
    "tilted-left-20": {"side": 1024, "angle": 20},
    "tilted-right-25": {"side": 1200, "angle": -25},
    "off-centre-left": {"side": 1024, "offset": (-0.9, 0.3)},
    "off-centre-right": {"side": 1024, "offset": (0.9, -0.2)},
    "off-centre-low": {"side": 900, "frame": 1.8, "offset": (0.4, 0.9)},
    "white-backdrop": {"side": 1024, "backdrop": (245, 245, 245)},
    "dark-backdrop": {"side": 1024, "backdrop": (20, 20, 25)},
    "gradient-backdrop": {"side": 1024, "backdrop": "gradient"},
    "noise-backdrop": {"side": 1024, "backdrop": "noise"},
    "tilted-on-gradient": {"side": 1100, "angle": 10, "offset": (-0.5, 0.0), "backdrop": "gradient"},
}
GOOD: dict[str, Callable[[], Image.Image]] = {
    name: (lambda args=args: portrait(**args)) for name, args in GOOD_ARGS.items()}
# Bad inputs and how each must be flagged: an error code, or a failed report check.
BAD: dict[str, tuple[Callable[[], Image.Image], str]] = {
    "two-people": (two_people, "MULTIPLE_FACES"),
    "tiny-face": (tiny_face, "FACE_TOO_SMALL"),
    "blurred": (blurred, "check:sharpness"),
    "head-cut-off": (head_cut_off, "FACE_CUT_OFF"),
}
