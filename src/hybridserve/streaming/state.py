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
  process; the check-and-write runs under a process-wide lock, and the states, the seen-set
  and the outputs (``o:{stream}:{event_id}``, readable by other processes with
  :meth:`KVStateStore.outputs`) are written by one ``put_many`` (one SQLite transaction),
  all with the same ``dedup_ttl`` expiry as on Redis. The source's own output log (the
  in-process one of a memory or replay source) is not in the store: the consumer emits to
  it (idempotently, per event id) just before committing. On
  SQLite one process at a time consumes a stream: the next is refused at start (an advisory
  lock on a file beside the database, released by the kernel when the holder dies).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, Protocol

from hybridserve._optional import require
from hybridserve.errors import ConfigError, StoreError
from hybridserve.records import now
from hybridserve.storage import Entry, KVStore
from hybridserve.storage.redis import packed
from hybridserve.streaming.deadlines import bounded, close_client
from hybridserve.urls import masked_url

Output = tuple[str, bytes]
"""``(event_id, payload)`` for the output stream."""
StateWrite = tuple[str, int, bytes]
"""``(entity, expected_version, new_value)``."""


def state_key(stream: str, entity: str) -> str:
    return f"w:{stream}:{entity}"


def seen_key(stream: str, event_id: str) -> str:
    return f"s:{stream}:{event_id}"


def output_entry_key(stream: str, event_id: str) -> str:
    return f"o:{stream}:{event_id}"


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


_HELD: dict[str, list[int]] = {}
"""Lock file -> [its descriptor, users in this process]."""


def _lock_file(kv: KVStore, stream: str) -> str | None:
    url = kv.url
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None  # a memory store lives and dies with its one process
    return f"{url.removeprefix('sqlite:///')}.stream-{stream}.lock"


def _take_lock(kv: KVStore, stream: str) -> str | None:
    """Hold the lock that makes this process the stream's one consumer on an SQLite store."""
    path = _lock_file(kv, stream)
    if path is None:
        return None
    held = _HELD.get(path)
    if held is not None:
        held[1] += 1
        return path
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): nothing to check with
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"stream {stream}: another process (pid {holder}) is consuming it on the embedded "
            f"store {kv.url}; an embedded store takes one consumer process: stop that one, or "
            "put the online store on Redis to run several"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[path] = [fd, 1]
    return path


def _drop_lock(path: str | None) -> None:
    held = _HELD.get(path) if path is not None else None
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[path]  # type: ignore[arg-type]
        os.close(held[0])  # closing the descriptor releases the lock


class KVStateStore:
    atomic_outputs = False

    def __init__(self, kv: KVStore, stream: str, ttl: float) -> None:
        self.kv, self.stream, self.ttl = kv, stream, ttl
        self._lock_path = _take_lock(kv, stream)

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
            # One write, so one transaction: states, seen-set and outputs land together.
            at = now()
            expires, s = at + self.ttl, self.stream
            await self.kv.put_many(
                [Entry(state_key(s, e), v, float(n + 1), expires) for e, n, v in states]
                + [Entry(seen_key(s, e), b"1", 0.0, expires) for e in seen]
                + [Entry(output_entry_key(s, e), d, at, expires) for e, d in outputs]
            )
            return True

    async def outputs(self, event_ids: Sequence[str]) -> list[bytes | None]:
        """The committed output of each event (``None``: none, or expired)."""
        entries = await self.kv.get_many([output_entry_key(self.stream, e) for e in event_ids])
        return [None if e is None else e.value for e in entries]

    async def close(self) -> None:
        _drop_lock(self._lock_path)
        self._lock_path = None


