"""``POST /v1/events/{stream}``: validation, limits, 404 for unknown streams, 409 for an
in-process source, the ingest scope."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from stream_helpers import STREAM, event, stream_project


def _replay_project(make_project: Any, tmp_path: Path, **stream: Any) -> tuple[Any, Path]:
    """A stream whose source is a replay directory: the endpoint appends to ``ingest.jsonl``."""
    folder = tmp_path / "ingest"
    folder.mkdir(exist_ok=True)
    project = stream_project(make_project, source={"kind": "replay", "path": str(folder)}, **stream)
    return project, folder / "ingest.jsonl"


def _appended(target: Path) -> list[dict[str, Any]]:
    if not target.exists():
        return []
    return [orjson.loads(line) for line in target.read_bytes().splitlines()]


async def test_events_are_validated_and_appended(
    make_project: Any, serve: Any, tmp_path: Path
) -> None:
    project, target = _replay_project(make_project, tmp_path)
    _, client = await serve(project)
    now = time.time()

    one = await client.post(f"/v1/events/{STREAM}", json=event("card_000001", now))
    assert one.status_code == 202
    assert one.json() == {"stream": STREAM, "accepted": 1, "ids": ["ingest.jsonl:0"]}
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

    assert [e["card_id"] for e in _appended(target)] == [
        "card_000001",
        "card_000002",
        "card_000003",
    ]  # nothing of a rejected body was appended

    r = await client.post("/v1/events/nope", json=event("card_000001", now))
    assert r.status_code == 404 and "known streams" in r.json()["error"]


@pytest.mark.parametrize(
    ("when", "why"),
    [
        ("NaN", "expected timestamp"),
        ("-inf", "expected timestamp"),
        (-1e11, "in the past (max_past)"),
        ("0001-01-01T00:00:00", "in the past (max_past)"),
        ("9999-12-31T00:00:00", "in the future (max_future)"),
    ],
)
async def test_event_times_must_be_finite_and_within_the_past_and_future_bounds(
    make_project: Any, serve: Any, tmp_path: Path, when: Any, why: str
) -> None:
    project, target = _replay_project(make_project, tmp_path)
    _, client = await serve(project)
    body = orjson.dumps([event("card_000001", time.time()), event("card_000002", 0.0)])
    body = body.replace(b'"event_time":0.0', b'"event_time":' + orjson.dumps(when))
    r = await client.post(f"/v1/events/{STREAM}", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("events[1].event_time: ")
    assert why in r.json()["error"]
    assert r.json()["details"] == {"index": 1, "field": "event_time"}
    assert _appended(target) == []


async def test_the_past_bound_defaults_to_a_week_beyond_the_windows_and_is_configurable(
    make_project: Any, serve: Any, tmp_path: Path
) -> None:
    project, target = _replay_project(make_project, tmp_path)
    cfg = project.streams[STREAM]
    # the fraud stream: 1h windows, 60s lateness
    assert cfg.past_bound == 7 * 86400 + 3600 + 60
    _, client = await serve(project)
    now = time.time()
    r = await client.post(f"/v1/events/{STREAM}", json=event("card_000001", now - 6 * 86400))
    assert r.status_code == 202  # a backfill of last week's events
    r = await client.post(f"/v1/events/{STREAM}", json=event("card_000001", now - 8 * 86400))
    assert r.status_code == 400 and "more than 608460s in the past" in r.json()["error"]

    strict, _ = _replay_project(make_project, tmp_path, max_past="1h")
    _, client = await serve(strict)
    r = await client.post(f"/v1/events/{STREAM}", json=event("card_000001", now - 7200))
    assert r.status_code == 400 and "more than 3600s in the past" in r.json()["error"]
    assert len(_appended(target)) == 1


async def test_oversize_events_and_fields_are_refused_with_413(
    make_project: Any, serve: Any, tmp_path: Path
) -> None:
    project, target = _replay_project(make_project, tmp_path)
    _, client = await serve(project)
    now = time.time()
    huge = event("card_000001", now, merchant_id="m" * 1_000_000)  # under the 1 MiB body limit
    r = await client.post(f"/v1/events/{STREAM}", json=huge)
    assert r.status_code == 413
    assert r.json()["error"].startswith("event is 1000")
    assert r.json()["error"].endswith(" bytes, more than max_event_size (65536)")
    long = event("card_000001", now, merchant_id="m" * 2000)
    r = await client.post(f"/v1/events/{STREAM}", json=long)
    assert r.status_code == 413
    assert r.json()["error"] == "merchant_id: longer than max_field_size (1024 bytes)"
    assert r.json()["details"]["field"] == "merchant_id"
    # multi-byte characters count as their UTF-8 bytes
    r = await client.post(
        f"/v1/events/{STREAM}", json=event("card_000001", now, merchant_id="é" * 600)
    )
    assert r.status_code == 413

    small, _ = _replay_project(make_project, tmp_path, max_event_size="1KiB", max_field_size=600)
    _, client = await serve(small)
    fields = {"merchant_id": "m" * 500, "merchant_category": "c" * 500}
    r = await client.post(f"/v1/events/{STREAM}", json=[event("card_000002", now, **fields)])
    assert r.status_code == 413
    assert r.json()["error"].startswith("events[0].event is ")
    assert "more than max_event_size (1024)" in r.json()["error"]
    ok = await client.post(
        f"/v1/events/{STREAM}", json=event("card_000003", now, merchant_id="m" * 600)
    )
    assert ok.status_code == 202
    assert [e["card_id"] for e in _appended(target)] == ["card_000003"]


async def test_events_for_an_in_process_source_are_refused(make_project: Any, serve: Any) -> None:
    """No consumer runs in the server: a memory log there would be written and never read."""
    project = stream_project(make_project)  # source: memory
    _, client = await serve(project)
    r = await client.post(f"/v1/events/{STREAM}", json=event("card_000001", time.time()))
    assert r.status_code == 409
    error = r.json()["error"]
    assert "in-process (memory) source" in error and "no consumer runs in this server" in error
    assert f"streams.{STREAM}.source.kind" in error


async def test_events_need_the_ingest_scope(
    make_project: Any, serve: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    monkeypatch.setenv("HYBRIDSERVE_API_KEYS", "reader:k1:predict,feeder:k2:ingest")
    project, _ = _replay_project(make_project, tmp_path)
    _, client = await serve(project)
    body = event("card_000001", time.time())
    assert (await client.post(f"/v1/events/{STREAM}", json=body)).status_code == 401
    r = await client.post(f"/v1/events/{STREAM}", json=body, headers={"x-api-key": "k1"})
    assert r.status_code == 403
    r = await client.post(f"/v1/events/{STREAM}", json=body, headers={"x-api-key": "k2"})
    assert r.status_code == 202


async def test_events_are_produced_to_a_kafka_topic_keyed_by_entity(
    make_project: Any, serve: Any, kafka_brokers: str
) -> None:
    """The endpoint produces to the stream's topic (no consumer joins the group), and a
    consumer reads the events back from it, one entity's events in one partition."""
    import uuid

    from stream_helpers import KAFKA_TEST_SETTINGS

    from hybridserve.streaming import open_io

    tag = uuid.uuid4().hex[:10]
    source = {"kind": "kafka", "brokers": kafka_brokers, "topic": f"hs_test_{tag}"}
    source.update(KAFKA_TEST_SETTINGS, group=f"g_{tag}")
    project = stream_project(make_project, source=source)
    _, client = await serve(project)
    now = time.time()
    sent = [event(f"card_{i % 3:06d}", now - 10 + i) for i in range(9)]
    r = await client.post(f"/v1/events/{STREAM}", json=sent)
    assert r.status_code == 202 and r.json()["accepted"] == 9
    partition_of = {}
    for e, entry_id in zip(sent, r.json()["ids"], strict=True):
        partition = entry_id.split("-")[0]
        assert partition_of.setdefault(e["card_id"], partition) == partition

    io = open_io(project, STREAM, consumer="reader")
    await io.source.start()
    try:
        got: list[Any] = []
        deadline = time.monotonic() + 20.0
        while len(got) < 9 and time.monotonic() < deadline:
            got += await io.source.read(9, 0.2)
        assert sorted(orjson.loads(e.payload)["event_id"] for e in got) == sorted(
            e["event_id"] for e in sent
        )
    finally:
        await io.close()
