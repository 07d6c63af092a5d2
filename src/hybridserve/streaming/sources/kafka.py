"""Kafka: a topic read by a consumer group (confluent-kafka, extra ``kafka``).

The group assigns partitions to consumers and moves them when one joins, leaves or dies
(after ``session_timeout``). Offsets are committed by :meth:`KafkaSource.ack` only, which the
pipeline calls after a micro-batch's effects are written; a partition's offset moves past an
entry only once every entry before it is acknowledged too, so a consumer that dies leaves
the unacknowledged tail to be read again from the committed offset (at-least-once; the
seen-set makes the replay harmless). When partitions are revoked, what is acknowledged is
committed and the rest is abandoned: entries of those partitions still in flight may finish
(their effects are idempotent) but their acknowledgements are dropped, and the partition's
new owner resumes from the committed offset.

An entry's id is ``{partition}-{offset}``, so its stream position (for lateness, see
``windows.stream_position``) orders it within its partition. Events are keyed by their
entity, so one entity's events share a partition and keep their order. Delivery counts are
kept in this process (Kafka does not count deliveries): a restarted consumer starts them
over. Outputs and dead letters go to topics, keyed by event and entry id; they are
at-least-once (a batch redone after a crash between the emit and the commit emits again,
the same payload under the same key).

All calls on the consumer handle run on one thread of their own, rebalance callbacks
included (librdkafka runs them inside ``consume``), so the offset bookkeeping needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from hybridserve._optional import require
from hybridserve.config import KafkaSourceConfig, StreamConfig
from hybridserve.errors import StoreError
from hybridserve.records import now
from hybridserve.streaming.events import RawEntry
from hybridserve.streaming.sources.base import (
    DeadLetter,
    Opening,
    SourceInfo,
    StreamIO,
    entity_keys,
)

log = logging.getLogger("hybridserve.stream")
T = TypeVar("T")


def _settings(src: KafkaSourceConfig) -> dict[str, Any]:
    return {"bootstrap.servers": src.brokers, **src.options}


def _topics(src: KafkaSourceConfig, cfg: StreamConfig) -> tuple[str, str, str]:
    """The event, output and dead-letter topics."""
    out = cfg.output_stream or f"{src.topic}.out"
    return src.topic, out, cfg.dead_letter_stream or f"{src.topic}.dlq"


class _Client:
    """One librdkafka handle's calls, each on the handle's own thread."""

    def __init__(self, timeout: float) -> None:
        self.ck: Any = require("confluent_kafka", "kafka")
        self.admin: Any = require("confluent_kafka.admin", "kafka")
        self.timeout = timeout
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kafka")

    async def run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, lambda: fn(*args))
        except self.ck.KafkaException as exc:
            raise StoreError(f"Kafka {what} failed: {exc.args[0] if exc.args else exc}") from exc

    def ensure_topics(
        self, settings: dict[str, Any], topics: Sequence[str], n: int, r: int
    ) -> None:
        admin = self.admin.AdminClient(settings)
        missing = set(topics) - set(admin.list_topics(timeout=self.timeout).topics)
        if not missing:
            return
        new = [self.admin.NewTopic(t, num_partitions=n, replication_factor=r) for t in missing]
        for topic, future in admin.create_topics(new, request_timeout=self.timeout).items():
            try:
                future.result(self.timeout)
            except self.ck.KafkaException as exc:
                if exc.args[0].code() != self.ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StoreError(f"cannot create Kafka topic {topic!r}: {exc}") from exc

    def close(self) -> None:
        self._thread.shutdown(wait=False)


class KafkaProducer:
    """Produces events to the stream's topic, keyed by entity (the producer of ``POST
    /v1/events``), and is the output and dead-letter sink of a consumer."""

    def __init__(self, src: KafkaSourceConfig, cfg: StreamConfig, timeout: float = 10.0) -> None:
        self.src, self.cfg, self.timeout = src, cfg, timeout
        self.topic, self.output_topic, self.dead_letter_topic = _topics(src, cfg)
        self._client = _Client(timeout)
        self._producer: Any = None

    async def _send(self, topic: str, items: Sequence[tuple[str | None, bytes]]) -> list[str]:
        if not items:
            return []
        return await self._client.run("produce", self._send_sync, topic, items)

    def _send_sync(self, topic: str, items: Sequence[tuple[str | None, bytes]]) -> list[str]:
        if self._producer is None:
            src, settings = self.src, _settings(self.src)
            topics = _topics(src, self.cfg)
            self._client.ensure_topics(settings, topics, src.partitions, src.replication)
            self._producer = self._client.ck.Producer({**settings, "enable.idempotence": True})
        ids: list[str | None] = [None] * len(items)
        errors: list[str] = []

        def delivered(i: int) -> Callable[[Any, Any], None]:
            def report(err: Any, msg: Any) -> None:
                if err is not None:
                    errors.append(str(err))
                else:
                    ids[i] = f"{msg.partition()}-{msg.offset()}"

            return report

        for i, (key, value) in enumerate(items):
            while True:
                try:
                    self._producer.produce(topic, value, key, on_delivery=delivered(i))
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.1)
        left = self._producer.flush(self.timeout)
        if errors or left:
            raise StoreError(f"Kafka produce to {topic!r} failed: {errors[:1] or 'timed out'}")
        return [i or "" for i in ids]

    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        keys = entity_keys(self.cfg, payloads)
        return await self._send(self.topic, list(zip(keys, payloads, strict=True)))

    async def emit(self, outputs: Sequence[tuple[str, bytes]]) -> None:
        await self._send(self.output_topic, outputs)

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        letters = [
            (
                e.id,
                orjson.dumps(
                    {
                        "entry_id": e.id,
                        "reason": reason,
                        "deliveries": e.deliveries,
                        "payload": e.raw_text(),
                    }
                ),
            )
            for e, reason in items
        ]
        await self._send(self.dead_letter_topic, letters)

    async def close(self) -> None:
        if self._producer is not None:
            await self._client.run("flush", self._producer.flush, self.timeout)
            # confluent-kafka has no close: librdkafka's handle (and its threads, which keep
            # reconnecting to a broker that went away) ends when the last reference does.
            self._producer = None
        self._client.close()


class KafkaSource:
    """The consumer side: a group member that rewinds (seeks back to its unacknowledged
    offsets) and reports lag; the group itself moves a dead member's partitions."""

    kind = "kafka"

    def __init__(
        self, src: KafkaSourceConfig, cfg: StreamConfig, consumer: str, timeout: float = 10.0
    ) -> None:
        self.src, self.cfg, self.consumer, self.timeout = src, cfg, consumer, timeout
        self.topic, self.output_topic, self.dead_letter_topic = _topics(src, cfg)
        self._client = _Client(timeout)
        self._handle: Any = None
        self._generations = 0
        """Assignments received (rebalances this member took part in)."""
        self._early: list[Any] = []
        """Messages fetched while waiting for the first assignment."""
        self._assigned: set[int] = set()
        self._base: dict[int, int] = {}
        """Partition -> its first unacknowledged offset (known once an entry is read)."""
        self._acked: dict[int, set[int]] = {}
        self._dirty: set[int] = set()
        """Partitions whose ``_base`` moved and is not committed yet."""
        self._deliveries: dict[tuple[int, int], int] = {}
        self._rewind = False

    # -- on the handle's thread ----------------------------------------------------------

    def _consumer_handle(self) -> Any:
        if self._handle is None:
            src = self.src
            self._handle = self._client.ck.Consumer(
                {
                    **_settings(src),
                    "group.id": src.group,
                    "client.id": self.consumer,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": int(src.session_timeout * 1000),
                    "heartbeat.interval.ms": max(100, int(src.session_timeout * 1000) // 5),
                    "max.poll.interval.ms": int(src.max_poll_interval * 1000),
                }
            )
        return self._handle

    def _start(self) -> None:
        """Subscribe, and wait for the group's first assignment (a join waits for the
        members the group knows to rejoin, or for a dead one's session to time out), so
        that reads coming back empty mean caught up, not still joining."""
        src = self.src
        topics = (self.topic, self.output_topic, self.dead_letter_topic)
        self._client.ensure_topics(_settings(src), topics, src.partitions, src.replication)
        handle = self._consumer_handle()
        handle.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._lost
        )
        deadline = time.monotonic() + src.max_poll_interval + src.session_timeout
        while self._generations == 0 and time.monotonic() < deadline:
            self._early += handle.consume(500, 0.1)
        if self._generations == 0:
            log.warning("kafka %s: %s not assigned partitions yet", self.topic, self.consumer)

    def _on_assign(self, _: Any, partitions: list[Any]) -> None:
        self._generations += 1
        self._assigned |= {tp.partition for tp in partitions}
        mine = sorted(tp.partition for tp in partitions)
        log.info("kafka %s: %s assigned partitions %s", self.topic, self.consumer, mine)

    def _on_revoke(self, _: Any, partitions: list[Any]) -> None:
        """Commit what is acknowledged, abandon the rest (the next owner reads it again)."""
        self._commit_sync()
        self._lost(_, partitions)

    def _lost(self, _: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            p = tp.partition
            self._assigned.discard(p)
            self._base.pop(p, None)
            self._acked.pop(p, None)
            self._dirty.discard(p)
        gone = {tp.partition for tp in partitions}
        self._deliveries = {k: n for k, n in self._deliveries.items() if k[0] not in gone}

    def _commit_sync(self) -> None:
        if not self._dirty:
            return
        tp = self._client.ck.TopicPartition
        offsets = [tp(self.topic, p, self._base[p]) for p in sorted(self._dirty)]
        try:
            self._handle.commit(offsets=offsets, asynchronous=False)
        except self._client.ck.KafkaException as exc:  # retried on the next ack or read
            log.warning("kafka %s: commit failed (%s); retrying", self.topic, exc)
            return
        self._dirty.clear()

    def _read_sync(self, max_items: int, block: float) -> list[RawEntry]:
        handle = self._handle
        if self._rewind:
            self._rewind = False
            tp = self._client.ck.TopicPartition
            for p, offset in self._base.items():
                try:
                    handle.seek(tp(self.topic, p, offset))
                except self._client.ck.KafkaException as exc:  # not fetching yet: no read-ahead
                    log.debug("kafka %s: seek %d failed: %s", self.topic, p, exc)
                self._acked[p] = set()
        self._commit_sync()
        if self._early:
            messages, self._early = self._early[:max_items], self._early[max_items:]
        else:
            messages = handle.consume(max_items, block)
        at = now()
        out = []
        for m in messages:
            if m.error() is not None:
                code = m.error().code()
                if code == self._client.ck.KafkaError._MAX_POLL_EXCEEDED:
                    log.warning(
                        "kafka %s: %s went longer than max_poll_interval (%gs) between reads "
                        "and left the group; raise it above the time a full in-flight window "
                        "takes to process",
                        self.topic,
                        self.consumer,
                        self.src.max_poll_interval,
                    )
                elif code != self._client.ck.KafkaError._PARTITION_EOF:
                    log.warning("kafka %s: %s", self.topic, m.error())
                continue
            p, o = m.partition(), m.offset()
            if p not in self._assigned:
                continue
            self._base.setdefault(p, o)
            n = self._deliveries[(p, o)] = self._deliveries.get((p, o), 0) + 1
            out.append(RawEntry(f"{p}-{o}", m.value() or b"", n, at))
        return out

    def _ack_sync(self, ids: Sequence[str]) -> None:
        for entry_id in ids:
            part, _, offset = entry_id.partition("-")
            if int(part) in self._assigned:  # else revoked: the new owner has it
                self._acked.setdefault(int(part), set()).add(int(offset))
        for p, acked in self._acked.items():
            base = self._base.get(p)
            if base is None or base not in acked:
                continue
            while base in acked:
                acked.discard(base)
                self._deliveries.pop((p, base), None)
                base += 1
            self._base[p] = base
            self._dirty.add(p)
        self._commit_sync()

    def _info_sync(self) -> SourceInfo:
        handle, tp = self._consumer_handle(), self._client.ck.TopicPartition
        meta = handle.list_topics(self.topic, timeout=self.timeout).topics.get(self.topic)
        parts = [tp(self.topic, p) for p in sorted(meta.partitions)] if meta else []
        committed = handle.committed(parts, timeout=self.timeout) if parts else []
        length = lag = 0
        for c in committed:
            low, high = handle.get_watermark_offsets(c, timeout=self.timeout, cached=False)
            length += high - low
            # At least 0: a broker may report the high watermark behind the last record
            # (Tansu 0.6 reports the last batch's first offset + 1).
            lag += max(0, high - (c.offset if c.offset >= 0 else low))
        counts = []
        for topic in (self.dead_letter_topic, self.output_topic):
            meta = handle.list_topics(topic, timeout=self.timeout).topics.get(topic)
            total = 0
            for p in meta.partitions if meta else ():
                low, high = handle.get_watermark_offsets(
                    tp(topic, p), timeout=self.timeout, cached=False
                )
                total += high - low
            counts.append(total)
        return SourceInfo(length=length, lag=lag, dead_letters=counts[0], outputs=counts[1])

    # -- the Source interface --------------------------------------------------------------

    async def start(self) -> None:
        await self._client.run("subscribe", self._start)

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        return await self._client.run("read", self._read_sync, max_items, block)

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            await self._client.run("commit", self._ack_sync, ids)

    def rewind(self) -> None:
        self._rewind = True

    @property
    def recovering(self) -> bool:
        return False  # delivery counts start over with the process: nothing to pace

    async def info(self) -> SourceInfo:
        return await self._client.run("describe", self._info_sync)

    async def close(self) -> None:
        if self._handle is not None:
            await self._client.run("close", self._handle.close)  # leaves the group
            self._handle = None
        self._client.close()


def _config(at: Opening) -> KafkaSourceConfig:
    src = at.cfg.source
    assert isinstance(src, KafkaSourceConfig)
    return src


def open_io(at: Opening) -> StreamIO:
    sink = KafkaProducer(_config(at), at.cfg)
    return StreamIO(KafkaSource(_config(at), at.cfg, at.consumer), sink, sink)


def open_producer(at: Opening) -> KafkaProducer:
    return KafkaProducer(_config(at), at.cfg)
