"""The reusable parts of the OpenAPI document: schemas, error responses, security schemes.

Request schemas restate the validators of core/contracts.py (types, enums, ranges, patterns);
values that come from settings (bulk sizes, rembg models) are filled in from the app's own
settings by ``components(settings)``. Response schemas describe what the views return; the
schemathesis run in tests/integration/test_api_fuzz.py checks every answer against them.
"""
from __future__ import annotations

from typing import Any

from core import contracts
from core.config import Settings
from core.db.batches import (
    BATCH_COMPLETED,
    BATCH_COMPLETED_WITH_ERRORS,
    BATCH_FAILED,
    BATCH_INGESTING,
    BATCH_PROCESSING,
    BATCH_QUEUED,
)

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A $ref to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null (OpenAPI 3.0 style; a $ref cannot carry siblings, so it is wrapped)."""
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    if "enum" in schema and None not in schema["enum"]:  # JSON Schema checks enum before nullable
        schema = {**schema, "enum": [*schema["enum"], None]}
    return {**schema, "nullable": True}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """An object schema; unknown properties allowed unless ``additionalProperties`` is given."""
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


STRING = {"type": "string"}
# Previews the workers keep beside each output (THUMBNAIL_MAX_PX; null when off or not finished).
# The photo's size after EXIF rotation: the pixel space of faceBox and faces.
SOURCE_SIZE: dict[str, Any] = {
    name: {"type": "integer", "nullable": True,
           "description": f"the source photo's {word} after EXIF rotation, the space faceBox and faces are in "
                          "(face crops; null otherwise)"}
    for name, word in (("sourceWidth", "width"), ("sourceHeight", "height"))}
THUMBNAIL_URLS: dict[str, Any] = {
    "thumbnailUrl": {"type": "string", "nullable": True,
                     "description": "a preview of the output, long side <= THUMBNAIL_MAX_PX (cut-outs keep alpha)"},
    "sourceThumbnailUrl": {"type": "string", "nullable": True,
                           "description": "a preview of the source photo, kept after the source is gone"},
}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
TIMESTAMP = {"type": "string", "description": "UTC timestamp"}
SUCCESS_TRUE = {"type": "boolean", "enum": [True]}
ID_REGEX = contracts.ID_PATTERN.pattern
QUEUE_COUNTS_KEYS = ("waiting", "active", "completed", "failed", "delayed")
BATCH_STATUSES = [BATCH_QUEUED, BATCH_INGESTING, BATCH_PROCESSING, BATCH_COMPLETED, BATCH_COMPLETED_WITH_ERRORS,
                  BATCH_FAILED, "canceled"]
RECORD_STATUSES = list(contracts.RECORD_STATUSES)
WAIT = {"type": "number", "minimum": 0, "maximum": contracts.MAX_WAIT_S,
        "description": "wait up to this many seconds for the job: 200 with the finished job (as GET /job/<id>) "
                       "when it completed or failed in time, else the usual 202"}
PHOTO_FILE = {"type": "string", "format": "binary",
              "description": "the photo itself (JPEG, PNG, WebP, HEIC/HEIF or AVIF; at most FETCH_MAX_BYTES), "
                             "instead of photoUrl"}
OPERATION = {"type": "string", "enum": list(contracts.BATCH_OPERATIONS), "default": contracts.OPERATION_CROP_FACE,
             "description": "what each image gets: cropFace (face crop by `mode`), removeBg (background "
                            "removal; `options` are RemoveBgOptions) or idPhoto (an ID photo; `options` are "
                            "IdPhotoOptions plus `spec`, required)."}

# Status -> (description, headers) of the error answers operations list.
ERRORS: dict[int, str] = {
    400: "Invalid request: `error.details.field` names the field and `reason` says why.",
    401: "Missing, unknown or revoked API key (admin routes: missing or wrong Basic credentials).",
    403: "`vendorId` in the body is not the vendor of the API key.",
    404: "Unknown id, or one that belongs to another vendor (admin routes: admin endpoints disabled).",
    409: "A request with the same `Idempotency-Key` is still running: retry after `Retry-After` for its answer.",
    413: "Body larger than the limit (MAX_JSON_BYTES; uploads: BATCH_MAX_UPLOAD_BYTES).",
    415: "Wrong content type (JSON body expected; uploads: multipart/form-data with a ZIP).",
    422: "`Idempotency-Key` already used for a different request (IDEMPOTENCY_KEY_REUSED), or `callbackUrl` "
         "given while the vendor has no webhook signing secret (WEBHOOK_SECRET_MISSING).",
    429: "Rate limited: `Retry-After` says when to try again; the body names the limit.",
    503: "Redis or the database is unavailable; nothing was done. Retry after `Retry-After` seconds.",
}


def _header(description: str, schema: Schema = INTEGER) -> Schema:
    return {"description": description, "schema": schema}


RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": _header("Requests allowed in the window of the limit shown"),
    "RateLimit-Remaining": _header("Requests left in that window"),
    "RateLimit-Reset": _header("Unix time (seconds) when that window ends"),
}


def _error_response(status: int) -> Schema:
    response: Schema = {"description": ERRORS[status],
                        "content": {"application/json": {"schema": ref("Error")}}}
    if status in (409, 429, 503):
        response["headers"] = {"Retry-After": _header("Seconds to wait before retrying")}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": _header("Sent by admin routes: the Basic realm", STRING)}
    return response


def _queue_counts() -> Schema:
    return obj({key: {"type": "integer", "minimum": 0} for key in QUEUE_COUNTS_KEYS}, QUEUE_COUNTS_KEYS)


def _crop_options() -> Schema:
    return obj({
        "padding": nullable({"type": "number", "minimum": 0, "maximum": 2,
                             "description": "fraction of the face size added on each side"}),
        "outputWidth": nullable({"type": "integer", "minimum": 16, "maximum": contracts.MAX_OUTPUT_SIDE}),
        "outputHeight": nullable({"type": "integer", "minimum": 16, "maximum": contracts.MAX_OUTPUT_SIDE}),
        "format": {"type": "string", "enum": [*contracts.OUTPUT_FORMATS, "jpg"], "default": "jpeg"},
        "quality": nullable({"type": "integer", "minimum": 1, "maximum": 100, "default": 92}),
        "noFace": {"type": "string", "enum": list(contracts.NO_FACE_POLICIES), "default": "fail",
                   "description": "`center`: store a centred crop when no face is found (square mode only)"},
        "detector": nullable({"type": "string", "enum": list(contracts.FACE_DETECTORS),
                              "description": "face detector: `yunet` (CNN with landmarks; passport and idcard "
                                             "heads levelled and framed from them) or `haar` (the seeds' "
                                             "cascades); default: the service's FACE_DETECTOR (yunet)"}),
    }, additionalProperties=False, description="Face-crop options; every one is optional.")


def _remove_bg_options(settings: Settings) -> Schema:
    return obj({
        "model": nullable({"type": "string", "enum": list(settings.rembg_models),
                           "description": "rembg model (REMBG_MODELS); default: the first"}),
        "bgColor": nullable({"oneOf": [
            {"type": "string", "pattern": r"^#?([0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})$"},
            {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255},
             "minItems": 3, "maxItems": 3},
        ], "description": "flatten onto this colour (JPEG output); not with onlyMask"}),
        "onlyMask": nullable(BOOLEAN),
        "alphaMatting": nullable(BOOLEAN),
        "format": nullable({"type": "string", "enum": list(contracts.BG_FORMATS), "default": "png",
                            "description": "the cut-out's format: png, or webp (lossless; lossy colour with "
                                           "exact alpha when quality is given); only png with onlyMask or bgColor"}),
        "maxSide": nullable({"type": "integer", "minimum": 16, "maximum": contracts.MAX_OUTPUT_SIDE,
                             "description": "shrink the output so its longer side is at most this many pixels "
                                            "(never enlarged)"}),
        "quality": nullable({"type": "integer", "minimum": 1, "maximum": 100,
                             "description": "JPEG quality with bgColor (default 92), or lossy WebP quality; "
                                            "not with a PNG"}),
    }, additionalProperties=False, description="Background-removal options; every one is optional.")


def _request_schemas(settings: Settings) -> dict[str, Schema]:
    record_id = {"anyOf": [{"type": "string", "pattern": ID_REGEX, "maxLength": 128},
                           {"type": "integer", "minimum": 0, "description": "read as its digits"}],
                 "description": "1-128 letters, digits and . _ : @ - starting with a letter or digit"}
    bulk = {"minItems": 1, "maxItems": settings.bulk_max_items}
    return {
        "Id": record_id,
        "PhotoUrl": {"type": "string", "format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                     "maxLength": contracts.MAX_URL_LENGTH,
                     "description": "http(s) URL of the photo; the worker refuses private addresses"},
        "VendorId": {"type": "string", "nullable": True,
                     "description": "optional (the seeds' field); when given it must be the API key's vendor "
                                    "(403 otherwise)"},
        "Mode": {"type": "string", "enum": list(contracts.CROP_MODES)},
        "CallbackUrl": {"anyOf": [ref("PhotoUrl"), {"type": "string", "pattern": r"^\s*$"}], "nullable": True,
                        "description": "optional completion webhook (signed POST when the job or batch "
                                       "finishes); empty means none"},
        "CropOptions": _crop_options(),
        "RemoveBgOptions": _remove_bg_options(settings),
        "CropFaceRequest": obj({
            "recordId": ref("Id"), "projectId": ref("Id"), "photoUrl": ref("PhotoUrl"), "mode": ref("Mode"),
            "vendorId": ref("VendorId"), "options": nullable(ref("CropOptions")), "callbackUrl": ref("CallbackUrl"),
            "wait": nullable(WAIT),
        }, ("recordId", "projectId", "photoUrl", "mode"), example={
            "recordId": "rec-1", "projectId": "demo", "mode": "passport",
            "photoUrl": "https://photos.example.com/people/rec-1.jpg", "options": {"format": "jpeg", "quality": 90}}),
        "BulkCropFaceRequest": obj({
            "recordIds": {"type": "array", "items": ref("Id"), "uniqueItems": True, **bulk},
            "photoUrls": {"type": "array", "items": ref("PhotoUrl"), **bulk,
                          "description": "as many as recordIds, in the same order"},
            "projectId": ref("Id"), "mode": ref("Mode"), "vendorId": ref("VendorId"),
            "options": nullable(ref("CropOptions")), "callbackUrl": ref("CallbackUrl"), "wait": nullable(WAIT),
        }, ("recordIds", "photoUrls", "projectId", "mode"), example={
            "recordIds": ["rec-1", "rec-2"], "projectId": "demo", "mode": "square",
            "photoUrls": ["https://photos.example.com/people/rec-1.jpg",
                          "https://photos.example.com/people/rec-2.jpg"]}),
        "CropFaceForm": obj({
            "file": PHOTO_FILE, "recordId": ref("Id"), "projectId": ref("Id"), "mode": ref("Mode"),
            "options": {"type": "string", "description": "CropOptions as JSON text"},
            "vendorId": ref("VendorId"), "callbackUrl": ref("CallbackUrl"), "wait": WAIT,
        }, ("file", "recordId", "projectId", "mode")),
        "RemoveBgForm": obj({
            "file": PHOTO_FILE, "recordId": ref("Id"), "projectId": ref("Id"),
            "options": {"type": "string", "description": "RemoveBgOptions as JSON text"},
            "vendorId": ref("VendorId"), "callbackUrl": ref("CallbackUrl"), "wait": WAIT,
        }, ("file", "recordId", "projectId")),
        "RemoveBgRequest": obj({
            "recordId": ref("Id"), "projectId": ref("Id"), "photoUrl": ref("PhotoUrl"),
            "vendorId": ref("VendorId"), "options": nullable(ref("RemoveBgOptions")),
            "callbackUrl": ref("CallbackUrl"), "wait": nullable(WAIT),
        }, ("recordId", "projectId", "photoUrl"), example={
            "recordId": "rec-3", "projectId": "demo", "photoUrl": "https://photos.example.com/people/rec-3.jpg",
            "options": {"bgColor": "#ffffff"}}),
        "BulkRemoveBgRequest": obj({
            "recordIds": {"type": "array", "items": ref("Id"), "uniqueItems": True, **bulk},
            "photoUrls": {"type": "array", "items": ref("PhotoUrl"), **bulk,
                          "description": "as many as recordIds, in the same order"},
            "projectId": ref("Id"), "vendorId": ref("VendorId"), "options": nullable(ref("RemoveBgOptions")),
            "callbackUrl": ref("CallbackUrl"), "wait": nullable(WAIT),
        }, ("recordIds", "photoUrls", "projectId"), example={
            "recordIds": ["rec-4"], "projectId": "demo",
            "photoUrls": ["https://photos.example.com/people/rec-4.jpg"]}),
        "AddImagesRequest": obj({
            "projectId": ref("Id"),
            "priority": nullable({"type": "integer", "minimum": 1, "maximum": 10, "default": 5,
                                  "description": "10 is most urgent"}),
            "operation": nullable(OPERATION),
            "mode": nullable({"type": "string", "enum": list(contracts.CROP_MODES), "default": "square"}),
            "options": nullable({"oneOf": [ref("CropOptions"), ref("RemoveBgOptions")],
                                 "description": "the operation's options: CropOptions or RemoveBgOptions"}),
            "vendorId": ref("VendorId"), "callbackUrl": ref("CallbackUrl"),
            "images": {"type": "array", "minItems": 1, "maxItems": settings.batch_max_images_per_request,
                       "items": obj({"recordId": ref("Id"), "imageUrl": ref("PhotoUrl")},
                                    ("recordId", "imageUrl"))},
        }, ("projectId", "images"), example={
            "projectId": "demo", "priority": 7, "mode": "square",
            "images": [{"recordId": "rec-10", "imageUrl": "https://photos.example.com/people/rec-10.jpg"},
                       {"recordId": "rec-11", "imageUrl": "https://photos.example.com/people/rec-11.jpg"}]}),
        "UploadZipForm": obj({
            "file": {"type": "string", "format": "binary", "description": "the ZIP archive"},
            "projectId": ref("Id"),
            "priority": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
            "operation": OPERATION,
            "mode": {"type": "string", "enum": list(contracts.CROP_MODES), "default": "square"},
            "options": {"type": "string", "description": "the operation's options as JSON text (CropOptions or "
                                                         "RemoveBgOptions)"},
            "vendorId": ref("VendorId"), "callbackUrl": ref("CallbackUrl"),
        }, ("file", "projectId")),
        "DeadLetterFilter": obj({
            "queue": {"oneOf": [ref("QueueName"),
                                {"type": "array", "items": ref("QueueName"), "minItems": 1, "maxItems": 20}],
                      "nullable": True},
            "vendor": nullable(ref("Id")),
            "code": nullable({"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}$", "description": "error code"}),
            "jobIds": nullable({"type": "array", "items": {"type": "string", "pattern": ID_REGEX},
                                "minItems": 1, "maxItems": 1000}),
            "limit": nullable({"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000,
                               "description": "act on at most this many; `more` says whether others match"}),
        }, additionalProperties=False,
            description="Every given part must match; at least one of queue, vendor, code, jobIds. null is "
                        "the same as leaving a field out; an empty value is refused (it must not widen a "
                        "bulk change)."),
        "QueueName": {"type": "string",
                      "enum": [*contracts.ALL_QUEUES, contracts.QUEUE_FACE_DETECTION],
                      "description": "`face-detection` means all ten priority queues"},
    }


def _response_schemas() -> dict[str, Schema]:
    check = obj({"status": {"type": "string", "enum": ["up", "down"]}, "latencyMs": NUMBER, "error": STRING},
                ("status",))
    face_box = nullable(obj({"x": NUMBER, "y": NUMBER, "width": NUMBER, "height": NUMBER}))
    point = obj({"x": NUMBER, "y": NUMBER}, ("x", "y"))
    return {
        "FoundFace": obj({
            "box": obj({"x": NUMBER, "y": NUMBER, "width": NUMBER, "height": NUMBER},
                       ("x", "y", "width", "height")),
            "score": nullable({"type": "number", "minimum": 0, "maximum": 1,
                               "description": "detector confidence; null for haar"}),
            "landmarks": nullable(obj({name: point for name in contracts.LANDMARK_NAMES},
                                      description="eyes (the subject's right eye is on the viewer's left), "
                                                  "nose tip, mouth corners; null for haar")),
        }, ("box", "score", "landmarks"), description="a face found, in photo pixels after EXIF rotation"),
        "FaceCropResult": obj({
            "success": SUCCESS_TRUE, "recordId": STRING, "mode": STRING, "photoUrl": STRING,
            "faceDetected": BOOLEAN, "faceCount": INTEGER, "faceBox": face_box,
            "width": INTEGER, "height": INTEGER,
            "faces": {"type": "array", "items": ref("FoundFace"), "description": "every face, largest first"},
            "rollDegrees": nullable({"type": "number", "description": "the chosen face's eye-line angle in the "
                                                                     "photo (clockwise positive), before "
                                                                     "levelling; null for haar"}),
            "detector": {"type": "string", "enum": list(contracts.FACE_DETECTORS)},
            **SOURCE_SIZE,
            **THUMBNAIL_URLS,
        }, ("success", "faceDetected", "faceCount", "faceBox", "width", "height"),
            description="`result` of a completed face-crop job (a re-run of a completed job returns the "
                        "stored fields only)"),
        "Error": obj({
            "success": {"type": "boolean", "enum": [False]},
            "error": obj({"code": STRING, "message": STRING, "details": {"description": "what went wrong"}},
                         ("code", "message")),
        }, ("success", "error")),
        "QueueCounts": _queue_counts(),
        "JobQueued": obj({
            "success": SUCCESS_TRUE, "jobId": STRING, "recordId": STRING, "message": STRING,
            "estimatedTime": STRING, "estimatedSeconds": NUMBER, "statusUrl": STRING,
        }, ("success", "jobId", "recordId", "message", "estimatedTime", "estimatedSeconds", "statusUrl")),
        "BulkQueued": obj({
            "success": SUCCESS_TRUE, "jobIds": {"type": "array", "items": STRING},
            "recordIds": {"type": "array", "items": STRING}, "count": INTEGER, "message": STRING,
            "estimatedTime": STRING, "estimatedSeconds": NUMBER,
        }, ("success", "jobIds", "recordIds", "count", "message", "estimatedTime")),
        "JobStatus": obj({
            "success": SUCCESS_TRUE, "id": STRING,
            "state": {"type": "string", "enum": ["waiting", "active", "completed", "failed", "delayed", "canceled"]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "data": {"type": "object", "description": "the job's payload"},
            "result": {"type": "object", "nullable": True,
                       "description": "when completed; face-crop jobs: FaceCropResult"},
            "error": obj({"code": STRING, "message": STRING, "permanent": BOOLEAN, "final": BOOLEAN},
                         ("code", "message"), description="when failed, or the last error of a pending retry"),
            "attempts": INTEGER, "maxAttempts": INTEGER,
            "createdAt": nullable(TIMESTAMP), "startedAt": nullable(TIMESTAMP), "finishedAt": nullable(TIMESTAMP),
        }, ("success", "id", "state", "progress", "data", "attempts", "maxAttempts")),
        "Record": obj({
            "recordId": STRING, "projectId": STRING, "status": {"type": "string", "enum": RECORD_STATUSES},
            "jobKind": nullable(STRING), "jobId": nullable(STRING), "sourceUrl": nullable(STRING),
            "outputUrl": nullable(STRING), "faceDetected": nullable(BOOLEAN), "faceCount": nullable(INTEGER),
            "faceBox": face_box, "width": nullable(INTEGER), "height": nullable(INTEGER),
            "faces": nullable({"type": "array", "items": ref("FoundFace"),
                               "description": "every face found, largest first (face crops; null otherwise)"}),
            "rollDegrees": nullable({"type": "number", "description": "the chosen face's eye-line angle in the "
                                                                     "photo; null without landmarks"}),
            **SOURCE_SIZE,
            **THUMBNAIL_URLS,
            "errorCode": nullable(STRING), "errorMessage": nullable(STRING), "attempts": INTEGER,
            "createdAt": nullable(TIMESTAMP), "updatedAt": nullable(TIMESTAMP), "completedAt": nullable(TIMESTAMP),
        }, ("recordId", "projectId", "status")),
        "BatchQueued": obj({
            "success": SUCCESS_TRUE, "batchId": STRING, "status": {"type": "string", "enum": BATCH_STATUSES},
            "operation": OPERATION, "imageCount": nullable(INTEGER), "queued": INTEGER, "message": STRING,
            "statusUrl": STRING,
        }, ("success", "batchId", "status", "imageCount", "queued", "statusUrl")),
        "Batch": obj({
            "batchId": STRING, "projectId": STRING, "status": {"type": "string", "enum": BATCH_STATUSES},
            "priority": INTEGER, "operation": OPERATION, "mode": STRING, "imageCount": INTEGER, "queued": INTEGER,
            "skipped": INTEGER, "canceled": {"type": "integer", "description": "images canceled before they ran"},
            "progress": obj({"processed": INTEGER, "total": INTEGER, "failed": INTEGER,
                             "updatedAt": nullable(TIMESTAMP)}, ("processed", "total", "failed")),
            "progressPercent": {"type": "number", "minimum": 0},
            "createdAt": nullable(TIMESTAMP), "completedAt": nullable(TIMESTAMP), "resultsUrl": STRING,
            "resultsZipUrl": STRING,
            "error": obj({"code": STRING, "message": nullable(STRING)}, ("code",)),
        }, ("batchId", "projectId", "status", "imageCount", "progress", "progressPercent")),
        "Health": obj({
            "success": BOOLEAN, "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
            "redis": check, "db": check,
            "workers": {"type": "object", "additionalProperties": INTEGER,
                        "description": "live `rq worker`s per queue"},
            "queueSizes": {"type": "object", "additionalProperties": INTEGER},
            "bgRemovalQueueSize": nullable(INTEGER), "faceCropQueueSize": nullable(INTEGER),
            "rembgInstances": {"type": "array", "items": obj({
                "url": STRING, "status": {"type": "string", "enum": ["up", "down"]}, "latencyMs": NUMBER,
                "error": STRING, "breaker": STRING}, ("url", "status"))},
            "faceModel": obj({
                "status": {"type": "string", "enum": ["ok", "missing", "bad md5"]}, "file": STRING,
                "detector": STRING, "required": BOOLEAN, "message": STRING,
            }, ("status", "file", "detector", "required"),
                description="the YuNet model file as the API host sees it; workers with FACE_DETECTOR=yunet "
                            "refuse to start without it"),
            "timestamp": STRING,
        }, ("success", "status", "redis", "db", "workers", "queueSizes", "rembgInstances", "timestamp")),
        "DeadLetter": obj({
            "id": STRING, "queue": STRING,
            "kind": {"type": "string", "enum": ["face_crop", "remove_bg", "batch_chunk", "batch_ingest", "other"]},
            "func": nullable(STRING), "vendor": nullable(STRING), "code": STRING, "message": STRING,
            "permanent": nullable(BOOLEAN), "failedAt": nullable(TIMESTAMP), "expiresAt": nullable(TIMESTAMP),
            "attempts": nullable(INTEGER), "requeues": INTEGER, "recordId": nullable(STRING),
            "batchId": nullable(STRING), "firstSeq": INTEGER, "lastSeq": INTEGER,
        }, ("id", "queue", "kind", "code", "message", "requeues")),
        "DeadLetterChange": obj({
            "success": SUCCESS_TRUE, "matched": INTEGER, "requeued": INTEGER, "deleted": INTEGER,
            "jobIds": {"type": "array", "items": STRING},
            "skipped": {"type": "array", "items": obj({
                "id": STRING, "queue": nullable(STRING), "reason": STRING, "message": STRING},
                ("id", "reason", "message"))},
            "more": BOOLEAN,
        }, ("success", "matched", "jobIds", "skipped", "more")),
    }


def components(settings: Settings) -> dict[str, Any]:
    """The document's ``components``: schemas, shared error responses, security schemes."""
    return {
        "schemas": {**_request_schemas(settings), **_response_schemas()},
        "responses": {f"E{status}": _error_response(status) for status in ERRORS},
        "securitySchemes": {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "A vendor's API key (`python -m service.cli vendor create`)."},
            "Bearer": {"type": "http", "scheme": "bearer",
                       "description": "The same API key as `Authorization: Bearer <key>`."},
            "MetricsToken": {"type": "http", "scheme": "bearer",
                             "description": "METRICS_TOKEN, for Prometheus (/metrics only)."},
            "AdminBasic": {"type": "http", "scheme": "basic",
                           "description": "ADMIN_USERNAME / ADMIN_PASSWORD (admin routes only)."},
        },
    }
