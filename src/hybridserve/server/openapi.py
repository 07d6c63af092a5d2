"""The OpenAPI 3.1 document of a serving process: every endpoint, its bodies, its statuses.

The document is built for one project and served at ``/openapi.json``: a route's path lists
the request features it takes, a stream's path the fields of its events, and the security
requirements and 401/403 answers appear only when auth is on. So what the document allows is
what that server accepts, and a fuzzer (``tests/server/test_openapi_fuzz.py``) holds the two
to it. Bodies the server validates with pydantic models (``routing/schema.py``) take their
JSON Schema from those models, so the rule and its description are one piece of code.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from pydantic import BaseModel

from hybridserve import __version__
from hybridserve.config import Project, StreamConfig
from hybridserve.registry.refs import NAME_PATTERN
from hybridserve.routing.schema import (
    FeedbackRequest,
    FeedbackResponse,
    MoveResponse,
    PredictRequest,
    PredictResponse,
    PredictShed,
    PredictUnavailable,
    PromoteRequest,
    ResolveRequest,
    ReviewCaseOut,
    ReviewCases,
    RollbackRequest,
)
from hybridserve.units import DURATION_PATTERN

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
_REF = "#/components/schemas/{model}"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong (names the field)"},
        "type": {"type": "string", "description": "The error's class, e.g. InvalidInput"},
        "details": {"type": "object"},
        "request_id": {"type": "string"},
    },
}
_V2_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


_TAGS = [
    ("/v1/predict/", "predict"),
    ("/v1/events/", "events"),
    ("/v1/feedback/", "feedback"),
    ("/v1/streams/", "events"),
    ("/v1/admin/", "admin"),
    ("/v2", "v2"),
    ("/docs", "docs"),
    ("/dashboard", "dashboard"),
    ("/v1/dashboard/", "dashboard"),
]
TAGS = [
    {"name": "predict", "description": "The hybrid API: stored, streamed or computed predictions"},
    {"name": "events", "description": "Ingest: append events to a stream"},
    {"name": "feedback", "description": "Ingest: true outcomes of a route's answers"},
    {"name": "admin", "description": "Routes, models, alias moves"},
    {"name": "v2", "description": "The Open Inference Protocol (KServe V2)"},
    {"name": "operations", "description": "Metrics and this document"},
    {"name": "docs", "description": "This page and its files"},
    {"name": "dashboard", "description": "The live operations page and its figures"},
]


def _tag(path: str) -> str:
    return next((tag for prefix, tag in _TAGS if path.startswith(prefix)), "operations")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any] | str, description: str) -> dict[str, Any]:
    body = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {JSON: {"schema": body}}}


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return _json(schema, description)


def _streamed(response: dict[str, Any], how: str) -> dict[str, Any]:
    """``response`` that can also come as NDJSON lines or server-sent events."""
    text = {"schema": {"type": "string"}}
    content = {**response["content"], "application/x-ndjson": text, "text/event-stream": text}
    return {"description": f"{response['description']}. {how}", "content": content}


class _Doc:
    """Collects component schemas and operations while the document is built."""

    def __init__(self, auth: bool) -> None:
        self.auth = auth
        self.schemas: dict[str, Any] = {"Error": _ERROR, "V2Error": _V2_ERROR}
        self.paths: dict[str, dict[str, Any]] = {}

    def model(self, model: type[BaseModel]) -> dict[str, str]:
        """A ``$ref`` to ``model``'s JSON Schema (added to the components once)."""
        if model.__name__ not in self.schemas:
            schema = model.model_json_schema(ref_template=_REF)
            self.schemas.update(schema.pop("$defs", {}))
            self.schemas[model.__name__] = schema
        return _ref(model.__name__)

    def add(
        self,
        method: str,
        path: str,
        operation_id: str,
        summary: str,
        responses: dict[str, Any],
        *,
        scope: str | None = None,
        body: dict[str, Any] | None = None,
        body_required: bool = True,
        parameters: list[dict[str, Any]] | None = None,
        error: str = "Error",
    ) -> None:
        op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [_tag(path)]}
        if parameters:
            op["parameters"] = parameters
        if body is not None:
            op["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
            responses = {
                **responses,
                "408": _error("The body did not arrive within server.body_timeout", error),
            }
        if scope is not None and self.auth:
            op["security"] = [{"bearer": []}, {"apiKey": []}]
            responses = {
                **responses,
                "401": _error("Missing or invalid API key", error),
                "403": _error(f"The key lacks the {scope!r} scope", error),
            }
        op["responses"] = dict(sorted(responses.items()))
        self.paths.setdefault(path, {})[method] = op


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


# -- the hybrid API ------------------------------------------------------------------------


_REQUEST_FEATURE: dict[str, dict[str, Any]] = {
    # What scoring.value_problem accepts for a request feature of each dtype (null is refused).
    "float": {"type": ["number", "boolean"]},
    "int": {"type": ["integer", "boolean"]},
    "bool": {"anyOf": [{"type": "boolean"}, {"enum": [0, 1]}]},
    "str": {"type": "string"},
}


def _predict_request(doc: _Doc, project: Project, route: str) -> dict[str, Any]:
    """:class:`PredictRequest`'s schema narrowed to one route: its request features, and at
    most ``server.max_entities`` entities (what the router checks beyond the model)."""
    doc.model(PredictRequest)
    schema: dict[str, Any] = copy.deepcopy(doc.schemas["PredictRequest"])
    declared = project.routes[route].request_features
    features = {
        "type": "object",
        "properties": {name: _REQUEST_FEATURE[dtype] for name, dtype in declared.items()},
        "additionalProperties": False,
        "description": "Request-time features by name: the route's request_features",
    }
    item = copy.deepcopy(doc.schemas["EntityItem"])
    item["properties"]["features"] = features
    entities = schema["properties"]["entities"]
    entities["items"]["anyOf"] = [
        item if i == _ref("EntityItem") else i for i in entities["items"]["anyOf"]
    ]
    limit = project.server.max_entities
    entities["maxItems"] = limit
    # ``entity`` counts against the same limit
    schema["if"] = {"required": ["entity"], "properties": {"entity": {"not": {"type": "null"}}}}
    schema["then"] = {"properties": {"entities": {"maxItems": limit - 1}}}
    schema["properties"]["features"] = features
    return schema


def _hybrid(doc: _Doc, project: Project) -> None:
    for route in sorted(project.routes):
        doc.add(
            "post",
            f"/v1/predict/{route}",
            f"predict_{route}",
            f"Predict route {route!r} for one or many entities",
            {
                "200": _streamed(
                    _json(doc.model(PredictResponse), "Every entity answered"),
                    "With Accept: application/x-ndjson, one answer per line as each step "
                    "gives it, then a summary line; text/event-stream: the same as events",
                ),
                "400": _error("Invalid request (the message names the field)"),
                "413": _error(f"Body over server.max_body_size ({project.server.max_body_size} B)"),
                "503": _json(
                    {"oneOf": [doc.model(PredictUnavailable), doc.model(PredictShed)]},
                    "No acceptable prediction for some entity (says why per step), or the "
                    "request was shed unread at the door (Overloaded)",
                ),
            },
            scope="predict",
            body=_predict_request(doc, project, route),
        )
    for route in sorted(project.routes):
        doc.add(
            "post",
            f"/v1/feedback/{route}",
            f"post_feedback_{route}",
            f"True outcomes of route {route!r}'s answers (idempotent by id)",
            {
                "202": _json(doc.model(FeedbackResponse), "Kept; duplicates ignored"),
                "400": _error("Invalid feedback (the message names the item and field)"),
                "413": _error(f"Body over server.max_body_size ({project.server.max_body_size} B)"),
                "503": _error("The prediction log's store did not answer"),
            },
            scope="ingest",
            body=doc.model(FeedbackRequest),
        )
    for name in sorted(project.streams):
        cfg = project.streams[name]
        event = _event_schema(cfg)
        doc.schemas[f"Event.{name}"] = event
        doc.add(
            "post",
            f"/v1/events/{name}",
            f"post_events_{name}",
            f"Append events to stream {name!r} (all or none)",
            {
                "202": _json(
                    {
                        "type": "object",
                        "required": ["stream", "accepted", "ids"],
                        "properties": {
                            "stream": {"type": "string"},
                            "accepted": {"type": "integer"},
                            "ids": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "Appended; the consumer does the rest",
                ),
                "400": _error("An event does not match the stream's fields (names them)"),
                "413": _error(
                    "Body over server.max_body_size, an event over max_event_size or "
                    "a string field over max_field_size (bytes)"
                ),
                "503": _error("The stream's source did not answer"),
                **(
                    {"409": _error("A memory stream: no consumer in the server would read it")}
                    if cfg.source.kind == "memory"
                    else {}
                ),
            },
            scope="ingest",
            body={
                "anyOf": [
                    _ref(f"Event.{name}"),
                    {
                        "type": "array",
                        "items": _ref(f"Event.{name}"),
                        "minItems": 1,
                        "maxItems": 10_000,
                    },
                ]
            },
        )
        doc.add(
            "get",
            f"/v1/streams/{name}/predictions",
            f"tail_predictions_{name}",
            f"The outputs of stream {name!r} as they are written (server-sent events)",
            {
                "200": {
                    "description": "One event per output, its id the output's position; "
                    "reconnect with Last-Event-ID to resume after it",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error("Last-Event-ID is not a position of this stream"),
                "409": _error("This stream's outputs cannot be tailed over HTTP (read the broker)"),
                "503": _error("The stream's output store did not answer"),
            },
            scope="predict",
        )


_FIELD_KINDS: dict[str, dict[str, Any]] = {
    "float": {"type": "number"},
    "int": {"type": "integer"},
    "str": {"type": "string"},
    "bool": {"type": "boolean"},
}


def _event_schema(cfg: StreamConfig) -> dict[str, Any]:
    """One event of ``cfg`` as :func:`hybridserve.streaming.events.validate` reads it."""
    # The future bound moves with the clock: stated as of this document, so an event it
    # allows stays allowed (time only moves on).
    at = time.time()
    latest, earliest = at + cfg.max_future, at - cfg.past_bound
    props: dict[str, Any] = {}
    for name, kind in cfg.fields.items():
        if kind == "timestamp":
            value: dict[str, Any] = {
                "anyOf": [
                    {"type": "number", "minimum": earliest, "maximum": latest},
                    {"type": "string", "format": "date-time"},
                ],
                "description": "Epoch seconds or an RFC 3339 time",
            }
        elif kind == "str":
            value = {"type": "string", "maxLength": cfg.max_field_size}
        else:
            value = dict(_FIELD_KINDS[kind])
        if name == cfg.time_field:
            value["description"] = (
                f"The event time: at most {cfg.max_future:g}s ahead of the server's clock and "
                f"{cfg.past_bound:g}s behind it (max_future, max_past)"
            )
        if name == cfg.entity_field:
            value = {**value, "minLength": 1} if kind == "str" else {"not": {}}
        required = name in (cfg.entity_field, cfg.id_field, cfg.time_field)
        props[name] = value if required else {"anyOf": [value, {"type": "null"}]}
    return {
        "type": "object",
        "required": sorted({cfg.entity_field, cfg.id_field, cfg.time_field}),
        "properties": props,
        "description": "Undeclared fields are ignored; declared ones may be null or absent",
    }


# -- admin and operations ------------------------------------------------------------------


def _admin(doc: _Doc) -> None:
    name = _path_param("name", {"type": "string", "pattern": NAME_PATTERN})
    doc.add(
        "get",
        "/v1/admin/routes",
        "admin_routes",
        "Routes, the models they serve and the breakers' states",
        {
            "200": _json(
                {
                    "type": "object",
                    "required": ["routes", "breakers"],
                    "properties": {
                        "routes": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "entity": {"type": "string"},
                                    "max_staleness_s": {"type": "number"},
                                    "latency_budget_ms": {"type": "number"},
                                    "models": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                    "fallback": {"type": "array"},
                                },
                            },
                        },
                        "breakers": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                    },
                },
                "Routes",
            )
        },
        scope="admin",
    )
    doc.add(
        "get",
        "/v1/admin/models",
        "admin_models",
        "Registered models, their versions and aliases",
        {
            "200": _json(
                {
                    "type": "object",
                    "required": ["models"],
                    "properties": {
                        "models": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "versions": {"type": "array", "items": {"type": "integer"}},
                                    "aliases": {
                                        "type": "object",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                },
                            },
                        }
                    },
                },
                "Models",
            )
        },
        scope="admin",
    )
    moved = _json(doc.model(MoveResponse), "The alias moved; loaded models refreshed")
    unknown = _error("Unknown model or version")
    bad = _error("Invalid body or model name (the message names the field)")
    doc.add(
        "post",
        "/v1/admin/models/{name}/promote",
        "admin_promote",
        "Point an alias (default production) at a version",
        {"200": moved, "400": bad, "404": unknown},
        scope="admin",
        body=doc.model(PromoteRequest),
        parameters=[name],
    )
    doc.add(
        "post",
        "/v1/admin/models/{name}/rollback",
        "admin_rollback",
        "Move an alias back to where it pointed before its last move",
        {
            "200": moved,
            "400": bad,
            "404": unknown,
            "409": _error("The alias has no earlier version to roll back to"),
        },
        scope="admin",
        body=doc.model(RollbackRequest),
        body_required=False,
        parameters=[name],
    )
    doc.add(
        "post",
        "/v1/admin/reload",
        "admin_reload",
        "Reload every model whose alias moved",
        {
            "200": _json(
                {
                    "type": "object",
                    "required": ["changes"],
                    "properties": {"changes": {"type": "array", "items": {"type": "string"}}},
                },
                "What moved, a line per change",
            )
        },
        scope="admin",
    )
    _review(doc)
    text = {"text/plain": {"schema": {"type": "string"}}}
    doc.add(
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics",
        {"200": {"description": "Prometheus text format", "content": text}},
    )
    doc.add(
        "get",
        "/openapi.json",
        "openapi",
        "This document",
        {"200": _json({"type": "object"}, "OpenAPI 3.1")},
    )


