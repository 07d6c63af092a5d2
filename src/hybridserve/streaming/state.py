"""Where a stream consumer commits: per-entity window state, the seen-set, the output stream.

A batch commits with :meth:`StateStore.commit`: a compare-and-set on each touched entity's
state version, plus the event ids it makes *seen* (with a TTL). It fails, writing nothing,
when another consumer changed one of those states or already committed one of those events;
the consumer then reloads and redoes the batch. That is what keeps several consumers of one
group from losing each other's updates, and a reclaimed entry from being counted twice.

- :class:`RedisStateStore`: one Lua script per commit, so the state writes, the seen-set and
  (when the output stream lives on the same Redis) the output entries are written together
  or not at all.
- :class:`KVStateStore`: any :class:`~hybridserve.storage.KVStore` (memory, SQLite) for one
  process; the check-and-write runs under a process-wide lock. Outputs are not part of its
  commit: the consumer emits them (idempotently, per event id) just before committing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from hybridserve._optional import require
from hybridserve.errors import StoreError
from hybridserve.records import now
from hybridserve.storage import Entry, KVStore

Output = tuple[str, bytes]
"""``(event_id, payload)`` for the output stream."""
StateWrite = tuple[str, int, bytes]
"""``(entity, expected_version, new_value)``."""


def state_key(stream: str, entity: str) -> str:
    return f"w:{stream}:{entity}"


def seen_key(stream: str, event_id: str) -> str:
    return f"s:{stream}:{event_id}"


class StateStore(Protocol):
    atomic_outputs: bool
    """Whether :meth:`commit` writes the outputs itself (else the caller emits them first)."""

    async def seen(self, event_ids: Sequence[str]) -> list[bool]: ...

    async def load(self, entities: Sequence[str]) -> list[tuple[int, bytes | None]]:
        """``(version, value)`` per entity; version 0 and ``None`` when there is no state."""
        ...

    async def commit(
        self, states: Sequence[StateWrite], seen: Sequence[str], outputs: Sequence[Output]
    ) -> bool: ...

    async def close(self) -> None: ...


_LOCKS: dict[tuple[str, str, int], asyncio.Lock] = {}


class KVStateStore:
    atomic_outputs = False

    def __init__(self, kv: KVStore, stream: str, ttl: float) -> None:
        self.kv, self.stream, self.ttl = kv, stream, ttl

    def _lock(self) -> asyncio.Lock:
        key = (self.kv.url, self.stream, id(asyncio.get_running_loop()))
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = asyncio.Lock()
        return lock

    async def seen(self, event_ids: Sequence[str]) -> list[bool]:
        entries = await self.kv.get_many([seen_key(self.stream, e) for e in event_ids])
        return [e is not None for e in entries]

    async def load(self, entities: Sequence[str]) -> list[tuple[int, bytes | None]]:
        entries = await self.kv.get_many([state_key(self.stream, e) for e in entities])
        return [(0, None) if e is None else (int(e.as_of), e.value) for e in entries]

    async def commit(
        self, states: Sequence[StateWrite], seen: Sequence[str], outputs: Sequence[Output]
    ) -> bool:
        async with self._lock():
            current = await self.load([s[0] for s in states])
            if any(cur[0] != s[1] for cur, s in zip(current, states, strict=True)):
                return False
            if any(await self.seen(seen)):
                return False
            await self.kv.put_many(
                [Entry(state_key(self.stream, e), v, float(n + 1)) for e, n, v in states]
            )
            expires = now() + self.ttl
            await self.kv.put_many(
                [Entry(seen_key(self.stream, e), b"1", 0.0, expires) for e in seen]
            )
            return True

    async def close(self) -> None:
        return None


# ARGV[1]: JSON {ttl, s: [[key, expected_version, value]], seen: [key], out, maxlen, o: [[id, d]]}.
# One argument rather than thousands: redis-py packs each argument in Python, cjson decodes in C.
# A state is stored as "version:value". The keys are built by the caller from one prefix, so
# the script is not cluster-safe (Redis Cluster would need them all in one hash slot).
_COMMIT_LUA = """
local req = cjson.decode(ARGV[1])
for _, s in ipairs(req.s) do
  local cur = redis.call('GET', s[1])
  local n = 0
  if cur then n = tonumber(string.match(cur, '^(%d+):')) end
  if n ~= s[2] then return 0 end
end
for _, k in ipairs(req.seen) do
  if redis.call('EXISTS', k) == 1 then return 0 end
end
for _, s in ipairs(req.s) do
  redis.call('SET', s[1], string.format('%d', s[2] + 1) .. ':' .. s[3], 'PX', req.ttl)
end
for _, k in ipairs(req.seen) do
  redis.call('SET', k, '1', 'PX', req.ttl)
end
for _, o in ipairs(req.o) do
  if req.maxlen > 0 then
    redis.call('XADD', req.out, 'MAXLEN', '~', req.maxlen, '*', 'id', o[1], 'd', o[2])
  else
    redis.call('XADD', req.out, '*', 'id', o[1], 'd', o[2])
  end
end
return 1
"""


class RedisStateStore:
    """State, seen-set and outputs on one Redis, committed by one script call per batch."""

    def __init__(
        self,
        url: str,
        prefix: str,
        stream: str,
        ttl: float,
        *,
        output_key: str | None = None,
        maxlen: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        redis_asyncio = require("redis.asyncio", "redis")
        self.url, self.prefix, self.stream, self.ttl = url, prefix, stream, ttl
        self.output_key, self.maxlen = output_key, maxlen
        self.atomic_outputs = output_key is not None
        self._redis: Any = redis_asyncio.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._commit = self._redis.register_script(_COMMIT_LUA)
        self._errors = (require("redis.exceptions", "redis").RedisError, OSError)

    async def seen(self, event_ids: Sequence[str]) -> list[bool]:
        if not event_ids:
            return []
        p, s = self.prefix, self.stream
        try:
            found = await self._redis.mget([p + seen_key(s, e) for e in event_ids])
        except self._errors as exc:
            raise StoreError(f"Redis read failed ({self.url}): {exc}") from exc
        return [v is not None for v in found]

    async def load(self, entities: Sequence[str]) -> list[tuple[int, bytes | None]]:
        if not entities:
            return []
        p, s = self.prefix, self.stream
        try:
            found = await self._redis.mget([p + state_key(s, e) for e in entities])
        except self._errors as exc:
            raise StoreError(f"Redis read failed ({self.url}): {exc}") from exc
        out: list[tuple[int, bytes | None]] = []
        for raw in found:
            if raw is None:
                out.append((0, None))
            else:
                version, _, value = raw.partition(b":")
                out.append((int(version), value))
        return out

    async def commit(
        self, states: Sequence[StateWrite], seen: Sequence[str], outputs: Sequence[Output]
    ) -> bool:
        p, s = self.prefix, self.stream
        request = {
            "ttl": max(1, int(self.ttl * 1000)),
            "s": [[p + state_key(s, e), n, v.decode()] for e, n, v in states],
            "seen": [p + seen_key(s, e) for e in seen],
            "out": self.output_key or "",
            "maxlen": self.maxlen or 0,
            "o": [[i, d.decode()] for i, d in outputs] if self.atomic_outputs else [],
        }
        try:
            return bool(await self._commit(keys=[], args=[orjson.dumps(request)]))
        except self._errors as exc:
            raise StoreError(f"Redis commit failed ({self.url}): {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
