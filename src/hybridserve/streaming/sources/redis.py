"""Redis Streams with a consumer group: the distributed source (Redis 7.0 commands only).

Each event is one entry with a field ``d`` holding its JSON (entries written by other
producers as plain field/value pairs are accepted too). A consumer first re-reads its own
pending entries (``XREADGROUP ... 0``), then new ones (``>``); entries a dead consumer left
pending longer than ``claim_idle`` are found with ``XPENDING ... IDLE`` and taken over with
``XCLAIM`` (never the consumer's own: those are in flight). Delivery counts come
from ``XPENDING`` (extended form). Dead letters and outputs are written by a Lua script that
sets a marker key per entry (``SET NX``) before its ``XADD``, so a batch redone after a crash
writes each of them once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from hybridserve._optional import require
from hybridserve.config import Project, RedisSourceConfig
from hybridserve.errors import ConfigError, StoreError
from hybridserve.records import now
from hybridserve.streaming.deadlines import bounded
from hybridserve.streaming.events import RawEntry
from hybridserve.streaming.sources.base import (
    REDIS_SCHEMES,
    DeadLetter,
    Opening,
    SourceInfo,
    StreamIO,
    dead_letter_key,
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


T = TypeVar("T")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
    ) -> None:
        redis_asyncio = require("redis.asyncio", "redis")
        self.url, self.key, self.group, self.consumer = url, key, group, consumer
        self.dead_letter_key, self.output_key = dead_letter_key, output_key
        self.maxlen, self.marker_ttl, self.timeout = maxlen, marker_ttl, timeout
        # Reads block up to ``block`` seconds, so the socket timeout must outlast them. Every
        # call also has a deadline of its own (see ``_call``): the socket timeout alone does
        # not bound a call that redis-py retries, or one whose cancellation it swallowed.
        self._redis: Any = redis_asyncio.from_url(
            url, socket_timeout=timeout + 5, socket_connect_timeout=timeout
        )
        self._once = self._redis.register_script(_ONCE_LUA)
        self._errors = (require("redis.exceptions", "redis").RedisError, OSError)
        self._cursor: str | None = "0"

    async def _call(self, what: str, aw: Awaitable[T], block: float = 0.0) -> T:
        """``aw`` within ``block`` + ``timeout`` seconds, else :class:`StoreError`."""
        try:
            return await bounded(aw, block + self.timeout)
        except self._errors as exc:  # TimeoutError is an OSError
            raise StoreError(f"Redis {what} failed ({masked_url(self.url)}): {exc}") from exc

    async def start(self) -> None:
        try:
            await bounded(
                self._redis.xgroup_create(self.key, self.group, id="0", mkstream=True),
                self.timeout,
            )
        except self._errors as exc:
            if "BUSYGROUP" not in str(exc):
                raise StoreError(
                    f"cannot create group {self.group!r} on {self.key}: {exc}"
                ) from exc

    def _entries(self, raw: list[Any], at: float, deliveries: dict[str, int]) -> list[RawEntry]:
        out = []
        for entry_id, fields in raw:
            eid = _text(entry_id)
            payload: bytes | dict[str, str]
            if not fields:
                payload = b""  # trimmed away while pending: dead-lettered as bad JSON
            elif b"d" in fields:
                payload = fields[b"d"]
            else:
                payload = {_text(k): _text(v) for k, v in fields.items()}
            out.append(RawEntry(eid, payload, deliveries.get(eid, 1), at))
        return out

    async def _deliveries(self, raw: list[Any]) -> dict[str, int]:
        if not raw:
            return {}
        # Only this consumer's pending list: the entries just read or claimed are in it, and
        # other consumers' entries between them would crowd them out of ``count``.
        rows = await self._call(
            "read",
            self._redis.xpending_range(
                self.key,
                self.group,
                min=raw[0][0],
                max=raw[-1][0],
                count=len(raw) + 100,
                consumername=self.consumer,
            ),
        )
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        if self._cursor is not None:
            resp = await self._call(
                "read",
                self._redis.xreadgroup(
                    self.group, self.consumer, {self.key: self._cursor}, count=max_items
                ),
            )
            raw = resp[0][1] if resp else []
            if raw:
                self._cursor = _text(raw[-1][0])
                return self._entries(raw, now(), await self._deliveries(raw))
            self._cursor = None
        ms = int(block * 1000)
        resp = await self._call(
            "read",
            self._redis.xreadgroup(
                self.group, self.consumer, {self.key: ">"}, count=max_items, block=ms or None
            ),
            block,
        )
        return self._entries(resp[0][1], now(), {}) if resp else []

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            await self._call("ack", self._redis.xack(self.key, self.group, *ids))

    def rewind(self) -> None:
        self._cursor = "0"

    @property
    def recovering(self) -> bool:
        return self._cursor is not None

    async def claim_stale(self, min_idle: float, max_items: int) -> list[RawEntry]:
        """Take over entries other consumers left pending for ``min_idle`` seconds.

        Never this consumer's own: those are in flight in this process (or, after a
        restart, re-read from the start of its pending list). Claiming them again would
        deliver them twice and count deliveries that never happened, until a slow batch's
        read-ahead looked like poison.
        """
        ms = int(min_idle * 1000)
        ids: list[str] = []
        start = "-"
        while len(ids) < max_items:
            rows = await self._call(
                "claim",
                self._redis.xpending_range(
                    self.key, self.group, min=start, max="+", count=max_items, idle=ms
                ),
            )
            ids += [_text(r["message_id"]) for r in rows if _text(r["consumer"]) != self.consumer]
            if len(rows) < max_items:
                break
            start = "(" + _text(rows[-1]["message_id"])
        if not ids:
            return []
        raw = await self._call(
            "claim", self._redis.xclaim(self.key, self.group, self.consumer, ms, ids[:max_items])
        )
        raw = [r for r in raw if r is not None and r[1] is not None]
        return self._entries(raw, now(), await self._deliveries(raw)) if raw else []

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

    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        pipe = self._redis.pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(self.key, {"d": payload}, maxlen=self.maxlen, approximate=True)
        return [_text(i) for i in await self._call("append", pipe.execute())]

    async def info(self) -> SourceInfo:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(self.key)
        pipe.xlen(self.dead_letter_key)
        pipe.xlen(self.output_key)
        length, dead, outputs = await self._call("read", pipe.execute())
        groups = await self._call("read", self._redis.xinfo_groups(self.key)) if length else []
        info = SourceInfo(length=length, dead_letters=dead, outputs=outputs)
        for g in groups:
            if _text(g["name"]) == self.group:
                info.pending = int(g["pending"])
                lag = g.get("lag")
                info.lag = None if lag is None else int(lag)
        if info.pending:
            summary = await self._call("read", self._redis.xpending(self.key, self.group))
            info.pending_elsewhere = sum(
                int(c["pending"])
                for c in summary.get("consumers") or []
                if _text(c["name"]) != self.consumer
            )
        elif info.pending == 0:
            info.pending_elsewhere = 0
        return info

    async def close(self) -> None:
        # Closing the pool also ends calls abandoned past their deadline (their sockets close).
        with contextlib.suppress(TimeoutError):
            await bounded(self._redis.aclose(), self.timeout)


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
    )


def open_io(at: Opening) -> StreamIO:
    source = _open(at)
    return StreamIO(source, source, source)


def open_producer(at: Opening) -> RedisSource:
    return _open(at)