_COMPONENT = {
    "type": "object",
    "required": ["name", "kind", "status", "reasons"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string"},
        "status": {"enum": ["healthy", "degraded", "critical"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "details": {"type": "object"},
    },
}
_HEALTH = {
    "type": "object",
    "required": ["status", "reasons", "at", "processes", "components"],
    "properties": {
        "status": {"enum": ["healthy", "degraded", "critical"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "at": {"type": "number"},
        "processes": {"type": "integer", "description": "Live server processes counted"},
        "components": {"type": "array", "items": _COMPONENT},
    },
}
_SLO = {
    "type": "object",
    "required": ["source", "at", "routes"],
    "properties": {
        "source": {"enum": ["store", "prometheus"]},
        "at": {"type": "number"},
        "routes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "window_s": {"type": "number"},
                    "latency_target_ms": {"type": ["number", "null"]},
                    "objectives": {"type": "object"},
                    "cost": {"type": "object"},
                },
            },
        },
    },
}


def _operations(doc: _Doc, project: Project) -> None:
    doc.add(
        "get",
        "/v1/health",
        "health",
        "Health of the service, each route and each dependency, with reasons (all processes)",
        {
            "200": _json(_HEALTH, "Healthy or degraded"),
            "503": _json(_HEALTH, "Critical: some route cannot answer"),
        },
        scope="admin",
    )
    routes = sorted(n for n, r in project.routes.items() if r.slo is not None)
    doc.add(
        "get",
        "/v1/slo",
        "slo",
        "SLO compliance, error budget left and burn rates per route, with cost per 1k",
        {
            "200": _json(_SLO, "The SLO report"),
            "400": _error("A bad window, or a route without an SLO"),
            "404": _error("Unknown route"),
        },
        scope="admin",
        parameters=[
            # Only a route that declares an SLO may be asked for (another is a 400).
            *(
                [{"name": "route", "in": "query", "schema": {"type": "string", "enum": routes}}]
                if routes
                else []
            ),
            {
                "name": "window",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "pattern": DURATION_PATTERN},
            },
        ],
    )


