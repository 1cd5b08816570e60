"""ID photos: one portrait in, a spec-framed photo on a plain background and a compliance report out.

Steps (``process``; docs/id-photos.md):
1. decode (EXIF orientation applied; ``photo.Photo``) and find the faces with YuNet
   (``face_crop.find_faces``): none is ``NO_FACE``, a second face at least
   ``SECOND_FACE_SHARE`` as wide as the largest is ``MULTIPLE_FACES``;
2. level the eye line (``levelling.level``) and estimate the head from the landmarks
   (``framing.estimate_head``): the chin comes from there;
3. ask the rembg pool for the mask only, on a copy of the region around the head shrunk to the
   model's 320x320 input (the same flat cost as a plain removal's mask, at a finer resolution
   around the head); the crown is the top of the person's hair in that mask, straight above the
   eyes in the levelled frame. Hair or chin running off the photo is ``FACE_CUT_OFF``;
4. scale and place the head per spec (head height the middle of the spec's range, eye line
   as near the middle of its range as the margins allow); an enlargement beyond
   ``MAX_UPSCALE`` output pixels per photo pixel is ``FACE_TOO_SMALL``;
5. render the window from the full-resolution photo (one affine map, ``framing.render``) and
   the mask through the same map (bilinear, so the 320 px mask comes up smoothly), erode it
   by a pixel and feather it (no fringe of the old backdrop), composite onto the background;
6. encode at the spec's pixels and dpi (JPEG quality searched down to fit ``maxBytes``);
7. measure the output again for the report (``report.py``): faces found afresh, roll after
   levelling, head height and eye line from the output's own landmarks and alpha.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.errors import (
    FACE_CUT_OFF,
    FACE_TOO_SMALL,
    MULTIPLE_FACES,
    NO_FACE,
    OUTPUT_TOO_LARGE,
    REMBG_UNAVAILABLE,
    PermanentJobError,
    TransientJobError,
)
from core.id_photos import IdPhotoOptions, IdPhotoSpec
from jobs.imaging import face_crop
from jobs.imaging.background import MaskSource
from jobs.imaging.detectors import Detector, Face
from jobs.imaging.encode import encode, flatten_on_white
from jobs.imaging.framing import Head, Window, estimate_head, render
from jobs.imaging.levelling import level
from jobs.imaging.photo import Photo, Picture
from jobs.imaging.report import Report, measure
from jobs.imaging.thumbnails import Thumbnail, make_thumbnail
from jobs.rembg_pool import RembgCall

DETECTOR = "yunet"  # ID photos need landmarks (Haar has none)
MODEL_SIDE = 320  # u2net family's input (background.MODEL_INPUT_SIDES)
MAX_UPSCALE = 2.0  # output pixels per photo pixel at most: beyond this the face is too small
SECOND_FACE_SHARE = 0.4  # a second face this wide (share of the largest) makes the photo a group
# The region sent for the mask, around the landmark head estimate (multiples of its height):
# wide enough for every built-in spec's window and the hair above the skull.
REGION_SIDE = 1.25
REGION_ABOVE = 0.8
REGION_BELOW = 1.1
# Crown search: columns across the head's centre (share of the head height either side),
# from the eye line up; the crown is their median top. A mask crown closer to the eyes than
# CROWN_MIN or farther than CROWN_MAX (shares of the landmark head) is not trusted.
CROWN_BAND = 0.12
CROWN_COLUMNS = 9
CROWN_MIN, CROWN_MAX = 0.35, 1.0
MASK_LEVEL = 0.5
MARGIN_MM = 1.0  # least room above the crown and below the chin
JPEG_QUALITY = 95
MIN_QUALITY = 30


@dataclass
class IdPhotoResult:
    """The encoded photo, its size, the report and what the worker may want to log."""

    data: bytes
    content_type: str
    extension: str
    width: int
    height: int
    dpi: int
    report: Report
    face_box: dict[str, int]
    transform: np.ndarray  # 2x3, photo pixels -> output pixels
    rembg_instance: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    thumbnail: Thumbnail | None = None  # the output's preview (None: THUMBNAIL_MAX_PX is 0)
    source_thumbnail: Thumbnail | None = None  # the portrait's, from its one full decode

    def to_result(self) -> dict[str, Any]:
        """The camelCase job result (no image bytes)."""
        return {"width": self.width, "height": self.height, "dpi": self.dpi, "faceBox": self.face_box,
                "compliant": self.report.compliant, "report": self.report.to_dict()}


def _rotate(point: tuple[float, float], pivot: tuple[float, float], degrees: float) -> tuple[float, float]:
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = point[0] - pivot[0], point[1] - pivot[1]
    return pivot[0] + c * dx - s * dy, pivot[1] + s * dx + c * dy


def _rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    if pixels.shape[2] == 4:
        return flatten_on_white(pixels)
    return pixels


def find_face(photo: Photo, finder: Detector) -> tuple[Face, int]:
    """The one face of an ID photo (photo pixels) and how many faces were found; NO_FACE / MULTIPLE_FACES."""
    faces, _ = face_crop.find_faces(photo, finder)
    if not faces or faces[0].landmarks is None:
        raise PermanentJobError(
            f"no face found in the {photo.width}x{photo.height} photo (faces at least "
            f"{finder.smallest_face(photo.width, photo.height)} are detected); an ID photo needs one clearly "
            "visible frontal face", code=NO_FACE)
    main = faces[0]
    rivals = [f for f in faces[1:] if f.box[2] >= SECOND_FACE_SHARE * main.box[2]]
    if rivals:
        raise PermanentJobError(
            f"{1 + len(rivals)} faces of similar size in the photo; an ID photo shows one person alone",
            code=MULTIPLE_FACES)
    return main, len(faces)


def mask_region(head: Head, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in photo pixels, clipped, around ``head`` for the mask."""
    size = head.height
    cx, cy = _rotate((head.centre_x, (head.crown_y + head.chin_y) / 2), head.pivot, head.roll)
    x0 = max(0, math.floor(cx - REGION_SIDE * size))
    x1 = min(width, math.ceil(cx + REGION_SIDE * size))
    y0 = max(0, math.floor(cy - (0.5 + REGION_ABOVE) * size))
    y1 = min(height, math.ceil(cy + (0.5 + REGION_BELOW) * size))
    return x0, y0, x1, y1


