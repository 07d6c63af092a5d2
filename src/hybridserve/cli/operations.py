"""``hybridserve status``, ``hybridserve slo report`` and ``hybridserve export ...``.

``status`` and ``slo report`` compute from the project's store (what every server process
publishes), so they need no server; ``status --url`` asks a server's ``/v1/health`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.text import Text

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, run, table

slo_app = typer.Typer(help="Service-level objectives and error budgets.", no_args_is_help=True)
export_app = typer.Typer(help="Export Prometheus rules and a Grafana dashboard.",
                         no_args_is_help=True)  # fmt: skip
_STYLE = {"healthy": "green", "degraded": "yellow", "critical": "bold red"}
OutOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")
]


def status(
    url: Annotated[
        str | None, typer.Option("--url", help="Ask this server's /v1/health instead.")
    ] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Health of the service, each route and each dependency, with reasons; cost per 1k.

    Exit code 1 when the service is critical."""
    if url is not None:
        import httpx

        report = httpx.get(url.rstrip("/") + "/v1/health", timeout=10).json()
    else:
        report = run(_local_health(project(project_path)))
    if json:
        print_json(report)
    else:
        _print_health(report)
    if report["status"] == "critical":
        raise typer.Exit(1)


async def _local_health(proj: Any) -> dict[str, Any]:
    from hybridserve.operations.report import health_report
    from hybridserve.services import Services

    services = Services.open(proj)
    try:
        return (await health_report(services)).to_json()
    finally:
        await services.close()


def _print_health(report: dict[str, Any]) -> None:
    state = report["status"]
    console.print(
        Text.assemble("service: ", (state, _STYLE[state]), f"  ({report['processes']} processes)")
    )
    rows = []
    for c in report["components"]:
        rows.append([c["name"], Text(c["status"], _STYLE[c["status"]]), "; ".join(c["reasons"])])
    table("components", ["component", "status", "reasons"], rows)
    cost_rows = []
    for c in report["components"]:
        cost = c.get("details", {}).get("cost_last_hour")
        if not cost or "sources" not in cost:
            continue
        for source, figures in cost["sources"].items():
            per_1k = figures["per_1k"]
            cost_rows.append([
                c["name"].removeprefix("route:"), source, int(figures["answers"]),
                f"{figures['cpu_seconds']:.3f}",
                "" if per_1k is None else f"{per_1k:.6f} {cost['currency']}",
            ])  # fmt: skip
    if cost_rows:
        table(
            "cost per 1k predictions (last hour)",
            ["route", "source", "answers", "cpu s", "per 1k"],
            cost_rows,
        )


@slo_app.command("report")
def slo_report(
    route: Annotated[str | None, typer.Argument(help="One route (default: every SLO).")] = None,
    window: Annotated[
        str | None, typer.Option("--window", help="Window: 1h, 24h, 28d... (default: the SLO's).")
    ] = None,
    prometheus: Annotated[
        str | None,
        typer.Option("--prometheus", help="Compute from this Prometheus server instead."),
    ] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Target, actual, compliance, error budget left and burn rates (5m, 1h, 6h) per route."""
    from hybridserve.operations.slo import prometheus_report, store_report
    from hybridserve.services import Services

    proj = project(project_path)

    async def go() -> dict[str, Any]:
        if prometheus is not None:
            return await prometheus_report(proj, prometheus, route, window)
        services = Services.open(proj)
        try:
            return await store_report(proj, services.predictions_kv, route, window)
        finally:
            await services.close()

    report = run(go())
    if json:
        print_json(report)
        return
    rows = []
    for name, r in report["routes"].items():
        for sli, o in r["objectives"].items():
            actual = "no traffic" if o["actual"] is None else f"{o['actual']:.4%}"
            burn = o["burn_rate"]
            rows.append([
                name, sli, f"{o['target']:.4%}", actual,
                Text("yes", "green") if o["compliant"] else Text("no", "bold red"),
                f"{o['budget_left']:.2%}", f"{r['window_s'] / 3600:g}h",
                f"{burn['5m']:g} / {burn['1h']:g} / {burn['6h']:g}",
            ])  # fmt: skip
    table(
        f"SLOs (from {report['source']})",
        ["route", "sli", "target", "actual", "compliant", "budget left", "window",
         "burn 5m / 1h / 6h"],
        rows,
    )  # fmt: skip


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


@export_app.command("prometheus-rules")
def export_rules(output: OutOpt = None, project_path: ProjectOpt = None) -> None:
    """Recording rules and multi-window burn-rate alerts for every route's SLO."""
    from hybridserve.operations.export import rules_yaml

    _write(rules_yaml(project(project_path)), output)


@export_app.command("grafana")
def export_grafana(output: OutOpt = None, project_path: ProjectOpt = None) -> None:
    """A Grafana dashboard (JSON model) of the project's metrics, a row per route."""
    from hybridserve.operations.export import grafana_dashboard

    dashboard = grafana_dashboard(project(project_path))
    _write(orjson.dumps(dashboard, option=orjson.OPT_INDENT_2).decode() + "\n", output)


def operations_commands(app: typer.Typer) -> None:
    app.command("status")(status)
    app.add_typer(slo_app, name="slo")
    app.add_typer(export_app, name="export")
