"""Two micro-batches overlapped: the next one read and computed while the last one writes and
commits (``BatchProcessor.prepare`` / ``finish``), on the in-process source and SQLite."""

from __future__ import annotations

import time
from typing import Any

import orjson
from stream_helpers import (
    STREAM,
    append_events,
    consume,
    dumps,
    event,
    fresh_memory_log,
    stream_project,
    windows,
)

from hybridserve.services import Services
from hybridserve.streaming.events import RawEntry


def _entries(start: int, *events: dict[str, Any]) -> list[RawEntry]:
    return [RawEntry(f"{start + i}-0", orjson.dumps(e)) for i, e in enumerate(events)]


def _output_ids(log: Any) -> list[str]:
    return [orjson.loads(p)["event_id"] for _, p in log.outputs]


async def test_a_batch_computed_before_the_last_one_commits_starts_from_its_states(
    make_project: Any,
) -> None:
    """The second batch is computed before the first commits: it starts from the first's
    states (else its commit, expecting the versions it read, would conflict: ``settled``
    False) and takes the first's events as seen (one arrives again in another entry)."""
    from hybridserve.streaming import StreamConsumer

    project = stream_project(make_project)
    log = fresh_memory_log(project)
    services = Services.open(project)
    consumer = StreamConsumer(services, STREAM, poll_interval=0)
    processor = consumer.processor
    t = time.time() - 60
    a1, b1 = event("card_000001", t), event("card_000002", t + 1)
    a2, c1 = event("card_000001", t + 2), event("card_000003", t + 3)
    try:
        first = await processor.prepare(_entries(1, a1, b1))
        second = await processor.prepare(_entries(3, a2, a1, c1), first)
        one = await processor.finish(first)
        two = await processor.finish(second)
        assert first.settled and second.settled
        assert (one.applied, one.conflicts) == (2, 0)
        assert (two.applied, two.duplicates, two.conflicts) == (2, 1, 0)
        got = await windows(services, ["card_000001", "card_000002", "card_000003"])
        assert {c: w["txn_count_10m"] for c, w in got.items()} == {
            "card_000001": 2,
            "card_000002": 1,
            "card_000003": 1,
        }
        assert sorted(_output_ids(log)) == sorted(e["event_id"] for e in (a1, b1, a2, c1))
    finally:
        await consumer.close()
        await services.close()


async def test_a_batch_computed_on_one_that_conflicted_is_computed_again(
    make_project: Any,
) -> None:
    """Another consumer commits the card between the first batch's computation and its
    commit: the first batch conflicts and is redone, and the second, computed on the
    first's states as they would have been, is computed again from what is stored."""
    from hybridserve.streaming import StreamConsumer

    project = stream_project(make_project)
    log = fresh_memory_log(project)
    mine, theirs = Services.open(project), Services.open(project)
    consumer = StreamConsumer(mine, STREAM, poll_interval=0)
    other = StreamConsumer(theirs, STREAM, poll_interval=0)
    t = time.time() - 60
    a1, a2, x = (event("card_000001", t + i) for i in range(3))
    try:
        processor = consumer.processor
        first = await processor.prepare(_entries(1, a1))
        second = await processor.prepare(_entries(2, a2), first)
        assert (await other.processor.process(_entries(9, x))).applied == 1
        one = await processor.finish(first)
        assert (one.applied, one.conflicts) == (1, 1) and first.settled is False
        two = await processor.finish(second)
        assert two.applied == 1 and second.settled is False
        got = await windows(mine, ["card_000001"])
        assert got["card_000001"]["txn_count_10m"] == 3
        assert sorted(_output_ids(log)) == sorted(e["event_id"] for e in (a1, a2, x))
    finally:
        for c in (consumer, other):
            await c.close()
        await mine.close()
        await theirs.close()


async def test_the_consumer_overlaps_batches_and_a_failure_drops_the_one_computed_ahead(
    make_project: Any,
) -> None:
    """Small batches of a few cards through the consumer: each is computed while the one
    before commits. The third batch's commit fails once (a store failure): the batch computed
    ahead of it is dropped with it, both are read again, and every event counts once."""
    from hybridserve.errors import StoreError
    from hybridserve.streaming import pipeline

    project = stream_project(make_project, batch_size=5)
    log = fresh_memory_log(project)
    services = Services.open(project)
    t = time.time() - 300
    cards = [f"card_00000{i}" for i in range(1, 4)]
    events = [event(cards[i % 3], t + i) for i in range(30)]
    await append_events(services, dumps(events))
    real_prepare, real_finish = pipeline.BatchProcessor.prepare, pipeline.BatchProcessor.finish
    ahead: list[bool] = []
    finished: list[int] = []

    async def prepare(self: Any, entries: Any, after: Any = None) -> Any:
        ahead.append(after is not None)
        return await real_prepare(self, entries, after)

    async def finish(self: Any, prepared: Any) -> Any:
        finished.append(len(prepared.entries))
        if len(finished) == 3:
            raise StoreError("the store went away for a moment")
        return await real_finish(self, prepared)

    pipeline.BatchProcessor.prepare = prepare  # type: ignore[method-assign]
    pipeline.BatchProcessor.finish = finish  # type: ignore[method-assign]
    try:
        _, totals = await consume(services)
    finally:
        pipeline.BatchProcessor.prepare = real_prepare  # type: ignore[method-assign]
        pipeline.BatchProcessor.finish = real_finish  # type: ignore[method-assign]
    try:
        assert sum(ahead) >= 2, ahead  # batches were computed while the last one committed
        assert totals.failures == 1 and totals.scored == 30 and totals.dead == 0
        assert sorted(_output_ids(log)) == sorted(e["event_id"] for e in events)
        got = await windows(services, cards)
        assert {c: w["txn_count_10m"] for c, w in got.items()} == dict.fromkeys(cards, 10)
        assert not log.pending
    finally:
        await services.close()
