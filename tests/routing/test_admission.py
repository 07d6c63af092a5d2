"""Admission: a predict request is shed at the door, fast, when it cannot be answered in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonschema

from hybridserve.config import Project
from hybridserve.errors import Overloaded
from hybridserve.routing import admission
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


def _window(gate: Admission, clock: Clock, *, late: int, budget: float = 0.1) -> None:
    """One window of answers through ``gate``, ``late`` of them over their target."""
    for i in range(admission.WINDOW):
        took = 0.15 if i < late else 0.01  # over or within the 100 ms budget
        arrived = gate.enter() - took
        gate.leave(arrived, budget)


async def test_late_windows_cut_the_limit_and_timely_ones_raise_it_again() -> None:
    clock = Clock()
    gate = Admission(LoopLag(clock=clock), max_in_flight=100, max_wait=0.75, clock=clock)
    assert gate.limit == 100
    gate.in_flight = 60  # a busy process: the limit is in use
    _window(gate, clock, late=10)  # a tail (16% late): no cut, and the limit is full
    assert gate.limit == 100
    _window(gate, clock, late=24)  # 37.5% late: that share off
    assert gate.limit == 62.5
    _window(gate, clock, late=64)  # all late: half off, no more
    assert gate.limit == 31.25
    for _ in range(20):
        _window(gate, clock, late=64)
    assert gate.limit == admission.MIN_LIMIT  # never below the floor
    _window(gate, clock, late=0)  # on time and used: one more
    assert gate.limit == admission.MIN_LIMIT + 1
    gate.in_flight = 0  # an idle process learns nothing: the limit stays where it is
    _window(gate, clock, late=0)
    assert gate.limit == admission.MIN_LIMIT + 1
    gate.in_flight = int(gate.limit)
    refused = gate.refuse(0.1)
    assert refused is not None and "in flight" in refused.message


async def test_late_windows_of_a_process_short_of_cpu_leave_the_limit_alone() -> None:
    # Stopped, frozen or waiting for a core another process holds: late whatever the limit,
    # and a cut would only turn the next load into refusals that come straight back.
    clock, cpu = Clock(), Clock()
    gate = Admission(
        LoopLag(clock=clock), max_in_flight=100, max_wait=0.75, clock=clock, cpu_clock=cpu
    )
    gate.in_flight = 60
    clock.t += 0.5  # half a second in which this process ran for 0.1 s
    cpu.t += 0.1
    _window(gate, clock, late=64)
    assert gate.limit == 100
    clock.t += 0.5  # the same lateness with the process busy all along: cut
    cpu.t += 0.5
    _window(gate, clock, late=64)
    assert gate.limit == 50


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
    spec = (await client.get("/openapi.json")).json()
    documented = spec["paths"]["/v1/predict/fraud"]["post"]["responses"]["503"]
    schema = {**documented["content"]["application/json"]["schema"], **spec}
    jsonschema.Draft202012Validator(schema).validate(shed.json())  # the shed answer is documented
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
    await asyncio.sleep(0.001)  # a later turn of the loop, where a server runs the request
    shed = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
    assert shed.status_code == 503 and "behind" in shed.json()["error"], shed.text
    for _ in range(50):  # the loop is on time again: answered
        await asyncio.sleep(0.02)
        r = await client.post("/v1/predict/fraud", json={"entity": "card_000001"})
        if r.status_code == 200:
            break
    assert r.status_code == 200
