"""Blueprint: the web console at /console (docs/console.md), static files only.

The console is the project's own HTML, CSS and JavaScript (service/static/console/), built on
the JavaScript client (clients/js/src/, served as is under /console/client/): the page calls the
public JSON API from the browser with the vendor's key, like any other client. There is no
server-side logic here, no template and no build step; nothing reads a key or a database.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory
from werkzeug.exceptions import NotFound as MissingFile

from service.errors import NotFound

bp = Blueprint("console", __name__, url_prefix="/console")

CONSOLE_DIR = Path(__file__).resolve().parent / "static" / "console"
# The JavaScript client's ES modules, the same files the npm package ships.
CLIENT_DIR = Path(__file__).resolve().parents[1] / "clients" / "js" / "src"
CLIENT_PREFIX = "client/"
MAX_AGE_S = 300  # short: a new release's console is picked up within minutes

_HEADERS = {
    # The console runs only its own scripts and talks only to this origin; images may come from
    # the storage's CDN or a batch's source URLs (https), and blob: URLs of picked photos.
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' https: http: data: blob:; "
                                "style-src 'self'; script-src 'self'; connect-src 'self'; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _send(directory: Path, filename: str) -> Response:
    if not (directory / filename).resolve().is_relative_to(directory.resolve()):
        raise NotFound("No such console file.")
    try:
        response = send_from_directory(directory, filename, max_age=MAX_AGE_S)
    except MissingFile:  # answered in the API's JSON error shape
        raise NotFound("No such console file.") from None
    response.headers.update(_HEADERS)
    return response


@bp.get("/")
def page() -> Response:
    """The console's single page."""
    return _send(CONSOLE_DIR, "index.html")


@bp.get("/<path:filename>")
def asset(filename: str) -> Response:
    """The console's own files, and the JavaScript client's modules under client/."""
    if filename.startswith(CLIENT_PREFIX):
        name = filename.removeprefix(CLIENT_PREFIX)
        if not name.endswith(".js"):  # the modules only (not the .d.ts types)
            raise NotFound("No such console file.")
        return _send(CLIENT_DIR, name)
    return _send(CONSOLE_DIR, filename)
