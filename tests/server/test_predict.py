"""The hybrid API end to end, in process: sources, freshness, fallbacks, bad input."""

from __future__ import annotations

import pytest

from hybridserve.records import PredictionRecord, now
from hybridserve.routing.schema import parse_predict_request


async def test_compute_then_cache_then_store(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    app, client = await serve(make_project())
    r = await client.post("/v1/predict/fraud", json={"entities": ["card_000001", "card_000002"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["source"] for p in body["predictions"]] == ["online", "online"]
    first = body["predictions"][0]
    assert first["model"] == "fraud" and first["model_version"] == 1 and not first["degraded"]
    assert 0 <= first["score"] <= 1 and first["age_s"] > 0 and first["as_of"].endswith("Z")
    assert (
        r.headers["x-model-version"] == "fraud/1"
        and r.headers["x-request-id"] == body["request_id"]
    )
    again = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
    assert again.json()["predictions"][0]["source"] == "cache"
    assert again.json()["predictions"][0]["score"] == first["score"]
    # Another process (empty L1) finds the written-back record in the store.
    await app.state.router.flush()
    app.state.router.cache.invalidate()
    stored = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
    assert stored.json()["predictions"][0]["source"] == "online"  # stored record's own source
    assert "fraud" in (await client.get("/metrics")).text


async def test_batch_record_served_when_fresh_and_right_version(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    app, client = await serve(make_project())
    t = now()
    rec = PredictionRecord(
        "card_000003", "fraud", 0.42, "fraud", 1, "batch", t - 60, t, run_id="r1"
    )
    other = PredictionRecord("card_000004", "fraud", 0.42, "fraud", 99, "batch", t - 60, t)
    old = PredictionRecord("card_000005", "fraud", 0.42, "fraud", 1, "batch", t - 5 * 86400, t)
    await app.state.services.predictions.put([rec, other, old])
    r = await client.post(
        "/v1/predict/fraud", json={"entities": ["card_000003", "card_000004", "card_000005"]}
    )
    p = r.json()["predictions"]
    assert (p[0]["source"], p[0]["score"]) == ("batch", 0.42)
    assert p[1]["source"] == "online" and p[1]["model_version"] == 1  # wrong version: recompute
    assert p[2]["source"] == "online"  # too old: recompute
    # A request may tighten the freshness bound.
    r = await client.post(
        "/v1/predict/fraud", json={"entity": "card_000003", "max_staleness": "10s"}
    )
    assert r.json()["predictions"][0]["source"] == "online"


async def test_fallback_chain_in_order(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    project = make_project(
        fallback=["stale_prediction", {"model": "fraud_rules@production"}, {"default": 0.25}]
    )
    app, client = await serve(project)
    t = now()
    stale = PredictionRecord("card_999999", "fraud", 0.7, "fraud", 1, "batch", t - 9 * 86400, t)
    await app.state.services.predictions.put([stale])
    # No features stored for unknown cards: compute fails, fallbacks answer.
    r = await client.post("/v1/predict/fraud", json={"entities": ["card_999999", "nobody"]})
    assert r.status_code == 200, r.text
    a, b = r.json()["predictions"]
    assert (a["source"], a["score"], a["degraded"]) == ("fallback:stale_prediction", 0.7, True)
    assert (b["source"], b["score"], b["model"]) == ("fallback:default", 0.25, None)
    # fraud_rules answers from request features when the primary cannot.
    feats = {"amount_mean_30d": 50.0}
    r = await client.post("/v1/predict/fraud", json={"entity": "nobody2", "features": feats})
    assert r.status_code == 400  # not a request feature of this route


async def test_no_fallback_gives_503_with_steps(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project(fallback=[]))
    r = await client.post("/v1/predict/fraud", json={"entities": ["card_000001", "ghost"]})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    body = r.json()
    assert body["type"] == "NoFreshPrediction"
    assert [p["entity"] for p in body["predictions"]] == ["card_000001"]
    (ghost,) = body["unanswered"]
    assert ghost["entity"] == "ghost"
    assert any("missing feature" in s for s in ghost["steps"]), ghost["steps"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "invalid request"),
        (b'{"entities": "card"}', 400, "entities"),
        (b'{"entities": []}', 400, "give 'entities'"),
        (b'{"entities": ["a"], "colour": 1}', 400, "colour: unknown field"),
        (b'{"entities": ["a"], "max_staleness": "soon"}', 400, "max_staleness"),
        (b'{"entities": ["a"], "timeout_ms": -1}', 400, "timeout_ms"),
        (b'{"entities": ["a"], "features": {"zzz": 1}}', 400, "unknown request feature 'zzz'"),
        (b"[1, 2]", 400, "invalid request"),
    ],
)
async def test_bad_input_is_a_4xx_naming_the_problem(
    make_project, serve, body: bytes, status: int, needle: str
) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project())
    r = await client.post("/v1/predict/fraud", content=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


async def test_unknown_route_too_many_entities_and_body_limit(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project({"server": {"max_entities": 3, "max_body_size": "2kb"}}))
    r = await client.post("/v1/predict/nope", json={"entity": "a"})
    assert r.status_code == 404 and "known routes" in r.json()["error"]
    r = await client.post("/v1/predict/fraud", json={"entities": ["a", "b", "c", "d"]})
    assert r.status_code == 400 and "at most 3" in r.json()["error"]
    r = await client.post("/v1/predict/fraud", json={"entities": ["x" * 3000]})
    assert r.status_code == 413


def test_request_parsing_accepts_keys_objects_and_ints() -> None:
    req = parse_predict_request(
        {"entities": ["a", {"key": 7, "features": {"f": 1.0}}], "timeout_ms": 20, "mode": "compute"}
    )
    assert req.entities[0] == "a" and req.entities[1].key == "7"  # type: ignore[union-attr]