def _review(doc: _Doc) -> None:
    case_id = _path_param("case_id", {"type": "integer", "minimum": 0})
    query = [
        {"name": "route", "in": "query", "schema": {"type": "string"}},
        {"name": "queue", "in": "query", "schema": {"type": "string"}},
        {
            "name": "status",
            "in": "query",
            "schema": {"type": "string", "enum": ["open", "resolved", "all"], "default": "open"},
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
        },
    ]
    bad = _error("Invalid query or body (the message names the field)")
    unknown = _error("No such review case")
    doc.add(
        "get",
        "/v1/admin/review",
        "admin_review_list",
        "Review cases (answers a route abstained on), newest first",
        {"200": _json(doc.model(ReviewCases), "Cases"), "400": bad},
        scope="admin",
        parameters=query,
    )
    case = _json(doc.model(ReviewCaseOut), "The case")
    doc.add(
        "get",
        "/v1/admin/rollouts",
        "admin_rollouts",
        "Active progressive rollouts, each with its step's figures from every worker",
        {
            "200": _json(
                {
                    "type": "object",
                    "required": ["rollouts"],
                    "properties": {
                        "rollouts": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "route", "model", "version", "state", "step"],
                                "properties": {
                                    "id": {"type": "integer"},
                                    "route": {"type": "string"},
                                    "model": {"type": "string"},
                                    "version": {"type": "integer"},
                                    "state": {"type": "string"},
                                    "step": {"type": "integer"},
                                    "stage": {"type": "string", "enum": ["shadow", "canary"]},
                                    "canary_percent": {"type": "number"},
                                    "shadow_percent": {"type": "number"},
                                    "figures": {"type": "object"},
                                    "breaches": {"type": "array", "items": {"type": "string"}},
                                    "waiting": {"type": "array", "items": {"type": "string"}},
                                    "moves": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                        }
                    },
                },
                "Rollouts",
            )
        },
        scope="admin",
    )
    doc.add(
        "get",
        "/v1/admin/review/{case_id}",
        "admin_review_show",
        "One review case with what its answer was made from",
        {"200": case, "404": unknown},
        scope="admin",
        parameters=[case_id],
    )
    doc.add(
        "post",
        "/v1/admin/review/{case_id}/resolve",
        "admin_review_resolve",
        "Give a case its true label (it becomes feedback for the route)",
        {
            "200": case,
            "400": bad,
            "404": unknown,
            "409": _error("Already resolved with another label"),
        },
        scope="admin",
        body=doc.model(ResolveRequest),
        parameters=[case_id],
    )


