"""Storage contract, run against every backend; then what only Cloudinary or the local folder does.

CloudinaryStorage runs the real SDK against tests.cloudinary_standin (signatures checked).
"""
from __future__ import annotations

import io
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from core.config import Settings
from core.errors import STORAGE_UNAVAILABLE, PermanentJobError, TransientJobError
from jobs.storage import (
    STORAGE_REJECTED,
    CloudinaryStorage,
    LocalStorage,
    Storage,
    parse_cloudinary_url,
    safe_key,
    storage_from_settings,
    validate_key,
)
from tests.cloudinary_standin import CloudinaryStandin, sign, string_to_sign

KEY = "vendor-1/project-1/rec-1/face-crop-job-1.jpg"
UNSAFE_KEYS = [
    "",
    "/etc/passwd",
    "../outside.jpg",
    "a/../../outside.jpg",
    "a/./b.jpg",
    "a//b.jpg",
    "a/b/",
    "a\\b.jpg",
    "a/b\x00.jpg",
    "a/.hidden.jpg",
    "a/b c.jpg",
    "a/b?c.jpg",
    "a/" + "x" * 256,
]


def image_bytes(
    colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30), fmt: str = "JPEG"
) -> bytes:
    """A small generated image."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def standin() -> Iterator[CloudinaryStandin]:
    with CloudinaryStandin() as server:
        yield server


@pytest.fixture()
def fresh_standin(standin: CloudinaryStandin) -> CloudinaryStandin:
    standin.reset()
    return standin


@dataclass
class Backend:
    """A storage plus the test's way to read back what it holds."""

    storage: Storage
    fetch: Callable[[str], bytes]  # public URL -> bytes
    object_count: Callable[[], int]  # objects held (temp files included for the local folder)


def _local_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "storage"
    base_url = "http://files.test:8000"

    def fetch(url: str) -> bytes:
        prefix = f"{base_url}/files/"
        assert url.startswith(prefix), url
        return (root / url.removeprefix(prefix)).read_bytes()

    def object_count() -> int:
        return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0

    return Backend(LocalStorage(root, base_url), fetch, object_count)


def _cloudinary_backend(standin: CloudinaryStandin) -> Backend:
    def fetch(url: str) -> bytes:
        response = requests.get(url, timeout=5)
        response.raise_for_status()
        return response.content

    storage = CloudinaryStorage(standin.cloudinary_url, "image-queue", timeout_s=5)
    return Backend(storage, fetch, lambda: len(standin.uploads))


