"""Which executor runs a run's chunks, and the cluster preconditions checked before it starts.

``local`` (:mod:`.executors`, a process pool), ``ray`` (:mod:`.ray_pool`, Ray actors) and
``spark`` (:mod:`.spark`). Each calls ``on_done`` in the parent once per finished chunk, in
completion order, so the manifest, resume and publish work the same on all three. A run aimed
at a cluster (``ray_address``, a ``spark_master`` that is not ``local[...]``) is first checked
by :mod:`.cluster` (:func:`preflight`): embedded stores are refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from hybridserve.batch import cluster, executors, ray_pool, spark
from hybridserve.batch.chunk import RunContext
from hybridserve.batch.inputs import InputPlan
from hybridserve.batch.manifest import ChunkStats
from hybridserve.config import BatchJobConfig, Project

EXECUTORS = ("local", "ray", "spark")


def preflight(project: Project, executor: str, job_name: str, job: BatchJobConfig) -> None:
    """Refuse, before anything runs, a cluster run that its worker nodes could not carry out."""
    if executor == "ray" and job.ray_address:
        cluster.check_stores(project, f"batch_jobs.{job_name}.ray_address")
    master = job.spark_master
    if executor == "spark" and master and not master.startswith("local"):
        cluster.check_stores(project, f"batch_jobs.{job_name}.spark_master")


def run(
    executor: str,
    ctx: RunContext,
    plan: InputPlan,
    todo: Iterable[int],
    workers: int,
    on_done: Callable[[ChunkStats], None],
    job_name: str,
    job: BatchJobConfig,
) -> None:
    if executor == "ray":
        ray_pool.run_ray(ctx, plan, todo, workers, on_done, job.ray_address, job_name)
    elif executor == "spark":
        spark.run_spark(ctx, plan, todo, workers, on_done, job.spark_master)
    else:
        executors.run_local(ctx, plan, todo, workers, on_done)
