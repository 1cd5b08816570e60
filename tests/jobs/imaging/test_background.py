"""Background removal in the worker (jobs/imaging/background.py, cutout.py): the photo before
rembg, and the cut-out made from rembg's mask after it.

The first part feeds ``finish`` hand-made masks; the last part goes through real `rembg s`
servers and holds the worker's cut-out to a direct rembg call, bit for bit.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import redis
import requests
from PIL import Image

from core.contracts import InvalidField, RemoveBgOptions, validate_remove_bg_options
from core.errors import IMAGE_TOO_LARGE, NOT_AN_IMAGE, PermanentJobError, TransientJobError
from jobs.imaging.background import MODEL_INPUT_SIDES, Prepared, finish, prepare, rembg_call, remove_background
from jobs.imaging.cutout import encode_png, naive_cutout
from jobs.rembg_pool import RembgCall, RembgPool, RembgResult
from tests.rembg_servers import RembgServers

ORIENTATION = 0x0112


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def gradient_photo(width: int = 40, height: int = 30) -> Image.Image:
    """An RGB picture whose every pixel differs from its neighbours (so misplaced pixels show)."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([(x * 6) % 256, (y * 8) % 256, (x * 3 + y * 5) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def ellipse_mask(width: int = 40, height: int = 30) -> Image.Image:
    """A soft mask as rembg returns it: 255 in the centre, 0 at the border, a ramp between."""
    x, y = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    level = np.clip((1.2 - np.hypot(x, y)) * 400, 0, 255)
    return Image.fromarray(level.astype(np.uint8))


def prepared_of(image: Image.Image) -> Prepared:
    return Prepared(b"", "image/jpeg", "photo.jpg", image)


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- before rembg ------------------------------------------------------------------------

def test_ordinary_photo_goes_to_rembg_unchanged_and_is_kept_decoded() -> None:
    photo = gradient_photo(64, 48)
    data = encoded(photo, "JPEG")
    prepared = prepare(data, max_pixels=10_000)
    assert prepared.data == data and prepared.content_type == "image/jpeg" and prepared.filename == "photo.jpg"
    assert prepared.image.size == (64, 48) and prepared.image.tobytes() == opened(data).tobytes()


def test_exif_orientation_is_applied_to_the_picture_the_mask_goes_on() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # rotate 90° clockwise to display: the stored 64x48 shows as 48x64
    data = encoded(gradient_photo(64, 48), "JPEG", exif=exif)
    prepared = prepare(data, max_pixels=10_000)
    assert prepared.data == data, "rembg applies the same orientation to the same bytes"
    assert prepared.image.size == (48, 64)
    assert prepared.image.tobytes() == opened(data).transpose(Image.Transpose.ROTATE_270).tobytes()


def test_for_u2net_models_rembg_gets_the_models_input_and_the_worker_enlarges_the_mask() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = encoded(gradient_photo(640, 480), "JPEG", exif=exif)
    prepared = prepare(data, max_pixels=1_000_000, model_side=320)
    assert prepared.content_type == "image/png" and prepared.model_side == 320 and prepared.image.size == (480, 640)
    sent = opened(prepared.data)
    assert sent.size == (320, 320) and sent.mode == "RGB"
    assert sent.tobytes() == prepared.image.resize((320, 320), Image.Resampling.LANCZOS).tobytes()
    small_mask = ellipse_mask(320, 320)
    out = finish(encoded(small_mask, "PNG"), prepared, RemoveBgOptions(only_mask=True), png_level=1)
    assert opened(out.data).tobytes() == small_mask.resize((480, 640), Image.Resampling.LANCZOS).tobytes()
    assert MODEL_INPUT_SIDES["u2netp"] == 320


def test_cmyk_jpeg_is_converted_to_a_png_rembg_can_read() -> None:
    data = encoded(Image.new("CMYK", (64, 48), (0, 200, 200, 0)), "JPEG")
    prepared = prepare(data, max_pixels=10_000)
    assert prepared.content_type == "image/png"
    image = opened(prepared.data)
    assert image.mode == "RGB" and image.size == (64, 48)
    assert image.tobytes() == prepared.image.tobytes(), "rembg's mask is computed on the picture kept"


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    data = encoded(Image.new("I;16", (32, 32), 4000), "PNG")
    image = opened(prepare(data, max_pixels=10_000).data)
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


