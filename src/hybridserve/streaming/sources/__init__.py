"""Stream sources behind one small interface (see :mod:`.base`): Redis Streams, Kafka, NATS
JetStream, replay files, and an in-process twin for tests.

Kinds are imported lazily from :data:`SOURCES` (as storage backends are from
``storage.BACKENDS``), so each broker's client stays an optional extra. A kind's module
defines ``open_io(at: Opening) -> StreamIO`` and ``open_producer(at: Opening) -> Producer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from hybridserve._optional import import_string
from hybridserve.config import Project, StreamConfig
from hybridserve.errors import ConfigError, NotFound
from hybridserve.storage import KVStore
from hybridserve.streaming.sources.base import (
    REDIS_SCHEMES,
    DeadLetter,
    DeadLetterSink,
    Measured,
    Opening,
    OutputSink,
    Producer,
    Reclaims,
    Rewinds,
    Shared,
    Source,
    SourceInfo,
    StreamIO,
    dead_letter_key,
    output_key,
    stream_key,
)

SOURCES: dict[str, str] = {
    "redis": "hybridserve.streaming.sources.redis",
    "kafka": "hybridserve.streaming.sources.kafka",
    "nats": "hybridserve.streaming.sources.nats",
    "replay": "hybridserve.streaming.sources.replay",
    "memory": "hybridserve.streaming.sources.memory",
}
"""Source kind (``streams.X.source.kind``) -> the module that opens it."""


def stream_config(project: Project, name: str) -> StreamConfig:
    """The stream called ``name``, or :class:`NotFound` naming the known streams."""
    try:
        return project.streams[name]
    except KeyError:
        raise NotFound(
            f"unknown stream {name!r}; known streams: {sorted(project.streams) or 'none'}",
            stream=name,
        ) from None


def _opener(kind: str, function: str) -> Callable[[Opening], object]:
    target = SOURCES.get(kind)
    if target is None:
        raise ConfigError(f"unknown source kind {kind!r}; expected one of {sorted(SOURCES)}")
    return cast(Callable[[Opening], object], import_string(f"{target}:{function}"))


def _opening(project: Project, name: str, consumer: str, kv: KVStore | None) -> Opening:
    return Opening(project, name, stream_config(project, name), consumer, kv)


def open_io(
    project: Project, name: str, *, consumer: str = "consumer", kv: KVStore | None = None
) -> StreamIO:
    """Open stream ``name``'s source and sinks as consumer ``consumer`` (``kv``: the online
    store, where the replay source keeps its offsets)."""
    at = _opening(project, name, consumer, kv)
    return cast(StreamIO, _opener(at.cfg.source.kind, "open_io")(at))


def open_source(
    project: Project, name: str, *, consumer: str = "consumer", kv: KVStore | None = None
) -> Source:
    """Stream ``name``'s source alone (its sinks are the same object or closed with it)."""
    return open_io(project, name, consumer=consumer, kv=kv).source


def open_producer(project: Project, name: str, *, kv: KVStore | None = None) -> Producer:
    """What ``POST /v1/events`` appends stream ``name``'s events with."""
    at = _opening(project, name, "producer", kv)
    return cast(Producer, _opener(at.cfg.source.kind, "open_producer")(at))


__all__ = [
    "REDIS_SCHEMES",
    "SOURCES",
    "DeadLetter",
    "DeadLetterSink",
    "Measured",
    "Opening",
    "OutputSink",
    "Producer",
    "Reclaims",
    "Rewinds",
    "Shared",
    "Source",
    "SourceInfo",
    "StreamIO",
    "dead_letter_key",
    "open_io",
    "open_producer",
    "open_source",
    "output_key",
    "stream_config",
    "stream_key",
]
