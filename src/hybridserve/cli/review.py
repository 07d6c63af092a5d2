"""``hybridserve review ...``: work the review queue of abstained answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, table
from hybridserve.errors import InvalidInput
from hybridserve.records import to_iso

if TYPE_CHECKING:
    from hybridserve.quality.review import ReviewQueue

review_app = typer.Typer(
    help="The review queue: answers a route abstained on.", no_args_is_help=True
)


@contextmanager
def _queue(path: Path | None) -> Iterator[ReviewQueue]:
    from hybridserve.quality.review import ReviewQueue
    from hybridserve.registry import Registry

    with Registry.from_project(project(path)) as registry:
        yield ReviewQueue(registry.engine)


@review_app.command("list")
def list_cases(
    route: Annotated[str | None, typer.Option(help="Only this route.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    status: Annotated[str, typer.Option(help="open, resolved or all.")] = "open",
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Cases in the queue, newest first."""
    if status not in ("open", "resolved", "all"):
        raise InvalidInput(f"--status: expected open, resolved or all, got {status!r}")
    with _queue(project_path) as q:
        cases = q.cases(
            queue=queue,
            route=route,
            status=None if status == "all" else "open" if status == "open" else "resolved",
            limit=limit,
        )
    if json:
        print_json([c.to_json() for c in cases])
        return
    cols = ["id", "created", "route", "entity", "score", "model", "reasons", "status", "label"]
    rows = [
        [
            c.id,
            to_iso(c.created_at),
            c.route,
            c.entity,
            None if c.score is None else f"{c.score:.4f}",
            f"{c.model}/{c.model_version}" if c.model else c.source,
            ", ".join(c.reasons),
            c.status,
            c.label,
        ]
        for c in cases
    ]
    table(f"review cases ({status})", cols, rows)


@review_app.command()
def show(
    case_id: Annotated[int, typer.Argument(metavar="ID", help="The case's id.")],
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """One case with everything the answer was made from."""
    with _queue(project_path) as q:
        case = q.get(case_id)
    data = case.to_json()
    if json:
        print_json(data)
        return
    for key, value in data.items():
        if key == "context":
            continue
        console.print(f"{key}: {to_iso(value) if key.endswith('_at') and value else value}")
    ctx = data["context"]
    for step in ctx.get("steps") or []:
        console.print(f"  step: {step}")
    for name, value in sorted((ctx.get("features") or {}).items()):
        console.print(f"  feature {name}: {value}")
    for name, value in sorted((ctx.get("request_features") or {}).items()):
        console.print(f"  request feature {name}: {value}")


@review_app.command()
def resolve(
    case_id: Annotated[int, typer.Argument(metavar="ID", help="The case's id.")],
    label: Annotated[float, typer.Option(help="The true outcome (e.g. 1 fraud, 0 not).")],
    note: Annotated[str | None, typer.Option(help="Why, for the record.")] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Give a case its true label; it becomes feedback for the route's quality figures."""
    from hybridserve.quality.feedback import FeedbackStore
    from hybridserve.quality.review import feed_back
    from hybridserve.quality.sinks import open_sink
    from hybridserve.registry.registry import current_user

    with _queue(project_path) as q:
        case = q.resolve(case_id, label, actor=current_user(), note=note)
    proj = project(project_path)
    sink = open_sink(proj)
    try:
        feed_back(case, FeedbackStore(proj, sink))
    finally:
        sink.close()
    if json:
        print_json(case.to_json())
        return
    console.print(f"case {case.id} ({case.route} {case.entity}) resolved: label {label:g}")
