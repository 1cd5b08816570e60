"""Blueprint /api/admin/*: dead letters (RQ's failed registries) for operators.

HTTP Basic with ADMIN_USERNAME / ADMIN_PASSWORD (service/admin/auth.py); 404 while no password
is set. The logic is ops/dead_letters.py, shared with ``python -m service.cli dead-letters``.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from core.contracts import InvalidField
from ops.dead_letters import MAX_LIST_LIMIT, DeadLetters, Filter, Outcome
from service.admin.auth import require_admin
from service.errors import ValidationError
from service.extensions import backends
from service.validation import json_body

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/api/admin")
bp.before_request(require_admin)

BODY_FIELDS = ("queue", "vendor", "code", "jobIds", "limit")
DEFAULT_CHANGE_LIMIT = 1000
MAX_CHANGE_LIMIT = 10_000


def _dead_letters() -> DeadLetters:
    b = backends()
    return DeadLetters(b.redis, b.db, b.settings)


def _int(value: Any, name: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationError(name, f"must be a whole number from {lo} to {hi}")
    return value


def _filter(**raw: Any) -> Filter:
    try:
        return Filter.parse(**raw)
    except InvalidField as exc:
        raise ValidationError(exc.field, exc.message) from None


@bp.get("/failed-jobs")
def list_failed_jobs() -> Response:
    """A page of dead letters matching ?queue=&vendor=&code=, with counts per queue."""
    args = request.args
    flt = _filter(queue=args.getlist("queue") or None, vendor=args.get("vendor"), code=args.get("code"))
    limit = _int(args.get("limit"), "limit", 50, 1, MAX_LIST_LIMIT)
    offset = _int(args.get("offset"), "offset", 0, 0, 10**9)
    dead = _dead_letters()
    jobs, more = dead.list(flt, limit=limit, offset=offset)
    return jsonify({"success": True, "jobs": jobs, "count": len(jobs), "limit": limit, "offset": offset,
                    "hasMore": more, "nextOffset": offset + len(jobs) if more else None,
                    "failedByQueue": dead.counts()})


def _change(action: str) -> Response:
    body = json_body()
    unknown = sorted(set(body) - set(BODY_FIELDS))
    if unknown:  # a mistyped filter must not widen a bulk change
        raise ValidationError(unknown[0][:64], f"is not a filter field ({', '.join(BODY_FIELDS)})")
    flt = _filter(queue=body.get("queue"), vendor=body.get("vendor"), code=body.get("code"),
                  job_ids=body.get("jobIds"))
    limit = _int(body.get("limit"), "limit", DEFAULT_CHANGE_LIMIT, 1, MAX_CHANGE_LIMIT)
    dead = _dead_letters()
    try:
        outcome: Outcome = dead.requeue(flt, limit=limit) if action == "requeued" else dead.delete(flt, limit=limit)
    except InvalidField as exc:
        raise ValidationError(exc.field, exc.message) from None
    admin = request.authorization.username if request.authorization else None
    log.info("admin=%s %s %d dead letter(s), skipped %d (filter %s)", admin, action,
             len(outcome.done), len(outcome.skipped), flt)
    return jsonify({"success": True, "matched": outcome.matched, action: len(outcome.done),
                    "jobIds": outcome.done, "skipped": outcome.skipped, "more": outcome.more})


@bp.post("/failed-jobs/requeue")
def requeue_failed_jobs() -> Response:
    """Requeue the dead letters matching a JSON filter {queue?, vendor?, code?, jobIds?, limit?}."""
    return _change("requeued")


@bp.post("/failed-jobs/delete")
def delete_failed_jobs() -> Response:
    """Delete the dead letters matching a JSON filter {queue?, vendor?, code?, jobIds?, limit?}."""
    return _change("deleted")
