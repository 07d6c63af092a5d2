"""Stream sources behind one small interface (see :mod:`.base`): Redis Streams, replay
files, and an in-process twin for tests."""

from __future__ import annotations

from hybridserve.config import Project, StreamConfig
from hybridserve.errors import ConfigError, NotFound
from hybridserve.storage import KVStore
from hybridserve.streaming.sources.base import (
    DeadLetter,
    Source,
    SourceInfo,
    dead_letter_key,
    output_key,
    stream_key,
)
from hybridserve.urls import masked_url

REDIS_SCHEMES = ("redis", "rediss", "unix")


def stream_config(project: Project, name: str) -> StreamConfig:
    """The stream called ``name``, or :class:`NotFound` naming the known streams."""
    try:
        return project.streams[name]
    except KeyError:
        raise NotFound(
            f"unknown stream {name!r}; known streams: {sorted(project.streams) or 'none'}",
            stream=name,
        ) from None


def source_url(project: Project, name: str) -> str:
    """The Redis URL of a ``redis`` source: its own, else the online store's."""
    cfg = stream_config(project, name)
    url = cfg.source.url or project.url(project.stores.online)
    if url.partition("://")[0].lower() not in REDIS_SCHEMES:
        raise ConfigError(
            f"streams.{name}.source.url: a redis source needs a redis:// URL "
            f"(the online store is {masked_url(url)!r})"
        )
    return url


def open_source(
    project: Project, name: str, *, consumer: str = "consumer", kv: KVStore | None = None
) -> Source:
    """Open stream ``name``'s source as consumer ``consumer`` (``kv`` keeps replay offsets)."""
    cfg = stream_config(project, name)
    src = cfg.source
    if src.kind == "memory":
        from hybridserve.streaming.sources.memory import MemorySource

        return MemorySource(stream_key(project, name, cfg), consumer, maxlen=src.maxlen)
    if src.kind == "replay":
        from hybridserve.streaming.sources.replay import ReplaySource

        if src.path is None:
            raise ConfigError(f"streams.{name}.source.path: a replay source needs a path")
        if kv is None:
            raise ConfigError("a replay source needs a store for its offset")
        return ReplaySource(project.path(src.path), kv, name)
    from hybridserve.streaming.sources.redis import RedisSource

    return RedisSource(
        source_url(project, name),
        stream_key(project, name, cfg),
        src.group,
        consumer,
        dead_letter_key=dead_letter_key(project, name, cfg),
        output_key=output_key(project, name, cfg),
        maxlen=src.maxlen,
        marker_ttl=cfg.dedup_ttl,
    )


__all__ = [
    "DeadLetter",
    "Source",
    "SourceInfo",
    "dead_letter_key",
    "open_source",
    "output_key",
    "source_url",
    "stream_config",
    "stream_key",
]
