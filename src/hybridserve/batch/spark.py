"""The ``spark`` executor: each chunk a one-task Spark job, scored with ``mapInArrow``.

Every chunk is its own small job (``range(i, i + 1)`` mapped through ``mapInArrow``), so the
parent records each chunk the moment its job finishes, exactly as the local executor does:
a run killed midway resumes from the chunks recorded, not from the start. Twice as many jobs
as the cluster has task slots are in flight, so a slot never waits on the driver between two
chunks. On the executor the task reads its own chunk (Parquet row groups by metadata) and runs
:class:`~hybridserve.batch.chunk.ChunkWorker`: the same validation, Scorer, sinks and bytes as
every other executor. Only the chunk's counts travel back.

The run's context and input plan go out once, as a broadcast; each Python worker keeps one
``ChunkWorker`` (the model loaded once) for as long as Spark reuses it
(``spark.python.worker.reuse``, on by default).

Without ``spark_master`` a local Spark (``local[workers]``) is started for the run and stopped
after it; a session already active in the process (a notebook, ``spark-submit``) is used as is.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from hybridserve._optional import require
from hybridserve.batch.chunk import ChunkWorker, RunContext
from hybridserve.batch.inputs import InputPlan
from hybridserve.batch.manifest import ChunkStats
from hybridserve.errors import HybridServeError

OnDone = Callable[[ChunkStats], None]
STATS = pa.schema(
    [
        (name, pa.float64() if name == "seconds" else pa.int64())
        for name in ChunkStats.__dataclass_fields__
    ]
)
_DDL = ", ".join(f"{f.name} {'double' if f.name == 'seconds' else 'long'}" for f in STATS)

_cached: tuple[tuple[str, str], ChunkWorker] | None = None


def session(master: str, slots: int | None = None) -> Any:
    """A SparkSession on ``master``, quiet and small when local (no UI, few partitions)."""
    sql = require("pyspark.sql", "spark")
    builder = sql.SparkSession.builder.master(master).appName("hybridserve batch")
    if master.startswith("local"):
        # Python workers are started by the JVM with PYSPARK_PYTHON (default ``python3``):
        # point them at this interpreter, whose environment has hybridserve installed.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no network for local[N]
        builder = (
            builder.config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.shuffle.partitions", str(slots or 2))
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _worker(ctx: RunContext) -> ChunkWorker:
    """This Python worker's ChunkWorker for the run (a new run replaces the last one)."""
    global _cached
    key = (ctx.run_dir, ctx.model.ref)
    if _cached is None or _cached[0] != key:
        from hybridserve.runtimes.threads import limit_threads

        if _cached is not None:
            _cached[1].close()
            _cached = None
        limit_threads(1)
        _cached = (key, ChunkWorker(ctx))
    return _cached[1]


def _score(shared: Any) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ctx, plan = shared.value
        worker = _worker(ctx)
        for batch in batches:
            stats = [worker.process(i, plan.read_chunk(i)) for i in batch.column(0).to_pylist()]
            yield pa.RecordBatch.from_pylist([asdict(s) for s in stats], schema=STATS)

    return score


def run_spark(
    ctx: RunContext,
    plan: InputPlan,
    todo: Iterable[int],
    workers: int,
    on_done: OnDone,
    master: str | None = None,
) -> None:
    sql = require("pyspark.sql", "spark")
    spark = sql.SparkSession.getActiveSession()
    started = spark is None
    if started:
        spark = session(master or f"local[{workers}]", workers)
    sc = spark.sparkContext
    slots = max(1, int(sc.defaultParallelism))
    shared = sc.broadcast((ctx, plan))
    group = f"hybridserve-{ctx.run_id}-{secrets.token_hex(3)}"
    score = _score(shared)

    def one(index: int) -> ChunkStats:
        sc.setJobGroup(group, f"hybridserve {ctx.run_id} chunk {index}", True)
        rows = spark.range(index, index + 1, numPartitions=1).mapInArrow(score, _DDL).collect()
        return ChunkStats(**rows[0].asDict())

    pool = ThreadPoolExecutor(2 * slots, thread_name_prefix="hybridserve-spark")
    pending: set[Future[ChunkStats]] = {pool.submit(one, i) for i in sorted(todo)}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(_result(f))
    except BaseException:
        for f in pending:
            f.cancel()
        sc.cancelJobGroup(group)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shared.destroy()
        if started:
            spark.stop()


def _result(future: Future[ChunkStats]) -> ChunkStats:
    """The chunk's counts; a task's Python error as its last line (``StoreError: ...``)."""
    errors = require("pyspark.errors", "spark")
    try:
        return future.result()
    except errors.PythonException as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        cause = next((line for line in reversed(lines) if "Error: " in line), lines[-1])
        raise HybridServeError(f"a Spark task failed: {cause.strip()}") from None