@pytest.mark.parametrize("options, form", [
    (RemoveBgOptions(), {"model": "u2netp", "a": "false", "om": "true"}),
    (RemoveBgOptions(bg_color=(0, 0, 0), format="png"), {"model": "u2netp", "a": "false", "om": "true"}),
    (RemoveBgOptions(only_mask=True), {"model": "u2netp", "a": "false", "om": "true"}),
    # Alpha matting is computed by rembg from photo and mask: its finished cut-out is asked for.
    (RemoveBgOptions(alpha_matting=True), {"model": "u2netp", "a": "true", "om": "false"}),
])
def test_rembg_is_asked_for_the_mask_except_for_alpha_matting(options: RemoveBgOptions,
                                                              form: dict[str, str]) -> None:
    assert rembg_call(options).form() == form


# --- after rembg ---------------------------------------------------------------------------

def test_cutout_alpha_is_the_mask_and_colour_the_photo_weighted_by_it() -> None:
    photo, mask = gradient_photo(), ellipse_mask()
    out = finish(encoded(mask, "PNG"), prepared_of(photo), RemoveBgOptions(), png_level=1)
    assert (out.format, out.content_type, out.extension, out.width, out.height) == ("png", "image/png", "png", 40, 30)
    image = opened(out.data)
    assert image.mode == "RGBA" and image.getchannel("A").tobytes() == mask.tobytes()
    rgb, m = np.asarray(image)[..., :3].astype(int), np.asarray(mask).astype(int)[..., None]
    expected = np.asarray(photo).astype(int) * m / 255
    assert np.abs(rgb - expected).max() <= 1  # rembg's composite onto transparent black
    assert image.getpixel((20, 15)) == (*photo.getpixel((20, 15)), 255) and image.getpixel((0, 0)) == (0, 0, 0, 0)


def test_png_level_is_the_setting() -> None:
    photo, mask = gradient_photo(200, 150), ellipse_mask(200, 150)
    stored = finish(encoded(mask, "PNG"), prepared_of(photo), RemoveBgOptions(), png_level=0)
    smallest = finish(encoded(mask, "PNG"), prepared_of(photo), RemoveBgOptions(), png_level=9)
    assert opened(stored.data).tobytes() == opened(smallest.data).tobytes()
    assert len(stored.data) > 2 * len(smallest.data)  # level 0 stores the pixels uncompressed
    with pytest.raises(ValueError, match="BG_PNG_COMPRESS_LEVEL"):
        encode_png(photo, 10)


def test_a_bad_png_level_fails_before_rembg_is_asked() -> None:
    class Unreachable:
        def remove(self, image: bytes, call: RembgCall, *, content_type: str = "", filename: str = "") -> RembgResult:
            raise AssertionError("rembg was asked")

    with pytest.raises(ValueError, match="BG_PNG_COMPRESS_LEVEL must be 0-9"):
        remove_background(encoded(gradient_photo(), "JPEG"), RemoveBgOptions(), Unreachable(), max_pixels=10_000,
                          png_level=-1)


def test_webp_is_lossless_by_default_and_lossy_colour_with_exact_alpha_given_a_quality() -> None:
    photo, mask = gradient_photo(), ellipse_mask()
    reference = naive_cutout(photo, mask)
    lossless = finish(encoded(mask, "PNG"), prepared_of(photo), RemoveBgOptions(format="webp"), png_level=1)
    assert (lossless.format, lossless.content_type, lossless.extension) == ("webp", "image/webp", "webp")
    assert opened(lossless.data).format == "WEBP" and opened(lossless.data).tobytes() == reference.tobytes()
    lossy = finish(encoded(mask, "PNG"), prepared_of(photo), RemoveBgOptions(format="webp", quality=60),
                   png_level=1)
    image = opened(lossy.data)
    assert image.mode == "RGBA" and image.getchannel("A").tobytes() == mask.tobytes()
    assert image.tobytes() != reference.tobytes(), "lossy colour"


