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
QUEUE_WEBHOOKS = "webhooks"  # completion webhook deliveries (jobs/webhooks.py)
# Batch images go to one face-detection queue per priority (10 most urgent); workers list
# them from 10 down to 1 and RQ takes from the first non-empty one, so higher priorities
# overtake lower ones already queued.
BATCH_PRIORITIES = tuple(range(10, 0, -1))
FACE_DETECTION_QUEUES = tuple(f"{QUEUE_FACE_DETECTION}-{p}" for p in BATCH_PRIORITIES)
ALL_QUEUES = (
    QUEUE_BACKGROUND_REMOVAL,
    QUEUE_FACE_CROP,
    QUEUE_IMAGE_PROCESSING,
    QUEUE_BATCH_INGESTION,
    *FACE_DETECTION_QUEUES,
    QUEUE_WEBHOOKS,
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
JOB_ID_PHOTO = "jobs.tasks.id_photo"
ON_JOB_FAILURE = "jobs.tasks.on_job_failure"
ON_JOB_SUCCESS = "jobs.tasks.on_job_success"
JOB_INGEST_ZIP = "jobs.batch.ingest_zip"
JOB_PROCESS_CHUNK = "jobs.batch.process_chunk"
ON_INGEST_FAILURE = "jobs.batch.on_ingest_failure"
ON_CHUNK_FAILURE = "jobs.batch.on_chunk_failure"
JOB_DELIVER_WEBHOOK = "jobs.webhooks.deliver"
ON_WEBHOOK_FAILURE = "jobs.webhooks.on_delivery_failure"

# --- completion webhooks (jobs/webhooks.py sends, service/webhooks.py shows) ------------------
# Redis hash of the delivery state of one job's or batch's webhook: kind is "job" or "batch".
WEBHOOK_STATE_KEY = "iq:webhook:{kind}:{id}"
WEBHOOK_EVENTS = ("job.completed", "job.failed", "batch.completed", "batch.completed_with_errors",
                  "batch.failed", "batch.canceled")
WEBHOOK_PENDING, WEBHOOK_DELIVERED, WEBHOOK_FAILED = "pending", "delivered", "failed"

# Redis list of recent job durations (seconds) per queue: the workers' success callback
# pushes, the web tier's wait estimate reads.
DURATIONS_KEY = "iq:durations:{queue}"
DURATIONS_KEPT = 200

# --- job kinds as stored in the record row --------------------------------------------------
KIND_FACE_CROP = "face_crop"
KIND_REMOVE_BG = "remove_bg"
KIND_ID_PHOTO = "id_photo"
KIND_BATCH_FACE_CROP = "batch_face_crop"
KIND_BATCH_REMOVE_BG = "batch_remove_bg"
KIND_BATCH_ID_PHOTO = "batch_id_photo"
# Single-job kinds -> (queue, job function): the API queues them, `reconcile` re-queues them.
SINGLE_JOB_KINDS = {
    KIND_FACE_CROP: (QUEUE_FACE_CROP, JOB_CROP_FACE),
    KIND_REMOVE_BG: (QUEUE_BACKGROUND_REMOVAL, JOB_REMOVE_BACKGROUND),
    KIND_ID_PHOTO: (QUEUE_IMAGE_PROCESSING, JOB_ID_PHOTO),
}

# --- record statuses ------------------------------------------------------------------------
STATUS_QUEUED = "queued"
STATUS_PROCESSING = "processing"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_CANCELED = "canceled"  # DELETE /api/image-queue/job/<id> or POST /api/batch/<id>/cancel
RECORD_STATUSES = (STATUS_QUEUED, STATUS_PROCESSING, STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELED)

# --- batch operations (POST /api/batch/upload-zip and add-images: ``operation``) -------------
# docs/batches.md "Operations"; idPhoto's options carry its spec (core/id_photos.py).
OPERATION_CROP_FACE = "cropFace"
OPERATION_REMOVE_BG = "removeBg"
OPERATION_ID_PHOTO = "idPhoto"
BATCH_OPERATIONS = (OPERATION_CROP_FACE, OPERATION_REMOVE_BG, OPERATION_ID_PHOTO)
# The list routes' page size: ?limit= up to this many (default LIST_DEFAULT_LIMIT).
LIST_DEFAULT_LIMIT = 50
LIST_MAX_LIMIT = 200

# --- face crop ------------------------------------------------------------------------------
CROP_MODES = ("square", "passport", "idcard")
OUTPUT_FORMATS = ("jpeg", "png", "webp")
NO_FACE_POLICIES = ("fail", "center")
MAX_OUTPUT_SIDE = 4096
# Background removal's cut-out formats (options.format): png (lossless), webp (lossless, or
# lossy colour with a lossless alpha when options.quality is given). bgColor gives a JPEG.
BG_FORMATS = ("png", "webp")
# Face detectors (jobs/imaging/detectors; docs/faces.md): a request's options.detector, else
# the workers' FACE_DETECTOR setting, picks one.
FACE_DETECTORS = ("yunet", "haar")
# The five landmarks a detector that has them reports per face, in this order (the subject's
# right eye is on the viewer's left).
LANDMARK_NAMES = ("rightEye", "leftEye", "noseTip", "rightMouth", "leftMouth")

# --- background removal ---------------------------------------------------------------------
# Redis keys the workers' rembg pool (jobs/rembg_pool.py) writes and the health route reads.
REMBG_ROUND_ROBIN_KEY = "iq:rembg:next"
REMBG_BREAKER_NAMESPACE = "iq:rembg:{url}"  # pybreaker adds ":pybreaker:<field>"
REMBG_BREAKER_STATE_KEY = REMBG_BREAKER_NAMESPACE + ":pybreaker:state"
REMBG_LAST_ERROR_KEY = "iq:rembg:{url}:last-error"
_HEX_COLOUR = re.compile(r"^#?([0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})$")

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
MAX_URL_LENGTH = 2048


def sniff_image_type(data: bytes) -> str | None:
    """The image MIME type the magic bytes show (JPEG, PNG or WebP, the formats we accept), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


# Phone formats accepted from a vendor's photo (sent as a file, or fetched by URL): the workers
# turn them into PNG before any other step (jobs/phone_photos.py). ISO-BMFF "ftyp" brands.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
# A photo sent as a file is kept under UPLOAD_DIR/photos/<name> until its job ends; the job's
# photoUrl is then "upload:<name>" (jobs/fetch.py reads it from there).
UPLOAD_SCHEME = "upload:"
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}\.(jpg|png|webp|heic|avif)$")
MAX_WAIT_S = 30  # the single routes' optional ``wait``


def sniff_photo_type(data: bytes) -> str | None:
    """sniff_image_type, plus HEIC/HEIF and AVIF (image/heic, image/avif) by their ftyp brand."""
    known = sniff_image_type(data)
    if known is not None or len(data) < 12 or data[4:8] != b"ftyp":
        return known
    brand = data[8:12]
    if brand in AVIF_BRANDS:
        return "image/avif"
    if brand in HEIF_BRANDS:
        return "image/heic"
    return None


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
    detector: str | None = None  # one of FACE_DETECTORS; None: the workers' FACE_DETECTOR

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form stored in job data and echoed in job status."""
        return {
            "padding": self.padding,
            "outputWidth": self.output_width,
            "outputHeight": self.output_height,
            "format": self.format,
            "quality": self.quality,
            "noFace": self.no_face,
            "detector": self.detector,
        }


@dataclass(frozen=True)
class FoundFace:
    """One face a crop job found, as its result reports it (``faces``), in photo pixels after EXIF
    rotation: ``box`` {x, y, width, height}; ``score`` 0-1 (None: the detector gives none, Haar);
    ``landmarks`` {name: {x, y}} for LANDMARK_NAMES (None: the detector finds none, Haar)."""

    box: dict[str, int]
    score: float | None = None
    landmarks: dict[str, dict[str, int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form of the job result."""
        return {"box": dict(self.box), "score": self.score,
                "landmarks": None if self.landmarks is None else {k: dict(v) for k, v in self.landmarks.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FoundFace:
        """Inverse of ``to_dict``."""
        return cls(box=dict(data["box"]), score=data.get("score"), landmarks=data.get("landmarks"))


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


def validate_callback_url(value: Any, field: str = "callbackUrl") -> str | None:
    """Optional webhook URL: None when absent, else checked like a photo URL (the sender re-checks
    where it resolves before each delivery)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return validate_photo_url(value, field)


def face_detection_queue(priority: int) -> str:
    """The face-detection queue for a batch priority (1-10)."""
    if priority not in BATCH_PRIORITIES:
        raise ValueError(f"priority must be 1-10, got {priority!r}")
    return f"{QUEUE_FACE_DETECTION}-{priority}"


def validate_priority(value: Any, field: str = "priority") -> int:
    """Batch priority: a whole number 1-10 (10 most urgent); strings of digits are accepted (forms)."""
    if value is None or value == "":
        return 5
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value not in BATCH_PRIORITIES:
        raise InvalidField(field, "must be a whole number from 1 (least urgent) to 10 (most urgent)")
    return value


def validate_operation(value: Any, field: str = "operation") -> str:
    """Batch operation: cropFace (the default), removeBg or idPhoto."""
    if value is None or value == "":
        return OPERATION_CROP_FACE
    if not isinstance(value, str) or value not in BATCH_OPERATIONS:
        raise InvalidField(field, f"must be one of {', '.join(BATCH_OPERATIONS)}")
    return value


def batch_kind(operation: str) -> str:
    """The record-row job kind of a batch operation's images."""
    if operation == OPERATION_ID_PHOTO:
        return KIND_BATCH_ID_PHOTO
    return KIND_BATCH_REMOVE_BG if operation == OPERATION_REMOVE_BG else KIND_BATCH_FACE_CROP


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
    known = {"padding", "outputWidth", "outputHeight", "format", "quality", "noFace", "detector"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidField(f"options.{unknown[0]}", f"is not a known option ({', '.join(sorted(known))})")
    detector = options.get("detector")
    if detector is not None and detector not in FACE_DETECTORS:
        raise InvalidField("options.detector", f"must be one of {', '.join(FACE_DETECTORS)} (or left out: the "
                                               "service's default, setting FACE_DETECTOR)")
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
        detector=detector,
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
        detector=data.get("detector"),
    )


@dataclass(frozen=True)
class RemoveBgOptions:
    """Validated background-removal options."""

    model: str = "u2netp"
    bg_color: tuple[int, int, int] | None = None  # flatten onto this RGB colour (JPEG output)
    only_mask: bool = False  # store the greyscale mask instead of the cut-out
    alpha_matting: bool = False  # rembg's alpha matting: finer edges (hair), slower
    format: str = "png"  # the cut-out's format (BG_FORMATS); bgColor always gives a JPEG
    max_side: int | None = None  # shrink the output so its longer side is at most this (px)
    quality: int | None = None  # JPEG (bgColor) or lossy WebP quality; None: JPEG 92, WebP lossless

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form stored in job data and echoed in job status (the output options
        only when set, so payloads keep the shape they had before them)."""
        data: dict[str, Any] = {
            "model": self.model,
            "bgColor": None if self.bg_color is None else "#{:02x}{:02x}{:02x}".format(*self.bg_color),
            "onlyMask": self.only_mask,
            "alphaMatting": self.alpha_matting,
        }
        if self.format != "png":
            data["format"] = self.format
        if self.max_side is not None:
            data["maxSide"] = self.max_side
        if self.quality is not None:
            data["quality"] = self.quality
        return data


def _colour(value: Any, field: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        match = _HEX_COLOUR.match(value.strip())
        if match:
            digits = match.group(1)
            if len(digits) == 3:
                digits = "".join(c * 2 for c in digits)
            return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    elif (isinstance(value, list) and len(value) == 3
          and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        return (value[0], value[1], value[2])
    raise InvalidField(field, "must be a hex colour such as '#ffffff' or an [r, g, b] array of 0-255")


def _flag(options: dict[str, Any], key: str) -> bool:
    value = options.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidField(f"options.{key}", "must be true or false")
    return value


def validate_remove_bg_options(options: Any, models: tuple[str, ...]) -> RemoveBgOptions:
    """Validate the ``options`` object of a background-removal request.

    ``models`` are the rembg models whose weights the servers have (REMBG_MODELS); the first
    is the default. Any other model would make rembg try to download it.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidField("options", "must be an object")
    known = {"model", "bgColor", "onlyMask", "alphaMatting", "format", "maxSide", "quality"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidField(f"options.{unknown[0]}", f"is not a known option ({', '.join(sorted(known))})")
    model = options.get("model")
    if model is None:
        model = models[0]
    if not isinstance(model, str) or model not in models:
        raise InvalidField("options.model", f"must be one of {', '.join(models)} "
                                            "(the models the rembg servers hold; setting REMBG_MODELS)")
    bg_color = _colour(options.get("bgColor"), "options.bgColor")
    only_mask = _flag(options, "onlyMask")
    if only_mask and bg_color is not None:
        raise InvalidField("options.bgColor", "cannot be combined with onlyMask (a mask has no background)")
    fmt = options.get("format")
    if fmt is None:
        fmt = "png"
    if fmt not in BG_FORMATS:
        raise InvalidField("options.format", f"must be one of {', '.join(BG_FORMATS)}")
    if fmt != "png" and (only_mask or bg_color is not None):
        raise InvalidField("options.format", "only png is allowed with onlyMask (a greyscale PNG) "
                                             "or bgColor (a JPEG)")
    quality = _number(options, "quality", 1, 100, integer=True)
    if quality is not None and fmt == "png" and bg_color is None:
        raise InvalidField("options.quality", "applies to bgColor (JPEG) or format webp (lossy) only; "
                                              "PNG is lossless")
    return RemoveBgOptions(model=model, bg_color=bg_color, only_mask=only_mask,
                           alpha_matting=_flag(options, "alphaMatting"), format=fmt,
                           max_side=_number(options, "maxSide", 16, MAX_OUTPUT_SIDE, integer=True),
                           quality=quality)


def remove_bg_options_from_dict(data: dict[str, Any]) -> RemoveBgOptions:
    """Inverse of ``RemoveBgOptions.to_dict`` (job payloads are stored camelCase)."""
    return RemoveBgOptions(
        model=data.get("model") or "u2netp",
        bg_color=_colour(data.get("bgColor"), "options.bgColor"),
        only_mask=bool(data.get("onlyMask")),
        alpha_matting=bool(data.get("alphaMatting")),
        format=data.get("format") or "png",
        max_side=data.get("maxSide"),
        quality=data.get("quality"),
    )
