"""Redis Streams with a consumer group: the distributed source (Redis 7.0 commands only).

Each event is one entry with a field ``d`` holding its JSON (entries written by other
producers as plain field/value pairs are accepted too). A consumer first re-reads its own
pending entries (``XREADGROUP ... 0``), then new ones (``>``); entries a dead consumer left
pending longer than ``claim_idle`` are found with ``XPENDING ... IDLE`` and taken over with
``XCLAIM`` (never the consumer's own: those are in flight). Delivery counts come
from ``XPENDING`` (extended form). Dead letters and outputs are written by a Lua script that
sets a marker key per entry (``SET NX``) before its ``XADD``, so a batch redone after a crash
writes each of them once.

With ``partitions: N`` (N > 1) the events are split over N stream keys ``{stream}:p{i}`` by
``crc32(entity) % N``, each with its own consumer group, and an entry's id names its
partition (``{i}/{stream id}``). A Redis Streams group hands each entry to whichever consumer
reads next, so two consumers of one key keep working on the same entities and their commits
conflict; partitions keep an entity with one consumer. The consumers divide the partitions
by membership and leases: each sends a heartbeat (a sorted set scored by Redis's own clock)
every fifth of ``member_ttl``, wants the partitions ``i`` with ``i % live_members == its
rank`` and holds a lease per partition it reads. A partition changes hands only once its
holder has acknowledged everything it read from it (it stops reading new entries there and
drains first), or once its lease expired; the new holder first claims what others left
pending there, then reads on. So one entity's events run on one consumer at a time and in
order, and a consumer that joins or leaves costs no commit conflicts. A consumer's own
pending entries are re-read from every partition, and a dead consumer's are claimed from
every partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from hybridserve._optional import require
from hybridserve.config import Project, RedisSourceConfig
from hybridserve.errors import ConfigError, StoreError
from hybridserve.records import now
from hybridserve.streaming.deadlines import bounded, close_client
from hybridserve.streaming.events import RawEntry
from hybridserve.streaming.sources.base import (
    REDIS_SCHEMES,
    DeadLetter,
    Opening,
    SourceInfo,
    StreamIO,
    dead_letter_key,
    entity_keys,
    output_key,
    stream_key,
)
from hybridserve.urls import masked_url

# KEYS[1]: stream; KEYS[1 + i]: marker of item i.
# ARGV: ttl_ms, maxlen (0: none), nf, nf field names, then nf values per item.
_ONCE_LUA = """
local ttl, maxlen, nf = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local written = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ttl) then
    local args = {KEYS[1]}
    if maxlen > 0 then table.insert(args, 'MAXLEN'); table.insert(args, '~');
      table.insert(args, maxlen) end
    table.insert(args, '*')
    local base = 3 + nf + (i - 2) * nf
    for f = 1, nf do table.insert(args, ARGV[3 + f]); table.insert(args, ARGV[base + f]) end
    redis.call('XADD', unpack(args))
    written = written + 1
  end
end
return written
"""


log = logging.getLogger("hybridserve.stream")
T = TypeVar("T")

ACTIVE = 2.0
"""Seconds: a consumer of the group that read within them counts as active (``shared``)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def partition_key(key: str, i: int) -> str:
    """Partition ``i``'s stream key of a stream split over partitions."""
    return f"{key}:p{i}"


