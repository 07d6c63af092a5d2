"""``hybridserve features ...``: materialize views and read online features."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, run, table
from hybridserve.errors import InvalidInput
from hybridserve.features.materialize import MaterializeResult
from hybridserve.records import to_iso

features_app = typer.Typer(help="Feature views: materialize and read.", no_args_is_help=True)


def parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"--as-of: expected an ISO time like 2026-01-31T12:00:00Z, got {value!r}"
        ) from None
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


@features_app.command()
def materialize(
    view: Annotated[str, typer.Argument(help="Feature view to load.")],
    as_of: Annotated[
        str | None, typer.Option(help="Latest row at or before this ISO time (default now).")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(min=1)] = 5000,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Load each entity's latest row from the view's offline source into the online store."""
    from hybridserve.features.materialize import materialize as do_materialize
    from hybridserve.services import Services

    proj = project(project_path)
    proj.view(view)
    at = parse_time(as_of)

    async def go() -> MaterializeResult:
        services = Services.open(proj)
        try:
            with Progress(
                TextColumn("materializing {task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                disable=json,
                transient=True,
            ) as bar:
                task = bar.add_task(view, total=None)
                return await do_materialize(
                    proj,
                    services.features,
                    view,
                    as_of=at,
                    chunk_rows=chunk_rows,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        finally:
            await services.close()

    result = run(go())
    if json:
        print_json(result)
    else:
        r = result
        console.print(
            f"{view}: {r.entities} entities from {r.rows_read} rows, "
            f"{r.written} written, as of {to_iso(r.as_of)} "
            f"in {r.seconds:.2f}s"
        )


@features_app.command()
def get(
    entities: Annotated[list[str], typer.Argument(help="Entity keys.")],
    route: Annotated[str | None, typer.Option(help="Read the features this route uses.")] = None,
    view: Annotated[str | None, typer.Option(help="Read all features of this view.")] = None,
    project_path: Path | None = typer.Option(None, "--project", "-p"),
    json: JsonOpt = False,
) -> None:
    """Online feature values with their age and status (present, stale, missing)."""
    from hybridserve.services import Services

    proj = project(project_path)
    if (route is None) == (view is None):
        raise InvalidInput("give exactly one of --route or --view")
    if route is not None:
        wanted = proj.route_features(route)
    else:
        assert view is not None
        wanted = {view: list(proj.view(view).features)}

    async def go() -> list[dict[str, object]]:
        services = Services.open(proj)
        try:
            rows = await services.features.read(wanted, entities)
        finally:
            await services.close()
        return [
            {
                "entity": r.entity,
                "features": {
                    n: {"value": v.value, "status": v.status, "age_s": v.age}
                    for n, v in r.values.items()
                },
            }
            for r in rows
        ]

    data = run(go())
    if json:
        print_json(data)
        return
    for row in data:
        feats = row["features"]
        assert isinstance(feats, dict)
        table(
            f"entity {row['entity']}",
            ["feature", "value", "status", "age"],
            [
                [n, f["value"], f["status"], None if f["age_s"] is None else f"{f['age_s']:.0f}s"]
                for n, f in feats.items()
            ],
        )
