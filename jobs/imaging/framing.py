"""Where to cut: each mode's framing, from a face box or from landmarks, and cutting it out.

Modes (each is an aspect ratio, a head-to-photo ratio or padding, where the crown sits, and
a default output size)
    ``square``
        Padding 0.20 of the face box added on each side, square window centred on the face
        box, 300x300 output (SPEC.md section 4: the batch default). Every detector's box.
    ``passport``
        35:45 portrait, 413x531 px (35x45 mm at 300 dpi). ICAO Doc 9303 Part 3 / ISO/IEC
        19794-5 and the UK and Schengen photo rules ask for the head (chin to crown) to be
        32-36 mm of the 45 mm height, i.e. 70-80 % of the photo, centred horizontally, with
        the eye line 50-70 % of the height up from the bottom edge. We size the head to 75 %
        of the height (34 mm) and leave 8 % (3.6 mm) above the crown; the eye line then falls
        ~53 % up from the bottom and the chin ~17 % above the bottom edge, leaving room for
        the neck and shoulders.
    ``idcard``
        3:4 portrait, 450x600 px. Head 62.5 % of the height (between the 60-65 % common for
        staff and student cards), 10 % above the crown, so ~27 % of the height below the
        chin shows more shoulders than a passport photo; centred horizontally.

Passport and ID card from landmarks (``head_window``; detectors that give them: YuNet)
    The eye line is levelled: the window is turned by the face's roll about the midpoint of the
    eyes, so the output shows the head upright (``render`` resamples bicubically; the roll is
    measured by ``jobs/imaging/levelling.py``, which also looks at the face again upright). In
    that levelled frame, with E the eyes' midpoint, M the mouth corners' midpoint,
    ``em`` = M.y - E.y, ``iod`` the distance between the eyes and ``width`` the width of the
    detector's box around the upright face (cheek to cheek), the head (chin to crown) is
    ``max(HEAD_PER_WIDTH * width, HEAD_PER_EM * em)`` tall (without an upright look:
    ``HEAD_PER_IOD * iod`` in place of the width), its crown ``CROWN_SHARE`` of it above E and
    its chin the rest below. The crown is the top of the skull with the hair pressed down, as
    ICAO measures it. Of the three measures, the upright box width varies least between copies
    of one photo (1.2 % across the astronaut's 40 variants, against 3.6 % for iod and 3.2 % for
    em: YuNet's eye and mouth points wander by a pixel or two); em guards against a turned head,
    whose box narrows while em does not.
    The ratios come from adult head proportions (vertex to chin ~230 mm, face ~140 mm wide, eyes
    about half-way down, pupils ~63 mm apart, pupil to a neutral mouth ~67 mm) and from
    ``skimage.data.astronaut()``, whose eyes, mouth, chin and crown are labelled by eye in
    ``scripts/bench_faces_labels.json`` (head 152 px = 1.69 box widths = 3.8 em, smiling; eyes
    0.54 of the head below the crown). ``scripts/bench_faces.py`` prints the head ratio of the
    passport crops of her variants. The head is centred horizontally on the midpoint of E and M.

Passport and ID card from a box (detectors without landmarks: Haar)
    ``haarcascade_frontalface_default`` returns a square that spans roughly the eyebrows /
    lower forehead to the chin. Measured on ``skimage.data.astronaut()`` (box x=177 y=66
    95x95): eye line at y~100 (box top + 0.36 h), chin at y~172 (box bottom + 0.11 h), top of
    the hair at y~15. We estimate, for a box of height ``h``:
    chin = box bottom + 0.10 h, crown (top of the head) = box top - 0.45 h, so the head
    (crown to chin) is ``1.55 h`` tall; the eye line sits about half-way down the head. The
    box has no roll, so the output is not levelled.

Options
    ``padding`` (fraction of the face box added on each side, vertically) overrides the
    mode's framing: the window is ``h * (1 + 2 * padding)`` tall, the mode's aspect wide, and
    keeps the face centre where the mode puts it. The modes' own framing, in those terms, is
    0.20 (square), 0.53 (passport) and 0.74 (idcard). From landmarks, ``h`` is the head
    height / ``HEAD_PER_BOX`` (the box Haar would have found), so a padding means the same
    framing whichever detector ran. ``output_width`` / ``output_height`` override the output
    size; given alone, the other follows the mode's aspect; given both, the window takes the
    aspect of the output (no distortion). A derived side above ``MAX_OUTPUT_SIDE`` scales
    both down to fit.

Edges
    A window that runs past the image edge is shifted back inside the image where the image
    is big enough along that axis (for a turned window: where its bounding box fits). Where
    it is not (the face fills the photo), the window keeps the mode's framing and the missing
    part is filled by replicating the edge pixels (``cv2.BORDER_REPLICATE``): portraits
    usually have plain background at their edges, so this reads as more background, where a
    white band would look like a frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.contracts import MAX_OUTPUT_SIDE, CropOptions
from jobs.imaging.detectors import Face
from jobs.imaging.photo import Picture

Box = tuple[int, int, int, int]

# Face-box geometry (see the module docstring).
CROWN_ABOVE_BOX = 0.45  # crown = box top - 0.45 h
CHIN_BELOW_BOX = 0.10  # chin = box bottom + 0.10 h
HEAD_PER_BOX = 1.0 + CROWN_ABOVE_BOX + CHIN_BELOW_BOX  # head height / box height = 1.55

# Landmark geometry (see the module docstring): head height per measure. Adult proportions /
# the astronaut (40 variants, mean): face width 1.64 / 1.69, eye distance 3.65 / 3.44, eye line to
# mouth line 3.4 (neutral mouth) / 3.8 (smiling).
HEAD_PER_WIDTH = 1.67
HEAD_PER_IOD = 3.55
HEAD_PER_EM = 3.5
CROWN_SHARE = 0.52  # crown above the eye line, as a share of the head (astronaut 0.54; canon 0.5)
# Picture pixels per output pixel above which a turned window is first shrunk with INTER_AREA
# (bicubic resampling alone would alias when reducing by more than about this much).
PRESHRINK_ABOVE = 1.25


@dataclass(frozen=True)
class Frame:
    """A mode's framing: window aspect (w/h), padding, face-centre height, output size, head rules."""

    aspect: float
    padding: float  # fraction of the face box added on each side, vertically
    face_center_y: float  # face-box centre, as a fraction of the window height from its top
    output: tuple[int, int]  # (width, height)
    head_ratio: float | None = None  # head (crown to chin) / window height; None: box framing only
    crown_margin: float = 0.0  # window above the crown, as a fraction of its height


