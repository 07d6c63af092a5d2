"""One contract, every backend: memory, SQLite and Redis run these tests unchanged."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hybridserve.records import now
from hybridserve.storage import Entry, KVStore, open_store, run_rows

BACKENDS = ["memory", "sqlite", "redis"]


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    from backends import redis_url

    return redis_url()


@pytest.fixture(params=BACKENDS)
async def store_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    url = _url(request.param, tmp_path)
    prefix = f"hstest:{uuid.uuid4().hex[:8]}:"
    yield url, prefix
    cleanup = open_store(url, prefix)
    keys = [k async for k in cleanup.scan("")]
    if keys:
        await cleanup.delete_many(keys)
    await cleanup.close()


@pytest.fixture
async def store(store_url: tuple[str, str]) -> AsyncIterator[KVStore]:
    s = open_store(*store_url)
    yield s
    await s.close()


async def test_missing_key_reads_none(store: KVStore) -> None:
    assert await store.get_many(["nope"]) == [None]
    assert await store.get_many([]) == []


async def test_put_then_get_many_keeps_order(store: KVStore) -> None:
    assert await store.put_many([Entry("a", b"1", 10.0), Entry("b", b"2", 20.0)]) == 2
    got = await store.get_many(["b", "missing", "a"])
    assert [e.value if e else None for e in got] == [b"2", None, b"1"]
    assert got[0] is not None and got[0].as_of == 20.0


async def test_older_as_of_never_overwrites_newer(store: KVStore) -> None:
    await store.put_many([Entry("k", b"new", 200.0)])
    assert await store.put_many([Entry("k", b"old", 100.0)]) == 0
    (entry,) = await store.get_many(["k"])
    assert entry is not None and (entry.value, entry.as_of) == (b"new", 200.0)


async def test_newer_or_equal_as_of_wins(store: KVStore) -> None:
    await store.put_many([Entry("k", b"v1", 100.0)])
    assert await store.put_many([Entry("k", b"v2", 100.0)]) == 1
    assert await store.put_many([Entry("k", b"v3", 100.5)]) == 1
    (entry,) = await store.get_many(["k"])
    assert entry is not None and entry.value == b"v3"


async def test_replayed_write_changes_nothing(store: KVStore) -> None:
    writes = [Entry(f"e{i}", f"v{i}".encode(), 50.0 + i) for i in range(20)]
    await store.put_many(writes)
    before = await store.get_many([w.key for w in writes])
    await store.put_many(writes)
    after = await store.get_many([w.key for w in writes])
    assert before == after
    assert sorted([k async for k in store.scan("e")]) == sorted(w.key for w in writes)


async def test_mixed_batch_applies_precedence_per_key(store: KVStore) -> None:
    await store.put_many([Entry("a", b"a-new", 300.0), Entry("b", b"b-old", 100.0)])
    n = await store.put_many([Entry("a", b"a-old", 200.0), Entry("b", b"b-new", 200.0)])
    assert n == 1
    a, b = await store.get_many(["a", "b"])
    assert a is not None and a.value == b"a-new"
    assert b is not None and b.value == b"b-new"


async def test_put_columns_is_put_many_by_column(store: KVStore) -> None:
    await store.put_many([Entry("a", b"a-new", 300.0), Entry("b", b"b-old", 100.0)])
    keys, values = ["a", "b", "c"], [b"a-old", b"b-new", b"c-new"]
    assert await store.put_columns(keys, values, [200.0, 200.0, 50.0]) == 2
    a, b, c = await store.get_many(keys)
    assert a is not None and (a.value, a.as_of) == (b"a-new", 300.0)
    assert b is not None and (b.value, b.as_of, b.expires_at) == (b"b-new", 200.0, None)
    assert c is not None and c.value == b"c-new"
    # Replayed: nothing changes. With an expiry: every row gets it.
    await store.put_columns(keys, values, [200.0, 200.0, 50.0])
    assert await store.get_many(keys) == [a, b, c]
    await store.put_columns(["d", "e"], [b"d", b"e"], [1.0, 1.0], expires_at=now() + 60)
    await store.put_columns(["f", "g"], [b"f", b"g"], [1.0, 1.0], expires_at=now() - 1)
    assert [e is not None for e in await store.get_many(["d", "e", "f", "g"])] == [
        True,
        True,
        False,
        False,
    ]
    assert await store.put_columns([], [], []) == 0


async def test_any_key_and_value_bytes_round_trip(store: KVStore) -> None:
    keys = ["é;1,2", "k\nnewline", "ключ", "a" * 300, "x:y:z"]
    values = [b"\x00\xff;,", b"", "ü".encode(), b"v" * 5000, b'{"a":1}']
    assert await store.put_columns(keys, values, [1.5, 2.0, 1e-05, 3.25, 4.0]) == 5
    got = await store.get_many(keys)
    assert [e.value if e else None for e in got] == values
    assert [e.as_of if e else None for e in got] == [1.5, 2.0, 1e-05, 3.25, 4.0]
    many = [f"m{i}" for i in range(1203)]  # several script chunks
    await store.put_columns(many, [str(i).encode() for i in range(1203)], [1.0] * 1203)
    assert [e.value if e else None for e in await store.get_many(many)] == [
        str(i).encode() for i in range(1203)
    ]


async def test_ttl_expiry(store: KVStore) -> None:
    await store.put_many(
        [Entry("short", b"x", 500.0, expires_at=now() + 0.3), Entry("long", b"y", 1.0)]
    )
    assert (await store.get_many(["short"]))[0] is not None
    await asyncio.sleep(0.6)
    assert await store.get_many(["short", "long"]) == [None, (await store.get_many(["long"]))[0]]
    assert [k async for k in store.scan("sh")] == []
    # An expired entry does not block an older write.
    assert await store.put_many([Entry("short", b"z", 1.0)]) == 1
    (entry,) = await store.get_many(["short"])
    assert entry is not None and entry.value == b"z"


async def test_delete(store: KVStore) -> None:
    await store.put_many([Entry("a", b"1", 1.0), Entry("b", b"2", 1.0)])
    assert await store.delete_many(["a", "zzz"]) == 1
    assert await store.get_many(["a", "b"]) == [None, (await store.get_many(["b"]))[0]]


async def test_scan_by_prefix(store: KVStore) -> None:
    keys = [f"p:route:{i}" for i in range(1500)] + ["f:view:1", "p:other:1", "p:rout*[?]e"]
    await store.put_many([Entry(k, b"v", 1.0) for k in keys])
    got = [k async for k in store.scan("p:route:")]
    assert len(got) == len(set(got)) == 1500
    assert set(got) == {f"p:route:{i}" for i in range(1500)}
    assert [k async for k in store.scan("p:rout*")] == ["p:rout*[?]e"]


async def test_prefixes_isolate_namespaces(store_url: tuple[str, str]) -> None:
    url, prefix = store_url
    one, two = open_store(url, prefix + "one:"), open_store(url, prefix + "two:")
    if url.startswith("memory"):
        pytest.skip("an anonymous memory store is private to its object")
    try:
        await one.put_many([Entry("k", b"1", 1.0)])
        assert await two.get_many(["k"]) == [None]
        assert [k async for k in two.scan("")] == []
    finally:
        await one.delete_many(["k"])
        await one.close()
        await two.close()


async def _run(store: KVStore, run: str, members: list[str]) -> list[tuple[bytes, float] | None]:
    return [None if e is None else (e.value, e.as_of) for e in await store.get_run(run, members)]


async def test_run_bulk_write_reads_back_by_member(store: KVStore) -> None:
    members = ["é;1,2", "k\nnewline", "ключ", "a" * 300, "x:y:z", *[f"m{i}" for i in range(1203)]]
    values = [f"v{i}".encode() for i in range(len(members))]
    values[1] = b""
    stamps = [1e-05, *[100.0 + i for i in range(1, len(members))]]
    rows = run_rows(members, values, stamps)
    assert await store.put_run("pb:r:one", rows, now() + 60) == len(members)
    assert await _run(store, "pb:r:one", [*members, "absent"]) == [
        *zip(values, stamps, strict=True),
        None,
    ]
    assert sorted([m async for m in store.scan_run("pb:r:one")]) == sorted(members)
    # Another run, and the store's own keys, are other namespaces.
    assert await _run(store, "pb:r:two", members[:2]) == [None, None]
    assert await store.get_many(["pb:r:one", members[0]]) == [None, None]
    assert await store.put_run("pb:r:empty", run_rows([], [], [])) == 0


async def test_run_write_has_no_compare_and_set_and_replays_to_the_same(store: KVStore) -> None:
    await store.put_run("pb:r:1", run_rows(["a", "b"], [b"a1", b"b1"], [200.0, 200.0]))
    # A member written again reads as its last write, even with an older as_of (the run's
    # writes are plain: the precedence rule applies between a route's record and the run's).
    await store.put_run("pb:r:1", run_rows(["b", "c"], [b"b0", b"c1"], [100.0, 1.0]))
    await store.put_run("pb:r:1", run_rows(["b", "c"], [b"b0", b"c1"], [100.0, 1.0]))
    expected = [(b"a1", 200.0), (b"b0", 100.0), (b"c1", 1.0)]
    assert await _run(store, "pb:r:1", ["a", "b", "c"]) == expected
    assert sorted([m async for m in store.scan_run("pb:r:1")]) == ["a", "b", "c"]
    await store.seal_run("pb:r:1")
    await store.seal_run("pb:r:1")
    await store.seal_run("pb:r:never-written")
    assert await _run(store, "pb:r:1", ["a", "b", "c"]) == expected
    assert sorted([m async for m in store.scan_run("pb:r:1")]) == ["a", "b", "c"]
    # A sealed run still takes writes.
    await store.put_run("pb:r:1", run_rows(["a", "d"], [b"a2", b"d1"], [5.0, 6.0]))
    assert await _run(store, "pb:r:1", ["a", "d"]) == [(b"a2", 5.0), (b"d1", 6.0)]


async def test_run_read_with_keys_in_one_call(store: KVStore) -> None:
    await store.put_many([Entry("p:r:a", b"own-a", 300.0)])
    await store.put_run("pb:r:1", run_rows(["a", "b"], [b"run-a", b"run-b"], [200.0, 250.0]))
    got = await store.get_run("pb:r:1", ["a", "b", "c"], ["p:r:a", "p:r:b", "p:r:c"])
    assert [None if e is None else (e.key, e.value, e.as_of) for e in got] == [
        ("p:r:a", b"own-a", 300.0),
        None,
        None,
        ("a", b"run-a", 200.0),
        ("b", b"run-b", 250.0),
        None,
    ]
    assert await store.get_run("pb:r:1", [], ["p:r:a"]) == got[:1]
    assert await store.get_run("pb:r:1", []) == []


async def test_run_expiry_and_drop(store: KVStore) -> None:
    await store.put_run("pb:r:old", run_rows(["a"], [b"x"], [1.0]), expires_at=now() - 1)
    assert await _run(store, "pb:r:old", ["a"]) == [None]
    assert [m async for m in store.scan_run("pb:r:old")] == []
    await store.put_run("pb:r:1", run_rows(["a", "b"], [b"1", b"2"], [1.0, 1.0]), now() + 60)
    await store.put_run("pb:r:2", run_rows(["a"], [b"3"], [1.0]))
    await store.seal_run("pb:r:1")
    await store.drop_run("pb:r:1")
    await store.drop_run("pb:r:never-written")
    assert await _run(store, "pb:r:1", ["a", "b"]) == [None, None]
    assert [m async for m in store.scan_run("pb:r:1")] == []
    assert await _run(store, "pb:r:2", ["a"]) == [(b"3", 1.0)]
    # A dropped run can be written again from scratch.
    await store.put_run("pb:r:1", run_rows(["c"], [b"4"], [2.0]))
    assert await _run(store, "pb:r:1", ["a", "c"]) == [None, (b"4", 2.0)]


def _writer(url: str, prefix: str, timestamps: list[float], seed: int) -> None:
    async def run() -> None:
        s = open_store(url, prefix)
        rng = random.Random(seed)
        order = [(k, t) for k in range(100) for t in timestamps]
        rng.shuffle(order)
        for start in range(0, len(order), 7):
            chunk = order[start : start + 7]
            await s.put_many([Entry(f"k{k}", f"{t}".encode(), t) for k, t in chunk])
        await s.close()

    asyncio.run(run())


async def test_concurrent_writers_in_two_processes(store_url: tuple[str, str]) -> None:
    url, prefix = store_url
    if url.startswith("memory"):
        pytest.skip("a memory store lives in one process")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_writer, args=(url, prefix, [float(t) for t in range(p, 40, 2)], p))
        for p in (0, 1)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert time.monotonic() - started < 60
    s = open_store(url, prefix)
    got = await s.get_many([f"k{k}" for k in range(100)])
    await s.close()
    # Whatever the interleaving, every key ends at the newest as_of either process wrote.
    assert all(e is not None and e.as_of == 39.0 and e.value == b"39.0" for e in got)