def region_to_mask(region: tuple[int, int, int, int], mask_shape: tuple[int, ...]) -> np.ndarray:
    """3x3 map from photo coordinates (continuous) to the mask's pixel indices."""
    x0, y0, x1, y1 = region
    fx, fy = mask_shape[1] / (x1 - x0), mask_shape[0] / (y1 - y0)
    return np.array([[fx, 0.0, -x0 * fx - 0.5], [0.0, fy, -y0 * fy - 0.5], [0.0, 0.0, 1.0]])


def find_crown(mask: np.ndarray, to_mask: np.ndarray, head: Head) -> tuple[float | None, bool]:
    """The top of the person straight above the eyes (levelled y, photo pixels), and whether the
    person runs off the mask's area there (cut off, when that area ends at the photo's edge).

    ``mask`` is 0-1 float; ``to_mask`` maps photo coordinates to its pixel indices. Columns across
    the head's centre are followed up from the eye line; None when no column leaves the person.
    """
    size = head.height
    xs = head.centre_x + np.linspace(-CROWN_BAND, CROWN_BAND, CROWN_COLUMNS) * size
    step = 0.5 / max(abs(to_mask[1, 1]), 1e-6)  # half a mask pixel, in photo pixels
    ys = head.eyes_y - np.arange(0.0, 1.6 * size, step)
    grid_x, grid_y = np.meshgrid(xs, ys)  # rows: going up
    angle = math.radians(head.roll)
    c, s = math.cos(angle), math.sin(angle)
    px = head.pivot[0] + c * (grid_x - head.pivot[0]) - s * (grid_y - head.pivot[1])
    py = head.pivot[1] + s * (grid_x - head.pivot[0]) + c * (grid_y - head.pivot[1])
    mx = (to_mask[0, 0] * px + to_mask[0, 2]).astype(np.float32)
    my = (to_mask[1, 1] * py + to_mask[1, 2]).astype(np.float32)
    values = cv2.remap(mask.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=-1.0)
    tops: list[float] = []
    cut = 0
    for column in range(values.shape[1]):
        line = values[:, column]
        below = np.nonzero(line < MASK_LEVEL)[0]
        if below.size == 0:
            continue
        first = int(below[0])
        x_at, y_at = float(mx[first, column]), float(my[first, column])
        if not (1.0 <= x_at <= mask.shape[1] - 2.0 and 1.0 <= y_at <= mask.shape[0] - 2.0):
            # Left the mask's area (within a pixel of its edge) while still on the person.
            cut += 1
            continue
        tops.append(float(ys[first]))
    if cut * 2 > values.shape[1]:
        return None, True
    if not tops:
        return None, False
    return float(np.median(tops)), False


