"""The cut-out made in the worker from rembg's mask, and its encodings (Pillow only, no I/O).

rembg's servers only compute the mask (``om``); compositing and encoding the full-size result
is most of a direct call's cost (PNG at zlib level 6: ~80 % of the server's time at 12 MP,
docs/background.md), so the workers do it, where it scales with the workers instead of
loading the rembg pool every vendor shares.

``naive_cutout`` is rembg's own (rembg/bg.py, the default path of ``remove``): the photo pasted
through the mask onto a fully transparent canvas. The alpha is then the mask itself and the
colour is the photo's, weighted by the mask, exactly as a direct rembg call returns them.
"""
from __future__ import annotations

import io

from PIL import Image

JPEG_QUALITY = 92  # bgColor's JPEG when options.quality is not given
# libwebp's fastest effort. At 12 MP it encodes a cut-out in ~0.5 s (lossless: ~30 % smaller
# than PNG level 1; lossy: ~15x smaller), where the default effort (4) takes 2-5 s.
WEBP_METHOD = 0
PNG_LEVELS = range(10)


def naive_cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    """rembg's naive_cutout: ``image`` through ``mask`` onto transparent black (RGBA)."""
    empty = Image.new("RGBA", image.size, 0)
    return Image.composite(image, empty, mask)


def fit_within(image: Image.Image, max_side: int | None) -> Image.Image:
    """``image`` shrunk (Lanczos) so its longer side is at most ``max_side``; never enlarged."""
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def check_png_level(level: int) -> None:
    """Raise ValueError naming the setting unless ``level`` is a zlib level."""
    if level not in PNG_LEVELS:
        raise ValueError(f"BG_PNG_COMPRESS_LEVEL must be 0-9 (zlib levels), not {level}")


def encode_png(image: Image.Image, level: int) -> bytes:
    """PNG at zlib ``level`` (0-9; the BG_PNG_COMPRESS_LEVEL setting)."""
    check_png_level(level)
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def encode_webp(image: Image.Image, quality: int | None) -> bytes:
    """WebP keeping the alpha exactly: lossless when ``quality`` is None, else lossy colour."""
    buf = io.BytesIO()
    if quality is None:
        # For lossless WebP "quality" is the effort spent on compression, not a loss.
        image.save(buf, "WEBP", lossless=True, quality=0, method=WEBP_METHOD, exact=True)
    else:
        # alpha_quality 100: libwebp compresses the alpha plane losslessly even in lossy mode.
        image.save(buf, "WEBP", quality=quality, alpha_quality=100, method=WEBP_METHOD)
    return buf.getvalue()


def flatten_jpeg(cutout: Image.Image, colour: tuple[int, int, int], quality: int | None) -> bytes:
    """The cut-out laid over ``colour``, as a JPEG."""
    flat = Image.new("RGBA", cutout.size, (*colour, 255))
    flat.alpha_composite(cutout.convert("RGBA"))
    buf = io.BytesIO()
    flat.convert("RGB").save(buf, "JPEG", quality=quality or JPEG_QUALITY, optimize=True)
    return buf.getvalue()
