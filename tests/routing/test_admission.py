"""Admission: a predict request is shed at the door, fast, when it cannot be answered in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from hybridserve.config import Project
from hybridserve.errors import Overloaded
from hybridserve.routing.admission import Admission
from hybridserve.routing.lag import LoopLag

MakeProject = Callable[..., Project]
Serve = Callable[..., Any]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_refuses_past_the_in_flight_cap_and_when_the_loop_runs_late() -> None:
    clock = Clock()
    lag = LoopLag(clock=clock)
    gate = Admission(lag, max_in_flight=2, max_wait=0.5, clock=clock)
    assert gate.refuse(0.1) is None
    gate.enter()
    gate.enter()
    refused = gate.refuse(0.1)
    assert isinstance(refused, Overloaded) and "2 requests in flight" in refused.message
    gate.leave(clock.t, 0.1)
    assert gate.refuse(0.1) is None
    lag.note(clock.t, 0.040)  # the loop's timer fired 40 ms late
    assert gate.refuse(0.1) is None  # 40 ms of a 100 ms budget: answer it
    refused = gate.refuse(0.05)  # of a 50 ms budget: shed
    assert refused is not None and "40 ms behind" in refused.message
    lag.stop()


def _serve(gate: Admission, clock: Clock, *, took: float, budget: float = 0.1) -> None:
    """One request through ``gate`` that ends now, having taken ``took`` seconds."""
    arrived = gate.enter() - took
    gate.leave(arrived, budget)


async def test_late_answers_cut_the_limit_and_timely_ones_raise_it_again() -> None:
    clock = Clock()
    gate = Admission(LoopLag(clock=clock), max_in_flight=100, max_wait=0.5, clock=clock)
    gate.in_flight = 90  # a busy process: the limit is in use
    assert gate.limit == 100
    _serve(gate, clock, took=0.055)  # a little over its 50 ms target: a fifth off
    assert gate.limit == 80
    clock.t += 0.01
    _serve(gate, clock, took=0.08)  # the same episode (within a target's time): no second cut
    assert gate.limit == 80
    clock.t += 0.05
    _serve(gate, clock, took=0.5)  # ten times its target: half off
    assert gate.limit == 40
    for _ in range(200):
        _serve(gate, clock, took=0.08)
        clock.t += 0.05
    assert gate.limit == 4  # never below the floor
    gate.in_flight = 20
    for _ in range(40):  # answers on time raise it by about one per limit's worth of answers
        _serve(gate, clock, took=0.01)
    assert 9 < gate.limit < 11
    gate.in_flight = 0  # an idle process learns nothing: the limit stays where it is
    before = gate.limit
    _serve(gate, clock, took=0.01)
    assert gate.limit == before
    gate.in_flight = int(gate.limit) + 1
    refused = gate.refuse(0.1)
    assert refused is not None and "in flight" in refused.message


async def test_a_request_over_the_cap_is_shed_before_its_body_is_read(
    make_project: MakeProject, serve: Serve
) -> None:
    project = make_project({"server": {"admission": {"max_in_flight": 1}}})
    app, client = await serve(project)
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"entity": '
        await release.wait()
        yield b'"card_000001"}'

    first = asyncio.create_task(client.post("/v1/predict/fraud", content=slow_body()))
    while app.endpoint.admission.in_flight == 0:  # the first is admitted, waiting for its body
        await asyncio.sleep(0.01)
    shed = await client.post("/v1/predict/fraud", json={"entity": "card_000002"})
    assert shed.status_code == 503, shed.text
    assert shed.json()["type"] == "Overloaded" and "in flight" in shed.json()["error"]
    assert shed.headers["retry-after"] == "1" and shed.json()["request_id"]
    release.set()
    assert (await first).status_code == 200
    assert app.endpoint.admission.in_flight == 0
    again = await client.post("/v1/predict/fraud", json={"entity": "card_000002"})
    assert again.status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'hybridserve_requests_total{route="fraud",source="none",status="shed"} 1.0' in metrics


async def test_a_request_that_waited_for_a_frozen_loop_is_shed(
    make_project: MakeProject, serve: Serve
) -> None:
    _app, client = await serve(make_project(latency_budget="100ms"))
    first = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
    assert first.status_code == 200
    # The loop freezes for 300 ms (a long synchronous call, a GC pause); a request that comes
    # in then has already waited that long.
    time.sleep(0.3)
    shed = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
    assert shed.status_code == 503 and "behind" in shed.json()["error"], shed.text
    for _ in range(50):  # the loop is on time again: answered
        await asyncio.sleep(0.02)
        r = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
        if r.status_code == 200:
            break
    assert r.status_code == 200
