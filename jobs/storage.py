"""Where job results go: a ``Storage`` protocol with a local-folder and a Cloudinary backend.

Every ``put`` is idempotent: the same key always names the same object, so a job that runs
twice (RQ runs jobs at least once) overwrites its earlier result instead of adding a second
one. Keys are relative paths such as ``"{vendor}/{project}/{record}/face-crop-{job}.jpg"``;
build them with ``safe_key`` — both backends refuse anything else with ``ValueError``.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

import cloudinary.api
import cloudinary.exceptions
import cloudinary.uploader

from core.config import Settings
from core.errors import STORAGE_REJECTED, STORAGE_UNAVAILABLE, PermanentJobError, TransientJobError

log = logging.getLogger(__name__)


_SEGMENT = re.compile(r"[A-Za-z0-9._@:-]+")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._@:-]")
_MAX_SEGMENT_CHARS = 255  # a file name on every common filesystem
_CLOUDINARY_URL_FORM = "cloudinary://API_KEY:API_SECRET@CLOUD_NAME"
# CLOUDINARY_URL query parameters we honour per instance (the SDK reads them the same way).
_URL_OPTIONS = ("upload_prefix", "signature_algorithm", "signature_version")
# HTTP statuses from Cloudinary that a later attempt may get past.
_TRANSIENT_STATUSES = frozenset({408, 420, 425, 429})


class Storage(Protocol):
    """A place job results are written to and served from."""

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store ``data`` under ``key`` (replacing any earlier object) and return its public URL."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...


def _check_segment(segment: str, key: str) -> None:
    if not segment:
        raise ValueError(f"storage key {key!r} has an empty path segment")
    if segment in (".", "..") or segment.startswith("."):
        raise ValueError(f"storage key {key!r} has a segment starting with '.' ({segment!r})")
    if len(segment) > _MAX_SEGMENT_CHARS:
        raise ValueError(f"storage key {key!r} has a segment over {_MAX_SEGMENT_CHARS} characters")
    if not _SEGMENT.fullmatch(segment):
        raise ValueError(f"storage key {key!r} may only contain letters, digits, '/' and . _ @ : -")


def validate_key(key: str) -> list[str]:
    """Check a storage key is a safe relative path (as ``safe_key`` builds) and split it."""
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"storage key {key!r} must be a relative path without '\\' or NUL")
    segments = key.split("/")
    for segment in segments:
        _check_segment(segment, key)
    return segments


def safe_key(*parts: str) -> str:
    """Join parts into a storage key; refuse traversal, map other odd characters to '_'."""
    if not parts:
        raise ValueError("safe_key needs at least one part")
    segments: list[str] = []
    for part in parts:
        if not isinstance(part, str) or not part:
            raise ValueError(f"storage key part {part!r} must be a non-empty string")
        if part.startswith("/") or "\\" in part or "\x00" in part:
            raise ValueError(f"storage key part {part!r} must be relative, without '\\' or NUL")
        for segment in part.split("/"):
            if segment in ("", ".", ".."):
                raise ValueError(f"storage key part {part!r} has an empty, '.' or '..' segment")
            segments.append(_UNSAFE_CHAR.sub("_", segment))
    key = "/".join(segments)
    validate_key(key)
    return key


class LocalStorage:
    """Files under a folder, served by the app at ``{base_url}/files/{key}``."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r}, base_url={self.base_url!r})"

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*validate_key(key))
        # A symlink planted inside the folder must not carry writes outside it.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"storage key {key!r} resolves outside STORAGE_DIR")
        return path

    def _unavailable(self, action: str, key: str, exc: OSError) -> TransientJobError:
        return TransientJobError(
            f"local storage could not {action} {key!r} under STORAGE_DIR={str(self.root)!r}: {exc} "
            "(check free disk space and that the worker may write there)",
            code=STORAGE_UNAVAILABLE,
        )

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write atomically (temp file in the same folder, then rename) and return the URL."""
        path = self._path(key)
        if not data:
            raise ValueError(f"refusing to store an empty object under {key!r}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as tmp:
                    tmp.write(data)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the app serves these files
                os.replace(tmp_name, path)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise self._unavailable("write", key, exc) from exc
        log.debug("stored %s (%d bytes, %s) in %s", key, len(data), content_type, self.root)
        return f"{self.base_url}/files/{quote(key, safe='/@:')}"

    def delete(self, key: str) -> None:
        """Remove the file; a missing one is fine."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._unavailable("delete", key, exc) from exc

    def exists(self, key: str) -> bool:
        """Whether the file is there."""
        return self._path(key).is_file()


def parse_cloudinary_url(cloudinary_url: str) -> dict[str, Any]:
    """SDK options (cloud_name, api_key, api_secret, upload_prefix...) from a CLOUDINARY_URL."""
    parts = urlsplit(cloudinary_url)
    if parts.scheme != "cloudinary" or not (parts.hostname and parts.username and parts.password):
        raise ValueError(f"CLOUDINARY_URL must look like {_CLOUDINARY_URL_FORM}[?upload_prefix=URL]")
    # Same reading as the SDK's own Config: host is the cloud name, credentials are not unquoted.
    options: dict[str, Any] = {
        "cloud_name": parts.hostname,
        "api_key": parts.username,
        "api_secret": parts.password,
        "upload_prefix": None,  # None means https://api.cloudinary.com, not the SDK's global config
        "signature_algorithm": "sha1",
        "signature_version": 2,
        "oauth_token": None,
    }
    for name, values in parse_qs(parts.query).items():
        if name in _URL_OPTIONS:
            options[name] = values[0].rstrip("/") if name == "upload_prefix" else values[0]
    try:
        options["signature_version"] = int(options["signature_version"])
    except ValueError:
        raise ValueError("CLOUDINARY_URL: signature_version must be a whole number") from None
    if options["signature_algorithm"] not in ("sha1", "sha256"):
        raise ValueError("CLOUDINARY_URL: signature_algorithm must be sha1 or sha256")
    return options


