"""Face detectors behind one small protocol, chosen by name (docs/faces.md).

Every detector answers ``detect(pixels) -> list[Face]``: boxes and, where the detector has
them, five landmarks, in the coordinates of the pixels it was given (the crop pipeline gives
it the photo after EXIF rotation, at some decoded scale, and maps the faces back to photo
pixels with ``Face.scaled``). ``pixels`` are uint8 RGB, RGBA or L (grayscale), as
``jobs.imaging.photo`` decodes them.

A detector searches in one or more *passes*, coarse to fine: a pass is the size of the
detection image (and, for Haar, which cascade settings to use). The next pass runs only when
the previous one found nothing, or only faces so small in its image that smaller ones may have
been missed (``Detector.enough``: a group photo, people far away), so the cost of a larger
search falls only on photos that need it. ``detect`` runs them on the given pixels; the crop
pipeline runs them one by one (``passes`` / ``detect_pass``) so that it can decode the JPEG
at a larger DCT scale only when a finer pass needs more pixels than the first decode gave.

Order: faces come back largest first (box area). Ties (equal area to the pixel, e.g. the same
face pasted twice) go to the higher score, then the top-most, then the left-most box, so the
chosen face never depends on the detector's internal order.

Implementations: ``yunet`` (``detectors/yunet.py``, the default) and ``haar``
(``detectors/haar.py``). ``core.contracts.FACE_DETECTORS`` lists the same names for the API.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.contracts import FACE_DETECTORS

Point = tuple[float, float]


class ModelFileError(RuntimeError):
    """A detector's model file is missing or not the expected one (the message says how to restore it)."""


@dataclass(frozen=True)
class Face:
    """A face: ``box`` (x, y, width, height), ``score`` (0-1, None for Haar) and ``landmarks``.

    ``landmarks`` are five (x, y) points in ``core.contracts.LANDMARK_NAMES`` order: the
    subject's right eye (on the viewer's left), left eye, nose tip, right and left mouth
    corners; None when the detector has none (Haar).
    """

    box: tuple[float, float, float, float]
    score: float | None = None
    landmarks: tuple[Point, ...] | None = None

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return self.box[2] * self.box[3]

    def scaled(self, sx: float, sy: float) -> Face:
        """The same face with every x multiplied by ``sx`` and every y by ``sy``."""
        x, y, w, h = self.box
        marks = None if self.landmarks is None else tuple((px * sx, py * sy) for px, py in self.landmarks)
        return Face((x * sx, y * sy, w * sx, h * sy), self.score, marks)

    @property
    def eyes(self) -> tuple[Point, Point] | None:
        """(right eye, left eye) as the viewer sees them: left of the picture first; None without landmarks."""
        if self.landmarks is None:
            return None
        return self.landmarks[0], self.landmarks[1]

    @property
    def roll_degrees(self) -> float | None:
        """Angle of the eye line from horizontal, clockwise positive in image coordinates (y down).

        A head tilted towards the subject's right shoulder (the picture's left) has its right eye
        lower, so the line from the right eye to the left eye rises: negative roll. Rotating the
        picture by this angle about the eyes levels them. None without landmarks.
        """
        eyes = self.eyes
        if eyes is None:
            return None
        (rx, ry), (lx, ly) = eyes
        return math.degrees(math.atan2(ly - ry, lx - rx))


def sort_faces(faces: list[Face]) -> list[Face]:
    """Largest box first; ties to the higher score, then the top-most, then the left-most box."""
    return sorted(faces, key=lambda f: (-round(f.area), -(f.score or 0.0), f.box[1], f.box[0]))


@dataclass(frozen=True)
class Pass:
    """One search: the detection image's (width, height) and which of the detector's settings it uses."""

    size: tuple[int, int]
    stage: int = 0


