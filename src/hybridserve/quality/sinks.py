"""Where the prediction log and the feedback it is joined with are kept.

A sink is four methods: ``append`` rows of one kind (``predictions`` or ``feedback``) for one
route, ``read`` them back for a time range, ``claim`` feedback ids (``True`` for an id never
seen: what makes feedback idempotent) and ``close``. Three implementations:

- :class:`ParquetSink` (the embedded default): per kind and route a directory of Parquet files.
  Prediction rows go to an open file named ``*.parquet.inprogress`` that is closed and renamed
  (so readers see whole files only) after ``rotate_rows`` rows or ``rotate_interval``; files
  older than ``retention`` are deleted when one closes. Feedback is written one file per
  append (it is not on a hot path, and must be readable at once).
- :class:`RedisSink`: one stream per kind and route (``{prefix}plog:{route}``,
  ``{prefix}feedback:{route}``), trimmed to about ``maxlen`` entries, numbered by Redis as
  they are written; claimed ids are ``SET NX`` keys that expire with the retention.
- :class:`MemorySink`, the in-memory twin for tests.

Rows are plain dicts; times are epoch seconds in ``ts``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from hybridserve._optional import require
from hybridserve.config import PredictionLogConfig, Project
from hybridserve.errors import ConfigError, StoreError
from hybridserve.urls import masked_url

Kind = Literal["predictions", "feedback"]

PREDICTION_SCHEMA = pa.schema(
    [
        ("ts", pa.float64()),
        ("route", pa.string()),
        ("source", pa.string()),
        ("entity", pa.string()),
        ("request_id", pa.string()),
        ("run_id", pa.string()),
        ("event_id", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("score", pa.float64()),
        ("label", pa.string()),
        ("degraded", pa.bool_()),
        ("latency_ms", pa.float64()),
        ("features", pa.string()),
        ("fingerprint", pa.string()),
    ]
)
"""One logged answer. ``features`` is the values as JSON (``null`` for a missing one),
``label`` the label as JSON text."""

FEEDBACK_SCHEMA = pa.schema(
    [
        ("ts", pa.float64()),
        ("id", pa.string()),
        ("route", pa.string()),
        ("request_id", pa.string()),
        ("entity", pa.string()),
        ("at", pa.float64()),
        ("value", pa.float64()),
    ]
)
"""One true outcome: ``ts`` when it was received, ``at`` the time it is about (by entity)."""

SCHEMAS: dict[Kind, pa.Schema] = {"predictions": PREDICTION_SCHEMA, "feedback": FEEDBACK_SCHEMA}


class Sink(Protocol):
    def append(self, kind: Kind, route: str, rows: Sequence[dict[str, Any]]) -> None: ...

    def read(
        self,
        kind: Kind,
        route: str,
        since: float | None = None,
        until: float | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows with ``since <= ts <= until``, oldest first (closed Parquet files only);
        ``columns`` (with ``ts``) is what the caller needs, which a sink may read alone."""
        ...

    def claim(self, route: str, ids: Sequence[str]) -> list[bool]:
        """For each feedback id: ``True`` when it was never claimed before (now it is)."""
        ...

    def flush(self) -> None:
        """Make every appended row readable (a Parquet sink closes its open files)."""
        ...

    def close(self) -> None: ...


def _in_range(ts: float, since: float | None, until: float | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts <= until)


