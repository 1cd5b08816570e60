"""The OpenAPI 3.0 document of the HTTP API, built from the app's own routes.

``OPERATIONS`` holds one entry per Flask endpoint: its methods' summaries, parameters, bodies
and answers. ``build_document(app)`` walks ``app.url_map`` and documents each route under its
real path, with the limits of the app's own settings (bulk sizes, rembg models). A route with
no entry is still listed, marked ``x-undocumented``; tests/service/test_openapi.py fails on it,
and on any entry whose endpoint no longer exists.
The document is served at ``/api/openapi.json`` and browsed at ``/api/docs`` (service/openapi/docs.py).
"""
from __future__ import annotations

import re
from typing import Any

from flask import Flask

from core import contracts
from core.config import Settings
from service.openapi import schemas
from service.openapi.id_photo_schemas import id_photo_schemas
from service.openapi.schemas import ERRORS, RATE_LIMIT_HEADERS, components, obj, ref
from service.openapi.usage_schemas import BULK_FORMS, bulk_form_schemas, usage_schemas

Operation = dict[str, Any]

Security = list[dict[str, list[str]]]
VENDOR_SECURITY: Security = [{"ApiKey": []}, {"Bearer": []}]
ADMIN_SECURITY: Security = [{"AdminBasic": []}]
PUBLIC: Security = []
# The files of Swagger UI that /api/docs loads (service/openapi/docs.py serves these and nothing else).
DOCS_ASSETS = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
               "favicon-32x32.png", "favicon-16x16.png")
# URL prefixes that belong to mounted tools with their own UI (rq-dashboard), not to the API.
UNDOCUMENTED_PREFIXES = ("/rq",)
UNDOCUMENTED_ENDPOINTS = frozenset({"static"})
_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

TAGS = [
    {"name": "image-queue", "description": "Face crops and background removals, one photo or a bulk list."},
    {"name": "batch", "description": "Batches of images: ZIP uploads and URL lists, by priority."},
    {"name": "health", "description": "Operators' probes, metrics and locally stored output files. The "
                                      "admin's rq-dashboard at /rq (HTML) is not described here."},
    {"name": "admin", "description": "Operators only (HTTP Basic, ADMIN_USERNAME / ADMIN_PASSWORD): dead "
                                     "letters. Switched off (404) while ADMIN_PASSWORD is unset."},
    {"name": "docs", "description": "This document and its browsable page."},
    {"name": "usage", "description": "The calling vendor's counts per operation and its rate limits now."},
]


def camel(name: str) -> str:
    """snake_case -> camelCase (Flask argument names become OpenAPI parameter names)."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: ``/job/<job_id>`` -> ``/job/{jobId}``."""
    return _RULE_ARG.sub(lambda m: "{" + camel(m.group(1)) + "}", rule)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, **_json(schema)}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def _vendor(summary: str, tag: str, responses: dict[str, Any], *, body: str | None = None,
            media_type: str = "application/json", params: list[dict[str, Any]] | None = None,
            description: str = "") -> Operation:
    """An operation that needs a vendor's API key and counts against its rate limits."""
    operation: Operation = {"tags": [tag], "summary": summary, "security": VENDOR_SECURITY}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = params
    statuses = [401, 429, 503]
    if body is not None:  # every queueing POST: a body, and Idempotency-Key (service/idempotency.py)
        operation["requestBody"] = {"required": True, "content": {media_type: {"schema": ref(body)}}}
        operation["parameters"] = [*operation.get("parameters", []), IDEMPOTENCY_KEY]
        statuses = [400, 401, 403, 409, 413, 415, 422, 429, 503]
    answers = {**responses, **_errors(*statuses)}
    for answer in answers.values():
        if "$ref" not in answer:
            answer.setdefault("headers", {}).update(RATE_LIMIT_HEADERS)
    operation["responses"] = dict(sorted(answers.items()))
    return operation


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Optional. A retry with the same key and request answers the original response "
                   "(header `Idempotent-Replayed: true`) instead of queueing again; 409 while the first is "
                   "running, 422 when the key was used for a different request.",
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}