@dataclass(frozen=True)
class Placement:
    """Where the head goes: output pixels per photo pixel and the window in photo pixels."""

    scale: float
    window: Window
    margin_mm: float  # above the crown


def place(head: Head, crown_y: float, spec: IdPhotoSpec, size: tuple[int, int]) -> Placement:
    """Scale the head (crown_y to head.chin_y) to the middle of the spec's range and put the eye line
    as near the middle of its range as ``MARGIN_MM`` above the crown and below the chin allow."""
    out_w, out_h = size
    px_per_mm = out_h / spec.height_mm
    head_px = head.chin_y - crown_y
    target = (spec.head_min_mm + spec.head_max_mm) / 2
    scale = target * px_per_mm / head_px
    share = (head.eyes_y - crown_y) / head_px  # eye line below the crown, share of the head
    eye_from_top = spec.height_mm - (spec.eye_min_mm + spec.eye_max_mm) / 2
    low, high = MARGIN_MM, max(MARGIN_MM, spec.height_mm - target - MARGIN_MM)
    margin = min(max(eye_from_top - share * target, low), high)
    photo_per_mm = px_per_mm / scale
    top = crown_y - margin * photo_per_mm
    win_w, win_h = out_w / scale, out_h / scale
    cx, cy = _rotate((head.centre_x, top + win_h / 2), head.pivot, head.roll)
    return Placement(scale, Window(cx, cy, win_w, win_h, head.roll), margin)