def test_max_side_shrinks_the_output_keeping_its_shape_and_never_enlarges() -> None:
    photo, mask = gradient_photo(400, 300), ellipse_mask(400, 300)
    out = finish(encoded(mask, "PNG"), prepared_of(photo), RemoveBgOptions(max_side=100), png_level=1)
    image = opened(out.data)
    assert (out.width, out.height) == image.size == (100, 75) and image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0 and image.getpixel((50, 37))[3] == 255
    same = finish(encoded(mask, "PNG"), prepared_of(photo), RemoveBgOptions(max_side=1000), png_level=1)
    assert (same.width, same.height) == (400, 300)


def test_bg_color_flattens_onto_that_colour_as_jpeg() -> None:
    photo = Image.new("RGB", (40, 30), (200, 10, 10))
    mask = Image.new("L", (40, 30), 0)
    mask.paste(255, (10, 10, 30, 20))
    out = finish(encoded(mask, "PNG"), prepared_of(photo), RemoveBgOptions(bg_color=(0, 255, 0)), png_level=1)
    assert out.content_type == "image/jpeg" and out.extension == "jpg" and out.format == "jpeg"
    image = opened(out.data)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (40, 30)
    corner, centre = image.getpixel((1, 1)), image.getpixel((20, 15))
    assert corner[1] > 240 and corner[0] < 20 and corner[2] < 20  # the background colour
    assert centre[0] > 180 and centre[1] < 40  # the subject, untouched


def test_mask_is_stored_as_the_greyscale_png_rembg_made_or_shrunk() -> None:
    mask = encoded(ellipse_mask(400, 300), "PNG")
    out = finish(mask, prepared_of(gradient_photo(400, 300)), RemoveBgOptions(only_mask=True), png_level=1)
    assert out.data == mask and out.format == "png"
    small = finish(mask, prepared_of(gradient_photo(400, 300)), RemoveBgOptions(only_mask=True, max_side=40),
                   png_level=1)
    assert opened(small.data).mode == "L" and (small.width, small.height) == (40, 30)


def test_alpha_matting_keeps_rembgs_cutout() -> None:
    cut = encoded(naive_cutout(gradient_photo(), ellipse_mask()), "PNG")
    out = finish(cut, prepared_of(gradient_photo()), RemoveBgOptions(alpha_matting=True), png_level=1)
    assert out.data == cut and out.format == "png"
    webp = finish(cut, prepared_of(gradient_photo()), RemoveBgOptions(alpha_matting=True, format="webp"),
                  png_level=1)
    assert opened(webp.data).tobytes() == opened(cut).tobytes()


def test_a_mask_that_does_not_fit_the_photo_is_a_transient_error() -> None:
    with pytest.raises(TransientJobError, match="30x40 mask for a 40x30 photo"):
        finish(encoded(ellipse_mask(30, 40), "PNG"), prepared_of(gradient_photo()), RemoveBgOptions(), png_level=1)


# --- the options the job reads -------------------------------------------------------------

def test_new_options_round_trip_and_bad_values_name_the_field() -> None:
    options = validate_remove_bg_options({"format": "webp", "maxSide": 1600, "quality": 80}, ("u2netp",))
    assert (options.format, options.max_side, options.quality) == ("webp", 1600, 80)
    assert validate_remove_bg_options(options.to_dict(), ("u2netp",)) == options
    assert validate_remove_bg_options(None, ("u2netp",)).format == "png"
    for bad, field in [({"format": "gif"}, "options.format"), ({"maxSide": 8}, "options.maxSide"),
                       ({"maxSide": "big"}, "options.maxSide"), ({"quality": 80}, "options.quality"),
                       ({"format": "webp", "onlyMask": True}, "options.format"),
                       ({"format": "webp", "bgColor": "#fff"}, "options.format")]:
        with pytest.raises(InvalidField) as info:
            validate_remove_bg_options(bad, ("u2netp",))
        assert info.value.field == field, bad


# --- through real rembg servers --------------------------------------------------------------

def noisy_photo(width: int, height: int, seed: int) -> Image.Image:
    """scikit-image's astronaut at ``width`` x ``height`` with sensor-like noise."""
    from skimage import data

    base = Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(base) + noise, 0, 255).astype(np.uint8))


