"""Following an alias while serving: a promotion reaches responses without a restart, and a
request already in flight finishes on the version it started with."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from fraud_versions import add_fraud_version
from hybridserve.config import Project
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix
from model_fakes import PredictFn, swap_predict

Serve = Callable[[Project], Any]
MakeProject = Callable[..., Project]


async def versions(client: httpx.AsyncClient, cards: list[str], **extra: Any) -> set[int]:
    r = await client.post("/v1/predict/fraud", json={"entities": cards, **extra})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert not any(p["degraded"] for p in preds), preds
    return {p["model_version"] for p in preds}


async def test_refresh_follows_a_promotion_and_in_flight_requests_keep_their_version(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(make_project({"server": {"reload_interval": 0}}, latency_budget="5s"))
    cards = ["card_000001", "card_000002", "card_000003"]
    assert await versions(client, cards) == {1}
    # Hold version 1's model inside its next call.
    old = app.state.models.get("fraud")
    assert old is not None and old.version == 1
    entered, release = threading.Event(), threading.Event()

    def hold(inner: PredictFn) -> PredictFn:
        def held(matrix: Matrix) -> Prediction:
            entered.set()
            assert release.wait(5)
            return inner(matrix)

        return held

    swap_predict(old.batcher, hold)
    in_flight = asyncio.ensure_future(
        client.post("/v1/predict/fraud", json={"entity": "card_000009", "mode": "compute"})
    )
    assert await asyncio.to_thread(entered.wait, 5)
    registry = app.state.services.registry
    v2 = await asyncio.to_thread(add_fraud_version, registry, app.state.project)
    await asyncio.to_thread(registry.promote, "fraud", v2, alias="production", actor="tests")
    assert await app.state.models.refresh() == ["fraud/primary: fraud/1 -> fraud/2"]
    assert await app.state.models.refresh() == []  # nothing moved since
    # New requests use version 2 at once: L1 and store records of version 1 are not served.
    assert await versions(client, cards) == {v2}
    assert await versions(client, ["card_000004"], mode="compute") == {v2}
    assert not in_flight.done()
    release.set()
    r = await in_flight
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert (p["model_version"], p["source"], p["degraded"]) == (1, "online", False)
    assert r.headers["x-model-version"] == "fraud/1"
    metrics = (await client.get("/metrics")).text
    assert 'hybridserve_model_info{model="fraud",role="primary",route="fraud",version="2"} 1.0' in (
        metrics
    )
    assert 'role="primary",route="fraud",version="1"' not in metrics


async def test_poll_task_follows_a_promotion_within_seconds(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(
        make_project({"server": {"reload_interval": "0.2s"}}, latency_budget="5s")
    )
    assert await versions(client, ["card_000001"]) == {1}
    registry = app.state.services.registry
    v2 = await asyncio.to_thread(add_fraud_version, registry, app.state.project)
    await asyncio.to_thread(registry.promote, "fraud", v2, alias="production", actor="tests")
    deadline = time.monotonic() + 5
    seen = {1}
    while time.monotonic() < deadline:
        seen = await versions(client, ["card_000001"])
        if seen == {v2}:
            break
        await asyncio.sleep(0.05)
    assert seen == {v2}, "the poll task did not follow the alias within 5 s"
    # And back: a rollback is followed the same way.
    await asyncio.to_thread(registry.rollback, "fraud", alias="production", actor="tests")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and seen != {1}:
        await asyncio.sleep(0.05)
        seen = await versions(client, ["card_000001"])
    assert seen == {1}
