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

_SLOW = "slow"


async def _ping(name: str, kv: Any, timeout: float) -> tuple[str, str | None]:
    """(name, why it failed, ``_SLOW`` when it only took longer than ``timeout``, or None)."""
    try:
        async with asyncio.timeout(timeout):
            await kv.ping()
    except TimeoutError:
        return name, _SLOW
    except Exception as exc:  # refused, reset, unknown host...: the store is not usable now
        return name, str(exc) or type(exc).__name__
    return name, None


async def gather_context(
    services: Services, *, own: ProcessView | None = None, timeout: float = 1.0
) -> HealthContext:
    """The context of a report: heartbeats from the store, ``own`` (this process, live)
    in place of its published one, and a ping of each store. A ping that fails is an
    unreachable store; one that is only slow (``timeout``) is noted as slow: on a busy host
    a slow answer is not an outage, and must not take the service out of rotation."""
    project = services.project
    at = now()
    pings = [_ping("prediction_store", services.predictions_kv, timeout)]
    if services.online_kv is not services.predictions_kv:
        pings.append(_ping("feature_store", services.online_kv, timeout))
    results = dict(await asyncio.gather(*pings))
    if services.online_kv is services.predictions_kv:
        results["feature_store"] = results["prediction_store"]
    unreachable = {n: why for n, why in results.items() if why is not None and why != _SLOW}
    slow = {n: f"no answer to a ping within {timeout:g}s" for n, why in results.items()
            if why == _SLOW}  # fmt: skip
    processes: list[ProcessView] = []
    if not results["prediction_store"]:
        try:
            async with asyncio.timeout(timeout):
                processes = await read_processes(services.predictions_kv, at)
        except TimeoutError:
            slow["prediction_store"] = f"heartbeats not read within {timeout:g}s"
        except Exception as exc:  # the store failed between the ping and the read
            unreachable["prediction_store"] = str(exc) or type(exc).__name__
    alive = heartbeat_life(project)
    processes = [p for p in processes if at - p.at <= alive]
    if own is not None:
        processes = [p for p in processes if p.writer != own.writer] + [own]
    return HealthContext(project, services, at, processes, unreachable, slow)


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
