"""``/openapi.json`` (built by :mod:`hybridserve.server.openapi`) and interactive docs at ``/docs``.

Swagger UI's files ship inside the package (``static/swagger-ui/``, from the npm package
``swagger-ui-dist``) and are served from here, so ``/docs`` works on a machine without
internet access; the page loads nothing from another origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from hybridserve.server import dashboard
from hybridserve.server.errors import json_response
from hybridserve.server.openapi import document
from hybridserve.server.requests import state_of

SWAGGER_UI_VERSION = "5.35.0"
_STATIC = files("hybridserve.server") / "static" / "swagger-ui"
ASSETS = {
    "/docs/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
}

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>hybridserve API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"})</script></body></html>"""


def openapi(request: Request) -> dict[str, Any]:
    """The document for the server that got ``request``."""
    state = state_of(request)
    return document(
        state.project,
        auth=state.auth.enabled,
        models=sorted({m.name for _, _, m in state.models.loaded()}),
        assets=[
            (path, media_type.split(";")[0])
            for path, (_, media_type) in [*ASSETS.items(), *dashboard.ASSETS.items()]
        ],
    )


async def openapi_json(request: Request) -> Response:
    return json_response(200, openapi(request))


async def swagger(_request: Request) -> Response:
    return HTMLResponse(_PAGE)


def _file(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    content = (_STATIC / name).read_bytes()  # read once: ~2 MB, served from memory

    async def serve(_request: Request) -> Response:
        return Response(
            content, media_type=media_type, headers={"cache-control": "public, max-age=86400"}
        )

    return serve


def routes() -> list[Route]:
    return [
        Route("/openapi.json", openapi_json),
        Route("/docs", swagger),
        *(Route(path, _file(name, media)) for path, (name, media) in ASSETS.items()),
    ]
