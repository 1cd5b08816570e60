"""Face detection and cropping: pure functions over bytes and arrays, no network or disk I/O.

Pipeline (``process``): decode with Pillow (format allow-list, pixel cap checked before
decoding, EXIF orientation applied) -> detect faces with an OpenCV frontal-face Haar cascade on
a grayscale copy downscaled per the detection ``Profile`` -> take the largest face -> cut the
mode's window from pixels that give it at least the output size (the full-resolution image,
or a JPEG decoded at 1/2-1/8 size where that already suffices) -> resize to the output size
-> encode.

Detection profiles (``PROFILES``, ``process(..., profile=...)``)
    ``general`` (single jobs, the default): the default cascade on a copy at most 1024 px
    long, faces down to ~3 % of the longest side. ``portrait`` (batches of portraits and ID
    photos): faces are at least 10 % of the photo's short side, so the detection image is
    only as large as makes such a face 40 px (400 px on the short side), searched with the
    ``alt2`` cascade; ~4x faster per photo, and on the measured portraits it found at least
    as many faces as the naive 1024 px pipeline with far fewer false boxes (``PORTRAIT_*``).

Geometry of a Haar box
    ``haarcascade_frontalface_default`` returns a square that spans roughly the eyebrows /
    lower forehead to the chin. Measured on ``skimage.data.astronaut()`` (box x=177 y=66
    95x95): eye line at y~100 (box top + 0.36 h), chin at y~172 (box bottom + 0.11 h), top of
    the hair at y~15. We estimate, for a box of height ``h``:
    chin = box bottom + 0.10 h, crown (top of the head) = box top - 0.45 h, so the head
    (crown to chin) is ``1.55 h`` tall; the eye line sits about half-way down the head.

Modes (each is an aspect ratio, a head-to-photo ratio or padding, where the crown sits, and
a default output size)
    ``square``
        Padding 0.20 of the face box added on each side, square window centred on the face
        box, 300x300 output (SPEC.md section 4: the batch default).
    ``passport``
        35:45 portrait, 413x531 px (35x45 mm at 300 dpi). ICAO Doc 9303 Part 3 / ISO/IEC
        19794-5 and the UK and Schengen photo rules ask for the head (chin to crown) to be
        32-36 mm of the 45 mm height, i.e. 70-80 % of the photo, centred horizontally, with
        the eye line 50-70 % of the height up from the bottom edge. We size the head to 75 %
        of the height (34 mm), centre the face box horizontally and leave 8 % (3.6 mm) above
        the crown; the eye line then falls ~53 % up from the bottom and the chin ~17 % above
        the bottom edge, leaving room for the neck and shoulders.
    ``idcard``
        3:4 portrait, 450x600 px. Head 62.5 % of the height (between the 60-65 % common for
        staff and student cards), 10 % above the crown, so ~27 % of the height below the
        chin shows more shoulders than a passport photo; centred horizontally.

Options
    ``padding`` (fraction of the face box added on each side, vertically) overrides the
    mode's framing: the window is ``h * (1 + 2 * padding)`` tall, the mode's aspect wide, and
    keeps the face centre where the mode puts it. The modes' own framing, in those terms, is
    0.20 (square), 0.53 (passport) and 0.74 (idcard). ``output_width`` / ``output_height``
    override the output size; given alone, the other follows the mode's aspect; given both,
    the window takes the aspect of the output (no distortion). A derived side above
    ``MAX_OUTPUT_SIDE`` scales both down to fit.

Edges
    A window that runs past the image edge is shifted back inside the image where the image
    is big enough along that axis. Where it is not (the face fills the photo), the window
    keeps the mode's framing and the missing part is filled by replicating the edge pixels
    (``cv2.BORDER_REPLICATE``): portraits usually have plain background at their edges, so
    this reads as more background, where a white band would look like a frame.

No face
    ``options.no_face == 'fail'`` (and always for passport / idcard) raises
    ``PermanentJobError(code=NO_FACE)``; ``'center'`` (square mode only) crops the largest
    centred square and reports ``faceDetected: false, faceCount: 0, faceBox: null``.
"""
from __future__ import annotations

