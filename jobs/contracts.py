"""What the web tier and the workers agree on: queue names, job paths, payload shapes.

Stdlib only. service/ enqueues jobs by the dotted names below and never imports the modules
they point at (cv2 and numpy stay out of Gunicorn). The option validators here are the single
source of truth for what a job accepts; the API answers 400 with the field named when they
raise ``InvalidField``.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# --- queues (seed names) ------------------------------------------------------------------
QUEUE_BACKGROUND_REMOVAL = "background-removal"
QUEUE_FACE_CROP = "face-crop"
QUEUE_IMAGE_PROCESSING = "image-processing"
QUEUE_BATCH_INGESTION = "batch-ingestion"
QUEUE_FACE_DETECTION = "face-detection"
ALL_QUEUES = (
    QUEUE_BACKGROUND_REMOVAL,
    QUEUE_FACE_CROP,
    QUEUE_IMAGE_PROCESSING,
    QUEUE_BATCH_INGESTION,
    QUEUE_FACE_DETECTION,
)
# Default `rq worker` processes per queue in the dev stack and compose (seed concurrency).
DEFAULT_WORKERS = {
    QUEUE_BACKGROUND_REMOVAL: 3,
    QUEUE_FACE_CROP: 3,
    QUEUE_IMAGE_PROCESSING: 5,
}

# --- job functions (dotted paths; resolved only inside `rq worker`) -------------------------
JOB_CROP_FACE = "jobs.tasks.crop_face"
JOB_REMOVE_BACKGROUND = "jobs.tasks.remove_background"
ON_JOB_FAILURE = "jobs.tasks.on_job_failure"
ON_JOB_SUCCESS = "jobs.tasks.on_job_success"

# Redis list of recent job durations (seconds) per queue: the workers' success callback
# pushes, the web tier's wait estimate reads.
DURATIONS_KEY = "iq:durations:{queue}"
DURATIONS_KEPT = 200

# --- job kinds as stored in the record row --------------------------------------------------
KIND_FACE_CROP = "face_crop"
KIND_REMOVE_BG = "remove_bg"

# --- record statuses ------------------------------------------------------------------------
STATUS_QUEUED = "queued"
STATUS_PROCESSING = "processing"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"

# --- face crop ------------------------------------------------------------------------------
CROP_MODES = ("square", "passport", "idcard")
OUTPUT_FORMATS = ("jpeg", "png", "webp")
NO_FACE_POLICIES = ("fail", "center")
MAX_OUTPUT_SIDE = 4096

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
MAX_URL_LENGTH = 2048


class InvalidField(ValueError):
    """A request field is missing or wrong; ``field`` names it (dotted for nested ones)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class CropOptions:
    """Validated face-crop options; ``None`` means the mode's default."""

    padding: float | None = None
    output_width: int | None = None
    output_height: int | None = None
    format: str = "jpeg"
    quality: int = 92
    no_face: str = "fail"

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form stored in job data and echoed in job status."""
        return {
            "padding": self.padding,
            "outputWidth": self.output_width,
            "outputHeight": self.output_height,
            "format": self.format,
            "quality": self.quality,
            "noFace": self.no_face,
        }


def validate_id(value: Any, field: str) -> str:
    """A vendor-supplied identifier: 1-128 chars of letters, digits and ._:@- ."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise InvalidField(field, "is required and must be a non-empty string")
    if not ID_PATTERN.match(value):
        raise InvalidField(
            field, "must be 1-128 characters of letters, digits and . _ : @ - (starting alphanumeric)"
        )
    return value


def validate_photo_url(value: Any, field: str) -> str:
    """Syntax check of an image URL; the worker re-checks where it really resolves (SSRF)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(field, "is required and must be an http(s) URL string")
    value = value.strip()
    if len(value) > MAX_URL_LENGTH:
        raise InvalidField(field, f"is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidField(field, f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidField(field, "must use http or https")
    if not parts.hostname:
        raise InvalidField(field, "has no host")
    if parts.username or parts.password:
        raise InvalidField(field, "must not contain credentials")
    if port == 0:
        raise InvalidField(field, "has an invalid port")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", host):
            raise InvalidField(field, "has an invalid host name") from None
    return value


def validate_mode(value: Any, field: str = "mode") -> str:
    """Face-crop mode: square, passport or idcard."""
    if not isinstance(value, str) or value not in CROP_MODES:
        raise InvalidField(field, f"must be one of {', '.join(CROP_MODES)}")
    return value


def _number(options: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool) -> Any:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidField(f"options.{key}", "must be a number")
    if integer and not float(value).is_integer():
        raise InvalidField(f"options.{key}", "must be a whole number")
    if not lo <= value <= hi:
        raise InvalidField(f"options.{key}", f"must be between {lo:g} and {hi:g}")
    return int(value) if integer else float(value)


def validate_crop_options(mode: str, options: Any) -> CropOptions:
    """Validate the ``options`` object of a face-crop request."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidField("options", "must be an object")
    known = {"padding", "outputWidth", "outputHeight", "format", "quality", "noFace"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidField(f"options.{unknown[0]}", f"is not a known option ({', '.join(sorted(known))})")
    fmt = options.get("format", "jpeg")
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in OUTPUT_FORMATS:
        raise InvalidField("options.format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
    no_face = options.get("noFace", "fail")
    if no_face not in NO_FACE_POLICIES:
        raise InvalidField("options.noFace", f"must be one of {', '.join(NO_FACE_POLICIES)}")
    if no_face == "center" and mode != "square":
        raise InvalidField("options.noFace", "'center' is only allowed in square mode")
    quality = _number(options, "quality", 1, 100, integer=True)
    return CropOptions(
        padding=_number(options, "padding", 0, 2, integer=False),
        output_width=_number(options, "outputWidth", 16, MAX_OUTPUT_SIDE, integer=True),
        output_height=_number(options, "outputHeight", 16, MAX_OUTPUT_SIDE, integer=True),
        format=fmt,
        quality=92 if quality is None else quality,
        no_face=no_face,
    )


def crop_options_from_dict(data: dict[str, Any]) -> CropOptions:
    """Inverse of ``CropOptions.to_dict`` (job payloads are stored camelCase)."""
    return CropOptions(
        padding=data.get("padding"),
        output_width=data.get("outputWidth"),
        output_height=data.get("outputHeight"),
        format=data.get("format", "jpeg"),
        quality=data.get("quality", 92),
        no_face=data.get("noFace", "fail"),
    )
