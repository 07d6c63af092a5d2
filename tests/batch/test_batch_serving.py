"""The online router serves the published run until a new run completes, then switches."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from batch_helpers import cards, job, write_input

from hybridserve.batch import run_job
from hybridserve.config import Project

Factory = Callable[..., Project]


@pytest.mark.parametrize("l1_size", [0, 100_000])
async def test_router_switches_only_when_a_run_completes(
    batch_project: Factory, serve: Any, l1_size: int
) -> None:
    project = batch_project(
        {
            "old": job({"path": "data/old.parquet"}),
            "new": job({"path": "data/new.parquet"}),
        },
        server={"l1_cache_size": l1_size},
    )
    source = cards(project)
    col = source.schema.get_field_index("event_time")
    hour_ago = pc.subtract(source["event_time"], pa.scalar(3_600_000_000, pa.duration("us")))
    write_input(project, source.set_column(col, "event_time", hour_ago), "old.parquet")
    write_input(project, source, "new.parquet")
    await asyncio.to_thread(run_job, project, "old", run_id="old1")

    app, client = await serve(project)
    app.state.router.runs.interval = 0
    entities = ["card_000001", "card_000150", "card_000399"]

    async def served() -> list[tuple[str, str]]:
        r = await client.post("/v1/predict/fraud", json={"entities": entities})
        assert r.status_code == 200, r.text
        return [(p["source"], p["as_of"]) for p in r.json()["predictions"]]

    first = await served()
    assert {s for s, _ in first} == {"batch"}

    paused, resume = threading.Event(), threading.Event()

    def progress(done: int, total: int) -> None:
        if 0 < done < total and not paused.is_set():
            paused.set()
            assert resume.wait(30)

    running = asyncio.create_task(
        asyncio.to_thread(run_job, project, "new", run_id="new1", progress=progress)
    )
    try:
        assert await asyncio.to_thread(paused.wait, 30)
        during = await served()
        # Half a run is never served: the old run's records (from L1 or the store).
        assert [a for _, a in during] == [a for _, a in first]
        assert {s for s, _ in during} <= {"batch", "cache"}
    finally:
        resume.set()
        manifest = await running
    assert manifest.status == "completed"
    after = await served()
    assert all(b > a for (_, a), (_, b) in zip(first, after, strict=True)), (first, after)
    assert {s for s, _ in after} == {"batch"}