class CloudinaryStorage:
    """Cloudinary through its official SDK; each key is a fixed public_id uploaded with overwrite."""

    def __init__(self, cloudinary_url: str, folder: str, *, timeout_s: float = 30.0) -> None:
        # Options are passed on every SDK call instead of set in cloudinary.config(), which is
        # process-global: two instances (or a test and a worker) never see each other's account.
        self._options = parse_cloudinary_url(cloudinary_url)
        self.folder = folder.strip("/")
        if self.folder:
            validate_key(self.folder)
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"CloudinaryStorage(cloud_name={self._options['cloud_name']!r}, folder={self.folder!r})"

    def public_id(self, key: str) -> str:
        """The public_id a key is stored under: folder/key without its extension."""
        validate_key(key)
        stem = posixpath.splitext(key)[0]
        return f"{self.folder}/{stem}" if self.folder else stem

    def _sdk_options(self) -> dict[str, Any]:
        return dict(self._options, timeout=self.timeout_s, resource_type="image", type="upload")

    def _error(self, action: str, key: str, status: int | None, message: str) -> Exception:
        where = f"Cloudinary {action} of {key!r} (cloud {self._options['cloud_name']!r})"
        if status is None or status >= 500 or status in _TRANSIENT_STATUSES:
            shown = f"HTTP {status}" if status is not None else "no answer"
            return TransientJobError(f"{where} failed ({shown}): {message}", code=STORAGE_UNAVAILABLE)
        if status in (401, 403, 404):
            return PermanentJobError(
                f"{where} was refused (HTTP {status}): {message}; check CLOUDINARY_URL "
                f"({_CLOUDINARY_URL_FORM}): the API key, secret and cloud name must match your account",
                code=STORAGE_REJECTED,
            )
        return PermanentJobError(
            f"{where} was refused (HTTP {status}): {message}; check the data sent and CLOUDINARY_URL",
            code=STORAGE_REJECTED,
        )

    def _call(self, action: str, key: str, function: Any, *args: Any, **options: Any) -> dict[str, Any]:
        """Run an Upload API call with return_error=True so error answers keep their HTTP status."""
        try:
            result = function(*args, return_error=True, **self._sdk_options(), **options)
        except cloudinary.exceptions.Error as exc:
            # Raised only for transport failures and unreadable answers: timeouts, refused
            # connections, a proxy's HTML error page.
            raise self._error(action, key, None, str(exc)) from exc
        error = result.get("error") if isinstance(result, dict) else None
        if error is not None:
            raise self._error(action, key, error.get("http_code"), str(error.get("message")))
        return dict(result)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Upload under the key's public_id (overwrite, invalidate) and return the secure_url."""
        public_id = self.public_id(key)
        if not data:
            raise ValueError(f"refusing to store an empty object under {key!r}")
        result = self._call(
            "upload",
            key,
            cloudinary.uploader.upload,
            data,
            public_id=public_id,
            overwrite=True,
            invalidate=True,
            unique_filename=False,
            filename=posixpath.basename(key),
        )
        url = result.get("secure_url")
        if not isinstance(url, str) or not url:
            raise TransientJobError(
                f"Cloudinary upload of {key!r} answered without a secure_url", code=STORAGE_UNAVAILABLE
            )
        log.debug("uploaded %s as %s (%d bytes, %s)", key, public_id, len(data), content_type)
        return url

    def delete(self, key: str) -> None:
        """Destroy the asset (and invalidate CDN copies); 'not found' is fine."""
        self._call("delete", key, cloudinary.uploader.destroy, self.public_id(key), invalidate=True)

    def exists(self, key: str) -> bool:
        """Ask the Admin API for the asset; 404 means it is not there."""
        public_id = self.public_id(key)
        try:
            cloudinary.api.resource(public_id, **self._sdk_options())
        except cloudinary.exceptions.NotFound:
            return False
        except cloudinary.exceptions.Error as exc:
            raise self._error("lookup", key, _ADMIN_STATUSES.get(type(exc)), str(exc)) from exc
        except Exception as exc:
            # The Admin API client raises a bare Exception("Error <status> - ...") for statuses
            # it has no class for (502, 504...): classify by that status, re-raise anything else.
            match = re.match(r"Error (\d{3}) - ", str(exc))
            if match is None:
                raise
            raise self._error("lookup", key, int(match.group(1)), str(exc)) from exc
        return True


_ADMIN_STATUSES: dict[type, int | None] = {
    cloudinary.exceptions.BadRequest: 400,
    cloudinary.exceptions.AuthorizationRequired: 401,
    cloudinary.exceptions.NotAllowed: 403,
    cloudinary.exceptions.AlreadyExists: 409,
    cloudinary.exceptions.RateLimited: 429,
    cloudinary.exceptions.GeneralError: None,  # 500/503, and also transport failures
}


def storage_from_settings(settings: Settings) -> Storage:
    """The backend STORAGE_BACKEND names (default: cloudinary when CLOUDINARY_URL is set)."""
    backend = settings.effective_storage_backend
    if backend == "local":
        return LocalStorage(Path(settings.storage_dir), settings.public_base_url)
    if backend == "cloudinary":
        if not settings.cloudinary_url:
            raise ValueError(
                f"STORAGE_BACKEND=cloudinary needs CLOUDINARY_URL ({_CLOUDINARY_URL_FORM})"
            )
        return CloudinaryStorage(settings.cloudinary_url, settings.cloudinary_folder)
    raise ValueError(f"STORAGE_BACKEND must be 'local' or 'cloudinary', not {backend!r}")
