"""Checks before rembg (jobs/background.prepare) and the stored output after it (finish)."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from core.contracts import RemoveBgOptions
from core.errors import IMAGE_TOO_LARGE, NOT_AN_IMAGE, PermanentJobError
from jobs.imaging.background import finish, prepare


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def cutout_png() -> bytes:
    """A 40x30 cut-out as rembg returns it: opaque red centre, transparent border."""
    image = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    image.paste((200, 10, 10, 255), (10, 10, 30, 20))
    return encoded(image, "PNG")


def test_ordinary_photo_goes_to_rembg_unchanged() -> None:
    data = encoded(Image.new("RGB", (64, 48), (10, 120, 200)), "JPEG")
    prepared = prepare(data, max_pixels=10_000)
    assert prepared.data == data and prepared.content_type == "image/jpeg" and prepared.filename == "photo.jpg"


def test_cmyk_jpeg_is_converted_to_a_png_rembg_can_read() -> None:
    data = encoded(Image.new("CMYK", (64, 48), (0, 200, 200, 0)), "JPEG")
    prepared = prepare(data, max_pixels=10_000)
    assert prepared.content_type == "image/png"
    image = Image.open(io.BytesIO(prepared.data))
    assert image.mode == "RGB" and image.size == (64, 48)


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    data = encoded(Image.new("I;16", (32, 32), 4000), "PNG")
    image = Image.open(io.BytesIO(prepare(data, max_pixels=10_000).data))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("data, code", [
    (b"", NOT_AN_IMAGE),
    (b"<html><body>not found</body></html>", NOT_AN_IMAGE),
    (encoded(Image.new("RGB", (64, 48)), "JPEG")[:200], NOT_AN_IMAGE),  # truncated
    (encoded(Image.new("RGB", (200, 100)), "PNG"), IMAGE_TOO_LARGE),
    (encoded(Image.new("RGB", (8, 8)), "GIF"), NOT_AN_IMAGE),  # not an allowed format
])
def test_unreadable_or_oversized_input_fails_permanently_before_rembg(data: bytes, code: str) -> None:
    with pytest.raises(PermanentJobError) as info:
        prepare(data, max_pixels=10_000)
    assert info.value.code == code


def test_default_output_is_rembgs_png_as_is() -> None:
    png = cutout_png()
    out = finish(png, RemoveBgOptions())
    assert out.data == png and out.content_type == "image/png" and out.extension == "png"
    assert (out.format, out.width, out.height) == ("png", 40, 30)


def test_bg_color_flattens_onto_that_colour_as_jpeg() -> None:
    out = finish(cutout_png(), RemoveBgOptions(bg_color=(0, 255, 0)))
    assert out.content_type == "image/jpeg" and out.extension == "jpg" and out.format == "jpeg"
    image = Image.open(io.BytesIO(out.data))
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (40, 30)
    corner, centre = image.getpixel((1, 1)), image.getpixel((20, 15))
    assert corner[1] > 240 and corner[0] < 20 and corner[2] < 20  # the background colour
    assert centre[0] > 180 and centre[1] < 40  # the subject, untouched


def test_mask_is_stored_as_the_greyscale_png_rembg_made() -> None:
    mask = encoded(Image.new("L", (40, 30), 255), "PNG")
    out = finish(mask, RemoveBgOptions(only_mask=True))
    assert out.data == mask and out.format == "png"
