"""Gathering a health report: the context (heartbeats, pings), then every registered check."""

from __future__ import annotations

import asyncio
from typing import Any

from hybridserve.operations import checks as _builtin  # noqa: F401 - registers the checks
from hybridserve.operations.health import (
    CHECKS,
    Checks,
    Component,
    HealthContext,
    HealthReport,
    Status,
)
from hybridserve.operations.publish import ProcessView, heartbeat_life, read_processes
from hybridserve.records import now
from hybridserve.services import Services


async def _ping(name: str, kv: Any, timeout: float) -> tuple[str, str | None]:
    try:
        async with asyncio.timeout(timeout):
            await kv.ping()
    except Exception as exc:  # any failure: the store is not usable now
        return name, type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
    return name, None


async def gather_context(
    services: Services, *, own: ProcessView | None = None, timeout: float = 1.0
) -> HealthContext:
    """The context of a report: heartbeats from the store, ``own`` (this process, live)
    in place of its published one, and a ping of each store."""
    project = services.project
    at = now()
    pings = [_ping("prediction_store", services.predictions_kv, timeout)]
    if services.online_kv is not services.predictions_kv:
        pings.append(_ping("feature_store", services.online_kv, timeout))
    unreachable = {n: why for n, why in await asyncio.gather(*pings) if why is not None}
    if services.online_kv is services.predictions_kv and "prediction_store" in unreachable:
        unreachable["feature_store"] = unreachable["prediction_store"]
    processes: list[ProcessView] = []
    if "prediction_store" not in unreachable:
        try:
            async with asyncio.timeout(timeout):
                processes = await read_processes(services.predictions_kv, at)
        except Exception as exc:  # the store failed between the ping and the read
            unreachable["prediction_store"] = str(exc) or type(exc).__name__
    alive = heartbeat_life(project)
    processes = [p for p in processes if at - p.at <= alive]
    if own is not None:
        processes = [p for p in processes if p.writer != own.writer] + [own]
    return HealthContext(project, services, at, processes, unreachable)


async def health_report(
    services: Services, *, own: ProcessView | None = None, checks: Checks | None = None
) -> HealthReport:
    """Health of the whole project: every check of ``checks`` (default: all registered)."""
    ctx = await gather_context(services, own=own)
    components: list[Component] = []
    for check in checks if checks is not None else CHECKS:
        components += await check(ctx)
    return summarize(components, ctx)


def summarize(components: list[Component], ctx: HealthContext) -> HealthReport:
    """The service's status: its worst route; any other part not healthy makes it degraded."""
    status = Status.HEALTHY
    reasons = []
    for c in components:
        if c.status is Status.HEALTHY:
            continue
        level = c.status if c.kind == "route" else Status.DEGRADED
        status = max(status, level)
        reasons.append(f"{c.name} {c.status.label}: {'; '.join(c.reasons)}")
    return HealthReport(status, reasons, components, ctx.at, len(ctx.processes))
