"""Tracing: a span tree per request with every stage, the caller's traceparent continued, and
nothing built while tracing is off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hybridserve.config import Project
from hybridserve.observability import tracing
from hybridserve.server.app import HybridApp

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

MakeProject = Callable[..., Project]
TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"


async def _serve(project: Project, exporter: Any) -> tuple[HybridApp, httpx.AsyncClient, Any]:
    from hybridserve.server.state import ServerState

    state = ServerState.build(project, access_log=False, tracing_exporter=exporter)
    app = HybridApp(state)
    lifespan = app.running()
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hs")
    return app, client, lifespan


async def test_a_request_is_a_span_tree_with_every_stage(make_project: MakeProject) -> None:
    project = make_project(fallback=["stale_prediction", {"default": 0.5}])
    exporter = InMemorySpanExporter()
    app, client, lifespan = await _serve(project, exporter)
    try:
        r = await client.post(
            "/v1/predict/fraud",
            json={"entity": "card_000001", "mode": "compute"},
            headers={"traceparent": f"00-{TRACE}-{CALLER}-01"},
        )
        assert r.status_code == 200
        await app.state.router.flush()
        # The model fails: the fallback steps answer, each in its own span.
        model = app.state.models.get("fraud")
        assert model is not None

        async def broken(*a: Any, **k: Any) -> Any:
            raise RuntimeError("model down")

        model.batcher.predict = broken  # type: ignore[method-assign]
        r2 = await client.post("/v1/predict/fraud", json={"entity": "card_000002"})
        assert r2.json()["predictions"][0]["source"] == "fallback:default"
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
    spans = exporter.get_finished_spans()
    first = [s for s in spans if s.context.trace_id == int(TRACE, 16)]
    root = next(s for s in first if s.name == "POST /v1/predict")
    assert root.parent is not None and root.parent.span_id == int(CALLER, 16)  # continued
    children = {s.name for s in first if s.parent and s.parent.span_id == root.context.span_id}
    assert {"features", "model"} <= children
    assert "write-back" in {s.name for s in first}  # the write it caused, in the same trace
    attrs = root.attributes or {}
    assert attrs["hybridserve.route"] == "fraud"
    assert attrs["hybridserve.entities"] == 1
    assert list(attrs["hybridserve.sources"]) == ["online"]
    assert attrs["hybridserve.model_version"] == "fraud/1"
    assert attrs["hybridserve.degraded"] is False

    second = next(
        s for s in spans if s.name == "POST /v1/predict" and s.context.trace_id != int(TRACE, 16)
    )
    tree = [s for s in spans if s.context.trace_id == second.context.trace_id]
    names = {s.name for s in tree}
    assert {"cache", "store", "model", "fallback", "fallback stale_prediction"} <= names
    assert "fallback default" in names
    assert (second.attributes or {})["hybridserve.degraded"] is True


def test_tracing_is_off_unless_asked_for() -> None:
    assert tracing.configure(False, None, "t") is tracing.OFF
    assert not tracing.wanted(False, {})
    assert not tracing.wanted(False, {"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted(False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted(True, {})
    with tracing.OFF.span("x") as nothing:
        assert nothing is None


async def test_a_request_the_sampler_skipped_builds_no_child_spans(
    make_project: MakeProject,
) -> None:
    project = make_project()
    exporter = InMemorySpanExporter()
    from hybridserve.server.state import ServerState

    project = project.model_copy(update={"tracing": type(project.tracing)(sample_ratio=0.0)})
    state = ServerState.build(project, access_log=False, tracing_exporter=exporter)
    app = HybridApp(state)
    lifespan = app.running()
    await lifespan.__aenter__()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hs"
        ) as client:
            r = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
            assert r.status_code == 200
            # A caller's sampled trace is still continued, with every stage.
            sampled = f"00-{TRACE}-{CALLER}-01"
            r = await client.post(
                "/v1/predict/fraud",
                json={"entity": "card_000002"},
                headers={"traceparent": sampled},
            )
            assert r.status_code == 200
    finally:
        await lifespan.__aexit__(None, None, None)
    spans = exporter.get_finished_spans()
    assert spans and all(s.context.trace_id == int(TRACE, 16) for s in spans)
    assert {"cache", "store"} <= {s.name for s in spans}


def test_inside_an_unsampled_request_stages_build_nothing_and_after_it_they_do() -> None:
    exporter = InMemorySpanExporter()
    skipped = tracing.configure(True, 0.0, "test", exporter=exporter)
    with skipped.request("POST /v1/predict", None) as span:
        assert not span.is_recording()
        with skipped.span("cache") as stage:
            assert stage is None
        skipped.annotate(entities=1)
    # A caller's sampled trace is continued even at ratio 0, and its stages are recorded.
    with skipped.request("POST /v1/predict", f"00-{TRACE}-{CALLER}-01") as span:
        assert span.is_recording()
        with skipped.span("cache") as stage:
            assert stage is not None
    # After the request (a write-back, a batch chunk) nothing is left marked unsampled.
    assert not tracing._UNSAMPLED.get()
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["cache", "POST /v1/predict"]
    skipped.shutdown()
