"""Our own saturation is not a dependency failure: the loop-lag monitor and the breakers.

A store call that times out because the event loop itself was frozen (or saturated by its
own requests) must not charge the store's breaker; one that times out while the loop was idle
must. Failed write-backs must not open the breaker that guards reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from hybridserve.config import Project
from hybridserve.errors import StoreError
from hybridserve.routing.lag import LoopLag

MakeProject = Callable[..., Project]
Serve = Callable[[Project], Any]


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


def test_lateness_counts_only_after_the_call_started() -> None:
    clock = Clock()
    lag = LoopLag(clock=clock, threshold=0.002)
    lag.note(10.0, 0.3)  # a stall that ended before the call
    clock.t = 10.5
    started = clock.t
    lag.note(10.6, 0.001)  # ordinary jitter: not recorded
    lag.note(10.7, 0.04)
    lag.note(10.75, 0.5)  # a stall that began before the call: only its part after counts
    assert lag.since(started) == pytest.approx(0.04 + 0.25)
    assert lag.explains(started, 0.05)
    assert not LoopLag(clock=clock).explains(started, 0.05)


def test_old_lateness_is_forgotten() -> None:
    clock = Clock()
    lag = LoopLag(clock=clock, keep=5.0)
    lag.note(10.0, 0.5)
    lag.note(20.0, 0.003)
    assert lag.since(0.0) == pytest.approx(0.003)


async def test_a_stall_in_progress_counts_before_the_timer_fires() -> None:
    lag = LoopLag(interval=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.03)
        started = time.perf_counter()
        time.sleep(0.1)  # the loop is frozen; its timer has not had a chance to fire
        assert lag.since(started) > 0.05
    finally:
        lag.stop()


def _slow_store_read(app: Any, seconds: float) -> None:
    store = app.state.services.predictions
    real = store.get

    async def slow(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(seconds)
        return await real(*args, **kw)

    store.get = slow


@pytest.mark.slow
async def test_store_timeouts_while_the_loop_is_frozen_do_not_open_its_breaker(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(make_project(latency_budget="50ms"))
    router = app.state.router
    _slow_store_read(app, 0.005)  # a healthy store: 5 ms a read
    breaker = router.breaker("prediction_store")
    charged: list[int] = []
    real_failure = breaker.failure

    def failure() -> None:
        charged.append(1)
        real_failure()

    breaker.failure = failure  # type: ignore[method-assign]

    async def freeze_soon() -> None:
        await asyncio.sleep(0.002)
        time.sleep(0.12)  # the whole loop stops (a GC pause, SIGSTOP) while reads are out

    for n in range(8):
        router.cache.invalidate()
        # The loop on time again first: a request that comes in right after a freeze has
        # waited through it and is shed at the door (routing/admission.py).
        await asyncio.sleep(0.03)
        freeze = asyncio.ensure_future(freeze_soon())
        r = await client.post("/v1/predict/fraud", json={"entity": f"card_{n:06d}"})
        await freeze
        assert r.status_code == 200, r.text
    assert charged == [] and breaker.state == "closed"


@pytest.mark.slow
async def test_store_timeouts_with_an_idle_loop_do_open_its_breaker(
    make_project: MakeProject, serve: Serve
) -> None:
    # A 300 ms budget: a busy test machine's own lateness stays well under the quarter of
    # it (75 ms) that would excuse a timeout as the loop's.
    app, client = await serve(make_project(latency_budget="300ms"))
    router = app.state.router
    router.runs.interval = 60  # the run pointer is read once (its success would reset the count)
    _slow_store_read(app, 5.0)  # the store hangs
    for n in range(6):
        router.cache.invalidate()
        r = await client.post("/v1/predict/fraud", json={"entity": f"card_{n:06d}"})
        assert r.status_code == 200, r.text
    assert router.breaker("prediction_store").state == "open"


async def test_failed_write_backs_do_not_stop_store_reads(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(make_project())
    router = app.state.router
    store = app.state.services.predictions

    async def disk_full(records: Any) -> int:
        raise StoreError("database or disk is full")

    store.put = disk_full
    for n in range(12):
        r = await client.post("/v1/predict/fraud", json={"entity": f"card_{n:06d}"})
        assert r.status_code == 200, r.text
        await router.flush()
    assert router.breaker("prediction_store:write").state == "open"
    assert router.breaker("prediction_store").state == "closed"
    # Reads still go to the store: a record written earlier by another process is served.
    from hybridserve.records import PredictionRecord, now

    model = app.state.models.get("fraud")
    rec = PredictionRecord(
        entity="card_000399",
        route="fraud",
        score=0.125,
        model=model.name,
        model_version=model.version,
        source="batch",
        as_of=now() - 5,
        computed_at=now(),
        run_id="r1",
    )
    del store.put  # the class's own put again, for this one seeded record
    await store.put([rec])
    r = await client.post("/v1/predict/fraud", json={"entity": "card_000399", "mode": "stored"})
    (p,) = r.json()["predictions"]
    assert (p["source"], p["score"]) == ("batch", 0.125)


def test_current_lateness_is_the_latest_firing_or_how_overdue_the_timer_is() -> None:
    clock = Clock()
    lag = LoopLag(clock=clock, threshold=0.002)
    assert lag.current() == 0.0  # not watching a loop
    lag._handle = object()  # type: ignore[assignment]  # as if started
    lag._due = 10.01
    lag.note(10.0, 0.04)
    assert lag.current() == pytest.approx(0.04)
    lag.note(10.0, 0.001)  # jitter: the loop is on time again
    assert lag.current() == 0.0
    clock.t = 10.31  # the timer due at 10.01 has not fired: the loop is 300 ms behind
    assert lag.current() == pytest.approx(0.3)
