"""One contract, every source: memory, replay, Redis Streams (on one key and split over
partitions), Kafka (on Tansu) and NATS JetStream run these tests unchanged, through
``open_io`` and ``open_producer`` only.

What differs between brokers is declared per kind in :class:`Kind` (whether delivery counts
survive a restart, whether the sinks write each id once), never tested around.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from stream_helpers import KAFKA_TEST_SETTINGS

from hybridserve.config import Project, project_from_dict
from hybridserve.storage import KVStore, open_store
from hybridserve.streaming import RawEntry, StreamIO, open_io, open_producer
from hybridserve.streaming.sources import Measured, Rewinds
from hybridserve.streaming.sources.memory import drop_memory_log

KINDS = ["memory", "replay", "redis", "kafka", "nats"]
PARAMS = [*KINDS, "redis-partitioned"]
"""Every kind, and Redis with its events split over partitions."""
STREAM = "s"


@dataclass
class Kind:
    name: str
    project: Project
    kv: KVStore
    durable_counts: bool
    """Delivery counts survive the consumer (Redis, NATS and the in-process log count them
    in the broker; Kafka and replay in the consumer's process)."""
    once_sinks: bool
    """Dead letters and outputs are written once per id, however often they are sent."""
    exact_redelivery: bool
    """After a crash, exactly the unacknowledged entries come back (Kafka and replay
    resume from an offset: acknowledged entries after the first unacknowledged one of a
    partition or file come back too)."""
    redelivery_wait: float = 0.0
    """How long the broker holds a dead consumer's entries before delivering them again."""

    def io(self, consumer: str = "c1") -> StreamIO:
        return open_io(self.project, STREAM, consumer=consumer, kv=self.kv)


def _project(tmp_path: Path, source: dict[str, Any], prefix: str, online: str) -> Project:
    stream = {
        "entity": "card",
        "fields": {"id": "str", "card_id": "str", "t": "timestamp", "seq": "int"},
        "entity_field": "card_id",
        "id_field": "id",
        "time_field": "t",
        "max_deliveries": 3,
        "source": source,
    }
    raw = {
        "entities": {"card": {"key": "card_id"}},
        "stores": {"online": online, "prefix": prefix},
        "streams": {STREAM: stream},
    }
    return project_from_dict(raw, tmp_path)


@pytest.fixture(params=PARAMS)
async def kind(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kind]:
    name, tag = request.param, uuid.uuid4().hex[:10]
    prefix = f"hs_test_{tag}:"
    online = "memory://"
    durable, once, exact, wait = True, True, True, 0.0
    cleanup: Any = None
    if name == "memory":
        source: dict[str, Any] = {"kind": "memory"}
    elif name == "replay":
        (tmp_path / "events").mkdir()
        source = {"kind": "replay", "path": str(tmp_path / "events")}
        durable, exact = False, False
    elif name in ("redis", "redis-partitioned"):
        from backends import redis_url

        online = redis_url()
        source = {"kind": "redis"} if name == "redis" else {"kind": "redis", "partitions": 4}
        cleanup = _redis_cleanup(online, prefix)
    elif name == "kafka":
        source = {
            "kind": "kafka",
            "brokers": request.getfixturevalue("kafka_brokers"),
            "topic": f"hs_test_{tag}",
        }
        source.update(KAFKA_TEST_SETTINGS, group=f"g_{tag}")
        durable, once, exact = False, False, False
    else:
        from backends import nats_url

        source = {"kind": "nats", "url": nats_url(), "stream": f"HS_TEST_{tag}", "ack_wait": 1.0}
        wait = 1.2
        cleanup = _nats_cleanup(source["url"], source["stream"])
    project = _project(tmp_path, source, prefix, online)
    kv = open_store(online, prefix)
    yield Kind(name, project, kv, durable, once, exact, wait)
    await kv.close()
    drop_memory_log(f"{prefix}stream:{STREAM}")
    if cleanup is not None:
        await cleanup()


def _redis_cleanup(url: str, prefix: str) -> Any:
    async def clean() -> None:
        import redis

        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"{prefix}*", count=5000))
        if keys:
            client.delete(*keys)
        client.close()

    return clean


