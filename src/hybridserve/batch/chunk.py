"""Scoring one chunk and writing it to both sinks: the code every executor runs.

A :class:`ChunkWorker` lives in a worker process (or a Ray actor) and keeps the run's model
loaded, and a :class:`~hybridserve.batch.writer.ChunkWriter` thread that writes the sinks, so
scoring the next chunk overlaps writing the last (:meth:`ChunkWorker.process_many`; one
:meth:`ChunkWorker.process` overlaps its store write with its snapshot write).

For each chunk it filters the rows (``--top-k-active``), rejects rows whose entity key
is unusable or a later duplicate and rows whose text cells do not parse (:mod:`.checks`),
carries unchanged rows over (``--only-changed``), scores the rest through the Scorer's column
path in one model call, then writes

1. the records to the prediction store as the run's records (one bulk run write,
   ``PredictionStore.put_run_rows``: each row's score and label packed, with the run's
   header, :mod:`~hybridserve.predictions.run_values`);
2. the snapshot ``chunk-NNNNNN.parquet`` (temp file, fsync, ``os.replace``);
3. rejected rows, if any, to ``rejected-NNNNNN.parquet`` with the row, entity, reason and raw
   row.

Everything in a chunk's output is a function of the chunk's rows and the run's fixed values
(model version, snapshot time, run id), so a chunk redone after a kill writes the same keys
and the same bytes again (only their expiry, counted from the write, moves on).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hybridserve.batch.changes import Previous, feature_hash
from hybridserve.batch.checks import entity_keys, later_duplicates, parse_text
from hybridserve.batch.drift import ChunkDrift, tally_chunk, write_chunk_drift
from hybridserve.batch.encode import ScoredColumns, snapshot_columns
from hybridserve.batch.manifest import ChunkStats, fsync_dir
from hybridserve.batch.writer import ChunkWriter
from hybridserve.config import DType, Project
from hybridserve.errors import StoreError
from hybridserve.features.offline import epoch_seconds
from hybridserve.predictions.run_values import RunHeader
from hybridserve.predictions.store import PredictionStore
from hybridserve.quality.profile import Profile
from hybridserve.records import PredictionRecord
from hybridserve.registry.artifacts import ArtifactStore
from hybridserve.registry.loading import load_version
from hybridserve.registry.versions import ModelVersion
from hybridserve.runtimes.compiled import for_batches
from hybridserve.scoring import Scorer
from hybridserve.storage import run_rows

log = logging.getLogger("hybridserve.batch")
DELAY_ENV = "HYBRIDSERVE_BATCH_CHUNK_DELAY"
"""Test hook: seconds each chunk sleeps before it is written (lets a test kill a run midway)."""

SNAPSHOT_SCHEMA = pa.schema(
    [
        ("entity", pa.string()),
        ("route", pa.string()),
        ("score", pa.float64()),
        ("label", pa.int64()),
        ("probabilities", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("source", pa.string()),
        ("as_of", pa.float64()),
        ("computed_at", pa.float64()),
        ("run_id", pa.string()),
        ("event_id", pa.string()),
        ("request_id", pa.string()),
        ("feature_fingerprint", pa.string()),
        ("feature_hash", pa.int64()),
    ]
)
_RECORD_FIELDS = [f.name for f in SNAPSHOT_SCHEMA if f.name != "feature_hash"]
_SNAPSHOT_DICTIONARY = ["route", "model", "model_version", "source", "computed_at", "run_id"]
_SNAPSHOT_DICTIONARY += ["feature_fingerprint", "probabilities", "event_id", "request_id"]
"""The snapshot's columns that hold one value per run (or none): dictionary-encoded. The
others (entity, score, label, as_of, feature_hash) differ from row to row, and building a
dictionary for them that then overflows took two thirds of the snapshot's write time."""
_RAW = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True)
class RunContext:
    """What a worker needs to process any chunk of one run (picklable)."""

    project: Project
    route: str
    model: ModelVersion
    """The model version the run scores, resolved once by the run (workers load exactly it)."""
    run_id: str
    run_dir: str
    snapshot_at: float
    key: str
    timestamp: str | None
    chunk_rows: int
    top_k: pa.Array | None = None
    previous_dir: str | None = None
    duplicates: Mapping[str, int] = field(default_factory=dict)
    """Input row of the first occurrence of each key that occurs more than once."""
    reference: Profile | None = None
    """The model version's reference profile: each chunk counts its rows in its bins."""
    sample_per_chunk: int = 0
    """Present values per feature each chunk keeps for the KS test."""