def render_alpha(mask: np.ndarray, to_mask: np.ndarray, window: Window, size: tuple[int, int]) -> np.ndarray:
    """The mask through the window's map at the output size (bilinear), eroded a pixel and feathered."""
    out_w, out_h = size
    forward = np.vstack([window.to_output(out_w, out_h), [0.0, 0.0, 1.0]])
    from_output = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    matrix = (to_mask @ np.linalg.inv(forward) @ from_output)[:2]
    alpha = cv2.warpAffine(mask.astype(np.float32), matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
    # The model's edge sits on the boundary pixels, which still carry the old backdrop's colour.
    alpha = cv2.erode(alpha, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.8)
    return np.clip(alpha, 0.0, 1.0)


def composite(pixels: np.ndarray, alpha: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """``pixels`` (RGB) over a plain ``colour`` through ``alpha`` (0-1)."""
    a = alpha[:, :, None]
    background = np.array(colour, dtype=np.float32)
    return (pixels.astype(np.float32) * a + background * (1.0 - a) + 0.5).astype(np.uint8)


def encode_fitting(pixels: np.ndarray, options: IdPhotoOptions, dpi: int,
                   icc_profile: bytes | None) -> tuple[bytes, str, str]:
    """Encode; with ``max_bytes`` the highest JPEG quality that fits (binary search), else OUTPUT_TOO_LARGE."""
    if options.max_bytes is None or options.format != "jpeg":
        return encode(pixels, options.format, JPEG_QUALITY, dpi=dpi, icc_profile=icc_profile)
    best = None
    low, high = MIN_QUALITY, JPEG_QUALITY
    while low <= high:
        quality = (low + high) // 2
        encoded = encode(pixels, "jpeg", quality, dpi=dpi, icc_profile=icc_profile)
        if len(encoded[0]) <= options.max_bytes:
            best, low = encoded, quality + 1
        else:
            high = quality - 1
    if best is None:
        raise PermanentJobError(
            f"the {pixels.shape[1]}x{pixels.shape[0]} photo does not fit options.maxBytes={options.max_bytes} "
            f"even at JPEG quality {MIN_QUALITY}; allow more bytes or a lower options.dpi", code=OUTPUT_TOO_LARGE)
    return best


def request_mask(rgb: np.ndarray, region: tuple[int, int, int, int], rembg: MaskSource,
                 model: str) -> tuple[np.ndarray, str]:
    """rembg's mask (0-1 float) of ``region`` sent as the model's 320x320 input, and the instance."""
    x0, y0, x1, y1 = region
    crop = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    model_input = crop.resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    model_input.save(buf, "PNG", compress_level=1)
    removed = rembg.remove(buf.getvalue(), RembgCall(model, only_mask=True), content_type="image/png",
                           filename="photo.png")
    try:
        mask = Image.open(io.BytesIO(removed.png), formats=["PNG"]).convert("L")
    except OSError as exc:
        raise TransientJobError(f"rembg answered a mask that is not a PNG ({exc})", code=REMBG_UNAVAILABLE) from None
    return np.asarray(mask, dtype=np.float32) / 255.0, removed.instance


def process(data: bytes, spec: IdPhotoSpec, options: IdPhotoOptions, rembg: MaskSource, *,
            max_pixels: int = face_crop.DEFAULT_MAX_PIXELS, model: str = "u2netp",
            thumbnail_px: int = 0) -> IdPhotoResult:
    """The whole ID photo from photo bytes (module docstring); raises PermanentJobError with a code.

    ``thumbnail_px`` > 0 also makes previews of the portrait (from its full decode) and of the output.
    """
    timings: dict[str, float] = {}
    start = last = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[step] = timings.get(step, 0.0) + now - last
        last = now

    finder = face_crop.get_detector(DETECTOR)
    photo = Photo(data, max_pixels)
    face, count = find_face(photo, finder)
    lap("detect")
    rgb = _rgb(photo.decode(1.0).pixels)
    lap("decode")
    levelled = level(rgb, face, finder)
    if levelled is not None:
        face, width = levelled.face, levelled.width
    else:
        width = None
    head = estimate_head(face, width)
    if head is None:
        raise PermanentJobError("the face's landmarks do not make a frontal face (mouth above the eyes?)",
                                code=NO_FACE)
    chin = _rotate((head.centre_x, head.chin_y), head.pivot, head.roll)
    x, y, w, h = face.box
    if x <= 0 or y <= 0 or x + w >= photo.width or chin[1] >= photo.height - 1:
        raise PermanentJobError("the face touches the photo's edge (chin or cheek cut off); the whole head "
                                "must be inside the photo", code=FACE_CUT_OFF)
    lap("level")
    region = mask_region(head, photo.width, photo.height)
    mask, instance = request_mask(rgb, region, rembg, model)
    lap("mask")
    to_mask = region_to_mask(region, mask.shape)
    crown, cut = find_crown(mask, to_mask, head)
    if cut and region[1] == 0:
        raise PermanentJobError("the head runs off the top of the photo (hair cut off); the whole head must be "
                                "inside the photo with some space above it", code=FACE_CUT_OFF)
    crown_source = "mask"
    if crown is None or not CROWN_MIN * head.height <= head.eyes_y - crown <= CROWN_MAX * head.height:
        crown, crown_source = head.crown_y, "landmarks"
    dpi = options.dpi or spec.dpi
    size = spec.pixels(dpi)
    placement = place(head, crown, spec, size)
    if placement.scale > MAX_UPSCALE:
        raise PermanentJobError(
            f"the head is {head.chin_y - crown:.0f} px tall in the photo; the {spec.name} spec at {dpi} dpi "
            f"would enlarge it {placement.scale:.2f}x (at most {MAX_UPSCALE:g}x). Send a photo where the head is "
            f"at least {(head.chin_y - crown) * placement.scale / MAX_UPSCALE:.0f} px tall", code=FACE_TOO_SMALL)
    lap("place")
    pixels = render(Picture(rgb, 1.0, 1.0), placement.window, size)
    alpha = render_alpha(mask, to_mask, placement.window, size)
    out = composite(pixels, alpha, options.background)
    lap("composite")
    encoded, content_type, extension = encode_fitting(out, options, dpi, photo.icc_profile)
    lap("encode")
    report = measure(out, alpha, spec, size, options.background, finder, faces_in_source=count,
                     upscale=placement.scale, max_upscale=MAX_UPSCALE, crown_source=crown_source)
    lap("report")
    source_thumbnail, thumbnail = make_thumbnail(rgb, thumbnail_px), make_thumbnail(out, thumbnail_px)
    lap("thumbnails")
    timings["total"] = time.perf_counter() - start
    box = {"x": round(x), "y": round(y), "width": round(w), "height": round(h)}
    return IdPhotoResult(encoded, content_type, extension, size[0], size[1], dpi, report, box,
                         placement.window.to_output(*size), instance, timings, thumbnail, source_thumbnail)
