"""Background removal around the rembg call: the photo before, the cut-out after.

``prepare`` decodes the photo fully (a file rembg cannot decode makes it answer 500, which
would look like a broken server and put healthy instances into cool-down) and keeps the
decoded, EXIF-oriented picture for the cut-out. The rembg servers are asked for the mask only
(``om``); ``finish`` composites the cut-out from it exactly as rembg would (cutout.py) at full
resolution and encodes what the vendor asked for: PNG (BG_PNG_COMPRESS_LEVEL) or WebP with
alpha, the cut-out flattened onto a colour (JPEG), or the mask alone (greyscale PNG).

For the u2net family (MODEL_INPUT_SIDES) the servers do not even get the full photo: rembg
shrinks every photo to the model's 320x320 input (Lanczos) and enlarges the model's output back
to the photo's size (Lanczos). The worker does both resizes itself, with the same calls, and
sends the 320x320 copy, so the server's work no longer grows with the photo while the mask
stays bit for bit the one a direct call makes (tests/jobs/imaging/test_background.py checks it
through real servers). Other models get the full photo.

Alpha matting is the one exception: rembg computes it from the photo and the mask with
pymatting (closed-form matting, a different alpha and colour), which the workers do not carry,
so that option still asks rembg for its finished cut-out.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps

from core.contracts import RemoveBgOptions
from core.errors import NOT_AN_IMAGE, REMBG_UNAVAILABLE, PermanentJobError, TransientJobError
from jobs.imaging import cutout
from jobs.imaging.images import DECODE_ERRORS, open_image
from jobs.imaging.thumbnails import Thumbnail, encode_thumbnail, shrink_image, thumbnail_of_image
from jobs.rembg_pool import RembgCall, RembgResult

# Modes rembg handles as they are; anything else (CMYK, 16-bit, float) is converted here.
_PASS_THROUGH_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA"})
_EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
# rembg models whose session (rembg/sessions/<model>.py) feeds the model
# ``img.convert("RGB").resize((320, 320), LANCZOS)`` and returns its output resized to the
# photo's size with LANCZOS: for these the worker makes the model's input and enlarges the mask.
MODEL_INPUT_SIDES = {"u2netp": 320, "u2net": 320, "u2net_human_seg": 320, "silueta": 320}


@dataclass(frozen=True)
class Prepared:
    """The image to send to rembg, and the decoded, upright picture its mask applies to."""

    data: bytes
    content_type: str
    filename: str
    image: Image.Image
    model_side: int | None = None  # data is the model's square input of this side, not the photo


@dataclass(frozen=True)
class Output:
    """The stored result: bytes, type, file extension and pixel size."""

    data: bytes
    content_type: str
    extension: str
    format: str  # "png", "webp" or "jpeg"
    width: int
    height: int
    thumbnail: Thumbnail | None = None  # the output's preview, alpha kept (None: THUMBNAIL_MAX_PX is 0)
    source_thumbnail: Thumbnail | None = None  # the photo's, from the picture decoded for the cut-out


class MaskSource(Protocol):
    """What computes masks: the rembg pool (jobs/rembg_pool.py)."""

    def remove(self, image: bytes, call: RembgCall, *, content_type: str = ...,
               filename: str = ...) -> RembgResult:
        """rembg's PNG for ``image``."""
        ...


def prepare(data: bytes, *, max_pixels: int, model_side: int | None = None) -> Prepared:
    """Decode fully (refusing damaged or oversized files); send the model's input when
    ``model_side`` is given, else the photo (re-encoded only in modes rembg mishandles)."""
    upright, as_sent = _decode(data, max_pixels)
    if model_side is not None:
        # Exactly rembg's BaseSession.normalize resize, as a lossless PNG: rembg reads these pixels.
        model_input = upright.convert("RGB").resize((model_side, model_side), Image.Resampling.LANCZOS)
        return Prepared(cutout.encode_png(model_input, 1), "image/png", "photo.png", upright, model_side)
    if as_sent:
        # rembg applies the same EXIF orientation to the same bytes before it computes the
        # mask, so its mask fits ``upright`` and the upload costs no re-encoding.
        kind = as_sent.split("/")[1]
        return Prepared(data, as_sent, f"photo.{'jpg' if kind == 'jpeg' else kind}", upright)
    # Lossless and upright (no EXIF left to apply), so rembg sees exactly ``upright``.
    return Prepared(cutout.encode_png(upright, 1), "image/png", "photo.png", upright)


