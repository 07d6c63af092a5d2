"""``run_job``: one batch run from start (or resume) to atomic publish.

The flow: resolve the route's model version once (workers load exactly ``name/version``, so
an alias moving mid-run cannot mix versions), plan the input, write the manifest, let an
executor score the chunks not done yet (each chunk is recorded only after both sinks are
written), then, when every chunk is done and the rejected share is within bounds, publish the
run: the route's run pointer moves in one write and the previous run stays as fallback. A
warming run (``--top-k-active``) covers only some entities: it is merged into the route's
own records instead, so every other entity keeps its batch answer.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from hybridserve.batch import execute, executors
from hybridserve.batch.checks import duplicate_keys
from hybridserve.batch.chunk import RunContext, sink
from hybridserve.batch.drift import sample_per_chunk
from hybridserve.batch.inputs import open_input, top_k_entities
from hybridserve.batch.manifest import (
    ChunkStats,
    RunFailed,
    RunManifest,
    check_run_id,
    find,
    job_config,
    job_dir,
    last_completed,
    run_lock,
)
from hybridserve.batch.quality import after_run
from hybridserve.config import BatchJobConfig, Project
from hybridserve.errors import ConfigError
from hybridserve.predictions.store import PredictionStore
from hybridserve.quality.profile import Profile
from hybridserve.records import now
from hybridserve.scoring import ModelInputs

Progress = Callable[[int, int], None]
"""Called with (rows done, rows in total) as chunks finish."""


def new_run_id(job: str) -> str:
    return f"{job}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}"


def run_job(
    project: Project,
    job_name: str,
    *,
    run_id: str | None = None,
    executor: str | None = None,
    workers: int | None = None,
    chunk_rows: int | None = None,
    only_changed: bool = False,
    top_k_active: int | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    snapshot_at: float | None = None,
) -> RunManifest:
    """Run (or resume) batch job ``job_name``; return its manifest.

    Raise :class:`ConfigError` for usage problems and :class:`RunFailed` when the run does
    not complete. Running a completed run again changes nothing and returns its manifest.
    ``snapshot_at`` (default: now) is the run's point in time: a view input's latest rows as
    of then, the ``as_of`` of rows without a time, and every record's ``computed_at``.
    """
    job = job_config(project, job_name)
    existing = None if run_id is None else find(project, job_name, check_run_id(run_id))
    if existing is not None:
        _same_options(existing, chunk_rows, only_changed, top_k_active)
        if existing.status == "completed":
            return existing
        chunk_rows, only_changed, top_k_active = (
            existing.chunk_rows,
            existing.only_changed,
            existing.top_k_active,
        )
    chosen, n_workers = _executor(job_name, job, top_k_active, executor, workers)
    if chosen == "local" and n_workers > 1 and not dry_run:
        executors.start_forkserver(project, project.route(job.route).model)  # overlaps planning
    execute.preflight(project, chosen, job_name, job)

    from hybridserve.registry import Registry

    with Registry.from_project(project) as registry:
        model_ref = (
            existing.model_ref if existing else registry.get(project.route(job.route).model).ref
        )
        # This process plans and records; only the workers load the model and score.
        mv = registry.get(model_ref)
        inputs = ModelInputs.of(project, job.route, mv.name, mv.version, mv.signature)
        found = registry.reference(inputs.model, inputs.version)
    profile = None if found is None else Profile.from_dict(found)
    if existing is not None:
        snapshot_at = existing.snapshot_at
    elif snapshot_at is None:
        snapshot_at = now()
    rows = chunk_rows or job.chunk_rows
    if rows < 1:
        raise ConfigError(f"--chunk-rows: expected a positive number, got {rows}")
    needed = [
        *inputs.names,
        *([job.activity_column] if top_k_active and job.activity_column else []),
    ]
    plan = open_input(
        project,
        job_name,
        job,
        needed=needed,
        features=inputs.names,
        snapshot_at=snapshot_at,
        chunk_rows=rows,
    )
    run_id = run_id or new_run_id(job_name)
    run_dir = job_dir(project, job_name) / run_id
    if existing is not None and existing.input != plan.fingerprint:
        raise ConfigError(
            f"run {run_id}: its input changed since the run started; start a new run instead"
        )
    manifest = existing or RunManifest(
        run_id=run_id,
        job=job_name,
        route=job.route,
        model=inputs.model,
        model_version=inputs.version,
        feature_fingerprint=inputs.fingerprint,
        input=plan.fingerprint,
        snapshot_at=snapshot_at,
        chunk_rows=rows,
        total_rows=plan.total_rows,
        total_chunks=plan.total_chunks,
        executor=chosen,
        only_changed=only_changed,
        top_k_active=top_k_active,
        previous_run=_previous(project, job_name, run_id, inputs) if only_changed else None,
        started_at=now(),
        dir=str(run_dir),
    )
    if dry_run:
        manifest.status = "planned"
        return manifest
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        manifest.status, manifest.error, manifest.executor = "running", None, chosen
        manifest.save()
        ctx = RunContext(
            project=project,
            route=job.route,
            model=mv,
            run_id=run_id,
            run_dir=str(run_dir),
            snapshot_at=snapshot_at,
            key=plan.key,
            timestamp=plan.timestamp,
            chunk_rows=rows,
            top_k=None
            if top_k_active is None or job.activity_column is None
            else top_k_entities(plan, job.activity_column, top_k_active),
            previous_dir=None
            if manifest.previous_run is None
            else str(job_dir(project, job_name) / manifest.previous_run),
            # A view input holds one row per entity; a file may repeat a key.
            duplicates={}
            if plan.kind == "view"
            else duplicate_keys(plan.chunks(columns=[plan.key]), plan.key, rows),
            reference=profile,
            sample_per_chunk=sample_per_chunk(plan.total_chunks),
        )
        todo = [i for i in range(plan.total_chunks) if i not in manifest.chunks]

        def done(stats: ChunkStats) -> None:
            manifest.chunks[stats.index] = stats
            manifest.save()
            if progress is not None:
                progress(manifest.total("rows"), plan.total_rows)

        if progress is not None:
            progress(manifest.total("rows"), plan.total_rows)
        try:
            execute.run(chosen, ctx, plan, todo, n_workers, done, job_name, job)
            if manifest.reject_share > job.max_reject_share:
                raise RunFailed(
                    f"run {run_id}: {manifest.total('rejected')} rows rejected "
                    f"({manifest.reject_share:.2%} > max_reject_share "
                    f"{job.max_reject_share:.2%}); see rejected-*.parquet in {run_dir}"
                )
            after_run(project, manifest, plan, inputs.names, profile)
            warm = top_k_active is not None
            manifest.published_at = asyncio.run(_publish(project, job.route, run_id, warm=warm))
        except BaseException as exc:
            manifest.status, manifest.finished_at = "failed", now()
            manifest.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            manifest.save()
            if isinstance(exc, RunFailed | KeyboardInterrupt):
                raise
            raise RunFailed(f"run {run_id} failed: {manifest.error}") from exc
        manifest.status, manifest.finished_at = "completed", now()
        manifest.save()
    return manifest


async def _publish(project: Project, route: str, run_id: str, *, warm: bool) -> float:
    """Serve the run: move the route's run pointer to it or, for a warming run (it covers
    only some entities), merge its records into the route's own records."""
    with sink("prediction store"):
        store = PredictionStore.open(project)
    try:
        if warm:
            with sink("prediction store"):
                await store.warm(route, run_id)
            return now()
        with sink("prediction store"):
            return (await store.publish(route, run_id)).published_at
    finally:
        await store.kv.close()


