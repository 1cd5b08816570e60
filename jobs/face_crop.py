"""Face detection and cropping: pure functions over bytes and arrays, no network or disk I/O.

Pipeline (``process``): decode once with Pillow (format allow-list, pixel cap checked before
decoding, EXIF orientation applied) -> detect faces with OpenCV's frontal-face Haar cascade on
a grayscale copy downscaled to at most 1024 px -> take the largest face -> cut the mode's
window from the FULL-resolution image -> resize to the output size -> encode.

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

import io
import math
import os
import struct
import threading
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

from jobs.contracts import MAX_OUTPUT_SIDE, CropOptions
from jobs.errors import IMAGE_TOO_LARGE, NO_FACE, NOT_AN_IMAGE, PermanentJobError

DEFAULT_MAX_PIXELS = 60_000_000  # same default as Settings.max_image_pixels

# OpenCV reads this when it is imported; we never decode with OpenCV, but keep its own cap
# in line with ours in case someone does.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: E402

# One job per core: RQ runs one work-horse per worker, and we scale by adding workers.
cv2.setNumThreads(1)
# Pillow's own decompression-bomb guard: warns above this, refuses above twice this. Our
# explicit check in decode_image is the one that normally fires (it uses the job's setting).
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

CASCADE_FILE = "haarcascade_frontalface_default.xml"

# Detection parameters, chosen by measurement (see detect_faces' docstring).
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 6
MIN_FACE_PX = 32  # in the downscaled (<= max_side) detection image
# Boxes narrower than this fraction of the largest box are dropped (see detect_faces).
MIN_RELATIVE_FACE = 1 / 3

# Face-box geometry (see the module docstring).
CROWN_ABOVE_BOX = 0.45  # crown = box top - 0.45 h
CHIN_BELOW_BOX = 0.10  # chin = box bottom + 0.10 h
HEAD_PER_BOX = 1.0 + CROWN_ABOVE_BOX + CHIN_BELOW_BOX  # head height / box height = 1.55

ALLOWED_FORMATS = ["JPEG", "PNG", "WEBP"]
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

_cascade: Any = None
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
def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes to BGR (or BGRA when the source has alpha), EXIF-rotated."""
    if not data:
        raise PermanentJobError("the downloaded file is empty, not an image", code=NOT_AN_IMAGE)
    try:
        with warnings.catch_warnings():
            # The explicit size check below reports this properly; Pillow's warning would not.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise PermanentJobError(
            f"image is far larger than the {Image.MAX_IMAGE_PIXELS}-pixel decoder limit; "
            "send a smaller photo", code=IMAGE_TOO_LARGE) from None
    except UnidentifiedImageError:
        raise PermanentJobError(
            "the file is not a JPEG, PNG or WebP image", code=NOT_AN_IMAGE) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise PermanentJobError(f"the image cannot be read ({exc})", code=NOT_AN_IMAGE) from None
    width, height = image.size
    kind = image.format or "image"
    if width * height > max_pixels:
        raise PermanentJobError(
            f"image is {width}x{height} = {width * height} pixels, over the {max_pixels}-pixel "
            "limit (MAX_IMAGE_PIXELS); send a smaller photo", code=IMAGE_TOO_LARGE)
    if width < 1 or height < 1:
        raise PermanentJobError(f"image has no pixels ({width}x{height})", code=NOT_AN_IMAGE)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        has_alpha = image.has_transparency_data
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16-bit / float grayscale: scale to 8 bits rather than clip.
            arr16 = np.asarray(image, dtype=np.float64)
            peak = float(arr16.max()) or 1.0
            image = Image.fromarray(np.clip(arr16 * (255.0 / peak), 0, 255).astype(np.uint8))
        rgb = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise PermanentJobError(
            f"the {kind} data is damaged or truncated ({exc})", code=NOT_AN_IMAGE
        ) from None
    code = cv2.COLOR_RGBA2BGRA if has_alpha else cv2.COLOR_RGB2BGR
    return np.ascontiguousarray(cv2.cvtColor(rgb, code))


# --- detect -------------------------------------------------------------------------------
def preload() -> None:
    """Load the Haar cascade now (the worker parent calls this before RQ forks)."""
    _get_cascade()


