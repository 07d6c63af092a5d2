"""SQLite store: the embedded default (one file, WAL mode, shared by processes on one host).

Reads run inline on the event loop: a point read on a local WAL database takes tens of
microseconds, less than a thread hop, and a WAL reader never waits for a writer. Writes go
through one writer thread with its own connection, at most ``max_queued`` at a time: writers in
several processes are serialised by SQLite's lock (``busy_timeout``), and a batch run or another
process holding that lock used to stall the whole event loop (every request, not only the
write) for as long as it held it. The compare-and-set is a conditional upsert, so it is atomic
per row without a read first.

A run's records live in a database file of their own beside the store (``runs`` names it;
:mod:`.sqlite_runs`), appended to with plain inserts in one transaction per call (no key, no
conflict check), indexed once when the run is sealed and deleted with the run. A member
written twice (a chunk redone after a kill) reads as its last write; sealing removes such
duplicates before building the unique index.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import TypeVar

from hybridserve.errors import StoreError
from hybridserve.records import now
from hybridserve.storage.base import Entry, Write
from hybridserve.storage.sqlite_runs import SQLiteRuns
from hybridserve.urls import masked_url

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    as_of REAL NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    expires_at REAL,
    sealed INTEGER NOT NULL DEFAULT 0,
    file INTEGER NOT NULL DEFAULT 0
);
"""

_UPSERT = """
INSERT INTO kv(key, value, as_of, expires_at) VALUES (?, ?, ?, ?)
ON CONFLICT(key) DO UPDATE SET
    value = excluded.value, as_of = excluded.as_of, expires_at = excluded.expires_at
WHERE excluded.as_of >= kv.as_of OR (kv.expires_at IS NOT NULL AND kv.expires_at <= ?)
"""

T = TypeVar("T")

# SQLite's default limit on bound variables is 32766; stay far below it.
_CHUNK = 500
_PURGE_EVERY = 10_000
_MIN_FREE = 256 * 1024
"""Less free room than this on a failure: the disk is full (a WAL write needs pages)."""