def _head_frame(aspect: float, head_ratio: float, crown_margin: float, output: tuple[int, int]) -> Frame:
    """Frame whose head (crown to chin) is ``head_ratio`` of the height, crown ``crown_margin`` down."""
    window_per_box = HEAD_PER_BOX / head_ratio  # window height / face-box height
    centre = crown_margin + (CROWN_ABOVE_BOX + 0.5) / window_per_box
    return Frame(aspect, (window_per_box - 1.0) / 2.0, centre, output, head_ratio, crown_margin)


FRAMES: dict[str, Frame] = {
    "square": Frame(1.0, 0.20, 0.5, (300, 300)),
    "passport": _head_frame(35 / 45, 0.75, 0.08, (413, 531)),
    "idcard": _head_frame(3 / 4, 0.625, 0.10, (450, 600)),
}


def frame(mode: str) -> Frame:
    """The ``Frame`` of a crop mode (ValueError for an unknown one: a programming error)."""
    try:
        return FRAMES[mode]
    except KeyError:
        raise ValueError(f"unknown crop mode {mode!r}; expected one of {', '.join(FRAMES)}") from None


def output_size(mode: str, options: CropOptions) -> tuple[int, int]:
    """(width, height) of the output for ``mode`` after ``options`` overrides."""
    chosen = frame(mode)
    width, height = options.output_width, options.output_height
    if width is None and height is None:
        return chosen.output
    if width is None:
        assert height is not None
        width = max(1, round(height * chosen.aspect))
    elif height is None:
        height = max(1, round(width / chosen.aspect))
    largest = max(width, height)
    if largest > MAX_OUTPUT_SIDE:
        width = max(1, round(width * MAX_OUTPUT_SIDE / largest))
        height = max(1, round(height * MAX_OUTPUT_SIDE / largest))
    return width, height


# --- windows from a box -------------------------------------------------------------------
def crop_window(image_shape: tuple[int, ...], box: Box, mode: str,
                options: CropOptions) -> tuple[int, int, int, int]:
    """The (x, y, w, h) window to cut for ``box``; may run past the image where it is too small."""
    chosen = frame(mode)
    out_w, out_h = output_size(mode, options)
    aspect = out_w / out_h
    padding = chosen.padding if options.padding is None else options.padding
    img_h, img_w = image_shape[:2]
    bx, by, bw, bh = box
    face_size = max(bw, bh)
    win_h = face_size * (1.0 + 2.0 * padding)
    win_w = win_h * aspect
    w = max(1, round(win_w))
    h = max(1, round(win_h))
    x = round(bx + bw / 2.0 - w / 2.0)
    y = round(by + bh / 2.0 - chosen.face_center_y * h)
    return shift_inside(x, w, img_w), shift_inside(y, h, img_h), w, h


