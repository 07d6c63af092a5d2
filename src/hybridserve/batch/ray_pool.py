"""The ``ray`` executor: a pool of Ray actors over the run's chunk indices.

Each actor loads the model once, then reads its chunk itself (Parquet row groups by metadata:
Arrow from the file to the model to the sinks, nothing passes through the driver), runs the
same :class:`~hybridserve.batch.chunk.ChunkWorker` as every other executor and returns only the
chunk's counts. The driver keeps two chunks in flight per actor (one running, one queued, so
an actor never waits on the driver) and records each chunk as it finishes.

Plain actors, not Ray Data: a chunk is already the unit of work (one read, one model call,
one bulk write), so Ray Data's blocks, operators and streaming executor would only add a
scheduling layer and its processes; an actor per worker with a chunk per call is the largest
block there is. The run's context and plan go to the object store once (``ray.put``).

With ``ray_address`` the run goes to that cluster: actors are spread over its nodes, the job
ships this hybridserve in its ``runtime_env`` (``py_modules``: the driver's code, whatever is
installed there; a Ray the caller connected already must have hybridserve on its nodes), and
before any chunk runs every alive node is asked whether it can reach the input, artifacts and
run directory (:mod:`.cluster`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import hybridserve
from hybridserve._optional import require
from hybridserve.batch import cluster
from hybridserve.batch.chunk import ChunkWorker, RunContext
from hybridserve.batch.inputs import InputPlan
from hybridserve.batch.manifest import ChunkStats
from hybridserve.errors import HybridServeError
from hybridserve.runtimes.threads import limit_threads

OnDone = Callable[[ChunkStats], None]
log = logging.getLogger(__name__)


class ChunkActor:
    """Keeps one run's model loaded; reads, scores and writes whole chunks."""

    def __init__(self, shared: tuple[RunContext, InputPlan]) -> None:
        limit_threads(1)
        ctx, self.plan = shared
        self.worker = ChunkWorker(ctx)

    def node(self) -> str:
        return str(require("ray", "ray").get_runtime_context().get_node_id())

    def process(self, index: int) -> ChunkStats:
        return self.worker.process(index, self.plan.read_chunk(index))

    def close(self) -> None:
        self.worker.close()


def run_ray(
    ctx: RunContext,
    plan: InputPlan,
    todo: Iterable[int],
    workers: int,
    on_done: OnDone,
    address: str | None = None,
    job: str = "",
) -> None:
    ray = require("ray", "ray")
    started = not ray.is_initialized()
    if started:
        # A Ray of our own for this run: no metrics pipeline to feed (its agents would take
        # CPU from the actors on a small machine).
        options: dict[str, Any] = {
            "num_cpus": workers,
            "_system_config": {"enable_metrics_collection": False},
        }
        if address:  # the driver's hybridserve goes with the job (a local directory can
            # only be shipped at the job level, here)
            options = {"address": address, "runtime_env": _runtime_env()}
        ray.init(
            **options,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        if address:
            _check_nodes(ray, ctx, plan, job)
        _run(ray, ctx, plan, sorted(todo), workers, on_done)
    finally:
        if started:
            ray.shutdown()


def _runtime_env() -> dict[str, Any]:
    """Ship this hybridserve to the workers: the driver's code, not whatever they have."""
    return {"py_modules": [str(Path(hybridserve.__file__).parent)], "excludes": ["__pycache__"]}


def _run(
    ray: Any,
    ctx: RunContext,
    plan: InputPlan,
    todo: list[int],
    workers: int,
    on_done: OnDone,
) -> None:
    if not todo:
        return
    size = min(workers, len(todo))
    cpus = float(ray.cluster_resources().get("CPU", size))
    actor = ray.remote(ChunkActor).options(
        num_cpus=min(1.0, cpus / size),
        scheduling_strategy="SPREAD",
        max_restarts=0,
    )
    shared = ray.put((ctx, plan))
    actors = [actor.remote(shared) for _ in range(size)]
    pending: dict[Any, Any] = {}
    queue = iter(todo)

    def submit(a: Any) -> None:
        index = next(queue, None)
        if index is not None:
            pending[a.process.remote(index)] = a

    try:
        nodes = set(_get(ray, [a.node.remote() for a in actors]))
        log.info("ray: %d actors on %d node(s)", size, len(nodes))
        for a in actors * 2:
            submit(a)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            a = pending.pop(ready[0])
            stats = _get(ray, ready[0])
            submit(a)
            on_done(stats)
        _get(ray, [a.close.remote() for a in actors])
    finally:
        for a in actors:
            ray.kill(a)


def _get(ray: Any, refs: Any) -> Any:
    """``ray.get``, with a worker's own error raised as itself (not wrapped in Ray's)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, HybridServeError):
            raise cause from None
        raise HybridServeError(f"a Ray task failed: {type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayActorError as exc:
        raise HybridServeError(f"a Ray actor died (killed, or out of memory): {exc}") from None


def _check_nodes(ray: Any, ctx: RunContext, plan: InputPlan, job: str) -> None:
    """Ask every alive node whether it can reach the run's paths; refuse if one cannot."""
    strategies = require("ray.util.scheduling_strategies", "ray")
    paths = cluster.needs(ctx, plan, job)
    sizes = {p: os.stat(p).st_size for p, (what, _) in paths.items() if what == "input"}
    probe = ray.remote(num_cpus=0)(cluster.node_problems)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {
        n["NodeManagerAddress"] + f" ({n['NodeID'][:8]})": probe.options(
            scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(paths, sizes)
        for n in nodes
    }
    report = {node: _get(ray, ref) for node, ref in refs.items()}
    cluster.refuse(report, paths, f"batch_jobs.{job}.ray_address")