# -- the Open Inference Protocol -----------------------------------------------------------

_DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
]
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
_NESTED = {
    "anyOf": [
        {"type": ["number", "boolean"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/V2Data"}},
    ]
}
_V2_SCHEMAS: dict[str, Any] = {
    "V2Data": _NESTED,
    "V2ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
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
                    "timeout": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "description": "Microseconds, as in Triton",
                    },
                    "binary_data_output": {"type": "boolean"},
                },
            },
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"enum": _DATATYPES},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "parameters": {"type": "object"},
                        "data": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/V2Data"},
                            "description": "Row-major values, flat or nested; as many as the "
                            "shape holds",
                        },
                    },
                },
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"enum": ["score", "probabilities", "label"]},
                        "parameters": {"type": "object"},
                    },
                },
            },
        },
    },
    "V2InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {**_TENSOR_META, "properties": {**_META_PROPS, "data": {}}},
            },
        },
    },
}


def _v2(doc: _Doc, models: list[str]) -> None:
    doc.schemas.update(_V2_SCHEMAS)
    name = _path_param("name", {"type": "string", "enum": models} if models else {"type": "string"})
    version = _path_param("version", {"type": "string", "pattern": "^[0-9]+$"})
    not_found = _error("Model or version not loaded", "V2Error")
    bad_version = _error("The version is not a number", "V2Error")

    def health(description: str, *keys: str) -> dict[str, Any]:  # KServe's client reads these
        props: dict[str, Any] = {k: {"type": "string" if k == "name" else "boolean"} for k in keys}
        return _json({"type": "object", "properties": props, "required": list(keys)}, description)

    doc.add(
        "get",
        "/v2",
        "v2_server_metadata",
        "Server metadata",
        {"200": _json("V2ServerMetadata", "Server metadata")},
    )
    doc.add(
        "get",
        "/v2/health/live",
        "v2_live",
        "200 while the process serves",
        {"200": health("live", "live")},
    )
    doc.add(
        "get",
        "/v2/health/ready",
        "v2_ready",
        "200 once every model is loaded and the stores answer",
        {"200": health("ready", "ready"), "503": health("not ready", "ready")},
    )
    for prefix, params, tag in [
        ("/v2/models/{name}", [name], ""),
        ("/v2/models/{name}/versions/{version}", [name, version], "_version"),
    ]:
        statuses: dict[str, Any] = {"404": not_found}
        if tag:
            statuses["400"] = bad_version
        doc.add(
            "get",
            f"{prefix}/ready",
            f"v2_model_ready{tag}",
            "Whether the model (version) is ready: the status code is the answer",
            {
                "200": health("ready", "name", "ready"),
                "503": health("not ready", "name", "ready"),
                **statuses,
            },
            parameters=params,
        )
        doc.add(
            "get",
            prefix,
            f"v2_model_metadata{tag}",
            "Model metadata",
            {"200": _json("V2ModelMetadata", "Metadata"), **statuses},
            parameters=params,
        )
        doc.add(
            "post",
            f"{prefix}/infer",
            f"v2_infer{tag}",
            "Score rows given as one [-1, n_features] tensor or one per feature",
            {
                "200": {
                    "description": "Outputs (binary outputs follow the JSON header when asked)",
                    "content": {
                        JSON: {"schema": _ref("V2InferenceResponse")},
                        "application/octet-stream": {"schema": {"type": "string"}},
                    },
                },
                "400": _error("Invalid request (the message says why)", "V2Error"),
                "404": not_found,
                "413": _error("Body too large", "V2Error"),
                "504": _error("No answer within the request's timeout", "V2Error"),
            },
            scope="predict",
            body=_ref("V2InferenceRequest"),
            parameters=params,
            error="V2Error",
        )