def _nats_cleanup(url: str, stream: str) -> Any:
    async def clean() -> None:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        for name in (stream, f"{stream}_OUT", f"{stream}_DLQ"):
            with contextlib.suppress(Exception):  # absent: nothing to clean
                await js.delete_stream(name)
        await nc.close()

    return clean


def _events(n: int, cards: int = 3, start: int = 0) -> list[bytes]:
    t = time.time() - 100
    return [
        orjson.dumps({"id": f"e{i}", "card_id": f"c{i % cards}", "t": t + i, "seq": i})
        for i in range(start, start + n)
    ]


async def _append(kind: Kind, payloads: list[bytes]) -> None:
    producer = open_producer(kind.project, STREAM, kv=kind.kv)
    try:
        await producer.append(payloads)
    finally:
        await producer.close()


async def _read_all(
    io: StreamIO, n: int, timeout: float = 20.0, want: set[int] | None = None
) -> list[RawEntry]:
    """Read until ``n`` entries came (or those with the ``seq`` numbers ``want``), or
    ``timeout`` passed, then once more to catch extras."""
    got: list[RawEntry] = []
    deadline = time.monotonic() + timeout

    def enough() -> bool:
        return want <= set(_seqs(got)) if want is not None else len(got) >= n

    while not enough() and time.monotonic() < deadline:
        got += await io.source.read(max(1, n - len(got)), 0.2)
    got += await io.source.read(10, 0.2)
    return got


def _seqs(entries: list[RawEntry]) -> list[int]:
    return [orjson.loads(e.payload)["seq"] for e in entries]  # type: ignore[arg-type]


async def _started(io: StreamIO) -> StreamIO:
    await io.source.start()
    return io


async def test_every_appended_event_is_delivered_in_order_per_key(kind: Kind) -> None:
    await _append(kind, _events(30))
    io = await _started(kind.io())
    try:
        got = await _read_all(io, 30)
        assert sorted(_seqs(got)) == list(range(30))
        assert all(e.deliveries == 1 for e in got)
        by_card: dict[str, list[int]] = {}
        for e in got:
            body = orjson.loads(e.payload)  # type: ignore[arg-type]
            by_card.setdefault(body["card_id"], []).append(body["seq"])
        assert all(seqs == sorted(seqs) for seqs in by_card.values())
    finally:
        await io.close()


async def test_acknowledged_entries_are_not_delivered_again(kind: Kind) -> None:
    await _append(kind, _events(12))
    io = await _started(kind.io())
    try:
        got = await _read_all(io, 12)
        await io.source.ack([e.id for e in got])
        await io.source.ack([got[0].id])  # acknowledging twice is harmless
    finally:
        await io.close()
    await asyncio.sleep(kind.redelivery_wait)
    again = await _started(kind.io())
    try:
        assert await _read_all(again, 1, timeout=1.0) == []
        if isinstance(again.source, Measured):
            info = await again.source.info()
            assert info.lag == 0
            assert info.pending in (0, None)
    finally:
        await again.close()


async def test_unacknowledged_entries_come_back_after_a_crash(kind: Kind) -> None:
    """A consumer read 10 entries, acknowledged 4 and died: the next one (same name) gets
    the other 6 (and, resuming from an offset, acknowledged ones after them), counted as
    delivered again where the broker counts deliveries."""
    await _append(kind, _events(10))
    first = await _started(kind.io())
    got = await _read_all(first, 10)
    done = [e for e in got if _seqs([e])[0] % 2 == 0][:4]
    await first.source.ack([e.id for e in done])
    await first.close()
    await asyncio.sleep(kind.redelivery_wait)
    second = await _started(kind.io())
    try:
        left = set(range(10)) - set(_seqs(done))
        again = await _read_all(second, 10, want=left)
        assert len(again) == len(set(_seqs(again)))
        if kind.exact_redelivery:
            assert set(_seqs(again)) == left
        else:
            assert left <= set(_seqs(again))
        assert {e.deliveries for e in again if _seqs([e])[0] in left} == (
            {2} if kind.durable_counts else {1}
        )
        await second.source.ack([e.id for e in again])
    finally:
        await second.close()


