"""The consumer on the in-process source and the SQLite store: validation, lateness, poison
events, replay offsets and alias moves."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from stream_helpers import (
    STREAM,
    append_events,
    consume,
    dumps,
    event,
    fresh_memory_log,
    predictions,
    stream_project,
    windows,
)

from hybridserve.services import Services


async def test_bad_events_are_dead_lettered_with_reasons_and_the_stream_keeps_flowing(
    make_project: Any,
) -> None:
    project = stream_project(make_project)
    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    good = [event("card_000001", now - 5), event("card_000002", now - 4)]
    missing = event("card_000003", now - 3)
    del missing["card_id"]
    bad = [
        b"{not json",
        orjson.dumps(missing),
        orjson.dumps({**event("card_000004", now - 2), "amount": "abc"}),
        orjson.dumps(event("card_000005", now + 3600)),
    ]
    try:
        await append_events(services, [*bad[:2], *dumps(good[:1]), *bad[2:], *dumps(good[1:])])
        _, totals = await consume(services)
        reasons = [d["reason"] for d in log.dead_letters]
        assert len(reasons) == 4
        assert reasons[0].startswith("bad JSON")
        assert reasons[1] == "card_id: required field is missing"
        assert reasons[2].startswith("amount: expected float")
        assert "in the future" in reasons[3]
        assert log.dead_letters[0]["payload"] == "{not json"
        assert totals.scored == 2 and not log.pending
        assert {orjson.loads(p)["event_id"] for _, p in log.outputs} == {
            e["event_id"] for e in good
        }
        got = await predictions(services, ["card_000001", "card_000002"])
        assert {v[4] for v in got.values()} == {"stream"}
        assert got["card_000001"][1] == good[0]["event_time"]
    finally:
        await services.close()


async def test_late_events_within_lateness_count_later_ones_are_dead_lettered(
    make_project: Any,
) -> None:
    project = stream_project(make_project, allowed_lateness=60)
    log = fresh_memory_log(project)
    services = Services.open(project)
    card, t0 = "card_000007", time.time() - 300
    try:
        await append_events(services, dumps([event(card, t0), event(card, t0 + 100, amount=20)]))
        await consume(services)
        before = (await windows(services, [card]))[card]
        assert before["txn_count_10m"] == 2 and before["amount_sum_10m"] == 30
        # 50 s behind the watermark: within the lateness, counts in its bucket.
        await append_events(services, dumps([event(card, t0 + 50, amount=5)]))
        await consume(services)
        within = (await windows(services, [card]))[card]
        assert within["txn_count_10m"] == 3 and within["amount_sum_10m"] == 35
        # 200 s behind: late; counted, dead-lettered, aggregates unchanged.
        await append_events(services, dumps([event(card, t0 - 100, amount=1000)]))
        _, totals = await consume(services)
        assert totals.late == 1
        assert (await windows(services, [card]))[card] == within
        assert log.dead_letters[-1]["reason"].startswith("late:")
    finally:
        await services.close()


async def test_an_event_failing_within_its_batch_is_dead_lettered_alone_with_its_error(
    make_project: Any,
) -> None:
    """The batch is split until the failing events stand alone: their neighbours are
    processed at their first delivery, and nothing is redelivered."""
    project = stream_project(make_project, max_deliveries=3)
    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    events = [event(f"card_{i % 40:06d}", now - 100 + i * 0.1) for i in range(168)]
    poison = {events[i]["event_id"] for i in range(5, 168, 21)}
    assert len(poison) == 8
    try:
        await append_events(services, dumps(events))

        def explode(entities: list[str], rows: Any, kw: dict[str, Any]) -> None:
            if poison & set(kw["event_ids"]):
                raise RuntimeError("model crashed on this event")

        totals = await _run_wrapped(services, explode, until_idle=0.5)
        assert sorted(orjson.loads(d["payload"])["event_id"] for d in log.dead_letters) == sorted(
            poison
        )
        assert {d["reason"] for d in log.dead_letters} == {
            "failed: RuntimeError: model crashed on this event"
        }
        assert {d["deliveries"] for d in log.dead_letters} == {1}
        assert totals.scored == 160 and totals.dead == 8 and totals.failures == 0
        assert not log.pending
        emitted = [orjson.loads(p)["event_id"] for _, p in log.outputs]
        assert sorted(emitted) == sorted(
            e["event_id"] for e in events if e["event_id"] not in poison
        )
        counts = await windows(services, [f"card_{i:06d}" for i in range(40)])
        assert sum(v["txn_count_10m"] for v in counts.values()) == 160  # none counted twice
    finally:
        await services.close()


async def test_a_poison_event_is_dead_lettered_after_max_deliveries_with_its_last_error(
    make_project: Any,
) -> None:
    """A batch of which nothing goes through fails as a whole (the events are not shown to be
    at fault) and is redelivered, until the entry reaches ``max_deliveries``."""
    project = stream_project(make_project, max_deliveries=3)
    log = fresh_memory_log(project)
    services = Services.open(project)
    try:
        await append_events(services, dumps([event("card_000001", time.time() - 5)]))

        def explode(entities: list[str], rows: Any, kw: dict[str, Any]) -> None:
            raise RuntimeError("model crashed on this event")

        totals = await _run_wrapped(services, explode, until_idle=0.5)
        assert [d["reason"] for d in log.dead_letters] == [
            "poison: delivered 4 times (max 3); "
            "last error: RuntimeError: model crashed on this event"
        ]
        assert log.dead_letters[0]["deliveries"] == 4
        assert totals.scored == 0 and totals.failures == 3 and not log.pending
    finally:
        await services.close()


async def _appended(
    project: Any, events: list[dict[str, Any]], read: Callable[[Any, int, float], Any]
) -> tuple[Services, Any]:
    """Services and the stream's source after appending ``events``; the source reads through
    ``read(real_read, max_items, block)``."""
    from hybridserve.streaming import open_source

    fresh_memory_log(project)
    services = Services.open(project)
    await append_events(services, dumps(events))
    source = open_source(project, STREAM)
    real = source.read

    async def wrapped(max_items: int, block: float) -> Any:
        return await read(real, max_items, block)

    source.read = wrapped  # type: ignore[method-assign]
    return services, source


async def test_until_idle_counts_from_empty_reads_not_from_start_up(make_project: Any) -> None:
    """A consumer whose first read is slow (a loaded machine, a slow network) must not stop
    before it has read anything: it is idle only once its reads come back empty."""
    now = time.time()
    events = [event(f"card_{i:06d}", now - 10 + i * 0.1) for i in range(20)]
    calls = 0

    async def slow_first_read(read: Any, max_items: int, block: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.6)
        return await read(max_items, block)

    services, source = await _appended(stream_project(make_project), events, slow_first_read)
    try:
        totals = await _run_wrapped(services, lambda *_: None, until_idle=0.2, source=source)
        assert totals.scored == 20
    finally:
        await services.close()


async def _run_wrapped(
    services: Services,
    hook: Callable[[list[str], Any, dict[str, Any]], None],
    until_idle: float,
    source: Any = None,
) -> Any:
    """Run a consumer whose scorer calls ``hook(entities, rows, kwargs)`` before each call."""
    from hybridserve.streaming import StreamConsumer

    consumer = StreamConsumer(services, STREAM, poll_interval=0, source=source)
    real = consumer.processor.scorer
    assert real is not None

    class Wrapped:
        runtime = real.runtime

        def score_rows(self, entities: list[str], rows: Any, **kw: Any) -> Any:
            hook(entities, rows, kw)
            return real.score_rows(entities, rows, **kw)

    consumer.processor.scorer = Wrapped()  # type: ignore[assignment]
    try:
        return await consumer.run(until_idle=until_idle)
    finally:
        await consumer.close()


async def _scored_rows(project: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The feature rows the stream's scorer was given for ``events``."""
    fresh_memory_log(project)
    services = Services.open(project)
    rows: list[dict[str, Any]] = []
    try:
        await append_events(services, dumps(events))
        totals = await _run_wrapped(services, lambda _e, r, _kw: rows.extend(r), until_idle=0.3)
        assert totals.scored == len(events)
    finally:
        await services.close()
    return rows