@pytest.fixture(params=["local", "cloudinary"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return _local_backend(tmp_path)
    return _cloudinary_backend(request.getfixturevalue("fresh_standin"))


# --- the contract every backend honours -----------------------------------------------------


def test_put_returns_url_serving_the_same_bytes(backend: Backend) -> None:
    data = image_bytes()
    url = backend.storage.put(KEY, data, "image/jpeg")
    assert url.startswith("http")
    assert backend.fetch(url) == data
    assert backend.storage.exists(KEY)


def test_put_same_key_twice_overwrites_one_object(backend: Backend) -> None:
    first, second = image_bytes((10, 200, 10)), image_bytes((10, 10, 200), size=(64, 48))
    backend.storage.put(KEY, first, "image/jpeg")
    url = backend.storage.put(KEY, second, "image/jpeg")
    assert backend.object_count() == 1
    assert backend.fetch(url) == second


def test_distinct_keys_are_distinct_objects(backend: Backend) -> None:
    other = "vendor-1/project-1/rec-2/face-crop-job-2.jpg"
    backend.storage.put(KEY, image_bytes((1, 2, 3)), "image/jpeg")
    backend.storage.put(other, image_bytes((200, 200, 3)), "image/jpeg")
    assert backend.object_count() == 2
    assert backend.storage.exists(KEY) and backend.storage.exists(other)


def test_png_round_trip(backend: Backend) -> None:
    data = image_bytes(fmt="PNG")
    key = "v/p/r/remove-bg-j.png"
    assert backend.fetch(backend.storage.put(key, data, "image/png")) == data


def test_delete_and_exists(backend: Backend) -> None:
    assert not backend.storage.exists(KEY)
    backend.storage.put(KEY, image_bytes(), "image/jpeg")
    assert backend.storage.exists(KEY)
    backend.storage.delete(KEY)
    assert not backend.storage.exists(KEY)
    assert backend.object_count() == 0
    backend.storage.delete(KEY)  # deleting a missing key is not an error


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_keys_are_rejected(backend: Backend, key: str) -> None:
    with pytest.raises(ValueError):
        backend.storage.put(key, image_bytes(), "image/jpeg")
    with pytest.raises(ValueError):
        backend.storage.exists(key)
    with pytest.raises(ValueError):
        backend.storage.delete(key)
    assert backend.object_count() == 0


def test_empty_data_is_rejected(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.storage.put(KEY, b"", "image/jpeg")
    assert backend.object_count() == 0


# --- safe_key -------------------------------------------------------------------------------


def test_safe_key_joins_and_maps_odd_characters() -> None:
    assert safe_key("v1", "p1", "r1", "face-crop-j1.jpg") == "v1/p1/r1/face-crop-j1.jpg"
    assert safe_key("vendor a", "proj#1", "rec@x:y", "f~ile.jpg") == "vendor_a/proj_1/rec@x:y/f_ile.jpg"
    assert safe_key("été", "x.png") == "_t_/x.png"
    assert safe_key("a/b", "c.jpg") == "a/b/c.jpg"


@pytest.mark.parametrize(
    "parts",
    [(), ("",), ("a", ""), ("a", ".."), ("..", "b"), ("/abs", "b"), ("a\\b",), ("a\x00",), ("a/../b",),
     ("a//b",), (".", "b"), ("a", ".hidden")],
)
def test_safe_key_rejects_traversal(parts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        safe_key(*parts)


def test_validate_key_accepts_what_safe_key_builds() -> None:
    assert validate_key(KEY) == ["vendor-1", "project-1", "rec-1", "face-crop-job-1.jpg"]


# --- Cloudinary only ------------------------------------------------------------------------


def test_cloudinary_upload_uses_fixed_public_id_with_overwrite(fresh_standin: CloudinaryStandin) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url, "image-queue", timeout_s=5)
    public_id = "image-queue/vendor-1/project-1/rec-1/face-crop-job-1"
    assert storage.public_id(KEY) == public_id
    url1 = storage.put(KEY, image_bytes(), "image/jpeg")
    url2 = storage.put(KEY, image_bytes((0, 0, 0)), "image/jpeg")
    assert list(fresh_standin.uploads) == [public_id]
    assert fresh_standin.upload_count(public_id) == 2
    asset = fresh_standin.uploads[public_id]
    assert (asset.width, asset.height, asset.format) == (40, 30, "jpg")
    assert url1 != url2  # a new version, so CDN caches of the old one are bypassed
    assert url2 == f"{fresh_standin.url}/demo-cloud/image/upload/v{asset.version}/{public_id}.jpg"
    sent = [r.params for r in fresh_standin.requests if r.path.endswith("/image/upload")]
    assert len(sent) == 2
    for params in sent:
        assert params["public_id"] == public_id
        assert params["overwrite"] == "1"
        assert params["invalidate"] == "1"
        assert params["unique_filename"] == "0"
        assert "api_secret" not in params


def test_cloudinary_wrong_secret_is_permanent_and_names_the_setting(fresh_standin: CloudinaryStandin) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url_for(api_secret="wrong-secret"), "image-queue")
    with pytest.raises(PermanentJobError) as caught:
        storage.put(KEY, image_bytes(), "image/jpeg")
    assert caught.value.code == STORAGE_REJECTED
    assert "CLOUDINARY_URL" in caught.value.message
    assert "Invalid Signature" in caught.value.message
    assert "wrong-secret" not in str(caught.value)
    assert fresh_standin.uploads == {}
    assert fresh_standin.requests[-1].status == 401


@pytest.mark.parametrize(
    "url_change",
    [{"api_key": "999"}, {"cloud_name": "other-cloud"}],
)
def test_cloudinary_wrong_account_is_permanent(
    fresh_standin: CloudinaryStandin, url_change: dict[str, str]
) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url_for(**url_change), "image-queue")
    with pytest.raises(PermanentJobError) as caught:
        storage.put(KEY, image_bytes(), "image/jpeg")
    assert caught.value.code == STORAGE_REJECTED
    assert "CLOUDINARY_URL" in caught.value.message


def test_cloudinary_5xx_is_transient_then_succeeds(fresh_standin: CloudinaryStandin) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url, "image-queue", timeout_s=5)
    fresh_standin.fail_next(2, 503)
    for _ in range(2):
        with pytest.raises(TransientJobError) as caught:
            storage.put(KEY, image_bytes(), "image/jpeg")
        assert caught.value.code == STORAGE_UNAVAILABLE
        assert "503" in caught.value.message
    storage.put(KEY, image_bytes(), "image/jpeg")
    assert fresh_standin.upload_count(storage.public_id(KEY)) == 1


