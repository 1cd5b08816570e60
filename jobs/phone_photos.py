"""Photos as phones send them: HEIC/HEIF (pillow-heif) and AVIF (Pillow's own), turned into PNG.

Every later step (face detection, background removal, their decoders) reads JPEG, PNG and WebP
only; a HEIC or AVIF photo, sent as a file or fetched by URL, is decoded here once, turned
upright by its EXIF orientation and re-encoded as a lossless PNG. The pixel cap is checked
before decoding (MAX_IMAGE_PIXELS), as for every other format. Also: where a photo sent as a
file waits for its job (UPLOAD_DIR/photos), and reading and removing it.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

from core.config import Settings
from core.contracts import UPLOAD_NAME, UPLOAD_SCHEME
from core.errors import IMAGE_TOO_LARGE, NOT_AN_IMAGE, SOURCE_MISSING, PermanentJobError, TransientJobError

log = logging.getLogger(__name__)

PHONE_TYPES = frozenset({"image/heic", "image/avif"})


def upload_path(settings: Settings, photo_url: str) -> Path | None:
    """The file of an ``upload:<name>`` photo URL (None for any other URL or a malformed name)."""
    if not photo_url.startswith(UPLOAD_SCHEME):
        return None
    name = photo_url[len(UPLOAD_SCHEME):]
    if not UPLOAD_NAME.match(name):
        return None
    return Path(settings.upload_dir) / "photos" / name


def read_upload(settings: Settings, photo_url: str) -> bytes:
    """The bytes of a photo sent as a file; permanent SOURCE_MISSING once it is gone."""
    path = upload_path(settings, photo_url)
    if path is None:
        raise PermanentJobError(f"{photo_url!r} is not a photo sent as a file", code=SOURCE_MISSING)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PermanentJobError(f"the uploaded photo {path.name} is gone (UPLOAD_DIR must be shared by the API "
                                "and the workers; it is removed once its job ends)", code=SOURCE_MISSING) from None
    except OSError as exc:
        raise TransientJobError(f"cannot read the uploaded photo {path}: {exc}") from exc


def discard_upload(settings: Settings, photo_url: str | None) -> None:
    """Remove a photo sent as a file once its job is over (any other URL: nothing to do)."""
    path = upload_path(settings, photo_url or "")
    if path is not None:
        path.unlink(missing_ok=True)


def to_png(data: bytes, content_type: str, max_pixels: int) -> bytes:
    """A HEIC/HEIF or AVIF photo as an upright PNG (RGB, or RGBA when it has alpha)."""
    from PIL import Image, ImageOps

    formats = ["AVIF"] if content_type == "image/avif" else ["HEIF", "AVIF"]
    if "HEIF" in formats:
        import pillow_heif

        pillow_heif.register_heif_opener()
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise PermanentJobError(f"the photo is {width}x{height}, over MAX_IMAGE_PIXELS={max_pixels}",
                                        code=IMAGE_TOO_LARGE)
            upright = ImageOps.exif_transpose(image)
            mode = "RGBA" if "A" in upright.getbands() else "RGB"
            out = io.BytesIO()
            upright.convert(mode).save(out, "PNG", compress_level=1)
    except PermanentJobError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PermanentJobError(f"the {content_type.split('/')[1].upper()} photo cannot be decoded: {exc}",
                                code=NOT_AN_IMAGE) from exc
    log.info("converted a %s photo (%dx%d) to PNG", content_type, width, height)
    return out.getvalue()
