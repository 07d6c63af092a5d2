"""The built-in health checks: stores, routes, models, streams and batch jobs.

Each is one function registered on :data:`~hybridserve.operations.health.CHECKS`; the rules
and their thresholds (``health:`` in the project file) are documented in
docs/operations.md#health.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hybridserve.batch.manifest import runs
from hybridserve.batch.schedule import next_fire
from hybridserve.config import DefaultStep, ModelStep, RouteConfig, StalePredictionStep
from hybridserve.observability.tally import Slot
from hybridserve.operations.health import CHECKS, Component, HealthContext, Status
from hybridserve.operations.publish import read_minutes
from hybridserve.operations.slo import cost_per_1k
from hybridserve.streaming.status import stream_status


@CHECKS.register
async def stores(ctx: HealthContext) -> list[Component]:
    """A store that refuses a ping is critical; a slow one, or an open breaker on it, is
    degraded."""
    out = []
    for name in ("prediction_store", "feature_store"):
        why = ctx.unreachable.get(name)
        if why is not None:
            out.append(Component(name, "dependency", Status.CRITICAL, [f"unreachable: {why}"]))
            continue
        reasons = [ctx.slow[name]] if name in ctx.slow else []
        opened = ctx.breaker_open(name)
        if name == "prediction_store":
            opened += ctx.breaker_open("prediction_store:write")
        if opened:
            reasons.append(f"circuit open in {len(opened)} of {len(ctx.processes)} processes")
        status = Status.DEGRADED if reasons else Status.HEALTHY
        out.append(Component(name, "dependency", status, reasons))
    return out


@CHECKS.register
async def routes(ctx: HealthContext) -> list[Component]:
    out = []
    for name, cfg in ctx.project.routes.items():
        component = _route(ctx, name, cfg)
        if "prediction_store" not in ctx.unreachable:
            try:
                minutes = await read_minutes(ctx.services.predictions_kv, name, ctx.at - 3600)
            except Exception as exc:  # the store failed since the ping: no cost figures
                component.details["cost_last_hour"] = {"error": str(exc)}
            else:
                whole = Slot()
                for slot in minutes.values():
                    whole.add(slot)
                component.details["cost_last_hour"] = cost_per_1k(whole, ctx.project.cost)
        out.append(component)
    return out


def _route(ctx: HealthContext, name: str, cfg: RouteConfig) -> Component:
    status, reasons = Status.HEALTHY, []
    models = ctx.models(name)
    if not ctx.processes:
        status = Status.DEGRADED
        reasons.append("no live server process (no heartbeat in the store)")
    blocked, answers = _paths(ctx, cfg, models)
    for why in blocked:
        status = max(status, Status.DEGRADED)
        reasons.append(why)
    if not answers:
        status = Status.CRITICAL
        reasons.append("no step can answer (stored, compute and every fallback are blocked)")
    recent = ctx.recent(name)
    status = max(status, _recent_rules(ctx, cfg, recent, reasons))
    for why in ctx.services.drift.reasons().get(name, []):  # its traffic left the reference
        status = max(status, Status.DEGRADED)
        reasons.append(f"drift: {why}")
    p99 = recent.p99()
    details: dict[str, Any] = {
        "models": models,
        "answerable_by": answers,
        "recent": {
            "window_s": ctx.project.health.window,
            "answers": recent.answers,
            "degraded": recent.degraded,
            "unavailable": recent.unavailable,
            "requests": recent.requests,
            "p99_ms": None if p99 is None else [_ms(p99[0]), _ms(p99[1])],
        },
    }
    return Component(f"route:{name}", "route", status, reasons, details)


def _ms(seconds: float) -> float | None:
    return None if seconds == float("inf") else round(seconds * 1000, 3)


def _paths(
    ctx: HealthContext, cfg: RouteConfig, models: dict[str, str]
) -> tuple[list[str], list[str]]:
    """(why the route's own steps are blocked, the steps that can still answer)."""
    store = ctx.down("prediction_store")
    feats = ctx.down("feature_store") if cfg.features else None
    primary = models.get("primary")
    model = ctx.down(f"model:{primary}") if primary else "no model loaded"
    blocked = list(dict.fromkeys(w for w in (store, feats, model) if w))
    answers = []
    if store is None:
        answers.append("stored")
    if feats is None and model is None:
        answers.append("compute")
    for i, step in enumerate(cfg.fallback):
        if isinstance(step, StalePredictionStep) and store is None:
            answers.append("fallback:stale_prediction")
        elif isinstance(step, ModelStep):
            label = models.get(f"fallback{i}")
            fallback_model = ctx.down(f"model:{label}") if label else "not loaded"
            if feats is None and fallback_model is None:
                answers.append("fallback:model")
        elif isinstance(step, DefaultStep):
            answers.append("fallback:default")
    return blocked, answers


def _recent_rules(ctx: HealthContext, cfg: RouteConfig, recent: Any, reasons: list[str]) -> Status:
    h = ctx.project.health
    if recent.answers < h.min_answers:
        return Status.HEALTHY
    status = Status.HEALTHY
    window = f"the last {h.window:g}s"
    bad = (recent.degraded + recent.unavailable) / recent.answers
    if bad > h.degraded_share:
        status = Status.DEGRADED
        reasons.append(
            f"{bad:.1%} of {recent.answers} answers in {window} degraded or unanswered "
            f"(above {h.degraded_share:.1%})"
        )
    unavailable = recent.unavailable / recent.answers
    if unavailable > h.unavailable_share:
        status = Status.CRITICAL
        reasons.append(
            f"{unavailable:.1%} of {recent.answers} answers in {window} unanswered (503, "
            f"above {h.unavailable_share:.1%})"
        )
    p99 = recent.p99()
    if p99 is not None and p99[0] >= cfg.latency_budget:
        status = max(status, Status.DEGRADED)
        reasons.append(
            f"p99 latency in {window} over {p99[0] * 1000:g} ms, budget "
            f"{cfg.latency_budget * 1000:g} ms"
        )
    return status


@CHECKS.register
async def models(ctx: HealthContext) -> list[Component]:
    """Each model version a process serves; degraded while its breaker is open somewhere."""
    served: dict[str, list[str]] = {}
    for p in ctx.processes:
        for route, roles in p.models.items():
            for role, label in roles.items():
                served.setdefault(label, [])
                if f"{route} {role}" not in served[label]:
                    served[label].append(f"{route} {role}")
    out = []
    for label, uses in sorted(served.items()):
        why = ctx.down(f"model:{label}")
        status = Status.DEGRADED if why else Status.HEALTHY
        out.append(
            Component(f"model:{label}", "model", status, [why] if why else [], {"serves": uses})
        )
    return out


@CHECKS.register
async def streams(ctx: HealthContext) -> list[Component]:
    return [await _stream(ctx, name) for name in ctx.project.streams]


async def _stream(ctx: HealthContext, name: str) -> Component:
    h = ctx.project.health
    try:
        async with asyncio.timeout(2.0):
            info = await stream_status(ctx.services, name)
    except Exception as exc:  # the source or the store did not answer
        return Component(f"stream:{name}", "stream", Status.DEGRADED, [f"status unknown: {exc}"])
    reasons = []
    alive = [
        c for c in info["consumers"] if ctx.at - float(c.get("updated_at", 0)) <= h.consumer_timeout
    ]
    if not alive:
        reasons.append(f"no consumer alive (none reported in {h.consumer_timeout:g}s)")
    lag = info.get("lag")
    if lag is not None and lag > h.stream_lag:
        reasons.append(f"lag {lag} entries (bound {h.stream_lag})")
    details = {
        "lag": lag,
        "consumers": len(alive),
        "events_per_s": info.get("events_per_s"),
        "dead_letters": info.get("dead_letters"),
    }
    status = Status.DEGRADED if reasons else Status.HEALTHY
    return Component(f"stream:{name}", "stream", status, reasons, details)


@CHECKS.register
async def batch_jobs(ctx: HealthContext) -> list[Component]:
    return [await asyncio.to_thread(_batch_job, ctx, name) for name in ctx.project.batch_jobs]


def _batch_job(ctx: HealthContext, name: str) -> Component:
    cfg = ctx.project.batch_jobs[name]
    history = runs(ctx.project, name)
    reasons = []
    last = history[0] if history else None
    if last is not None and last.status == "failed":
        reasons.append(f"last run {last.run_id} failed: {last.error or 'no reason recorded'}")
    completed = next((m for m in history if m.status == "completed"), None)
    if cfg.schedule is not None:
        if completed is None:
            reasons.append(f"no completed run (schedule {cfg.schedule!r})")
        else:
            done = completed.finished_at or completed.started_at
            due = next_fire(cfg.schedule, done)
            if ctx.at > due + ctx.project.health.batch_grace:
                late = ctx.at - due
                reasons.append(
                    f"last completed run {completed.run_id} is {late / 3600:.1f} h past its "
                    f"next scheduled run (schedule {cfg.schedule!r}, grace "
                    f"{ctx.project.health.batch_grace:g}s)"
                )
    details = {
        "last_run": None if last is None else {"run_id": last.run_id, "status": last.status},
        "last_completed": None if completed is None else completed.run_id,
    }
    status = Status.DEGRADED if reasons else Status.HEALTHY
    return Component(f"batch_job:{name}", "batch_job", status, reasons, details)


@CHECKS.register
async def drift(ctx: HealthContext) -> list[Component]:
    """A route whose recent answers drifted from the model's reference profile is degraded,
    with the drifted features as reasons (this process's answers, judged every 15 s)."""
    return [
        Component(f"drift:{route}", "drift", Status.DEGRADED, reasons, {"route": route})
        for route, reasons in ctx.services.drift.reasons().items()
    ]
