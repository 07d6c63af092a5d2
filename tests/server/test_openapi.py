"""``/openapi.json`` and ``/docs``: every endpoint documented, a valid OpenAPI 3.1 document,
its schemas and the server agreeing on the cases a fuzzer found, and a docs page that loads
nothing from another origin. (``test_openapi_fuzz`` generates thousands more cases.)
"""

from __future__ import annotations

import re
import time
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Match, Route

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
# The JSON Schema 2020-12 keywords the document may use, and OpenAPI's own (a stray keyword,
# such as pydantic's "ge" for a constraint it could not translate, is silently ignored by
# validators and generators: the rule would be missing from the document).
KEYWORDS = {
    "$ref", "$defs", "type", "enum", "const", "properties", "additionalProperties", "required",
    "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern",
    "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "anyOf", "oneOf",
    "allOf", "not", "if", "then", "else", "title", "description", "default", "examples",
    "minProperties", "maxProperties", "discriminator", "deprecated", "readOnly", "writeOnly",
}  # fmt: skip


async def _spec(client: Any) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def _concrete(path: str) -> str:
    """A documented path with a sample value for each parameter."""
    return re.sub(r"\{[^}]+\}", "x", path)


def _matches(route: Route, path: str, method: str) -> bool:
    scope = {"type": "http", "path": path, "method": method.upper()}
    match, _ = route.matches(scope)
    return match is Match.FULL