async def test_a_rewind_delivers_the_unacknowledged_entries_again_now(kind: Kind) -> None:
    await _append(kind, _events(8))
    io = await _started(kind.io())
    try:
        if not isinstance(io.source, Rewinds):
            pytest.skip(f"a {kind.name} source does not rewind")
        got = await _read_all(io, 8)
        await io.source.ack([got[0].id, got[1].id])
        io.source.rewind()
        again = await _read_all(io, 6)
        assert sorted(_seqs(again)) == sorted(_seqs(got[2:]))
        assert {e.deliveries for e in again} == {2}
        await io.source.ack([e.id for e in again])
        assert await _read_all(io, 1, timeout=0.5) == []
    finally:
        await io.close()


async def test_dead_letters_and_outputs_are_written_and_counted(kind: Kind) -> None:
    await _append(kind, _events(3))
    io = await _started(kind.io())
    try:
        got = await _read_all(io, 3)
        for _ in range(2):  # a batch redone after a crash sends them again
            await io.dead_letters.dead_letter([(got[0], "bad JSON"), (got[1], "late: 9s")])
            await io.outputs.emit([("e2", b'{"score": 0.5}')])
        await io.source.ack([e.id for e in got])
        if isinstance(io.source, Measured):
            info = await io.source.info()
            if kind.once_sinks:
                assert (info.dead_letters, info.outputs) == (2, 1)
            else:  # at-least-once: each id at least once
                assert info.dead_letters is not None and info.dead_letters >= 2
                assert info.outputs is not None and info.outputs >= 1
    finally:
        await io.close()


async def test_a_poison_entry_reaches_max_deliveries(kind: Kind) -> None:
    """An entry read and never acknowledged, again and again, counts up past the stream's
    ``max_deliveries`` (what the pipeline dead-letters it for), within one consumer."""
    await _append(kind, _events(1))
    io = await _started(kind.io())
    try:
        if not isinstance(io.source, Rewinds):
            pytest.skip(f"a {kind.name} source does not rewind")
        counts = []
        for _ in range(4):
            (entry,) = await _read_all(io, 1)
            counts.append(entry.deliveries)
            io.source.rewind()
        assert counts == [1, 2, 3, 4]
    finally:
        await io.close()


def test_every_configurable_kind_is_one_line_of_the_table() -> None:
    """``streams.X.source.kind`` accepts exactly the kinds in ``SOURCES``, each module
    opens a consumer's view and a producer, and a source without ``kind`` is Redis."""
    import importlib
    import typing

    from hybridserve.config import RedisSourceConfig, StreamConfig, StreamSourceConfig
    from hybridserve.streaming.sources import SOURCES

    union = typing.get_args(typing.get_args(StreamSourceConfig)[0])
    kinds = {typing.get_args(c.model_fields["kind"].annotation)[0] for c in union}
    assert kinds == set(SOURCES) == set(KINDS)
    for module in SOURCES.values():
        m = importlib.import_module(module)
        assert callable(m.open_io) and callable(m.open_producer)
    fields = {"id": "str", "c": "str", "t": "timestamp"}
    base = {"entity": "c", "fields": fields, "entity_field": "c", "id_field": "id"}
    cfg = StreamConfig(**base, time_field="t", source={"group": "g"})  # type: ignore[arg-type]
    assert isinstance(cfg.source, RedisSourceConfig) and cfg.source.group == "g"


def test_a_missing_client_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from hybridserve.errors import MissingExtra

    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # importing it raises
    source = {"kind": "kafka", "brokers": "127.0.0.1:1", "topic": "t"}
    project = _project(tmp_path, source, "p:", "memory://")
    with pytest.raises(MissingExtra, match=r"hybridserve\[kafka\]"):
        open_producer(project, STREAM)
