"""Small previews of a job's source and output, made from pixels the job has already decoded.

The web console shows a batch as a grid of sources beside their outputs, and a ZIP batch's
source files are deleted once processed, so the worker keeps a thumbnail of each while it
holds the pixels anyway: no second decode, only an area resize (cv2 INTER_AREA) of the
decoded, EXIF-rotated array and a small encode (docs/benchmarks.md has the cost per image).

Pixels with alpha (cut-outs, transparent sources) become WebP with alpha, so the console's
checkerboard shows through; the others JPEG. ``max_px`` 0 turns thumbnails off (None).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

JPEG_QUALITY = 80  # previews: a quarter of the bytes of quality 95, no visible loss at 256 px
WEBP_QUALITY = 80
SOURCE_SUFFIX = "-source-thumb"  # storage key: "<output stem>-source-thumb.<ext>" beside the output
OUTPUT_SUFFIX = "-thumb"


@dataclass(frozen=True)
class Thumbnail:
    """An encoded preview and its pixel size."""

    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


def thumbnail_size(width: int, height: int, max_px: int) -> tuple[int, int]:
    """(width, height) with the long side at most ``max_px``, never enlarged, never below 1 px."""
    scale = min(1.0, max_px / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_thumbnail(pixels: np.ndarray, max_px: int) -> Thumbnail | None:
    """A preview of RGB, RGBA or L (grayscale) pixels, or None when ``max_px`` is 0 (off)."""
    if max_px <= 0:
        return None
    return encode_thumbnail(shrink(pixels, max_px))


def shrink(pixels: np.ndarray, max_px: int) -> np.ndarray:
    """``pixels`` area-resized (cv2 INTER_AREA) so the long side is at most ``max_px``; never enlarged.

    A large picture goes in two area steps: first by a whole factor (OpenCV's fast path for
    integer ratios, on a view trimmed by under ``factor`` pixels to a multiple of it), then to the
    exact size. Both average areas; a fractional ratio alone is ~4x slower at 3 MP (6 ms vs 1.5).
    """
    height, width = pixels.shape[:2]
    size = thumbnail_size(width, height, max_px)
    if size == (width, height):
        return pixels
    factor = max(width, height) // max_px
    if factor >= 2:
        trimmed = pixels[:height - height % factor, :width - width % factor]
        pixels = cv2.resize(trimmed, (trimmed.shape[1] // factor, trimmed.shape[0] // factor),
                            interpolation=cv2.INTER_AREA)
        if (pixels.shape[1], pixels.shape[0]) == size:
            return pixels
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def shrink_image(image: Image.Image, max_px: int) -> np.ndarray:
    """``shrink`` for a decoded Pillow image (the background removal keeps Pillow images).

    A large picture is first shrunk by Pillow's integer box ``reduce`` (an area average too, and
    no full-size array copy), so only a small array reaches cv2's INTER_AREA.
    """
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    factor = max(image.size) // max(max_px, 1)
    if factor >= 2:
        image = image.reduce(factor)
    return shrink(np.asarray(image), max_px)


def encode_thumbnail(small: np.ndarray) -> Thumbnail:
    """Already-shrunk pixels as WebP with alpha (4 channels) or JPEG (RGB, L)."""
    image = Image.fromarray(np.ascontiguousarray(small))
    buf = io.BytesIO()
    height, width = small.shape[:2]
    if image.mode == "RGBA":
        # alpha_quality 100: the alpha plane stays lossless, so edges of cut-outs stay clean.
        image.save(buf, "WEBP", quality=WEBP_QUALITY, alpha_quality=100, method=0)
        return Thumbnail(buf.getvalue(), "image/webp", "webp", width, height)
    image.save(buf, "JPEG", quality=JPEG_QUALITY)
    return Thumbnail(buf.getvalue(), "image/jpeg", "jpg", width, height)


def thumbnail_of_image(image: Image.Image, max_px: int) -> Thumbnail | None:
    """``make_thumbnail`` for a decoded Pillow image; None when ``max_px`` is 0 (off)."""
    if max_px <= 0:
        return None
    return encode_thumbnail(shrink_image(image, max_px))


def thumbnail_key(output_key: str, thumbnail: Thumbnail, suffix: str) -> str:
    """The storage key of a thumbnail beside ``output_key`` (same folder, the output's stem + suffix)."""
    stem = output_key.rsplit(".", 1)[0]
    return f"{stem}{suffix}.{thumbnail.extension}"