def _docs(doc: _Doc, assets: list[tuple[str, str]]) -> None:
    html = {"text/html": {"schema": {"type": "string"}}}
    doc.add(
        "get",
        "/docs",
        "docs",
        "Interactive docs (Swagger UI)",
        {"200": {"description": "HTML", "content": html}},
    )
    for path, media_type in assets:
        page = path.split("/")[1]  # docs or dashboard
        doc.add(
            "get",
            path,
            f"{page}_asset_" + path.rsplit("/", 1)[-1].replace(".", "_").replace("-", "_"),
            f"A file of the {page} page, served from the package",
            {
                "200": {
                    "description": "The file",
                    "content": {media_type: {"schema": {"type": "string"}}},
                }
            },
        )


def _dashboard(doc: _Doc) -> None:
    html = {"text/html": {"schema": {"type": "string"}}}
    doc.add(
        "get",
        "/dashboard",
        "dashboard",
        "The live operations page (its data needs the read scope)",
        {"200": {"description": "HTML", "content": html}},
    )
    doc.add(
        "get",
        "/v1/dashboard/data",
        "dashboard_data",
        "What the dashboard shows: per route, stream and batch job",
        {
            "200": _json(
                {
                    "type": "object",
                    "required": ["at", "routes", "breakers", "streams", "batch_jobs"],
                    "properties": {
                        "at": {"type": "number", "description": "Unix time of the figures"},
                        "rate_seconds": {"type": "number"},
                        "window_seconds": {"type": "number"},
                        "routes": {"type": "object", "additionalProperties": {"type": "object"}},
                        "breakers": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "streams": {"type": "array", "items": {"type": "object"}},
                        "batch_jobs": {"type": "object"},
                    },
                },
                "The figures",
            )
        },
        scope="read",
    )


def document(
    project: Project, *, auth: bool, models: list[str], assets: list[tuple[str, str]]
) -> dict[str, Any]:
    """The OpenAPI document of a server of ``project`` (``models``: the loaded names;
    ``assets``: (path, media type) of the docs and dashboard pages' files)."""
    doc = _Doc(auth)
    _hybrid(doc, project)
    _admin(doc)
    _operations(doc, project)
    _v2(doc, models)
    _docs(doc, assets)
    _dashboard(doc)
    components: dict[str, Any] = {"schemas": dict(sorted(doc.schemas.items()))}
    if auth:
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Authorization: Bearer KEY",
            },
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "hybridserve",
            "version": __version__,
            "description": "Batch, online and streaming predictions behind one API.",
        },
        "tags": TAGS,
        "paths": doc.paths,
        "components": components,
    }
