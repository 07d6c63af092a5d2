"""A run's records on SQLite: one database file per run, appended to, indexed once loaded.

``runs`` in the store's database names each run (its id, never reused), its expiry and
whether it is sealed. The records live in a file of their own beside the store,
``<store>-runs/run_<id>.db`` (table ``records``), so

- dropping a run (the one published two runs ago, an expired one) deletes a file: it takes
  no time and holds no lock, where dropping a table of a million rows from the shared
  database took seconds under its write lock (stalling every online and stream write) and
  left the file as large as before;
- loading a run takes the run file's lock, not the store's: the store's other writers never
  wait for a batch chunk;
- the file uses a rollback journal, not the WAL: its pages are written once, not to the WAL
  and again at a checkpoint.

:meth:`SQLiteRuns.put_run` appends rows with plain ``INSERT`` (no key yet, so no conflict
check and no index to keep up while loading) in one transaction per call.
:meth:`SQLiteRuns.seal_run` builds the unique index on ``member``, first removing the older
copies of members written twice (a chunk redone after a kill); reads of a sealed run use the
index, and a later write to it replaces. An expired run reads as empty and goes with the next
run write. Readers open run files read-only and check, at each read, that the file is still
there (another process may have dropped the run). Runs written by earlier versions, as tables
``run_<id>`` inside the store's database (``runs.file`` is 0), are read and dropped as before.
An in-memory store keeps each run in an in-memory database of its own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa

from hybridserve.errors import StoreError
from hybridserve.records import now
from hybridserve.storage.base import Entry

T = TypeVar("T")

_CHUNK = 500
_ROWS = 200
"""Rows per ``INSERT`` of a run write (600 parameters, within every SQLite's limit of 999)."""
_TABLE_TTL = 1.0
_RECORDS = "CREATE TABLE IF NOT EXISTS records (member TEXT NOT NULL, value BLOB NOT NULL,"
_RECORDS += " as_of REAL NOT NULL)"


@dataclass(frozen=True, slots=True)
class _Run:
    """A run as ``runs`` lists it."""

    id: int
    file: bool
    """In a file of its own (else a table in the store's database, as earlier versions did)."""
    sealed: bool
    expires_at: float | None
    looked_up: float

    @property
    def table(self) -> str:
        return "records" if self.file else f"run_{self.id}"


class _Gone(Exception):
    """The run's file is not there (dropped, or not written yet)."""


@dataclass(slots=True)
class _Opened:
    conn: sqlite3.Connection
    inode: tuple[int, int] | None


class SQLiteRuns:
    """The run-scoped methods of :class:`~hybridserve.storage.sqlite.SQLiteStore`."""

    path: str
    _prefix: str
    _conn: sqlite3.Connection
    _wconn: sqlite3.Connection
    _lock: threading.Lock
    _wlock: threading.Lock
    _tables: dict[str, _Run]
    """Run name -> its listing, for the runs read lately."""
    _readers: dict[int, _Opened]
    """Run id -> a read connection to its file (under ``_lock``)."""
    _writers: dict[int, _Opened]
    """Run id -> a write connection to its file (in the writer thread, under ``_wlock``).
    In memory, the same dict as ``_readers``: each run's database is one connection."""

    if TYPE_CHECKING:  # the store's own

        async def _in_writer(self, fn: Callable[[], T]) -> T: ...
        def _failure(self, doing: str, exc: sqlite3.Error | OSError) -> StoreError: ...
        async def get_many(self, keys: Sequence[str]) -> list[Entry | None]: ...

    def _init_runs(self) -> None:
        self._tables = {}
        self._readers = {}
        self._writers = self._readers if self._memory else {}

    @property
    def _memory(self) -> bool:
        return self.path == ":memory:"

    def _run_path(self, run_id: int) -> str:
        return f"{self.path}-runs/run_{run_id}.db"

    # -- connections to run files ---------------------------------------------------------

    def _open(self, run_id: int, *, write: bool) -> _Opened:
        if self._memory:
            if not write:
                raise _Gone
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            return _Opened(conn, None)
        path = self._run_path(run_id)
        if write:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # A new file's journal is a rollback journal (the default), not the WAL.
            conn = sqlite3.connect(
                path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous=NORMAL")
        else:
            uri = Path(path).resolve().as_uri() + "?mode=ro"
            try:
                conn = sqlite3.connect(
                    uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
                )
            except sqlite3.OperationalError:
                raise _Gone from None
        return _Opened(conn, _inode(path))

    def _connection(self, run: _Run, *, write: bool) -> sqlite3.Connection:
        """The connection to read (under ``_lock``) or write (in the writer thread, under
        ``_wlock``) ``run``'s records; raise :class:`_Gone` when its file is not there."""
        if not run.file:
            return self._wconn if write else self._conn
        cache = self._writers if write else self._readers
        opened = cache.get(run.id)
        if (
            opened is not None
            and not self._memory
            and _inode(self._run_path(run.id)) != opened.inode  # another process dropped it
        ):
            cache.pop(run.id).conn.close()
            opened = None
        if opened is None:  # a missing file: read-only opening raises _Gone
            opened = cache[run.id] = self._open(run.id, write=write)
            if write:
                opened.conn.execute(_RECORDS)
        return opened.conn

    def _forget(self, run_id: int) -> None:
        """Close this process's connections to a dropped run's file, then delete it."""
        for cache, lock in ((self._writers, self._wlock), (self._readers, self._lock)):
            with lock:
                opened = cache.pop(run_id, None)
                if opened is not None:
                    opened.conn.close()
        self._unlink(run_id)

    def _unlink(self, run_id: int) -> None:
        if not self._memory:
            for suffix in ("", "-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._run_path(run_id) + suffix)

    # -- the store's database ---------------------------------------------------------------

    def _transaction(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one write transaction on the writer connection (in the writer thread)."""
        return _in_transaction(self._wconn, self._wlock, lambda: fn(self._wconn), doing, self)

    def _listed(self, conn: sqlite3.Connection, name: str, at: float) -> _Run | None:
        found = conn.execute(
            "SELECT id, file, sealed, expires_at FROM runs WHERE name = ?", (name,)
        ).fetchone()
        if found is None:
            return None
        return _Run(found[0], bool(found[1]), bool(found[2]), found[3], at)

    async def put_run(self, run: str, rows: pa.RecordBatch, expires_at: float | None = None) -> int:
        if rows.num_rows == 0:
            return 0
        name = self._prefix + run
        self._tables.pop(run, None)
        members, values, as_of = (rows.column(i) for i in range(3))

        def listing(conn: sqlite3.Connection) -> tuple[_Run, list[int]]:
            expired = _purge_expired(conn)
            found = self._listed(conn, name, now())
            if found is None:
                cur = conn.execute(
                    "INSERT INTO runs(name, expires_at, file) VALUES (?, ?, 1)", (name, expires_at)
                )
                assert cur.lastrowid is not None
                found = _Run(cur.lastrowid, True, False, expires_at, now())
                # A file left by a store deleted without its runs: gone before the listing
                # commits, so no other process can have started writing the new run to it.
                self._unlink(found.id)
            else:
                conn.execute("UPDATE runs SET expires_at = ? WHERE id = ?", (expires_at, found.id))
            return found, expired

        def write() -> int:
            found, stale = self._transaction("cannot write to", listing)
            for run_id in stale:
                self._forget(run_id)
            if not found.file:  # an earlier version's run, still loading
                return self._transaction("cannot write to", lambda c: insert(c, found))
            with self._wlock:
                conn = self._connection(found, write=True)
            return _in_transaction(
                conn, self._wlock, lambda: insert(conn, found), "cannot write to", self
            )

        def insert(conn: sqlite3.Connection, found: _Run) -> int:
            verb = "INSERT OR REPLACE" if found.sealed else "INSERT"
            into = f"{verb} INTO {found.table}(member, value, as_of) VALUES "
            # _ROWS rows per statement: a third less CPU per row than one row per statement
            # (the statement's own cost, paid once per _ROWS rows).
            flat = [
                x
                for row in zip(
                    members.to_pylist(), values.to_pylist(), as_of.to_pylist(), strict=True
                )
                for x in row
            ]
            step = 3 * _ROWS
            whole = len(flat) - len(flat) % step
            if whole:
                many = into + ", ".join(["(?, ?, ?)"] * _ROWS)
                conn.executemany(many, (flat[i : i + step] for i in range(0, whole, step)))
            if whole < len(flat):
                rest = (len(flat) - whole) // 3
                conn.execute(into + ", ".join(["(?, ?, ?)"] * rest), flat[whole:])
            return int(rows.num_rows)

        return await self._in_writer(write)

    def _lookup(self, run: str, at: float, *, cached: bool = False) -> _Run | None:
        """The live run (on the reader connection, under its lock).

        ``cached``: a run found less than a second ago is not looked up again (a served
        run's read is then one query); a run dropped meanwhile raises :class:`_Gone` or
        "no such table" when read.
        """
        hit = self._tables.get(run) if cached else None
        if hit is None or at - hit.looked_up >= _TABLE_TTL:
            hit = self._listed(self._conn, self._prefix + run, at)
            if hit is None:
                self._tables.pop(run, None)
                return None
            self._tables[run] = hit
        return None if hit.expires_at is not None and hit.expires_at <= at else hit

    def _reading(self, run: str, fn: Callable[[sqlite3.Connection, _Run], T], empty: T) -> T:
        """``fn`` on the live run's records (under the reader lock), looked up again if it was
        dropped since; ``empty`` when there is none."""
        with self._lock:
            for cached in (True, False):
                found = self._lookup(run, now(), cached=cached)
                if found is None:
                    return empty
                try:
                    return fn(self._connection(found, write=False), found)
                except _Gone:
                    pass
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise self._failure("cannot read from", exc) from exc
                self._tables.pop(run, None)
            return empty

    async def get_run(
        self, run: str, members: Sequence[str], keys: Sequence[str] = ()
    ) -> list[Entry | None]:
        own = await self.get_many(keys)
        if not members:
            return own
        none: dict[str, Entry] = {}
        found = self._reading(run, partial(_read, members=members), none)
        return [*own, *(found.get(m) for m in members)]

    async def scan_run(self, run: str) -> AsyncIterator[str]:
        seen: set[str] = set()
        last = 0
        while True:
            none: list[tuple[int, str]] = []
            rows = self._reading(run, partial(_page, after=last), none)
            if not rows:
                return
            for rowid, member in rows:
                last = rowid
                if member not in seen:
                    seen.add(member)
                    yield member

    async def seal_run(self, run: str) -> None:
        name = self._prefix + run

        def seal() -> None:
            with self._wlock:
                found = self._listed(self._wconn, name, now())
            if found is None or found.sealed:
                return
            index = f"CREATE UNIQUE INDEX IF NOT EXISTS {found.table}_member"
            index += f" ON {found.table}(member)"

            def build(conn: sqlite3.Connection) -> None:
                # The sort behind the index may use helper threads: a run is sealed once its
                # writers are done, so the cores are free (a fifth to a third off, measured).
                conn.execute(f"PRAGMA threads = {min(4, os.cpu_count() or 1)}")
                try:
                    conn.execute(index)
                except sqlite3.IntegrityError:  # members written twice: keep each one's last
                    conn.execute(
                        f"DELETE FROM {found.table} WHERE rowid NOT IN"
                        f" (SELECT max(rowid) FROM {found.table} GROUP BY member)"
                    )
                    conn.execute(index)

            if found.file:
                with self._wlock:
                    conn = self._connection(found, write=True)
                _in_transaction(conn, self._wlock, lambda: build(conn), "cannot index", self)
                self._transaction(
                    "cannot index",
                    lambda c: c.execute("UPDATE runs SET sealed = 1 WHERE id = ?", (found.id,)),
                )
            else:

                def build_and_mark(c: sqlite3.Connection) -> None:
                    build(c)
                    c.execute("UPDATE runs SET sealed = 1 WHERE id = ?", (found.id,))

                self._transaction("cannot index", build_and_mark)

        await self._in_writer(seal)

    async def drop_run(self, run: str) -> None:
        name = self._prefix + run
        self._tables.pop(run, None)

        def drop(conn: sqlite3.Connection) -> list[int]:
            found = self._listed(conn, name, now())
            if found is None:
                return []
            _drop(conn, found.id, found.file)
            return [found.id] if found.file else []

        def dropped() -> None:
            for run_id in self._transaction("cannot delete from", drop):
                self._forget(run_id)

        await self._in_writer(dropped)

    def _close_runs(self) -> None:
        for cache, lock in ((self._writers, self._wlock), (self._readers, self._lock)):
            with lock:
                for opened in cache.values():
                    opened.conn.close()
                cache.clear()


def _in_transaction(
    conn: sqlite3.Connection,
    lock: threading.Lock,
    fn: Callable[[], T],
    doing: str,
    store: SQLiteRuns,
) -> T:
    with lock:
        try:
            conn.execute("BEGIN IMMEDIATE")
            out = fn()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise store._failure(doing, exc) from exc
    return out


def _read(conn: sqlite3.Connection, run: _Run, *, members: Sequence[str]) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    for start in range(0, len(members), _CHUNK):
        chunk = list(members[start : start + _CHUNK])
        rows = conn.execute(
            f"SELECT member, value, as_of FROM {run.table}"
            f" WHERE member IN ({','.join('?' * len(chunk))}) ORDER BY rowid",
            chunk,
        ).fetchall()
        for m, value, as_of in rows:  # the last copy of a member wins
            found[m] = Entry(m, bytes(value), as_of, run.expires_at)
    return found


def _page(conn: sqlite3.Connection, run: _Run, *, after: int) -> list[tuple[int, str]]:
    return conn.execute(
        f"SELECT rowid, member FROM {run.table} WHERE rowid > ? ORDER BY rowid LIMIT 1000",
        (after,),
    ).fetchall()


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _drop(conn: sqlite3.Connection, run_id: int, file: bool) -> None:
    if not file:
        conn.execute(f"DROP TABLE IF EXISTS run_{int(run_id)}")
    conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))


def _purge_expired(conn: sqlite3.Connection) -> list[int]:
    """Delete the expired runs from ``runs`` (inside the caller's transaction); the ids of
    those whose files the caller deletes once it commits."""
    files = []
    for run_id, file in conn.execute(
        "SELECT id, file FROM runs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now(),)
    ).fetchall():
        _drop(conn, run_id, bool(file))
        if file:
            files.append(run_id)
    return files
