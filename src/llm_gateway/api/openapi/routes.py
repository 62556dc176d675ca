"""GET /openapi.json (the document, encoded once) and /docs (Swagger UI over it).

Swagger UI's files come from the installed ``swagger-ui-bundle-v2`` package
(a runtime dependency), never a CDN: the page and its few assets are served
from the gateway itself, at relative URLs, so they work behind a path prefix.
All of these paths are public (``PUBLIC_PATHS``): the document describes the
API, holds no data, and clients and tools fetch it before they have a key; the
page asks for a key (Authorize) only to try requests out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from llm_gateway.api.openapi.operation import Operation

ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
"""The files of the Swagger UI package the page loads, with their media types."""
INIT = "/docs/assets/init.js"
PUBLIC_PATHS = frozenset({"/openapi.json", "/docs", INIT, *(f"/docs/assets/{n}" for n in ASSETS)})
PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>llm-gateway API</title>
  <link rel="stylesheet" href="docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/assets/swagger-ui-bundle.js"></script>
  <script src="docs/assets/init.js"></script>
</body>
</html>
"""
INIT_JS = b"""window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  persistAuthorization: false,
});
"""
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:",
    "x-frame-options": "DENY",
}

_TAGS = ("Operations",)
openapi_operations = (
    Operation("GET", "/openapi.json", "This document", _TAGS),
    Operation("GET", "/docs", "This document in Swagger UI", _TAGS, produces="text/html"),
    Operation("GET", INIT, "The page's script", _TAGS, produces="text/javascript"),
    *(Operation("GET", f"/docs/assets/{name}", f"The page's {name} (Swagger UI)", _TAGS,
                produces=media) for name, media in ASSETS.items()),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""


def routes(build: Callable[[], dict[str, Any]]) -> list[BaseRoute]:
    """The routes serving the document ``build()`` makes: made and encoded on the first
    request, once (it takes ~20 ms, which start-up need not pay)."""
    from swagger_ui_bundle import swagger_ui_path  # a path in the installed package

    encoded: list[bytes] = []
    folder = Path(str(swagger_ui_path))

    async def openapi_json(request: Request) -> Response:
        if not encoded:
            encoded.append(orjson.dumps(build()))
        return Response(encoded[0], media_type="application/json")

    async def docs(request: Request) -> Response:
        return Response(PAGE, media_type="text/html", headers=PAGE_HEADERS)

    async def init(request: Request) -> Response:
        return Response(INIT_JS, media_type="text/javascript")

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route(INIT, init, methods=["GET"]),
        *(_asset(folder / name, media) for name, media in ASSETS.items()),
    ]


def _asset(file: Path, media: str) -> Route:
    """GET /docs/assets/<file's name>: the file, from the installed package."""

    async def asset(request: Request) -> Response:
        return FileResponse(file, media_type=media, headers={"cache-control": "max-age=86400"})

    return Route(f"/docs/assets/{file.name}", asset, methods=["GET"])
