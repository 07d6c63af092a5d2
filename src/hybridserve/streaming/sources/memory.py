"""The in-process source: a stream, its consumer group, dead letters and outputs in memory.

Sources with the same name share one log within a process (as ``memory://name`` stores
do), so a producer and a consumer running in the same process see the same events, and
several consumers of one log share the work the way a Redis consumer group does. (The ingest
endpoint refuses memory streams: no consumer runs in the server's process.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from hybridserve.config import MemorySourceConfig
from hybridserve.records import now
from hybridserve.streaming.events import RawEntry
from hybridserve.streaming.sources.base import DeadLetter, Opening, SourceInfo, StreamIO, stream_key


@dataclass
class MemoryLog:
    entries: list[tuple[str, bytes]] = field(default_factory=list)
    cursor: int = 0
    pending: dict[str, list[object]] = field(default_factory=dict)
    """id -> [consumer, deliveries, delivered_at, payload]."""
    dead_letters: list[dict[str, object]] = field(default_factory=list)
    outputs: list[tuple[str, bytes]] = field(default_factory=list)
    _dead_ids: set[str] = field(default_factory=set)
    _output_ids: set[str] = field(default_factory=set)


_LOGS: dict[str, MemoryLog] = {}


def record_dead_letters(log: MemoryLog, items: Sequence[DeadLetter]) -> None:
    """Keep each entry's dead letter once."""
    for entry, reason in items:
        if entry.id not in log._dead_ids:
            log._dead_ids.add(entry.id)
            log.dead_letters.append(
                {
                    "entry_id": entry.id,
                    "reason": reason,
                    "deliveries": entry.deliveries,
                    "payload": entry.raw_text(),
                }
            )


def record_outputs(log: MemoryLog, outputs: Sequence[tuple[str, bytes]]) -> None:
    """Keep each event's output once."""
    for event_id, payload in outputs:
        if event_id not in log._output_ids:
            log._output_ids.add(event_id)
            log.outputs.append((event_id, payload))


def memory_log(name: str) -> MemoryLog:
    """The shared log called ``name`` (created empty on first use)."""
    return _LOGS.setdefault(name, MemoryLog())


def drop_memory_log(name: str) -> None:
    _LOGS.pop(name, None)


class MemorySource:
    """Source, sinks and producer in one: all of the interface's capabilities, as on Redis."""

    kind = "memory"

    def __init__(self, name: str, consumer: str = "consumer", *, maxlen: int | None = None):
        self.log = memory_log(name)
        self.consumer = consumer
        self.maxlen = maxlen
        self._rewound = True
        self._pel_cursor = 0

    async def start(self) -> None:
        return None

    def _deliver(self, entry_id: str, payload: bytes, at: float) -> RawEntry:
        p = self.log.pending.get(entry_id)
        if p is None:
            self.log.pending[entry_id] = [self.consumer, 1, at, payload]
            return RawEntry(entry_id, payload, 1, at)
        p[0] = self.consumer
        p[1] = int(p[1]) + 1  # type: ignore[call-overload]
        p[2] = at
        return RawEntry(entry_id, payload, int(p[1]), at)  # type: ignore[call-overload]

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        at = now()
        log = self.log
        if self._rewound:
            # Like XREADGROUP with an id: own pending entries after the last one returned.
            mine = sorted(
                int(i.split("-")[0])
                for i, p in log.pending.items()
                if p[0] == self.consumer and int(i.split("-")[0]) > self._pel_cursor
            )[:max_items]
            if mine:
                self._pel_cursor = mine[-1]
                return [self._deliver(f"{i}-0", log.pending[f"{i}-0"][3], at) for i in mine]  # type: ignore[arg-type]
            self._rewound = False
        if log.cursor >= len(log.entries) and block > 0:
            await asyncio.sleep(min(block, 0.05))
        batch = log.entries[log.cursor : log.cursor + max_items]
        log.cursor += len(batch)
        return [self._deliver(i, payload, at) for i, payload in batch]

    async def ack(self, ids: Sequence[str]) -> None:
        for i in ids:
            self.log.pending.pop(i, None)

    def rewind(self) -> None:
        self._rewound, self._pel_cursor = True, 0

    @property
    def recovering(self) -> bool:
        return bool(self._rewound)

    async def claim_stale(self, min_idle: float, max_items: int) -> list[RawEntry]:
        at = now()
        stale = [
            i
            for i, p in self.log.pending.items()
            if p[0] != self.consumer and at - float(p[2]) >= min_idle  # type: ignore[arg-type]
        ][:max_items]
        return [self._deliver(i, self.log.pending[i][3], at) for i in stale]  # type: ignore[arg-type]

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        record_dead_letters(self.log, items)

    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        ids = []
        for payload in payloads:
            entry_id = f"{len(self.log.entries) + 1}-0"
            self.log.entries.append((entry_id, payload))
            ids.append(entry_id)
        return ids

    async def emit(self, outputs: Sequence[tuple[str, bytes]]) -> None:
        record_outputs(self.log, outputs)

    async def info(self) -> SourceInfo:
        log = self.log
        return SourceInfo(
            length=len(log.entries),
            lag=len(log.entries) - log.cursor,
            pending=len(log.pending),
            pending_elsewhere=sum(p[0] != self.consumer for p in log.pending.values()),
            dead_letters=len(log.dead_letters),
            outputs=len(log.outputs),
        )

    async def close(self) -> None:
        return None


def _open(at: Opening) -> MemorySource:
    src = at.cfg.source
    assert isinstance(src, MemorySourceConfig)
    return MemorySource(stream_key(at.project, at.name, at.cfg), at.consumer, maxlen=src.maxlen)


def open_io(at: Opening) -> StreamIO:
    source = _open(at)
    return StreamIO(source, source, source)


def open_producer(at: Opening) -> MemorySource:
    return _open(at)
