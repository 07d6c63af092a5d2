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
    from hybridserve.storage.redis_bulk import BUCKETS

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
        ttl = await raw.pttl(keys[0])
        assert 590_000 < ttl <= 600_000
        await store.drop_run("pb:r:1")
        assert [k async for k in raw.scan_iter(match=f"{prefix}*", count=1000)] == []
    finally:
        await store.drop_run("pb:r:1")
        await store.close()
        await raw.aclose()


async def test_sqlite_keeps_a_run_in_its_own_table_indexed_when_sealed(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db", "t:")
    try:
        await store.put_run("pb:r:1", run_rows(["a", "b"], [b"1", b"2"], [1.0, 2.0]))
        await store.put_run("pb:r:1", run_rows(["b"], [b"2"], [2.0]))  # a chunk redone
        db = sqlite3.connect(tmp_path / "s.db")
        (table,) = db.execute("SELECT 'run_' || id FROM runs WHERE name = 't:pb:r:1'").fetchone()
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (3,)
        assert db.execute(f"PRAGMA index_list({table})").fetchall() == []
        await store.seal_run("pb:r:1")
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)
        plan = db.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE member = 'a'")
        assert "USING INDEX" in " ".join(str(r) for r in plan.fetchall())
        await store.drop_run("pb:r:1")
        assert db.execute(f"SELECT name FROM sqlite_master WHERE name = '{table}'").fetchall() == []
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        # An expired run's table goes with the next run write.
        await store.put_run("pb:r:old", run_rows(["a"], [b"1"], [1.0]), time.time() - 1)
        await store.put_run("pb:r:new", run_rows(["a"], [b"1"], [1.0]))
        assert db.execute("SELECT name FROM runs").fetchall() == [("t:pb:r:new",)]
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
