"""Encoding the crop: JPEG (alpha flattened on white), PNG or WebP, with dpi and the source's ICC profile.

``encode`` takes RGB or RGBA pixels and writes them with Pillow, which can carry what the
output needs beside the pixels: the source's ICC profile (so colours look the same as in the
photo) and, for ID photos, the print resolution (JFIF density in JPEG, pHYs in PNG; WebP has
no such field). ``encode_image`` is the older BGR entry point through OpenCV, without either.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

CONTENT_TYPES = {"jpeg": ("image/jpeg", "jpg"), "png": ("image/png", "png"), "webp": ("image/webp", "webp")}
PNG_COMPRESS_LEVEL = 3  # zlib's fast-but-decent level; PNG is lossless, quality does not apply


def _format(fmt: str) -> str:
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown output format {fmt!r}; expected jpeg, png or webp")
    return fmt


def flatten_on_white(image: np.ndarray) -> np.ndarray:
    """Composite 4-channel pixels over white; the colour channels keep their order."""
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    colour = image[:, :, :3].astype(np.float32)
    return (colour * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str, quality: int, *, dpi: int | None = None,
           icc_profile: bytes | None = None) -> tuple[bytes, str, str]:
    """RGB/RGBA pixels to (bytes, content_type, extension); JPEG flattens alpha on white.

    ``dpi`` is written into JPEG and PNG; ``icc_profile`` (an RGB profile) into all three.
    """
    fmt = _format(fmt)
    quality = max(1, min(100, int(quality)))
    if fmt == "jpeg" and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = flatten_on_white(pixels)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    params: dict[str, object] = {}
    if icc_profile:
        params["icc_profile"] = icc_profile
    if dpi and fmt in ("jpeg", "png"):
        params["dpi"] = (dpi, dpi)
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, "JPEG", quality=quality, **params)
    elif fmt == "png":
        image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL, **params)
    else:
        image.save(buf, "WEBP", quality=quality, **params)
    content_type, extension = CONTENT_TYPES[fmt]
    return buf.getvalue(), content_type, extension


def encode_image(image: np.ndarray, fmt: str, quality: int) -> tuple[bytes, str, str]:
    """Encode BGR/BGRA to (bytes, content_type, extension) with OpenCV; JPEG flattens alpha on white."""
    fmt = _format(fmt)
    quality = max(1, min(100, int(quality)))
    if fmt == "jpeg":
        if image.ndim == 3 and image.shape[2] == 4:
            image = flatten_on_white(image)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESS_LEVEL])
    else:
        ok, buf = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    content_type, extension = CONTENT_TYPES[fmt]
    return buf.tobytes(), content_type, extension
