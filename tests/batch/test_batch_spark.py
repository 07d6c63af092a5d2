"""The Spark executor on a local Spark (local[2]): the same records, snapshot and rejects as the
local executor, resumable by chunk; a Spark cluster run on embedded stores is refused."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest

from backends import unavailable
from conftest import cards, job, snapshot, store_records, write_input
from hybridserve.batch import run_job
from hybridserve.batch.manifest import RunFailed
from hybridserve.config import Project
from hybridserve.errors import ConfigError

Factory = Callable[..., Project]
JAVA = "apt-get install -y openjdk-17-jre-headless && pip install 'hybridserve[spark]'"


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark for the module (starting the JVM is the slow part)."""
    if shutil.which("java") is None:
        unavailable("Java (for the Spark executor)", "no java on PATH", JAVA)
    if importlib.util.find_spec("pyspark") is None:
        unavailable("PySpark", "pyspark is not installed", JAVA)
    from hybridserve.batch.spark import session

    active = session("local[2]", 2)
    yield active
    active.stop()


def keyed(project: Project) -> pa.Table:
    """The cards, two of them with unusable keys (rejected rows)."""
    source = cards(project)
    ids = source["card_id"].to_pylist()
    ids[5], ids[250] = "", ids[1]  # missing; a duplicate of row 1 in another chunk
    return source.set_column(0, "card_id", pa.array(ids))


@pytest.mark.slow
@pytest.mark.timeout(400)  # the JVM's first jobs are slow on a loaded machine
def test_spark_executor_matches_local_and_resumes_by_chunk(
    batch_project: Factory, spark: Any
) -> None:
    project = batch_project(
        {"daily": job({"path": "data/cards.parquet"}, chunk_rows=50, max_reject_share=0.05)}
    )
    source = keyed(project)
    write_input(project, source)
    local = run_job(project, "daily", run_id="local", workers=1, snapshot_at=1.8e9)

    def stop_after_three(done: int, total: int) -> None:
        if done >= 150:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(
            project,
            "daily",
            run_id="spark",
            executor="spark",
            snapshot_at=1.8e9,
            progress=stop_after_three,
        )
    from hybridserve.batch.manifest import find

    stopped = find(project, "daily", "spark")
    assert stopped is not None and stopped.status == "failed"
    first = dict(stopped.chunks)
    assert 3 <= len(first) < 8

    on_spark = run_job(project, "daily", run_id="spark", executor="spark")
    assert on_spark.status == "completed" and on_spark.executor == "spark"
    assert on_spark.chunks_done == list(range(8))
    assert {i: on_spark.chunks[i] for i in first} == first, "a recorded chunk ran again"
    assert (on_spark.total("scored"), on_spark.total("rejected")) == (398, 2)
    ids = [i for i in source["card_id"].to_pylist() if i]
    assert store_records(project, "spark", ids) == store_records(project, "local", ids)
    assert snapshot(on_spark.dir).equals(snapshot(local.dir))
    assert snapshot(on_spark.dir, "rejected").equals(snapshot(local.dir, "rejected"))


def test_a_task_error_names_its_cause(batch_project: Factory, spark: Any) -> None:
    project = batch_project({"daily": job({"path": "data/cards.parquet"}, chunk_rows=200)})
    write_input(project, cards(project))
    project.path(".hybridserve/runs/daily/broken").mkdir(parents=True)
    project.path(".hybridserve/runs/daily/broken/chunk-000000.parquet").mkdir()
    with pytest.raises(RunFailed, match=r"a Spark task failed: .*chunk-000000\.parquet"):
        run_job(project, "daily", run_id="broken", executor="spark")


def test_spark_cluster_run_on_embedded_stores_is_refused(batch_project: Factory) -> None:
    project = batch_project(
        {"daily": job({"path": "data/cards.parquet"}, spark_master="spark://127.0.0.1:7077")}
    )
    write_input(project, cards(project))
    with pytest.raises(ConfigError) as info:
        run_job(project, "daily", run_id="cluster", executor="spark")
    message = str(info.value)
    assert message.startswith("batch_jobs.daily.spark_master: a run on a cluster")
    assert "set stores.predictions to a Redis URL" in message
    assert "set registry.url to a PostgreSQL URL" in message
