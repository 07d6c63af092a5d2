"""``hybridserve log|feedback|quality|drift``: the model-quality loop from the command line.

They read the prediction log where the project writes it (``prediction_log.url``: Parquet
files under the project directory, or the Redis stream), so they show what every server,
consumer and batch run logged, not one process's view.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, table
from hybridserve.config import Project
from hybridserve.errors import InvalidInput
from hybridserve.records import now, to_iso
from hybridserve.units import parse_duration

log_app = typer.Typer(
    help="The prediction log: sampled answers of every path.", no_args_is_help=True
)
feedback_app = typer.Typer(help="Ground-truth feedback.", no_args_is_help=True)

RouteArg = Annotated[str, typer.Argument(help="Route, e.g. fraud.")]
SinceOpt = Annotated[
    str | None,
    typer.Option(help="From this long ago ('1h', '2d') or this ISO time (default: all kept)."),
]


def parse_since(value: str | None, at: float, option: str = "--since") -> float | None:
    """A duration back from ``at``, or an ISO time, as epoch seconds."""
    if value is None:
        return None
    try:
        return at - parse_duration(value)
    except ValueError:
        pass
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{option}: expected a duration like 1h or an ISO time, got {value!r}"
        ) from None
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def _sink(proj: Project) -> Any:
    from hybridserve.quality.sinks import open_sink

    return open_sink(proj)


def _rows(proj: Project, route: str, since: float | None, entity: str | None) -> list[Any]:
    proj.route(route)
    sink = _sink(proj)
    try:
        rows = sink.read("predictions", route, since)
    finally:
        sink.close()
    return [r for r in rows if entity is None or r["entity"] == entity]


def _print_rows(rows: list[dict[str, Any]], json: bool, title: str) -> None:
    if json:
        print_json([{**r, "ts": to_iso(r["ts"])} for r in rows])
        return
    table(
        title,
        ["time", "entity", "source", "model", "score", "degraded", "ms", "id"],
        [
            [
                to_iso(r["ts"]),
                r["entity"],
                r["source"],
                f"{r['model']}/{r['model_version']}",
                "" if r["score"] is None else f"{r['score']:.4f}",
                "yes" if r["degraded"] else "",
                "" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}",
                r["request_id"] or r["event_id"] or r["run_id"],
            ]
            for r in rows
        ],
    )


@log_app.command("tail")
def log_tail(
    route: RouteArg,
    n: Annotated[int, typer.Option("-n", min=1, help="How many of the newest rows.")] = 20,
    since: SinceOpt = None,
    entity: Annotated[str | None, typer.Option(help="Only this entity.")] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """The newest logged answers of a route."""
    proj = project(project_path)
    rows = _rows(proj, route, parse_since(since, now()), entity)[-n:]
    _print_rows(rows, json, f"prediction log: {route} (newest {len(rows)})")


@log_app.command("query")
def log_query(
    route: RouteArg,
    since: SinceOpt = None,
    until: Annotated[str | None, typer.Option(help="Up to this ISO time (default now).")] = None,
    entity: Annotated[str | None, typer.Option(help="Only this entity.")] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Every logged answer of a route in a time range, oldest first."""
    proj = project(project_path)
    at = now()
    rows = _rows(proj, route, parse_since(since, at), entity)
    end = parse_since(until, at, "--until")
    if end is not None:
        rows = [r for r in rows if r["ts"] <= end]
    _print_rows(rows, json, f"prediction log: {route} ({len(rows)} rows)")


