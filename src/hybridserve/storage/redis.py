"""Redis store: the shared backend for a real deployment.

Each key is a hash ``{v: value, t: as_of}`` with a native expiry (``PEXPIREAT``). Reads and
writes of many keys go through one Lua script per chunk of keys, all chunks in one round trip;
the compare-and-set on ``as_of`` is atomic however many processes or hosts write at once.

A run's records live in bucketed hashes (:mod:`.redis_bulk`), written as plain multi-field
``HSET`` commands in one pipeline per call, with one expiry per bucket; a read of a key and a
run member together is one script call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import islice, repeat
from typing import Any

import msgpack
import pyarrow as pa

from hybridserve._optional import require
from hybridserve.errors import StoreError
from hybridserve.storage.base import Entry, Write
from hybridserve.storage.redis_bulk import (
    BUCKETS,
    MARKER,
    LineReplies,
    bucket_key,
    bucket_of,
    hset_batches,
    unpack_value,
)
from hybridserve.urls import masked_url

# Scripts take a column of byte strings as one argument, a msgpack array (see :func:`packed`;
# Lua's ``cmsgpack.unpack`` takes it apart in C), rather than one argument per string: redis-py
# encodes and frames every argument in Python, which cost more than the scripts themselves.
# (Joined strings with their lengths, split by ``string.sub`` in Lua, cost this Redis 16.1 us of
# CPU per event in a stream commit, against 12.3 us with msgpack.) Keys are not declared in
# KEYS, so the scripts are not cluster-safe (Redis Cluster would need them in one hash slot).


def packed(parts: Sequence[bytes]) -> bytes:
    """A column of byte strings as one script argument, for ``cmsgpack.unpack``: msgpack's
    raw (str) type, as the cmsgpack of Redis 7.0 reads no bin type."""
    return msgpack.packb(list(parts), use_bin_type=False)  # type: ignore[no-any-return]


# ARGV: keys, values, as_of, expire_at_ms (0 = never), each packed. Returns how many were written.
_CAS_LUA = """
local keys, vals = cmsgpack.unpack(ARGV[1]), cmsgpack.unpack(ARGV[2])
local as_of, exps = cmsgpack.unpack(ARGV[3]), cmsgpack.unpack(ARGV[4])
local written = 0
for i, key in ipairs(keys) do
  local t, exp = as_of[i], tonumber(exps[i])
  local cur = redis.call('HGET', key, 't')
  if (not cur) or tonumber(cur) <= tonumber(t) then
    redis.call('HSET', key, 'v', vals[i], 't', t)
    if exp > 0 then
      redis.call('PEXPIREAT', key, exp)
    elseif cur then
      redis.call('PERSIST', key)  -- a new key has no expiry to clear
    end
    written = written + 1
  end
end
return written
"""

# ARGV: the keys, packed. Returns value, as_of, value, as_of, ... (nils for an absent key).
_GET_LUA = """
local out, n = {}, 0
for _, key in ipairs(cmsgpack.unpack(ARGV[1])) do
  local r = redis.call('HMGET', key, 'v', 't')
  out[n + 1], out[n + 2], n = r[1], r[2], n + 2
end
return out
"""

# ARGV: keys, bucket keys, members, each packed. Returns value, as_of per key (as _GET_LUA),
# then the packed field value of each member (nil when absent).
_GET_RUN_LUA = """
local out, n = {}, 0
for _, key in ipairs(cmsgpack.unpack(ARGV[1])) do
  local r = redis.call('HMGET', key, 'v', 't')
  out[n + 1], out[n + 2], n = r[1], r[2], n + 2
end
local members = cmsgpack.unpack(ARGV[3])
for i, bucket in ipairs(cmsgpack.unpack(ARGV[2])) do
  out[n + 1], n = redis.call('HGET', bucket, members[i]), n + 1
