"""OpenAPI schema of GET /api/usage (service/usage.py): counts per operation and rate limits now."""
from __future__ import annotations

from typing import Any

from core import contracts
from service.limits import VENDOR_CATEGORIES
from service.openapi.schemas import obj

Schema = dict[str, Any]
_COUNT = {"type": "integer", "minimum": 0}


def usage_schemas() -> dict[str, Schema]:
    """Usage, by name."""
    single = obj({**{status: _COUNT for status in contracts.RECORD_STATUSES}, "total": _COUNT},
                 (*contracts.RECORD_STATUSES, "total"), description="single jobs by record status")
    batch_fields = ("batches", "images", "processed", "failed", "skipped", "canceled", "pending")
    batch = obj(dict.fromkeys(batch_fields, _COUNT), batch_fields,
                description="batches of this operation and their images (pending: not yet finished)")
    operation = obj({"single": single, "batch": batch}, ("single", "batch"))
    window = obj({"limit": _COUNT, "per": {"type": "string", "example": "15 minutes"}, "remaining": _COUNT,
                  "resetsInSeconds": _COUNT}, ("limit", "per", "remaining", "resetsInSeconds"))
    limit = obj({"category": {"type": "string", "enum": list(VENDOR_CATEGORIES)},
                 "limit": {"type": "string", "example": "100/15 minutes"},
                 "source": {"type": "string", "enum": ["default", "override"]},
                 "windows": {"type": "array", "items": window}},
                ("category", "limit", "source", "windows"))
    return {"Usage": obj({
        "success": {"type": "boolean", "enum": [True]},
        "vendorId": {"type": "string"},
        "projectId": {"type": "string", "nullable": True},
        "operations": obj({name: operation for name in contracts.BATCH_OPERATIONS}, contracts.BATCH_OPERATIONS),
        "rateLimitsEnabled": {"type": "boolean", "description": "false: RATE_LIMIT_ENABLED is off, nothing is "
                                                                  "limited and rateLimits is empty"},
        "rateLimits": {"type": "array", "items": limit},
    }, ("success", "vendorId", "projectId", "operations", "rateLimitsEnabled", "rateLimits"))}


# Bulk JSON request -> its multipart form (photos as files[] instead of photoUrls).
BULK_FORMS = {"BulkCropFaceRequest": "BulkCropFaceForm", "BulkRemoveBgRequest": "BulkRemoveBgForm",
              "BulkIdPhotoRequest": "BulkIdPhotoForm"}
_AS_TEXT = {"options": "as JSON text", "spec": "a built-in spec's name, or a custom spec as JSON text"}


def bulk_form_schemas(schemas: dict[str, Schema]) -> dict[str, Schema]:
    """The multipart forms of the bulk routes, derived from their JSON requests (service/direct_upload.py):
    the photos as ``files[]`` parts in the order of ``recordIds`` (JSON array text, or the field repeated)."""
    forms = {}
    for request_name, form_name in BULK_FORMS.items():
        request = schemas[request_name]
        bulk = {key: request["properties"]["recordIds"][key] for key in ("minItems", "maxItems")}
        properties = {name: prop for name, prop in request["properties"].items() if name != "photoUrls"}
        properties["recordIds"] = {"type": "string", "description": "the records as a JSON array in text "
                                                                    "(or the field repeated, one id each)"}
        for name, words in _AS_TEXT.items():
            if name in properties:
                properties[name] = {"type": "string", "description": words}
        properties["files[]"] = {"type": "array", "items": {"type": "string", "format": "binary"}, **bulk,
                                 "description": "one photo per recordId, in the same order (JPEG, PNG, WebP, "
                                                "HEIC/HEIF or AVIF; each at most FETCH_MAX_BYTES)"}
        required = [name for name in request["required"] if name != "photoUrls"] + ["files[]"]
        forms[form_name] = obj(properties, tuple(required))
    return forms
