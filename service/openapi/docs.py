"""Blueprint: the OpenAPI document (/api/openapi.json) and a Swagger UI page (/api/docs).

Swagger UI comes from the PyPI package swagger-ui-bundle and is served by the app itself: the
page works without any CDN or network access. Neither route needs a key nor is rate limited.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path

from service.errors import NotFound
from service.extensions import backends
from service.openapi.document import DOCS_ASSETS, build_document

bp = Blueprint("docs", __name__)

# The files of Swagger UI the page loads; nothing else of the package is served.
ASSETS = frozenset(DOCS_ASSETS)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>image-queue API</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="stylesheet" href="{assets}/index.css">
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script src="{assets}/swagger-ui-standalone-preset.js"></script>
  <script>
    window.onload = function () {{
      window.ui = SwaggerUIBundle({{
        url: "{spec}", dom_id: "#swagger-ui", deepLinking: true,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
        layout: "StandaloneLayout", validatorUrl: null
      }});
    }};
  </script>
</body>
</html>
"""


def document() -> dict[str, Any]:
    """This app's OpenAPI document, built once per app."""
    cached = current_app.extensions.get("openapi")
    if cached is None:
        cached = current_app.extensions["openapi"] = build_document(current_app, backends().settings)
    return cached


@bp.get("/api/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3 document of every route."""
    return jsonify(document())


@bp.get("/api/docs")
def docs_page() -> Response:
    """Swagger UI over /api/openapi.json."""
    assets = url_for("docs.docs_asset", asset="x").rsplit("/", 1)[0]
    html = PAGE.format(assets=assets, spec=url_for("docs.openapi_json"))
    return Response(html, mimetype="text/html")


@bp.get("/api/docs/<path:asset>")
def docs_asset(asset: str) -> Response:
    """One of Swagger UI's files (ASSETS)."""
    if asset not in ASSETS:
        raise NotFound(f"No documentation asset {asset[:100]!r}.")
    return send_from_directory(str(swagger_ui_path), asset, max_age=24 * 3600)
