"""Canary and shadow rollouts through the HTTP API, in process.

Version 2 of ``fraud`` is version 1's artifact registered again (see ``fraud_versions``), so
scores match and only ``model_version`` tells which version answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fraud_versions import add_fraud_version_offline
from hybridserve.config import Project
from hybridserve.registry import Registry
from hybridserve.routing.rollout import in_share
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix
from hybridserve.server.app import HybridApp
from model_fakes import PredictFn, swap_predict

ROUTE = "fraud"
CARDS = [f"card_{i:06d}" for i in range(400)]  # the cards with stored features
Serve = Callable[[Project], Any]
MakeProject = Callable[..., Project]


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    text = (await client.get("/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def predict(
    client: httpx.AsyncClient, entities: list[str], **extra: Any
) -> list[dict[str, Any]]:
    r = await client.post(f"/v1/predict/{ROUTE}", json={"entities": entities, **extra})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]  # type: ignore[no-any-return]


# -- canary ------------------------------------------------------------------------------


def test_canary_share_of_ten_thousand_entities_is_close_to_the_percent() -> None:
    keys = [f"card_{i:06d}" for i in range(10_000)]
    share = sum(in_share(k, 10, ROUTE) for k in keys) / len(keys) * 100
    assert abs(share - 10) <= 2, share
    assert [in_share(k, 10, ROUTE) for k in keys[:500]] == [
        in_share(k, 10, ROUTE) for k in keys[:500]
    ]


async def test_canary_entities_get_the_canary_version_and_keep_it(
    make_project: MakeProject, serve: Serve
) -> None:
    project = make_project(latency_budget="5s", canary={"model": "fraud@canary", "percent": 10})
    canary = add_fraud_version_offline(project, alias="canary")
    assert canary == 2
    _, client = await serve(project)
    cards = CARDS[:300]
    expected = {k: canary if in_share(k, 10, ROUTE) else 1 for k in cards}
    assert 10 <= sum(v == canary for v in expected.values()) <= 60  # ~30 expected
    for repeat, mode in enumerate(("auto", "auto", "compute", "stored")):
        got: dict[str, int] = {}
        for start in range(0, len(cards), 25):
            for p in await predict(client, cards[start : start + 25], mode=mode):
                assert not p["degraded"], p
                got[p["entity"]] = p["model_version"]
        assert got == expected, f"round {repeat} ({mode})"
    # One entity at a time, as a client would ask: the same split.
    for key in cards[:40]:
        (p,) = await predict(client, [key])
        assert p["model_version"] == expected[key]


# -- shadow ------------------------------------------------------------------------------


def _point_shadow(project: Project, version: int | None = None) -> int:
    """Point ``fraud@shadow`` at ``version`` (a new copy of version 1 when ``None``)."""
    if version is None:
        return add_fraud_version_offline(project, alias="shadow")
    registry = Registry.from_project(project)
    try:
        registry.promote("fraud", version, alias="shadow", actor="tests")
    finally:
        registry.close()
    return version


def _slow_down(app: HybridApp, role: str, seconds: float) -> list[int]:
    """Make the model in ``role`` take ``seconds`` per call; return the list of call sizes."""
    model = app.state.models.get(ROUTE, role)
    assert model is not None
    sizes: list[int] = []

    def wrap(inner: PredictFn) -> PredictFn:
        def slow(matrix: Matrix) -> Prediction:
            sizes.append(len(matrix))
            time.sleep(seconds)
            return inner(matrix)

        return slow

    swap_predict(model.batcher, wrap)
    return sizes


async def test_shadow_on_the_same_version_changes_nothing_and_agrees(
    make_project: MakeProject, serve: Serve
) -> None:
    cards = CARDS[:60]
    _, plain = await serve(make_project(latency_budget="5s"))
    without = [await predict(plain, cards[i : i + 10], mode="compute") for i in range(0, 60, 10)]
    project = make_project(latency_budget="5s", shadow={"model": "fraud@shadow", "percent": 100})
    _point_shadow(project, 1)
    app, client = await serve(project)
    with_shadow = [
        await predict(client, cards[i : i + 10], mode="compute") for i in range(0, 60, 10)
    ]

    def essentials(batches: list[list[dict[str, Any]]]) -> list[tuple[Any, ...]]:
        return [
            (p["entity"], p["score"], p["source"], p["model_version"], p["degraded"])
            for batch in batches
            for p in batch
        ]

    assert essentials(with_shadow) == essentials(without)
    await app.state.router.flush()
    agree = await metric(client, "hybridserve_shadow_total", route=ROUTE, outcome="agree")
    assert agree == len(cards)
    for outcome in ("disagree", "dropped", "error"):
        assert await metric(client, "hybridserve_shadow_total", outcome=outcome) == 0


async def test_slow_or_failing_shadow_never_slows_or_changes_a_response(
    make_project: MakeProject, serve: Serve
) -> None:
    project = make_project(latency_budget="5s", shadow={"model": "fraud@shadow", "percent": 100})
    _point_shadow(project)
    app, client = await serve(project)
    # The shadow model is held inside its call until the test lets it go: every answer below
    # comes back while it is stuck, so none of them waited for it.
    gate = threading.Event()
    shadow = app.state.models.get(ROUTE, "shadow")
    assert shadow is not None
    shadow_calls: list[int] = []

    def wrap(inner: PredictFn) -> PredictFn:
        def held(matrix: Matrix) -> Prediction:
            shadow_calls.append(len(matrix))
            assert gate.wait(30)
            return inner(matrix)

        return held

    swap_predict(shadow.batcher, wrap)
    try:
        baseline = await predict(client, CARDS[:5], mode="compute")  # the shadow starts work
        for _ in range(5):
            got = await predict(client, CARDS[:5], mode="compute")
            assert [p["score"] for p in got] == [p["score"] for p in baseline]
            assert {p["model_version"] for p in got} == {1}
        assert shadow_calls and not gate.is_set()  # the shadow ran, and is still stuck
    finally:
        gate.set()
    # A shadow that fails is counted, and responses do not notice.
    model = app.state.models.get(ROUTE, "shadow")
    assert model is not None

    def broken(matrix: Matrix) -> Prediction:
        raise RuntimeError("shadow model is broken")

    await app.state.router.flush()
    swap_predict(model.batcher, lambda _: broken)
    got = await predict(client, CARDS[5:10], mode="compute")
    assert all(p["source"] == "online" and not p["degraded"] for p in got)
    await app.state.router.flush()
    assert await metric(client, "hybridserve_shadow_total", outcome="error") == 5


async def test_full_shadow_queue_drops_and_counts(make_project: MakeProject, serve: Serve) -> None:
    project = make_project(
        {"server": {"shadow_queue": 1}},
        latency_budget="5s",
        shadow={"model": "fraud@shadow", "percent": 100},
    )
    _point_shadow(project)
    app, client = await serve(project)
    held = threading.Event()
    model = app.state.models.get(ROUTE, "shadow")
    assert model is not None

    def gate(inner: PredictFn) -> PredictFn:
        def gated(matrix: Matrix) -> Prediction:
            assert held.wait(5)
            return inner(matrix)

        return gated

    swap_predict(model.batcher, gate)
    n = 40
    results = await asyncio.gather(*(predict(client, [CARDS[i]], mode="compute") for i in range(n)))
    assert all(r[0]["source"] == "online" for r in results)
    dropped = await metric(client, "hybridserve_shadow_total", route=ROUTE, outcome="dropped")
    held.set()
    await app.state.router.flush()
    compared = await metric(client, "hybridserve_shadow_total", route=ROUTE, outcome="agree")
    # One copy in the worker, one in the queue; everything else was dropped, not waited for.
    assert dropped >= n - 2, dropped
    assert dropped + compared == n
