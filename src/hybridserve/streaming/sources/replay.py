"""Replay source: events from JSONL or Parquet files, in a fixed order, resumable.

The path is one file or a directory of ``*.jsonl`` / ``*.parquet`` files read in name
order, so adding a file with a later name appends to the stream. An entry's id is
``file:row``. The offset of the first unacknowledged row is written to the store
(``ro:{stream}``) on every ack, so a restarted consumer resumes from it: rows after the
offset may be read again (at-least-once), rows before it never are. Dead letters and
outputs are kept in memory for the run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from hybridserve.errors import ConfigError
from hybridserve.records import now
from hybridserve.storage import Entry, KVStore
from hybridserve.streaming.events import RawEntry
from hybridserve.streaming.sources.base import DeadLetter, SourceInfo
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
    kind = "replay"

    def __init__(self, path: Path, kv: KVStore, stream: str) -> None:
        self.path, self.kv, self.stream = path, kv, stream
        self.log = MemoryLog()
        self._files: list[Path] = []
        self._rows: dict[str, list[bytes]] = {}
        self._sizes: dict[str, int] = {}
        self._committed = (0, 0)
        """(file index, row) of the first unacknowledged row."""
        self._next = (0, 0)
        self._acked: set[tuple[int, int]] = set()
        self._deliveries: dict[tuple[int, int], int] = {}

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
            names = [f.name for f in self._files]
            done = int(saved["row"]) < 0  # every row of that file was acknowledged
            if saved["file"] in names and not done:
                self._committed = (names.index(saved["file"]), int(saved["row"]))
            elif done:  # start with the first file named after it (files added later count)
                self._committed = (sum(n <= saved["file"] for n in names), 0)
            else:  # the file was removed: start after every file named before it
                self._committed = (sum(n < saved["file"] for n in names), 0)
        self._next = self._committed

    def _file_rows(self, fi: int) -> list[bytes]:
        path = self._files[fi]
        rows = self._rows.get(path.name)
        if rows is None:
            self._sizes[path.name] = path.stat().st_size
            rows = self._rows[path.name] = _rows(path)
        return rows

    def _grew(self, fi: int) -> bool:
        """Reload the last file if it grew (events appended by ``append`` or a writer)."""
        path = self._files[fi]
        if path.stat().st_size == self._sizes.get(path.name):
            return False
        self._rows.pop(path.name, None)
        return True

    async def read(self, max_items: int, block: float) -> list[RawEntry]:
        out: list[RawEntry] = []
        at = now()
        fi, row = self._next
        while len(out) < max_items:
            if fi >= len(self._files):
                self._scan()  # a new file may have appeared
                if fi >= len(self._files):
                    break
            rows = self._file_rows(fi)
            if row >= len(rows):
                if fi < len(self._files) - 1:
                    fi, row = fi + 1, 0
                    continue
                # The last file, read to its end: it may have grown, or a newer file appeared.
                if self._grew(fi) and row < len(self._file_rows(fi)):
                    continue
                self._scan()
                if fi >= len(self._files) - 1:
                    break
                fi, row = fi + 1, 0
                continue
            take = rows[row : row + max_items - len(out)]
            for k, payload in enumerate(take):
                pos = (fi, row + k)
                n = self._deliveries[pos] = self._deliveries.get(pos, 0) + 1
                out.append(RawEntry(f"{self._files[fi].name}:{row + k}", payload, n, at))
            row += len(take)
        self._next = (fi, row)
        return out

    @property
    def exhausted(self) -> bool:
        """Every row of every file (as they are now) has been acknowledged."""
        fi, row = self._committed
        if fi >= len(self._files):
            return True
        return fi == len(self._files) - 1 and row >= len(self._file_rows(fi))

    async def ack(self, ids: Sequence[str]) -> None:
        names = {f.name: i for i, f in enumerate(self._files)}
        for entry_id in ids:
            name, _, pos = entry_id.rpartition(":")
            self._acked.add((names[name], int(pos)))
        fi, row = self._committed
        moved = False
        # An offset at the end of a file that is no longer the last one moves to the next.
        while fi < len(self._files) - 1 and row >= len(self._file_rows(fi)):
            fi, row, moved = fi + 1, 0, True
        while (fi, row) in self._acked:
            self._acked.discard((fi, row))
            self._deliveries.pop((fi, row), None)
            moved = True
            row += 1
            if row >= len(self._file_rows(fi)) and fi < len(self._files) - 1:
                self._rows.pop(self._files[fi].name, None)
                fi, row = fi + 1, 0
        if moved:
            self._committed = (fi, row)
            # The last file is remembered with its row count, so rows appended to it later,
            # and files named after it, are read after a restart.
            payload = orjson.dumps({"file": self._files[fi].name, "row": row})
            await self.kv.put_many([Entry(self.offset_key, payload, now())])

    def rewind(self) -> None:
        self._next = self._committed
        self._acked.clear()

    @property
    def recovering(self) -> bool:
        return False  # deliveries are counted in this process only: a restart resets them

    async def claim_stale(self, min_idle: float, max_items: int) -> list[RawEntry]:
        return []  # one reader per replay

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
        total = sum(len(self._file_rows(i)) for i in range(len(self._files)))
        done = sum(
            len(self._file_rows(i)) for i in range(min(self._committed[0], len(self._files)))
        )
        done += self._committed[1]
        return SourceInfo(
            length=total,
            lag=total - done,
            pending=None,
            dead_letters=len(self.log.dead_letters),
            outputs=len(self.log.outputs),
        )

    async def close(self) -> None:
        return None