@pytest.mark.parametrize("status", [429, 500, 502, 504])
def test_cloudinary_rate_limit_and_server_errors_are_transient(
    fresh_standin: CloudinaryStandin, status: int
) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url, "image-queue", timeout_s=5)
    fresh_standin.fail_next(1, status)
    with pytest.raises(TransientJobError) as caught:
        storage.put(KEY, image_bytes(), "image/jpeg")
    assert caught.value.code == STORAGE_UNAVAILABLE


def test_cloudinary_rejects_non_image_permanently(fresh_standin: CloudinaryStandin) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url, "image-queue", timeout_s=5)
    with pytest.raises(PermanentJobError) as caught:
        storage.put(KEY, b"not an image at all", "image/jpeg")
    assert caught.value.code == STORAGE_REJECTED
    assert "Invalid image file" in caught.value.message


def test_cloudinary_stopped_is_transient() -> None:
    server = CloudinaryStandin().start()
    storage = CloudinaryStorage(server.cloudinary_url, "image-queue", timeout_s=2)
    storage.put(KEY, image_bytes(), "image/jpeg")
    server.stop()
    with pytest.raises(TransientJobError) as caught:
        storage.put(KEY, image_bytes(), "image/jpeg")
    assert caught.value.code == STORAGE_UNAVAILABLE
    with pytest.raises(TransientJobError):
        storage.exists(KEY)
    with pytest.raises(TransientJobError):
        storage.delete(KEY)


def test_cloudinary_timeout_is_transient(fresh_standin: CloudinaryStandin) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url, "image-queue", timeout_s=0.3)
    fresh_standin.stall_next(1, 1.5)  # urllib3 does not retry a read timeout on POST
    started = time.monotonic()
    with pytest.raises(TransientJobError) as caught:
        storage.put(KEY, image_bytes(), "image/jpeg")
    assert caught.value.code == STORAGE_UNAVAILABLE
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(("status", "error"), [(502, TransientJobError), (401, PermanentJobError)])
def test_cloudinary_exists_errors_are_classified(
    fresh_standin: CloudinaryStandin, status: int, error: type[Exception]
) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url, "image-queue", timeout_s=5)
    fresh_standin.fail_next(1, status, action="resource")
    with pytest.raises(error):
        storage.exists(KEY)


def test_cloudinary_exists_with_wrong_secret_is_permanent(fresh_standin: CloudinaryStandin) -> None:
    storage = CloudinaryStorage(fresh_standin.cloudinary_url_for(api_secret="nope"), "image-queue")
    with pytest.raises(PermanentJobError) as caught:
        storage.exists(KEY)
    assert caught.value.code == STORAGE_REJECTED


def test_cloudinary_instances_do_not_share_accounts(fresh_standin: CloudinaryStandin) -> None:
    good = CloudinaryStorage(fresh_standin.cloudinary_url, "image-queue", timeout_s=5)
    bad = CloudinaryStorage(fresh_standin.cloudinary_url_for(api_secret="wrong"), "image-queue")
    with pytest.raises(PermanentJobError):
        bad.put(KEY, image_bytes(), "image/jpeg")
    good.put(KEY, image_bytes(), "image/jpeg")  # the bad instance did not reconfigure the SDK
    assert fresh_standin.upload_count(good.public_id(KEY)) == 1


def test_cloudinary_sha256_account(fresh_standin: CloudinaryStandin) -> None:
    with CloudinaryStandin(signature_algorithm="sha256") as server:
        url = server.cloudinary_url + "&signature_algorithm=sha256"
        put_url = CloudinaryStorage(url, "f", timeout_s=5).put(KEY, image_bytes(), "image/jpeg")
        assert requests.get(put_url, timeout=5).content == image_bytes()
        with pytest.raises(PermanentJobError):  # sha1 signatures do not pass a sha256 account
            CloudinaryStorage(server.cloudinary_url, "f", timeout_s=5).put(KEY, image_bytes(), "image/jpeg")


@pytest.mark.parametrize(
    "url",
    ["", "https://k:s@cloud", "cloudinary://cloud", "cloudinary://k@cloud", "cloudinary://k:s@cloud?signature_version=x"],
)
def test_cloudinary_bad_url_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match="CLOUDINARY_URL"):
        CloudinaryStorage(url, "image-queue")


def test_parse_cloudinary_url_reads_upload_prefix() -> None:
    options = parse_cloudinary_url("cloudinary://123:s3cr3t@My-Cloud?upload_prefix=http://127.0.0.1:9/")
    assert options["cloud_name"] == "my-cloud"  # the SDK lower-cases the host the same way
    assert (options["api_key"], options["api_secret"]) == ("123", "s3cr3t")
    assert options["upload_prefix"] == "http://127.0.0.1:9"
    assert parse_cloudinary_url("cloudinary://1:2@c")["upload_prefix"] is None


