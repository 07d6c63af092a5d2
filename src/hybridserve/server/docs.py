"""OpenAPI description of the HTTP API, and interactive docs at ``/docs``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from hybridserve import __version__
from hybridserve.routing.schema import PredictRequest, PredictResponse
from hybridserve.server.admin import state_of
from hybridserve.server.errors import json_response

_SWAGGER = """<!doctype html><html><head><title>hybridserve API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"})</script></body></html>"""

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "type": {"type": "string"}},
}


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def openapi(routes: list[str]) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    req = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    res = PredictResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for schema in (req, res):
        defs.update(schema.pop("$defs", {}))
    defs |= {"PredictRequest": req, "PredictResponse": res, "Error": _ERROR}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "hybridserve",
            "version": __version__,
            "description": "Batch, online and streaming predictions behind one API.",
        },
        "paths": {
            "/v1/predict/{route}": {
                "post": {
                    "summary": "Predict for one or many entities of a route",
                    "operationId": "predict",
                    "parameters": [
                        {
                            "name": "route",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": routes},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/PredictRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Every entity answered",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/PredictResponse"}
                                }
                            },
                        },
                        "400": _err("Invalid request (the message names the field)"),
                        "401": _err("Missing or invalid API key"),
                        "403": _err("The key lacks the predict scope"),
                        "404": _err("Unknown route"),
                        "413": _err("Body too large"),
                        "503": _err("No acceptable prediction for some entity; says why per step"),
                    },
                }
            },
            "/v2/health/live": {
                "get": {"operationId": "live", "responses": {"200": {"description": "live"}}}
            },
            "/v2/health/ready": {
                "get": {
                    "operationId": "ready",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
        },
        "components": {"schemas": defs},
    }


async def openapi_json(request: Request) -> Response:
    return json_response(200, openapi(sorted(state_of(request).project.routes)))


async def swagger(_request: Request) -> Response:
    return HTMLResponse(_SWAGGER)


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_json), Route("/docs", swagger)]
