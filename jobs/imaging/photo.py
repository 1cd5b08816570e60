"""Decoding a photo for the face crop: EXIF rotation, reduced-size JPEG decodes, the ICC profile.

``Photo`` opens the bytes once (format allow-list and pixel cap checked on the header, see
``images.open_image``) and decodes on demand at a scale: JPEGs through libjpeg's DCT scaling
(``Image.draft``: 1/8, 1/4, 1/2 or full size, the smallest that is at least the scale asked
for), other formats at full size. Pixels come back upright (EXIF orientation applied) as
RGB, RGBA (sources with transparency) or L (grayscale), and boxes and windows are expressed
in *photo pixels*: the full-size photo as shown, whatever scale the pixels were decoded at.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from core.errors import NOT_AN_IMAGE, PermanentJobError
from jobs.imaging.images import DECODE_ERRORS, open_image

EXIF_ORIENTATION = 0x0112


def load(image: Image.Image, kind: str) -> np.ndarray:
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


def to_bgr(pixels: np.ndarray) -> np.ndarray:
    """RGB -> BGR, RGBA -> BGRA, L -> BGR (OpenCV's channel order, three or four channels)."""
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA)
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """L -> RGB; RGB and RGBA as they are (the crop's output always has colour channels)."""
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    return pixels


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes to BGR (or BGRA when the source has alpha), EXIF-rotated."""
    image = open_image(data, max_pixels)
    return to_bgr(load(image, image.format or "image"))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1-8), 1 when absent or unreadable."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, KeyError, TypeError):
        return 1  # unreadable EXIF: exif_transpose would fail on it too, and report it
    return value if isinstance(value, int) else 1


def rgb_icc_profile(image: Image.Image) -> bytes | None:
    """The source's ICC profile when it describes RGB colour (what the output is); else None.

    A CMYK or grayscale profile would be wrong for the RGB pixels we write (Pillow converts
    CMYK and gray sources to RGB without colour management), so those are not carried over.
    """
    icc = image.info.get("icc_profile")
    if not isinstance(icc, bytes) or len(icc) < 20 or icc[16:20] != b"RGB ":
        return None
    return icc


@dataclass(frozen=True)
class Picture:
    """Decoded pixels (RGB, RGBA or L) and their size per photo pixel along x and y."""

    pixels: np.ndarray
    scale_x: float
    scale_y: float


class Photo:
    """A photo opened from bytes and decoded on demand, JPEGs at a reduced DCT scale.

    ``width`` and ``height`` are the photo's size as shown (after EXIF rotation): boxes and
    windows are in these "photo pixels" whatever scale the pixels were decoded at.
    """

    def __init__(self, data: bytes, max_pixels: int) -> None:
        self._data = data
        self._max_pixels = max_pixels
        self._image: Image.Image | None = open_image(data, max_pixels)
        self.kind = self._image.format or "image"
        self.icc_profile = rgb_icc_profile(self._image)
        stored_w, stored_h = self._image.size
        swapped = exif_orientation(self._image) in (5, 6, 7, 8)  # transposed or rotated 90/270
        self.width, self.height = (stored_h, stored_w) if swapped else (stored_w, stored_h)
        self.decodes = 0

    @property
    def is_jpeg(self) -> bool:
        """True when reduced-size (DCT-scaled) decodes are possible."""
        return self.kind == "JPEG"

    def decode(self, scale: float) -> Picture:
        """Pixels covering the photo at no less than ``scale`` of its size (1: full size).

        JPEG is decoded by libjpeg's DCT scaling at the smallest of 1/8, 1/4, 1/2 or full
        size that is at least ``scale`` (``Image.draft``); other formats at full size.
        """
        image = self._image if self._image is not None else open_image(self._data, self._max_pixels)
        self._image = None  # a Pillow image decodes once; another decode reopens the bytes
        if scale < 1.0 and image.format == "JPEG":
            stored_w, stored_h = image.size
            image.draft(None, (max(1, math.ceil(stored_w * scale)), max(1, math.ceil(stored_h * scale))))
        pixels = load(image, self.kind)
        self.decodes += 1
        return Picture(pixels, pixels.shape[1] / self.width, pixels.shape[0] / self.height)


def dct_scale(scale: float) -> float:
    """The scale a JPEG decode for ``scale`` really gives: 1/8, 1/4, 1/2 or 1 (the smallest >= scale)."""
    for option in (0.125, 0.25, 0.5):
        if scale <= option:
            return option
    return 1.0