def _outcome_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table_ = pq.read_table(str(path))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: cannot read Parquet: {exc}") from None
    rows = []
    for r in table_.to_pylist():
        item = {k: v for k, v in r.items() if v is not None}
        if isinstance(item.get("at"), datetime):
            at = item["at"]
            item["at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
        for key in ("id", "request_id", "entity"):
            if key in item and not isinstance(item[key], str):
                item[key] = str(item[key])
        if "label" in item and "value" not in item:
            item["value"] = item.pop("label")
        rows.append(item)
    return rows


@feedback_app.command("load")
def feedback_load(
    file: Annotated[
        Path, typer.Argument(help="Parquet: id, value (or label), request_id | entity, at.")
    ],
    route: Annotated[str, typer.Option(help="The route the outcomes are for.")],
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Load true outcomes from a Parquet file (idempotent by id: a reload adds nothing)."""
    from hybridserve.quality.feedback import FeedbackStore, Outcome
    from hybridserve.routing.schema import parse_feedback

    proj = project(project_path)
    proj.route(route)
    rows = _outcome_rows(file)
    if not rows:
        raise InvalidInput(f"{file}: no rows")
    sink = _sink(proj)
    accepted, duplicates = 0, 0
    try:
        store = FeedbackStore(proj, sink)
        for start in range(0, len(rows), 10_000):
            part = parse_feedback({"feedback": rows[start : start + 10_000]}).feedback
            outcomes = [Outcome(f.id, float(f.value), f.request_id, f.entity, f.at) for f in part]
            kept, dups = store.submit(route, outcomes)
            accepted, duplicates = accepted + kept, duplicates + len(dups)
    finally:
        sink.close()
    out = {"route": route, "file": str(file), "accepted": accepted, "duplicates": duplicates}
    if json:
        print_json(out)
    else:
        console.print(f"{route}: {accepted} outcomes kept, {duplicates} already there")


def quality(
    route: RouteArg,
    window: Annotated[
        str | None, typer.Option(help="Answers of the last ... ('1d'; default quality.window).")
    ] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Online quality of a route per model version, from feedback joined to its answers."""
    from hybridserve.quality.feedback import FeedbackStore

    proj = project(project_path)
    span = None if window is None else parse_duration(window)
    sink = _sink(proj)
    try:
        by_version, joined = FeedbackStore(proj, sink).quality(route, span)
    finally:
        sink.close()
    span = proj.route(route).quality.window if span is None else span
    out = {
        "route": route,
        "window_s": span,
        "unmatched": joined.unmatched,
        "versions": [{"model": m, "version": v, **f.to_dict()} for (m, v), f in by_version.items()],
    }
    if json:
        print_json(out)
        return
    if not by_version:
        console.print(f"{route}: no answer of the last {span:g}s has feedback yet")
    for (m, v), f in by_version.items():
        rows = [[k, "" if x is None else f"{x:.4f}"] for k, x in f.values.items()]
        table(
            f"{route}: {m}/{v}, {f.n} answers with feedback ({f.task})", ["figure", "value"], rows
        )
        if f.calibration:
            table(
                f"calibration (threshold {f.threshold:g})",
                ["bin", "mean score", "observed", "count"],
                [
                    [
                        f"{b['lo']:.1f}-{b['hi']:.1f}",
                        f"{b['mean_score']:.3f}",
                        f"{b['observed']:.3f}",
                        b["count"],
                    ]
                    for b in f.calibration
                ],
            )
    if joined.unmatched:
        console.print(f"{joined.unmatched} outcomes match no logged answer (yet)")


def drift_report(proj: Project, route: str, window: float | None) -> Any:
    """The drift of the route's logged answers over ``window`` against their reference."""
    from hybridserve.quality.drift import judge
    from hybridserve.services import Services

    cfg = proj.route(route).drift
    if window is not None:
        cfg = cfg.model_copy(update={"window": window})
    rows = _rows(proj, route, now() - cfg.window, None)
    items = [
        (r["ts"], orjson.loads(r["features"]), r["score"], r["model"], r["model_version"])
        for r in rows
        if r["features"] is not None and r["model"] is not None
    ]
    services = Services.open(proj)
    try:
        return judge(route, items, services.reference_profile, cfg)
    finally:
        from hybridserve.cli.common import run

        run(services.close())


def drift(
    route: RouteArg,
    window: Annotated[
        str | None, typer.Option(help="Answers of the last ... ('1h'; default drift.window).")
    ] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Drift of a route's logged answers per feature (PSI, KS, missing share) and of its
    scores, against the serving model version's reference profile."""
    proj = project(project_path)
    report = drift_report(proj, route, None if window is None else parse_duration(window))
    if json:
        print_json(report.to_dict())
        return
    head = f"{route}: {report.n} answers"
    if report.model is not None:
        head += f" of {report.model}/{report.model_version}"
    if not report.judged:
        console.print(f"{head}; not judged: {report.note}")
        return
    items = [*report.features, *([report.score] if report.score is not None else [])]
    table(
        f"{head}, drift over {report.window:g}s",
        ["feature", "PSI", "KS p", "missing", "ref missing", "drifted"],
        [
            [
                f.name,
                f"{f.psi:.3f}",
                "" if f.ks_pvalue is None else f"{f.ks_pvalue:.2g}",
                f"{f.missing:.1%}",
                f"{f.missing_ref:.1%}",
                "; ".join(f.reasons),
            ]
            for f in items
        ],
    )


def quality_commands(app: typer.Typer) -> None:
    app.add_typer(log_app, name="log")
    app.add_typer(feedback_app, name="feedback")
    app.command("quality")(quality)
    app.command("drift")(drift)