import math
import os
import struct
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from core.contracts import MAX_OUTPUT_SIDE, CropOptions
from core.errors import NO_FACE, NOT_AN_IMAGE, PermanentJobError
from jobs.imaging.images import DECODE_ERRORS, open_image

DEFAULT_MAX_PIXELS = 60_000_000  # same default as Settings.max_image_pixels

# OpenCV reads this when it is imported; we never decode with OpenCV, but keep its own cap
# in line with ours in case someone does.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

# One job per core: RQ runs one work-horse per worker, and we scale by adding workers.
cv2.setNumThreads(1)
# Pillow's own decompression-bomb guard: warns above this, refuses above twice this. Our
# explicit check in decode_image is the one that normally fires (it uses the job's setting).
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

CASCADE_FILE = "haarcascade_frontalface_default.xml"

# "general" detection parameters, chosen by measurement (see detect_faces' docstring).
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
# The first decode is at the detection image's scale only where that allows JPEG's 1/4 or 1/8
# DCT scaling (photos of ~4+ MP); else the photo is decoded once at full size. At 1/2, the
# crop nearly always needed a second, full decode, which cost more than the first saved.
DRAFT_MAX_SCALE = 0.25
EXIF_ORIENTATION = 0x0112
# Boxes narrower than this fraction of the largest box are dropped (see detect_faces).
MIN_RELATIVE_FACE = 1 / 3

# Face-box geometry (see the module docstring).
CROWN_ABOVE_BOX = 0.45  # crown = box top - 0.45 h
CHIN_BELOW_BOX = 0.10  # chin = box bottom + 0.10 h
HEAD_PER_BOX = 1.0 + CROWN_ABOVE_BOX + CHIN_BELOW_BOX  # head height / box height = 1.55

_CONTENT_TYPES = {"jpeg": ("image/jpeg", "jpg"), "png": ("image/png", "png"), "webp": ("image/webp", "webp")}


@dataclass(frozen=True)
class Frame:
    """A mode's framing: window aspect (w/h), padding, face-centre height, output size."""

    aspect: float
    padding: float  # fraction of the face box added on each side, vertically
    face_center_y: float  # face-box centre, as a fraction of the window height from its top
    output: tuple[int, int]  # (width, height)


def _head_frame(aspect: float, head_ratio: float, crown_margin: float, output: tuple[int, int]) -> Frame:
    """Frame whose head (crown to chin) is ``head_ratio`` of the height, crown ``crown_margin`` down."""
    window_per_box = HEAD_PER_BOX / head_ratio  # window height / face-box height
    centre = crown_margin + (CROWN_ABOVE_BOX + 0.5) / window_per_box
    return Frame(aspect, (window_per_box - 1.0) / 2.0, centre, output)


FRAMES: dict[str, Frame] = {
    "square": Frame(1.0, 0.20, 0.5, (300, 300)),
    "passport": _head_frame(35 / 45, 0.75, 0.08, (413, 531)),
    "idcard": _head_frame(3 / 4, 0.625, 0.10, (450, 600)),
}

Box = tuple[int, int, int, int]

_cascades: dict[str, Any] = {}
_cascade_lock = threading.Lock()


@dataclass(frozen=True)
class CropResult:
    """An encoded crop and what was found; ``face_box`` is in original (EXIF-rotated) pixels."""

    data: bytes
    content_type: str
    extension: str
    face_detected: bool
    face_count: int
    face_box: dict[str, int] | None
    width: int
    height: int
    faces: tuple[Box, ...] = ()  # every face kept, largest first, in photo pixels
    decodes: int = 1  # 2 when the crop needed more pixels than detection decoded

    def to_result(self) -> dict[str, Any]:
        """The camelCase job result (no image bytes)."""
        return {
            "faceDetected": self.face_detected,
            "faceCount": self.face_count,
            "faceBox": self.face_box,
            "width": self.width,
            "height": self.height,
        }


# --- decode -------------------------------------------------------------------------------


