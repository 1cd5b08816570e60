"""Haar cascades (the seeds' detector): frontal faces as boxes, no score, no landmarks.

Kept because operators may prefer it (``FACE_DETECTOR=haar``) and requests may name it; on
real photos YuNet finds more faces and fewer false ones at a fraction of the cost
(docs/faces.md). Profiles (``PROFILES``) pick the search:

``general`` (single jobs)
    the default cascade on a copy at most 1024 px long, faces down to ~3 % of the longest
    side (measurements in ``GENERAL_*`` below).
``portrait``
    batches of portraits and ID photos: faces are at least 10 % of the photo's short side, so
    the detection image is only as large as makes such a face 40 px, searched with the
    ``alt2`` cascade; ~4x faster per photo (``PORTRAIT_*``).
``batch``
    ``portrait`` first, ``general`` only when it found nothing (what batches run), so batch
    recall is never below the single-job search.

Geometry of a Haar box: ``haarcascade_frontalface_default`` returns a square that spans roughly
the eyebrows / lower forehead to the chin (see ``jobs/imaging/framing.py``).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from jobs.imaging.detectors import Face, Pass, coarse_to_fine, pass_size, sort_faces

CASCADE_FILE = "haarcascade_frontalface_default.xml"

# "general" detection parameters, chosen by measurement (OpenCV 4.12, one thread):
# - scikit-image's 100 LFW faces, upscaled to 150 px inside a 300 px replicated border:
#   sf 1.05/1.1 find 98 %, 1.15 95-97 %, 1.2 92-97 %; minNeighbors 8+ starts losing faces.
# - astronaut (512 px) has exactly one box at sf 1.1-1.2 for minNeighbors 3-8; sf 1.05 adds
#   a false box on the suit. Upscaled to 768-1024 px (as a 1-3 MP photo looks after our
#   downscale), minNeighbors 5 and minSize 24 add a ~40 px false box; 6 and 32 remove it.
# - LFW faces 25-64 px wide pasted on a 1024x768 canvas: minSize 32 still finds 11/25 at
#   32 px, 19/25 at 40 px and all but one at 48+ px.
# - false positives on 19 non-face scikit-image photos: coins (real faces on coins) and
#   one on ``cell``; 0 on LFW's 100 non-face patches and on noise. Equalising the histogram
#   first removed the upscaled astronaut's false box but added false boxes on textures
#   (moon, retina) and lost small faces, so it is not used.
# - time for a 1024x768 portrait: ~300 ms at minSize 24, ~235 ms at 32, ~175 ms at 48;
#   sf 1.2 would be ~45 % faster but finds fewer faces.
# ``skimage.data.camera()`` (a man in 3/4 profile) is not found: the cascade is frontal.
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 6
MIN_FACE_PX = 32  # in the downscaled (<= max_side) detection image

# "portrait" profile (batches). The rule: a portrait's or ID photo's face is at least 10 % of
# the photo's short side, so the detection image is scaled to make such a face 40 px (a
# 1200x1600 photo is searched at 400x533, where the general profile uses 768x1024).
# Chosen by measurement (OpenCV 4.12, one thread) on 1-3 MP JPEG portraits built by
# scripts/bench_batch.py: LFW faces and the astronaut at 10-55 % of the short side on photo
# and studio backdrops; a face is found when a box has IoU >= 0.3 with it. Against the naive
# pipeline (default cascade, <= 1024 px, sf 1.1, minNeighbors 5, minSize 40; 227 ms/photo
# CPU), faces found / largest box on the face / false boxes, ms/photo CPU:
#   set (seeds)        naive               alt2 sf1.15 mn3       alt2 sf1.2 mn3
#   600 (1-3) 10-55 %  589 / 560 / 294     593 / 589 / 19  59    593 / 592 / 1  48
#   400 (4-5) 10-55 %  392 / 371 / 211     397 / 395 / 18  60    395 / 395 / 0  49
#   200 (6)   10-16 %  195 / 173 / 125     197 / 194 / 12  57    197 / 197 / 1  46
# Seeds 1-3 chose the values, 4-6 checked them. With the default cascade at this size, no
# sf/minNeighbors pair matched the naive recall under ~60 ms (sf 1.1 mn 3 at a 40 px minimum:
# 197/200 but 63 false boxes); minNeighbors 4-5 and sf 1.25 lose faces; a 24-36 px minimum
# (smaller detection image) loses faces near the 10 % limit. ``alt2`` boxes match the default
# cascade's within ~1.5 % in size and position (LFW faces, astronaut), so framing is unchanged.
PORTRAIT_CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
PORTRAIT_SCALE_FACTOR = 1.2
PORTRAIT_MIN_NEIGHBORS = 3
PORTRAIT_MIN_FACE_PX = 40  # a face of PORTRAIT_MIN_FACE_FRACTION measures this in the detection image
PORTRAIT_MIN_FACE_FRACTION = 0.10  # of the photo's short side

# Boxes narrower than this fraction of the largest box are dropped: every false box seen on
# the astronaut upscaled to 768-1024 px was 27-28 % of the real face's width (e.g. 53 px
# beside 194 px), and a face that small next to the subject is a bystander, not what a
# portrait crop or its ``faceCount`` is about.
MIN_RELATIVE_FACE = 1 / 3


@dataclass(frozen=True)
class Profile:
    """How a photo is searched for faces: which cascade, its parameters, the smallest face.

    The detection image is the photo scaled down (never up) so that its longest side is at
    most ``max_side`` and, when ``min_face_fraction`` is set, so that a face of that fraction
    of the photo's short side measures ``min_face_px`` in it; ``min_face_px`` is also the
    cascade's ``minSize``. Faces smaller than that are not looked for, which is where the
    time goes: the cascade's work grows with the square of (short side / smallest face).
    """

    name: str
    cascade: str  # a Haar cascade file shipped in cv2.data.haarcascades
    scale_factor: float
    min_neighbors: int
    min_face_px: int
    max_side: int = 1024
    min_face_fraction: float = 0.0  # of the photo's short side; 0: only ``min_face_px`` applies

    def detection_scale(self, width: int, height: int) -> float:
        """Factor from photo pixels to detection-image pixels (at most 1)."""
        scale = min(1.0, self.max_side / max(width, height))
        if self.min_face_fraction > 0:
            scale = min(scale, self.min_face_px / (self.min_face_fraction * min(width, height)))
        return scale

    def smallest_face(self) -> str:
        """The smallest face looked for, in words (for error messages)."""
        if self.min_face_fraction > 0:
            return f"{self.min_face_fraction:.0%} of the photo's shorter side"
        return f"~{self.min_face_px / self.max_side:.0%} of the longest side"


PROFILES: dict[str, Profile] = {
    "general": Profile("general", CASCADE_FILE, SCALE_FACTOR, MIN_NEIGHBORS, MIN_FACE_PX),
    "portrait": Profile("portrait", PORTRAIT_CASCADE_FILE, PORTRAIT_SCALE_FACTOR, PORTRAIT_MIN_NEIGHBORS,
                        PORTRAIT_MIN_FACE_PX, min_face_fraction=PORTRAIT_MIN_FACE_FRACTION),
}
# A detector profile is the list of Haar profiles searched in turn.
SEARCHES: dict[str, tuple[str, ...]] = {"general": ("general",), "portrait": ("portrait",),
                                        "batch": ("portrait", "general")}


def get_profile(profile: str | Profile) -> Profile:
    """A ``Profile`` by name (``general``, ``portrait``), or the one given."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown detection profile {profile!r}; expected one of {', '.join(PROFILES)}") from None


