"""The key-value interface shared by the online feature store and the prediction store.

Five data operations, each on many keys at once so every backend can batch them (one SQL
transaction, one Redis pipeline or Lua call):

- ``get_many(keys)``: the live entry of each key, or ``None``;
- ``put_many(writes)``: compare-and-set on ``as_of``: a write replaces the stored entry only
  when its ``as_of`` is not older than the stored one's (or the stored one has expired).
  Replaying a write changes nothing; an older write never overwrites a newer one;
- ``put_columns(keys, values, as_of, expires_at)``: the same, for bulk writers that hold
  their rows as columns (a batch chunk): no per-row objects on the way;
- ``delete_many(keys)``;
- ``scan(prefix)``: the keys starting with ``prefix``;

and the run-scoped bulk path, for a batch run's records (published by the caller moving a
pointer, so they need neither a compare-and-set nor a per-key expiry):

- ``put_run(run, rows, expires_at)``: plain writes of ``rows`` (a :data:`RUN_SCHEMA` record
  batch: member, value, as_of) into run ``run``, with one expiry for the run; a member written
  again reads as its last write (a chunk redone after a kill writes the same bytes again);
- ``get_run(run, members, keys)``: the entries of ``keys`` (as ``get_many``) followed by
  those of run ``run``'s ``members``, in one round trip (an online read of a route's record
  and its served run's record);
- ``scan_run(run)``: the members of a run; ``seal_run(run)``: the run is loaded (SQLite
  builds its index then); ``drop_run(run)``: delete the run;

and ``ping()`` (raise :class:`~hybridserve.errors.StoreError` when the backend is
unreachable: the server's start-up and health checks), ``close()``, and the store's ``url``.

Expiry is absolute (``expires_at``, epoch seconds) and decided by the caller, so a replayed
write is byte-for-byte the same write. Keys given to and returned by a store are the caller's
keys; a backend adds its namespace prefix itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa


@dataclass(slots=True, frozen=True)
class Entry:
    """A stored value with the event time it describes."""

    key: str
    value: bytes
    as_of: float
    expires_at: float | None = None


Write = Entry
"""A write is an entry the caller wants stored (compare-and-set on ``as_of``)."""

RUN_SCHEMA = pa.schema([("member", pa.string()), ("value", pa.binary()), ("as_of", pa.float64())])
"""The columns of a run write: a run's records as Arrow columns, never as row objects."""


def run_rows(members: Any, values: Any, as_of: Any) -> pa.RecordBatch:
    """A :data:`RUN_SCHEMA` batch from three columns (Arrow arrays, numpy arrays or lists)."""
    return pa.record_batch(
        [
            pa.array(members, pa.string()) if not isinstance(members, pa.Array) else members,
            pa.array(values, pa.binary()) if not isinstance(values, pa.Array) else values,
            pa.array(np.asarray(as_of, dtype=np.float64), pa.float64()),
        ],
        schema=RUN_SCHEMA,
    )


@runtime_checkable
class KVStore(Protocol):
    url: str

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Live entries for ``keys``, in order; ``None`` where absent or expired."""
        ...

    async def put_many(self, writes: Sequence[Write]) -> int:
        """Store each write that is not older than what is stored; return how many were."""
        ...

    async def put_columns(
        self,
        keys: Sequence[str],
        values: Sequence[bytes],
        as_of: Sequence[float],
        expires_at: float | None = None,
    ) -> int:
        """``put_many`` of ``Entry(keys[i], values[i], as_of[i], expires_at)`` for every ``i``."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Delete ``keys``; return how many existed."""
        ...

    async def put_run(self, run: str, rows: pa.RecordBatch, expires_at: float | None = None) -> int:
        """Write ``rows`` (:data:`RUN_SCHEMA`) into run ``run``, no compare-and-set; how many."""
        ...

    async def get_run(
        self, run: str, members: Sequence[str], keys: Sequence[str] = ()
    ) -> list[Entry | None]:
        """``get_many(keys)`` then run ``run``'s entry of each member (key = the member)."""
        ...

    def scan_run(self, run: str) -> AsyncIterator[str]:
        """Every member of run ``run`` (each once, in no set order)."""
        ...

    async def seal_run(self, run: str) -> None:
        """Run ``run`` is fully loaded (before it is served): build what makes reads fast."""
        ...

    async def drop_run(self, run: str) -> None:
        """Delete run ``run`` and all its members."""
        ...

    def scan(self, prefix: str) -> AsyncIterator[str]:
        """Every live key starting with ``prefix`` (each once, in no set order)."""
        ...

    async def ping(self) -> None:
        """Raise :class:`~hybridserve.errors.StoreError` when the backend is unreachable."""
        ...

    async def close(self) -> None: ...


def wins(new_as_of: float, stored: Entry | None, at: float) -> bool:
    """The precedence rule: does a write with ``new_as_of`` replace ``stored`` at time ``at``?"""
    if stored is None:
        return True
    if stored.expires_at is not None and stored.expires_at <= at:
        return True
    return new_as_of >= stored.as_of