@contextmanager
def sink(name: str) -> Iterator[None]:
    """Name the sink in its errors (``prediction store: cannot open SQLite store PATH: ...``),
    so a run that fails says where, and why, in one line."""
    try:
        yield
    except StoreError as exc:
        raise StoreError(f"{name}: {exc.message}") from exc
    except OSError as exc:
        raise StoreError(f"{name}: {exc}") from exc


def feature_dtypes(scorer: Scorer) -> dict[str, DType]:
    """Each model input's declared dtype (how a text cell of it is parsed)."""
    return {name: spec.dtype for name, spec in zip(scorer.names, scorer.specs, strict=True)}


def chunk_file(run_dir: str | Path, index: int, kind: str = "chunk") -> Path:
    return Path(run_dir) / f"{kind}-{index:06d}.parquet"


def write_parquet_atomic(path: Path, table: pa.Table, dictionary: bool | list[str] = True) -> None:
    """Write ``table`` to a temp name, fsync it, then rename: never a half-written file.
    ``dictionary``: the columns to dictionary-encode (every column by default)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, use_dictionary=dictionary)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def snapshot_records(table: pa.Table) -> list[PredictionRecord]:
    """The records a snapshot holds (carried over by ``--only-changed``)."""
    out = []
    for row in table.select(_RECORD_FIELDS).to_pylist():
        p = row["probabilities"]
        row["probabilities"] = None if p is None else orjson.loads(p)
        out.append(PredictionRecord(**row))
    return out


class ChunkWorker:
    """Holds one run's model and store connection; processes chunks one at a time."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        project = ctx.project
        # The version the run resolved, loaded straight from its artifact: a worker opens no
        # registry database (nor imports SQLAlchemy), and every worker scores that version.
        model = project.models.get(ctx.model.name)
        artifacts = ArtifactStore(project.path(project.registry.artifacts))
        # Chunks larger than GTIL serves load no GTIL trees (``tl2cgen`` is kept).
        mode = for_batches(model.compile if model else "auto", ctx.chunk_rows)
        runtime = load_version(ctx.model, artifacts, mode)
        self.scorer = Scorer(project, ctx.route, runtime)
        self.dtypes = feature_dtypes(self.scorer)
        self.header = RunHeader(
            route=ctx.route,
            run_id=ctx.run_id,
            model=self.scorer.runtime.name,
            model_version=self.scorer.runtime.version,
            computed_at=ctx.snapshot_at,
            feature_fingerprint=self.scorer.fingerprint,
        )
        with sink("prediction store"):
            self.store = PredictionStore.open(project)
        self.writer = ChunkWriter()
        self.previous = None if ctx.previous_dir is None else Previous(ctx.previous_dir)
        self.delay = float(os.environ.get(DELAY_ENV) or 0)

    def process(self, index: int, table: pa.Table) -> ChunkStats:
        """Filter, check, score and write chunk ``index``; return its counts.

        The store write runs in the writer thread while this one writes the snapshot.
        """
        chunk = self._score(index, table)
        stored = self.writer.submit(lambda: self._store(chunk))
        self._files(chunk)
        stored.result()
        return chunk.stats()

    def process_many(self, chunks: Iterable[tuple[int, pa.Table]]) -> Iterator[ChunkStats]:
        """``process`` each chunk, scoring the next while the writer writes the last ones;
        yield each chunk's counts, in order, once both its sinks are written."""
        pending: deque[tuple[Future[None], _Scored]] = deque()
        try:
            for index, table in chunks:
                chunk = self._score(index, table)
                pending.append((self.writer.submit(partial(self._write, chunk)), chunk))
                while pending and pending[0][0].done():
                    done, finished = pending.popleft()
                    done.result()
                    yield finished.stats()
            while pending:
                done, finished = pending.popleft()
                done.result()
                yield finished.stats()
        finally:
            for done, _ in pending:  # a failed write or an abandoned loop: let the rest end
                done.exception()

    def _write(self, chunk: _Scored) -> None:
        self._store(chunk)
        self._files(chunk)

    def _store(self, chunk: _Scored) -> None:
        with sink("prediction store"):
            self.writer.run(self.store.put_run_rows(self.header, chunk.records))

    def _files(self, chunk: _Scored) -> None:
        ctx = self.ctx
        with sink(f"run directory {ctx.run_dir}"):
            write_parquet_atomic(
                chunk_file(ctx.run_dir, chunk.index), chunk.snapshot, _SNAPSHOT_DICTIONARY
            )
            if chunk.drift is not None:
                write_chunk_drift(ctx.run_dir, chunk.index, chunk.drift)
            if chunk.raw is not None:
                write_parquet_atomic(
                    chunk_file(ctx.run_dir, chunk.index, "rejected"),
                    self._rejects(chunk.index, chunk.raw, chunk.read_keys, chunk.rejected),
                )

    def _score(self, index: int, table: pa.Table) -> _Scored:
        """Everything but the writes: the chunk's records and snapshot, as columns."""
        t0 = time.perf_counter()
        if self.delay:
            time.sleep(self.delay)
        ctx, scorer = self.ctx, self.scorer
        raw, n = table, table.num_rows
        pos = np.arange(n)
        read_keys, bad_keys = entity_keys(table[ctx.key], ctx.key)
        table = table.set_column(table.schema.get_field_index(ctx.key), ctx.key, read_keys)
        if ctx.top_k is not None:
            mask = pc.fill_null(pc.is_in(read_keys, value_set=ctx.top_k), False)
            table = table.filter(mask)
            pos = pos[np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)]
        rejected: dict[int, str] = {}  # position in the chunk as read -> why
        kept = pc.cast(table[ctx.key], pa.string()).combine_chunks()
        found = {}
        if bad_keys:
            found = {i: bad_keys[int(p)] for i, p in enumerate(pos) if int(p) in bad_keys}
        found |= later_duplicates(kept, pos + index * ctx.chunk_rows, ctx.duplicates)
        table, pos = self._reject(table, pos, found, rejected)
        table, bad_cells = parse_text(table, self.dtypes)
        table, pos = self._reject(table, pos, bad_cells, rejected)
        parsed = table
        hashes = feature_hash(table, scorer.names)
        carried: pa.Table | None = None
        if self.previous is not None:
            same, carried = self.previous.split(table, ctx.key, hashes)
            table, hashes, pos = table.filter(pa.array(~same)), hashes[~same], pos[~same]
        names = pc.cast(table[ctx.key], pa.string()).combine_chunks()
        entities = names.to_pylist()
        as_of = np.full(table.num_rows, ctx.snapshot_at)
        if ctx.timestamp is not None:
            ts = epoch_seconds(table[ctx.timestamp])
            as_of = np.where(np.isnan(ts), ctx.snapshot_at, ts)
        prepared = scorer.prepare_columns(entities, {c: table[c] for c in scorer.names})
        rejected |= {int(pos[e.index]): e.reason for e in prepared.errors}
        keep = np.asarray(prepared.rows, dtype=np.int64)
        if len(keep) < len(entities):
            names, as_of = names.take(pa.array(keep)), as_of[keep]
        scores = np.empty(0)
        if len(keep):
            scores = scorer.runtime.predict(prepared.matrix).scores
        labels = None if scorer.threshold is None else (scores >= scorer.threshold).astype(int)
        scored = ScoredColumns(names, scores, labels, as_of, self.header)
        columns = snapshot_columns(scored)
        columns["feature_hash"] = pa.array(hashes[keep], pa.int64())
        snapshot = pa.table(columns, schema=SNAPSHOT_SCHEMA)
        rows = run_rows(names, scored.values(), as_of)
        if carried is not None and carried.num_rows:
            snapshot = pa.concat_tables([snapshot, carried.cast(SNAPSHOT_SCHEMA)])
            kept = snapshot_records(carried)
            more = run_rows([r.entity for r in kept], [r.to_bytes() for r in kept],
                            [r.as_of for r in kept])  # fmt: skip
            rows = run_rows(*(pa.concat_arrays([a, b]) for a, b in zip(rows, more, strict=True)))
        drift = self._drift(index, parsed, snapshot)
        return _Scored(
            index=index,
            rows_in=n,
            scored=len(keep),
            rejected=rejected,
            carried=0 if carried is None else carried.num_rows,
            records=rows,
            snapshot=snapshot,
            raw=raw if rejected else None,  # kept only to write the rejected rows
            drift=drift,
            read_keys=read_keys,
            started=t0,
        )

    def _drift(self, index: int, parsed: pa.Table, snapshot: pa.Table) -> ChunkDrift | None:
        """The chunk's drift tallies (its rows as parsed, the scores its snapshot holds), or
        None without a reference. A failure is logged and never fails the chunk: the run's
        report then lists this chunk in ``uncounted_chunks``."""
        ctx = self.ctx
        if ctx.reference is None:
            return None
        try:
            return tally_chunk(
                ctx.reference,
                self.scorer.names,
                parsed,
                snapshot["score"].to_numpy(),
                ctx.sample_per_chunk,
            )
        except Exception as exc:
            log.warning("run %s chunk %d: drift not counted: %s", ctx.run_id, index, exc)
            return None

    @staticmethod
    def _reject(
        table: pa.Table, pos: Any, reasons: dict[int, str], rejected: dict[int, str]
    ) -> tuple[pa.Table, Any]:
        """Drop the rows at ``reasons``' positions, recording why by position as read."""
        if not reasons:
            return table, pos
        ok = np.ones(table.num_rows, dtype=bool)
        for i, why in reasons.items():
            rejected[int(pos[i])] = why
            ok[i] = False
        return table.filter(pa.array(ok)), pos[ok]

    def _rejects(
        self, index: int, raw: pa.Table, keys: pa.Array, rejected: dict[int, str]
    ) -> pa.Table:
        at = sorted(rejected)
        rows = raw.take(pa.array(at, pa.int64())).to_pylist()
        return pa.table(
            {
                "row": pa.array([index * self.ctx.chunk_rows + i for i in at], pa.int64()),
                "entity": keys.take(pa.array(at, pa.int64())),
                "reason": pa.array([rejected[i] for i in at], pa.string()),
                "raw": pa.array(
                    [orjson.dumps(r, default=str, option=_RAW).decode() for r in rows], pa.string()
                ),
            }
        )

    def close(self) -> None:
        try:
            self.writer.call(self.store.kv.close)
        finally:
            self.writer.close()


@dataclass
class _Scored:
    """A scored chunk waiting for its writes."""

    index: int
    rows_in: int
    scored: int
    rejected: dict[int, str]
    carried: int
    records: pa.RecordBatch
    snapshot: pa.Table
    raw: pa.Table | None
    drift: ChunkDrift | None
    read_keys: pa.Array
    started: float

    def stats(self) -> ChunkStats:
        return ChunkStats(
            index=self.index,
            rows=self.rows_in,
            scored=self.scored,
            rejected=len(self.rejected),
            carried=self.carried,
            skipped=self.rows_in - self.scored - len(self.rejected) - self.carried,
            seconds=round(time.perf_counter() - self.started, 4),
        )
