"""Streamed answers: ``Accept: application/x-ndjson`` (or ``text/event-stream``) gets each
entity's answer as soon as its step has it, then a summary line."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conftest_server import uvicorn_in_thread
from hybridserve.config import Project
from hybridserve.server.app import HybridApp, create_app

MakeProject = Callable[..., Project]


@pytest.fixture
def running(make_project: MakeProject) -> Iterator[tuple[HybridApp, str]]:
    project = make_project(latency_budget="5s")
    app = create_app(project, access_log=False)
    with uvicorn_in_thread(app) as url:
        yield app, url


def _hold_the_model(app: HybridApp) -> threading.Event:
    """The primary model's batches wait until the returned event is set."""
    release = threading.Event()
    model = app.state.models.get("fraud")
    assert model is not None
    real = model.batcher.predict

    async def held(*args: Any, **kwargs: Any) -> Any:
        while not release.is_set():
            await asyncio.sleep(0.01)
        return await real(*args, **kwargs)

    model.batcher.predict = held  # type: ignore[method-assign]
    return release


def test_the_first_answer_arrives_before_the_last_is_computed(
    running: tuple[HybridApp, str],
) -> None:
    app, base = running
    with httpx.Client(base_url=base, timeout=20) as client:
        warm = client.post("/v1/predict/fraud", json={"entity": "card_000001", "mode": "compute"})
        assert warm.status_code == 200  # now in L1: the next ask is answered from the cache
        release = _hold_the_model(app)
        body = {"entities": ["card_000001", "card_000002"]}
        headers = {"accept": "application/x-ndjson", "x-request-id": "s1"}
        with client.stream("POST", "/v1/predict/fraud", json=body, headers=headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-ndjson"
            lines = r.iter_lines()
            first = json.loads(next(lines))
            # The stored answer came while the computed one is still held.
            assert (first["entity"], first["source"]) == ("card_000001", "cache")
            assert not release.is_set()
            release.set()
            second = json.loads(next(lines))
            assert (second["entity"], second["source"]) == ("card_000002", "online")
            summary = json.loads(next(lines))
            assert summary["summary"] is True and summary["answered"] == 2
            assert summary["request_id"] == "s1" and summary["unanswered"] == []
            assert list(lines) == []


def test_server_sent_events_and_errors_before_any_answer(running: tuple[HybridApp, str]) -> None:
    _, base = running
    with httpx.Client(base_url=base, timeout=20) as client:
        r = client.post(
            "/v1/predict/fraud",
            json={"entity": "card_000003", "mode": "compute"},
            headers={"accept": "text/event-stream"},
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.text.split("\n\n") if e]
        assert json.loads(events[0].removeprefix("data: "))["entity"] == "card_000003"
        head, data = events[1].split("\n", 1)
        assert head == "event: summary" and json.loads(data.removeprefix("data: "))["answered"] == 1
        # A request that fails before any answer is the ordinary JSON error.
        bad = client.post("/v1/predict/nope", json={}, headers={"accept": "application/x-ndjson"})
        assert bad.status_code == 404 and bad.json()["type"] == "RouteNotFound"
