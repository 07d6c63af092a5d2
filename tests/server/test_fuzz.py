"""Property tests of the HTTP API, in process: whatever a client sends, the answer is a clean
4xx (JSON with an ``error`` string), a 2xx, or a 503 that says no fresh prediction exists;
never a 5xx from a crash.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridserve.config import Project
from hybridserve.server.app import create_app

MakeProject = Callable[..., Project]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,  # a failure prints how to reproduce it
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.text(min_size=0, max_size=40) | st.sampled_from(["card_000001", "card_000399", "ghost"])
junk = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
REQUEST_FEATURES = {"amount_zscore_last": "float", "card_age_days": "float"}
feature_names = st.sampled_from([*REQUEST_FEATURES, "amount_mean_30d"]) | st.text(max_size=12)
feature_maps = st.dictionaries(feature_names, junk | st.lists(junk, max_size=2), max_size=3)
durations = (
    st.sampled_from(["30s", "5m", "1h", "0s", "-1s", "1e400s", "soon", "", "10 ms", "inf"]) | junk
)
entity_items = (
    keys
    | st.integers()
    | st.fixed_dictionaries(
        {"key": keys | st.integers() | junk}, optional={"features": feature_maps}
    )
    | json_values
)
predict_like = st.fixed_dictionaries(
    {},
    optional={
        "entities": st.lists(entity_items, max_size=5) | junk,
        "entity": keys | st.integers() | junk,
        "features": feature_maps | junk,
        "max_staleness": durations,
        "timeout_ms": st.floats() | st.integers(min_value=-5, max_value=10**9) | junk,
        "mode": st.sampled_from(["auto", "compute", "stored", "AUTO", ""]) | junk,
        "probabilities": junk,
        "colour": junk,
    },
)
routes = st.sampled_from(["fraud", "fraud"]) | st.text(max_size=20)
methods_and_paths = st.tuples(
    st.sampled_from(["GET", "GET", "HEAD", "DELETE", "PUT", "POST"]),
    st.sampled_from(
        [
            "/v2/health/live",
            "/v2/health/ready",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/v1/admin/routes",
            "/v1/admin/models",
            "/v1/admin/reload",
            "/v1/admin/models/fraud/promote",
            "/v1/predict/fraud",
            "/v1/predict/",
            "/",
        ]
    )
    | st.text(max_size=20).map(lambda t: "/" + quote(t)),
)


def body_bytes(value: Any) -> bytes:
    """JSON text for ``value`` (NaN and infinities as Python writes them: not valid JSON)."""
    return json.dumps(value).encode()


def check(r: httpx.Response) -> None:
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text)
    if r.status_code >= 400 and r.request.method != "HEAD":
        body = r.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), r.text
        if r.status_code == 503:
            # Nothing could answer, or admission shed the request (a stall on a busy machine
            # puts the loop behind its budget: seen in CI), which says when to come back.
            assert body.get("type") in ("NoFreshPrediction", "Overloaded"), r.text
            if body["type"] == "Overloaded":
                assert r.headers.get("retry-after"), r.headers
    if r.status_code == 200 and r.request.url.path.startswith("/v1/predict/"):
        body = r.json()
        assert len(body["predictions"]) >= 1
        for p in body["predictions"]:
            assert isinstance(p["score"], float | int) and isinstance(p["degraded"], bool)


def test_fuzz_http_api(make_project: MakeProject) -> None:
    project = make_project(
        {"server": {"max_body_size": "64kb", "reload_interval": 0}},
        request_features=REQUEST_FEATURES,
        fallback=["stale_prediction", {"model": "fraud_rules@production"}, {"default": 0.5}],
    )
    with asyncio.Runner() as runner:
        app = create_app(project, access_log=False)
        lifespan = app.starlette.router.lifespan_context(app.starlette)
        runner.run(lifespan.__aenter__())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hs")
        try:

            def post(route: str, content: bytes) -> None:
                url = "/v1/predict/" + quote(route, safe="")
                check(runner.run(client.post(url, content=content)))

            @FUZZ
            @given(json_values, routes)
            def any_json(value: Any, route: str) -> None:
                post(route, body_bytes(value))

            @FUZZ
            @given(predict_like)
            def almost_valid(value: dict[str, Any]) -> None:
                post("fraud", body_bytes(value))

            @FUZZ
            @given(st.binary(max_size=200), routes)
            def any_bytes(content: bytes, route: str) -> None:
                post(route, content)

            @FUZZ
            @given(methods_and_paths, st.binary(max_size=50))
            def other_paths(method_path: tuple[str, str], content: bytes) -> None:
                method, path = method_path
                check(runner.run(client.request(method, path, content=content or None)))

            for fuzz in (any_json, almost_valid, any_bytes, other_paths):
                fuzz()
        finally:
            runner.run(client.aclose())
            runner.run(lifespan.__aexit__(None, None, None))