_cascades: dict[str, Any] = {}
_cascade_lock = threading.Lock()


def get_cascade(name: str = CASCADE_FILE) -> Any:
    """The loaded ``cv2.CascadeClassifier`` for a file of ``cv2.data.haarcascades`` (loaded once)."""
    cascade = _cascades.get(name)
    if cascade is None:
        with _cascade_lock:
            cascade = _cascades.get(name)
            if cascade is None:
                path = os.path.join(cv2.data.haarcascades, name)  # type: ignore[attr-defined]
                cascade = cv2.CascadeClassifier(path)
                if cascade.empty():
                    raise RuntimeError(
                        f"cannot load the Haar cascade {path}; opencv-python-headless must be "
                        "a 4.x release (5.x ships no Haar files): pin opencv-python-headless<5")
                _cascades[name] = cascade
    return cascade


def preload() -> None:
    """Load every profile's cascade now (the worker parent calls this before RQ forks)."""
    for profile in PROFILES.values():
        get_cascade(profile.cascade)


def gray(pixels: np.ndarray, *, rgb: bool = True) -> np.ndarray:
    """A grayscale copy of RGB(A) (``rgb``) or BGR(A) pixels; gray pixels as they are."""
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2GRAY if rgb else cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY)


def _cascade_boxes(gray_pixels: np.ndarray, size: tuple[int, int], profile: Profile,
                   min_relative: float) -> list[tuple[int, int, int, int]]:
    """The cascade's boxes in the ``size`` detection image, narrow ones dropped (see ``search``)."""
    height, width = gray_pixels.shape[:2]
    image = gray_pixels
    if (width, height) != size:
        image = cv2.resize(gray_pixels, size, interpolation=cv2.INTER_AREA)
    found = [tuple(int(v) for v in box) for box in get_cascade(profile.cascade).detectMultiScale(
        image, scaleFactor=profile.scale_factor, minNeighbors=profile.min_neighbors,
        minSize=(profile.min_face_px, profile.min_face_px))]
    if found and min_relative > 0:
        smallest = max(box[2] for box in found) * min_relative
        found = [box for box in found if box[2] >= smallest]
    return found  # type: ignore[return-value]


