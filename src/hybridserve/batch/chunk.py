"""Scoring one chunk and writing it to both sinks: the code every executor runs.

A :class:`ChunkWorker` lives in a worker process (or a Ray actor) and keeps the run's model
loaded. For each chunk it filters the rows (``--top-k-active``, ``--only-changed``), scores
them through the Scorer's column path in one model call, then writes

1. the records to the prediction store under the run's keys (one bulk ``put_columns``, as
   ``PredictionStore.put_run`` writes them, encoded column-wise by :mod:`.encode`);
2. the snapshot ``chunk-NNNNNN.parquet`` (temp file, fsync, ``os.replace``);
3. rejected rows, if any, to ``rejected-NNNNNN.parquet`` with the entity, reason and raw row.

Everything in a chunk's output is a function of the chunk's rows and the run's fixed values
(model version, snapshot time, run id), so a chunk redone after a kill writes the same keys
and the same bytes again.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hybridserve.batch.changes import Previous, feature_hash
from hybridserve.batch.encode import ScoredColumns, record_bytes, snapshot_columns
from hybridserve.batch.manifest import ChunkStats, fsync_dir
from hybridserve.config import Project
from hybridserve.features.offline import epoch_seconds
from hybridserve.predictions.store import PredictionStore, run_key
from hybridserve.records import PredictionRecord
from hybridserve.scoring import Scorer
from hybridserve.storage import open_store

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


@dataclass(frozen=True)
class RunContext:
    """What a worker needs to process any chunk of one run (picklable)."""

    project: Project
    route: str
    model_ref: str
    run_id: str
    run_dir: str
    snapshot_at: float
    key: str
    timestamp: str | None
    chunk_rows: int
    top_k: pa.Array | None = None
    previous_dir: str | None = None


def chunk_file(run_dir: str | Path, index: int, kind: str = "chunk") -> Path:
    return Path(run_dir) / f"{kind}-{index:06d}.parquet"


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    """Write ``table`` to a temp name, fsync it, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
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
        from hybridserve.registry import Registry

        self.ctx = ctx
        project = ctx.project
        registry = Registry.from_project(project)
        try:
            self.scorer = Scorer(project, ctx.route, registry.load(ctx.model_ref))
        finally:
            registry.close()
        url = project.url(project.stores.predictions_url)
        self.store = PredictionStore(open_store(url, project.stores.prefix))
        self.loop = asyncio.new_event_loop()
        self.previous = None if ctx.previous_dir is None else Previous(ctx.previous_dir)
        self.delay = float(os.environ.get(DELAY_ENV) or 0)

    def process(self, index: int, table: pa.Table) -> ChunkStats:
        """Filter, score and write chunk ``index``; return its counts."""
        t0 = time.perf_counter()
        if self.delay:
            time.sleep(self.delay)
        ctx, scorer = self.ctx, self.scorer
        n = table.num_rows
        pos = np.arange(n)
        if ctx.top_k is not None:
            mask = pc.is_in(pc.cast(table[ctx.key], pa.string()), value_set=ctx.top_k)
            table = table.filter(mask)
            pos = pos[np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)]
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
        keep = np.asarray(prepared.rows, dtype=np.int64)
        if len(keep) < len(entities):
            names, as_of = names.take(pa.array(keep)), as_of[keep]
        scores = np.empty(0)
        if len(keep):
            scores = scorer.runtime.predict(prepared.matrix).scores
        labels = None if scorer.threshold is None else (scores >= scorer.threshold).astype(int)
        scored = ScoredColumns(
            names,
            scores,
            labels,
            as_of,
            route=ctx.route,
            model=scorer.runtime.name,
            version=scorer.runtime.version,
            run_id=ctx.run_id,
            computed_at=ctx.snapshot_at,
            fingerprint=scorer.fingerprint,
        )
        columns = snapshot_columns(scored)
        columns["feature_hash"] = pa.array(hashes[keep], pa.int64())
        snapshot = pa.table(columns, schema=SNAPSHOT_SCHEMA)
        blobs = record_bytes(scored)
        prefix = run_key(ctx.route, ctx.run_id, "")
        keys = [prefix + e for e in names.to_pylist()]
        stamps = as_of.tolist()
        if carried is not None and carried.num_rows:
            snapshot = pa.concat_tables([snapshot, carried.cast(SNAPSHOT_SCHEMA)])
            for r in snapshot_records(carried):
                keys.append(prefix + r.entity)
                blobs.append(r.to_bytes())
                stamps.append(r.as_of)
        self.loop.run_until_complete(self.store.kv.put_columns(keys, blobs, stamps))
        write_parquet_atomic(chunk_file(ctx.run_dir, index), snapshot)
        if prepared.errors:
            write_parquet_atomic(
                chunk_file(ctx.run_dir, index, "rejected"),
                self._rejects(index, table, pos, prepared.errors),
            )
        return ChunkStats(
            index=index,
            rows=n,
            scored=len(keep),
            rejected=len(prepared.errors),
            carried=0 if carried is None else carried.num_rows,
            skipped=n - len(pos) - (0 if carried is None else carried.num_rows),
            seconds=round(time.perf_counter() - t0, 4),
        )

    def _rejects(self, index: int, table: pa.Table, pos: Any, errors: list[Any]) -> pa.Table:
        rows = table.take(pa.array([e.index for e in errors])).to_pylist()
        return pa.table(
            {
                "row": pa.array([index * self.ctx.chunk_rows + int(pos[e.index]) for e in errors]),
                "entity": pa.array([e.entity for e in errors], pa.string()),
                "reason": pa.array([e.reason for e in errors], pa.string()),
                "raw": pa.array([orjson.dumps(r, default=str).decode() for r in rows], pa.string()),
            }
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.store.kv.close())
        self.loop.close()
