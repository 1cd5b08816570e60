"""``GET /api/usage``: what the calling vendor has sent, per operation, and its rate limits now.

For a vendor's dashboard or a script that paces itself: counts of single jobs by status and of
batches and their images, per operation (cropFace, removeBg, idPhoto), from the records
database (core/db/usage.py); and for each rate-limit category the limit in force (override or
default), what is left in each window and when it resets (service/limits.py). The request
itself counts against the reads limit, like any status read, and the figures include it.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from core.db.usage import OperationUsage
from service.auth import current_vendor, require_vendor
from service.extensions import backends
from service.limits import vendor_limits_now
from service.listing import project_arg

bp = Blueprint("usage", __name__, url_prefix="/api")
bp.before_request(require_vendor)


def _operation_view(usage: OperationUsage) -> dict[str, Any]:
    batch = usage.batch
    return {
        "single": {**usage.single.by_status, "total": usage.single.total},
        "batch": {"batches": batch.batches, "images": batch.images, "processed": batch.processed,
                  "failed": batch.failed, "skipped": batch.skipped, "canceled": batch.canceled,
                  "pending": batch.pending},
    }


@bp.get("/usage")
def usage() -> Response:
    """The vendor's counts per operation (optionally of one ``projectId``) and its rate limits now."""
    vendor_id = current_vendor()
    project_id = project_arg()
    counts = backends().db.usage(vendor_id, project_id)
    return jsonify({"success": True, "vendorId": vendor_id, "projectId": project_id,
                    "operations": {operation: _operation_view(found) for operation, found in counts.items()},
                    "rateLimitsEnabled": backends().settings.rate_limit_enabled,
                    "rateLimits": vendor_limits_now(vendor_id)})