def _admin(summary: str, responses: dict[str, Any], *, body: str | None = None,
           params: list[dict[str, Any]] | None = None, description: str = "") -> Operation:
    operation: Operation = {"tags": ["admin"], "summary": summary, "security": ADMIN_SECURITY}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = params
    statuses = [400, 401, 404, 503]
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(ref(body))}
        statuses = [400, 401, 404, 413, 415, 503]
    operation["responses"] = dict(sorted({**responses, **_errors(*statuses)}.items()))
    return operation


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _list_params(statuses: list[str]) -> list[dict[str, Any]]:
    """The query parameters of the list routes (service/listing.py)."""
    return [_query("projectId", ref("Id"), "only this project"),
            _query("status", {"type": "string", "enum": statuses}, "only this status"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": contracts.LIST_MAX_LIMIT,
                             "default": contracts.LIST_DEFAULT_LIMIT}, "page size"),
            _query("cursor", {"type": "string", "maxLength": 512},
                   "`nextCursor` of the previous page (opaque; keyset on creation time, so rows added "
                   "meanwhile never shift a page)")]


_UPLOAD_NOTE = (" The photo may also be sent itself: a multipart form with the photo in `file` (JPEG, PNG, WebP, "
                "HEIC/HEIF or AVIF, at most FETCH_MAX_BYTES; 413 over it, 415 NOT_AN_IMAGE when its bytes are "
                "no image) and the other fields as form fields. `wait` (0-30 s): 200 with the finished job "
                "when it completes (or fails) in time, else 202.")


