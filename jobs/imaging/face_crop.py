"""Face crop: decode, find the faces, frame the largest, encode; pure functions over bytes and arrays.

Pipeline (``process``): open with Pillow (format allow-list, pixel cap checked before
decoding) -> decode at the smallest JPEG DCT scale that serves the detector's first pass
(``jobs/imaging/photo.py``; EXIF orientation applied) -> detect faces, coarse to fine
(``jobs/imaging/detectors``: a finer pass, and a larger decode, only when nothing was found)
-> take the largest face -> frame it per mode (``jobs/imaging/framing.py``: from the box for
``square``; levelled and sized from the landmarks for ``passport`` and ``idcard``) -> cut the
window from pixels that give it at least the output size (the pixels already decoded when
they suffice, else a second decode at the scale the window needs) -> encode
(``jobs/imaging/encode.py``: the source's RGB ICC profile kept; 300 dpi for ID photos).

Detectors: ``options.detector``, else the ``detector`` argument (the workers pass their
FACE_DETECTOR setting), else ``yunet``. ``profile`` picks Haar's search (``general`` for single
jobs, ``batch`` for batches: see ``detectors/haar.py``); YuNet has one search for both.

No face
    ``options.no_face == 'fail'`` (and always for passport / idcard) raises
    ``PermanentJobError(code=NO_FACE)``; ``'center'`` (square mode only) crops the largest
    centred square and reports ``faceDetected: false, faceCount: 0, faceBox: null``.

Results (``CropResult.to_result``): ``faceDetected``, ``faceCount``, ``faceBox`` (the chosen
face, photo pixels after EXIF rotation), ``faces`` (every face: box, score, landmarks),
``rollDegrees`` (the chosen face's eye-line angle in the photo, before levelling; null without
landmarks), ``detector``, ``width``, ``height``.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.contracts import LANDMARK_NAMES, CropOptions, FoundFace
from core.errors import NO_FACE, PermanentJobError, TransientJobError

DEFAULT_MAX_PIXELS = 60_000_000  # same default as Settings.max_image_pixels

# OpenCV reads this when it is imported; we never decode with OpenCV, but keep its own cap
# in line with ours in case someone does.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from jobs.imaging import detectors  # noqa: E402
from jobs.imaging.detectors import Face, ModelFileError  # noqa: E402
from jobs.imaging.detectors.haar import (  # noqa: E402, F401 (re-exported for callers and tests)
    MIN_RELATIVE_FACE,
    PORTRAIT_CASCADE_FILE,
    PROFILES,
    Profile,
    get_profile,
)
from jobs.imaging.detectors.haar import get_cascade as _get_cascade  # noqa: E402, F401
from jobs.imaging.detectors.haar import gray as _gray  # noqa: E402
from jobs.imaging.detectors.haar import preload as _preload_haar  # noqa: E402
from jobs.imaging.detectors.haar import search as _haar_search  # noqa: E402
from jobs.imaging.encode import encode, encode_image, flatten_on_white  # noqa: E402, F401
from jobs.imaging.framing import (  # noqa: E402, F401
    FRAMES,
    HEAD_PER_BOX,
    Box,
    Frame,
    Window,
    center_window,
    crop_center,
    crop_face,
    crop_window,
    estimate_head,
    frame,
    head_window,
    output_size,
    render,
)
from jobs.imaging.levelling import LOOK_FACE_PX, Levelled, level  # noqa: E402
from jobs.imaging.photo import Photo, Picture, decode_image, to_rgb  # noqa: E402, F401
from jobs.imaging.thumbnails import Thumbnail, make_thumbnail  # noqa: E402

# One job per core: RQ runs one work-horse per worker, and we scale by adding workers.
cv2.setNumThreads(1)
# Pillow's own decompression-bomb guard: warns above this, refuses above twice this. Our
# explicit check in the decoder is the one that normally fires (it uses the job's setting).
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

_Photo = Photo  # the names the tests and benchmarks patch
_Picture = Picture

DEFAULT_DETECTOR = "yunet"
DETECTOR_UNAVAILABLE = "DETECTOR_UNAVAILABLE"  # transient: the model file is missing or altered
ID_PHOTO_MODES = ("passport", "idcard")
ID_PHOTO_DPI = 300  # 413x531 px at 300 dpi print as 35x45 mm
# The first decode is at the smallest JPEG DCT scale (1/8, 1/4, 1/2) that serves the first
# detection pass when that scale is at most this, else at full size; the crop decodes again
# when it needs more pixels. Per detector, by measurement (one thread, CPU ms/image mean):
# yunet, scripts/bench_crop.py / bench_batch.py portraits (1-3 MP), square:
#   full size once 19.8 / 19.9   <= 1/8: 19.7 / 20.3   <= 1/4: 16.8 / 17.9   <= 1/2: 16.5 / 16.9
#   (passport: 46-50 ms whatever the choice). Decoding twice is cheaper than it looks: the
#   second decode often stops at 1/2, and detecting on a full-size decode first needs a 5x
#   area-resize. haar: its detection image is larger (up to 1024 px); at 1/2 the crop nearly
#   always needed a second, full decode, which cost more than the first saved.
DRAFT_MAX_SCALE = {"yunet": 0.5, "haar": 0.25}


@dataclass(frozen=True)
class CropResult:
    """An encoded crop and what was found; boxes are in original (EXIF-rotated) photo pixels."""

    data: bytes
    content_type: str
    extension: str
    face_detected: bool
    face_count: int
    face_box: dict[str, int] | None
    width: int
    height: int
    faces: tuple[Box, ...] = ()  # every face kept, largest first, as whole-pixel boxes
    decodes: int = 1  # 2 or more when a finer pass or the crop needed more pixels than decoded
    found: tuple[Face, ...] = ()  # the same faces with score and landmarks (floats)
    roll_degrees: float | None = None  # the chosen face's eye line in the photo; None without landmarks
    source_width: int = 0  # the photo's size after EXIF rotation: the space faceBox and faces are in
    source_height: int = 0
    detector: str = ""
    levelled: bool = False  # the output was turned to level the eye line
    transform: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None  # photo -> output
    thumbnail: Thumbnail | None = None  # the output's preview (None: THUMBNAIL_MAX_PX is 0)
    source_thumbnail: Thumbnail | None = None  # the photo's, from pixels decoded for detection or the crop

    def to_result(self) -> dict[str, Any]:
        """The camelCase job result (no image bytes)."""
        return {
            "faceDetected": self.face_detected,
            "faceCount": self.face_count,
            "faceBox": self.face_box,
            "width": self.width,
            "height": self.height,
            "faces": [_found_face(face, self.faces[i]).to_dict() for i, face in enumerate(self.found)],
            "rollDegrees": self.roll_degrees,
            "detector": self.detector,
            "sourceWidth": self.source_width,
            "sourceHeight": self.source_height,
        }


def _whole_box(face: Face, width: int, height: int) -> Box:
    """A face's box in whole photo pixels, clipped to the photo."""
    x, y, w, h = face.box
    x0 = max(0, min(width - 1, round(x)))
    y0 = max(0, min(height - 1, round(y)))
    x1 = max(x0 + 1, min(width, round(x + w)))
    y1 = max(y0 + 1, min(height, round(y + h)))
    return x0, y0, x1 - x0, y1 - y0


