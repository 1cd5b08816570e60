"""Photos sent as files and phone formats (jobs/phone_photos.py through jobs.fetch.fetch_image)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from core.config import Settings
from core.errors import NOT_AN_IMAGE, SOURCE_MISSING, PermanentJobError
from jobs.fetch import fetch_image
from jobs.phone_photos import discard_upload

NAME = "0123456789abcdef0123456789abcdef"


def _keep(tmp_path: Path, data: bytes, extension: str) -> str:
    folder = tmp_path / "photos"
    folder.mkdir(exist_ok=True)
    (folder / f"{NAME}.{extension}").write_bytes(data)
    return f"upload:{NAME}.{extension}"


def _photo() -> Image.Image:
    image = Image.new("RGB", (80, 60), (20, 120, 220))
    image.paste((250, 250, 0), (0, 0, 40, 60))
    return image


def test_heic_and_avif_become_upright_pngs(tmp_path: Path) -> None:
    import pillow_heif

    settings = Settings(upload_dir=str(tmp_path))
    heic = io.BytesIO()
    pillow_heif.from_pillow(_photo()).save(heic, quality=95)
    avif = io.BytesIO()
    _photo().save(avif, "AVIF", quality=95)
    for data, extension in ((heic.getvalue(), "heic"), (avif.getvalue(), "avif")):
        url = _keep(tmp_path, data, extension)
        fetched = fetch_image(url, settings)
        assert fetched.content_type == "image/png" and fetched.final_url == url
        with Image.open(io.BytesIO(fetched.data)) as png:
            assert png.format == "PNG" and png.size == (80, 60)
            left, right = png.convert("RGB").getpixel((5, 30)), png.convert("RGB").getpixel((75, 30))
            assert left[0] > 200 and right[2] > 180  # yellow left half, blue right half
        discard_upload(settings, url)
        assert not (tmp_path / "photos" / f"{NAME}.{extension}").exists()


def test_uploaded_photo_errors_are_permanent(tmp_path: Path) -> None:
    settings = Settings(upload_dir=str(tmp_path))
    with pytest.raises(PermanentJobError) as gone:
        fetch_image(f"upload:{NAME}.jpg", settings)
    assert gone.value.code == SOURCE_MISSING
    url = _keep(tmp_path, b"GIF89a" + b"\0" * 40, "jpg")
    with pytest.raises(PermanentJobError) as not_image:
        fetch_image(url, settings)
    assert not_image.value.code == NOT_AN_IMAGE
    url = _keep(tmp_path, b"\x00\x00\x00\x18ftypheic" + b"\0" * 40, "heic")  # the brand, but no picture
    with pytest.raises(PermanentJobError) as broken:
        fetch_image(url, settings)
    assert broken.value.code == NOT_AN_IMAGE
    with pytest.raises(PermanentJobError):
        fetch_image("upload:../../etc/passwd", settings)
