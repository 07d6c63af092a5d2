"""In-memory store: the test twin of the real backends, and ``memory://`` for one process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from hybridserve.records import now
from hybridserve.storage.base import Entry, Write, wins


@dataclass(slots=True)
class _Run:
    expires_at: float | None = None
    rows: dict[str, tuple[bytes, float]] = field(default_factory=dict)


_NAMED: dict[str, dict[str, Entry]] = {}
_NAMED_RUNS: dict[str, dict[str, _Run]] = {}


class MemoryStore:
    """A dict behind the :class:`~hybridserve.storage.base.KVStore` interface.

    ``memory://name`` stores with the same name share their data within a process, so a
    server and a test can look at the same store.
    """

    def __init__(self, url: str = "memory://", prefix: str = "") -> None:
        self.url = url
        name = url.removeprefix("memory://")
        self._data: dict[str, Entry] = _NAMED.setdefault(name, {}) if name else {}
        self._runs: dict[str, _Run] = _NAMED_RUNS.setdefault(name, {}) if name else {}
        self._prefix = prefix
        self._lock = asyncio.Lock()

    def _live(self, key: str, at: float) -> Entry | None:
        entry = self._data.get(key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= at:
            del self._data[key]
            return None
        return entry

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        at = now()
        p = self._prefix
        out: list[Entry | None] = []
        for key in keys:
            entry = self._live(p + key, at)
            out.append(
                None if entry is None else Entry(key, entry.value, entry.as_of, entry.expires_at)
            )
        return out

    async def put_many(self, writes: Sequence[Write]) -> int:
        at = now()
        written = 0
        for w in writes:
            k = self._prefix + w.key
            if wins(w.as_of, self._data.get(k), at):
                self._data[k] = w
                written += 1
        return written

    async def put_columns(
        self,
        keys: Sequence[str],
        values: Sequence[bytes],
        as_of: Sequence[float],
        expires_at: float | None = None,
    ) -> int:
        return await self.put_many(
            [Entry(k, v, a, expires_at) for k, v, a in zip(keys, values, as_of, strict=True)]
        )

    async def delete_many(self, keys: Sequence[str]) -> int:
        n = 0
        for key in keys:
            if self._data.pop(self._prefix + key, None) is not None:
                n += 1
        return n

    def _run(self, run: str, at: float) -> _Run | None:
        found = self._runs.get(self._prefix + run)
        if found is not None and found.expires_at is not None and found.expires_at <= at:
            del self._runs[self._prefix + run]
            return None
        return found

    async def put_run(self, run: str, rows: pa.RecordBatch, expires_at: float | None = None) -> int:
        found = self._run(run, now()) or self._runs.setdefault(self._prefix + run, _Run())
        found.expires_at = expires_at
        members, values, as_of = (rows.column(i).to_pylist() for i in range(3))
        found.rows.update(zip(members, zip(values, as_of, strict=True), strict=True))
        return int(rows.num_rows)

    async def get_run(
        self, run: str, members: Sequence[str], keys: Sequence[str] = ()
    ) -> list[Entry | None]:
        out = await self.get_many(keys)
        found = self._run(run, now()) or _Run()
        for m in members:
            row = found.rows.get(m)
            out.append(None if row is None else Entry(m, row[0], row[1], found.expires_at))
        return out

    async def scan_run(self, run: str) -> AsyncIterator[str]:
        found = self._run(run, now())
        for m in [] if found is None else list(found.rows):
            yield m

    async def seal_run(self, run: str) -> None:
        return None

    async def drop_run(self, run: str) -> None:
        self._runs.pop(self._prefix + run, None)

    async def scan(self, prefix: str) -> AsyncIterator[str]:
        at = now()
        full = self._prefix + prefix
        for key in [k for k in self._data if k.startswith(full)]:
            if self._live(key, at) is not None:
                yield key[len(self._prefix) :]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
