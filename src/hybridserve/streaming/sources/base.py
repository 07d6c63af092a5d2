"""The stream source interface: a small :class:`Source`, optional capabilities, sinks, producer.

A source delivers :class:`~hybridserve.streaming.events.RawEntry` objects and forgets an
entry only when it is acknowledged, so a consumer that dies before :meth:`Source.ack` gets
the entry again (at-least-once). That is all a source must do. What only some brokers can
do is a capability of its own, which the consumer asks for with ``isinstance``:

- :class:`Rewinds`: after a failed batch, deliver this consumer's unacknowledged entries
  again now (Redis re-reads its pending list, Kafka seeks back, NATS naks its in-flight
  messages), rather than when the broker would on its own;
- :class:`Reclaims`: take over entries another consumer left unacknowledged (Redis
  ``XCLAIM``; Kafka and NATS do this themselves, by rebalancing and by ``ack_wait``);
- :class:`Measured`: lag, pending, output and dead-letter counts, for ``stream status``.

Outputs and dead letters go to sinks (:class:`OutputSink`, :class:`DeadLetterSink`), and
``POST /v1/events`` appends through a :class:`Producer`: a server must be able to produce
without joining the consumer group. A source kind is one module with two functions,
``open_io(at: Opening) -> StreamIO`` and ``open_producer(at: Opening) -> Producer``, listed
in :data:`hybridserve.streaming.sources.SOURCES`. Constructors only keep settings:
connections are made, and resume state (offsets, pending lists) is read, in ``start``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import orjson

from hybridserve.config import (
    MemorySourceConfig,
    Project,
    RedisSourceConfig,
    StreamConfig,
)
from hybridserve.storage import KVStore
from hybridserve.streaming.events import RawEntry

REDIS_SCHEMES = ("redis", "rediss", "unix")

DeadLetter = tuple[RawEntry, str]
"""An entry and the reason it is dead-lettered."""


@dataclass(slots=True)
class SourceInfo:
    length: int | None = None
    """Entries in the stream (or rows in the replay files)."""
    lag: int | None = None
    """Entries not yet delivered to the group (Kafka: not yet committed)."""
    pending: int | None = None
    """Delivered, not yet acknowledged."""
    pending_elsewhere: int | None = None
    """Of ``pending``, those delivered to other consumers of the group (a dead consumer's
    entries wait there until one is reclaimed)."""
    dead_letters: int | None = None
    outputs: int | None = None
    partitions: dict[str, list[int]] | None = None
    """A partitioned source's partitions by the consumer holding them (``""``: nobody)."""


class Source(Protocol):
    """What every source does: deliver entries at least once, forget them when acked."""

    kind: str

    async def start(self) -> None:
        """Connect and load resume state (join the group, read the committed offsets)."""
        ...

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        """Up to ``max_items`` entries, waiting at most ``block`` seconds for the first one.
        An entry's ``deliveries`` counts its deliveries, this one included."""
        ...

    async def ack(self, ids: Sequence[str]) -> None:
        """Forget these entries: their effects are written. Never raises for an id this
        source no longer holds (a revoked partition's, one acked before)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Rewinds(Protocol):
    def rewind(self) -> None:
        """Make the next reads return this consumer's unacknowledged entries first."""
        ...

    @property
    def recovering(self) -> bool:
        """Whether reads are returning this consumer's unacknowledged entries (after a start
        or a rewind), each re-read counting as one more delivery of the entry."""
        ...


@runtime_checkable
class Reclaims(Protocol):
    async def claim_stale(self, min_idle: float, max_items: int) -> list[RawEntry]:
        """Take over entries other consumers left unacknowledged for ``min_idle`` seconds
        (never this consumer's own: those are in flight)."""
        ...


@runtime_checkable
class Measured(Protocol):
    async def info(self) -> SourceInfo: ...


@runtime_checkable
class Shared(Protocol):
    """A source that does not keep an entity's events on one consumer of the group (one
    Redis key, a NATS durable): any consumer may get any entity's events."""

    async def shared(self) -> bool:
        """Whether another consumer of the group has read lately. (The consumer then stops
        computing a batch ahead: a batch's reads age while the last one commits, and a rival
        that commits the same entities in between would conflict with it more often.)"""
        ...


class DeadLetterSink(Protocol):
    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        """Write each entry's dead letter (once per entry id where the sink can)."""
        ...


class OutputSink(Protocol):
    async def emit(self, outputs: Sequence[tuple[str, bytes]]) -> None:
        """Write ``(event_id, payload)`` results (once per event id where the sink can)."""
        ...


@runtime_checkable
class Tails(Protocol):
    """Outputs that can be read back in order from a position: what
    ``GET /v1/streams/{stream}/predictions`` streams to a client."""

    async def tail(self, after: str | None, block: float, count: int) -> list[tuple[str, bytes]]:
        """Outputs written after position ``after`` (``None``: only those written from now),
        waiting up to ``block`` seconds for one; ``(position, payload)`` in order."""
        ...

    def valid_position(self, position: str) -> bool:
        """Whether ``position`` (a client's ``Last-Event-ID``) is one this sink gave out."""
        ...


@runtime_checkable
class RedisOutputs(Protocol):
    """An output stream on Redis, which the Redis state store can write in its commit (then
    the pipeline does not call :meth:`OutputSink.emit`)."""

    url: str
    output_key: str
    maxlen: int | None


class Producer(Protocol):
    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        """Add events to the stream; return their ids (as the source names them)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Opening:
    """What a source kind is opened with."""

    project: Project
    name: str
    cfg: StreamConfig
    consumer: str = "consumer"
    kv: KVStore | None = None
    """The online store (the replay source keeps its offsets there)."""


@dataclass(slots=True)
class StreamIO:
    """A consumer's view of a stream: where entries come from, where results go."""

    source: Source
    outputs: OutputSink
    dead_letters: DeadLetterSink

    async def close(self) -> None:
        """Close each distinct part once."""
        seen: list[object] = []
        for part in (self.source, self.outputs, self.dead_letters):
            close = getattr(part, "close", None)
            if close is not None and not any(part is s for s in seen):
                seen.append(part)
                await close()


def entity_keys(cfg: StreamConfig, payloads: Sequence[bytes]) -> list[str | None]:
    """Each event's entity key, as partitions are chosen by it (``None``: the payload is no
    JSON object with one; the consumer dead-letters such an event, wherever it lands)."""
    field = cfg.entity_field
    keys: list[str | None] = []
    for p in payloads:
        try:
            key = orjson.loads(p).get(field)
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        keys.append(None if key is None else str(key))
    return keys


def stream_key(project: Project, name: str, cfg: StreamConfig) -> str:
    """The Redis stream key or in-process log name of a ``redis`` or ``memory`` source."""
    src = cfg.source
    own = src.stream if isinstance(src, RedisSourceConfig | MemorySourceConfig) else None
    return own or f"{project.stores.prefix}stream:{name}"


def dead_letter_key(project: Project, name: str, cfg: StreamConfig) -> str:
    return cfg.dead_letter_stream or stream_key(project, name, cfg) + ":dlq"


def output_key(project: Project, name: str, cfg: StreamConfig) -> str:
    return cfg.output_stream or stream_key(project, name, cfg) + ":out"