def rotated_jpeg() -> bytes:
    """A 640x480 JPEG whose EXIF says: turn it 90° (orientation 6), as phones store portraits."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return encoded(noisy_photo(640, 480, 1), "JPEG", quality=90, exif=exif)


def transparent_png() -> bytes:
    """An RGBA PNG whose left quarter is already transparent."""
    image = noisy_photo(400, 400, 2).convert("RGBA")
    image.paste((0, 0, 0, 0), (0, 0, 100, 400))
    return encoded(image, "PNG")


PHOTOS = {
    "jpeg-1000": lambda: encoded(noisy_photo(1000, 750, 0), "JPEG", quality=90),
    "jpeg-exif-rotated": rotated_jpeg,
    "png-rgba": transparent_png,
    "png-palette": lambda: encoded(noisy_photo(300, 200, 3).quantize(64), "PNG"),
}


class Recording:
    """The pool, remembering what it was asked for."""

    def __init__(self, pool: RembgPool) -> None:
        self.pool, self.calls, self.sent = pool, list[RembgCall](), list[bytes]()

    def remove(self, image: bytes, call: RembgCall, *, content_type: str = "image/jpeg",
               filename: str = "photo.jpg") -> RembgResult:
        self.calls.append(call)
        self.sent.append(image)
        return self.pool.remove(image, call, content_type=content_type, filename=filename)


def direct_call(url: str, data: bytes) -> Image.Image:
    """What rembg itself returns for ``data`` (its default cut-out)."""
    resp = requests.post(f"{url}/api/remove", files={"file": ("photo", data)}, data={"model": "u2netp"},
                         timeout=120)
    assert resp.status_code == 200, resp.text
    return opened(resp.content)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_cutout_is_bit_identical_to_a_direct_rembg_call(name: str, rembg_servers: RembgServers,
                                                         redis_conn: redis.Redis) -> None:
    rembg_servers.revive()
    data = PHOTOS[name]()
    pool = Recording(RembgPool([rembg_servers[0].url], redis_conn))
    output, _ = remove_background(data, RemoveBgOptions(), pool, max_pixels=50_000_000, png_level=1)
    assert [call.only_mask for call in pool.calls] == [True], "rembg only computes the mask"
    assert opened(pool.sent[0]).size == (320, 320), "of u2netp's input, not of the whole photo"
    ours, theirs = opened(output.data), direct_call(rembg_servers[0].url, data)
    assert ours.mode == theirs.mode == "RGBA" and ours.size == theirs.size == (output.width, output.height)
    assert ours.getchannel("A").tobytes() == theirs.getchannel("A").tobytes(), "alpha, bit for bit"
    assert ours.tobytes() == theirs.tobytes(), "colour too: the same composite of the same decoded photo"
    assert 0 < np.count_nonzero(np.asarray(ours.getchannel("A"))) < ours.width * ours.height


@pytest.mark.parametrize("name", ["jpeg-exif-rotated", "png-palette"])
def test_the_full_photo_path_of_other_models_is_bit_identical_too(name: str, rembg_servers: RembgServers,
                                                                  redis_conn: redis.Redis) -> None:
    rembg_servers.revive()
    data = PHOTOS[name]()
    prepared = prepare(data, max_pixels=50_000_000)  # no model_side: the photo itself
    assert prepared.data == data
    removed = RembgPool([rembg_servers[1].url], redis_conn).remove(
        prepared.data, rembg_call(RemoveBgOptions()), content_type=prepared.content_type)
    output = finish(removed.png, prepared, RemoveBgOptions(), png_level=1)
    assert opened(output.data).tobytes() == direct_call(rembg_servers[1].url, data).tobytes()


def test_only_mask_is_rembgs_mask_bit_for_bit(rembg_servers: RembgServers, redis_conn: redis.Redis) -> None:
    rembg_servers.revive()
    data = rotated_jpeg()
    output, _ = remove_background(data, RemoveBgOptions(only_mask=True), RembgPool([rembg_servers[0].url], redis_conn),
                                  max_pixels=50_000_000, png_level=1)
    mask = opened(output.data)
    assert mask.mode == "L" and mask.size == (480, 640)
    assert mask.tobytes() == direct_call(rembg_servers[0].url, data).getchannel("A").tobytes()