class MemorySink:
    """Rows in lists: the test double, and ``memory://``."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Kind, str], list[dict[str, Any]]] = defaultdict(list)
        self._claimed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def append(self, kind: Kind, route: str, rows: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self.rows[(kind, route)].extend(dict(r) for r in rows)

    def read(
        self,
        kind: Kind,
        route: str,
        since: float | None = None,
        until: float | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            rows = list(self.rows.get((kind, route), ()))
        return sorted((r for r in rows if _in_range(r["ts"], since, until)), key=_ts)

    def claim(self, route: str, ids: Sequence[str]) -> list[bool]:
        out = []
        with self._lock:
            for i in ids:
                new = (route, i) not in self._claimed
                self._claimed.add((route, i))
                out.append(new)
        return out

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _ts(row: dict[str, Any]) -> float:
    return float(row["ts"])


class _OpenFile:
    __slots__ = ("first", "last", "opened", "path", "rows", "writer")

    def __init__(self, path: Path, schema: pa.Schema, ts: float) -> None:
        self.path = path
        self.writer = pq.ParquetWriter(str(path), schema)
        self.first = self.last = ts
        self.opened = time.monotonic()
        self.rows = 0


class ParquetSink:
    """Rotated Parquet files under ``directory/{kind}/{route}/``.

    A closed file is named ``{first ts ms}-{last ts ms}-{pid}-{n}.parquet``, so a read skips
    the files outside its range without opening them.
    """

    def __init__(self, directory: Path, cfg: PredictionLogConfig) -> None:
        self.directory = directory
        self.cfg = cfg
        self._open: dict[tuple[Kind, str], _OpenFile] = {}
        self._claimed: dict[str, set[str]] = {}
        self._n = 0
        self._lock = threading.Lock()

    def _dir(self, kind: Kind, route: str) -> Path:
        return self.directory / kind / route

    def _name(self, first: float, last: float) -> str:
        self._n += 1
        return f"{int(first * 1000)}-{int(last * 1000)}-{os.getpid()}-{self._n}.parquet"

    def append(self, kind: Kind, route: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        table = pa.Table.from_pylist(list(rows), schema=SCHEMAS[kind])
        times = [float(r["ts"]) for r in rows]
        try:
            with self._lock:
                d = self._dir(kind, route)
                d.mkdir(parents=True, exist_ok=True)
                if kind == "feedback":  # readable at once: one whole file per append
                    path = d / self._name(min(times), max(times))
                    tmp = path.with_suffix(".parquet.inprogress")
                    pq.write_table(table, str(tmp))
                    os.replace(tmp, path)
                    return
                f = self._open.get((kind, route))
                if f is None:
                    tmp = d / f"{int(min(times) * 1000)}-{os.getpid()}.parquet.inprogress"
                    f = self._open[(kind, route)] = _OpenFile(tmp, SCHEMAS[kind], min(times))
                f.writer.write_table(table)
                f.rows += len(rows)
                f.first, f.last = min(f.first, *times), max(f.last, *times)
                if (
                    f.rows >= self.cfg.rotate_rows
                    or time.monotonic() - f.opened >= self.cfg.rotate_interval
                ):
                    self._rotate(kind, route)
        except OSError as exc:
            where = self.directory
            raise StoreError(f"cannot write the prediction log under {where}: {exc}") from exc

    def _rotate(self, kind: Kind, route: str) -> None:
        f = self._open.pop((kind, route), None)
        if f is None:
            return
        f.writer.close()
        os.replace(f.path, f.path.parent / self._name(f.first, f.last))
        cutoff = (time.time() - self.cfg.retention) * 1000
        for old in f.path.parent.glob("*.parquet"):
            last = _file_range(old)[1]
            if last is not None and last < cutoff:
                with contextlib.suppress(OSError):
                    old.unlink()

    def read(
        self,
        kind: Kind,
        route: str,
        since: float | None = None,
        until: float | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        d = self._dir(kind, route)
        rows: list[dict[str, Any]] = []
        for path in sorted(d.glob("*.parquet")) if d.is_dir() else ():
            first, last = _file_range(path)
            if since is not None and last is not None and last < since * 1000 - 1:
                continue
            if until is not None and first is not None and first > until * 1000 + 1:
                continue
            try:
                cols = None if columns is None else list(columns)
                table = pq.read_table(str(path), schema=SCHEMAS[kind], columns=cols)
            except (OSError, pa.ArrowInvalid):
                continue  # deleted by retention meanwhile, or not ours
            rows.extend(r for r in table.to_pylist() if _in_range(r["ts"], since, until))
        rows.sort(key=_ts)
        return rows

    def claim(self, route: str, ids: Sequence[str]) -> list[bool]:
        with self._lock:
            seen = self._claimed.get(route)
            if seen is None:  # ids claimed before this process started: in the files
                seen = {r["id"] for r in self.read("feedback", route, columns=("ts", "id"))}
                self._claimed[route] = seen
            out = []
            for i in ids:
                out.append(i not in seen)
                seen.add(i)
            return out

    def flush(self) -> None:
        with self._lock:
            for kind, route in list(self._open):
                self._rotate(kind, route)

    def close(self) -> None:
        self.flush()


def _file_range(path: Path) -> tuple[float | None, float | None]:
    parts = path.name.split("-")
    try:
        return float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        return None, None


class RedisSink:
    """One trimmed stream per kind and route; entries hold a row as JSON in field ``r``."""

    def __init__(self, url: str, prefix: str, cfg: PredictionLogConfig) -> None:
        redis = require("redis", "redis")
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        self.prefix = prefix
        self.cfg = cfg

    def _key(self, kind: Kind, route: str) -> str:
        return f"{self.prefix}{'plog' if kind == 'predictions' else 'feedback'}:{route}"

    def _fail(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"cannot {what} the prediction log on {masked_url(self.url)}: {exc}")

    def append(self, kind: Kind, route: str, rows: Sequence[dict[str, Any]]) -> None:
        key = self._key(kind, route)
        try:
            pipe = self.client.pipeline(transaction=False)
            for r in rows:
                pipe.xadd(key, {"r": orjson.dumps(r)}, maxlen=self.cfg.maxlen, approximate=True)
            pipe.execute()
        except Exception as exc:
            raise self._fail("write", exc) from exc

    def read(
        self,
        kind: Kind,
        route: str,
        since: float | None = None,
        until: float | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        # Entries are numbered by Redis when written, which is never before the row's own
        # time: the range can start at ``since``, but a row of ``until`` may be written later
        # (a batch run logs after it ends), so the end is a filter only.
        lo = "-" if since is None else str(max(0, int(since * 1000) - 1))
        try:
            entries = self.client.xrange(self._key(kind, route), lo, "+")
        except Exception as exc:
            raise self._fail("read", exc) from exc
        rows = [orjson.loads(fields[b"r"]) for _, fields in entries]
        return sorted((r for r in rows if _in_range(r["ts"], since, until)), key=_ts)

    def claim(self, route: str, ids: Sequence[str]) -> list[bool]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for i in ids:
                key = f"{self.prefix}feedback-id:{route}:{i}"
                pipe.set(key, b"1", nx=True, ex=max(1, int(self.cfg.retention)))
            return [bool(x) for x in pipe.execute()]
        except Exception as exc:
            raise self._fail("write", exc) from exc

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def sink_url(project: Project) -> str:
    """The prediction log's URL: as configured, else Redis when the prediction store is
    Redis, else Parquet files under the project directory."""
    configured = project.prediction_log.url
    if configured:
        return configured
    store = project.stores.predictions_url
    if store.startswith(("redis://", "rediss://", "unix://")):
        return store
    return "parquet:///.hybridserve/prediction-log"


def open_sink(project: Project) -> Sink:
    url = sink_url(project)
    scheme = url.partition("://")[0].lower()
    cfg = project.prediction_log
    if scheme == "memory":
        return MemorySink()
    if scheme == "parquet":
        return ParquetSink(project.path(url.removeprefix("parquet:///") or "."), cfg)
    if scheme in ("redis", "rediss", "unix"):
        return RedisSink(url, project.stores.prefix, cfg)
    raise ConfigError(
        f"prediction_log.url: expected parquet:///DIR, redis://... or memory://, "
        f"got {masked_url(url)!r}"
    )