# Membership and partition leases, in one step. KEYS[1]: the members sorted set; KEYS[2 + p]:
# partition p's lease; KEYS[2 + N + p]: partition p's stream. ARGV: consumer, ttl_ms, leave
# (1: give everything up). Scores and lease expiries are Redis's clock, so consumers on hosts
# with skewed clocks agree on who is live. A live member ranks its name among the members'
# and wants the partitions p with p % members == rank. It takes a wanted lease nobody holds,
# renews the leases it holds, and releases a lease it no longer wants only once its own
# pending list on that partition is empty: a partition changes hands only after everything
# its last holder read from it is acknowledged, so one entity's events never run on two
# consumers at once, nor out of order. Returns p, state pairs for the leases held:
# 1 held and wanted, 2 held while its pending entries drain, 3 just taken; then -1 and how
# many wanted partitions another consumer still holds.
_MEMBERS_LUA = """
local me, ttl, leave = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local n = (#KEYS - 1) / 2
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if leave then redis.call('ZREM', KEYS[1], me) else redis.call('ZADD', KEYS[1], ms, me) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
local names = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(names)
local rank, live = -1, #names
for i, name in ipairs(names) do if name == me then rank = i - 1 end end
local out, waiting = {}, 0
for p = 0, n - 1 do
  local lease = KEYS[2 + p]
  local owner = redis.call('GET', lease)
  local want = rank >= 0 and p % live == rank
  if owner == me then
    local busy = #redis.call('XPENDING', KEYS[2 + n + p], ARGV[4], '-', '+', 1, me) > 0
    if want or (busy and not leave) then
      redis.call('PEXPIRE', lease, ttl)
      out[#out + 1] = p; out[#out + 1] = want and 1 or 2
    elseif not busy or leave then
      redis.call('DEL', lease)
    end
  elseif not owner and want then
    redis.call('SET', lease, me, 'PX', ttl)
    out[#out + 1] = p; out[#out + 1] = 3
  elseif want then
    waiting = waiting + 1
  end
end
out[#out + 1] = -1; out[#out + 1] = waiting
return out
"""


