"""How each backend lays out a run's records: bucketed hashes on Redis, a table on SQLite."""

from __future__ import annotations

import sqlite3
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hybridserve.records import now
from hybridserve.storage import open_store, run_rows


def test_bucket_column_is_crc32_of_each_member() -> None:
    from hybridserve.storage.redis_bulk import BUCKETS, bucket_column, bucket_of

    members = ["", "a", "card_000001", "é;1,2", "ключ", "k\nnl", "a" * 300, "x:y:z"]
    members += [f"m{i}" for i in range(2000)]
    column = pa.array(members)
    expected = [zlib.crc32(m.encode()) % BUCKETS for m in members]
    assert bucket_column(column).tolist() == expected == [bucket_of(m) for m in members]
    # A slice of a column (an offset into its buffers) gives the same buckets.
    assert bucket_column(column.slice(3, 50)).tolist() == expected[3:53]
    assert bucket_column(pa.array([], pa.string())).tolist() == []


async def test_redis_keeps_a_run_in_bucketed_hashes_with_one_expiry_each() -> None:
    pytest.importorskip("redis")
    import redis.asyncio as redis_asyncio

    from backends import redis_url
    from hybridserve.storage.redis_bulk import BUCKETS, MARKER

    url, prefix = redis_url(), f"hstest:{uuid.uuid4().hex[:8]}:"
    store = open_store(url, prefix)
    raw = redis_asyncio.Redis.from_url(url)
    n = 20_000
    try:
        members = [f"card_{i:06d}" for i in range(n)]
        rows = run_rows(members, [b"v%d" % i for i in range(n)], np.arange(n, dtype=float))
        await store.put_run("pb:r:1", rows, now() + 600)
        keys = [k async for k in raw.scan_iter(match=f"{prefix}pb:r:1:*", count=1000)]
        assert len(keys) == BUCKETS  # 20,000 records, 4,096 hashes
        assert sum([await raw.hlen(k) for k in keys[:50]]) < 50 * 20
        # A hash table from the first write (five members a bucket would fit a listpack):
        # the marker field does it, and scans do not list it.
        assert {await raw.object("encoding", k) for k in keys[:50]} == {b"hashtable"}
        assert all([await raw.hexists(k, MARKER) for k in keys[:50]])
        assert sorted([m async for m in store.scan_run("pb:r:1")]) == members
        ttl = await raw.pttl(keys[0])
        assert 590_000 < ttl <= 600_000
        await store.drop_run("pb:r:1")
        assert [k async for k in raw.scan_iter(match=f"{prefix}*", count=1000)] == []
    finally:
        await store.drop_run("pb:r:1")
        await store.close()
        await raw.aclose()


