"""The prediction store's reads: a stored value that is not a renderable record is skipped."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from hybridserve.predictions.store import PredictionStore, prediction_key
from hybridserve.records import PredictionRecord, now
from hybridserve.storage import Entry, open_store


def _record(entity: str, as_of: float) -> PredictionRecord:
    return PredictionRecord(entity, "fraud", 0.5, "fraud", 1, "stream", as_of, now())


@pytest.mark.parametrize("as_of", [-1e11, 1e14, float("nan")])
async def test_records_whose_times_cannot_be_rendered_are_skipped_and_counted(
    as_of: float,
) -> None:
    kv = open_store(f"memory://unreadable-{uuid.uuid4().hex}", "t:")
    store = PredictionStore(kv)
    calls: list[int] = []
    store.on_unreadable = lambda: calls.append(1)
    good = _record("b", now() - 5)
    bad = _record("a", as_of)
    await kv.put_many(
        [
            Entry(prediction_key("fraud", "a"), bad.to_bytes(), 0.0),
            Entry(prediction_key("fraud", "b"), good.to_bytes(), good.as_of),
            Entry(prediction_key("fraud", "c"), b"{not a record", 0.0),
        ]
    )
    got = await store.get("fraud", ["a", "b", "c"])
    assert got[0] is None and got[2] is None
    assert got[1] == good
    assert store.unreadable == 2 and len(calls) == 2


async def test_an_unreadable_record_does_not_hide_the_runs_record() -> None:
    kv = open_store(f"memory://unreadable-{uuid.uuid4().hex}", "t:")
    store = PredictionStore(kv)
    run = _record("a", now() - 60)
    await kv.put_many([Entry(prediction_key("fraud", "a"), _record("a", -1e11).to_bytes(), now())])
    await store.put_run("r1", [run])
    assert await store.get("fraud", ["a"], run_id="r1") == [run]
    assert await store.get_run("fraud", "r1", ["a"]) == [run]
    assert store.unreadable == 1


async def test_a_far_past_stored_record_does_not_fail_a_stored_read(
    make_project: Any, serve: Any
) -> None:
    app, client = await serve(make_project())
    services = app.state.services
    await services.predictions.put([_record("card_000001", -1e11)])
    r = await client.post("/v1/predict/fraud", json={"entity": "card_000001", "mode": "stored"})
    assert r.status_code != 500, r.text
    assert r.json()["predictions"][0]["source"] != "stream"
    r = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
    assert r.status_code == 200 and r.json()["predictions"][0]["source"] == "online"
    metrics = (await client.get("/metrics")).text
    assert "hybridserve_unreadable_records_total 2.0" in metrics