class Detector(Protocol):
    """What every face detector offers (see the module docstring)."""

    name: str

    def passes(self, width: int, height: int) -> tuple[Pass, ...]:
        """The searches for a ``width`` x ``height`` image, coarse to fine; never larger than the image."""
        ...

    def detect_pass(self, pixels: np.ndarray, search: Pass) -> list[Face]:
        """Faces found by one search of ``pixels`` (resized to ``search.size``), in ``pixels``' coordinates, sorted."""
        ...

    def detect(self, pixels: np.ndarray) -> list[Face]:
        """Faces in ``pixels`` by the coarse-to-fine passes (the next only when one found nothing), sorted."""
        ...

    def enough(self, count: int, smallest_px: float) -> bool:
        """Whether a pass that found ``count`` faces, the smallest ``smallest_px`` wide in its detection
        image, ends the search (False: smaller faces may have been missed; the next pass looks too)."""
        ...

    def smallest_face(self, width: int, height: int) -> str:
        """The smallest face the passes look for in such an image, in words (for error messages)."""
        ...


def coarse_to_fine(detector: Detector, pixels: np.ndarray) -> list[Face]:
    """``detector``'s passes over ``pixels`` until one finds enough (the shared ``detect``).

    A later pass's faces replace an earlier pass's when they are at least as many.
    """
    height, width = pixels.shape[:2]
    best: list[Face] = []
    for search in detector.passes(width, height):
        faces = detector.detect_pass(pixels, search)
        if faces and len(faces) >= len(best):
            best = faces
        if faces and detector.enough(len(faces), smallest_px(faces, search, width)):
            break
    return best


def smallest_px(faces: list[Face], search: Pass, width: int) -> float:
    """Width of the narrowest of ``faces`` (in an image ``width`` wide) in ``search``'s detection image."""
    return min(face.box[2] for face in faces) * search.size[0] / width


def pass_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of an image scaled by ``scale`` (at most 1: never upscaled), at least 1x1."""
    scale = min(1.0, scale)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _yunet(profile: str) -> Detector:
    from jobs.imaging.detectors.yunet import YuNetDetector

    return YuNetDetector()


def _haar(profile: str) -> Detector:
    from jobs.imaging.detectors.haar import HaarDetector

    return HaarDetector(profile)


# name -> factory(profile). Profiles only change Haar's search (detectors/haar.py); YuNet's
# coarse-to-fine passes serve single photos and batches alike, so it is built once.
_FACTORIES: dict[str, Callable[[str], Detector]] = {"yunet": _yunet, "haar": _haar}
_PROFILED = {"haar"}
assert tuple(_FACTORIES) == FACE_DETECTORS, "core.contracts.FACE_DETECTORS and the registry must agree"

_instances: dict[tuple[str, str], Detector] = {}
_lock = threading.Lock()


def get_detector(name: str, profile: str = "general") -> Detector:
    """The detector called ``name`` (built once per process and profile; YuNet checks its model file then)."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown face detector {name!r}; expected one of {', '.join(FACE_DETECTORS)} "
                         "(setting FACE_DETECTOR, option detector)")
    key = (name, profile if name in _PROFILED else "")
    detector = _instances.get(key)
    if detector is None:
        with _lock:
            detector = _instances.get(key)
            if detector is None:
                detector = _instances[key] = factory(profile)
    return detector


def preload(default: str) -> None:
    """Build the ``default`` detector and Haar's now (the worker parent calls this before RQ forks),
    with YuNet's common first-pass networks warmed (``YuNetDetector.warm``).

    Raises ``ValueError`` for an unknown name and ``ModelFileError`` when YuNet's model file is
    missing or altered, so a misconfigured worker stops at start instead of failing every job.
    YuNet is also loaded when Haar is the default, as long as its file is intact: a request may
    still ask for it.
    """
    get_detector(default)
    get_detector("haar")
    from jobs.imaging.detectors.yunet import YuNetDetector

    try:
        yunet = get_detector("yunet")
    except ModelFileError:
        return  # (Haar is the default) requests naming yunet fail with the same message
    if isinstance(yunet, YuNetDetector):
        yunet.warm()  # its common first-pass networks, built once here rather than in every work-horse