def _load(image: Image.Image, kind: str) -> np.ndarray:
    """Decode an opened image, EXIF-rotated, to an RGB, RGBA or L (grayscale) array."""
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when upright
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16-bit / float grayscale: scale to 8 bits rather than clip.
            arr16 = np.asarray(image, dtype=np.float64)
            peak = float(arr16.max()) or 1.0
            image = Image.fromarray(np.clip(arr16 * (255.0 / peak), 0, 255).astype(np.uint8))
        if image.has_transparency_data:
            if image.mode != "RGBA":
                image = image.convert("RGBA")
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        return np.asarray(image)
    except DECODE_ERRORS as exc:
        raise PermanentJobError(
            f"the {kind} data is damaged or truncated ({exc})", code=NOT_AN_IMAGE
        ) from None


def _to_bgr(pixels: np.ndarray) -> np.ndarray:
    """RGB -> BGR, RGBA -> BGRA, L -> BGR (OpenCV's channel order, three or four channels)."""
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA)
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes to BGR (or BGRA when the source has alpha), EXIF-rotated."""
    image = open_image(data, max_pixels)
    return _to_bgr(_load(image, image.format or "image"))


def _exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, KeyError, TypeError):
        return 1  # unreadable EXIF: exif_transpose would fail on it too, and report it
    return value if isinstance(value, int) else 1


@dataclass(frozen=True)
class _Picture:
    """Decoded pixels (RGB, RGBA or L) and their size per photo pixel along x and y."""

    pixels: np.ndarray
    scale_x: float
    scale_y: float


class _Photo:
    """A photo opened from bytes and decoded on demand, JPEGs at a reduced DCT scale.

    ``width`` and ``height`` are the photo's size as shown (after EXIF rotation): boxes and
    windows are in these "photo pixels" whatever scale the pixels were decoded at.
    """

    def __init__(self, data: bytes, max_pixels: int) -> None:
        self._data = data
        self._max_pixels = max_pixels
        self._image: Image.Image | None = open_image(data, max_pixels)
        self.kind = self._image.format or "image"
        stored_w, stored_h = self._image.size
        swapped = _exif_orientation(self._image) in (5, 6, 7, 8)  # transposed or rotated 90/270
        self.width, self.height = (stored_h, stored_w) if swapped else (stored_w, stored_h)
        self.decodes = 0

    def decode(self, scale: float) -> _Picture:
        """Pixels covering the photo at no less than ``scale`` of its size (1: full size).

        JPEG is decoded by libjpeg's DCT scaling at the smallest of 1/8, 1/4, 1/2 or full
        size that is at least ``scale`` (``Image.draft``); other formats at full size.
        """
        image = self._image if self._image is not None else open_image(self._data, self._max_pixels)
        self._image = None  # a Pillow image decodes once; another decode reopens the bytes
        if scale < 1.0 and image.format == "JPEG":
            stored_w, stored_h = image.size
            image.draft(None, (max(1, math.ceil(stored_w * scale)), max(1, math.ceil(stored_h * scale))))
        pixels = _load(image, self.kind)
        self.decodes += 1
        return _Picture(pixels, pixels.shape[1] / self.width, pixels.shape[0] / self.height)


# --- detect -------------------------------------------------------------------------------
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
    # Single jobs: any photo, small faces included (see detect_faces' docstring).
    "general": Profile("general", CASCADE_FILE, SCALE_FACTOR, MIN_NEIGHBORS, MIN_FACE_PX),
    # Batches of portraits and ID photos: the face is at least 10 % of the short side
    # (see PORTRAIT_* above for the measurements behind these values).
    "portrait": Profile("portrait", PORTRAIT_CASCADE_FILE, PORTRAIT_SCALE_FACTOR, PORTRAIT_MIN_NEIGHBORS,
                        PORTRAIT_MIN_FACE_PX, min_face_fraction=PORTRAIT_MIN_FACE_FRACTION),
}


def get_profile(profile: str | Profile) -> Profile:
    """A ``Profile`` by name (``general``, ``portrait``), or the one given."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown detection profile {profile!r}; expected one of {', '.join(PROFILES)}") from None


