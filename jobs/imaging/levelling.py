"""Measuring a face's roll well enough to level it (ID photos): symmetry, a second look, mirrored eyes.

YuNet's landmarks barely follow a tilted head: on the astronaut turned by 10-30 degrees its eye
line turns by only about a fifth of that (-1.6 degrees for 10, -5.7 for 30), and even upright
it reads her eye line (2.6 degrees, from the irises and the catchlights) as 0.4. So the eye line
of an ID photo is measured in three steps, on a grayscale copy where the face is a fixed size:

1. symmetry: the turn, within +-``SYMMETRY_RANGE`` degrees, at which the face best matches its
   own mirror image about a vertical axis (mean absolute difference of the mean-removed halves,
   axis position searched too; ``SYMMETRY_STEP`` degree steps, then ``SYMMETRY_FINE`` steps
   around the best one, then a parabola through the three best). Faces are not perfectly
   symmetric, so this is within a degree or two of the eye line (the astronaut: 1.6);
2. a second look: the face turned upright by that angle and scaled so the face is
   ``LOOK_FACE_PX`` tall, searched again by the detector; upright, its landmarks are where they
   should be to a pixel or so;
3. mirrored eyes: each eye's patch (``EYE_PATCH`` of the eye distance), mirrored, is matched
   (normalised cross-correlation, sub-pixel peak) around the other eye; the two matches give the
   residual angle of the eye line, averaged.

Measured on the astronaut's 40 variants in ``scripts/bench_faces.py`` (turned by -35..+35
degrees, mirrored, dark, noisy, JPEG q20-30, 3-10 % of a 6 MP frame, gray, every EXIF
orientation): the labelled eye line comes out of the passport crop within 0.4 degrees of level
(p50 0.23). ~16 ms per face on one core (``scripts/bench_crop.py --mode passport``), spent only
in passport and idcard modes.

When a step fails (no face on the second look, or a mirrored eye that does not match: a 3/4
head, an eye hidden by hair or a patch), the first look's landmarks are used as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from jobs.imaging.detectors import Detector, Face, Pass

SYMMETRY_FACE_PX = 48  # face width in the symmetry search
SYMMETRY_RANGE = 45.0  # degrees either way
SYMMETRY_STEP = 3.0
SYMMETRY_FINE = 0.5
AXIS_SHIFT = 6  # the symmetry axis is searched this many px either side of the box centre
LOOK_FACE_PX = 120  # face height in the second look
LOOK_SIDE = 256  # side of the second look's image (the face and a margin around it)
EYE_PATCH = (0.55, 0.32)  # eye patch width and height, fractions of the eye distance
EYE_SEARCH = (0.22, 0.12)  # search either side of the other eye, fractions of the eye distance
MIN_MATCH = 0.5  # normalised cross-correlation below which a mirrored eye does not count as found


def _gray(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    return cv2.cvtColor(pixels, cv2.COLOR_RGBA2GRAY if pixels.shape[2] == 4 else cv2.COLOR_RGB2GRAY)


def _turn(centre: tuple[float, float], degrees: float, scale: float, side: int) -> np.ndarray:
    """2x3 map from the picture to a ``side`` square centred on ``centre``, turned by -``degrees`` (a roll
    of ``degrees`` comes out level) and scaled by ``scale``."""
    matrix = cv2.getRotationMatrix2D(centre, degrees, scale)  # positive: counter-clockwise as seen
    matrix[0, 2] += side / 2 - centre[0]
    matrix[1, 2] += side / 2 - centre[1]
    return matrix


def symmetry_roll(gray: np.ndarray, face: Face) -> float:
    """The roll (degrees, ``Face.roll_degrees``' sign) at which the face is most mirror-symmetric."""
    x, y, w, h = face.box
    scale = SYMMETRY_FACE_PX / w
    side = 2 * SYMMETRY_FACE_PX + 2 * AXIS_SHIFT
    centre = (x + w / 2, y + h / 2)
    crop = cv2.warpAffine(gray, _turn(centre, 0.0, scale, side), (side, side),
                          flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    crop = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), 0.8)
    half_h = int(0.42 * h * scale)
    half_w = int(0.40 * SYMMETRY_FACE_PX)
    mid = side // 2

    shifts = 2 * AXIS_SHIFT + 1

    def cost(degrees: float) -> float:
        turned = cv2.warpAffine(crop, cv2.getRotationMatrix2D((side / 2, side / 2), degrees, 1.0), (side, side),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        band = turned[max(0, mid - half_h):mid + half_h]
        # Every axis position at once: the half-width windows left of each axis, and the mirrored
        # windows right of it, as (shift, row, column) views.
        windows = np.lib.stride_tricks.sliding_window_view(band, half_w, axis=1)
        left = windows[:, mid - AXIS_SHIFT - half_w:mid - AXIS_SHIFT - half_w + shifts].transpose(1, 0, 2)
        right = windows[:, mid - AXIS_SHIFT + 1:mid - AXIS_SHIFT + 1 + shifts, ::-1].transpose(1, 0, 2)
        left = left - left.mean(axis=(1, 2), keepdims=True)
        right = right - right.mean(axis=(1, 2), keepdims=True)
        return float(np.abs(left - right).mean(axis=(1, 2)).min())

    coarse = np.arange(-SYMMETRY_RANGE, SYMMETRY_RANGE + 1e-6, SYMMETRY_STEP)
    start = float(coarse[int(np.argmin([cost(float(a)) for a in coarse]))])
    fine = np.arange(start - SYMMETRY_STEP, start + SYMMETRY_STEP + 1e-6, SYMMETRY_FINE)
    costs = [cost(float(a)) for a in fine]
    best = int(np.argmin(costs))
    angle = float(fine[best])
    if 0 < best < len(fine) - 1:
        c0, c1, c2 = costs[best - 1], costs[best], costs[best + 1]
        curve = c0 - 2 * c1 + c2
        if curve > 0:
            angle += SYMMETRY_FINE * (c0 - c2) / (2 * curve)
    return angle


def _peak(scores: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """Sub-pixel position of a correlation maximum (a parabola along each axis)."""
    dx = dy = 0.0
    if 0 < x < scores.shape[1] - 1:
        a, b, c = scores[y, x - 1], scores[y, x], scores[y, x + 1]
        if a - 2 * b + c < 0:
            dx = 0.5 * (a - c) / (a - 2 * b + c)
    if 0 < y < scores.shape[0] - 1:
        a, b, c = scores[y - 1, x], scores[y, x], scores[y + 1, x]
        if a - 2 * b + c < 0:
            dy = 0.5 * (a - c) / (a - 2 * b + c)
    return x + float(dx), y + float(dy)


def mirrored_match(gray: np.ndarray, eye: tuple[float, float], other: tuple[float, float],
                   distance: float) -> tuple[tuple[float, float], float] | None:
    """Where the mirror image of the patch around ``eye`` best matches near ``other``, and how well."""
    pw = int(round(EYE_PATCH[0] * distance)) | 1
    ph = int(round(EYE_PATCH[1] * distance)) | 1
    sx, sy = int(round(EYE_SEARCH[0] * distance)), int(round(EYE_SEARCH[1] * distance))
    ex, ey = int(round(eye[0])), int(round(eye[1]))
    patch = gray[ey - ph // 2:ey + ph // 2 + 1, ex - pw // 2:ex + pw // 2 + 1]
    ox, oy = int(round(other[0])), int(round(other[1]))
    top, left = oy - ph // 2 - sy, ox - pw // 2 - sx
    area = gray[max(0, top):oy + ph // 2 + sy + 1, max(0, left):ox + pw // 2 + sx + 1]
    if patch.shape != (ph, pw) or top < 0 or left < 0 or area.shape[0] < ph or area.shape[1] < pw:
        return None
    scores = cv2.matchTemplate(area, np.ascontiguousarray(patch[:, ::-1]), cv2.TM_CCOEFF_NORMED)
    _, score, _, (mx, my) = cv2.minMaxLoc(scores)
    px, py = _peak(scores, mx, my)
    # The patch was cut around (ex, ey), not ``eye``: mirrored, that rounding flips sign in x.
    return (left + px + pw // 2 + (ex - eye[0]), top + py + ph // 2 + (eye[1] - ey)), float(score)


@dataclass(frozen=True)
class Levelled:
    """A face measured upright: landmarks whose eye line is the face's (``face.roll_degrees``), and
    the width of the detector's box around the upright face; in the given pixels' coordinates."""

    face: Face
    width: float

    def scaled(self, sx: float, sy: float) -> Levelled:
        """The same measurements with x multiplied by ``sx`` and y by ``sy`` (sx ~ sy)."""
        return Levelled(self.face.scaled(sx, sy), self.width * sx)


def level(pixels: np.ndarray, face: Face, detector: Detector) -> Levelled | None:
    """``face`` (in ``pixels``' coordinates) with landmarks measured again upright and eyes refined
    by mirrored matching, so that ``roll_degrees`` is its eye line; None when a step fails."""
    gray = _gray(pixels)
    roll = symmetry_roll(gray, face)
    x, y, w, h = face.box
    centre = (x + w / 2, y + h / 2)
    scale = LOOK_FACE_PX / h
    forward = _turn(centre, roll, scale, LOOK_SIDE)
    upright = cv2.warpAffine(pixels, forward, (LOOK_SIDE, LOOK_SIDE),
                             flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    found = [f for f in detector.detect_pass(upright, Pass((LOOK_SIDE, LOOK_SIDE))) if f.landmarks is not None]
    if not found:
        return None
    middle = (LOOK_SIDE / 2, LOOK_SIDE / 2)
    seen = min(found, key=lambda f: math.dist((f.box[0] + f.box[2] / 2, f.box[1] + f.box[3] / 2), middle))
    assert seen.landmarks is not None
    right, left = seen.landmarks[0], seen.landmarks[1]
    distance = math.dist(right, left)
    look = _gray(upright).astype(np.float32)
    to_left = mirrored_match(look, right, left, distance)
    to_right = mirrored_match(look, left, right, distance)
    if to_left is None or to_right is None or min(to_left[1], to_right[1]) < MIN_MATCH:
        return None
    # Two estimates of each eye's height: its own landmark, and the other eye's mirrored match.
    # Keep the landmarks' x and midpoint height; take the eye line's angle from the matches.
    residual = (math.atan2(to_left[0][1] - right[1], to_left[0][0] - right[0])
                + math.atan2(left[1] - to_right[0][1], left[0] - to_right[0][0])) / 2
    mid = ((right[0] + left[0]) / 2, (right[1] + left[1]) / 2)
    half = distance / 2
    eyes = ((mid[0] - half * math.cos(residual), mid[1] - half * math.sin(residual)),
            (mid[0] + half * math.cos(residual), mid[1] + half * math.sin(residual)))
    back = cv2.invertAffineTransform(forward)
    points = [*eyes, *seen.landmarks[2:]]
    marks = tuple((float(back[0, 0] * px + back[0, 1] * py + back[0, 2]),
                   float(back[1, 0] * px + back[1, 1] * py + back[1, 2])) for px, py in points)
    return Levelled(Face(face.box, face.score, marks), seen.box[2] / scale)