def _with_id_photo(parts: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The components plus the ID-photo and usage schemas (id_photo_schemas.py, usage_schemas.py)."""
    bulk = {"minItems": 1, "maxItems": settings.bulk_max_items}
    schemas = {**parts["schemas"], **id_photo_schemas(bulk), **usage_schemas()}
    return {**parts, "schemas": {**schemas, **bulk_form_schemas(schemas)}}


def _with_upload(operation: Operation, form: str) -> Operation:
    """Add the multipart form (the photo as ``file``) and the 200 answer of ``wait`` to a single route."""
    operation["requestBody"]["content"]["multipart/form-data"] = {"schema": ref(form)}
    finished = _ok("Finished within `wait`: the job, as GET /job/<id>, plus jobId and recordId", ref("JobStatus"))
    finished["200"]["headers"] = dict(RATE_LIMIT_HEADERS)
    operation["responses"] = dict(sorted({**operation["responses"], **finished}.items()))
    return operation


_BULK_UPLOAD_NOTE = ("The photos may also be sent themselves: a multipart form with one `files[]` part per photo, "
                     "in the order of `recordIds` (JSON array text, or the field repeated), each with the guards "
                     "of a single upload (413 over FETCH_MAX_BYTES, 415 NOT_AN_IMAGE, the error names `files[i]`). "
                     "`wait` (0-30 s): 200 with every job when all of them finish (or fail) in time, else 202.")


def _bulk(summary: str, request: str) -> Operation:
    """A bulk route: JSON with photoUrls or the photos as ``files[]``, and ``wait``."""
    operation = _vendor(summary, "image-queue", _ok("Queued", ref("BulkQueued"), 202), body=request,
                        description=_BULK_UPLOAD_NOTE)
    operation["requestBody"]["content"]["multipart/form-data"] = {"schema": ref(BULK_FORMS[request])}
    finished = _ok("Every job finished within `wait`, each as GET /job/<id> plus jobId and recordId", obj({
        "success": {"type": "boolean", "enum": [True]}, "count": {"type": "integer"},
        "jobs": {"type": "array", "items": ref("JobStatus")}}, ("success", "count", "jobs")))
    finished["200"]["headers"] = dict(RATE_LIMIT_HEADERS)
    operation["responses"] = dict(sorted({**operation["responses"], **finished}.items()))
    return operation


_DEAD_LETTER_CHANGE = ("Bulk, through the registries a page at a time, at most `limit` per call. `skipped` lists "
                       "dead letters left in place and why (record superseded, source gone, ...).")

OPERATIONS: dict[str, dict[str, Operation]] = {
    "index": {"get": {
        "tags": ["docs"], "summary": "Service name and where to look next", "security": PUBLIC,
        "responses": _ok("Pointers", {"type": "object", "properties": {
            "success": {"type": "boolean"}, "service": {"type": "string"}, "docs": {"type": "string"},
            "health": {"type": "string"}}, "required": ["success", "service"]}),
    }},
    "image_queue.crop_face_queue": {"post": _with_upload(_vendor(
        "Queue one face crop", "image-queue", _ok("Queued", ref("JobQueued"), 202), body="CropFaceRequest",
        description="Writes (or resets) the vendor's record row as `queued`, then enqueues the job. Modes: "
                    "square (300x300), passport (413x531), idcard." + _UPLOAD_NOTE), "CropFaceForm")},
    "image_queue.bulk_crop_face": {"post": _bulk("Queue face crops for a list of records", "BulkCropFaceRequest")},
    "image_queue.remove_bg_queue": {"post": _with_upload(_vendor(
        "Queue one background removal", "image-queue", _ok("Queued", ref("JobQueued"), 202),
        body="RemoveBgRequest", description=_UPLOAD_NOTE.strip()), "RemoveBgForm")},
    "image_queue.bulk_remove_bg": {"post": _bulk("Queue background removals for a list of records",
                                                 "BulkRemoveBgRequest")},
    "image_queue.id_photo_queue": {"post": _with_upload(_vendor(
        "Queue one ID photo", "image-queue", _ok("Queued", ref("JobQueued"), 202), body="IdPhotoRequest",
        description="A passport / ID photo of the portrait in one job: the person cut out (mask from rembg) onto "
                    "a white or light grey background, the head scaled and placed per `spec`, exact pixels and "
                    "dpi, and a compliance report (result `IdPhotoResult`; docs/id-photos.md). Counts against "
                    "the background-removal limit too. Failures: NO_FACE, MULTIPLE_FACES, FACE_TOO_SMALL, "
                    "FACE_CUT_OFF, OUTPUT_TOO_LARGE." + _UPLOAD_NOTE), "IdPhotoForm")},
    "image_queue.bulk_id_photo": {"post": _bulk("Queue ID photos for a list of records", "BulkIdPhotoRequest")},
    "image_queue.job_status": {"get": _vendor(
        "State, progress and result or error of a job", "image-queue",
        {**_ok("The job", ref("JobStatus")), **_errors(404)},
        params=[_path_param("jobId", "the jobId answered when it was queued")])},
    "image_queue.cancel_job": {"delete": _vendor(
        "Cancel a job", "image-queue",
        {**_ok("Canceled (or already canceled: idempotent)", {
            "type": "object", "required": ["success", "id", "state", "previousState"],
            "properties": {"success": {"type": "boolean", "enum": [True]}, "id": {"type": "string"},
                           "state": {"type": "string", "enum": ["canceled"]},
                           "previousState": {"type": "string",
                                             "enum": ["waiting", "delayed", "active", "canceled"]},
                           "message": {"type": "string"}}}), **_errors(404, 409)},
        params=[_path_param("jobId", "the jobId answered when it was queued")],
        description="waiting or delayed: the job never runs (RQ's cancel). active: the worker running it gets "
                    "RQ's stop-job command, kills the work horse and does not retry; the record row is marked "
                    "`canceled` (a job that finished before the command arrived stays completed). completed or "
                    "failed: 409 JOB_NOT_CANCELABLE with `details.state`. Another vendor's job: 404.")},
    "image_queue.list_records": {"get": _vendor(
        "The vendor's records, newest first, a page at a time", "image-queue",
        {**_ok("A page of records", {
            "type": "object", "required": ["success", "records", "nextCursor", "limit"],
            "properties": {"success": {"type": "boolean", "enum": [True]},
                           "records": {"type": "array", "items": ref("Record")},
                           "nextCursor": {"type": "string", "nullable": True,
                                          "description": "pass as `cursor` for the next page; null on the last"},
                           "limit": {"type": "integer"}}}), **_errors(400)},
        params=_list_params([*schemas.RECORD_STATUSES]))},
    "image_queue.record_status": {"get": _vendor(
        "The vendor's record row", "image-queue",
        {**_ok("The record", {"type": "object", "properties": {"success": {"type": "boolean", "enum": [True]},
                                                               "record": ref("Record")},
                              "required": ["success", "record"]}), **_errors(404)},
        params=[_path_param("recordId", "the vendor's recordId")])},
    "image_queue.queue_stats": {"get": _vendor(
        "Job counts of the single-job queues", "image-queue", _ok("Counts", {
            "type": "object", "required": ["success", "backgroundRemoval", "faceCrop", "imageProcessing"],
            "properties": {"success": {"type": "boolean", "enum": [True]}, "backgroundRemoval": ref("QueueCounts"),
                           "faceCrop": ref("QueueCounts"), "imageProcessing": ref("QueueCounts")}}))},
    "batch.upload_zip": {"post": _vendor(
        "Upload a ZIP of images as one batch", "batch", _ok("Accepted; ingestion queued", ref("BatchQueued"), 202),
        body="UploadZipForm", media_type="multipart/form-data",
        description="Streamed to disk, never held in memory; images are extracted entry by entry by the "
                    "batch-ingestion workers. A file that is not a ZIP is refused with 415 NOT_A_ZIP.")},
    "batch.add_images": {"post": _vendor(
        "Queue a list of image URLs as one batch", "batch", _ok("Queued", ref("BatchQueued"), 202),
        body="AddImagesRequest")},
    "batch.batch_status": {"get": _vendor(
        "Progress of a batch", "batch",
        {**_ok("The batch", {"type": "object", "properties": {"success": {"type": "boolean", "enum": [True]},
                                                              "batch": ref("Batch")},
                             "required": ["success", "batch"]}), **_errors(404)},
        params=[_path_param("batchId", "the batchId answered when it was accepted")])},
    "batch.batch_results": {"get": _vendor(
        "Every image's outcome, streamed", "batch", {
            "200": {"description": "One row per entry: seq, recordId, entry, status, outputUrl, faceDetected, "
                                   "faceCount, faceBox, width, height, errorCode, errorMessage, attempts, "
                                   "thumbnailUrl, sourceThumbnailUrl, faces, rollDegrees, sourceWidth, "
                                   "sourceHeight (CSV: faceBox and faces as JSON text)",
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                "text/csv": {"schema": {"type": "string"}}}},
            **_errors(400, 404)},
        params=[_path_param("batchId", "the batch"),
                _query("format", {"type": "string", "enum": ["jsonl", "csv"], "default": "jsonl"},
                       "JSON lines (default) or CSV")])},
    "usage.usage": {"get": _vendor(
        "Counts per operation and the rate limits left now", "usage",
        {**_ok("The vendor's usage", ref("Usage")), **_errors(400)},
        params=[_query("projectId", ref("Id"), "only this project's counts (rate limits are per vendor)")],
        description="Single jobs by record status and batches with their image counters, per operation, from "
                    "the records database; for each rate-limit category the limit in force (`override` set by "
                    "an operator, else `default`), and per window what is left now and when it resets. This "
                    "request counts against `reads` and the figures include it.")},
    "batch.list_batches": {"get": _vendor(
        "The vendor's batches, newest first, a page at a time", "batch",
        {**_ok("A page of batches", {
            "type": "object", "required": ["success", "batches", "nextCursor", "limit"],
            "properties": {"success": {"type": "boolean", "enum": [True]},
                           "batches": {"type": "array", "items": ref("Batch")},
                           "nextCursor": {"type": "string", "nullable": True,
                                          "description": "pass as `cursor` for the next page; null on the last"},
                           "limit": {"type": "integer"}}}), **_errors(400)},
        params=_list_params([*schemas.BATCH_STATUSES]))},
    "batch.batch_cancel": {"post": _vendor(
        "Cancel a batch", "batch",
        {**_ok("Canceled (again: idempotent)", {
            "type": "object", "required": ["success", "batch", "canceledNow"],
            "properties": {"success": {"type": "boolean", "enum": [True]}, "batch": ref("Batch"),
                           "canceledNow": {"type": "integer", "description": "pending images canceled by this call"},
                           "message": {"type": "string"}}}), **_errors(404, 409)},
        params=[_path_param("batchId", "the batch")],
        description="Every image still pending becomes `canceled` in one transaction (its record row too); "
                    "images already finished keep their outcome, so processed + canceled = imageCount. A chunk "
                    "running now stops before its next image. The uploaded ZIP and extracted images are "
                    "removed; the batch's webhook fires with event `batch.canceled`. A finished batch: 409 "
                    "BATCH_NOT_CANCELABLE.")},
    "batch.batch_results_zip": {"get": _vendor(
        "Every finished output and the results listing, as one streamed ZIP", "batch", {
            "200": {"description": "`outputs/<entry path or recordId>.<ext>` for each completed image, then "
                                   "`results.jsonl`, `results.csv` (the listing, with `file`: the output's name "
                                   "in the ZIP) and `batch.json` (status, counts, `complete`). Built while it "
                                   "streams; usable while the batch still runs (what is done so far).",
                    "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
            **_errors(404)},
        params=[_path_param("batchId", "the batch")])},
    "batch.batch_queue_stats": {"get": _vendor(
        "Job counts of the batch queues", "batch", _ok("Counts", {
            "type": "object", "required": ["success", "stats"], "properties": {
                "success": {"type": "boolean", "enum": [True]},
                "stats": {"type": "object", "required": ["faceDetection", "batchIngestion", "timestamp"],
                          "properties": {"faceDetection": ref("QueueCounts"),
                                         "faceDetectionByPriority": {"type": "object",
                                                                     "additionalProperties": ref("QueueCounts")},
                                         "batchIngestion": ref("QueueCounts"),
                                         "timestamp": {"type": "integer", "description": "Unix ms"}}}}}))},
    "health.livez": {"get": {
        "tags": ["health"], "summary": "Liveness: the process answers (touches neither Redis nor the database)",
        "security": PUBLIC,
        "description": "For container and orchestrator probes (Dockerfile HEALTHCHECK, compose). Whether the "
                       "service can work is /api/worker/health.",
        "responses": _ok("alive", {"type": "object", "properties": {
            "success": {"type": "boolean"}, "status": {"type": "string", "enum": ["alive"]}},
            "required": ["success", "status"]}),
    }},
    "health.worker_health": {"get": {
        "tags": ["health"], "summary": "Redis, database, workers and rembg instances, checked live",
        "security": PUBLIC,
        "responses": {**_ok("healthy or degraded", ref("Health")),
                      "503": {"description": "unhealthy: Redis or the database is down", **_json(ref("Health"))}},
    }},
    "health.local_file": {"get": {
        "tags": ["health"], "summary": "An output file kept by local storage (STORAGE_BACKEND=local)",
        "security": PUBLIC,
        "parameters": [_path_param("key", "storage key, as in the result's photoUrl (may contain '/')")],
        "responses": {"200": {"description": "The image",
                              "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                                          "image/png": {"schema": {"type": "string", "format": "binary"}},
                                          "image/webp": {"schema": {"type": "string", "format": "binary"}}}},
                      **_errors(404)},
    }},
    "metrics.metrics": {"get": {
        "tags": ["health"], "summary": "Prometheus metrics (text exposition format)",
        "security": [{"MetricsToken": []}, {"AdminBasic": []}],
        "description": "`Authorization: Bearer <METRICS_TOKEN>` or the admin's Basic credentials; 404 while "
                       "neither METRICS_TOKEN nor ADMIN_PASSWORD is set.",
        "responses": {"200": {"description": "imagequeue_* metrics",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                      **_errors(401, 404, 503)},
    }},
    "admin.list_failed_jobs": {"get": _admin(
        "List dead letters (RQ's failed registries)", {**_ok("A page of dead letters", {
            "type": "object", "required": ["success", "jobs", "count", "hasMore", "failedByQueue"],
            "properties": {"success": {"type": "boolean", "enum": [True]},
                           "jobs": {"type": "array", "items": ref("DeadLetter")},
                           "count": {"type": "integer"}, "limit": {"type": "integer"},
                           "offset": {"type": "integer"}, "hasMore": {"type": "boolean"},
                           "nextOffset": {"type": "integer", "nullable": True},
                           "failedByQueue": {"type": "object", "additionalProperties": {"type": "integer"}}}})},
        params=[_query("queue", ref("QueueName"), "only this queue"),
                _query("vendor", ref("Id"), "only this vendor's jobs"),
                _query("code", {"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}$"}, "only this error code"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
                _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "matches to skip")])},
    "admin.requeue_failed_jobs": {"post": _admin(
        "Requeue dead letters in bulk", _ok("What was requeued and what was left", ref("DeadLetterChange")),
        body="DeadLetterFilter", description=_DEAD_LETTER_CHANGE + " Record rows go back to `queued`; a "
                                                                  "batch chunk's images back to `pending`.")},
    "admin.delete_failed_jobs": {"post": _admin(
        "Delete dead letters in bulk", _ok("What was deleted", ref("DeadLetterChange")),
        body="DeadLetterFilter", description=_DEAD_LETTER_CHANGE + " Records and batch items stay failed.")},
    "docs.openapi_json": {"get": {
        "tags": ["docs"], "summary": "This OpenAPI document", "security": PUBLIC,
        "responses": _ok("OpenAPI 3.0 document", {"type": "object"}),
    }},
    "docs.docs_page": {"get": {
        "tags": ["docs"], "summary": "Browsable API documentation (Swagger UI, served locally)", "security": PUBLIC,
        "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }},
    "docs.docs_asset": {"get": {
        "tags": ["docs"], "summary": "Swagger UI's own files", "security": PUBLIC,
        "parameters": [{**_path_param("asset", "one of Swagger UI's files"),
                        "schema": {"type": "string", "enum": list(DOCS_ASSETS)}}],
        "responses": {"200": {"description": "The file", "content": {
            "text/css": {"schema": {"type": "string"}},
            "text/javascript": {"schema": {"type": "string"}},
            "application/javascript": {"schema": {"type": "string"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}}}}, **_errors(404)},
    }},
    # The web console (service/console.py, docs/console.md): static files; its data comes from the API above.
    "console.page": {"get": {
        "tags": ["docs"], "summary": "The web console (HTML): batches, their results, try a photo", "security": PUBLIC,
        "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }},
    "console.asset": {"get": {
        "tags": ["docs"], "summary": "The console's files, and the JavaScript client's modules under client/",
        "security": PUBLIC,
        "parameters": [_path_param("filename", "console.js, console.css, client/index.js, ...")],
        "responses": {"200": {"description": "The file", "content": {
            "text/javascript": {"schema": {"type": "string"}},
            "application/javascript": {"schema": {"type": "string"}},
            "text/css": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}}}}, **_errors(404)},
    }},
}


def documented(rule_path: str, endpoint: str) -> bool:
    """False for routes the document leaves out on purpose (static files, rq-dashboard's pages)."""
    return endpoint not in UNDOCUMENTED_ENDPOINTS and not rule_path.startswith(UNDOCUMENTED_PREFIXES)


def build_document(app: Flask, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of ``app``: one path per documented route, with its methods."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not documented(rule.rule, rule.endpoint):
            continue
        known = OPERATIONS.get(rule.endpoint, {})
        entry = paths.setdefault(openapi_path(rule.rule), {})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            verb = method.lower()
            if verb in known:
                entry[verb] = {"operationId": f"{rule.endpoint}.{verb}", **known[verb]}
            else:
                entry[verb] = {"operationId": f"{rule.endpoint}.{verb}", "x-undocumented": True,
                               "summary": f"Undocumented route ({rule.endpoint})",
                               "responses": {"default": {"description": "not described yet"}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "image-queue",
            "version": "1",
            "description": (
                "Background removal and face cropping for vendor apps. Every response is JSON with "
                "`success`; errors are `{success: false, error: {code, message, details}}`. Vendor routes "
                "need `X-API-Key: <key>` (or `Authorization: Bearer <key>`) and carry `RateLimit-*` headers. "
                f"Error statuses: {', '.join(str(status) for status in ERRORS)}."),
        },
        "tags": TAGS,
        "paths": paths,
        "components": _with_id_photo(components(settings), settings),
    }
