"""Redis streams split over partitions: where the producer puts an entity's events, and how
the consumers of a group divide the partitions as they join, leave and die."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from backends import redis_url
from hybridserve.config import Project, project_from_dict
from hybridserve.streaming import open_io, open_producer
from hybridserve.streaming.sources.redis import RedisSource

pytestmark = pytest.mark.redis
STREAM = "s"


@pytest.fixture
async def project(tmp_path: Path) -> AsyncIterator[Project]:
    url, prefix = redis_url(), f"hs_test_{uuid.uuid4().hex[:10]}:"
    stream = {
        "entity": "card",
        "fields": {"id": "str", "card_id": "str", "t": "timestamp"},
        "entity_field": "card_id",
        "id_field": "id",
        "time_field": "t",
        "source": {"kind": "redis", "partitions": 4, "member_ttl": 0.5},
    }
    raw = {
        "entities": {"card": {"key": "card_id"}},
        "stores": {"online": url, "prefix": prefix},
        "streams": {STREAM: stream},
    }
    yield project_from_dict(raw, tmp_path)
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}*", count=5000))
    if keys:
        client.delete(*keys)
    client.close()


def _events(n: int, cards: int) -> list[bytes]:
    return [
        orjson.dumps({"id": f"e{i}", "card_id": f"c{i % cards}", "t": 1_700_000_000 + i})
        for i in range(n)
    ]


def _source(project: Project, consumer: str) -> RedisSource:
    source = open_io(project, STREAM, consumer=consumer).source
    assert isinstance(source, RedisSource)
    return source


async def _read(source: RedisSource, n: int) -> list[Any]:
    got: list[Any] = []
    for _ in range(20):
        got += await source.read(n, 0.05)
    return got


async def _two_sharing(project: Project) -> tuple[RedisSource, RedisSource]:
    """Consumers c1 and c2, started, each holding its half of the partitions (c1 lets go of
    c2's share at its heartbeat, then c2 takes it at its own)."""
    one, two = _source(project, "c1"), _source(project, "c2")
    await one.start()
    await two.start()
    await one._heartbeat()
    await two._heartbeat()
    return one, two


def _card(entry: Any) -> str:
    return str(orjson.loads(entry.payload)["card_id"])


async def test_an_entitys_events_go_to_its_partition_and_the_ids_name_it(
    project: Project,
) -> None:
    producer = open_producer(project, STREAM)
    ids = await producer.append(_events(40, cards=10))
    await producer.close()
    client = redis.Redis.from_url(project.stores.online)
    key = f"{project.stores.prefix}stream:{STREAM}"
    for i, entry_id in enumerate(ids):
        part = zlib.crc32(f"c{i % 10}".encode()) % 4
        assert entry_id.startswith(f"{part}/")
        (got,) = client.xrange(f"{key}:p{part}", entry_id.split("/")[1], entry_id.split("/")[1])
        assert orjson.loads(got[1][b"d"])["id"] == f"e{i}"
    assert not client.exists(key)  # the unpartitioned key is not used
    client.close()


async def test_two_consumers_divide_the_partitions_and_a_leaver_hands_its_share_over(
    project: Project,
) -> None:
    one, two = _source(project, "c1"), _source(project, "c2")
    await one.start()
    assert one.owned == [0, 1, 2, 3]
    await two.start()
    assert two.owned == []  # c1 holds them all
    await one._heartbeat()  # as its next heartbeat would: it has nothing pending, it lets go
    await two._heartbeat()
    assert sorted(one.owned + two.owned) == [0, 1, 2, 3]
    assert set(one.owned).isdisjoint(two.owned) and one.owned and two.owned
    producer = open_producer(project, STREAM)
    await producer.append(_events(200, cards=25))
    await producer.close()
    got_one, got_two = await _read(one, 50), await _read(two, 50)
    assert len(got_one) + len(got_two) == 200
    assert {_card(e) for e in got_one}.isdisjoint({_card(e) for e in got_two})
    assert {int(e.id.split("/")[0]) for e in got_one} <= set(one.owned)
    await one.ack([e.id for e in got_one])
    await two.ack([e.id for e in got_two])
    info = await one.info()
    assert (info.length, info.lag, info.pending) == (200, 0, 0)
    await two.close()
    await one._heartbeat()
    assert one.owned == [0, 1, 2, 3]
    await one.close()


async def test_a_consumer_that_stops_beating_loses_its_partitions(project: Project) -> None:
    one, two = await _two_sharing(project)
    assert len(one.owned) == 2 and len(two.owned) == 2
    producer = open_producer(project, STREAM)
    await producer.append(_events(40, cards=40))
    await producer.close()
    left = await _read(two, 40)  # read, never acknowledged
    assert left
    assert two._beating is not None
    two._beating.cancel()  # frozen or killed: no more heartbeats, no goodbye
    await asyncio.sleep(0.7)  # past member_ttl
    await one._heartbeat()
    assert one.owned == [0, 1, 2, 3]
    # What c2 left pending comes first, claimed at once; then c1's own partitions' entries.
    got = await _read(one, 100)
    assert {e.id for e in left} <= {e.id for e in got}
    assert {e.deliveries for e in got if e.id in {x.id for x in left}} == {2}
    assert len(got) == 40
    await one.close()
    two._joined = False
    await two.close()


async def test_a_consumer_beyond_the_partition_count_waits_with_none(project: Project) -> None:
    sources = [_source(project, f"c{i}") for i in range(5)]
    for s in sources:
        await s.start()
    for _ in range(2):  # the first holder lets go of the others' shares, then they take them
        for s in sources:
            await s._heartbeat()
    owned = [s.owned for s in sources]
    assert sorted(p for o in owned for p in o) == [0, 1, 2, 3]
    (idle,) = [s for s in sources if not s.owned]
    producer = open_producer(project, STREAM)
    await producer.append(_events(20, cards=20))
    await producer.close()
    assert await idle.read(10, 0.05) == []
    for s in sources:
        await s.close()


async def test_a_partition_changes_hands_only_once_its_holder_acknowledged_its_entries(
    project: Project,
) -> None:
    """A holder that read entries of a partition it no longer wants stops reading new ones
    there but keeps the lease until it has acknowledged what it read: the next holder never
    runs an entity's later events while its earlier ones are still in flight elsewhere."""
    one, two = _source(project, "c1"), _source(project, "c2")
    await one.start()
    producer = open_producer(project, STREAM)
    await producer.append(_events(40, cards=40))
    got = await _read(one, 40)
    assert len(got) == 40
    await two.start()
    await one._heartbeat()
    assert one.owned == [0, 2]  # 1 and 3 are c2's share now, but drain here first
    await two._heartbeat()
    assert two.owned == []
    await producer.append(_events(40, cards=40))
    assert {int(e.id.split("/")[0]) for e in await _read(one, 40)} <= {0, 2}
    await one.ack([e.id for e in got if e.id.split("/")[0] in ("1", "3")])
    await one._heartbeat()
    await two._heartbeat()
    assert (one.owned, two.owned) == ([0, 2], [1, 3])
    assert {int(e.id.split("/")[0]) for e in await _read(two, 40)} == {1, 3}
    await producer.close()
    await one.close()
    await two.close()


def _with_partitions(project: Project, partitions: int) -> Project:
    cfg = project.streams[STREAM]
    source = cfg.source.model_copy(update={"partitions": partitions})
    streams = {STREAM: cfg.model_copy(update={"source": source})}
    return project.model_copy(update={"streams": streams})


async def _left_unread(project: Project, n: int) -> None:
    """``n`` events (one card each) written and left unread by the group, which a first
    start of ``project``'s source created on every partition."""
    source = _source(project, "c1")
    await source.start()
    producer = open_producer(project, STREAM)
    await producer.append(_events(n, cards=n))
    await producer.close()
    await source.close()


async def test_changing_partitions_with_events_left_is_refused_naming_the_setting(
    project: Project,
) -> None:
    from hybridserve.errors import ConfigError

    await _left_unread(project, 10)
    flat = _source(_with_partitions(project, 1), "c1")
    with pytest.raises(ConfigError, match=r"partitions: 1\. Drain them"):
        await flat.start()
    await flat.close()
    # Drained (read and acknowledged with the layout they were written with): allowed.
    one = _source(project, "c1")
    await one.start()
    await one.ack([e.id for e in await _read(one, 10)])
    await one.close()
    flat = _source(_with_partitions(project, 1), "c1")
    await flat.start()
    info = await flat.info()
    assert info.partitions is None and info.lag == 0
    await flat.close()
    # And back: the unpartitioned key's undelivered entries block a partitioned start.
    producer = open_producer(_with_partitions(project, 1), STREAM)
    await producer.append(_events(3, cards=3))
    await producer.close()
    split = _source(project, "c2")
    with pytest.raises(ConfigError, match="wait in the unpartitioned key"):
        await split.start()
    await split.close()


async def test_status_shows_who_holds_each_partition(project: Project) -> None:
    one, two = await _two_sharing(project)
    info = await one.info()
    assert info.partitions == {"c1": [0, 2], "c2": [1, 3]}
    await two.close()
    assert (await one.info()).partitions == {"c1": [0, 2], "": [1, 3]}
    await one.close()


async def test_fewer_partitions_with_events_beyond_them_is_refused(project: Project) -> None:
    from hybridserve.errors import ConfigError

    await _left_unread(project, 20)  # some land in partitions 2 and 3
    two = _source(_with_partitions(project, 2), "c1")
    with pytest.raises(ConfigError, match=r"wait in partition keys .*:p[23]"):
        await two.start()
    await two.close()


async def test_a_consumer_whose_heartbeats_fail_past_member_ttl_stops_reading_new_entries(
    project: Project,
) -> None:
    """Its leases have expired by then, so another consumer may hold the partitions."""
    from hybridserve.errors import StoreError

    one = _source(project, "c1")
    await one.start()
    assert one.owned == [0, 1, 2, 3]

    async def down(**_: Any) -> Any:
        raise StoreError("Redis heartbeat failed: connection refused")

    real = one._members
    one._members = down
    await asyncio.sleep(0.8)  # past member_ttl (0.5 s): a few heartbeats failed
    assert one.owned == []
    one._members = real
    await asyncio.sleep(0.3)  # the next heartbeat takes the (expired) leases again
    assert one.owned == [0, 1, 2, 3]
    await one.close()