async def test_a_route_reading_the_window_view_scores_each_event_with_its_windows(
    make_project: Any,
) -> None:
    now = time.time()
    events = [event("card_000001", now - 30 + i, amount=10.0 * (i + 1)) for i in range(3)]
    stream_project(make_project)
    project = make_project(
        features=[
            "card_profile",
            "card_txn_windows:txn_count_10m",
            "card_txn_windows:amount_sum_10m",
        ]
    )
    rows = await _scored_rows(project, events)
    assert [r["txn_count_10m"] for r in rows] == [1.0, 2.0, 3.0]
    assert [r["amount_sum_10m"] for r in rows] == [10.0, 30.0, 60.0]
    assert all("amount_max_1h" not in r and "amount_mean_30d" in r for r in rows)


async def test_a_route_not_reading_the_window_view_gets_only_its_own_features(
    make_project: Any,
) -> None:
    now = time.time()
    rows = await _scored_rows(
        stream_project(make_project), [event("card_000001", now - 5 + i) for i in range(2)]
    )
    # Both events are scored (counted above) from one row: the card's stored features, as
    # nothing in them depends on the event.
    assert len(rows) == 1
    assert all("amount_mean_30d" in r and "txn_count_10m" not in r for r in rows)


async def test_reads_that_pile_up_during_a_slow_batch_are_processed_together(
    make_project: Any,
) -> None:
    """Small reads queued behind a slow batch join into one batch (up to batch_size), rather
    than each paying a batch's fixed costs in turn."""
    now = time.time()
    events = [event(f"card_{i:06d}", now - 10 + i * 0.1) for i in range(40)]

    async def small_reads(read: Any, max_items: int, block: float) -> Any:
        return await read(min(max_items, 4), block)

    project = stream_project(make_project, batch_size=12)
    services, source = await _appended(project, events, small_reads)
    calls: list[int] = []

    def slow_first(entities: list[str], rows: Any, kw: dict[str, Any]) -> None:
        calls.append(len(entities))
        if len(calls) == 1:
            time.sleep(0.3)  # the queue fills up meanwhile

    try:
        totals = await _run_wrapped(services, slow_first, until_idle=0.3, source=source)
        assert totals.scored == 40
        assert max(calls) == 12  # reads of four joined up to batch_size, never beyond
        assert totals.batches < 10
    finally:
        await services.close()