def preload() -> None:
    """Load every profile's Haar cascade now (the worker parent calls this before RQ forks)."""
    for profile in PROFILES.values():
        _get_cascade(profile.cascade)


def _get_cascade(name: str = CASCADE_FILE) -> Any:
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


def _gray(image: np.ndarray, *, rgb: bool = False) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY if rgb else cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY)


def _detect(gray: np.ndarray, width: int, height: int, profile: Profile, min_relative: float) -> list[Box]:
    """Faces in ``gray`` (the photo at any scale) as boxes in ``width`` x ``height`` photo pixels."""
    scale = profile.detection_scale(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if (gray.shape[1], gray.shape[0]) != size:
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    found = _get_cascade(profile.cascade).detectMultiScale(
        gray, scaleFactor=profile.scale_factor, minNeighbors=profile.min_neighbors,
        minSize=(profile.min_face_px, profile.min_face_px))
    to_x, to_y = width / size[0], height / size[1]
    boxes: list[Box] = []
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


def detect_faces(image: np.ndarray, *, max_side: int | None = None,
                 min_relative: float = MIN_RELATIVE_FACE, profile: str | Profile = "general") -> list[Box]:
    """Frontal faces in a BGR(A) or gray image as (x, y, w, h) in its pixels, largest first.

    ``general`` profile (the default): a grayscale copy downscaled (INTER_AREA) so its
    longest side is at most ``max_side`` (1024), scaleFactor=1.1, minNeighbors=6,
    minSize=32x32 px in that copy (faces smaller than ~3 % of the longest side are
    ignored), no histogram equalisation. ``portrait``: see ``PORTRAIT_*``.

    Measured here (OpenCV 4.12, one thread) before choosing the general values:
    - scikit-image's 100 LFW faces, upscaled to 150 px inside a 300 px replicated border:
      sf 1.05/1.1 find 98 %, 1.15 95-97 %, 1.2 92-97 %; minNeighbors 8+ starts losing faces.
    - astronaut (512 px) has exactly one box at sf 1.1-1.2 for minNeighbors 3-8; sf 1.05 adds
      a false box on the suit. Upscaled to 768-1024 px (as a 1-3 MP photo looks after our
      downscale), minNeighbors 5 and minSize 24 add a ~40 px false box; 6 and 32 remove it.
    - LFW faces 25-64 px wide pasted on a 1024x768 canvas: minSize 32 still finds 11/25 at
      32 px, 19/25 at 40 px and all but one at 48+ px.
    - false positives on 19 non-face scikit-image photos: coins (real faces on coins) and
      one on ``cell``; 0 on LFW's 100 non-face patches and on noise. Equalising the histogram
      first removed the upscaled astronaut's false box but added false boxes on textures
      (moon, retina) and lost small faces, so it is not used.
    - time for a 1024x768 portrait: ~300 ms at minSize 24, ~235 ms at 32, ~175 ms at 48;
      sf 1.2 would be ~45 % faster but finds fewer faces.
    ``skimage.data.camera()`` (a man in 3/4 profile) is not found: the cascade is frontal.

    Boxes narrower than ``min_relative`` (default 1/3) of the largest are dropped: every
    false box seen on the astronaut upscaled to 768-1024 px was 27-28 % of the real face's
    width (e.g. 53 px beside 194 px), and a face that small next to the subject is a
    bystander, not what a portrait crop or its ``faceCount`` is about. Pass 0 to keep all.
    """
    chosen = get_profile(profile)
    if max_side is not None:
        chosen = replace(chosen, max_side=max_side)
    height, width = image.shape[:2]
    return _detect(_gray(image), width, height, chosen, min_relative)


# --- crop ---------------------------------------------------------------------------------
def _frame(mode: str) -> Frame:
    try:
        return FRAMES[mode]
    except KeyError:
        raise ValueError(f"unknown crop mode {mode!r}; expected one of {', '.join(FRAMES)}") from None


def output_size(mode: str, options: CropOptions) -> tuple[int, int]:
    """(width, height) of the output for ``mode`` after ``options`` overrides."""
    frame = _frame(mode)
    width, height = options.output_width, options.output_height
    if width is None and height is None:
        return frame.output
    if width is None:
        assert height is not None
        width = max(1, round(height * frame.aspect))
    elif height is None:
        height = max(1, round(width / frame.aspect))
    largest = max(width, height)
    if largest > MAX_OUTPUT_SIDE:
        width = max(1, round(width * MAX_OUTPUT_SIDE / largest))
        height = max(1, round(height * MAX_OUTPUT_SIDE / largest))
    return width, height


def crop_window(image_shape: tuple[int, ...], box: Box, mode: str,
                options: CropOptions) -> tuple[int, int, int, int]:
    """The (x, y, w, h) window to cut for ``box``; may run past the image where it is too small."""
    frame = _frame(mode)
    out_w, out_h = output_size(mode, options)
    aspect = out_w / out_h
    padding = frame.padding if options.padding is None else options.padding
    img_h, img_w = image_shape[:2]
    bx, by, bw, bh = box
    face_size = max(bw, bh)
    win_h = face_size * (1.0 + 2.0 * padding)
    win_w = win_h * aspect
    w = max(1, round(win_w))
    h = max(1, round(win_h))
    x = round(bx + bw / 2.0 - w / 2.0)
    y = round(by + bh / 2.0 - frame.face_center_y * h)
    return _shift_inside(x, w, img_w), _shift_inside(y, h, img_h), w, h


def _shift_inside(start: int, length: int, limit: int) -> int:
    """Move a [start, start+length) span inside [0, limit) when it fits; else leave it."""
    if length > limit:
        return start
    return min(max(start, 0), limit - length)


def _cut(image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Cut ``window`` out of ``image``, replicating edge pixels where it runs past the image."""
    x, y, w, h = window
    img_h, img_w = image.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(img_w, x + w), min(img_h, y + h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop window {window} does not overlap the {img_w}x{img_h} image")
    part = image[y0:y1, x0:x1]
    top, left = y0 - y, x0 - x
    bottom, right = (y + h) - y1, (x + w) - x1
    if top or left or bottom or right:
        part = cv2.copyMakeBorder(part, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return part


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    if (w, h) == size:
        return np.ascontiguousarray(image)
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def crop_face(image: np.ndarray, box: Box, mode: str, options: CropOptions) -> np.ndarray:
    """Cut the mode's window around ``box`` from the full-resolution image, resized to output."""
    window = crop_window(image.shape, box, mode, options)
    return _resize(_cut(image, window), output_size(mode, options))


def center_window(image_shape: tuple[int, ...], mode: str, options: CropOptions) -> tuple[int, int, int, int]:
    """The largest centred (x, y, w, h) window of the output's aspect (square mode only)."""
    if mode != "square":
        raise ValueError(f"a centre crop is only defined for square mode, not {mode!r}")
    out_w, out_h = output_size(mode, options)
    img_h, img_w = image_shape[:2]
    scale = min(img_w / out_w, img_h / out_h)
    w = max(1, min(img_w, math.floor(out_w * scale)))
    h = max(1, min(img_h, math.floor(out_h * scale)))
    return (img_w - w) // 2, (img_h - h) // 2, w, h


def crop_center(image: np.ndarray, mode: str, options: CropOptions) -> np.ndarray:
    """The largest centred window of the output's aspect (the no-face 'center' policy, square only)."""
    x, y, w, h = center_window(image.shape, mode, options)
    return _resize(image[y:y + h, x:x + w], output_size(mode, options))


# --- encode -------------------------------------------------------------------------------
def _flatten_on_white(image: np.ndarray) -> np.ndarray:
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    colour = image[:, :, :3].astype(np.float32)
    return (colour * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)


def encode_image(image: np.ndarray, fmt: str, quality: int) -> tuple[bytes, str, str]:
    """Encode BGR/BGRA to (bytes, content_type, extension); JPEG flattens alpha on white."""
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in _CONTENT_TYPES:
        raise ValueError(f"unknown output format {fmt!r}; expected jpeg, png or webp")
    quality = max(1, min(100, int(quality)))
    if fmt == "jpeg":
        if image.ndim == 3 and image.shape[2] == 4:
            image = _flatten_on_white(image)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    elif fmt == "png":
        # PNG is lossless; quality does not apply. Level 3 is zlib's fast-but-decent default.
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    content_type, extension = _CONTENT_TYPES[fmt]
    return buf.tobytes(), content_type, extension


# --- whole job ----------------------------------------------------------------------------
def process(data: bytes, mode: str, options: CropOptions, *, max_pixels: int = DEFAULT_MAX_PIXELS,
            timings: dict[str, float] | None = None, profile: str | Profile = "general") -> CropResult:
    """Decode, find the largest face, crop it per ``mode``, encode; raise PermanentJobError.

    ``profile`` picks how faces are searched (``general`` for single jobs, ``portrait`` for
    batches; see ``PROFILES``). A photo is decoded once, at full size, unless its JPEG can
    be decoded at 1/4 or 1/8 for the detection image (``DRAFT_MAX_SCALE``); then the crop is
    cut from those pixels when they give the window at least the output size, else from a
    second decode at the scale it needs, so the output is never upscaled from fewer pixels
    than the photo has.
    ``timings``, when given, receives seconds spent per step (decode, detect, crop, encode).
    """
    clock = _Clock(timings)
    _frame(mode)  # unknown mode: fail before the expensive work
    chosen = get_profile(profile)
    out_w, out_h = output_size(mode, options)
    photo = _Photo(data, max_pixels)
    detection_scale = chosen.detection_scale(photo.width, photo.height)
    picture = photo.decode(detection_scale if detection_scale <= DRAFT_MAX_SCALE else 1.0)
    clock.lap("decode")
    faces = _detect(_gray(picture.pixels, rgb=True), photo.width, photo.height, chosen, MIN_RELATIVE_FACE)
    clock.lap("detect")
    shape = (photo.height, photo.width)
    if faces:
        window = crop_window(shape, faces[0], mode, options)
    elif options.no_face == "center" and mode == "square":
        window = center_window(shape, mode, options)
    else:
        hint = (" To accept photos without a face in square mode, send options.noFace='center' "
                "for a centred crop." if mode == "square" else
                f" A {mode} photo needs a clearly visible frontal face.")
        raise PermanentJobError(
            f"no face found in the {photo.width}x{photo.height} image (frontal faces at least "
            f"{chosen.smallest_face()} are detected).{hint}", code=NO_FACE)
    # Photo-to-pixel scale at which the window holds the output size in real pixels.
    needed = min(1.0, max(out_w / window[2], out_h / window[3]))
    if picture.scale_x < needed or picture.scale_y < needed:
        picture = photo.decode(needed)
        clock.lap("decode")
    x, y, w, h = window
    scaled = (round(x * picture.scale_x), round(y * picture.scale_y),
              max(1, round(w * picture.scale_x)), max(1, round(h * picture.scale_y)))
    out = _to_bgr(_resize(_cut(picture.pixels, scaled), (out_w, out_h)))
    clock.lap("crop")
    encoded, content_type, extension = encode_image(out, options.format, options.quality)
    clock.lap("encode")
    face_box: dict[str, int] | None = None
    if faces:
        fx, fy, fw, fh = faces[0]
        face_box = {"x": int(fx), "y": int(fy), "width": int(fw), "height": int(fh)}
    return CropResult(
        data=encoded,
        content_type=content_type,
        extension=extension,
        face_detected=bool(faces),
        face_count=len(faces),
        face_box=face_box,
        width=int(out.shape[1]),
        height=int(out.shape[0]),
        faces=tuple(faces),
        decodes=photo.decodes,
    )


class _Clock:
    """Adds the seconds since the previous lap to ``timings[step]`` (no-op without a dict)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self._timings = timings
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        """Charge the time since the last lap to ``step``."""
        if self._timings is None:
            return
        now = time.perf_counter()
        self._timings[step] = self._timings.get(step, 0.0) + now - self._last
        self._last = now
