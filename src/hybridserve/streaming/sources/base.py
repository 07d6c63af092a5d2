"""The stream source interface: a few methods every source implements, plus key naming.

A source delivers :class:`~hybridserve.streaming.events.RawEntry` objects and forgets an
entry only when it is acknowledged, so a consumer that dies before :meth:`Source.ack` gets
the entry again (at-least-once). ``dead_letter`` and ``emit`` are idempotent per entry id
and event id: a batch redone after a crash does not write them twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hybridserve.config import Project, StreamConfig
from hybridserve.streaming.events import RawEntry

DeadLetter = tuple[RawEntry, str]
"""An entry and the reason it is dead-lettered."""


@dataclass(slots=True)
class SourceInfo:
    length: int | None = None
    """Entries in the stream (or rows in the replay files)."""
    lag: int | None = None
    """Entries not yet delivered to the group."""
    pending: int | None = None
    """Delivered, not yet acknowledged."""
    pending_elsewhere: int | None = None
    """Of ``pending``, those delivered to other consumers of the group (a dead consumer's
    entries wait there until one is reclaimed)."""
    dead_letters: int | None = None
    outputs: int | None = None


class Source(Protocol):
    kind: str

    async def start(self) -> None:
        """Prepare to read (create the consumer group, load the replay offset)."""
        ...

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        """Up to ``max_items`` entries, waiting at most ``block`` seconds for the first one."""
        ...

    async def ack(self, ids: Sequence[str]) -> None: ...

    def rewind(self) -> None:
        """Make the next reads return this consumer's unacknowledged entries first."""
        ...

    @property
    def recovering(self) -> bool:
        """Whether reads are returning this consumer's unacknowledged entries (after a start
        or a rewind), each re-read counting as one more delivery of the entry."""
        ...

    async def claim_stale(self, min_idle: float, max_items: int) -> list[RawEntry]:
        """Take over entries other consumers left unacknowledged for ``min_idle`` seconds."""
        ...

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None: ...

    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        """Add events to the stream; return their source ids."""
        ...

    async def emit(self, outputs: Sequence[tuple[str, bytes]]) -> None:
        """Write ``(event_id, payload)`` results to the output stream, once per event id."""
        ...

    async def info(self) -> SourceInfo: ...

    async def close(self) -> None: ...


def stream_key(project: Project, name: str, cfg: StreamConfig) -> str:
    return cfg.source.stream or f"{project.stores.prefix}stream:{name}"


def dead_letter_key(project: Project, name: str, cfg: StreamConfig) -> str:
    return cfg.dead_letter_stream or stream_key(project, name, cfg) + ":dlq"


def output_key(project: Project, name: str, cfg: StreamConfig) -> str:
    return cfg.output_stream or stream_key(project, name, cfg) + ":out"
