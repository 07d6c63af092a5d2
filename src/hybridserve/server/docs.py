"""OpenAPI description of the HTTP API, and interactive docs at ``/docs``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from hybridserve import __version__
from hybridserve.routing.schema import PredictRequest, PredictResponse
from hybridserve.server.errors import json_response
from hybridserve.server.requests import state_of

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


_META_PROPS: dict[str, Any] = {
    "name": {"type": "string"},
    "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}},
    "parameters": {"type": "object"},
}
_TENSOR_META = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": _META_PROPS,
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        **_META_PROPS,
        "data": {"description": "Row-major values, flat or nested (absent when binary)"},
    },
}
_V2_SCHEMAS: dict[str, Any] = {
    "V2Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "V2ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _TENSOR_META},
            "outputs": {"type": "array", "items": _TENSOR_META},
        },
    },
    "V2InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {
                    "timeout": {"type": "number", "description": "Microseconds, as in Triton"},
                    "binary_data_output": {"type": "boolean"},
                },
            },
            "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "enum": ["score", "probabilities", "label"]},
                        "parameters": {"type": "object"},
                    },
                },
            },
        },
    },
    "V2InferenceResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": _TENSOR},
        },
    },
}


def _json_body(schema: str, description: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _v2_paths() -> dict[str, Any]:
    """The Open Inference Protocol (KServe V2) endpoints of :mod:`hybridserve.server.v2`."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    not_found = _json_body("V2Error", "Model or version not loaded")

    def health(description: str, *keys: str) -> dict[str, Any]:  # KServe's client reads these
        props: dict[str, Any] = {k: {"type": "string" if k == "name" else "boolean"} for k in keys}
        schema = {"type": "object", "properties": props, "required": list(keys)}
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "Server metadata",
                "operationId": "v2_server_metadata",
                "responses": {"200": _json_body("V2ServerMetadata", "Server metadata")},
            }
        },
        "/v2/health/live": {
            "get": {"operationId": "live", "responses": {"200": health("live", "live")}}
        },
        "/v2/health/ready": {
            "get": {
                "operationId": "ready",
                "responses": {
                    "200": health("ready", "ready"),
                    "503": health("not ready", "ready"),
                },
            }
        },
    }
    for prefix, params, tag in [
        ("/v2/models/{name}", [name], ""),
        ("/v2/models/{name}/versions/{version}", [name, version], "_version"),
    ]:
        paths[f"{prefix}/ready"] = {
            "get": {
                "summary": "Whether the model (version) is ready: the status code is the answer",
                "operationId": f"v2_model_ready{tag}",
                "parameters": params,
                "responses": {
                    "200": health("ready", "name", "ready"),
                    "503": health("not ready", "name", "ready"),
                    "404": not_found,
                },
            }
        }
        paths[prefix] = {
            "get": {
                "summary": "Model metadata",
                "operationId": f"v2_model_metadata{tag}",
                "parameters": params,
                "responses": {"200": _json_body("V2ModelMetadata", "Metadata"), "404": not_found},
            }
        }
        paths[f"{prefix}/infer"] = {
            "post": {
                "summary": "Score rows given as one [-1, n_features] tensor or one per feature",
                "operationId": f"v2_infer{tag}",
                "parameters": params,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/V2InferenceRequest"}
                        }
                    },
                },
                "responses": {
                    "200": _json_body("V2InferenceResponse", "Outputs"),
                    "400": _json_body("V2Error", "Invalid request (the message says why)"),
                    "401": _json_body("V2Error", "Missing or invalid API key"),
                    "403": _json_body("V2Error", "The key lacks the predict scope"),
                    "404": not_found,
                    "413": _json_body("V2Error", "Body too large"),
                    "504": _json_body("V2Error", "No answer within the request's timeout"),
                },
            }
        }
    return paths


def openapi(routes: list[str]) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    req = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    res = PredictResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for schema in (req, res):
        defs.update(schema.pop("$defs", {}))
    defs |= {"PredictRequest": req, "PredictResponse": res, "Error": _ERROR, **_V2_SCHEMAS}
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
            **_v2_paths(),
        },
        "components": {"schemas": defs},
    }


async def openapi_json(request: Request) -> Response:
    return json_response(200, openapi(sorted(state_of(request).project.routes)))


async def swagger(_request: Request) -> Response:
    return HTMLResponse(_SWAGGER)


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_json), Route("/docs", swagger)]
