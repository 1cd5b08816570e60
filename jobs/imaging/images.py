"""Opening untrusted image bytes with Pillow: the format allow-list and the pixel cap.

Shared by the face crop and background removal jobs. Only the header is read here; the
pixel count is checked before anything is decoded (decompression-bomb guard).
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib

from PIL import Image, UnidentifiedImageError

from core.errors import IMAGE_TOO_LARGE, NOT_AN_IMAGE, PermanentJobError

ALLOWED_FORMATS = ["JPEG", "PNG", "WEBP"]
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open ``data`` with Pillow (header only) and check its format and pixel count."""
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
    except DECODE_ERRORS as exc:
        raise PermanentJobError(f"the image cannot be read ({exc})", code=NOT_AN_IMAGE) from None
    width, height = image.size
    if width * height > max_pixels:
        raise PermanentJobError(
            f"image is {width}x{height} = {width * height} pixels, over the {max_pixels}-pixel "
            "limit (MAX_IMAGE_PIXELS); send a smaller photo", code=IMAGE_TOO_LARGE)
    if width < 1 or height < 1:
        raise PermanentJobError(f"image has no pixels ({width}x{height})", code=NOT_AN_IMAGE)
    return image