async def test_a_slow_model_bounds_what_is_read_ahead_to_max_in_flight(
    make_project: Any,
) -> None:
    """Backpressure: while the model is slow, entries read and not yet acknowledged never
    exceed ``max_in_flight``, and the reader does read ahead up to it."""
    now = time.time()
    events = [event(f"card_{i % 30:06d}", now - 100 + i * 0.1) for i in range(300)]
    outstanding: set[str] = set()
    most = 0

    async def counted(read: Any, max_items: int, block: float) -> Any:
        nonlocal most
        entries = await read(max_items, block)
        outstanding.update(e.id for e in entries)
        most = max(most, len(outstanding))
        return entries

    project = stream_project(make_project, batch_size=20, max_in_flight=50)
    services, source = await _appended(project, events, counted)
    real_ack = source.ack

    async def ack(ids: Any) -> None:
        await real_ack(ids)
        outstanding.difference_update(ids)

    source.ack = ack
    try:
        totals = await _run_wrapped(
            services, lambda *_: time.sleep(0.05), until_idle=0.3, source=source
        )
        assert totals.scored == 300
        assert 40 < most <= 50
    finally:
        await services.close()


async def test_until_idle_waits_for_entries_pending_on_a_dead_consumer(
    make_project: Any,
) -> None:
    """Entries a dead consumer left pending are work left to do: a drain claims them once
    they are idle for claim_idle, even when that is longer than until_idle."""
    from hybridserve.streaming import open_source

    project = stream_project(make_project, claim_idle=0.8)
    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    try:
        events = [event(f"card_{i:06d}", now - 10 + i) for i in range(8)]
        await append_events(services, dumps(events))
        ghost = open_source(project, STREAM, consumer="ghost")
        await ghost.read(5, 0)  # read, never acknowledged: the ghost died
        _, totals = await consume(services, until_idle=0.2, consumer="c2")
        assert totals.scored == 8
        assert not log.pending
    finally:
        await services.close()


