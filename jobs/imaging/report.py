"""The ID photo's compliance report: every check measured on the output itself, with its limit.

The output is searched again for faces (YuNet), its eye line measured as the crop's levelling
does, the chin estimated from those landmarks and the crown read from the output's alpha (the
top of the person straight above the eyes). Nothing is taken from the framing's intentions, so a
wrong mask, a missed eye line or a blurred face shows as a failed check, never as a silent pass.

Checks (``name``: measured value, limit, pass):
    headHeight       chin to crown, mm (and % of the photo height)   spec's head range
    eyeLine          eye line above the bottom edge, mm (and %)      spec's eye range
    roll             eye-line angle after levelling, degrees         |roll| <= MAX_ROLL
    yaw              estimate from landmark symmetry, degrees         |yaw| <= MAX_YAW
    oneFace          faces of similar size in the source             exactly 1
    faceLargeEnough  output pixels per source pixel                   <= the job's MAX_UPSCALE
    sharpness        variance of the Laplacian on the face (120 px)  >= MIN_SHARPNESS
    highlights       share of face pixels at 250-255                 <= MAX_CLIPPED
    shadows          share of face pixels at 0-5                     <= MAX_CLIPPED
    background       mean |difference| from the colour, top corners  <= MAX_BACKGROUND_DIFF
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from core.id_photos import IdPhotoSpec
from jobs.imaging.detectors import Detector, Face
from jobs.imaging.framing import estimate_head
from jobs.imaging.levelling import level

MAX_ROLL = 1.0  # degrees (the goal; ISO/IEC 19794-5 allows +-8 for the pose, offices less)
MAX_YAW = 8.0  # degrees; ISO/IEC 19794-5 best practice +-5, the landmark estimate is rougher
# Laplacian variance of the face scaled to SHARP_FACE_PX wide. Measured (scripts/bench_idphoto.py):
# the astronaut's variants ~120-150 at every spec; blurred with a 6 px Gaussian at 1024 px: ~4.
SHARP_FACE_PX = 120
MIN_SHARPNESS = 60.0
MAX_CLIPPED = 0.05  # share of the face
MAX_BACKGROUND_DIFF = 6.0  # 0-255 levels
CORNER_SHARE = 0.12  # corner patches: this share of the width and height
YAW_DEPTH = 0.55  # nose tip in front of the eyes' plane, as a share of the eye distance


@dataclass(frozen=True)
class Check:
    """One check: measured value (None when it could not be measured: a failure), limit, pass."""

    name: str
    measured: float | int | None
    limit: str
    passed: bool
    unit: str = ""
    extra: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """camelCase, for the result and the record."""
        data: dict[str, Any] = {"name": self.name, "measured": self.measured, "unit": self.unit,
                                "limit": self.limit, "pass": self.passed}
        if self.extra:
            data.update(self.extra)
        return data


@dataclass(frozen=True)
class Report:
    """Every check, and whether all passed."""

    checks: tuple[Check, ...]
    spec: IdPhotoSpec
    crown_source: str = "mask"

    @property
    def compliant(self) -> bool:
        """True only when every check was measured and passed."""
        return all(check.passed for check in self.checks)

    def check(self, name: str) -> Check:
        """The named check (KeyError when absent)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report as stored: compliant, the spec, and the checks."""
        return {"compliant": self.compliant, "spec": self.spec.to_dict(), "crownSource": self.crown_source,
                "checks": [check.to_dict() for check in self.checks]}


def _range(low: float, high: float, unit: str) -> str:
    return f"{low:g}-{high:g} {unit}"


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def yaw_degrees(face: Face) -> float | None:
    """A yaw estimate from the landmarks: the nose tip's offset from the eyes' midpoint across the eye line."""
    if face.landmarks is None:
        return None
    (rx, ry), (lx, ly), (nx, ny) = face.landmarks[0], face.landmarks[1], face.landmarks[2]
    iod = math.hypot(lx - rx, ly - ry)
    if iod <= 0:
        return None
    ux, uy = (lx - rx) / iod, (ly - ry) / iod
    across = ((nx - (rx + lx) / 2) * ux + (ny - (ry + ly) / 2) * uy) / iod
    return math.degrees(math.asin(max(-1.0, min(1.0, across / YAW_DEPTH))))


def crown_in_alpha(alpha: np.ndarray, centre_x: float, eyes_y: float, band: float) -> float | None:
    """The top of the person above the eyes in an upright alpha (median of columns across the centre)."""
    height, width = alpha.shape
    top = int(max(0, math.floor(eyes_y)))
    if top <= 0 or top >= height:
        return None
    tops = []
    for x in np.linspace(centre_x - band, centre_x + band, 9):
        column = int(round(x))
        if not 0 <= column < width:
            continue
        line = alpha[:top + 1, column][::-1]  # from the eye line up
        below = np.nonzero(line < 0.5)[0]
        tops.append(top - int(below[0]) + 0.5 if below.size else 0.0)
    return float(np.median(tops)) if tops else None


def face_stats(pixels: np.ndarray, face: Face) -> tuple[float, float, float]:
    """(Laplacian variance at SHARP_FACE_PX wide, highlight share, shadow share) inside the face box."""
    x, y, w, h = face.box
    height, width = pixels.shape[:2]
    x0, y0 = max(0, int(x + 0.1 * w)), max(0, int(y + 0.1 * h))
    x1, y1 = min(width, int(x + 0.9 * w)), min(height, int(y + 0.9 * h))
    gray = cv2.cvtColor(np.ascontiguousarray(pixels[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    if gray.size == 0:
        return 0.0, 1.0, 1.0
    scale = SHARP_FACE_PX / gray.shape[1]
    sized = cv2.resize(gray, (SHARP_FACE_PX, max(1, round(gray.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    sharpness = float(cv2.Laplacian(sized, cv2.CV_64F).var())
    return sharpness, float((gray >= 250).mean()), float((gray <= 5).mean())


def background_difference(pixels: np.ndarray, colour: tuple[int, int, int]) -> float:
    """Mean |difference| (0-255) from ``colour`` over the two top corner patches."""
    height, width = pixels.shape[:2]
    ph, pw = max(1, round(height * CORNER_SHARE)), max(1, round(width * CORNER_SHARE))
    corners = np.concatenate([pixels[:ph, :pw].reshape(-1, 3), pixels[:ph, width - pw:].reshape(-1, 3)])
    return float(np.abs(corners.astype(np.float32) - np.array(colour, dtype=np.float32)).mean())


def measure(pixels: np.ndarray, alpha: np.ndarray, spec: IdPhotoSpec, size: tuple[int, int],
            colour: tuple[int, int, int], finder: Detector, *, faces_in_source: int, upscale: float,
            max_upscale: float, crown_source: str = "mask") -> Report:
    """Measure the output (RGB ``pixels`` and its 0-1 ``alpha``) against ``spec``."""
    out_w, out_h = size
    px_per_mm = out_h / spec.height_mm
    faces = finder.detect(pixels)
    face = faces[0] if faces else None
    head_mm = eye_mm = roll = yaw = None
    sharpness, highlights, shadows = 0.0, 1.0, 1.0
    if face is not None and face.landmarks is not None:
        levelled = level(pixels, face, finder)
        measured = levelled.face if levelled is not None else face
        width = levelled.width if levelled is not None else None
        roll = measured.roll_degrees
        head = estimate_head(measured, width)
        if head is not None:
            crown = crown_in_alpha(alpha, head.centre_x, head.eyes_y, 0.12 * head.height)
            if crown is not None and crown > 0:
                head_mm = (head.chin_y - crown) / px_per_mm
            eye_mm = (out_h - head.eyes_y) / px_per_mm
        yaw = yaw_degrees(measured)
        sharpness, highlights, shadows = face_stats(pixels, face)
    background = background_difference(pixels, colour)

    def inside(value: float | None, low: float, high: float) -> bool:
        return value is not None and low <= value <= high

    checks = (
        Check("headHeight", _round(head_mm), _range(spec.head_min_mm, spec.head_max_mm, "mm"),
              inside(head_mm, spec.head_min_mm, spec.head_max_mm), "mm",
              {"percent": _round(None if head_mm is None else 100 * head_mm / spec.height_mm, 1),
               "limitPercent": _range(round(100 * spec.head_min_mm / spec.height_mm, 1),
                                      round(100 * spec.head_max_mm / spec.height_mm, 1), "%")}),
        Check("eyeLine", _round(eye_mm), _range(spec.eye_min_mm, spec.eye_max_mm, "mm above the bottom"),
              inside(eye_mm, spec.eye_min_mm, spec.eye_max_mm), "mm",
              {"percent": _round(None if eye_mm is None else 100 * eye_mm / spec.height_mm, 1)}),
        Check("roll", _round(roll), f"|roll| <= {MAX_ROLL:g} degrees", inside(roll, -MAX_ROLL, MAX_ROLL), "degrees"),
        Check("yaw", _round(yaw, 1), f"|yaw| <= {MAX_YAW:g} degrees", inside(yaw, -MAX_YAW, MAX_YAW), "degrees"),
        Check("oneFace", faces_in_source, "exactly 1", faces_in_source == 1, "faces"),
        Check("faceLargeEnough", _round(upscale), f"<= {max_upscale:g}x enlargement", upscale <= max_upscale, "x"),
        Check("sharpness", _round(sharpness, 1), f">= {MIN_SHARPNESS:g} (Laplacian variance)",
              face is not None and sharpness >= MIN_SHARPNESS, ""),
        Check("highlights", _round(highlights, 4), f"<= {MAX_CLIPPED:g} of the face clipped",
              face is not None and highlights <= MAX_CLIPPED, "share"),
        Check("shadows", _round(shadows, 4), f"<= {MAX_CLIPPED:g} of the face clipped",
              face is not None and shadows <= MAX_CLIPPED, "share"),
        Check("background", _round(background), f"<= {MAX_BACKGROUND_DIFF:g} levels from the colour",
              background <= MAX_BACKGROUND_DIFF, "levels"),
    )
    return Report(checks, spec, crown_source)
