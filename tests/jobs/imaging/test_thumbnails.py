"""The workers' previews (jobs/imaging/thumbnails.py) and the jobs' pipelines that make them."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.contracts import CropOptions, RemoveBgOptions
from jobs.imaging import background, face_crop, photo, thumbnails
from tests.portraits import jpeg, portrait


def _open(thumb: thumbnails.Thumbnail | None) -> Image.Image:
    assert thumb is not None
    image = Image.open(io.BytesIO(thumb.data))
    image.load()
    assert (image.width, image.height) == (thumb.width, thumb.height)
    assert image.format == {"image/jpeg": "JPEG", "image/webp": "WEBP"}[thumb.content_type]
    return image


@pytest.mark.parametrize(("shape", "expected"), [((1200, 1600, 3), (256, 192)), ((900, 3000, 3), (256, 77)),
                                                 ((100, 80, 3), (80, 100)), ((256, 256), (256, 256))])
def test_the_long_side_is_at_most_the_setting_and_the_shape_is_kept(shape: tuple[int, ...],
                                                                     expected: tuple[int, int]) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    thumb = thumbnails.make_thumbnail(pixels, 256)
    image = _open(thumb)
    assert image.size == expected  # (width, height); never enlarged
    assert image.format == "JPEG" and image.mode in ("RGB", "L")


def test_the_area_resize_averages_rather_than_samples() -> None:
    stripes = np.zeros((1024, 1024, 3), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: sampling would give all black or all white
    small = thumbnails.shrink(stripes, 256)
    assert small.shape == (256, 256, 3) and 120 <= small.mean() <= 135


def test_alpha_is_kept_as_webp() -> None:
    cut = np.zeros((600, 400, 4), dtype=np.uint8)
    cut[:, :200] = (10, 200, 30, 255)  # left half opaque, right half transparent
    image = _open(thumbnails.make_thumbnail(cut, 256))
    assert image.format == "WEBP" and image.mode == "RGBA" and image.size == (171, 256)
    assert image.getpixel((10, 100))[3] == 255 and image.getpixel((160, 100))[3] == 0


def test_zero_turns_thumbnails_off() -> None:
    pixels = np.zeros((50, 50, 3), dtype=np.uint8)
    assert thumbnails.make_thumbnail(pixels, 0) is None
    assert thumbnails.thumbnail_of_image(Image.new("RGB", (50, 50)), 0) is None


def test_pillow_images_are_reduced_first_and_keep_alpha() -> None:
    image = Image.new("RGBA", (3000, 2000), (0, 0, 255, 0))
    image.paste((255, 0, 0, 255), (0, 0, 1500, 2000))
    small = _open(thumbnails.thumbnail_of_image(image, 256))
    assert small.size == (256, 171) and small.mode == "RGBA"
    assert small.getpixel((20, 80))[3] == 255 and small.getpixel((230, 80))[3] == 0
    assert _open(thumbnails.thumbnail_of_image(Image.new("P", (600, 300)), 256)).size == (256, 128)


def test_keys_sit_beside_the_output() -> None:
    thumb = thumbnails.Thumbnail(b"", "image/webp", "webp", 1, 1)
    assert thumbnails.thumbnail_key("acme/p/r/face-crop-j1.jpg", thumb, thumbnails.OUTPUT_SUFFIX) == \
        "acme/p/r/face-crop-j1-thumb.webp"
    assert thumbnails.thumbnail_key("acme/batches/b/0000003.png", thumb, thumbnails.SOURCE_SUFFIX) == \
        "acme/batches/b/0000003-source-thumb.webp"


def test_the_face_crop_makes_both_previews_without_another_decode() -> None:
    data = jpeg(portrait(1024))
    plain = face_crop.process(data, "square", CropOptions())
    assert plain.thumbnail is None and plain.source_thumbnail is None  # off unless asked
    result = face_crop.process(data, "square", CropOptions(), thumbnail_px=256)
    assert result.decodes == plain.decodes  # the previews come from pixels already decoded
    source = _open(result.source_thumbnail)
    assert source.size == (256, 256) and source.format == "JPEG"
    output = _open(result.thumbnail)
    assert max(output.size) == 256 and output.size[0] * result.height == output.size[1] * result.width
    # Upright: the source preview looks like the photo itself, shrunk.
    expected = np.asarray(portrait(1024).convert("RGB").resize((256, 256), Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(np.asarray(source.convert("RGB"), dtype=np.float32) - expected).mean() < 12


def test_the_source_preview_is_upright() -> None:
    """An EXIF-rotated JPEG: the preview is made after the rotation, as the photo is shown."""
    upright = portrait(600).resize((600, 400))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # stored 400x600, orientation 6 turns it back
    exif = Image.Exif()
    exif[photo.EXIF_ORIENTATION] = 6
    buf = io.BytesIO()
    stored.convert("RGB").save(buf, "JPEG", exif=exif, quality=92)
    result = face_crop.process(buf.getvalue(), "square", CropOptions(no_face="center"), thumbnail_px=128)
    assert _open(result.source_thumbnail).size == (128, 85)


class _HalfMask:
    def remove(self, image: bytes, call: object, *, content_type: str = "", filename: str = "") -> object:
        from jobs.rembg_pool import RembgResult

        mask = Image.new("L", (320, 320), 0)
        mask.paste(255, (0, 0, 160, 320))
        out = io.BytesIO()
        mask.save(out, "PNG")
        return RembgResult(out.getvalue(), "stub")


def test_a_cut_out_preview_keeps_alpha_and_a_flattened_one_does_not() -> None:
    data = jpeg(Image.new("RGB", (1200, 800), (200, 30, 30)))
    output, _ = background.remove_background(data, RemoveBgOptions(), _HalfMask(), max_pixels=10**8, png_level=1,
                                             thumbnail_px=256)
    cut = _open(output.thumbnail)
    assert cut.mode == "RGBA" and cut.size == (256, 171)
    assert cut.getpixel((10, 80))[3] == 255 and cut.getpixel((240, 80))[3] == 0
    assert _open(output.source_thumbnail).size == (256, 171)
    flat, _ = background.remove_background(data, RemoveBgOptions(bg_color=(0, 0, 255)), _HalfMask(),
                                           max_pixels=10**8, png_level=1, thumbnail_px=256)
    on_blue = _open(flat.thumbnail)
    assert on_blue.format == "JPEG" and on_blue.getpixel((240, 80))[2] > 200
    off, _ = background.remove_background(data, RemoveBgOptions(), _HalfMask(), max_pixels=10**8, png_level=1)
    assert off.thumbnail is None and off.source_thumbnail is None