def _previous(project: Project, job: str, run_id: str, inputs: ModelInputs) -> str | None:
    """The last completed run made by the same model from the same feature definitions."""
    prev = last_completed(project, job, before=run_id)
    if prev is None or not Path(prev.dir).is_dir():
        return None
    same = (
        prev.model_ref == f"{inputs.model}/{inputs.version}"
        and prev.feature_fingerprint == inputs.fingerprint
    )
    return prev.run_id if same else None


def _executor(
    job_name: str,
    job: BatchJobConfig,
    top_k_active: int | None,
    executor: str | None,
    workers: int | None,
) -> tuple[str, int]:
    """Check the run's options against the job; the executor and worker count to use."""
    if top_k_active is not None and (top_k_active < 1 or job.activity_column is None):
        raise ConfigError(
            f"--top-k-active: needs a positive number and batch_jobs.{job_name}.activity_column"
        )
    chosen = executor or job.executor
    if chosen not in execute.EXECUTORS:
        raise ConfigError(
            f"--executor: expected one of {', '.join(execute.EXECUTORS)}, got {chosen!r}"
        )
    n_workers = workers or job.workers or os.cpu_count() or 1
    if n_workers < 1:
        raise ConfigError(f"--workers: expected a positive number, got {n_workers}")
    return chosen, n_workers


def _same_options(
    m: RunManifest, chunk_rows: int | None, only_changed: bool, top_k: int | None
) -> None:
    if chunk_rows is not None and chunk_rows != m.chunk_rows:
        raise ConfigError(f"run {m.run_id} uses --chunk-rows {m.chunk_rows}; a resume must too")
    if only_changed and not m.only_changed:
        raise ConfigError(f"run {m.run_id} was started without --only-changed")
    if top_k is not None and top_k != m.top_k_active:
        raise ConfigError(f"run {m.run_id} was started with --top-k-active {m.top_k_active}")
