"""Redis store: the shared backend for a real deployment.

Each key is a hash ``{v: value, t: as_of}`` with a native expiry (``PEXPIREAT``). Reads and
writes of many keys go through one Lua script per chunk of keys, all chunks in one round trip;
the compare-and-set on ``as_of`` is atomic however many processes or hosts write at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import islice, repeat
from typing import Any

from hybridserve._optional import require
from hybridserve.errors import StoreError
from hybridserve.storage.base import Entry, Write

# The write script takes its keys and values packed into three arguments (keys joined, values
# joined, one "lengths and numbers" string) rather than three arguments per key: redis-py
# encodes and frames every argument in Python, which cost more than the script itself. The keys
# are not declared in KEYS, so the script is not cluster-safe (Redis Cluster would need them in
# one hash slot anyway).

# ARGV[1]: keys joined; ARGV[2]: values joined; ARGV[3]: "key_len,value_len,as_of,expire_at_ms;"
# per key, in order (lengths in bytes; expire_at_ms 0 = never). Returns how many were written.
_CAS_LUA = """
local keys, vals = ARGV[1], ARGV[2]
local kpos, vpos, written = 1, 1, 0
for klen, vlen, t, exp in string.gmatch(ARGV[3], '(%d+),(%d+),([^,;]+),(%d+);') do
  local key = string.sub(keys, kpos, kpos + klen - 1)
  local val = string.sub(vals, vpos, vpos + vlen - 1)
  kpos, vpos = kpos + klen, vpos + vlen
  local cur = redis.call('HGET', key, 't')
  if (not cur) or tonumber(cur) <= tonumber(t) then
    redis.call('HSET', key, 'v', val, 't', t)
    if tonumber(exp) > 0 then
      redis.call('PEXPIREAT', key, exp)
    elseif cur then
      redis.call('PERSIST', key)  -- a new key has no expiry to clear
    end
    written = written + 1
  end
end
return written
"""

# ARGV[1]: keys joined; ARGV[2]: "key_len," per key. Returns value, as_of, value, as_of, ...
# (nils for an absent key). Many keys in one command: a pipeline of HMGETs costs the client
# one packed and framed command per key, several times what Redis spends answering it.
_GET_LUA = """
local keys, kpos, out, n = ARGV[1], 1, {}, 0
for klen in string.gmatch(ARGV[2], '(%d+),') do
  local r = redis.call('HMGET', string.sub(keys, kpos, kpos + klen - 1), 'v', 't')
  kpos = kpos + klen
  out[n + 1], out[n + 2], n = r[1], r[2], n + 2
end
return out
"""

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
        self._redis: Any = redis_asyncio.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=64,
            health_check_interval=30,
        )
        self._cas = self._redis.register_script(_CAS_LUA)
        self._get = self._redis.register_script(_GET_LUA)
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
                        lengths = "".join(f"{len(k)}," for k in chunk)
                        await self._get(keys=[], args=[b"".join(chunk), lengths], client=pipe)
                    results = [x for part in await pipe.execute() for x in part]
        except self._errors as exc:
            raise StoreError(f"Redis read failed ({self.url}): {exc}") from exc
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
                    kb = [(p + k).encode() for k in keys[start:end]]
                    vb = values[start:end]
                    meta = "".join(
                        [
                            f"{len(k)},{len(v)},{float(a)!r},{e};"
                            for k, v, a, e in zip(
                                kb, vb, as_of[start:end], exps[start:end], strict=True
                            )
                        ]
                    )
                    await self._cas(keys=[], args=[b"".join(kb), b"".join(vb), meta], client=pipe)
                results = await pipe.execute()
        except self._errors as exc:
            raise StoreError(f"Redis write failed ({self.url}): {exc}") from exc
        return int(sum(results))

    async def delete_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        try:
            return int(await self._redis.delete(*[self._prefix + k for k in keys]))
        except self._errors as exc:
            raise StoreError(f"Redis delete failed ({self.url}): {exc}") from exc

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
            raise StoreError(f"Redis scan failed ({self.url}): {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except self._errors as exc:
            raise StoreError(f"Redis is unreachable at {self.url}: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