def search(gray_pixels: np.ndarray, size: tuple[int, int], profile: Profile,
           min_relative: float = MIN_RELATIVE_FACE) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) in ``gray_pixels``' whole pixels, the image searched at ``size``, largest first.

    Boxes narrower than ``min_relative`` of the largest are dropped (``MIN_RELATIVE_FACE``).
    """
    height, width = gray_pixels.shape[:2]
    found = _cascade_boxes(gray_pixels, size, profile, 0.0)
    to_x, to_y = width / size[0], height / size[1]
    boxes: list[tuple[int, int, int, int]] = []
    for x, y, w, h in found:
        x0 = max(0, min(width - 1, round(x * to_x)))
        y0 = max(0, min(height - 1, round(y * to_y)))
        x1 = max(x0 + 1, min(width, round((x + w) * to_x)))
        y1 = max(y0 + 1, min(height, round((y + h) * to_y)))
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    boxes.sort(key=lambda b: (-b[2] * b[3], b[1], b[0]))
    if boxes and min_relative > 0:
        smallest = boxes[0][2] * min_relative
        boxes = [b for b in boxes if b[2] >= smallest]
    return boxes


class HaarDetector:
    """OpenCV's frontal-face Haar cascades, searched per a detector profile (``SEARCHES``)."""

    name = "haar"

    def __init__(self, profile: str = "general") -> None:
        if profile not in SEARCHES:
            raise ValueError(f"unknown detection profile {profile!r}; expected one of {', '.join(SEARCHES)}")
        self.profiles = tuple(PROFILES[name] for name in SEARCHES[profile])
        for chosen in self.profiles:
            get_cascade(chosen.cascade)

    def passes(self, width: int, height: int) -> tuple[Pass, ...]:
        """One pass per Haar profile, its detection image sized by ``Profile.detection_scale``."""
        return tuple(Pass(pass_size(width, height, p.detection_scale(width, height)), stage)
                     for stage, p in enumerate(self.profiles))

    def detect_pass(self, pixels: np.ndarray, search_pass: Pass) -> list[Face]:
        """Faces of one profile's search of RGB(A)/L ``pixels``, in their coordinates, largest first.

        Boxes are mapped from the detection image without rounding (the crop rounds once, in
        photo pixels), so a square box stays square whatever scale the pixels were decoded at.
        """
        height, width = pixels.shape[:2]
        size = search_pass.size
        boxes = _cascade_boxes(gray(pixels), size, self.profiles[search_pass.stage], MIN_RELATIVE_FACE)
        to_x, to_y = width / size[0], height / size[1]
        return sort_faces([Face((x * to_x, y * to_y, w * to_x, h * to_y)) for x, y, w, h in boxes])

    def detect(self, pixels: np.ndarray) -> list[Face]:
        """Faces in ``pixels``: each profile in turn until one finds a face."""
        return coarse_to_fine(self, pixels)

    def enough(self, count: int, smallest_px: float) -> bool:
        """Any face ends the search (the next profile is a fallback for photos without one)."""
        return True

    def smallest_face(self, width: int, height: int) -> str:
        """The smallest face the last profile looks for, in words."""
        return self.profiles[-1].smallest_face()
