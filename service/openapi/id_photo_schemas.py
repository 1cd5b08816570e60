"""OpenAPI schemas of the ID-photo routes (POST /id-photo-queue, /bulk-id-photo) and their result."""
from __future__ import annotations

from typing import Any

from core import id_photos
from service.openapi.schemas import THUMBNAIL_URLS, WAIT, nullable, obj, ref

Schema = dict[str, Any]
_MM = {"type": "number", "minimum": 0}


def id_photo_schemas(bulk: Schema) -> dict[str, Schema]:
    """IdPhotoSpec, IdPhotoOptions, the requests and the report, by name."""
    custom = obj({"widthMm": _MM, "heightMm": _MM,
                  "dpi": {"type": "integer", "minimum": id_photos.DPI_RANGE[0], "maximum": id_photos.DPI_RANGE[1]},
                  "headMinMm": _MM, "headMaxMm": _MM,
                  "eyeMinMm": {**_MM, "description": "eye line above the bottom edge"},
                  "eyeMaxMm": _MM},
                 ("widthMm", "heightMm", "dpi", "headMinMm", "headMaxMm", "eyeMinMm", "eyeMaxMm"))
    sources = "; ".join(f"`{name}`: {spec.width_mm:g}x{spec.height_mm:g} mm, head {spec.head_min_mm:g}-"
                        f"{spec.head_max_mm:g} mm, eyes {spec.eye_min_mm:g}-{spec.eye_max_mm:g} mm up ({spec.source})"
                        for name, spec in id_photos.SPECS.items())
    single = {"recordId": ref("Id"), "projectId": ref("Id"), "photoUrl": ref("PhotoUrl"), "spec": ref("IdPhotoSpec"),
              "vendorId": ref("VendorId"), "options": nullable(ref("IdPhotoOptions")),
              "callbackUrl": ref("CallbackUrl"), "wait": nullable(WAIT)}
    check = obj({"name": {"type": "string", "enum": ["headHeight", "eyeLine", "roll", "yaw", "oneFace",
                                                      "faceLargeEnough", "sharpness", "highlights", "shadows",
                                                      "background"]},
                 "measured": {"type": "number", "nullable": True, "description": "null: could not be measured "
                                                                                  "(the check fails)"},
                 "unit": {"type": "string"}, "limit": {"type": "string"}, "pass": {"type": "boolean"},
                 "percent": {"type": "number", "nullable": True}}, ("name", "measured", "limit", "pass"))
    return {
        "IdPhotoSpec": {"oneOf": [{"type": "string", "enum": list(id_photos.SPECS)}, custom],
                        "description": "a built-in spec or a custom one. " + sources},
        "IdPhotoOptions": obj({
            "background": {"description": "white (default) or a light neutral grey: 'white', 'lightgrey', "
                                          "'#rrggbb' or [r, g, b]; anything else is a 400",
                           "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]},
            "dpi": {"type": "integer", "minimum": id_photos.DPI_RANGE[0], "maximum": id_photos.DPI_RANGE[1],
                    "default": id_photos.DEFAULT_DPI},
            "format": {"type": "string", "enum": list(id_photos.FORMATS), "default": "jpeg"},
            "maxBytes": {"type": "integer", "minimum": id_photos.MAX_BYTES_RANGE[0],
                         "maximum": id_photos.MAX_BYTES_RANGE[1],
                         "description": "JPEG only: the highest quality that fits is searched"},
        }),
        "IdPhotoRequest": obj(single, ("recordId", "projectId", "photoUrl", "spec"), example={
            "recordId": "rec-5", "projectId": "demo", "spec": "icao",
            "photoUrl": "https://photos.example.com/people/rec-5.jpg", "options": {"maxBytes": 240000}}),
        "IdPhotoForm": obj({**{k: v for k, v in single.items() if k != "photoUrl"},
                            "file": {"type": "string", "format": "binary"},
                            "spec": {"type": "string", "description": "a built-in spec's name, or a custom spec "
                                                                      "as JSON text"},
                            "options": {"type": "string", "description": "IdPhotoOptions as JSON text"}},
                           ("file", "recordId", "projectId", "spec")),
        "BulkIdPhotoRequest": obj({
            "recordIds": {"type": "array", "items": ref("Id"), "uniqueItems": True, **bulk},
            "photoUrls": {"type": "array", "items": ref("PhotoUrl"), **bulk,
                          "description": "as many as recordIds, in the same order"},
            "projectId": ref("Id"), "spec": ref("IdPhotoSpec"), "vendorId": ref("VendorId"),
            "options": nullable(ref("IdPhotoOptions")), "callbackUrl": ref("CallbackUrl"), "wait": nullable(WAIT),
        }, ("recordIds", "photoUrls", "projectId", "spec")),
        "IdPhotoCheck": check,
        "IdPhotoReport": obj({"compliant": {"type": "boolean", "description": "every check measured and passed"},
                              "spec": {"type": "object"}, "crownSource": {"type": "string",
                                                                          "enum": ["mask", "landmarks"]},
                              "checks": {"type": "array", "items": ref("IdPhotoCheck")}},
                             ("compliant", "spec", "checks")),
        "IdPhotoResult": obj({"success": {"type": "boolean"}, "recordId": {"type": "string"},
                              "photoUrl": {"type": "string"}, "format": {"type": "string"},
                              "width": {"type": "integer"}, "height": {"type": "integer"},
                              "dpi": {"type": "integer"}, "faceBox": {"type": "object"},
                              "compliant": {"type": "boolean"}, "report": ref("IdPhotoReport"),
                              **THUMBNAIL_URLS},
                             ("photoUrl", "width", "height", "dpi", "compliant", "report")),
    }
