"""``POST /v1/events/{stream}``: validation, 404 for unknown streams, the ingest scope."""

from __future__ import annotations

import time
from typing import Any

import orjson
from stream_helpers import STREAM, event, stream_project

from hybridserve.server import events as events_endpoint
from hybridserve.streaming.sources.memory import drop_memory_log, memory_log


async def _start(serve: Any, project: Any) -> Any:
    app, client = await serve(project)
    app.starlette.router.routes.extend(events_endpoint.routes())  # the lead mounts it in app.py
    return client


async def test_events_are_validated_and_appended(make_project: Any, serve: Any) -> None:
    project = stream_project(make_project)
    key = f"{project.stores.prefix}stream:{STREAM}"
    drop_memory_log(key)
    client = await _start(serve, project)
    now = time.time()

    one = await client.post(f"/v1/events/{STREAM}", json=event("card_000001", now))
    assert one.status_code == 202
    assert one.json() == {"stream": STREAM, "accepted": 1, "ids": ["1-0"]}
    many = [event("card_000002", now), event("card_000003", now)]
    two = await client.post(f"/v1/events/{STREAM}", json=many)
    assert two.status_code == 202 and two.json()["accepted"] == 2

    bad = [event("card_000004", now), {**event("card_000005", now), "amount": "lots"}]
    r = await client.post(f"/v1/events/{STREAM}", json=bad)
    assert r.status_code == 400
    assert r.json()["error"] == "events[1].amount: expected float, got 'lots'"
    missing = event("card_000006", now)
    del missing["card_id"]
    r = await client.post(f"/v1/events/{STREAM}", json=missing)
    assert r.status_code == 400 and r.json()["details"]["field"] == "card_id"
    r = await client.post(f"/v1/events/{STREAM}", content=b"{nope")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]

    log = memory_log(key)
    assert [orjson.loads(p)["card_id"] for _, p in log.entries] == [
        "card_000001",
        "card_000002",
        "card_000003",
    ]  # nothing of a rejected body was appended

    r = await client.post("/v1/events/nope", json=event("card_000001", now))
    assert r.status_code == 404 and "known streams" in r.json()["error"]


async def test_events_need_the_ingest_scope(
    make_project: Any, serve: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("HYBRIDSERVE_API_KEYS", "reader:k1:predict,feeder:k2:ingest")
    project = stream_project(make_project)
    drop_memory_log(f"{project.stores.prefix}stream:{STREAM}")
    client = await _start(serve, project)
    body = event("card_000001", time.time())
    assert (await client.post(f"/v1/events/{STREAM}", json=body)).status_code == 401
    r = await client.post(f"/v1/events/{STREAM}", json=body, headers={"x-api-key": "k1"})
    assert r.status_code == 403
    r = await client.post(f"/v1/events/{STREAM}", json=body, headers={"x-api-key": "k2"})
    assert r.status_code == 202
