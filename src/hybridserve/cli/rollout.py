"""``hybridserve rollout ...``: guarded progressive rollouts of a model version."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, table
from hybridserve.records import to_iso

if TYPE_CHECKING:
    from hybridserve.config import Project, RolloutPlan
    from hybridserve.registry import Registry

rollout_app = typer.Typer(
    help="Shadow, then canary steps with guardrails, then promote.", no_args_is_help=True
)
Target = Annotated[str, typer.Argument(metavar="MODEL@VERSION", help="e.g. fraud@3.")]


@contextmanager
def _registry(path: Path | None) -> Iterator[tuple[Project, Registry]]:
    from hybridserve.registry import Registry

    proj = project(path)
    with Registry.from_project(proj) as registry:
        yield proj, registry


def _plan(
    proj: Project,
    route: str | None,
    target: str,
    steps: str | None,
    min_time: str | None,
    min_answers: int | None,
    shadow: bool,
) -> RolloutPlan | None:
    """The route's plan with the command's overrides (``None``: no overrides)."""
    from pydantic import ValidationError

    from hybridserve.config import RolloutPlan
    from hybridserve.errors import InvalidInput
    from hybridserve.quality.rollout import parse_target
    from hybridserve.registry.refs import ModelRef

    if steps is None and min_time is None and min_answers is None and shadow:
        return None
    model, _ = parse_target(target)
    names = [n for n, r in proj.routes.items() if ModelRef.parse(r.model).name == model]
    cfg = proj.routes.get(route or (names[0] if len(names) == 1 else ""))
    base = (cfg.rollout if cfg is not None else None) or RolloutPlan()
    raw: dict[str, Any] = base.model_dump()
    stage: dict[str, Any] = {}
    if min_time is not None:
        stage["min_time"] = min_time
    if min_answers is not None:
        stage["min_answers"] = min_answers
    if steps is not None:
        try:
            raw["steps"] = [{"percent": float(p)} for p in steps.split(",")]
        except ValueError:
            raise InvalidInput(
                f"--steps: expected percents like 5,25,50,100, got {steps!r}"
            ) from None
    raw["steps"] = [{**s, **stage} for s in raw["steps"]]
    if not shadow:
        raw["shadow"] = None
    elif raw["shadow"] is not None:
        raw["shadow"] = {**raw["shadow"], **stage}
    try:
        return RolloutPlan.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise InvalidInput("rollout plan: " + "; ".join(problems)) from None


@rollout_app.command()
def start(
    target: Target,
    route: Annotated[str | None, typer.Option(help="The route (when several serve it).")] = None,
    steps: Annotated[
        str | None, typer.Option(help="Canary percents, e.g. 5,25,50,100 (default: the plan's).")
    ] = None,
    min_time: Annotated[str | None, typer.Option(help="Least time per step, e.g. 10m.")] = None,
    min_answers: Annotated[int | None, typer.Option(help="Least answers per step.")] = None,
    shadow: Annotated[bool, typer.Option(help="Begin with the plan's shadow step.")] = True,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Start rolling MODEL@VERSION out: every server follows within a poll interval."""
    from hybridserve.quality.rollout import start_rollout
    from hybridserve.registry.registry import current_user

    with _registry(project_path) as (proj, registry):
        plan = _plan(proj, route, target, steps, min_time, min_answers, shadow)
        rollout = start_rollout(
            registry, proj, target, route=route, plan=plan, actor=current_user()
        )
    if json:
        print_json(rollout.to_json())
        return
    kind, stage = rollout.stage()
    console.print(
        f"rollout {rollout.id}: {rollout.label} on route {rollout.route}, "
        f"{len(rollout.stages())} steps, now {kind} {stage.percent:g}%"
    )


@rollout_app.command()
def status(
    target: Annotated[
        str | None, typer.Argument(metavar="[MODEL@VERSION]", help="Default: every active one.")
    ] = None,
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Where a rollout is, its current step's figures, and its moves."""
    from hybridserve.quality.rollout import report

    with _registry(project_path) as (proj, registry):
        out = report(registry, proj, target)
    if json:
        print_json(out)
        return
    if not out:
        console.print("no rollout in progress")
    for item in out:
        _print_status(item)


def _print_status(r: dict[str, Any]) -> None:
    console.print(
        f"rollout {r['id']}: {r['model']}/{r['version']} on {r['route']} {r['state']}, "
        f"step {r['step'] + 1} of {r['stages']} ({r['stage']}, canary "
        f"{r['canary_percent']:g}%, shadow {r['shadow_percent']:g}%)"
        + (f": {r['reason']}" if r["reason"] else "")
    )
    cols = ["arm", "requests", "answers", "error rate", "degraded", "p99 ms", "agreement"]
    rows = []
    for arm in ("primary", "candidate"):
        f = r["figures"][arm]
        rows.append(
            [
                arm,
                f["requests"],
                f["answers"],
                _pct(f["error_rate"]),
                _pct(f["degraded_share"]),
                None if f["p99_s"] is None else f"{f['p99_s'] * 1000:.1f}",
                _pct(f["agreement"]) + (f" of {f['comparisons']}" if f["comparisons"] else ""),
            ]
        )
    table("this step", cols, rows)
    if r["waiting"]:
        console.print("waiting for: " + ", ".join(r["waiting"]))
    for m in r["moves"]:
        reason = m["details"].get("reason", "")
        console.print(f"  {to_iso(m['at'])} {m['action']} by {m['actor']}: {reason}")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def _command(what: str, target: str, project_path: Path | None, json: bool) -> None:
    from hybridserve.quality.rollout import command
    from hybridserve.registry.registry import current_user

    with _registry(project_path) as (_, registry):
        rollout = command(registry, target, what, actor=current_user())
    if json:
        print_json(rollout.to_json())
        return
    console.print(f"rollout {rollout.id} of {rollout.label}: {rollout.state}")


@rollout_app.command()
def pause(target: Target, project_path: ProjectOpt = None, json: JsonOpt = False) -> None:
    """Hold the rollout at its step (traffic stays split; nothing advances)."""
    _command("pause", target, project_path, json)


@rollout_app.command()
def resume(target: Target, project_path: ProjectOpt = None, json: JsonOpt = False) -> None:
    """Let a paused rollout be judged and advance again."""
    _command("resume", target, project_path, json)


@rollout_app.command()
def abort(target: Target, project_path: ProjectOpt = None, json: JsonOpt = False) -> None:
    """Stop the rollout: every server goes back to the primary; the alias does not move."""
    _command("abort", target, project_path, json)
