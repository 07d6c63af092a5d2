"""NATS JetStream: a stream read by a durable pull consumer (nats-py, extra ``nats``).

Consumers with the same ``durable`` name share the work: each fetch takes the next
messages, and a message not acknowledged within ``ack_wait`` (its consumer died) is
delivered again, to whichever consumer fetches next. :meth:`NatsSource.ack` acknowledges
after a micro-batch's effects are written; :meth:`NatsSource.rewind` naks the consumer's
unacknowledged messages, so they come back at once. A message this consumer holds (handed
out, not acknowledged) is not handed out again until a rewind. JetStream counts deliveries; the
consumer's ``max_deliver`` is the stream's ``max_deliveries`` + 1, so the pipeline sees the
delivery past the limit and dead-letters the message as poison (JetStream would otherwise
stop delivering it, unacknowledged, for ever). A consumer never reports a lower count for a message
than one it saw before (a fetch right after a nak can return a copy of an earlier delivery).

An entry's id is ``{stream sequence}-0``: its stream position. Outputs and dead letters are
published to their own JetStream streams (``{stream}_OUT``, ``{stream}_DLQ``) with a
``Nats-Msg-Id`` of the event or entry id, so JetStream writes each once within its
duplicate window (5 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import orjson

from hybridserve._optional import require
from hybridserve.config import NatsSourceConfig, StreamConfig
from hybridserve.errors import StoreError
from hybridserve.records import now
from hybridserve.streaming.events import RawEntry
from hybridserve.streaming.sources.base import DeadLetter, Opening, SourceInfo, StreamIO
from hybridserve.urls import masked_url

T = TypeVar("T")
DUPLICATE_WINDOW = 300.0


class NatsStreams:
    """A connection, the three JetStream streams, publishing: the producer of ``POST
    /v1/events`` and the output and dead-letter sink of a consumer."""

    def __init__(self, src: NatsSourceConfig, cfg: StreamConfig, timeout: float = 5.0) -> None:
        self.src, self.cfg, self.timeout = src, cfg, timeout
        self.stream = src.stream
        self.subject = src.subject or f"{src.stream}.events"
        self.output_subject = cfg.output_stream or f"{src.stream}.out"
        self.dead_letter_subject = cfg.dead_letter_stream or f"{src.stream}.dlq"
        self._nats: Any = require("nats", "nats")
        self._api: Any = require("nats.js.api", "nats")
        self._errors = (require("nats.errors", "nats").Error, OSError, TimeoutError)
        self._not_found = require("nats.js.errors", "nats").NotFoundError
        self._timeout = require("nats.errors", "nats").TimeoutError
        self._nc: Any = None
        self._js: Any = None
        self._lock = asyncio.Lock()

    async def _call(self, what: str, aw: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(aw, self.timeout)
        except self._errors as exc:
            url = masked_url(self.src.url)
            raise StoreError(f"NATS {what} failed ({url}): {exc or type(exc).__name__}") from exc

    async def _connect(self) -> Any:
        async with self._lock:
            if self._js is None:
                self._nc = await self._call(
                    "connect",
                    self._nats.connect(
                        self.src.url, connect_timeout=self.timeout, allow_reconnect=True
                    ),
                )
                js = self._nc.jetstream(timeout=self.timeout)
                for name, subject, window in (
                    (self.stream, self.subject, None),
                    (f"{self.stream}_OUT", self.output_subject, DUPLICATE_WINDOW),
                    (f"{self.stream}_DLQ", self.dead_letter_subject, DUPLICATE_WINDOW),
                ):
                    await self._ensure(js, name, subject, window)
                self._js = js
            return self._js

    async def _ensure(self, js: Any, name: str, subject: str, window: float | None) -> None:
        try:
            await self._call("stream lookup", js.stream_info(name))
            return
        except StoreError as exc:
            if not isinstance(exc.__cause__, self._not_found):
                raise
        config = self._api.StreamConfig(
            name=name, subjects=[subject], duplicate_window=window or DUPLICATE_WINDOW
        )
        await self._call("stream create", js.add_stream(config))

    async def _publish(self, subject: str, items: Sequence[tuple[str | None, bytes]]) -> list[str]:
        js = await self._connect()

        async def one(msg_id: str | None, data: bytes) -> str:
            headers = {"Nats-Msg-Id": msg_id} if msg_id else None
            ack = await js.publish(subject, data, headers=headers)
            return f"{ack.seq}-0"

        return (
            await self._call("publish", asyncio.gather(*(one(i, d) for i, d in items)))
            if items
            else []
        )

    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        return await self._publish(self.subject, [(None, p) for p in payloads])

    async def emit(self, outputs: Sequence[tuple[str, bytes]]) -> None:
        await self._publish(self.output_subject, [(i, d) for i, d in outputs])

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        letters: list[tuple[str | None, bytes]] = []
        for e, reason in items:
            body = {"entry_id": e.id, "reason": reason, "deliveries": e.deliveries}
            letters.append((e.id, orjson.dumps({**body, "payload": e.raw_text()})))
        await self._publish(self.dead_letter_subject, letters)

    async def _count(self, name: str) -> int:
        info = await self._call("stream info", self._js.stream_info(name))
        return int(info.state.messages)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            # Closing anyway: unacknowledged messages come back after ack_wait.
            with contextlib.suppress(*self._errors):
                await asyncio.wait_for(nc.close(), self.timeout)


class NatsSource(NatsStreams):
    """The consumer side: a durable pull consumer that rewinds (naks) and reports lag."""

    kind = "nats"

    def __init__(self, src: NatsSourceConfig, cfg: StreamConfig, consumer: str) -> None:
        super().__init__(src, cfg)
        self.consumer = consumer
        self._sub: Any = None
        self._held: dict[str, Any] = {}
        """Entry id -> its message, delivered here and not acknowledged yet."""
        self._rewind = False
        self._counts: dict[str, int] = {}
        """Entry id -> the delivery count last seen here (until acknowledged)."""

    async def start(self) -> None:
        js = await self._connect()
        config = self._api.ConsumerConfig(
            durable_name=self.src.durable,
            ack_policy=self._api.AckPolicy.EXPLICIT,
            ack_wait=self.src.ack_wait,
            max_deliver=self.cfg.max_deliveries + 1,
            filter_subject=self.subject,
            max_ack_pending=-1,
        )
        self._sub = await self._call(
            "subscribe",
            js.pull_subscribe(
                self.subject, durable=self.src.durable, stream=self.stream, config=config
            ),
        )
        # Messages a dead predecessor left unacknowledged come back once ``ack_wait`` has
        # passed, and then before new ones (in stream order). Waiting for them makes a
        # restarted consumer re-read its entries first, in order, as on Redis, instead of
        # applying newer events of their entities before them.
        ci = await self._call("consumer info", js.consumer_info(self.stream, self.src.durable))
        if ci.num_ack_pending:
            await asyncio.sleep(self.src.ack_wait)

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        if self._rewind:
            self._rewind = False
            held, self._held = self._held, {}
            await self._call("nak", asyncio.gather(*(m.nak() for m in held.values())))
            await self._call("nak", self._nc.flush(self.timeout))
        try:
            messages = await self._sub.fetch(max_items, timeout=max(block, 0.05))
        except (self._timeout, TimeoutError):  # nothing came within ``block``
            return []
        except self._errors as exc:
            raise StoreError(f"NATS fetch failed: {exc or type(exc).__name__}") from exc
        at = now()
        out = []
        for m in messages:
            md = m.metadata
            entry_id = f"{md.sequence.stream}-0"
            seen = entry_id in self._held
            self._held[entry_id] = m  # acknowledging answers the latest delivery
            if seen:
                # Already handed out and not acknowledged: a copy of an earlier delivery (a
                # fetch right after a nak can return one) or an ``ack_wait`` redelivery while
                # the batch holding it still runs. Handing it out twice would only duplicate
                # work; after a rewind the source holds nothing, so redeliveries come through.
                continue
            # A fetch right after a nak can hand back a copy of an earlier delivery, with its
            # count: never count lower than a delivery this consumer already saw.
            n = self._counts[entry_id] = max(
                int(md.num_delivered), self._counts.get(entry_id, 0) + 1
            )
            out.append(RawEntry(entry_id, m.data, n, at))
        while len(self._counts) > 100_000:
            self._counts.pop(next(iter(self._counts)))
        return out

    async def ack(self, ids: Sequence[str]) -> None:
        for i in ids:
            self._counts.pop(i, None)
        held = [m for m in (self._held.pop(i, None) for i in ids) if m is not None]
        if held:
            await self._call("ack", asyncio.gather(*(m.ack() for m in held)))
            await self._call("ack", self._nc.flush(self.timeout))

    def rewind(self) -> None:
        self._rewind = True

    @property
    def recovering(self) -> bool:
        return False  # a restarted consumer's messages come back through ack_wait

    async def shared(self) -> bool:
        """Whether other subscribers of the durable hold messages not yet acknowledged."""
        js = await self._connect()
        try:
            ci = await self._call("consumer info", js.consumer_info(self.stream, self.src.durable))
        except StoreError:
            return True  # cannot tell: assume a rival
        return int(ci.num_ack_pending) > len(self._held)

    async def info(self) -> SourceInfo:
        js = await self._connect()
        stream = await self._call("stream info", js.stream_info(self.stream))
        info = SourceInfo(length=int(stream.state.messages))
        try:
            ci = await self._call("consumer info", js.consumer_info(self.stream, self.src.durable))
        except StoreError:
            ci = None
        if ci is not None:
            info.lag, info.pending = int(ci.num_pending), int(ci.num_ack_pending)
            info.pending_elsewhere = max(0, info.pending - len(self._held))
        info.outputs = await self._count(f"{self.stream}_OUT")
        info.dead_letters = await self._count(f"{self.stream}_DLQ")
        return info


def _config(at: Opening) -> NatsSourceConfig:
    src = at.cfg.source
    assert isinstance(src, NatsSourceConfig)
    return src


def open_io(at: Opening) -> StreamIO:
    source = NatsSource(_config(at), at.cfg, at.consumer)
    return StreamIO(source, source, source)


def open_producer(at: Opening) -> NatsStreams:
    return NatsStreams(_config(at), at.cfg)
