"""Replay source: events from JSONL or Parquet files, in a fixed order, resumable.

The path is one file or a directory of ``*.jsonl`` / ``*.parquet`` files read in name
order; files added later and rows appended to any file (the events endpoint appends to
``ingest.jsonl``) are read too. An entry's id is ``file:row``. Each file has its own offset,
the first row not yet acknowledged, written to the store (``ro:{stream}``, one map of file
name to row) on every ack that moves one, so a restarted consumer resumes every file where
it stopped: rows after a file's offset may be read again (at-least-once), rows before it
never are. (One offset for the whole directory, as before, took every file named before the
current one as done: a file created later with an earlier name was never read.) Dead
letters and outputs are kept in memory for the run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from hybridserve.config import ReplaySourceConfig
from hybridserve.errors import ConfigError
from hybridserve.records import now
from hybridserve.storage import Entry, KVStore
from hybridserve.streaming.events import RawEntry
from hybridserve.streaming.sources.base import DeadLetter, Opening, SourceInfo, StreamIO
from hybridserve.streaming.sources.memory import MemoryLog, record_dead_letters, record_outputs

_SUFFIXES = (".jsonl", ".ndjson", ".parquet")


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _rows(path: Path) -> list[bytes]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [orjson.dumps(r, default=_json_default) for r in pq.read_table(path).to_pylist()]
    data = path.read_bytes()
    if not data.endswith(b"\n"):  # a writer is mid-line: the last line is not complete yet
        data = data[: data.rfind(b"\n") + 1]
    return [line for line in data.splitlines() if line.strip()]


class ReplaySource:
    """A source that rewinds (to its offsets), its in-memory sinks, and a producer that
    appends to ``ingest.jsonl``. One reader: nothing to reclaim."""

    kind = "replay"

    def __init__(self, path: Path, kv: KVStore, stream: str) -> None:
        self.path, self.kv, self.stream = path, kv, stream
        self.log = MemoryLog()
        self._files: list[Path] = []
        self._rows: dict[str, list[bytes]] = {}
        """Rows of the files being read (dropped once a file is acknowledged to its end)."""
        self._sizes: dict[str, int] = {}
        self._lengths: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        """File name -> its first unacknowledged row (what is saved)."""
        self._next: dict[str, int] = {}
        """File name -> the next row to read."""
        self._acked: dict[str, set[int]] = {}
        self._deliveries: dict[tuple[str, int], int] = {}

    @property
    def offset_key(self) -> str:
        return f"ro:{self.stream}"

    def _scan(self) -> None:
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.iterdir() if p.suffix in _SUFFIXES)
        elif self.path.exists():
            self._files = [self.path]
        else:
            raise ConfigError(f"replay source {self.path} does not exist")

    async def start(self) -> None:
        self._scan()
        (entry,) = await self.kv.get_many([self.offset_key])
        if entry is not None:
            saved = orjson.loads(entry.value)
            if "files" in saved:
                self._offsets = {str(k): int(v) for k, v in saved["files"].items()}
            else:  # one offset for the directory (earlier versions): files before it are done
                for f in self._files:
                    if f.name < saved["file"] or (f.name == saved["file"] and saved["row"] < 0):
                        self._offsets[f.name] = len(self._file_rows(f.name))
                    elif f.name == saved["file"]:
                        self._offsets[f.name] = int(saved["row"])
        self._next = dict(self._offsets)

    def _file_rows(self, name: str) -> list[bytes]:
        rows = self._rows.get(name)
        if rows is None:
            path = self.path / name if self.path.is_dir() else self.path
            self._sizes[name] = path.stat().st_size
            rows = self._rows[name] = _rows(path)
            self._lengths[name] = len(rows)
        return rows

    def _unread(self, path: Path) -> bool:
        """Whether ``path`` may hold rows not read yet (it is new, or it grew)."""
        name = path.name
        if name not in self._lengths:
            return True
        if path.stat().st_size != self._sizes.get(name):
            self._rows.pop(name, None)  # reloaded on the next look
            return True
        return self._next.get(name, 0) < self._lengths[name]

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        out: list[RawEntry] = []
        at = now()
        self._scan()  # a new file may have appeared
        for path in self._files:
            if len(out) >= max_items:
                break
            if not self._unread(path):
                continue
            name = path.name
            rows = self._file_rows(name)
            row = self._next.get(name, 0)
            take = rows[row : row + max_items - len(out)]
            for k, payload in enumerate(take):
                pos = (name, row + k)
                n = self._deliveries[pos] = self._deliveries.get(pos, 0) + 1
                out.append(RawEntry(f"{name}:{row + k}", payload, n, at))
            self._next[name] = row + len(take)
        return out

    @property
    def exhausted(self) -> bool:
        """Every row of every file (as they are now) has been acknowledged."""
        return all(
            self._offsets.get(f.name, 0) >= len(self._file_rows(f.name)) for f in self._files
        )

    async def ack(self, ids: Sequence[str]) -> None:
        moved = False
        for entry_id in ids:
            name, _, pos = entry_id.rpartition(":")
            self._acked.setdefault(name, set()).add(int(pos))
        for name, acked in self._acked.items():
            row = self._offsets.get(name, 0)
            while row in acked:
                acked.discard(row)
                self._deliveries.pop((name, row), None)
                row += 1
            if row != self._offsets.get(name, 0):
                self._offsets[name], moved = row, True
                if row >= self._lengths.get(name, 0) and self._next.get(name, 0) >= row:
                    self._rows.pop(name, None)  # done for now; its length and size stay known
        if moved:
            payload = orjson.dumps({"files": self._offsets})
            await self.kv.put_many([Entry(self.offset_key, payload, now())])

    def rewind(self) -> None:
        self._next = dict(self._offsets)
        self._acked.clear()

    @property
    def recovering(self) -> bool:
        return False  # deliveries are counted in this process only: a restart resets them

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        record_dead_letters(self.log, items)

    async def emit(self, outputs: Sequence[tuple[str, bytes]]) -> None:
        record_outputs(self.log, outputs)

    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        """Append to ``<dir>/ingest.jsonl`` (directory sources only)."""
        if not self.path.is_dir():
            raise ConfigError(f"replay source {self.path} is a file; append needs a directory")
        target = self.path / "ingest.jsonl"
        start = len(_rows(target)) if target.exists() else 0
        with target.open("ab") as f:
            f.write(b"".join(p + b"\n" for p in payloads))
        self._rows.pop(target.name, None)
        return [f"{target.name}:{start + i}" for i in range(len(payloads))]

    async def info(self) -> SourceInfo:
        total = sum(len(self._file_rows(f.name)) for f in self._files)
        done = sum(min(self._offsets.get(f.name, 0), self._lengths[f.name]) for f in self._files)
        return SourceInfo(
            length=total,
            lag=total - done,
            pending=None,
            dead_letters=len(self.log.dead_letters),
            outputs=len(self.log.outputs),
        )

    async def close(self) -> None:
        return None


def _open(at: Opening) -> ReplaySource:
    src = at.cfg.source
    assert isinstance(src, ReplaySourceConfig)
    if at.kv is None:
        raise ConfigError("a replay source needs a store for its offset")
    return ReplaySource(at.project.path(src.path), at.kv, at.name)


def open_io(at: Opening) -> StreamIO:
    source = _open(at)
    return StreamIO(source, source, source)


def open_producer(at: Opening) -> ReplaySource:
    return _open(at)
