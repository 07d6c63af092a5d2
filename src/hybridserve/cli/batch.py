"""``hybridserve batch ...``: run, resume and inspect batch scoring runs.

``batch run`` exits 0 only when the run completed and was published, 1 when it failed (the
manifest says why; ``--run-id`` resumes it), 2 on usage or project-file errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, table
from hybridserve.errors import ConfigError, InvalidInput
from hybridserve.records import to_iso

batch_app = typer.Typer(help="Batch scoring runs: run, resume, status.", no_args_is_help=True)


@batch_app.command("run")
def run_cmd(
    job: Annotated[str, typer.Argument(help="Batch job (batch_jobs in the project file).")],
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run id; an unfinished run resumes.")
    ] = None,
    executor: Annotated[
        Literal["local", "ray", "spark"] | None,
        typer.Option(help="local (process pool), ray or spark (default: the job's)."),
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes.")] = None,
    chunk_rows: Annotated[int | None, typer.Option(min=1, help="Rows per chunk.")] = None,
    only_changed: Annotated[
        bool, typer.Option(help="Score only entities whose features changed since last run.")
    ] = False,
    top_k_active: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only the N most active entities (warming: merged into what is served).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Plan the run; write nothing.")] = False,
    as_of: Annotated[
        str | None,
        typer.Option(help="Snapshot time, ISO (default now): replays and backfills."),
    ] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Score a job's input in chunks and publish the run when every chunk is done."""
    from hybridserve.batch import RunFailed, run_job
    from hybridserve.cli.features import parse_time

    proj = project(project_path)
    try:
        at = parse_time(as_of)
    except InvalidInput as exc:  # a usage error: exit 2
        raise ConfigError(exc.message) from None
    with Progress(
        TextColumn("batch {task.description}", markup=False),  # the name is not a template
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} rows/s"),
        TimeRemainingColumn(),
        console=console,
        disable=json,
        transient=True,
    ) as bar:
        task = bar.add_task(job, total=None, rate="-")
        started: list[tuple[int, float]] = []

        def progress(done: int, total: int) -> None:
            t = bar.get_time()
            if not started:
                started.append((done, t))
            base, t0 = started[0]
            rate = (done - base) / (t - t0) if t > t0 else 0.0
            bar.update(task, completed=done, total=total, rate=f"{rate:,.0f}")

        try:
            manifest = run_job(
                proj,
                job,
                run_id=run_id,
                executor=executor,
                workers=workers,
                chunk_rows=chunk_rows,
                only_changed=only_changed,
                top_k_active=top_k_active,
                dry_run=dry_run,
                progress=progress,
                snapshot_at=at,
            )
        except RunFailed as exc:
            if json:
                print_json({"status": "failed", "error": exc.message})
            raise
    data = manifest.to_dict()
    if json:
        print_json(data)
        return
    if dry_run:
        console.print(
            f"{job}: would score {manifest.total_rows} rows in {manifest.total_chunks} chunks "
            f"with {manifest.model_ref}; run id {manifest.run_id}"
        )
        return
    served = "merged into the route's records" if manifest.top_k_active else "published"
    console.print(
        f"{job}: run {manifest.run_id} {manifest.status}: {data['rows_scored']} scored, "
        f"{data['rows_rejected']} rejected, {data['rows_carried']} carried over, "
        f"model {manifest.model_ref}, {served} {to_iso(manifest.published_at)}"
    )


def _rows(manifests: list[Any]) -> list[list[Any]]:
    return [
        [
            m.run_id,
            m.job,
            m.status,
            m.model_ref,
            f"{len(m.chunks)}/{m.total_chunks}",
            m.total("scored"),
            m.total("rejected"),
            to_iso(m.started_at),
            to_iso(m.published_at),
        ]
        for m in manifests
    ]


_COLUMNS = ["run", "job", "status", "model", "chunks", "scored", "rejected", "started", "published"]


@batch_app.command()
def status(
    job: Annotated[str, typer.Argument(help="Batch job.")],
    limit: Annotated[int, typer.Option(min=1, help="How many runs.")] = 10,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """The latest runs of a job, newest first."""
    from hybridserve.batch import runs
    from hybridserve.batch.manifest import job_config

    proj = project(project_path)
    job_config(proj, job)
    found = runs(proj, job)[:limit]
    if json:
        print_json([m.to_dict() for m in found])
    else:
        table(f"runs of {job}", _COLUMNS, _rows(found))


@batch_app.command("list")
def list_cmd(project_path: ProjectOpt = None, json: JsonOpt = False) -> None:
    """The project's batch jobs with their route, input, schedule and last run."""
    from hybridserve.batch import runs

    proj = project(project_path)
    out = []
    for name, job in sorted(proj.batch_jobs.items()):
        last = next(iter(runs(proj, name)), None)
        out.append(
            {
                "job": name,
                "route": job.route,
                "input": job.input.view or job.input.path,
                "schedule": job.schedule,
                "executor": job.executor,
                "last_run": None if last is None else last.run_id,
                "last_status": None if last is None else last.status,
            }
        )
    if json:
        print_json(out)
    else:
        table("batch jobs", list(out[0]) if out else ["job"], [list(r.values()) for r in out])


@batch_app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """A run's manifest."""
    from hybridserve.batch import show as find_run

    data = find_run(project(project_path), run_id).to_dict()
    if json:
        print_json(data)
        return
    data.pop("chunks")
    drift = data.get("drift")
    if drift is not None:  # the reasons, not the per-feature figures (in --json)
        data["drift"] = drift.get("error") or (
            "; ".join(drift["drifted"]) or f"none of {len(drift['features'])} features drifted"
        )
    table(f"run {run_id}", ["field", "value"], [[k, v] for k, v in data.items()])
