"""The benchmark's input file and its floor: ``predict_proba`` on a pool, no I/O, no sinks."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_model: Any = None


def write_input(path: Path, rows: int, chunk_rows: int) -> None:
    """``rows`` distinct cards (30 features each), one Parquet row group per chunk."""
    from hybridserve.examples.fraud.data import LABEL, generate_cards

    path.parent.mkdir(parents=True, exist_ok=True)
    step = max(chunk_rows, 100_000 // chunk_rows * chunk_rows)
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            table = generate_cards(n, seed=start).drop_columns([LABEL])
            ids = pa.array([f"card_{i:08d}" for i in range(start, start + n)], pa.string())
            table = table.set_column(0, "card_id", ids)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=chunk_rows)
    finally:
        if writer is not None:
            writer.close()


def matrices(project: Any, path: Path, chunk_rows: int) -> tuple[Any, list[np.ndarray]]:
    """The model's estimator and the input as float matrices in signature order, in memory."""
    from hybridserve.registry import Registry

    with Registry.from_project(project) as registry:
        runtime = registry.load(project.route("fraud").model)
    names = runtime.signature.names
    out = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=names):
        out.append(np.column_stack([batch.column(n).to_numpy() for n in names]).astype(np.float64))
    return runtime.model, out  # type: ignore[attr-defined]


def _init(model: Any) -> None:
    global _model
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _model = model


def _init_runtime(project_file: str) -> None:
    """The worker's model as hybridserve loads it: compiled when ``models.fraud.compile`` says."""
    global _model
    from threadpoolctl import threadpool_limits

    from hybridserve.config import load_project
    from hybridserve.registry import Registry

    threadpool_limits(1)
    project = load_project(project_file, env=False)
    with Registry.from_project(project) as registry:
        _model = registry.load(project.route("fraud").model)


def _predict(matrix: np.ndarray) -> int:
    return len(_model.predict_proba(matrix))


def _predict_runtime(matrix: np.ndarray) -> int:
    return len(_model.predict(matrix).scores)


class Floor:
    """A warmed-up pool of ``workers`` processes, each holding the model: the estimator
    itself (its ``predict_proba``), or, given ``project_file``, the runtime hybridserve loads
    for it (the compiled trees when the model's ``compile`` option asks for them)."""

    def __init__(self, model: Any, workers: int, project_file: str | None = None) -> None:
        if project_file is None:
            self.pool = ProcessPoolExecutor(workers, initializer=_init, initargs=(model,))
            self.predict: Any = _predict
        else:
            self.pool = ProcessPoolExecutor(
                workers, initializer=_init_runtime, initargs=(project_file,)
            )
            self.predict = _predict_runtime
        warm = np.zeros((8, model.n_features_in_))
        list(self.pool.map(self.predict, [warm] * workers * 2))

    def score(self, chunks: list[np.ndarray]) -> str:
        done = sum(self.pool.map(self.predict, chunks))
        return f"{done:,} rows, {len(chunks)} chunks"

    def close(self) -> None:
        self.pool.shutdown()


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)
    finally:
        client.close()