def _found_face(face: Face, box: Box) -> FoundFace:
    marks = None
    if face.landmarks is not None:
        marks = {name: {"x": round(px), "y": round(py)}
                 for name, (px, py) in zip(LANDMARK_NAMES, face.landmarks, strict=True)}
    return FoundFace({"x": box[0], "y": box[1], "width": box[2], "height": box[3]},
                     None if face.score is None else round(face.score, 3), marks)


# --- detectors ----------------------------------------------------------------------------
def preload(detector: str = DEFAULT_DETECTOR) -> None:
    """Load the detectors now (the worker parent calls this before RQ forks).

    Raises ``ValueError`` for an unknown ``detector`` and ``ModelFileError`` when its model file
    is missing or altered (the message says how to restore it).
    """
    _preload_haar()
    detectors.preload(detector)


def get_detector(name: str, profile: str = "general") -> detectors.Detector:
    """The named detector; a missing or altered model file is a transient job error that says how to fix it."""
    try:
        return detectors.get_detector(name, profile)
    except ModelFileError as exc:
        raise TransientJobError(f"face detector {name!r} cannot run: {exc}", code=DETECTOR_UNAVAILABLE) from None


def detect_faces(image: np.ndarray, *, max_side: int | None = None,
                 min_relative: float = MIN_RELATIVE_FACE, profile: str | Profile = "general") -> list[Box]:
    """Haar faces in a BGR(A) or gray image as (x, y, w, h) in its pixels, largest first.

    The seeds' detector as a plain function (``detectors/haar.py`` has its measurements):
    ``general`` profile (the default): a grayscale copy downscaled (INTER_AREA) so its
    longest side is at most ``max_side`` (1024), scaleFactor=1.1, minNeighbors=6,
    minSize=32x32 px in that copy; ``portrait``: see ``PORTRAIT_*``. Boxes narrower than
    ``min_relative`` (default 1/3) of the largest are dropped; pass 0 to keep all.
    """
    chosen = get_profile(profile)
    if max_side is not None:
        chosen = Profile(chosen.name, chosen.cascade, chosen.scale_factor, chosen.min_neighbors,
                         chosen.min_face_px, max_side, chosen.min_face_fraction)
    height, width = image.shape[:2]
    scale = chosen.detection_scale(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return _haar_search(_gray(image, rgb=False), size, chosen, min_relative)


# --- whole job ----------------------------------------------------------------------------
def process(data: bytes, mode: str, options: CropOptions, *, max_pixels: int = DEFAULT_MAX_PIXELS,
            timings: dict[str, float] | None = None, profile: str = "general",
            detector: str | None = None, thumbnail_px: int = 0) -> CropResult:
    """Decode, find the largest face, crop it per ``mode``, encode; raise PermanentJobError.

    The detector is ``options.detector``, else ``detector``, else ``yunet``; ``profile`` picks
    Haar's search. A JPEG is first decoded at the DCT scale the first detection pass needs
    (``DRAFT_MAX_SCALE``; other formats at full size); a finer pass, the second look of ID
    photos or the crop decode again at the scale they need, so the output is never upscaled
    from fewer pixels than the photo has.
    ``timings``, when given, receives seconds spent per step (decode, detect, crop, encode, and
    thumbnails when made). ``thumbnail_px`` > 0 also makes previews of the photo (from a decode the
    job made anyway: no further decode) and of the output, long side at most that many pixels.
    """
    clock = _Clock(timings)
    frame(mode)  # unknown mode: fail before the expensive work
    name = options.detector or detector or DEFAULT_DETECTOR
    finder = get_detector(name, profile)
    out_w, out_h = output_size(mode, options)
    photo = Photo(data, max_pixels)
    faces, picture = _find_faces(photo, finder, clock)
    # With thumbnails on, each decode is kept for the source's, which takes the cheapest that serves
    # (the earlier, smaller ones then stay alive until the job ends: a fraction of the last's memory).
    decoded = [picture] if thumbnail_px > 0 else []
    shape = (photo.height, photo.width)
    width: float | None = None
    if faces and frame(mode).head_ratio is not None and faces[0].landmarks is not None:
        levelled_face, picture = _level(photo, picture, faces[0], mode, options, finder, clock)
        decoded += [picture] if decoded else []
        if levelled_face is not None:
            faces[0], width = levelled_face.face, levelled_face.width
    window, levelled = _window(shape, faces, width, mode, options, finder, photo)
    # Photo-to-pixel scale at which the window holds the output size in real pixels.
    needed = min(1.0, max(out_w / window.width, out_h / window.height))
    if picture.scale_x < needed or picture.scale_y < needed:
        picture = photo.decode(needed)
        clock.lap("decode")
    out = to_rgb(render(picture, window, (out_w, out_h)))
    clock.lap("crop")
    encoded, content_type, extension = encode(
        out, options.format, options.quality, dpi=ID_PHOTO_DPI if mode in ID_PHOTO_MODES else None,
        icc_profile=photo.icc_profile)
    clock.lap("encode")
    source_thumbnail = thumbnail = None
    if thumbnail_px > 0:
        source_thumbnail = make_thumbnail(_thumbnail_source([*decoded, picture], thumbnail_px), thumbnail_px)
        flat = options.format in ("jpeg", "jpg") and out.ndim == 3 and out.shape[2] == 4
        thumbnail = make_thumbnail(flatten_on_white(out) if flat else out, thumbnail_px)
        clock.lap("thumbnails")
    boxes = tuple(_whole_box(face, photo.width, photo.height) for face in faces)
    face_box: dict[str, int] | None = None
    roll: float | None = None
    if faces:
        fx, fy, fw, fh = boxes[0]
        face_box = {"x": fx, "y": fy, "width": fw, "height": fh}
        measured = faces[0].roll_degrees
        roll = None if measured is None else round(measured, 1)
    matrix = window.to_output(out_w, out_h)
    return CropResult(
        data=encoded,
        content_type=content_type,
        extension=extension,
        face_detected=bool(faces),
        face_count=len(faces),
        face_box=face_box,
        width=int(out.shape[1]),
        height=int(out.shape[0]),
        faces=boxes,
        decodes=photo.decodes,
        found=tuple(faces),
        roll_degrees=roll,
        source_width=photo.width,
        source_height=photo.height,
        detector=name,
        levelled=levelled,
        transform=(tuple(float(v) for v in matrix[0]), tuple(float(v) for v in matrix[1])),  # type: ignore[arg-type]
        thumbnail=thumbnail,
        source_thumbnail=source_thumbnail,
    )


def _thumbnail_source(pictures: list[Picture], max_px: int) -> np.ndarray:
    """The pixels to shrink for the source thumbnail: the smallest decode at least ``max_px`` on
    its long side (less to area-average: the detection decode is often 1/4 or 1/2 size), else the largest."""
    def long_side(picture: Picture) -> int:
        return max(picture.pixels.shape[:2])

    serving = [picture for picture in pictures if long_side(picture) >= max_px]
    return (min(serving, key=long_side) if serving else max(pictures, key=long_side)).pixels


def find_faces(photo: Photo, finder: detectors.Detector, timings: dict[str, float] | None = None, *,
               clock: Callable[[], float] = time.perf_counter) -> tuple[list[Face], Picture]:
    """Faces in photo pixels, largest first, and the last pixels decoded, as ``process`` finds them.

    The first decode is at the first pass's scale when that allows a DCT-scaled JPEG decode
    (``DRAFT_MAX_SCALE``), else at full size; a later pass that needs more pixels decodes
    again. ``timings`` receives decode and detect seconds as measured by ``clock``.
    """
    return _find_faces(photo, finder, _Clock(timings, clock))


def _find_faces(photo: Photo, finder: detectors.Detector, clock: _Clock) -> tuple[list[Face], Picture]:
    passes = finder.passes(photo.width, photo.height)
    first = max(passes[0].size[0] / photo.width, passes[0].size[1] / photo.height)
    picture = photo.decode(first if first <= DRAFT_MAX_SCALE.get(finder.name, 0.25) else 1.0)
    clock.lap("decode")
    best: list[Face] = []
    for search in passes:
        pic_h, pic_w = picture.pixels.shape[:2]
        if pic_w < search.size[0] or pic_h < search.size[1]:
            clock.lap("detect")
            picture = photo.decode(max(search.size[0] / photo.width, search.size[1] / photo.height))
            clock.lap("decode")
        found = finder.detect_pass(picture.pixels, search)
        if found and len(found) >= len(best):
            best = [face.scaled(1 / picture.scale_x, 1 / picture.scale_y) for face in found]
        if found and finder.enough(len(found), detectors.smallest_px(found, search, picture.pixels.shape[1])):
            break
    clock.lap("detect")
    return best, picture


def _level(photo: Photo, picture: Picture, face: Face, mode: str, options: CropOptions,
           finder: detectors.Detector, clock: _Clock) -> tuple[Levelled | None, Picture]:
    """``face`` measured upright for levelling (``levelling.level``; None if that failed), and the pixels used.

    The pixels are first made large enough for the crop (as the first look frames it) and for
    the second look (the face at least ``LOOK_FACE_PX`` tall where the photo has that many), so
    that one decode serves both.
    """
    need = min(1.0, LOOK_FACE_PX / max(face.box[3], 1.0))
    head = estimate_head(face)
    if head is not None:
        first = head_window((photo.height, photo.width), head, mode, options)
        out_w, out_h = output_size(mode, options)
        need = max(need, min(1.0, max(out_w / first.width, out_h / first.height)))
    if picture.scale_x < need or picture.scale_y < need:
        picture = photo.decode(need)
        clock.lap("decode")
    levelled = level(picture.pixels, face.scaled(picture.scale_x, picture.scale_y), finder)
    clock.lap("level")
    if levelled is None:
        log.info("face at %s: its eye line could not be measured on a second look; levelled from the first",
                 [round(v) for v in face.box])
        return None, picture
    return levelled.scaled(1 / picture.scale_x, 1 / picture.scale_y), picture


def _window(shape: tuple[int, int], faces: list[Face], width: float | None, mode: str, options: CropOptions,
            finder: detectors.Detector, photo: Photo) -> tuple[Window, bool]:
    """The window to cut (photo pixels) and whether it is levelled; NO_FACE when there is nothing to frame."""
    if faces:
        chosen = faces[0]
        head = estimate_head(chosen, width) if frame(mode).head_ratio is not None else None
        if head is not None:
            return head_window(shape, head, mode, options), True
        x, y, w, h = chosen.box
        box = (round(x), round(y), max(1, round(w)), max(1, round(h)))
        return Window.from_box(crop_window(shape, box, mode, options)), False
    if options.no_face == "center" and mode == "square":
        return Window.from_box(center_window(shape, mode, options)), False
    hint = (" To accept photos without a face in square mode, send options.noFace='center' "
            "for a centred crop." if mode == "square" else
            f" A {mode} photo needs a clearly visible frontal face.")
    raise PermanentJobError(
        f"no face found in the {photo.width}x{photo.height} image by the {finder.name} detector (faces "
        f"at least {finder.smallest_face(photo.width, photo.height)} are detected).{hint}", code=NO_FACE)


class _Clock:
    """Adds the seconds since the previous lap to ``timings[step]`` (no-op without a dict)."""

    def __init__(self, timings: dict[str, float] | None, clock: Callable[[], float] = time.perf_counter) -> None:
        self._timings = timings
        self._clock = clock
        self._last = clock()

    def lap(self, step: str) -> None:
        """Charge the time since the last lap to ``step``."""
        if self._timings is None:
            return
        now = self._clock()
        self._timings[step] = self._timings.get(step, 0.0) + now - self._last
        self._last = now