async def test_a_reclaimed_entry_is_judged_late_by_the_watermark_at_its_stream_position(
    make_project: Any,
) -> None:
    """Entries a dead consumer left pending are processed after later entries of the same
    entity moved its watermark on; they are late only if they were late in stream order."""
    from hybridserve.streaming import open_source

    project = stream_project(make_project, claim_idle=1.0, allowed_lateness=60)
    log = fresh_memory_log(project)
    services = Services.open(project)
    base = time.time() - 1000
    first = [event("card_000001", base + i) for i in range(5)]
    first[2]["event_time"] = base - 100  # late in stream order too: 101 s behind base + 1
    later = [event("card_000001", base + 100 + i) for i in range(5)]
    try:
        from hybridserve.streaming import StreamConsumer

        consumer = StreamConsumer(services, STREAM, poll_interval=0, consumer="c2")
        await append_events(services, dumps(first))
        ghost = open_source(project, STREAM, consumer="ghost")
        assert len(await ghost.read(5, 0)) == 5  # read, never acknowledged: the ghost died
        await append_events(services, dumps(later))
        try:
            totals = await consumer.run(until_idle=0.2)
        finally:
            await consumer.close()
        assert [d["entry_id"] for d in log.dead_letters] == ["3-0"]
        assert log.dead_letters[0]["reason"].startswith("late: 101.000s behind")
        assert totals.scored == 9 and not log.pending
        counts = await windows(services, ["card_000001"])
        assert counts["card_000001"]["txn_count_10m"] == 9
    finally:
        await services.close()


async def test_embedded_window_state_and_seen_set_expire_after_dedup_ttl(
    make_project: Any,
) -> None:
    """As on Redis: an entity's window state and the ids of its events are forgotten
    ``dedup_ttl`` after the last commit that wrote them."""
    from hybridserve.streaming.state import seen_key, state_key

    project = stream_project(make_project, dedup_ttl=1.0)
    fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    events = [event("card_000001", now - 10 + i) for i in range(3)]
    keys = [state_key(STREAM, "card_000001"), seen_key(STREAM, events[0]["event_id"])]
    try:
        await append_events(services, dumps(events))
        _, totals = await consume(services)
        assert totals.scored == 3
        assert None not in await services.online_kv.get_many(keys)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await services.online_kv.get_many(keys) == [None, None]:
                break
            await asyncio.sleep(0.2)
        assert await services.online_kv.get_many(keys) == [None, None]
    finally:
        await services.close()


async def test_an_embedded_commit_writes_states_and_seen_set_together(
    make_project: Any,
) -> None:
    """A commit that fails part way leaves neither the window states nor the seen-set."""
    from hybridserve.errors import StoreError
    from hybridserve.streaming.state import KVStateStore, state_key

    project = stream_project(make_project)
    services = Services.open(project)
    kv = services.online_kv
    real = kv.put_many

    async def put_many(writes: Any) -> int:
        if any(w.key.startswith("s:") for w in writes):
            raise StoreError("the disk is full")
        return await real(writes)

    try:
        store = KVStateStore(kv, STREAM, 60.0)
        kv.put_many = put_many  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            await store.commit([("card_000001", 0, b"{}")], ["e1"], [])
        kv.put_many = real  # type: ignore[method-assign]
        assert await kv.get_many([state_key(STREAM, "card_000001")]) == [None]
        await store.close()
    finally:
        await services.close()


