"""Project-level commands: ``init``, ``validate``, ``score`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hybridserve.cli.common import (
    JsonOpt,
    ProjectOpt,
    console,
    print_error,
    print_json,
    print_scores,
    project,
    run,
    score_summary,
)
from hybridserve.errors import ConfigError
from hybridserve.records import now


def project_commands(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(validate)
    app.command()(score)
    app.command()(demo)
    from hybridserve.cli.serve import serve

    app.command()(serve)


def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing hybridserve.yaml.")] = False,
) -> None:
    """Scaffold the fraud example (file, sample data) and train and register its models."""
    from hybridserve.cli.demo import register_models
    from hybridserve.config import load_project
    from hybridserve.examples.fraud import scaffold
    from hybridserve.registry import Registry

    path = scaffold(directory, force=force)
    console.print(f"created {path}")
    proj = load_project(path)
    with Registry.from_project(proj) as registry:
        register_models(proj, registry)
    console.print(f"next: hybridserve validate -p {path.parent}")


def validate(project_path: ProjectOpt = None, json: JsonOpt = False) -> None:
    """Check a project file and everything it points to (sources, models, features)."""
    from hybridserve.registry import Registry
    from hybridserve.validation import check_project

    proj = project(project_path)
    registry = Registry.from_project(proj)
    try:
        problems = check_project(proj, registry)
    finally:
        registry.close()
    if json:
        print_json({"ok": not problems, "problems": problems})
    if problems:
        if not json:
            for p in problems:
                print_error(f"{proj.source_file}: {p}", style="red")
        raise typer.Exit(2)
    if not json:
        console.print(
            f"{proj.source_file}: ok ({len(proj.routes)} routes, "
            f"{len(proj.feature_views)} feature views, {len(proj.models)} models)"
        )


def score(
    route: Annotated[str, typer.Argument(help="Route to score.")],
    entities: Annotated[list[str], typer.Argument(help="Entity keys.")],
    model: Annotated[
        str | None, typer.Option(help="Model reference (default: the route's).")
    ] = None,
    write: Annotated[bool, typer.Option(help="Store the predictions (source online).")] = False,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Score entities locally through the Scorer, from their online features."""
    from hybridserve.services import Services

    proj = project(project_path)
    proj.route(route)

    async def go() -> dict[str, Any]:
        services = Services.open(proj)
        try:
            at = now()
            scored = await services.score_entities(
                route, entities, model_ref=model, write=write, at=at
            )
            return score_summary(scored, at)
        finally:
            await services.close()

    result = run(go())
    if json:
        print_json(result)
    else:
        print_scores(result)
    if result["errors"] and not result["predictions"]:
        raise typer.Exit(1)


def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo project lives.")] = Path(
        "hybridserve-demo"
    ),
    once: Annotated[bool, typer.Option(help="Exit when the demo is done.")] = False,
    fresh: Annotated[bool, typer.Option(help="Start from an empty demo directory.")] = False,
    sample: Annotated[int, typer.Option(min=4, max=1000, help="Cards to sample.")] = 10,
    port: Annotated[int, typer.Option(help="Server port (0: any free port).", min=0)] = 8000,
    events: Annotated[int, typer.Option(min=1, help="Transactions to stream.")] = 2000,
) -> None:
    """Run the fraud example end to end on the embedded default (SQLite, no server)."""
    from hybridserve.cli.demo import run_demo

    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--dir: {directory} is not a directory")
    run(run_demo(directory, fresh=fresh, sample=sample, once=once, port=port, events=events))
