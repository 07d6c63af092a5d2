"""The streaming path: events in, windowed features and predictions out, effectively once.

- :mod:`.events`: raw entries and validation against a stream's declared fields;
- :mod:`.sources`: Redis Streams, Kafka, NATS JetStream, replay files, in-process (one
  small interface, optional capabilities, a table of kinds);
- :mod:`.windows`: per-entity sliding and tumbling aggregates by event time;
- :mod:`.state`: the per-batch commit (window state, seen-set, outputs) with a version check;
- :mod:`.pipeline`: one micro-batch from entries to acknowledged effects;
- :mod:`.consumer`: the loop (backpressure, retries, poison entries, alias following);
- :mod:`.status`, :mod:`.demo`: ``hybridserve stream status`` and the demo hook.
"""

from __future__ import annotations

from hybridserve.streaming.consumer import StreamConsumer, Totals
from hybridserve.streaming.events import Event, RawEntry
from hybridserve.streaming.sources import (
    Source,
    SourceInfo,
    StreamIO,
    open_io,
    open_producer,
    open_source,
)

__all__ = [
    "Event",
    "RawEntry",
    "Source",
    "SourceInfo",
    "StreamConsumer",
    "StreamIO",
    "Totals",
    "open_io",
    "open_producer",
    "open_source",
]