def _get_cascade() -> Any:
    global _cascade
    if _cascade is None:
        with _cascade_lock:
            if _cascade is None:
                path = os.path.join(cv2.data.haarcascades, CASCADE_FILE)  # type: ignore[attr-defined]
                cascade = cv2.CascadeClassifier(path)
                if cascade.empty():
                    raise RuntimeError(
                        f"cannot load the Haar cascade {path}; opencv-python-headless must be "
                        "a 4.x release (5.x ships no Haar files): pin opencv-python-headless<5")
                _cascade = cascade
    return _cascade


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def detect_faces(image: np.ndarray, *, max_side: int = 1024,
                 min_relative: float = MIN_RELATIVE_FACE) -> list[Box]:
    """Frontal faces as (x, y, w, h) in ``image`` pixels, largest area first.

    Runs on a grayscale copy downscaled (INTER_AREA) so its longest side is at most
    ``max_side``, with scaleFactor=1.1, minNeighbors=6, minSize=32x32 px in that copy (faces
    smaller than ~3 % of the longest side are ignored), no histogram equalisation.

    Measured here (OpenCV 4.12, one thread) before choosing:
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
    height, width = image.shape[:2]
    gray = _gray(image)
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    found = _get_cascade().detectMultiScale(
        gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(MIN_FACE_PX, MIN_FACE_PX))
    boxes: list[Box] = []
    for x, y, w, h in found:
        x0 = max(0, min(width - 1, round(x / scale)))
        y0 = max(0, min(height - 1, round(y / scale)))
        x1 = max(x0 + 1, min(width, round((x + w) / scale)))
        y1 = max(y0 + 1, min(height, round((y + h) / scale)))
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    boxes.sort(key=lambda b: (-b[2] * b[3], b[1], b[0]))
    if boxes and min_relative > 0:
        smallest = boxes[0][2] * min_relative
        boxes = [b for b in boxes if b[2] >= smallest]
    return boxes


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


def crop_center(image: np.ndarray, mode: str, options: CropOptions) -> np.ndarray:
    """The largest centred window of the output's aspect (the no-face 'center' policy, square only)."""
    if mode != "square":
        raise ValueError(f"a centre crop is only defined for square mode, not {mode!r}")
    out_w, out_h = output_size(mode, options)
    img_h, img_w = image.shape[:2]
    scale = min(img_w / out_w, img_h / out_h)
    w = max(1, min(img_w, math.floor(out_w * scale)))
    h = max(1, min(img_h, math.floor(out_h * scale)))
    x, y = (img_w - w) // 2, (img_h - h) // 2
    return _resize(image[y:y + h, x:x + w], (out_w, out_h))


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
            timings: dict[str, float] | None = None) -> CropResult:
    """Decode, find the largest face, crop it per ``mode``, encode; raise PermanentJobError.

    ``timings``, when given, receives seconds spent per step (decode, detect, crop, encode).
    """
    clock = _Clock(timings)
    _frame(mode)  # unknown mode: fail before the expensive work
    image = decode_image(data, max_pixels=max_pixels)
    clock.lap("decode")
    faces = detect_faces(image)
    clock.lap("detect")
    face_box: dict[str, int] | None = None
    if faces:
        x, y, w, h = faces[0]
        face_box = {"x": int(x), "y": int(y), "width": int(w), "height": int(h)}
        out = crop_face(image, faces[0], mode, options)
    elif options.no_face == "center" and mode == "square":
        out = crop_center(image, mode, options)
    else:
        hint = (" To accept photos without a face in square mode, send options.noFace='center' "
                "for a centred crop." if mode == "square" else
                f" A {mode} photo needs a clearly visible frontal face.")
        raise PermanentJobError(
            f"no face found in the {image.shape[1]}x{image.shape[0]} image (frontal faces at "
            f"least ~3% of the longest side are detected).{hint}", code=NO_FACE)
    clock.lap("crop")
    encoded, content_type, extension = encode_image(out, options.format, options.quality)
    clock.lap("encode")
    return CropResult(
        data=encoded,
        content_type=content_type,
        extension=extension,
        face_detected=bool(faces),
        face_count=len(faces),
        face_box=face_box,
        width=int(out.shape[1]),
        height=int(out.shape[0]),
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