async def test_sqlite_keeps_a_run_in_its_own_file_indexed_when_sealed(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db", "t:")
    try:
        await store.put_run("pb:r:1", run_rows(["a", "b"], [b"1", b"2"], [1.0, 2.0]))
        await store.put_run("pb:r:1", run_rows(["b"], [b"2"], [2.0]))  # a chunk redone
        db = sqlite3.connect(tmp_path / "s.db")
        (run_id,) = db.execute("SELECT id FROM runs WHERE name = 't:pb:r:1'").fetchone()
        path = tmp_path / "s.db-runs" / f"run_{run_id}.db"
        run = sqlite3.connect(path)
        assert run.execute("SELECT count(*) FROM records").fetchone() == (3,)
        assert run.execute("PRAGMA index_list(records)").fetchall() == []
        assert run.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # not the WAL
        # The store's own database holds no run rows.
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
        assert not any(n.startswith("run_") or n == "records" for n in tables)
        await store.seal_run("pb:r:1")
        assert run.execute("SELECT count(*) FROM records").fetchone() == (2,)
        plan = run.execute("EXPLAIN QUERY PLAN SELECT * FROM records WHERE member = 'a'")
        assert "USING INDEX" in " ".join(str(r) for r in plan.fetchall())
        run.close()
        await store.drop_run("pb:r:1")
        assert not path.exists()
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        # An expired run's file goes with the next run write.
        await store.put_run("pb:r:old", run_rows(["a"], [b"1"], [1.0]), time.time() - 1)
        await store.put_run("pb:r:new", run_rows(["a"], [b"1"], [1.0]))
        assert db.execute("SELECT name FROM runs").fetchall() == [("t:pb:r:new",)]
        assert [p.name for p in (tmp_path / "s.db-runs").iterdir()] == [f"run_{run_id + 2}.db"]
        db.close()
    finally:
        await store.close()


async def test_sqlite_reads_and_drops_a_run_an_earlier_version_kept_as_a_table(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript(
        """
        CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                           expires_at REAL, sealed INTEGER NOT NULL DEFAULT 0);
        INSERT INTO runs(name) VALUES ('t:pb:r:old');
        CREATE TABLE run_1 (member TEXT NOT NULL, value BLOB NOT NULL, as_of REAL NOT NULL);
        INSERT INTO run_1 VALUES ('a', x'31', 1.0), ('a', x'32', 2.0);
        """
    )
    db.close()
    store = open_store(f"sqlite:///{tmp_path}/s.db", "t:")
    try:
        assert [e and e.value for e in await store.get_run("pb:r:old", ["a"])] == [b"2"]
        await store.seal_run("pb:r:old")
        await store.put_run("pb:r:new", run_rows(["a"], [b"3"], [3.0]))
        assert [e and e.value for e in await store.get_run("pb:r:new", ["a"])] == [b"3"]
        assert [e and e.value for e in await store.get_run("pb:r:old", ["a"])] == [b"2"]
        await store.drop_run("pb:r:old")
        assert await store.get_run("pb:r:old", ["a"]) == [None]
        db = sqlite3.connect(tmp_path / "s.db")
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'run_1'").fetchall() == []
        db.close()
    finally:
        await store.close()


async def test_sqlite_reader_sees_a_run_another_process_dropped_and_wrote_again(
    tmp_path: Path,
) -> None:
    reader = open_store(f"sqlite:///{tmp_path}/s.db", "t:")
    writer = open_store(f"sqlite:///{tmp_path}/s.db", "t:")
    try:
        await writer.put_run("pb:r:1", run_rows(["a"], [b"old"], [1.0]))
        assert [e and e.value for e in await reader.get_run("pb:r:1", ["a"])] == [b"old"]
        await writer.drop_run("pb:r:1")  # within the reader's second of trusting its lookup
        assert await reader.get_run("pb:r:1", ["a"]) == [None]
        await writer.put_run("pb:r:1", run_rows(["a"], [b"new"], [2.0]))
        assert [e and e.value for e in await reader.get_run("pb:r:1", ["a"])] == [b"new"]
    finally:
        await reader.close()
        await writer.close()


def test_line_replies_count_replies_across_reads_and_raise_on_an_error() -> None:
    from redis.exceptions import ResponseError

    from hybridserve.storage.redis_bulk import LineReplies

    reads = [b":1\r\n:0", b"\r\n:12\r", b"\n:3\r\n-WRONGTYPE Operation against a key\r\n:1\r\n"]
    replies = LineReplies(lambda size: reads.pop(0))
    replies.read(2)  # the second reply ends in the next read
    assert replies.pending == len(b":12\r")
    replies.read(2)
    assert replies.pending > 0 and reads == []
    with pytest.raises(ResponseError, match="WRONGTYPE Operation against a key"):
        replies.read(2)
    assert replies.pending == 0
    with pytest.raises(ConnectionError):
        LineReplies(lambda size: b"").read(1)


async def test_a_redis_error_in_a_run_write_is_a_store_error_and_the_next_write_works() -> None:
    pytest.importorskip("redis")
    import redis.asyncio as redis_asyncio

    from backends import redis_url
    from hybridserve.errors import StoreError
    from hybridserve.storage.redis_bulk import bucket_key, bucket_of

    url, prefix = redis_url(), f"hstest:{uuid.uuid4().hex[:8]}:"
    store = open_store(url, prefix)
    raw = redis_asyncio.Redis.from_url(url)
    members = [f"card_{i:06d}" for i in range(5000)]
    rows = run_rows(members, [b"v"] * len(members), np.ones(len(members)))
    try:
        # A string where one of the run's buckets goes: its HSET fails with WRONGTYPE.
        await raw.set(prefix + bucket_key("pb:r:1", bucket_of("card_002500")), b"not a hash")
        with pytest.raises(StoreError, match="WRONGTYPE"):
            await store.put_run("pb:r:1", rows, now() + 600)
        await store.put_run("pb:r:2", rows, now() + 600)  # the connection was not reused
        assert sorted([m async for m in store.scan_run("pb:r:2")]) == members
    finally:
        keys = [k async for k in raw.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await raw.delete(*keys)
        await store.close()
        await raw.aclose()