def shift_inside(start: int, length: int, limit: int) -> int:
    """Move a [start, start+length) span inside [0, limit) when it fits; else leave it."""
    if length > limit:
        return start
    return min(max(start, 0), limit - length)


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


# --- windows from landmarks ---------------------------------------------------------------
@dataclass(frozen=True)
class Head:
    """A head measured from landmarks, in its levelled frame (turned by ``roll`` about ``pivot``).

    y grows downwards; ``crown_y``, ``eyes_y`` and ``chin_y`` are in levelled photo pixels, so
    ``chin_y - crown_y`` is the head height whatever the roll.
    """

    pivot: tuple[float, float]  # midpoint of the eyes, photo pixels
    roll: float  # degrees (Face.roll_degrees)
    centre_x: float
    crown_y: float
    eyes_y: float
    chin_y: float

    @property
    def height(self) -> float:
        """Crown to chin."""
        return self.chin_y - self.crown_y


def _rotate(point: tuple[float, float], pivot: tuple[float, float], degrees: float) -> tuple[float, float]:
    """``point`` turned by ``degrees`` about ``pivot`` (image coordinates, y down: positive is clockwise)."""
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = point[0] - pivot[0], point[1] - pivot[1]
    return pivot[0] + c * dx - s * dy, pivot[1] + s * dx + c * dy


def estimate_head(face: Face, width: float | None = None) -> Head | None:
    """Crown, eye line and chin of ``face`` from its landmarks and, when measured upright, its
    ``width`` (module docstring); None without landmarks."""
    if face.landmarks is None or face.roll_degrees is None:
        return None
    right_eye, left_eye, _nose, right_mouth, left_mouth = face.landmarks
    roll = face.roll_degrees
    pivot = ((right_eye[0] + left_eye[0]) / 2, (right_eye[1] + left_eye[1]) / 2)
    mouth = _rotate(((right_mouth[0] + left_mouth[0]) / 2, (right_mouth[1] + left_mouth[1]) / 2), pivot, -roll)
    em = mouth[1] - pivot[1]
    iod = math.dist(right_eye, left_eye)
    if em <= 0 or iod <= 0:
        return None  # landmarks that make no face (mouth above the eyes): frame from the box
    height = max(HEAD_PER_IOD * iod if width is None else HEAD_PER_WIDTH * width, HEAD_PER_EM * em)
    crown = pivot[1] - CROWN_SHARE * height
    return Head(pivot, roll, (pivot[0] + mouth[0]) / 2, crown, pivot[1], crown + height)


@dataclass(frozen=True)
class Window:
    """A crop window in photo pixels: its centre, size and turn (degrees, as ``Face.roll_degrees``)."""

    cx: float
    cy: float
    width: float
    height: float
    angle: float = 0.0

    def corners(self) -> list[tuple[float, float]]:
        """The four corners in photo pixels (top-left, top-right, bottom-right, bottom-left of the output)."""
        half_w, half_h = self.width / 2, self.height / 2
        return [_rotate((self.cx + dx, self.cy + dy), (self.cx, self.cy), self.angle)
                for dx, dy in ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h))]

    def to_output(self, out_w: int, out_h: int) -> np.ndarray:
        """2x3 affine matrix from photo coordinates to output coordinates (continuous, pixel edges at integers)."""
        angle = math.radians(self.angle)
        c, s = math.cos(angle), math.sin(angle)
        kx, ky = out_w / self.width, out_h / self.height
        # output = K R(-angle) (p - centre) + (out_w/2, out_h/2)
        return np.array([[kx * c, kx * s, out_w / 2 - kx * (c * self.cx + s * self.cy)],
                         [-ky * s, ky * c, out_h / 2 - ky * (-s * self.cx + c * self.cy)]])

    @classmethod
    def from_box(cls, window: tuple[int, int, int, int]) -> Window:
        """An upright window from (x, y, w, h)."""
        x, y, w, h = window
        return cls(x + w / 2, y + h / 2, float(w), float(h))


def head_window(image_shape: tuple[int, ...], head: Head, mode: str, options: CropOptions) -> Window:
    """The levelled window of ``mode`` for ``head``, shifted inside the image where it fits."""
    chosen = frame(mode)
    if chosen.head_ratio is None:
        raise ValueError(f"{mode!r} frames from the face box, not from landmarks")
    out_w, out_h = output_size(mode, options)
    centre_frac = chosen.crown_margin + chosen.head_ratio / 2  # head centre, from the window top
    if options.padding is None:
        win_h = head.height / chosen.head_ratio
    else:
        win_h = head.height / HEAD_PER_BOX * (1.0 + 2.0 * options.padding)
    win_w = win_h * out_w / out_h
    # Levelled frame: the window's centre, then back to photo pixels.
    level_cy = (head.crown_y + head.chin_y) / 2 - centre_frac * win_h + win_h / 2
    cx, cy = _rotate((head.centre_x, level_cy), head.pivot, head.roll)
    window = Window(cx, cy, win_w, win_h, head.roll)
    img_h, img_w = image_shape[:2]
    xs, ys = zip(*window.corners(), strict=True)
    dx = _shift(min(xs), max(xs), img_w)
    dy = _shift(min(ys), max(ys), img_h)
    return Window(cx + dx, cy + dy, win_w, win_h, head.roll)