async def test_a_second_consumer_process_on_an_embedded_store_is_refused(
    make_project: Any, tmp_path: Any
) -> None:
    from hybridserve.errors import ConfigError
    from hybridserve.streaming import StreamConsumer

    project = stream_project(make_project)
    assert project.source_file is not None
    out = tmp_path / "out"
    with out.open("wb") as f:
        command = [sys.executable, "-m", "hybridserve", "stream", "run", STREAM]
        proc = subprocess.Popen(
            [*command, "-p", str(project.source_file)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    services = Services.open(project)
    try:
        deadline = time.monotonic() + 60
        while b"consuming as" not in out.read_bytes() and time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()
            await asyncio.sleep(0.1)
        with pytest.raises(ConfigError, match=r"another process \(pid \d+\) is consuming"):
            StreamConsumer(services, STREAM, poll_interval=0)
        proc.kill()  # the lock goes with the process, however it dies
        proc.wait()
        await StreamConsumer(services, STREAM, poll_interval=0).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await services.close()


async def test_replay_source_resumes_from_its_recorded_offset(
    make_project: Any, tmp_path: Any
) -> None:
    folder = tmp_path / "replay"
    folder.mkdir()
    now = time.time()
    events = [event(f"card_{i % 20:06d}", now - 100 + i * 0.1) for i in range(100)]
    (folder / "a.jsonl").write_bytes(b"\n".join(dumps(events[:70])) + b"\n")
    project = stream_project(
        make_project, source={"kind": "replay", "path": str(folder)}, batch_size=30
    )
    services = Services.open(project)
    try:
        from hybridserve.streaming import StreamConsumer

        first = StreamConsumer(services, STREAM, poll_interval=0)
        await first.source.start()
        for _ in range(2):  # two batches processed and acknowledged, then the consumer "dies"
            await first.processor.process(await first.source.read(30, 0))
        await first.source.read(30, 0)  # read, never acknowledged
        (folder / "b.jsonl").write_bytes(b"\n".join(dumps(events[70:])) + b"\n")
        second, totals = await consume(services)
        assert totals.read == 40 and totals.duplicates == 0
        assert len(second.source.log.outputs) == 40  # type: ignore[attr-defined]
        _, again = await consume(services)
        assert again.read == 0
        # A file added after every earlier one was read completely is read too.
        later = [event(f"card_{i % 20:06d}", now - 50 + i * 0.1) for i in range(100, 110)]
        (folder / "c.jsonl").write_bytes(b"\n".join(dumps(later)) + b"\n")
        _, more = await consume(services)
        assert more.read == 10 and more.duplicates == 0
        # Rows appended to the last file after it was read to its end are read too
        # (the events endpoint appends to one file), and a half-written line waits.
        appended = [event(f"card_{i % 20:06d}", now - 40 + i * 0.1) for i in range(110, 115)]
        with (folder / "c.jsonl").open("ab") as f:
            f.write(b"\n".join(dumps(appended)) + b"\n" + b'{"event_id": "half')
        _, tail = await consume(services)
        assert tail.read == 5 and tail.duplicates == 0
        counts = await windows(services, [f"card_{i:06d}" for i in range(20)])
        assert sum(v["txn_count_10m"] for v in counts.values()) == 115
    finally:
        await services.close()


async def test_replay_source_reads_files_named_before_the_one_it_read_last(
    make_project: Any, tmp_path: Any
) -> None:
    """Each file has its own offset: a file that appears later with an earlier name (a
    demo's ``demo-<ns>.jsonl`` after the events endpoint created ``ingest.jsonl``) is read,
    and so are rows appended to a file named before the last one read."""
    folder = tmp_path / "replay"
    folder.mkdir()
    now = time.time()
    events = [event(f"card_{i % 10:06d}", now - 100 + i * 0.1) for i in range(60)]
    project = stream_project(make_project, source={"kind": "replay", "path": str(folder)})
    services = Services.open(project)
    try:
        from hybridserve.streaming import open_source

        ingest = open_source(project, STREAM, kv=services.online_kv)
        await ingest.append(dumps(events[:20]))  # as POST /v1/events does
        _, first = await consume(services)
        assert first.read == 20
        (folder / "demo-1764620000.jsonl").write_bytes(b"\n".join(dumps(events[20:50])) + b"\n")
        _, demo = await consume(services)
        assert demo.read == 30 and demo.duplicates == 0
        await ingest.append(dumps(events[50:]))
        _, more = await consume(services)
        assert more.read == 10 and more.duplicates == 0
        _, again = await consume(services)
        assert again.read == 0
        counts = await windows(services, [f"card_{i:06d}" for i in range(10)])
        assert sum(v["txn_count_10m"] for v in counts.values()) == 60
    finally:
        await services.close()


async def test_replay_source_takes_over_a_directory_offset_saved_by_earlier_versions(
    make_project: Any, tmp_path: Any
) -> None:
    from hybridserve.storage import Entry
    from hybridserve.streaming import open_source

    folder = tmp_path / "replay"
    folder.mkdir()
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        (folder / name).write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(5)))
    project = stream_project(make_project, source={"kind": "replay", "path": str(folder)})
    services = Services.open(project)
    try:
        source = open_source(project, STREAM, kv=services.online_kv)
        old = orjson.dumps({"file": "b.jsonl", "row": 3})
        await services.online_kv.put_many([Entry(f"ro:{STREAM}", old, 0.0)])
        await source.start()
        ids = [e.id for e in await source.read(100, 0)]
        assert ids == ["b.jsonl:3", "b.jsonl:4"] + [f"c.jsonl:{i}" for i in range(5)]
    finally:
        await services.close()


