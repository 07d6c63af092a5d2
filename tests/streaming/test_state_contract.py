"""One contract, every state store: Redis, SQLite and memory run these tests unchanged.

A commit writes the touched entities' states (compare-and-set on their versions), the
events it makes seen and their outputs, all or nothing; a commit that conflicts (a state
moved, an event already seen) writes nothing, so a replayed commit changes nothing; what a
commit wrote expires ``dedup_ttl`` after it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from hybridserve.storage import open_store
from hybridserve.streaming.state import KVStateStore, RedisStateStore, StateStore

STORES = ["memory", "sqlite", "redis"]
STREAM = "contract"
Opened = tuple[StateStore, Callable[[list[str]], Awaitable[list[bytes | None]]]]


@pytest.fixture(params=STORES)
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[float], Opened]]:
    """``make(ttl)``: a state store on the backend, and a function reading its outputs."""
    kind = request.param
    prefix = f"hstest:{uuid.uuid4().hex[:8]}:"
    opened: list[StateStore] = []
    kvs = []
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/state.db"}.get(kind)
    if kind == "redis":
        from backends import redis_url

        url = redis_url()

    def make(ttl: float) -> Opened:
        assert url is not None
        if kind == "redis":
            redis_store = RedisStateStore(url, prefix, STREAM, ttl, output_key=f"{prefix}out")
            opened.append(redis_store)

            async def redis_outputs(ids: list[str]) -> list[bytes | None]:
                import redis.asyncio as aredis

                client = aredis.Redis.from_url(url)
                entries = await client.xrange(f"{prefix}out")
                await client.aclose()
                found = {f[b"id"].decode(): f[b"d"] for _, f in entries}
                assert len(found) == len(entries), "an output written twice"
                return [found.get(i) for i in ids]

            return redis_store, redis_outputs
        if not kvs:  # one store per process, as Services opens it
            kvs.append(open_store(url, prefix))
        kv = kvs[0]
        kv_store = KVStateStore(kv, STREAM, ttl)
        opened.append(kv_store)
        return kv_store, kv_store.outputs

    yield make
    for s in opened:
        await s.close()
    if url is not None:
        cleanup = open_store(url, prefix)
        keys = [k async for k in cleanup.scan("")]
        if keys:
            await cleanup.delete_many(keys)
        await cleanup.close()
    for kv in kvs:
        await kv.close()


async def test_a_commit_writes_states_seen_set_and_outputs_together(
    make_store: Callable[[float], Opened],
) -> None:
    store, outputs = make_store(60.0)
    assert await store.load(["a", "b"]) == [(0, None), (0, None)]
    assert await store.commit(
        [("a", 0, b"state-a"), ("b", 0, b"state-b")], ["e1", "e2"], [("e1", b"o1"), ("e2", b"o2")]
    )
    assert await store.load(["a", "b", "c"]) == [(1, b"state-a"), (1, b"state-b"), (0, None)]
    assert await store.seen(["e1", "e2", "e3"]) == [True, True, False]
    assert await outputs(["e1", "e2"]) == [b"o1", b"o2"]
    assert await store.commit([("a", 1, b"state-a2")], ["e3"], [("e3", b"o3")])
    assert await store.load(["a"]) == [(2, b"state-a2")]


async def test_a_commit_on_a_moved_state_writes_nothing(
    make_store: Callable[[float], Opened],
) -> None:
    store, outputs = make_store(60.0)
    assert await store.commit([("a", 0, b"v1")], ["e1"], [("e1", b"o1")])
    # Computed on version 0, which another consumer has moved on from: nothing of it lands.
    assert not await store.commit([("b", 0, b"b1"), ("a", 0, b"stale")], ["e2"], [("e2", b"o2")])
    assert await store.load(["a", "b"]) == [(1, b"v1"), (0, None)]
    assert await store.seen(["e2"]) == [False]
    assert await outputs(["e2"]) == [None]


async def test_a_replayed_commit_changes_nothing(make_store: Callable[[float], Opened]) -> None:
    store, outputs = make_store(60.0)
    commit = ([("a", 0, b"v1")], ["e1", "e2"], [("e1", b"o1"), ("e2", b"o2")])
    assert await store.commit(*commit)
    assert not await store.commit(*commit)
    # Not even with the state's new version: the events are seen, another consumer did them.
    assert not await store.commit([("a", 1, b"v2")], ["e2"], [("e2", b"again")])
    assert await store.load(["a"]) == [(1, b"v1")]
    assert await outputs(["e1", "e2"]) == [b"o1", b"o2"]


async def test_of_two_racing_commits_on_one_state_exactly_one_lands(
    make_store: Callable[[float], Opened],
) -> None:
    one, outputs = make_store(60.0)
    two, _ = make_store(60.0)
    results = await asyncio.gather(
        *(
            s.commit([("a", 0, f"from-{i}".encode())], [f"e{i}"], [(f"e{i}", b"o")])
            for i, s in enumerate([one, two] * 3)
        )
    )
    assert sum(results) == 1
    winner = results.index(True)
    assert await one.load(["a"]) == [(1, f"from-{winner}".encode())]
    seen = await one.seen([f"e{i}" for i in range(6)])
    assert seen == [i == winner for i in range(6)]
    assert [o is not None for o in await outputs([f"e{i}" for i in range(6)])] == seen


async def test_states_seen_set_and_outputs_expire_after_dedup_ttl(
    make_store: Callable[[float], Opened],
) -> None:
    store, outputs = make_store(0.5)
    assert await store.commit([("a", 0, b"v1")], ["e1"], [("e1", b"o1")])
    assert await store.seen(["e1"]) == [True]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (await store.seen(["e1"]))[0]:
        await asyncio.sleep(0.1)
    assert await store.seen(["e1"]) == [False]
    assert await store.load(["a"]) == [(0, None)]
    if isinstance(store, KVStateStore):  # a Redis output stream is trimmed by maxlen instead
        assert await outputs(["e1"]) == [None]
    # Forgotten, so the event is new again: its commit lands.
    assert await store.commit([("a", 0, b"v1")], ["e1"], [("e1", b"o1")])