def _decode(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """The upright picture, and the content type to send ``data`` as ('' when it must be re-encoded)."""
    image = open_image(data, max_pixels)
    kind = (image.format or "image").lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
        upright = ImageOps.exif_transpose(image)
        if image.mode in _PASS_THROUGH_MODES:
            return upright, f"image/{kind}"
        if upright.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16-bit / float greyscale: scale to 8 bits rather than clip.
            peak = upright.getextrema()[1] or 1
            upright = upright.point(lambda v: v * (255.0 / float(peak))).convert("L")  # type: ignore[arg-type]
        return upright.convert("RGBA" if upright.has_transparency_data else "RGB"), ""
    except DECODE_ERRORS as exc:
        raise PermanentJobError(f"the {kind} data is damaged or truncated ({exc})", code=NOT_AN_IMAGE) from None


def rembg_call(options: RemoveBgOptions) -> RembgCall:
    """What to ask rembg for: the mask, except for alpha matting (its finished cut-out)."""
    return RembgCall(options.model, alpha_matting=options.alpha_matting, only_mask=not options.alpha_matting)


def finish(png: bytes, prepared: Prepared, options: RemoveBgOptions, *, png_level: int,
           thumbnail_px: int = 0) -> Output:
    """The stored output from rembg's PNG (the mask, or alpha matting's cut-out) and the photo.

    ``thumbnail_px`` > 0 adds previews of the photo and of the output (``thumbnails.py``).
    """
    output = _finish(png, prepared, options, png_level, thumbnail_px)
    if thumbnail_px <= 0:
        return output
    return replace(output, source_thumbnail=thumbnail_of_image(prepared.image, thumbnail_px))


def _finish(png: bytes, prepared: Prepared, options: RemoveBgOptions, png_level: int, thumbnail_px: int) -> Output:
    if options.alpha_matting:
        return _encode(_open_png(png, "RGBA"), options, png_level, thumbnail_px, as_is=png)
    mask = _open_png(png, "L")
    if prepared.model_side is not None and mask.size == (prepared.model_side, prepared.model_side):
        # What rembg's session does with the model's output (rembg/sessions/u2netp.py).
        mask = mask.resize(prepared.image.size, Image.Resampling.LANCZOS)
        png = b""  # not rembg's PNG of the final mask any more
    if mask.size != prepared.image.size:
        raise TransientJobError(
            f"rembg answered a {mask.width}x{mask.height} mask for a {prepared.image.width}x"
            f"{prepared.image.height} photo; check that every server runs the rembg of "
            "requirements-rembg.txt", code=REMBG_UNAVAILABLE)
    if options.only_mask:
        return _encode(mask, options, png_level, thumbnail_px, as_is=png or None)
    # Shrinking photo and mask before compositing gives the same cut-out as shrinking the
    # full-size one, for a fraction of the work.
    image = cutout.fit_within(prepared.image, options.max_side)
    mask = cutout.fit_within(mask, options.max_side)
    return _encode(cutout.naive_cutout(image, mask), options, png_level, thumbnail_px)


def remove_background(data: bytes, options: RemoveBgOptions, rembg: MaskSource, *, max_pixels: int,
                      png_level: int, thumbnail_px: int = 0) -> tuple[Output, RembgResult]:
    """The whole path (photo bytes -> stored output): single jobs, and any job removing backgrounds."""
    cutout.check_png_level(png_level)  # a bad setting fails before the rembg server does any work
    side = None if options.alpha_matting else MODEL_INPUT_SIDES.get(options.model)
    prepared = prepare(data, max_pixels=max_pixels, model_side=side)
    removed = rembg.remove(prepared.data, rembg_call(options), content_type=prepared.content_type,
                           filename=prepared.filename)
    return finish(removed.png, prepared, options, png_level=png_level, thumbnail_px=thumbnail_px), removed


def _open_png(png: bytes, mode: str) -> Image.Image:
    image = Image.open(io.BytesIO(png), formats=["PNG"])
    return image if image.mode == mode else image.convert(mode)


def _encode(image: Image.Image, options: RemoveBgOptions, png_level: int, thumbnail_px: int = 0, *,
            as_is: bytes | None = None) -> Output:
    """``image`` (cut-out or mask) in the asked format, and its preview when ``thumbnail_px`` > 0;
    ``as_is``: rembg's PNG of it, kept when it fits."""
    fitted = cutout.fit_within(image, options.max_side)
    thumbnail = _output_thumbnail(fitted, options, thumbnail_px)
    if options.bg_color is not None and not options.only_mask:
        fmt, data = "jpeg", cutout.flatten_jpeg(fitted, options.bg_color, options.quality)
    elif options.format == "webp" and not options.only_mask:
        fmt, data = "webp", cutout.encode_webp(fitted, options.quality)
    elif as_is is not None and fitted is image:
        fmt, data = "png", as_is
    else:
        fmt, data = "png", cutout.encode_png(fitted, png_level)
    return Output(data, f"image/{fmt}", _EXTENSIONS[fmt], fmt, fitted.width, fitted.height, thumbnail)


def _output_thumbnail(fitted: Image.Image, options: RemoveBgOptions, thumbnail_px: int) -> Thumbnail | None:
    """The output's preview: the cut-out with its alpha, or as flattened onto bgColor like the output."""
    if thumbnail_px <= 0:
        return None
    if options.bg_color is not None and not options.only_mask:
        small = shrink_image(fitted.convert("RGBA") if fitted.mode != "RGBA" else fitted, thumbnail_px)
        alpha = small[:, :, 3:4].astype(np.float32) / 255.0
        colour = np.array(options.bg_color, dtype=np.float32)
        flat = small[:, :, :3].astype(np.float32) * alpha + colour * (1.0 - alpha) + 0.5
        return encode_thumbnail(flat.astype(np.uint8))
    return thumbnail_of_image(fitted, thumbnail_px)
