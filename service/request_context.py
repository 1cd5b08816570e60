"""Request ids: every answer carries ``X-Request-ID`` and every log line of the request names it.

A caller's (or proxy's) ``X-Request-ID`` of up to 128 safe characters is kept, so one id can
follow a request through a load balancer; otherwise the app makes one. The id and, once the
API key is resolved, the vendor are on ``flask.g``, where core/logs.py's filter reads them.
"""
from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _assign() -> None:
    given = request.headers.get(HEADER, "")
    g.request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex


def _echo(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[HEADER] = request_id
    return response


def init_app(app: Flask) -> None:
    """Register the hooks; call before anything else registers before_request hooks."""
    app.before_request(_assign)
    app.after_request(_echo)
