"""The prediction store's reads: a stored value that is not a renderable record is skipped;
a batch run's packed rows read back through the run's header."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from hybridserve.predictions import run_values
from hybridserve.predictions.run_values import RunHeader, header_key
from hybridserve.predictions.store import PredictionStore, prediction_key
from hybridserve.records import PredictionRecord, now
from hybridserve.storage import Entry, open_store, run_rows


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


async def test_packed_run_rows_read_back_through_their_header() -> None:
    kv = open_store(f"memory://packed-{uuid.uuid4().hex}", "t:")
    store = PredictionStore(kv)
    header = RunHeader("fraud", "r1", "fraud", 3, now() - 30, "fp")
    at = now() - 60
    rows = run_rows(["a", "b"], run_values.pack(np.array([0.25, 0.75]), np.array([0, 1])), [at, at])
    assert await store.put_run_rows(header, rows) == 2
    expected = [
        PredictionRecord("a", "fraud", 0.25, "fraud", 3, "batch", at, header.computed_at, 0,
                         run_id="r1", feature_fingerprint="fp"),
        PredictionRecord("b", "fraud", 0.75, "fraud", 3, "batch", at, header.computed_at, 1,
                         run_id="r1", feature_fingerprint="fp"),
    ]  # fmt: skip
    fresh = PredictionStore(kv)  # knows no header yet: reads it with the rows
    reads: list[int] = []
    inner = kv.get_run

    async def counted(*args: Any) -> Any:
        reads.append(1)
        return await inner(*args)

    kv.get_run = counted  # type: ignore[method-assign]
    assert await fresh.get("fraud", ["a", "b", "c"], run_id="r1") == [*expected, None]
    assert await fresh.get_run("fraud", "r1", ["b"]) == expected[1:]
    assert len(reads) == 2, "the header is read with the rows, once"
    # A route's own record newer than the run's wins, as for whole records.
    newer = _record("a", now() - 1)
    await store.put([newer])
    assert await fresh.get("fraud", ["a"], run_id="r1") == [newer]
    await store.drop_run("fraud", "r1")
    assert await kv.get_many([header_key("fraud", "r1")]) == [None]


async def test_a_packed_row_without_its_header_is_skipped_and_counted() -> None:
    kv = open_store(f"memory://headless-{uuid.uuid4().hex}", "t:")
    store = PredictionStore(kv)
    header = RunHeader("fraud", "r1", "fraud", 3, now() - 30, "fp")
    rows = run_rows(["a"], run_values.pack(np.array([0.25]), None), [now() - 60])
    await store.put_run_rows(header, rows)
    await kv.delete_many([header_key("fraud", "r1")])
    own = _record("a", now() - 3600)  # older than the run's row: served only as the fallback
    await store.put([own])
    assert await PredictionStore(kv).get("fraud", ["a"], run_id="r1") == [own]
    reader = PredictionStore(kv)
    assert await reader.get_run("fraud", "r1", ["a"]) == [None]
    assert reader.unreadable == 1


async def test_warming_merges_packed_rows_as_whole_records() -> None:
    kv = open_store(f"memory://warm-{uuid.uuid4().hex}", "t:")
    store = PredictionStore(kv)
    header = RunHeader("fraud", "w1", "fraud", 3, now() - 30, "fp")
    at = now() - 60
    await store.put_run_rows(header, run_rows(["a"], run_values.pack(np.array([0.5]), None), [at]))
    assert await store.warm("fraud", "w1") == 1
    (entry,) = await kv.get_many([prediction_key("fraud", "a")])
    assert entry is not None
    assert PredictionRecord.from_bytes(entry.value) == header.unpack(
        "a", b"\x01" + np.float64(0.5).tobytes(), at
    )
    assert await kv.get_many([header_key("fraud", "w1")]) == [None]