def test_cloudinary_repr_hides_the_secret(standin: CloudinaryStandin) -> None:
    storage = CloudinaryStorage(standin.cloudinary_url, "image-queue")
    assert standin.api_secret not in repr(storage)


# --- the stand-in's signature check matches Cloudinary's documented example ----------------


def test_standin_signature_matches_cloudinary_docs_example() -> None:
    # https://cloudinary.com/documentation/authentication_signatures (sha1 example)
    params = {"eager": "w_400,h_300,c_pad|w_260,h_200,c_crop", "public_id": "sample_image",
              "timestamp": "1315060510", "api_key": "1234", "file": "x"}
    assert string_to_sign(params) == (
        "eager=w_400,h_300,c_pad|w_260,h_200,c_crop&public_id=sample_image&timestamp=1315060510"
    )
    assert sign(params, "abcd") == "bfd09f95f331f558cbd1320e67aa8d488770583e"


def test_standin_refuses_stale_timestamp(fresh_standin: CloudinaryStandin) -> None:
    params = {"timestamp": str(int(time.time()) - 7200), "public_id": "x", "api_key": fresh_standin.api_key}
    params["signature"] = sign(params, fresh_standin.api_secret)
    files = {"file": ("x.jpg", image_bytes(), "image/jpeg")}
    upload_url = f"{fresh_standin.url}/v1_1/demo-cloud/image/upload"
    response = requests.post(upload_url, data=params, files=files, timeout=5)
    assert response.status_code == 400
    assert "Stale request" in response.json()["error"]["message"]


# --- local folder only ----------------------------------------------------------------------


def test_local_url_and_file_layout(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, "http://127.0.0.1:8000/")
    url = storage.put("v@1/p:1/r/f.jpg", image_bytes(), "image/jpeg")
    assert url == "http://127.0.0.1:8000/files/v@1/p:1/r/f.jpg"
    path = tmp_path / "v@1" / "p:1" / "r" / "f.jpg"
    assert path.read_bytes() == image_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_local_failed_write_is_transient_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path, "http://x")
    storage.put(KEY, b"old", "image/jpeg")

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(TransientJobError) as caught:
        storage.put(KEY, b"new", "image/jpeg")
    assert caught.value.code == STORAGE_UNAVAILABLE
    assert "STORAGE_DIR" in caught.value.message
    assert [p.name for p in (tmp_path / KEY).parent.iterdir()] == ["face-crop-job-1.jpg"]
    assert (tmp_path / KEY).read_bytes() == b"old"


def test_local_permission_denied_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    # Patched rather than chmod: the test suite may run as root, which ignores permissions.
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(TransientJobError) as caught:
        LocalStorage(tmp_path, "http://x").put(KEY, b"data", "image/jpeg")
    assert caught.value.code == STORAGE_UNAVAILABLE


def test_local_refuses_symlinked_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "vendor-1").symlink_to(outside)
    with pytest.raises(ValueError):
        LocalStorage(root, "http://x").put(KEY, b"data", "image/jpeg")
    assert list(outside.iterdir()) == []


# --- choosing a backend ---------------------------------------------------------------------


def test_storage_from_settings_picks_local_by_default(tmp_path: Path) -> None:
    storage = storage_from_settings(Settings(storage_dir=str(tmp_path), public_base_url="http://h"))
    assert isinstance(storage, LocalStorage)
    assert storage.root == tmp_path
    assert storage.base_url == "http://h"


def test_storage_from_settings_picks_cloudinary_when_url_set(standin: CloudinaryStandin) -> None:
    storage = storage_from_settings(Settings(cloudinary_url=standin.cloudinary_url, cloudinary_folder="f"))
    assert isinstance(storage, CloudinaryStorage)
    assert storage.folder == "f"
    local = storage_from_settings(Settings(cloudinary_url=standin.cloudinary_url, storage_backend="local"))
    assert isinstance(local, LocalStorage)


@pytest.mark.parametrize(
    ("settings", "setting_named"),
    [
        (Settings(storage_backend="cloudinary"), "CLOUDINARY_URL"),
        (Settings(storage_backend="s3"), "STORAGE_BACKEND"),
    ],
)
def test_storage_from_settings_refuses_bad_config(settings: Settings, setting_named: str) -> None:
    with pytest.raises(ValueError, match=setting_named):
        storage_from_settings(settings)