# ARGV[1] ttl_ms, ARGV[2] maxlen (0: none), ARGV[3] the output stream key ("" for none), then
# packed columns (see ``hybridserve.storage.redis.packed``): state keys, their expected
# versions, their new entries; seen keys; output ids, output payloads. A state is stored as
# "version:value"; the caller sends each new entry whole, the next version already in front
# (joined in Lua, it cost the script a tenth of its time). The keys are built by the caller
# from one prefix, so the script is not cluster-safe (Redis Cluster would need them all in
# one hash slot).
_COMMIT_LUA = """
local ttl, maxlen, out = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local keys, versions = cmsgpack.unpack(ARGV[4]), cmsgpack.unpack(ARGV[5])
local entries = cmsgpack.unpack(ARGV[6])
local seen = cmsgpack.unpack(ARGV[7])
local ids, payloads = cmsgpack.unpack(ARGV[8]), cmsgpack.unpack(ARGV[9])
-- One MGET and one EXISTS per 1,000 keys, not one call per key: a call costs Redis more than
-- the lookup it makes.
for lo = 1, #keys, 1000 do
  local cur = redis.call('MGET', unpack(keys, lo, math.min(lo + 999, #keys)))
  for j = 1, #cur do
    local have = 0
    if cur[j] then have = tonumber(string.match(cur[j], '^(%d+):')) end
    if have ~= tonumber(versions[lo + j - 1]) then return 0 end
  end
end
for lo = 1, #seen, 1000 do
  if redis.call('EXISTS', unpack(seen, lo, math.min(lo + 999, #seen))) > 0 then return 0 end
end
for i, key in ipairs(keys) do redis.call('SET', key, entries[i], 'PX', ttl) end
for _, key in ipairs(seen) do redis.call('SET', key, '1', 'PX', ttl) end
for i, id in ipairs(ids) do
  if maxlen > 0 then
    redis.call('XADD', out, 'MAXLEN', '~', maxlen, '*', 'id', id, 'd', payloads[i])
  else
    redis.call('XADD', out, '*', 'id', id, 'd', payloads[i])
  end
end
return 1
"""


def _entry(version: int, value: bytes) -> bytes:
    """A state as Redis holds it: ``version:value`` (the commit script reads the version)."""
    return b"%d:%b" % (version, value)


def _parse_entry(raw: bytes) -> tuple[int, bytes]:
    version, _, value = raw.partition(b":")
    return int(version), value


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
        self.output_key, self.maxlen, self.timeout = output_key, maxlen, timeout
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
            found = await bounded(
                self._redis.mget([p + seen_key(s, e) for e in event_ids]), self.timeout
            )
        except self._errors as exc:
            raise StoreError(f"Redis read failed ({masked_url(self.url)}): {exc}") from exc
        return [v is not None for v in found]

    async def load(self, entities: Sequence[str]) -> list[tuple[int, bytes | None]]:
        if not entities:
            return []
        p, s = self.prefix, self.stream
        try:
            found = await bounded(
                self._redis.mget([p + state_key(s, e) for e in entities]), self.timeout
            )
        except self._errors as exc:
            raise StoreError(f"Redis read failed ({masked_url(self.url)}): {exc}") from exc
        out: list[tuple[int, bytes | None]] = []
        for raw in found:
            out.append((0, None) if raw is None else _parse_entry(raw))
        return out

    async def commit(
        self, states: Sequence[StateWrite], seen: Sequence[str], outputs: Sequence[Output]
    ) -> bool:
        p, s = self.prefix, self.stream
        outs = outputs if self.atomic_outputs else ()
        args = [
            max(1, int(self.ttl * 1000)),
            self.maxlen or 0,
            self.output_key or "",
            packed([(p + state_key(s, e)).encode() for e, _, _ in states]),
            packed([str(n).encode() for _, n, _ in states]),
            packed([_entry(n + 1, v) for _, n, v in states]),
            packed([(p + seen_key(s, e)).encode() for e in seen]),
            packed([i.encode() for i, _ in outs]),
            packed([d for _, d in outs]),
        ]
        try:
            return bool(await bounded(self._commit(keys=[], args=args), self.timeout))
        except self._errors as exc:
            raise StoreError(f"Redis commit failed ({masked_url(self.url)}): {exc}") from exc

    async def close(self) -> None:
        await close_client(self._redis.aclose, self.timeout)
