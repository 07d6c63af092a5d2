"""A run's records on SQLite: one table per run, appended to, indexed once it is loaded.

``runs`` names each run's table (``run_{id}``; ids are never reused) with its expiry and
whether it is sealed. :meth:`SQLiteRuns.put_run` appends rows with plain ``INSERT`` (no key
yet, so no conflict check and no index to keep up while loading) in one transaction per call.
:meth:`SQLiteRuns.seal_run` builds the unique index on ``member``, first removing the older
copies of members written twice (a chunk redone after a kill); reads of a sealed run use the
index, and a later write to it replaces. An expired run reads as empty and its table is
dropped by the next run write.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from hybridserve.errors import StoreError
from hybridserve.records import now
from hybridserve.storage.base import Entry

T = TypeVar("T")

_CHUNK = 500
_TABLE_TTL = 1.0


class SQLiteRuns:
    """The run-scoped methods of :class:`~hybridserve.storage.sqlite.SQLiteStore`."""

    _prefix: str
    _conn: sqlite3.Connection
    _wconn: sqlite3.Connection
    _lock: threading.Lock
    _wlock: threading.Lock
    _tables: dict[str, tuple[str, float | None, float]]
    """Run -> (table, expiry, when looked up): the runs read lately."""

    if TYPE_CHECKING:  # the store's own

        async def _in_writer(self, fn: Callable[[], T]) -> T: ...
        def _failure(self, doing: str, exc: sqlite3.Error | OSError) -> StoreError: ...
        async def get_many(self, keys: Sequence[str]) -> list[Entry | None]: ...

    def _transaction(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one write transaction on the writer connection (in the writer thread)."""
        conn = self._wconn
        with self._wlock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                out = fn(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._failure(doing, exc) from exc
        return out

    async def put_run(self, run: str, rows: pa.RecordBatch, expires_at: float | None = None) -> int:
        if rows.num_rows == 0:
            return 0
        name = self._prefix + run
        self._tables.pop(run, None)
        members, values, as_of = (rows.column(i) for i in range(3))

        def write(conn: sqlite3.Connection) -> int:
            _purge_expired(conn)
            found = conn.execute("SELECT id, sealed FROM runs WHERE name = ?", (name,)).fetchone()
            if found is None:
                cur = conn.execute(
                    "INSERT INTO runs(name, expires_at) VALUES (?, ?)", (name, expires_at)
                )
                table, sealed = f"run_{cur.lastrowid}", 0
                conn.execute(
                    f"CREATE TABLE {table} (member TEXT NOT NULL, value BLOB NOT NULL,"
                    " as_of REAL NOT NULL)"
                )
            else:
                table, sealed = f"run_{found[0]}", found[1]
                conn.execute("UPDATE runs SET expires_at = ? WHERE id = ?", (expires_at, found[0]))
            verb = "INSERT OR REPLACE" if sealed else "INSERT"
            conn.executemany(
                f"{verb} INTO {table}(member, value, as_of) VALUES (?, ?, ?)",
                zip(members.to_pylist(), values.to_pylist(), as_of.to_pylist(), strict=True),
            )
            return int(rows.num_rows)

        return await self._in_writer(lambda: self._transaction("cannot write to", write))

    def _table(
        self, run: str, at: float, *, cached: bool = False
    ) -> tuple[str, float | None] | None:
        """The live run's table and expiry (on the reader connection, under its lock).

        ``cached``: a run found less than a second ago is not looked up again (a served
        run's read is then one query); a table dropped meanwhile reads as "no such table".
        """
        hit = self._tables.get(run) if cached else None
        if hit is None or at - hit[2] >= _TABLE_TTL:
            found = self._conn.execute(
                "SELECT id, expires_at FROM runs WHERE name = ?", (self._prefix + run,)
            ).fetchone()
            if found is None:
                self._tables.pop(run, None)
                return None
            hit = self._tables[run] = (f"run_{found[0]}", found[1], at)
        table, expires_at, _ = hit
        return None if expires_at is not None and expires_at <= at else (table, expires_at)

    async def get_run(
        self, run: str, members: Sequence[str], keys: Sequence[str] = ()
    ) -> list[Entry | None]:
        own = await self.get_many(keys)
        if not members:
            return own
        with self._lock:
            try:
                found = self._read_run(run, members, cached=True)
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise self._failure("cannot read from", exc) from exc
                try:  # dropped (by another process) since it was looked up: look again
                    found = self._read_run(run, members, cached=False)
                except sqlite3.OperationalError:
                    found = {}
        return [*own, *(found.get(m) for m in members)]

    def _read_run(self, run: str, members: Sequence[str], *, cached: bool) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        table = self._table(run, now(), cached=cached)
        if table is None:
            return found
        for start in range(0, len(members), _CHUNK):
            chunk = list(members[start : start + _CHUNK])
            rows = self._conn.execute(
                f"SELECT member, value, as_of FROM {table[0]}"
                f" WHERE member IN ({','.join('?' * len(chunk))}) ORDER BY rowid",
                chunk,
            ).fetchall()
            for m, value, as_of in rows:  # the last copy of a member wins
                found[m] = Entry(m, bytes(value), as_of, table[1])
        return found

    async def scan_run(self, run: str) -> AsyncIterator[str]:
        seen: set[str] = set()
        last = 0
        while True:
            with self._lock:
                table = self._table(run, now())
                if table is None:
                    return
                try:
                    rows = self._conn.execute(
                        f"SELECT rowid, member FROM {table[0]} WHERE rowid > ?"
                        " ORDER BY rowid LIMIT 1000",
                        (last,),
                    ).fetchall()
                except sqlite3.OperationalError:
                    return
            if not rows:
                return
            for rowid, member in rows:
                last = rowid
                if member not in seen:
                    seen.add(member)
                    yield member

    async def seal_run(self, run: str) -> None:
        name = self._prefix + run

        def seal(conn: sqlite3.Connection) -> None:
            found = conn.execute("SELECT id, sealed FROM runs WHERE name = ?", (name,)).fetchone()
            if found is None or found[1]:
                return
            table = f"run_{found[0]}"
            index = f"CREATE UNIQUE INDEX {table}_member ON {table}(member)"
            try:
                conn.execute(index)
            except sqlite3.IntegrityError:  # members written twice: keep each one's last copy
                conn.execute(
                    f"DELETE FROM {table} WHERE rowid NOT IN"
                    f" (SELECT max(rowid) FROM {table} GROUP BY member)"
                )
                conn.execute(index)
            conn.execute("UPDATE runs SET sealed = 1 WHERE id = ?", (found[0],))

        await self._in_writer(lambda: self._transaction("cannot index", seal))

    async def drop_run(self, run: str) -> None:
        name = self._prefix + run
        self._tables.pop(run, None)

        def drop(conn: sqlite3.Connection) -> None:
            found = conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
            if found is not None:
                _drop(conn, found[0])

        await self._in_writer(lambda: self._transaction("cannot delete from", drop))


def _drop(conn: sqlite3.Connection, run_id: Any) -> None:
    conn.execute(f"DROP TABLE IF EXISTS run_{int(run_id)}")
    conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))


def _purge_expired(conn: sqlite3.Connection) -> None:
    for (run_id,) in conn.execute(
        "SELECT id FROM runs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now(),)
    ).fetchall():
        _drop(conn, run_id)
