"""Background removal around the rembg call: check the photo before, shape the output after.

Pure functions over bytes (Pillow only, no I/O). ``prepare`` makes sure rembg only ever
receives an image it can read — a file rembg cannot decode makes it answer 500, which would
look like a broken server and put healthy instances into cool-down. ``finish`` turns rembg's
PNG into what the vendor asked for: the cut-out with alpha (PNG), the cut-out flattened onto a
colour (JPEG), or the mask alone (greyscale PNG).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from core.contracts import RemoveBgOptions
from core.errors import NOT_AN_IMAGE, PermanentJobError
from jobs.imaging.images import DECODE_ERRORS, open_image

# Modes rembg handles as they are; anything else (CMYK, 16-bit, float) is converted here.
_PASS_THROUGH_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA"})
JPEG_QUALITY = 92


@dataclass(frozen=True)
class Prepared:
    """The image to send to rembg."""

    data: bytes
    content_type: str
    filename: str


@dataclass(frozen=True)
class Output:
    """The stored result: bytes, type, file extension and pixel size."""

    data: bytes
    content_type: str
    extension: str
    format: str  # "png" or "jpeg"
    width: int
    height: int




def prepare(data: bytes, *, max_pixels: int) -> Prepared:
    """Decode fully (refusing damaged or oversized files); re-encode only modes rembg mishandles."""
    image = open_image(data, max_pixels)
    kind = (image.format or "image").lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
        if image.mode in _PASS_THROUGH_MODES:
            # rembg applies the EXIF orientation itself, so the original bytes go as they are.
            return Prepared(data, f"image/{kind}", f"photo.{'jpg' if kind == 'jpeg' else kind}")
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16-bit / float greyscale: scale to 8 bits rather than clip.
            peak = image.getextrema()[1] or 1
            image = image.point(lambda v: v * (255.0 / float(peak))).convert("L")  # type: ignore[arg-type]
        converted = image.convert("RGBA" if image.has_transparency_data else "RGB")
    except DECODE_ERRORS as exc:
        raise PermanentJobError(f"the {kind} data is damaged or truncated ({exc})", code=NOT_AN_IMAGE) from None
    buf = io.BytesIO()
    converted.save(buf, "PNG", compress_level=1)  # lossless; rembg decodes it straight away
    return Prepared(buf.getvalue(), "image/png", "photo.png")


def finish(png: bytes, options: RemoveBgOptions) -> Output:
    """rembg's PNG as stored: as is (cut-out with alpha, or the mask), or flattened to JPEG."""
    image = Image.open(io.BytesIO(png), formats=["PNG"])
    width, height = image.size
    if options.bg_color is None or options.only_mask:
        return Output(png, "image/png", "png", "png", width, height)
    cutout = image.convert("RGBA")
    flat = Image.new("RGBA", cutout.size, (*options.bg_color, 255))
    flat.alpha_composite(cutout)
    buf = io.BytesIO()
    flat.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return Output(buf.getvalue(), "image/jpeg", "jpg", "jpeg", width, height)