async def test_every_route_the_app_serves_is_documented(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    project = make_project()
    app, client = await serve(project)
    spec = await _spec(client)
    documented = [
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    ]
    routes = [r for r in app.starlette.routes if isinstance(r, Route)]
    assert routes, "the app's route table is empty"
    for route in routes:
        methods = sorted(m.lower() for m in route.methods or ()) or ["get"]
        for method in set(methods) - {"head"}:
            hits = [p for p, m in documented if m == method and _matches(route, _concrete(p), m)]
            assert hits, f"{method.upper()} {route.path} is served but not in /openapi.json"
    for path, method in documented:  # and nothing documented that is not served
        assert any(_matches(r, _concrete(path), method) for r in routes), (method, path)
    for name in project.routes:
        assert f"/v1/predict/{name}" in spec["paths"]
    for name in project.streams:
        assert f"/v1/events/{name}" in spec["paths"]
    for path, method in documented:
        op = spec["paths"][path][method]
        assert op["responses"], (method, path)
        assert set(op["tags"]) <= {t["name"] for t in spec["tags"]}, (method, path)
        if "requestBody" in op:
            assert op["requestBody"]["content"]["application/json"]["schema"], (method, path)


def _walk(node: Any, where: str = "") -> list[str]:
    """Paths of schema objects using a keyword outside ``KEYWORDS``."""
    bad: list[str] = []
    if isinstance(node, dict):
        if "type" in node or "anyOf" in node or "$ref" in node or "properties" in node:
            bad += [f"{where}.{k}" for k in node if k not in KEYWORDS and not k.startswith("x-")]
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    bad += _walk(sub, f"{where}.{key}.{name}")
            elif key not in ("enum", "const", "default", "examples", "required"):
                bad += _walk(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            bad += _walk(value, f"{where}[{i}]")
    return bad


@pytest.mark.parametrize("auth", [False, True])
async def test_document_is_valid_openapi_3_1(make_project, serve, auth) -> None:  # type: ignore[no-untyped-def]
    keys = [{"name": "k", "key": "secret-key", "scopes": ["predict"]}] if auth else []
    _, client = await serve(make_project({"server": {"api_keys": keys}}))
    spec = await _spec(client)
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises, naming the place, when the document is not valid OpenAPI 3.1
    assert _walk(spec["components"]["schemas"]) == []
    assert _walk(spec["paths"]) == []
    predict = spec["paths"]["/v1/predict/fraud"]["post"]
    if auth:
        assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        assert {"401", "403"} <= set(predict["responses"]) and predict["security"]
    else:
        assert "securitySchemes" not in spec["components"]
        assert not {"401", "403"} & set(predict["responses"]) and "security" not in predict


def _body_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    op = spec["paths"][path]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    return {**schema, "components": spec["components"]}


def _allows(spec: dict[str, Any], path: str, body: Any) -> bool:
    return jsonschema.Draft202012Validator(_body_schema(spec, path)).is_valid(body)


def _param_allows(spec: dict[str, Any], path: str, name: str, value: str) -> bool:
    op = spec["paths"][path]["get"]
    (param,) = [p for p in op["parameters"] if p["name"] == name]
    return jsonschema.Draft202012Validator(param["schema"]).is_valid(value)


# The cases schemathesis found, and their neighbours: the document and the server must
# give the same verdict on each (valid: not a 400; invalid: a 400).
PREDICT_CASES = [
    {"entity": 0},  # an integer key: accepted, and documented as such
    {"entity": 7.0},  # the same integer, written as JSON numbers may be
    {"entities": [12, "card_000001"]},
    {"entities": [{"key": 3}]},
    {},  # neither entities nor entity
    {"entities": [], "entity": None},
    {"entity": True},
    {"entity": 2**60},  # past what a JSON reader holds exactly
    {"entity": "c", "probabilities": "true"},  # a string is not a boolean
    {"entity": "c", "timeout_ms": "5"},
    {"entity": "c", "max_staleness": "5m"},
    {"entity": "c", "max_staleness": "soon"},
    {"entity": "c", "max_staleness": "\u0663s"},  # an Arabic-Indic digit is not a number here
    {"entity": "c", "features": {"amount": 3}},  # not one of the route's request features
    {"entity": "c", "features": {"amount_zscore_last": 1.5, "card_age_days": 400}},
    {"entity": "c", "features": {"amount_zscore_last": True}},
    {"entity": "c", "features": {"amount_zscore_last": "1.5"}},  # typed: a string is refused
    {"entity": "c", "features": {"amount_zscore_last": None}},
    {"entities": [{"key": "c", "features": {"card_age_days": "old"}}]},
    {"entities": ["a"] * 1000},
    {"entities": ["a"] * 1000, "entity": "b"},  # entity counts against max_entities
]


async def test_predict_schema_and_server_agree(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    features = {"amount_zscore_last": "float", "card_age_days": "float"}
    project = make_project(fallback=[{"default": 0.5}], request_features=features)
    _, client = await serve(project)
    spec = await _spec(client)
    for body in PREDICT_CASES:
        r = await client.post("/v1/predict/fraud", json=body)
        allowed = _allows(spec, "/v1/predict/fraud", body)
        assert r.status_code == (200 if allowed else 400), (str(body)[:80], allowed, r.text[:300])


async def test_integer_entity_keys_are_read_as_their_decimal_text(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project(fallback=[{"default": 0.5}]))
    by_int = (await client.post("/v1/predict/fraud", json={"entities": [1, {"key": 2}]})).json()
    assert [p["entity"] for p in by_int["predictions"]] == ["1", "2"]
    key = _body_schema(await _spec(client), "/v1/predict/fraud")["properties"]["entity"]
    assert {"type": "integer", "minimum": -(2**53 - 1), "maximum": 2**53 - 1} in key["anyOf"][0][
        "anyOf"
    ]


ADMIN_CASES = [
    ({"version": 1}, True),
    ({"version": 1.0}, True),  # JSON Schema counts 1.0 as an integer
    ({"version": "1"}, False),
    ({"version": True}, False),
    ({"version": 0}, False),
    ({"version": 1, "alias": ""}, False),
    ({"version": 1, "alias": "bad name"}, False),
    ({"version": 1, "alias": "staging"}, True),
    ({"version": 1, "colour": "red"}, False),
]


async def test_promote_schema_and_server_agree(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project())
    spec = await _spec(client)
    for body, valid in ADMIN_CASES:
        assert _allows(spec, "/v1/admin/models/{name}/promote", body) is valid, body
        r = await client.post("/v1/admin/models/fraud/promote", json=body)
        assert r.status_code == (200 if valid else 400), (body, r.text)


async def test_v2_version_parameter_schema_and_server_agree(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project())
    spec = await _spec(client)
    paths = ("/v2/models/{name}/versions/{version}", "/v2/models/{name}/versions/{version}/ready")
    for version, valid, status in [("1", True, 200), ("9", True, 404), ("0.1.0", False, 400)]:
        for path in paths:
            url = path.replace("{name}", "fraud").replace("{version}", version)
            r = await client.get(url)
            assert _param_allows(spec, path, "version", version) is valid, url
            assert r.status_code == status, (url, r.text)
            assert str(status) in spec["paths"][path]["get"]["responses"], url


async def test_events_schema_states_the_stream_fields(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    project = make_project()
    (project.base_dir / "data" / "transactions").mkdir(parents=True, exist_ok=True)
    _, client = await serve(project)
    spec = await _spec(client)
    path = "/v1/events/transactions"
    at = time.time()
    event = {"event_id": "e1", "card_id": "card_000001", "event_time": at, "amount": 3.5}
    for body, valid in [
        (event, True),
        ([event, {**event, "event_id": "e2"}], True),
        ({**event, "amount": "3.5"}, False),
        ({**event, "card_id": ""}, False),
        ({**event, "event_time": at - 400 * 86400}, False),  # older than max_past
        ({k: v for k, v in event.items() if k != "event_time"}, False),
        ([], False),
    ]:
        assert _allows(spec, path, body) is valid, body
        r = await client.post(path, json=body)
        assert r.status_code == (202 if valid else 400), (body, r.text)


async def test_docs_page_loads_only_same_origin_assets(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project())
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""", page.text)
    assert refs, page.text
    kinds = {".css": "text/css", ".js": "text/javascript", ".json": "application/json"}
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), f"{ref} is not same-origin"
        r = await client.get(ref)
        assert r.status_code == 200, ref
        kind = next(v for k, v in kinds.items() if ref.endswith(k))
        assert r.headers["content-type"].startswith(kind), (ref, r.headers["content-type"])
        assert len(r.content) > 1000, ref
    assert "SwaggerUIBundle" in (await client.get("/docs/swagger-ui-bundle.js")).text
