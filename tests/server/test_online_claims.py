"""What the docs promise of the online path, each asserted: typed request features, request
features merged with stored ones reaching the model, the fallback model answering, and the core
Prometheus series moving as requests are served."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridserve.config import Project
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix
from model_fakes import swap_predict

MakeProject = Callable[..., Project]
Serve = Callable[[Project], Any]


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


@pytest.mark.parametrize(
    ("features", "problem"),
    [
        ({"amount_mean_30d": "abc"}, "features.amount_mean_30d: expected a number, got 'abc'"),
        ({"amount_mean_30d": None}, "features.amount_mean_30d: expected a number, got None"),
        ({"txn_count_7d": 2.5}, "features.txn_count_7d: expected int, got 2.5"),
        ({"amount_mean_30d": float("nan")}, "expected a finite number, got nan"),
        ({"amount_mean_30d": float("inf")}, "expected a finite number, got inf"),
    ],
)
async def test_a_request_feature_of_the_wrong_type_is_a_400_naming_it(
    make_project: MakeProject, serve: Serve, features: dict[str, Any], problem: str
) -> None:
    # Before, "abc" reached the Scorer, failed there, and the default fallback answered 200.
    _, client = await serve(
        make_project(request_features={"amount_mean_30d": "float", "txn_count_7d": "int"})
    )
    body = json.dumps({"entity": "card_000001", "mode": "compute", "features": features})
    r = await client.post("/v1/predict/fraud", content=body)
    assert r.status_code == 400, r.text
    assert problem in r.json()["error"]
    per_entity = {"entities": [{"key": "card_000001", "features": features}]}
    r = await client.post("/v1/predict/fraud", content=json.dumps(per_entity))
    assert (r.status_code == 400 and "entities.0.features.amount_mean_30d" in r.text) or (
        "entities.0.features.txn_count_7d" in r.text
    )


async def test_request_features_override_stored_ones_in_what_the_model_scores(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(make_project(request_features={"amount_mean_30d": "float"}))
    model = app.state.models.get("fraud")
    assert model is not None
    seen: list[Matrix] = []

    def spy(inner: Callable[[Matrix], Prediction]) -> Callable[[Matrix], Prediction]:
        def call(m: Matrix) -> Prediction:
            seen.append(m.copy())
            return inner(m)

        return call

    swap_predict(model.batcher, spy)
    column = model.scorer.names.index("amount_mean_30d")
    stored = await client.post(
        "/v1/predict/fraud", json={"entity": "card_000007", "mode": "compute"}
    )
    assert stored.status_code == 200
    row = seen[-1][0].copy()
    r = await client.post(
        "/v1/predict/fraud",
        json={"entity": "card_000007", "mode": "compute", "features": {"amount_mean_30d": 4321.5}},
    )
    assert r.status_code == 200, r.text
    merged = seen[-1][0]
    assert merged[column] == 4321.5
    # Every other column is the stored value: the request overrode one feature, no more.
    others = [j for j in range(len(row)) if j != column]
    assert merged[others].tolist() == row[others].tolist()
    assert row[column] != 4321.5
    (p,) = r.json()["predictions"]
    expected = model.scorer.runtime.predict(merged.reshape(1, -1), probabilities=True)
    assert p["score"] == pytest.approx(float(expected.scores[0]), abs=0)


async def test_the_fallback_model_answers_when_the_primary_fails(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(
        make_project(fallback=[{"model": "fraud_rules@production"}, {"default": 0.5}])
    )
    primary = app.state.models.get("fraud")
    assert primary is not None

    def broken(_: Callable[[Matrix], Prediction]) -> Callable[[Matrix], Prediction]:
        def call(m: Matrix) -> Prediction:
            raise ValueError("model crashed")

        return call

    swap_predict(primary.batcher, broken)
    r = await client.post("/v1/predict/fraud", json={"entities": ["card_000003", "card_000004"]})
    assert r.status_code == 200, r.text
    rules = next(m for _, role, m in app.state.models.loaded() if role.startswith("fallback"))
    features = await app.state.services.features.read_values(
        app.state.project.route_features("fraud"), ["card_000003", "card_000004"]
    )
    expected = rules.scorer.score_rows(
        ["card_000003", "card_000004"],
        [values for values, _ in features],
        as_of=0.0,
        source="online",
    )
    for p, rec in zip(r.json()["predictions"], expected.records, strict=True):
        assert p["source"] == "fallback:model" and p["degraded"] is True
        assert (p["model"], p["model_version"]) == (rules.name, rules.version)
        assert p["score"] == rec.score
    assert await metric(client, "hybridserve_fallbacks_total", kind="model", reason="error") == 2


async def test_core_series_move_as_requests_are_served(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(make_project(fallback=["stale_prediction", {"default": 0.5}]))
    names = {
        "computed": ("hybridserve_requests_total", {"source": "online", "status": "ok"}),
        "cached": ("hybridserve_requests_total", {"source": "cache", "status": "ok"}),
        "l1_hits": ("hybridserve_cache_hits_total", {"tier": "l1"}),
        "store_hits": ("hybridserve_cache_hits_total", {"tier": "store"}),
        "model_stage": ("hybridserve_stage_seconds_count", {"stage": "model"}),
        "store_stage": ("hybridserve_stage_seconds_count", {"stage": "store"}),
        "total_stage": ("hybridserve_stage_seconds_count", {"stage": "total"}),
        "age": ("hybridserve_prediction_age_seconds_count", {"route": "fraud"}),
        "defaults": ("hybridserve_fallbacks_total", {"kind": "default", "reason": "miss"}),
        "unavailable": ("hybridserve_requests_total", {"status": "unavailable"}),
    }

    async def read() -> dict[str, float]:
        return {k: await metric(client, name, **labels) for k, (name, labels) in names.items()}

    before = await read()
    for card in ("card_000010", "card_000011"):
        assert (await client.post("/v1/predict/fraud", json={"entity": card})).status_code == 200
    assert (await client.post("/v1/predict/fraud", json={"entity": "card_000010"})).json()[
        "predictions"
    ][0]["source"] == "cache"
    await app.state.router.flush()
    app.state.router.cache.invalidate()
    again = await client.post("/v1/predict/fraud", json={"entity": "card_000011"})
    assert again.json()["predictions"][0]["source"] == "online", again.text  # from the store
    # An unknown card in stored mode: nothing stored, so the default answers (reason: miss).
    r = await client.post("/v1/predict/fraud", json={"entity": "nobody", "mode": "stored"})
    assert r.json()["predictions"][0]["source"] == "fallback:default"
    after = await read()
    moved = {k: after[k] - before[k] for k in names}
    assert moved == {
        "computed": 3,  # two computed answers, and the stored one carries its own source
        "cached": 1,
        "l1_hits": 1,
        "store_hits": 1,
        "model_stage": 2,
        "store_stage": 4,
        "total_stage": 5,
        "age": 4,
        "defaults": 1,
        "unavailable": 0,
    }, moved
