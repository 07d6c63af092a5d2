"""The prediction store: one record schema for batch, stream and online results.

Online and streaming records live under ``p:{route}:{entity}``, written with the store's
compare-and-set on ``as_of``. A batch run writes its records as a run of the store,
``pb:{route}:{run_id}`` (the store's run-scoped bulk path: plain writes, one expiry per run,
no compare-and-set; each row's value is its score and label, packed, and what the rows share
is the run's header, ``pbh:{route}:{run_id}``: :mod:`.run_values`), and becomes visible only
when it is published: publishing seals the run
(SQLite indexes it) and moves the route's run pointer (``run:{route}``) in one write, so
readers switch from the previous run to the new one atomically, and a failed or partial run
is never served.

A read takes the freshest of the route's record and the current run's record, in one round
trip: a batch run computed from last night's snapshot never hides a fresher streaming score,
whichever was written last.

A stored value that does not decode to a record whose times can be rendered (written by an
older version, or with an absurd ``as_of``) is read as no record: skipped, counted in
:attr:`PredictionStore.unreadable` and logged, so one bad record never fails a read.

A warming run (``--top-k-active``) covers only some entities, so it must not replace the
served run: :meth:`PredictionStore.warm` merges its records into the route's own records,
with the same precedence, and the served run stays as it is.

Retention: every entry written here expires ``retention`` seconds after it was written
(``stores.prediction_retention``), and a route keeps the records of its served run and the
``keep_runs - 1`` runs before it (``stores.keep_runs``); older runs are dropped at publish.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import pyarrow as pa

from hybridserve.config import Project
from hybridserve.predictions import run_values
from hybridserve.predictions.run_values import RunHeader, header_key
from hybridserve.records import PredictionRecord, now
from hybridserve.storage import Entry, KVStore, run_rows

log = logging.getLogger("hybridserve.predictions")


def prediction_key(route: str, entity: str) -> str:
    return f"p:{route}:{entity}"


def run_name(route: str, run_id: str) -> str:
    """The store's name for a batch run's records (its members are the entities)."""
    return f"pb:{route}:{run_id}"


def pointer_key(route: str) -> str:
    return f"run:{route}"


@dataclass(slots=True, frozen=True)
class RunPointer:
    """Which batch run a route serves, and the runs before it whose records are still kept."""

    run_id: str
    previous: str | None
    """The run served before this one (servers may still read it for a second)."""
    published_at: float
    kept: tuple[str, ...] = ()
    """Runs older than ``previous`` still kept (``keep_runs`` above 2), newest first."""


class PredictionStore:
    def __init__(self, kv: KVStore, *, retention: float | None = None, keep_runs: int = 2) -> None:
        if keep_runs < 2:
            raise ValueError(f"keep_runs: expected at least 2, got {keep_runs}")
        self.kv = kv
        self.retention = retention
        """Seconds after a write that the entry is kept (``None``: until replaced)."""
        self.keep_runs = keep_runs
        self.unreadable = 0
        """Stored values skipped on read because they are not a renderable record."""
        self.on_unreadable: Callable[[], None] | None = None
        """Called once per skipped value (the server counts them in a metric)."""
        self._logged: set[str] = set()
        self._headers: dict[tuple[str, str], RunHeader] = {}
        """(route, run id) -> the run's header, as read (a run's header never changes)."""

    def _decode(
        self, entry: Entry | None, header: RunHeader | None = None, *, run: bool = False
    ) -> PredictionRecord | None:
        """The record in ``entry``: a route's own, or with ``run`` a run's row (packed, with
        its run's ``header``: :mod:`.run_values`)."""
        if entry is None:
            return None
        try:
            if run:
                return run_values.record(header, entry.key, entry.value, entry.as_of)
            return PredictionRecord.from_bytes(entry.value)
        except (ValueError, TypeError) as exc:
            self.unreadable += 1
            if self.on_unreadable is not None:
                self.on_unreadable()
            if entry.key not in self._logged:  # once per key: a hot key would flood the log
                if len(self._logged) >= 1000:
                    self._logged.clear()
                self._logged.add(entry.key)
                log.warning("prediction store: skipped unreadable record %s: %s", entry.key, exc)
            return None

    @classmethod
    def open(cls, project: Project, kv: KVStore | None = None) -> PredictionStore:
        """The project's prediction store (``kv`` or a new connection), with its retention."""
        from hybridserve.storage import open_store

        stores = project.stores
        if kv is None:
            kv = open_store(project.url(stores.predictions_url), stores.prefix)
        return cls(kv, retention=stores.prediction_retention, keep_runs=stores.keep_runs)

    def expires_at(self) -> float | None:
        """When an entry written now expires (``None``: never)."""
        return None if self.retention is None else now() + self.retention

    def _entry(self, key: str, r: PredictionRecord, expires_at: float | None) -> Entry:
        return Entry(key, r.to_bytes(), r.as_of, expires_at)

    async def put(self, records: Sequence[PredictionRecord]) -> int:
        """Store online or stream records (precedence rule); return how many replaced."""
        exp = self.expires_at()
        return await self.kv.put_many(
            [self._entry(prediction_key(r.route, r.entity), r, exp) for r in records]
        )

    async def put_run(self, run_id: str, records: Sequence[PredictionRecord]) -> int:
        """Stage a batch run's records, whole; they are served once the run is published."""
        written = 0
        for route in dict.fromkeys(r.route for r in records):
            mine = [r for r in records if r.route == route]
            rows = run_rows([r.entity for r in mine], [r.to_bytes() for r in mine],
                            [r.as_of for r in mine])  # fmt: skip
            written += await self.kv.put_run(run_name(route, run_id), rows, self.expires_at())
        return written

    async def put_run_rows(self, header: RunHeader, rows: pa.RecordBatch) -> int:
        """Stage rows of the run ``header`` describes, as columns
        (:data:`~hybridserve.storage.RUN_SCHEMA`: entity, value, ``as_of``; values packed by
        :func:`.run_values.pack`, or whole records): the batch path, with no per-record
        objects. The header is written again with each call, so it expires after them all."""
        exp = self.expires_at()
        key = header_key(header.route, header.run_id)
        await self.kv.put_many([Entry(key, header.to_bytes(), header.computed_at, exp)])
        return await self.kv.put_run(run_name(header.route, header.run_id), rows, exp)

    def _header(self, route: str, run_id: str, entry: Entry | None) -> RunHeader | None:
        """The run's header read as ``entry`` (kept for later reads), or ``None``."""
        if entry is None:
            return None
        try:
            header = RunHeader.from_bytes(entry.value)
        except (ValueError, TypeError) as exc:
            log.warning("prediction store: unreadable header of run %s: %s", run_id, exc)
            return None
        if len(self._headers) >= 256:
            self._headers.clear()
        self._headers[(route, run_id)] = header
        return header

    async def _read_run(
        self, route: str, run_id: str, members: Sequence[str], keys: Sequence[str] = ()
    ) -> tuple[list[Entry | None], RunHeader | None, list[Entry | None]]:
        """``keys``' entries, the run's header and the run's rows for ``members``, in one
        round trip (the header is read only the first time)."""
        header = self._headers.get((route, run_id))
        wanted = keys if header is not None else [*keys, header_key(route, run_id)]
        entries = await self.kv.get_run(run_name(route, run_id), members, wanted)
        if header is None:
            header = self._header(route, run_id, entries[len(keys)])
        return entries[: len(keys)], header, entries[len(wanted) :]

    async def get(
        self, route: str, entities: Sequence[str], *, run_id: str | None = None
    ) -> list[PredictionRecord | None]:
        """The freshest record per entity among the route's own and run ``run_id``'s."""
        if run_id is None:
            entries = await self.kv.get_many([prediction_key(route, e) for e in entities])
            return [self._decode(e) for e in entries]
        owns, header, runs = await self._read_run(
            route, run_id, entities, [prediction_key(route, e) for e in entities]
        )
        out: list[PredictionRecord | None] = []
        for own, run in zip(owns, runs, strict=True):
            if run is None or (own is not None and own.as_of >= run.as_of):
                out.append(self._decode(own) or self._decode(run, header, run=True))
            else:
                out.append(self._decode(run, header, run=True) or self._decode(own))
        return out

    async def get_run(
        self, route: str, run_id: str, entities: Sequence[str]
    ) -> list[PredictionRecord | None]:
        """Only run ``run_id``'s records (audit, tests, comparing runs)."""
        _, header, entries = await self._read_run(route, run_id, entities)
        return [self._decode(e, header, run=True) for e in entries]

    async def current_run(self, route: str) -> RunPointer | None:
        (entry,) = await self.kv.get_many([pointer_key(route)])
        if entry is None:
            return None
        data = orjson.loads(entry.value)
        return RunPointer(
            data["run_id"], data.get("previous"), data["published_at"], tuple(data.get("kept", ()))
        )

    async def publish(self, route: str, run_id: str) -> RunPointer:
        """Make ``run_id`` the route's served run in one write; the old one becomes previous.

        The run is sealed first (the store makes its reads fast: SQLite indexes it). Runs
        beyond the newest ``keep_runs`` are deleted afterwards.
        """
        await self.kv.seal_run(run_name(route, run_id))
        current = await self.current_run(route)
        if current is not None and current.run_id == run_id:
            return current
        older: list[str] = []
        if current is not None:
            older = [current.run_id, *([current.previous] if current.previous else [])]
            older += current.kept
        older = [r for r in dict.fromkeys(older) if r != run_id]
        keep, drop = older[: self.keep_runs - 1], older[self.keep_runs - 1 :]
        at = now()
        pointer = RunPointer(run_id, keep[0] if keep else None, at, tuple(keep[1:]))
        payload = orjson.dumps(
            {
                "run_id": pointer.run_id,
                "previous": pointer.previous,
                "published_at": at,
                "kept": list(pointer.kept),
            }
        )
        # as_of = publish time: a later publish always wins, a replay changes nothing. The
        # pointer itself never expires.
        await self.kv.put_many([Entry(pointer_key(route), payload, at)])
        for old in drop:
            await self.drop_run(route, old)
        return pointer

    async def warm(self, route: str, run_id: str, *, batch: int = 1000) -> int:
        """Merge run ``run_id``'s records into the route's own records, then drop the run.

        For a run that covers only some entities (``--top-k-active``): it adds to what is
        served instead of replacing it. Each record goes through the usual precedence (it
        replaces a route record only when not older), so warming never hides a fresher
        stream or online score. Repeating it (a resumed run) writes the same records again.
        Return how many route records were replaced.
        """
        name = run_name(route, run_id)
        written = 0
        members: list[str] = []

        async def flush() -> int:
            _, header, entries = await self._read_run(route, run_id, members)
            exp = self.expires_at()
            records = [self._decode(e, header, run=True) for e in entries]
            writes = [
                Entry(prediction_key(route, r.entity), r.to_bytes(), r.as_of, exp)
                for r in records
                if r is not None
            ]
            return await self.kv.put_many(writes)

        async for member in self.kv.scan_run(name):
            members.append(member)
            if len(members) >= batch:
                written += await flush()
                members = []
        if members:
            written += await flush()
        await self.drop_run(route, run_id)
        return written

    async def drop_run(self, route: str, run_id: str) -> None:
        """Delete a run's staged records and its header."""
        await self.kv.drop_run(run_name(route, run_id))
        await self.kv.delete_many([header_key(route, run_id)])
        self._headers.pop((route, run_id), None)


class RunPointerCache:
    """Which batch run each route serves, as last read, so a request need not read it.

    :meth:`get` returns the cached run id while it is younger than ``interval`` (``None``
    as "unknown, read it"); :meth:`set` records a fresh read and says whether the run
    changed (the caller then clears what L1 holds from the old run).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._runs: dict[str, tuple[str | None, float]] = {}

    def get(self, route: str, at: float) -> tuple[bool, str | None]:
        """``(fresh, run_id)``: fresh when read less than ``interval`` before ``at``."""
        cached = self._runs.get(route)
        if cached is None:
            return False, None
        return at - cached[1] < self.interval, cached[0]

    def known(self, route: str) -> str | None:
        """The last run id read for ``route``, however old (``None`` if never read)."""
        cached = self._runs.get(route)
        return None if cached is None else cached[0]

    def set(self, route: str, run_id: str | None, at: float) -> bool:
        """Record a read; ``True`` when it names another run than the last read did."""
        cached = self._runs.get(route)
        self._runs[route] = (run_id, at)
        return cached is not None and cached[0] != run_id