class RedisSource:
    """Source, sinks and producer in one: every capability of the interface."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        key: str,
        group: str,
        consumer: str,
        *,
        dead_letter_key: str,
        output_key: str,
        maxlen: int | None = None,
        marker_ttl: float = 86400.0,
        timeout: float = 5.0,
        partitions: int = 1,
        member_ttl: float = 5.0,
        entity_of: Callable[[Sequence[bytes]], list[str | None]] | None = None,
    ) -> None:
        redis_asyncio = require("redis.asyncio", "redis")
        self.url, self.key, self.group, self.consumer = url, key, group, consumer
        self.dead_letter_key, self.output_key = dead_letter_key, output_key
        self.maxlen, self.marker_ttl, self.timeout = maxlen, marker_ttl, timeout
        if partitions > 1 and entity_of is None:
            raise ValueError("a partitioned source needs entity_of to place events")
        self.partitions = partitions
        self.keys = [key] if partitions == 1 else [partition_key(key, i) for i in range(partitions)]
        self._index = {k: i for i, k in enumerate(self.keys)}
        self.members_key = f"{key}:members:{group}"
        self.member_ttl = member_ttl
        self._entity_of = entity_of
        # Reads block up to ``block`` seconds, so the socket timeout must outlast them. Every
        # call also has a deadline of its own (see ``_call``): the socket timeout alone does
        # not bound a call that redis-py retries, or one whose cancellation it swallowed.
        self._redis: Any = redis_asyncio.from_url(
            url, socket_timeout=timeout + 5, socket_connect_timeout=timeout
        )
        self._once = self._redis.register_script(_ONCE_LUA)
        self._members = self._redis.register_script(_MEMBERS_LUA)
        self._errors = (require("redis.exceptions", "redis").RedisError, OSError)
        # Partition -> where the re-read of this consumer's own pending entries has got to;
        # empty once they are all re-read (then reads take new entries).
        self._cursors: dict[int, str] = dict.fromkeys(range(partitions), "0")
        # Partitions read for new entries: all of them on one key; on partitions, those whose
        # lease this consumer holds and wants (see ``_MEMBERS_LUA``).
        self._owned: list[int] = list(range(partitions)) if partitions == 1 else []
        self._claiming: dict[int, str] = {}
        """Partitions just taken -> where claiming the entries others left pending there has
        got to: those come first, before the partition's new entries."""
        self._leases = [f"{key}:lease:{group}:{i}" for i in range(partitions)]
        self._joined = False
        self._moving = False
        self._beating: asyncio.Task[None] | None = None

    async def _call(self, what: str, aw: Awaitable[T], block: float = 0.0) -> T:
        """``aw`` within ``block`` + ``timeout`` seconds, else :class:`StoreError`."""
        try:
            return await bounded(aw, block + self.timeout)
        except self._errors as exc:  # TimeoutError is an OSError
            raise StoreError(f"Redis {what} failed ({masked_url(self.url)}): {exc}") from exc

    # -- ids and partitions --------------------------------------------------------------

    def _id(self, part: int, entry_id: Any) -> str:
        return _text(entry_id) if self.partitions == 1 else f"{part}/{_text(entry_id)}"

    def _split(self, ids: Sequence[str]) -> dict[int, list[str]]:
        """Stream ids by partition (ids another source gave out, or malformed, are skipped:
        acknowledging an id this source does not hold is a no-op)."""
        if self.partitions == 1:
            return {0: list(ids)} if ids else {}
        out: dict[int, list[str]] = {}
        for i in ids:
            part, slash, xid = i.partition("/")
            if slash and part.isdigit() and int(part) < self.partitions:
                out.setdefault(int(part), []).append(xid)
        return out

    def partition_of(self, entity: str | None) -> int:
        """The partition an event of ``entity`` goes to (0 for one without an entity)."""
        if self.partitions == 1 or entity is None:
            return 0
        return zlib.crc32(entity.encode()) % self.partitions

    async def _heartbeat(self, leave: bool = False) -> None:
        """Say this consumer is live (or leaving); take, keep and release partition leases."""
        reply = await self._call(
            "heartbeat",
            self._members(
                keys=[self.members_key, *self._leases, *self.keys],
                args=[
                    self.consumer,
                    max(1, int(self.member_ttl * 1000)),
                    int(leave),
                    self.group,
                ],
            ),
        )
        self._joined = not leave
        states = {int(reply[i]): int(reply[i + 1]) for i in range(0, len(reply), 2)}
        # Partitions in hand-over (draining here, or wanted and still draining elsewhere):
        # heartbeats come quicker until they have moved.
        self._moving = bool(states.pop(-1, 0)) or 2 in states.values()
        for p, state in states.items():
            if state == 3:
                self._claiming.setdefault(p, "0-0")
        self._claiming = {p: c for p, c in self._claiming.items() if p in states}
        owned = [p for p, state in sorted(states.items()) if state != 2]
        if owned != self._owned:
            log.info(
                "stream %s: consumer %s reads partitions %s%s",
                self.key,
                self.consumer,
                owned,
                f" (draining {[p for p, st in states.items() if st == 2]})"
                if 2 in states.values()
                else "",
            )
        self._owned = owned

    async def _beat(self) -> None:
        """Heartbeats, a fifth of ``member_ttl`` apart, while the source is open. Not in
        ``read``: a consumer whose reader waits for room (a slow batch) is still live."""
        beaten = time.monotonic()
        while True:
            await asyncio.sleep(
                min(0.1, self.member_ttl / 5) if self._moving else self.member_ttl / 5
            )
            try:
                await self._heartbeat()
                beaten = time.monotonic()
            except StoreError as exc:  # Redis is down: reads fail and say so too
                log.warning("stream %s: heartbeat failed: %s", self.key, exc.message)
                if self._owned and time.monotonic() - beaten > self.member_ttl:
                    # The leases have expired by now: others may hold the partitions. Read
                    # nothing new until a heartbeat says which are this consumer's again.
                    self._owned = []

    @property
    def owned(self) -> list[int]:
        """The partitions this consumer reads new entries from."""
        return list(self._owned)

    # -- Source ----------------------------------------------------------------------------

    async def start(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.xgroup_create(key, self.group, id="0", mkstream=True)
        try:
            replies = await bounded(pipe.execute(raise_on_error=False), self.timeout)
        except self._errors as exc:
            raise StoreError(f"cannot create group {self.group!r} on {self.key}: {exc}") from exc
        for key, reply in zip(self.keys, replies, strict=True):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise StoreError(f"cannot create group {self.group!r} on {key}: {reply}")
        await self._check_layout()
        if self.partitions > 1:
            await self._heartbeat()
            if self._beating is None:
                self._beating = asyncio.create_task(self._beat())

    async def _check_layout(self) -> None:
        """Refuse to start when the other layout's keys hold entries the group has not
        acknowledged: ``partitions`` changed on a stream that was not drained, and those
        entries would never be read."""
        # The unpartitioned key, and the partition keys beyond this count (up to the largest
        # count allowed): where events written with another ``partitions`` wait.
        others = [self.key] if self.partitions > 1 else []
        start = self.partitions if others else 0
        others += [partition_key(self.key, i) for i in range(start, 1024)]
        pipe = self._redis.pipeline(transaction=False)
        for key in others:
            pipe.exists(key)
        found = [
            k for k, n in zip(others, await self._call("read", pipe.execute()), strict=True) if n
        ]
        if not found:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in found:
            pipe.xinfo_groups(key)
        left = 0
        for groups in await self._call("read", pipe.execute()):
            for g in groups:
                if _text(g["name"]) == self.group:
                    left += int(g["pending"]) + int(g.get("lag") or 0)
        if left:
            raise ConfigError(
                f"stream {self.key}: {left} entries of group {self.group!r} wait in "
                f"{'the unpartitioned key' if found[0] == self.key else 'partition keys'} "
                f"({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}), but the source "
                f"has partitions: {self.partitions}. Drain them with the partitions setting "
                "they were written with, then change it."
            )

    def _entries(
        self, part: int, raw: list[Any], at: float, deliveries: dict[str, int]
    ) -> list[RawEntry]:
        out = []
        for entry_id, fields in raw:
            eid = self._id(part, entry_id)
            payload: bytes | dict[str, str]
            if not fields:
                payload = b""  # trimmed away while pending: dead-lettered as bad JSON
            elif b"d" in fields:
                payload = fields[b"d"]
            else:
                payload = {_text(k): _text(v) for k, v in fields.items()}
            out.append(RawEntry(eid, payload, deliveries.get(eid, 1), at))
        return out

    async def _counted(self, got: dict[int, list[Any]]) -> list[RawEntry]:
        """Entries re-read or claimed, with their delivery counts from ``XPENDING``."""
        got = {p: raw for p, raw in got.items() if raw}
        if not got:
            return []
        # Only this consumer's pending list: the entries just read or claimed are in it, and
        # other consumers' entries between them would crowd them out of ``count``.
        pipe = self._redis.pipeline(transaction=False)
        for p, raw in got.items():
            pipe.xpending_range(
                self.keys[p],
                self.group,
                min=raw[0][0],
                max=raw[-1][0],
                count=len(raw) + 100,
                consumername=self.consumer,
            )
        replies = await self._call("read", pipe.execute())
        at, out = now(), []
        for (p, raw), rows in zip(got.items(), replies, strict=True):
            counts = {self._id(p, r["message_id"]): int(r["times_delivered"]) for r in rows}
            out += self._entries(p, raw, at, counts)
        return out

    def _by_partition(self, resp: Any) -> dict[int, list[Any]]:
        return {self._index[_text(key)]: raw for key, raw in resp or []}

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        if self._cursors:
            count = -(-max_items // len(self._cursors))
            streams = {self.keys[p]: c for p, c in self._cursors.items()}
            resp = await self._call(
                "read",
                self._redis.xreadgroup(self.group, self.consumer, streams, count=count),
            )
            got = self._by_partition(resp)
            for p in list(self._cursors):
                raw = got.get(p)
                if raw:
                    self._cursors[p] = _text(raw[-1][0])
                else:
                    del self._cursors[p]
            if any(got.values()):
                return await self._counted(got)
        while self._claiming:
            claimed = await self._claim_taken(max_items)
            if claimed:
                return claimed
        if not self._owned:  # more consumers than partitions: this one has none for now
            await asyncio.sleep(block)
            return []
        ms = int(block * 1000)
        resp = await self._call(
            "read",
            self._redis.xreadgroup(
                self.group,
                self.consumer,
                {self.keys[p]: ">" for p in self._owned},
                count=-(-max_items // len(self._owned)),
                block=ms or None,
            ),
            block,
        )
        at, out = now(), []
        for p, raw in self._by_partition(resp).items():
            out += self._entries(p, raw, at, {})
        return out

    async def _claim_taken(self, max_items: int) -> list[RawEntry]:
        """Entries other consumers left pending on a partition just taken (its holder died,
        or lost its lease while frozen): claimed at once, as the lease says they are ours
        now. A holder that wakes up and commits them too is caught by the state's version
        check, and their seen-set makes the second commit a no-op."""
        p, start = next(iter(self._claiming.items()))
        raw, nxt = await self._claim_from(p, 0, max_items, start)
        if nxt is None:
            del self._claiming[p]
        else:
            self._claiming[p] = nxt
        return await self._counted({p: raw})

    async def _claim_from(
        self, p: int, idle_ms: int, max_items: int, start: str = "-"
    ) -> tuple[list[Any], str | None]:
        """Up to ``max_items`` entries of partition ``p`` that other consumers left pending
        for ``idle_ms``, taken over; and where to go on from (``None``: none are left)."""
        key, ids, nxt = self.keys[p], list[str](), None
        while len(ids) < max_items:
            rows = await self._call(
                "claim",
                self._redis.xpending_range(
                    key, self.group, min=start, max="+", count=max_items, idle=idle_ms
                ),
            )
            ids += [_text(r["message_id"]) for r in rows if _text(r["consumer"]) != self.consumer]
            if len(rows) < max_items:
                nxt = None
                break
            start = nxt = "(" + _text(rows[-1]["message_id"])
        if not ids:
            return [], nxt
        if len(ids) > max_items:  # the rest on the next call
            ids, nxt = ids[:max_items], "(" + ids[max_items - 1]
        raw = await self._call(
            "claim",
            self._redis.xclaim(key, self.group, self.consumer, idle_ms, ids),
        )
        return [r for r in raw if r is not None and r[1] is not None], nxt

    async def ack(self, ids: Sequence[str]) -> None:
        parts = self._split(ids)
        if not parts:
            return
        pipe = self._redis.pipeline(transaction=False)
        for p, xids in parts.items():
            pipe.xack(self.keys[p], self.group, *xids)
        await self._call("ack", pipe.execute())

    def rewind(self) -> None:
        self._cursors = dict.fromkeys(range(self.partitions), "0")

    @property
    def recovering(self) -> bool:
        return bool(self._cursors)

    async def shared(self) -> bool:
        """On one key, whether another consumer of the group read within the last
        :data:`ACTIVE` seconds; partitions keep an entity on one consumer: never."""
        if self.partitions > 1:
            return False
        try:
            members = await self._call("read", self._redis.xinfo_consumers(self.key, self.group))
        except StoreError:
            return True  # no group yet, or Redis away: assume a rival
        return any(
            _text(m["name"]) != self.consumer and int(m["idle"]) < ACTIVE * 1000 for m in members
        )

    async def claim_stale(self, min_idle: float, max_items: int) -> list[RawEntry]:
        """Take over entries other consumers left pending for ``min_idle`` seconds.

        Never this consumer's own: those are in flight in this process (or, after a
        restart, re-read from the start of its pending list). Claiming them again would
        deliver them twice and count deliveries that never happened, until a slow batch's
        read-ahead looked like poison.
        """
        ms, got, left = int(min_idle * 1000), {}, max_items
        for p in range(self.partitions):
            got[p], _ = await self._claim_from(p, ms, left)
            left -= len(got[p])
            if left <= 0:
                break
        return await self._counted(got)

    # -- sinks -----------------------------------------------------------------------------

    async def _add_once(self, stream: str, fields: list[str], items: list[list[Any]]) -> None:
        keys = [stream] + [f"{stream}:m:{item[0]}" for item in items]
        args: list[Any] = [max(1, int(self.marker_ttl * 1000)), self.maxlen or 0, len(fields)]
        args += fields
        for item in items:
            args += item
        await self._call("write", self._once(keys=keys, args=args))

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        if items:
            rows = [[e.id, reason, e.deliveries, e.raw_text()] for e, reason in items]
            await self._add_once(
                self.dead_letter_key, ["entry_id", "reason", "deliveries", "payload"], rows
            )

    async def emit(self, outputs: Sequence[tuple[str, bytes]]) -> None:
        if outputs:
            await self._add_once(self.output_key, ["id", "d"], [[i, d] for i, d in outputs])

    async def tail(self, after: str | None, block: float, count: int) -> list[tuple[str, bytes]]:
        position = after or "$"
        got = await self._call(
            "tail",
            self._redis.xread({self.output_key: position}, count=count, block=int(block * 1000)),
            block,
        )
        out = []
        for _, entries in got or []:
            for entry_id, fields in entries:
                out.append((_text(entry_id), fields.get(b"d", b"")))
        return out

    def valid_position(self, position: str) -> bool:
        ms, dash, seq = position.partition("-")
        return ms.isdigit() and (not dash or seq.isdigit())

    # -- producer, measures, close ---------------------------------------------------------

    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        if self._entity_of is None:
            parts = [0] * len(payloads)
        else:
            parts = [self.partition_of(e) for e in self._entity_of(payloads)]
        pipe = self._redis.pipeline(transaction=False)
        for p, payload in zip(parts, payloads, strict=True):
            pipe.xadd(self.keys[p], {"d": payload}, maxlen=self.maxlen, approximate=True)
        ids = await self._call("append", pipe.execute())
        return [self._id(p, i) for p, i in zip(parts, ids, strict=True)]

    async def info(self) -> SourceInfo:
        pipe = self._redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.xlen(key)
        pipe.xlen(self.dead_letter_key)
        pipe.xlen(self.output_key)
        *lengths, dead, outputs = await self._call("read", pipe.execute())
        info = SourceInfo(length=sum(lengths), dead_letters=dead, outputs=outputs)
        live = [key for key, n in zip(self.keys, lengths, strict=True) if n]
        pipe = self._redis.pipeline(transaction=False)
        for key in live:
            pipe.xinfo_groups(key)
        lags: list[int | None] = []
        pendings: list[tuple[str, int]] = []
        for key, groups in zip(live, await self._call("read", pipe.execute()), strict=True):
            for g in groups:
                if _text(g["name"]) == self.group:
                    lag = g.get("lag")
                    lags.append(None if lag is None else int(lag))
                    pendings.append((key, int(g["pending"])))
        if pendings:
            info.pending = sum(n for _, n in pendings)
        known = [lag for lag in lags if lag is not None]
        info.lag = sum(known) if known or not lags else None
        busy = [key for key, n in pendings if n]
        if busy:
            pipe = self._redis.pipeline(transaction=False)
            for key in busy:
                pipe.xpending(key, self.group)
            info.pending_elsewhere = sum(
                int(c["pending"])
                for summary in await self._call("read", pipe.execute())
                for c in summary.get("consumers") or []
                if _text(c["name"]) != self.consumer
            )
        elif info.pending == 0:
            info.pending_elsewhere = 0
        if self.partitions > 1:
            holders = await self._call("read", self._redis.mget(self._leases))
            info.partitions = {}
            for p, holder in enumerate(holders):
                info.partitions.setdefault("" if holder is None else _text(holder), []).append(p)
        return info

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
        if self._joined:  # leave now: the others take this consumer's partitions at once
            with contextlib.suppress(StoreError):
                await self._heartbeat(leave=True)
        await close_client(self._redis.aclose, self.timeout)


def source_url(project: Project, name: str) -> str:
    """The Redis URL of a ``redis`` source: its own, else the online store's."""
    src = project.streams[name].source
    own = src.url if isinstance(src, RedisSourceConfig) else None
    url = own or project.url(project.stores.online)
    if url.partition("://")[0].lower() not in REDIS_SCHEMES:
        raise ConfigError(
            f"streams.{name}.source.url: a redis source needs a redis:// URL "
            f"(the online store is {masked_url(url)!r})"
        )
    return url


def _open(at: Opening) -> RedisSource:
    src, cfg = at.cfg.source, at.cfg
    assert isinstance(src, RedisSourceConfig)
    return RedisSource(
        source_url(at.project, at.name),
        stream_key(at.project, at.name, cfg),
        src.group,
        at.consumer,
        dead_letter_key=dead_letter_key(at.project, at.name, cfg),
        output_key=output_key(at.project, at.name, cfg),
        maxlen=src.maxlen,
        marker_ttl=cfg.dedup_ttl,
        partitions=src.partitions,
        member_ttl=src.member_ttl,
        entity_of=lambda payloads: entity_keys(cfg, payloads),
    )


def open_io(at: Opening) -> StreamIO:
    source = _open(at)
    return StreamIO(source, source, source)


def open_producer(at: Opening) -> RedisSource:
    return _open(at)
