"""Query arguments shared by the list routes (GET /api/batch, GET /api/image-queue/records) and usage."""
from __future__ import annotations

from flask import request

from core import contracts
from core.contracts import InvalidField, validate_id
from service.errors import ValidationError


def project_arg() -> str | None:
    """The request's optional ``projectId`` query argument, checked (present but empty is a 400:
    an empty id matches nothing)."""
    project_id = request.args.get("projectId")
    if project_id is not None:
        try:
            validate_id(project_id, "projectId")
        except InvalidField as exc:
            raise ValidationError(exc.field, exc.message) from None
    return project_id


def list_args(statuses: tuple[str, ...]) -> tuple[str | None, str | None, str | None, int]:
    """(projectId, status, cursor, limit) of the request, each checked (400 names the argument)."""
    args = request.args
    project_id = project_arg()
    status = args.get("status")
    if status is not None and status not in statuses:
        raise ValidationError("status", f"must be one of {', '.join(statuses)}")
    raw = args.get("limit")
    limit = contracts.LIST_DEFAULT_LIMIT
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= contracts.LIST_MAX_LIMIT:
            raise ValidationError("limit", f"must be a whole number from 1 to {contracts.LIST_MAX_LIMIT}")
        limit = int(raw)
    cursor = args.get("cursor") or None  # empty: the first page
    if cursor is not None and len(cursor) > 512:
        raise ValidationError("cursor", "is not a cursor from a previous page (pass nextCursor back unchanged)")
    return project_id, status, cursor, limit