end
return out
"""

_BULK_TIMEOUT = 60.0

# Keys per script call: big enough to amortise the round trip, small enough not to stall
# Redis (a script blocks the server while it runs; 500 keys take about a millisecond).
_CHUNK = 500


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore:
    def __init__(self, url: str, prefix: str = "", *, timeout: float = 2.0) -> None:
        redis_asyncio = require("redis.asyncio", "redis")
        self.url = url
        self._prefix = prefix
        # A blocking pool: past 64 connections in use a call waits for one to come back
        # instead of failing with "Too many connections". Running out of our own connections
        # under load is our saturation, not Redis failing, and must not charge its breaker.
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=64,
            timeout=timeout,
            health_check_interval=30,
        )
        self._redis: Any = redis_asyncio.Redis.from_pool(pool)
        self._timeout = timeout
        self._bulk_client: Any = None
        self._bulk_lock = threading.Lock()
        self._cas = self._redis.register_script(_CAS_LUA)
        self._get = self._redis.register_script(_GET_LUA)
        self._get_run = self._redis.register_script(_GET_RUN_LUA)
        self._errors: tuple[type[BaseException], ...] = (
            require("redis.exceptions", "redis").RedisError,
            OSError,
        )

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        if not keys:
            return []
        p = self._prefix
        try:
            if len(keys) == 1:
                results = await self._redis.hmget(p + keys[0], "v", "t")
            else:
                # ``async with``: a pipeline that fails must give its connection back.
                async with self._redis.pipeline(transaction=False) as pipe:
                    for start in range(0, len(keys), _CHUNK):
                        chunk = [(p + k).encode() for k in keys[start : start + _CHUNK]]
                        await self._get(keys=[], args=[packed(chunk)], client=pipe)
                    results = [x for part in await pipe.execute() for x in part]
        except self._errors as exc:
            raise StoreError(f"Redis read failed ({masked_url(self.url)}): {exc}") from exc
        out: list[Entry | None] = []
        for i, key in enumerate(keys):
            value = results[2 * i]
            out.append(None if value is None else Entry(key, value, float(results[2 * i + 1])))
        return out

    async def put_many(self, writes: Sequence[Write]) -> int:
        if not writes:
            return 0
        return await self._put(
            [w.key for w in writes],
            [w.value for w in writes],
            [w.as_of for w in writes],
            [w.expires_at for w in writes],
        )

    async def put_columns(
        self,
        keys: Sequence[str],
        values: Sequence[bytes],
        as_of: Sequence[float],
        expires_at: float | None = None,
    ) -> int:
        if not keys:
            return 0
        return await self._put(keys, values, as_of, repeat(expires_at))

    async def _put(
        self,
        keys: Sequence[str],
        values: Sequence[bytes],
        as_of: Sequence[float],
        expires_at: Iterable[float | None],
    ) -> int:
        """Compare-and-set writes: one Lua call per chunk of keys, every chunk in one pipeline."""
        p = self._prefix
        exps = [0 if e is None else max(1, int(e * 1000)) for e in islice(expires_at, len(keys))]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(keys), _CHUNK):
                    end = start + _CHUNK
                    args = [
                        packed([(p + k).encode() for k in keys[start:end]]),
                        packed(values[start:end]),
                        packed([repr(float(a)).encode() for a in as_of[start:end]]),
                        packed([str(e).encode() for e in exps[start:end]]),
                    ]
                    await self._cas(keys=[], args=args, client=pipe)
                results = await pipe.execute()
        except self._errors as exc:
            raise StoreError(f"Redis write failed ({masked_url(self.url)}): {exc}") from exc
        return int(sum(results))

    async def delete_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        try:
            return int(await self._redis.delete(*[self._prefix + k for k in keys]))
        except self._errors as exc:
            raise StoreError(f"Redis delete failed ({masked_url(self.url)}): {exc}") from exc

    async def put_run(self, run: str, rows: pa.RecordBatch, expires_at: float | None = None) -> int:
        # A blocking client in a thread: redis-py's asyncio client costs about 10 us of CPU
        # per reply read, the blocking one about 2.5 (a chunk's write has thousands).
        return await asyncio.get_running_loop().run_in_executor(
            None, self._put_run, self._prefix + run, rows, expires_at
        )

    def _put_run(self, name: str, rows: pa.RecordBatch, expires_at: float | None) -> int:
        exp = None if expires_at is None else max(1, int(expires_at * 1000))
        pool = self._bulk().connection_pool
        try:
            conn = pool.get_connection()
        except self._errors as exc:
            raise StoreError(f"Redis write failed ({masked_url(self.url)}): {exc}") from exc
        try:
            conn.connect()  # a connection fresh from the pool may not be open yet
            # Replies are read from the connection's socket, past redis-py's parser (see
            # LineReplies): nothing else reads it until the connection is released, and a
            # failure disconnects it, so no reply is ever left for its next user.
            replies = LineReplies(conn._sock.recv)
            # Send a batch, then encode the next while Redis works; read replies one batch behind.
            waiting = 0
            for commands, count in hset_batches(name, rows, exp):
                conn.send_packed_command(commands)
                replies.read(waiting)
                waiting = count
            replies.read(waiting)
            if replies.pending:  # never expected: more replies than commands
                raise ConnectionError("Redis sent more replies than commands")
        except BaseException as exc:
            conn.disconnect()  # replies may still be on the way: never reuse it
            if isinstance(exc, self._errors):
                raise StoreError(f"Redis write failed ({masked_url(self.url)}): {exc}") from exc
            raise
        finally:
            pool.release(conn)
        return int(rows.num_rows)

    def _bulk(self) -> Any:
        """The blocking client of run writes (made on first use, with a longer timeout: a
        bulk write under load may take seconds, and no request waits on it)."""
        with self._bulk_lock:
            if self._bulk_client is None:
                redis_sync = require("redis", "redis")
                pool = redis_sync.BlockingConnectionPool.from_url(
                    self.url,
                    socket_timeout=_BULK_TIMEOUT,
                    socket_connect_timeout=self._timeout,
                    max_connections=8,
                    timeout=_BULK_TIMEOUT,
                )
                self._bulk_client = redis_sync.Redis.from_pool(pool)
            return self._bulk_client

    async def get_run(
        self, run: str, members: Sequence[str], keys: Sequence[str] = ()
    ) -> list[Entry | None]:
        p = self._prefix
        name = p + run
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, max(len(keys), len(members)), _CHUNK):
                    own = [(p + k).encode() for k in keys[start : start + _CHUNK]]
                    part = members[start : start + _CHUNK]
                    buckets = [bucket_key(name, bucket_of(m)).encode() for m in part]
                    args = [packed(own), packed(buckets), packed([m.encode() for m in part])]
                    await self._get_run(keys=[], args=args, client=pipe)
                results = await pipe.execute()
        except self._errors as exc:
            raise StoreError(f"Redis read failed ({masked_url(self.url)}): {exc}") from exc
        own_out: list[Entry | None] = []
        run_out: list[Entry | None] = []
        for i, part in enumerate(results):
            start = i * _CHUNK
            n_own = max(0, min(_CHUNK, len(keys) - start))
            for j in range(n_own):
                value = part[2 * j]
                own_out.append(
                    None if value is None else Entry(keys[start + j], value, float(part[2 * j + 1]))
                )
            for j, field in enumerate(part[2 * n_own :]):
                if field is None:
                    run_out.append(None)
                else:
                    value, as_of = unpack_value(field)
                    run_out.append(Entry(members[start + j], value, as_of))
        return own_out + run_out

    def _buckets(self, run: str) -> list[str]:
        return [bucket_key(self._prefix + run, b) for b in range(BUCKETS)]

    async def scan_run(self, run: str) -> AsyncIterator[str]:
        buckets = self._buckets(run)
        for start in range(0, BUCKETS, 256):
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in buckets[start : start + 256]:
                        pipe.hkeys(key)
                    parts = await pipe.execute()
            except self._errors as exc:
                raise StoreError(f"Redis scan failed ({masked_url(self.url)}): {exc}") from exc
            for members in parts:
                for m in members:
                    if m != MARKER:
                        yield m.decode()

    async def seal_run(self, run: str) -> None:
        return None  # a hash field is found by its bucket: nothing to build

    async def drop_run(self, run: str) -> None:
        buckets = self._buckets(run)
        try:
            for start in range(0, BUCKETS, 1024):
                await self._redis.unlink(*buckets[start : start + 1024])
        except self._errors as exc:
            raise StoreError(f"Redis delete failed ({masked_url(self.url)}): {exc}") from exc

    async def scan(self, prefix: str) -> AsyncIterator[str]:
        seen: set[bytes] = set()
        cut = len(self._prefix)
        pattern = _escape_glob(self._prefix + prefix) + "*"
        try:
            async for key in self._redis.scan_iter(match=pattern, count=1000):
                if key not in seen:  # SCAN may return a key more than once
                    seen.add(key)
                    yield key.decode()[cut:]
        except self._errors as exc:
            raise StoreError(f"Redis scan failed ({masked_url(self.url)}): {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except self._errors as exc:
            raise StoreError(f"Redis is unreachable at {masked_url(self.url)}: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
        if self._bulk_client is not None:
            self._bulk_client.close()