def os_cause(path: str | Path, exc: sqlite3.Error) -> str | None:
    """The operating-system reason behind a SQLite failure on ``path``, when one shows.

    SQLite words a full disk or a read-only mount as ``disk I/O error`` or ``unable to open
    database file``; the file system says which it is (the database needs room for its
    ``-wal`` and ``-shm`` files beside it, and a directory it may write to).
    """
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return os.strerror(errno.ENOSPC)
    folder = Path(path).parent
    try:
        fs = os.statvfs(folder)
    except OSError as err:
        return err.strerror
    if fs.f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if not os.access(folder, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
        return os.strerror(errno.EACCES)
    if fs.f_bavail * fs.f_frsize < _MIN_FREE:
        return os.strerror(errno.ENOSPC)
    return None


def sqlite_path(url: str) -> str:
    """The file path in ``sqlite:///relative`` or ``sqlite:////absolute`` (``:memory:`` too)."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not a SQLite URL: {masked_url(url)!r} (expected sqlite:///path)")
    return url.removeprefix("sqlite:///")


def while_locked(fn: Callable[[], T], *, wait: float = 30.0) -> T:
    """``fn()``, tried again while SQLite says the database is locked, for up to ``wait`` s.

    Two processes opening one fresh file at once (two server workers, a batch run and a
    server) both switch it to WAL; that switch takes an exclusive lock, and SQLite reports the
    loser as busy at once, without calling the busy handler, so ``busy_timeout`` does not
    cover it.
    """
    deadline = time.monotonic() + wait
    delay = 0.002
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    while_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _add_run_files(conn: sqlite3.Connection) -> None:
    """``runs.file`` in a store an earlier version made (its runs are tables, ``file`` 0)."""
    if "file" in {row[1] for row in conn.execute("PRAGMA table_info(runs)")}:
        return
    try:
        conn.execute("ALTER TABLE runs ADD COLUMN file INTEGER NOT NULL DEFAULT 0")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it first
            raise


class SQLiteStore(SQLiteRuns):
    def __init__(self, url: str, prefix: str = "", *, max_queued: int = 64) -> None:
        self.url = url
        self._prefix = prefix
        self.path = path = sqlite_path(url)
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = _connect(path)
            conn = self._conn
            while_locked(lambda: conn.executescript(_SCHEMA))
            while_locked(lambda: _add_run_files(conn))
            # A second connection for the writer thread; ":memory:" is one database per
            # connection, so there the one connection serves both, under the lock.
            self._wconn = self._conn if path == ":memory:" else _connect(path)
        except (sqlite3.Error, OSError) as exc:
            raise self._failure("cannot open", exc) from exc
        self._lock = threading.Lock()
        self._wlock = self._lock if self._wconn is self._conn else threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="hs-sqlite-writer")
        self._max_queued = max_queued
        self._queued: asyncio.Semaphore | None = None
        self._writes_since_purge = 0
        self._init_runs()

    async def _in_writer(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the writer thread; at most ``max_queued`` writes wait at a time."""
        if self._queued is None:
            self._queued = asyncio.Semaphore(self._max_queued)
        async with self._queued:
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    def _failure(self, doing: str, exc: sqlite3.Error | OSError) -> StoreError:
        """An error naming the file, what failed and, when it shows, the system's reason."""
        if isinstance(exc, OSError):
            return StoreError(f"{doing} SQLite store {self.path}: {exc.strerror or exc}")
        cause = None if self.path == ":memory:" else os_cause(self.path, exc)
        why = f"{exc}" if cause is None else f"{cause} ({exc})"
        return StoreError(f"{doing} SQLite store {self.path}: {why}")

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        if not keys:
            return []
        at = now()
        p = self._prefix
        found: dict[str, Entry] = {}
        with self._lock:
            for start in range(0, len(keys), _CHUNK):
                chunk = [p + k for k in keys[start : start + _CHUNK]]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, value, as_of, expires_at FROM kv WHERE key IN ({marks})"
                    " AND (expires_at IS NULL OR expires_at > ?)",
                    [*chunk, at],
                ).fetchall()
                for key, value, as_of, expires_at in rows:
                    k = key[len(p) :]
                    found[k] = Entry(k, bytes(value), as_of, expires_at)
        return [found.get(k) for k in keys]

    async def put_many(self, writes: Sequence[Write]) -> int:
        if not writes:
            return 0
        at = now()
        p = self._prefix
        rows = [(p + w.key, w.value, w.as_of, w.expires_at, at) for w in writes]
        return await self._in_writer(lambda: self._write(rows))

    async def put_columns(
        self,
        keys: Sequence[str],
        values: Sequence[bytes],
        as_of: Sequence[float],
        expires_at: float | None = None,
    ) -> int:
        if not keys:
            return 0
        p = self._prefix
        rows = zip(
            [p + k for k in keys] if p else keys, values, as_of, repeat(expires_at), repeat(now())
        )
        return await self._in_writer(lambda: self._write(rows))

    def _write(self, rows: Iterable[tuple[str, bytes, float, float | None, float]]) -> int:
        """One transaction of compare-and-set upserts (in the writer thread)."""
        conn = self._wconn
        with self._wlock:
            try:
                before = conn.total_changes
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(_UPSERT, rows)
                conn.execute("COMMIT")
                written = conn.total_changes - before
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._failure("cannot write to", exc) from exc
            self._writes_since_purge += written
            if self._writes_since_purge >= _PURGE_EVERY:
                self._writes_since_purge = 0
                conn.execute(
                    "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (now(),)
                )
        return written

    async def delete_many(self, keys: Sequence[str]) -> int:
        rows = [(self._prefix + k,) for k in keys]

        def delete() -> int:
            conn = self._wconn
            with self._wlock:
                try:
                    before = conn.total_changes
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany("DELETE FROM kv WHERE key = ?", rows)
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise self._failure("cannot delete from", exc) from exc
                return conn.total_changes - before

        return await self._in_writer(delete)

    async def scan(self, prefix: str) -> AsyncIterator[str]:
        full = self._prefix + prefix
        last = full
        first = True
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT key FROM kv WHERE key " + (">=" if first else ">") + " ?"
                    " AND (expires_at IS NULL OR expires_at > ?) ORDER BY key LIMIT 1000",
                    (last, now()),
                ).fetchall()
            first = False
            if not rows:
                return
            for (key,) in rows:
                if not key.startswith(full):
                    return
                yield key[len(self._prefix) :]
            last = rows[-1][0]

    async def ping(self) -> None:
        with self._lock:
            self._conn.execute("SELECT 1")

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._writer.shutdown)
        self._close_runs()
        with self._wlock:
            self._wconn.close()
        with self._lock:
            self._conn.close()