async def test_an_alias_move_reaches_a_running_consumer(make_project: Any) -> None:
    from fraud_versions import add_fraud_version
    from hybridserve.streaming import StreamConsumer

    project = stream_project(make_project)
    fresh_memory_log(project)
    services = Services.open(project)
    card, now = "card_000009", time.time()
    try:
        consumer = StreamConsumer(services, STREAM, poll_interval=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        await append_events(services, dumps([event(card, now - 10)]))
        await asyncio.sleep(0.5)
        assert (await predictions(services, [card]))[card][3] == 1
        v2 = await asyncio.to_thread(add_fraud_version, services.registry, project, "production")
        await asyncio.sleep(0.5)
        await append_events(services, dumps([event(card, now - 5)]))
        await asyncio.sleep(0.5)
        stop.set()
        await task
        await consumer.close()
        assert (await predictions(services, [card]))[card][3] == v2
    finally:
        await services.close()


async def test_one_bad_event_time_among_valid_events_dead_letters_only_itself(
    make_project: Any,
) -> None:
    project = stream_project(make_project)
    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    valid = [event(f"card_{i % 40:06d}", now - 100 + i * 0.1) for i in range(160)]
    bad = [event(f"card_{i:06d}", "NaN") for i in range(8)]
    mixed = list(valid)
    for n, b in enumerate(bad):
        mixed.insert(n * 21 + 3, b)
    try:
        await append_events(services, dumps(mixed))
        _, totals = await consume(services)
        assert sorted(orjson.loads(d["payload"])["event_id"] for d in log.dead_letters) == sorted(
            b["event_id"] for b in bad
        )
        assert {d["reason"] for d in log.dead_letters} == {
            "event_time: expected timestamp, got 'NaN'"
        }
        assert totals.scored == 160 and totals.dead == 8 and totals.failures == 0
        assert len(log.outputs) == 160 and not log.pending
    finally:
        await services.close()


async def test_event_times_not_finite_or_too_far_in_the_past_are_dead_lettered(
    make_project: Any,
) -> None:
    """Such a time would be scored and stored as the prediction's ``as_of``."""
    project = stream_project(make_project, max_past="2h")
    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    card = "card_000001"
    times = ["NaN", "-inf", "inf", -1e11, "0001-01-01T00:00:00", now - 3 * 3600]
    try:
        await append_events(services, dumps([event(card, t) for t in times]))
        _, totals = await consume(services)
        reasons = [d["reason"] for d in log.dead_letters]
        assert reasons[:3] == [f"event_time: expected timestamp, got {t!r}" for t in times[:3]]
        assert all(r.endswith("is more than 7200s in the past (max_past)") for r in reasons[3:])
        assert len(reasons) == 6 and totals.scored == 0
        assert await predictions(services, [card]) == {}
        assert (await windows(services, [card]))[card]["txn_count_10m"] is None
    finally:
        await services.close()


async def test_oversize_events_and_fields_are_dead_lettered(make_project: Any) -> None:
    project = stream_project(make_project)
    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    huge = event("card_000001", now - 5, merchant_id="m" * 1_000_000)
    long = event("card_000002", now - 5, merchant_id="m" * 2000)
    fine = event("card_000003", now - 5, merchant_id="m" * 1000)
    try:
        await append_events(services, dumps([huge, long, fine]))
        _, totals = await consume(services)
        reasons = [d["reason"] for d in log.dead_letters]
        assert len(reasons) == 2
        assert reasons[0].startswith("event is 1000")
        assert reasons[0].endswith(" bytes, more than max_event_size (65536)")
        assert reasons[1] == "merchant_id: longer than max_field_size (1024 bytes)"
        assert totals.scored == 1
        counts = await windows(services, ["card_000001", "card_000002", "card_000003"])
        assert [c["txn_count_10m"] for c in counts.values()] == [None, None, 1.0]
    finally:
        await services.close()


async def test_events_the_scorer_rejects_are_dead_lettered_with_its_reason(
    make_project: Any, caplog: Any
) -> None:
    """A card with no stored profile: its event is dead-lettered, counted, and changes
    nothing (no window state), while the events around it are scored."""
    from hybridserve.streaming import StreamConsumer

    project = stream_project(make_project)
    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    known = [event("card_000001", now - 5), event("card_000002", now - 3)]
    unknown = event("card_unknown", now - 4)
    try:
        await append_events(services, dumps([known[0], unknown, known[1]]))
        consumer = StreamConsumer(services, STREAM, poll_interval=0)
        try:
            totals = await consumer.run(until_idle=0.3)
        finally:
            await consumer.close()
        assert [
            (d["reason"], orjson.loads(d["payload"])["event_id"]) for d in log.dead_letters
        ] == [("not scored: missing feature 'amount_mean_30d'", unknown["event_id"])]
        assert totals.scored == 2 and totals.dead == 1 and not log.pending
        metrics = consumer.metrics.render().decode()
        assert 'hybridserve_stream_not_scored_total{stream="transactions"} 1.0' in metrics
        assert 'hybridserve_stream_dead_lettered_total{stream="transactions"} 1.0' in metrics
        assert set(await predictions(services, ["card_000001", "card_000002", "card_unknown"])) == {
            "card_000001",
            "card_000002",
        }
        assert (await windows(services, ["card_unknown"]))["card_unknown"]["txn_count_10m"] is None
        assert "1 events not scored, dead-lettered" in caplog.text
    finally:
        await services.close()


async def test_a_store_failure_is_not_split_and_dead_letters_nothing(make_project: Any) -> None:
    """Only computing on the events splits a batch: a write that fails (whatever it raises)
    fails the batch whole, and it is redelivered rather than dead-lettered."""
    project = stream_project(make_project)
    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    events = [event(f"card_{i % 10:06d}", now - 50 + i * 0.1) for i in range(40)]
    real = services.features.write
    calls = 0

    async def flaky(view: str, rows: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls % 2 == 1 and calls < 12:  # a split would find a "failing" single event
            raise RuntimeError("connection reset by peer")
        return await real(view, rows)

    services.features.write = flaky  # type: ignore[method-assign]
    try:
        await append_events(services, dumps(events))
        _, totals = await consume(services, until_idle=0.5)
        assert log.dead_letters == []
        assert totals.failures == 6 and totals.scored == 40 and not log.pending
    finally:
        await services.close()


_OVERTAKEN = "card_000011"
"""The card whose view row :func:`_overtaken` has overtaken."""


@contextlib.asynccontextmanager
async def _overtaken(make_project: Any) -> AsyncIterator[tuple[Any, Any, asyncio.Task[Any]]]:
    """Consumer 1 computes event ``a`` of :data:`_OVERTAKEN` on an old state; consumer 2 takes
    ``a`` over with ``b``, writes the view and commits first; then consumer 1 writes its row
    (the same watermark, so it replaces consumer 2's) and commits. Yields consumer 1's
    services, consumer 1 and its batch's task (which conflicts)."""
    from hybridserve.streaming import StreamConsumer
    from hybridserve.streaming.events import RawEntry

    project = stream_project(make_project)
    fresh_memory_log(project)
    first, second = Services.open(project), Services.open(project)
    at = time.time()
    a, b = event(_OVERTAKEN, at - 5), event(_OVERTAKEN, at - 6)
    one = StreamConsumer(first, STREAM, poll_interval=0)
    two = StreamConsumer(second, STREAM, poll_interval=0)
    go = asyncio.Event()
    real = first.features.write

    async def late_write(view: str, rows: Any) -> Any:
        await go.wait()
        return await real(view, rows)

    first.features.write = late_write  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(one.processor.process([RawEntry("1-0", orjson.dumps(a))]))
        await asyncio.sleep(0.2)  # consumer 1 has read the state and waits to write its row
        entries = [RawEntry("1-0", orjson.dumps(a), 2), RawEntry("2-0", orjson.dumps(b))]
        assert (await two.processor.process(entries)).applied == 2
        go.set()
        yield first, one, task
    finally:
        for c in (one, two):
            await c.close()
        await first.close()
        await second.close()


async def test_a_view_row_from_a_conflicting_attempt_is_rewritten_by_its_redo(
    make_project: Any,
) -> None:
    """Consumer 1's redo (see :func:`_overtaken`) finds ``a`` done, and must still rewrite
    the entity's row."""
    async with _overtaken(make_project) as (first, _, task):
        res = await task
        assert res.conflicts == 1 and res.applied == 0
        assert (await windows(first, [_OVERTAKEN]))[_OVERTAKEN]["txn_count_10m"] == 2


@contextlib.asynccontextmanager
async def _given_up(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, Any]]:
    """:func:`_overtaken`, consumer 1 giving up on its first conflict: yields its services
    and itself, the card's stale row (one event short) in the view."""
    from hybridserve.streaming import pipeline

    monkeypatch.setattr(pipeline, "_ATTEMPTS", 1)
    async with _overtaken(make_project) as (first, one, task):
        with pytest.raises(pipeline.CommitContention):
            await task
        assert (await windows(first, [_OVERTAKEN]))[_OVERTAKEN]["txn_count_10m"] == 1
        yield first, one


async def test_a_view_row_from_a_batch_that_gave_up_is_rewritten_by_the_next_commit(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but consumer 1 gives up on the conflict (the batch goes back to the source,
    and its events to consumer 2, which committed them): its stale row must not stay. The next
    batch it commits, of another card, rewrites the row from the committed state. (Seen in CI:
    two consumers on one key, a batch that gave up after 8 conflicts, a count one short.)"""
    from hybridserve.streaming.events import RawEntry

    card = _OVERTAKEN
    async with _given_up(make_project, monkeypatch) as (first, one):
        other = event("card_000012", time.time() - 4)
        assert (await one.processor.process([RawEntry("3-0", orjson.dumps(other))])).applied == 1
        assert (await windows(first, [card]))[card]["txn_count_10m"] == 2
        assert one.processor.unsettled == set()


async def test_a_view_row_from_a_batch_that_gave_up_is_rewritten_once_the_consumer_is_idle(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but consumer 1 has nothing more to do: its stale row must not stay until
    some later batch of its own. Idle, it rewrites the row from the committed state (seen
    in a two-consumer run where one consumer gave up on contention and never won again)."""
    card = _OVERTAKEN
    async with _given_up(make_project, monkeypatch) as (first, one):
        await one.run(until_idle=0.3)
        assert (await windows(first, [card]))[card]["txn_count_10m"] == 2
        assert one.processor.unsettled == set()


async def _run_contended(project: Any, given_up: int) -> tuple[Any, Any]:
    """40 events through a consumer whose first ``given_up`` deliveries each conflict on
    every commit until they give up (other consumers moving the same entities first); the
    run's totals and the project's log."""
    from hybridserve.streaming import StreamConsumer
    from hybridserve.streaming.pipeline import _ATTEMPTS

    log = fresh_memory_log(project)
    services = Services.open(project)
    now = time.time()
    events = [event(f"card_{i % 10:06d}", now - 50 + i * 0.1) for i in range(40)]
    consumer = StreamConsumer(services, STREAM, poll_interval=0)
    real = consumer.state.commit
    calls = 0

    async def contended(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls <= _ATTEMPTS * given_up:
            return False
        return await real(*args)

    consumer.state.commit = contended  # type: ignore[method-assign]
    try:
        await append_events(services, dumps(events))
        return await consumer.run(until_idle=0.5), log
    finally:
        await consumer.close()
        await services.close()


async def test_a_batch_that_keeps_conflicting_comes_back_whole_not_one_entry_at_a_time(
    make_project: Any,
) -> None:
    """Commits that keep conflicting (other consumers moving the same entities first) make the
    batch give up; it is redelivered as a batch. Before, it came back one entry at a time, as
    after a store failure: measured with two Redis consumers, 5,000 events/s fell to 400 for
    good once both had given up."""
    totals, log = await _run_contended(stream_project(make_project), given_up=1)
    assert totals.failures == 1 and totals.scored == 40 and not log.pending
    assert log.dead_letters == []
    assert totals.batches <= 3  # one at a time would be 40 batches


async def test_deliveries_given_up_on_contention_do_not_make_a_batch_poison(
    make_project: Any,
) -> None:
    """A batch that gives up on commit contention more often than ``max_deliveries`` is
    still processed, not dead-lettered as poison: the conflicts were other consumers'
    doing. (Counted, a batch of 1,000 that gave up five times in a two-consumer benchmark
    was dead-lettered whole, and its events had no outputs.)"""
    project = stream_project(make_project, max_deliveries=2)
    totals, log = await _run_contended(project, given_up=4)
    assert totals.failures == 4
    assert log.dead_letters == []
    assert totals.scored == 40 and not log.pending