def _shift(low: float, high: float, limit: int) -> float:
    """How far to move [low, high] to lie inside [0, limit]; 0 when it cannot fit."""
    if high - low > limit:
        return 0.0
    if low < 0:
        return -low
    if high > limit:
        return limit - high
    return 0.0


# --- cutting ------------------------------------------------------------------------------
def cut(image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
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


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): INTER_AREA when shrinking, bicubic when enlarging."""
    h, w = image.shape[:2]
    if (w, h) == size:
        return np.ascontiguousarray(image)
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def crop_face(image: np.ndarray, box: Box, mode: str, options: CropOptions) -> np.ndarray:
    """Cut the mode's window around ``box`` from the full-resolution image, resized to output."""
    window = crop_window(image.shape, box, mode, options)
    return resize(cut(image, window), output_size(mode, options))


def crop_center(image: np.ndarray, mode: str, options: CropOptions) -> np.ndarray:
    """The largest centred window of the output's aspect (the no-face 'center' policy, square only)."""
    x, y, w, h = center_window(image.shape, mode, options)
    return resize(image[y:y + h, x:x + w], output_size(mode, options))


def render(picture: Picture, window: Window, size: tuple[int, int]) -> np.ndarray:
    """The pixels of ``window`` (photo pixels) out of ``picture``, resampled to ``size``.

    Upright windows are cut and resized (INTER_AREA / bicubic) exactly as ``crop_face`` does;
    turned ones are resampled through one affine map (bicubic), after shrinking the region
    they cover with INTER_AREA when the picture has more than ``PRESHRINK_ABOVE`` pixels per
    output pixel. Outside the picture, edge pixels are replicated.
    """
    out_w, out_h = size
    sx, sy = picture.scale_x, picture.scale_y
    if window.angle == 0.0:
        x, y = window.cx - window.width / 2, window.cy - window.height / 2
        scaled = (round(x * sx), round(y * sy), max(1, round(window.width * sx)), max(1, round(window.height * sy)))
        return resize(cut(picture.pixels, scaled), size)
    # Output pixel (u, v) -> picture pixel: inverse of to_output, then photo -> picture (pixel centres).
    forward = np.vstack([window.to_output(out_w, out_h), [0.0, 0.0, 1.0]])
    to_picture = np.array([[sx, 0.0, -0.5], [0.0, sy, -0.5], [0.0, 0.0, 1.0]])
    from_output = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    matrix = (to_picture @ np.linalg.inv(forward) @ from_output)[:2]
    pixels = picture.pixels
    step = max(window.width * sx / out_w, window.height * sy / out_h)
    if step > PRESHRINK_ABOVE:
        pixels, matrix = _shrink_region(pixels, matrix, size, 1.0 / step)
    return cv2.warpAffine(pixels, matrix, size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _shrink_region(pixels: np.ndarray, matrix: np.ndarray, size: tuple[int, int],
                   factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``pixels`` the output maps to, shrunk by ``factor`` (INTER_AREA), and the matrix onto it."""
    out_w, out_h = size
    corners = matrix @ np.array([[-0.5, out_w - 0.5, out_w - 0.5, -0.5],
                                 [-0.5, -0.5, out_h - 0.5, out_h - 0.5],
                                 [1.0, 1.0, 1.0, 1.0]])
    img_h, img_w = pixels.shape[:2]
    margin = 3  # bicubic support, in picture pixels
    x0 = max(0, math.floor(corners[0].min()) - margin)
    y0 = max(0, math.floor(corners[1].min()) - margin)
    x1 = min(img_w, math.ceil(corners[0].max()) + margin + 1)
    y1 = min(img_h, math.ceil(corners[1].max()) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop window does not overlap the {img_w}x{img_h} image")
    region = pixels[y0:y1, x0:x1]
    new_w = max(1, round((x1 - x0) * factor))
    new_h = max(1, round((y1 - y0) * factor))
    small = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
    fx, fy = new_w / (x1 - x0), new_h / (y1 - y0)
    onto = np.array([[fx, 0.0, (0.5 - x0) * fx - 0.5], [0.0, fy, (0.5 - y0) * fy - 0.5], [0.0, 0.0, 1.0]])
    return small, (onto @ np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
