"""SLO reports: target, actual, compliance, error budget left and burn rates per route.

Two SLIs per route that declares ``slo``: **availability** (answers that are answered and not
degraded, over all answers) and, when ``slo.latency`` is set, **latency** (requests within
``slo.latency.p99``, target 99%). Over a window: ``actual`` = good / total; ``compliant`` =
actual >= target; the error budget is the bad share the target allows, ``1 - target``, and
``budget_left`` = 1 - (bad / total) / (1 - target) (negative once overspent); the **burn
rate** over 5 m, 1 h and 6 h is that window's bad share over the allowed one (1: the budget
lasts exactly the SLO window).

The counts come from the store (every writer's minute slots, :mod:`operations.publish`), or
from a Prometheus server scraping the project (``--prometheus URL``, :mod:`operations.promql`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hybridserve.config import CostConfig, Project, RouteConfig, SloConfig
from hybridserve.errors import InvalidInput
from hybridserve.observability.tally import Slot
from hybridserve.operations import promql
from hybridserve.operations.publish import read_minutes
from hybridserve.records import now
from hybridserve.storage import KVStore
from hybridserve.units import parse_duration

BURN = {"5m": 300.0, "1h": 3600.0, "6h": 21600.0}
LATENCY_TARGET = 0.99


@dataclass(slots=True)
class Objective:
    sli: str
    target: float
    good: float
    total: float
    burn: dict[str, float]

    @property
    def actual(self) -> float | None:
        return None if self.total <= 0 else self.good / self.total

    @property
    def budget_left(self) -> float:
        if self.total <= 0:
            return 1.0
        return 1.0 - ((self.total - self.good) / self.total) / (1.0 - self.target)

    def to_json(self) -> dict[str, Any]:
        actual = self.actual
        return {
            "sli": self.sli,
            "target": self.target,
            "good": self.good,
            "total": self.total,
            "actual": actual,
            "compliant": actual is None or actual >= self.target - 1e-12,
            "budget_left": self.budget_left,
            "burn_rate": self.burn,
        }


def slo_routes(project: Project, route: str | None) -> dict[str, SloConfig]:
    """The routes reported on: ``route`` (which must declare an SLO), else every one that does."""
    if route is not None:
        cfg = project.route(route)
        if cfg.slo is None:
            raise InvalidInput(f"route {route!r} declares no slo (routes.{route}.slo)")
        return {route: cfg.slo}
    return {n: c.slo for n, c in project.routes.items() if c.slo is not None}


def _sum(minutes: Mapping[int, Slot], since: float) -> Slot:
    out = Slot()
    first = int(since // 60)
    for minute, slot in minutes.items():
        if minute >= first:
            out.add(slot)
    return out


def _counts(sli: str, slot: Slot) -> tuple[float, float]:
    if sli == "availability":
        return float(slot.good), float(slot.answers)
    return float(slot.requests - slot.slow), float(slot.requests)


def _objectives(
    cfg: RouteConfig, slo: SloConfig, counts: Callable[[str, float], tuple[float, float]]
) -> list[Objective]:
    """Each SLI's objective; ``counts(sli, seconds)`` -> (good, total) over the last seconds."""
    slis = [("availability", slo.availability)]
    if slo.latency is not None:
        slis.append(("latency", LATENCY_TARGET))
    out = []
    for sli, target in slis:
        good, total = counts(sli, -1.0)
        burn = {}
        for name, seconds in BURN.items():
            g, t = counts(sli, seconds)
            burn[name] = 0.0 if t <= 0 else round(((t - g) / t) / (1.0 - target), 4)
        out.append(Objective(sli, target, good, total, burn))
    return out


def cost_per_1k(slot: Slot, cost: CostConfig) -> dict[str, Any]:
    """Per source: answers, CPU seconds and the price of 1000 answers at ``cost.core_hour``."""
    sources = {}
    all_n = all_cpu = 0.0
    for source, (n, cpu) in sorted(slot.sources.items()):
        all_n, all_cpu = all_n + n, all_cpu + cpu
        sources[source] = _cost(n, cpu, cost)
    return {
        "currency": cost.currency,
        "core_hour": cost.core_hour,
        "all": _cost(all_n, all_cpu, cost),
        "sources": sources,
    }


def _cost(n: float, cpu: float, cost: CostConfig) -> dict[str, Any]:
    per_1k = None if n <= 0 else cpu / n * 1000 / 3600 * cost.core_hour
    return {"answers": n, "cpu_seconds": round(cpu, 6), "per_1k": per_1k}


MAX_WINDOW = 3650 * 86400.0
"""Longer windows are read as ten years (counters are not kept that long anyway)."""


def parse_window(window: str | None) -> float | None:
    """A report's ``--window`` / ``?window=`` in seconds (``None``: each SLO's own)."""
    if window is None:
        return None
    try:
        return min(parse_duration(window), MAX_WINDOW)
    except ValueError as exc:
        raise InvalidInput(f"window: {exc}") from None


def window_of(slo: SloConfig, window: float | None) -> float:
    return slo.window if window is None else window


async def store_report(
    project: Project, kv: KVStore, route: str | None = None, window: str | None = None
) -> dict[str, Any]:
    """The SLO report of ``route`` (or every route with an SLO) from the store's counters."""
    at = now()
    seconds = parse_window(window)
    out = {}
    for name, slo in slo_routes(project, route).items():
        span = window_of(slo, seconds)
        minutes = await read_minutes(kv, name, at - max(span, *BURN.values()))
        cfg = project.routes[name]

        def counts(
            sli: str, seconds: float, m: Mapping[int, Slot] = minutes, s: float = span
        ) -> tuple[float, float]:
            return _counts(sli, _sum(m, at - (s if seconds < 0 else seconds)))

        whole = _sum(minutes, at - span)
        out[name] = _route_json(cfg, slo, span, _objectives(cfg, slo, counts))
        out[name]["cost"] = cost_per_1k(whole, project.cost)
    return {"source": "store", "at": at, "routes": out}


def _route_json(
    cfg: RouteConfig, slo: SloConfig, span: float, objectives: list[Objective]
) -> dict[str, Any]:
    return {
        "window_s": span,
        "latency_target_ms": None if slo.latency is None else slo.latency.p99 * 1000,
        "objectives": {o.sli: o.to_json() for o in objectives},
    }


async def prometheus_report(
    project: Project,
    url: str,
    route: str | None = None,
    window: str | None = None,
    *,
    transport: Any = None,
) -> dict[str, Any]:
    """The same report, from a Prometheus server that scrapes the project's servers
    (``transport``: an httpx transport, for tests)."""
    import httpx

    seconds = parse_window(window)
    out = {}
    client_args: dict[str, Any] = {} if transport is None else {"transport": transport}
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=10, **client_args) as client:

        async def query(expr: str) -> float:
            r = await client.get("/api/v1/query", params={"query": expr})
            r.raise_for_status()
            result = r.json()["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0

        for name, slo in slo_routes(project, route).items():
            span = window_of(slo, seconds)
            cfg = project.routes[name]
            target = slo.latency.p99 if slo.latency is not None else cfg.latency_target
            got: dict[tuple[str, float], tuple[float, float]] = {}
            for sli in ["availability", *(["latency"] if slo.latency else [])]:
                for length in [span, *BURN.values()]:
                    w = f"{max(1, int(length))}s"
                    bad, total = promql.bad_and_total(name, sli, w, target)
                    t = await query(total)
                    got[(sli, length)] = (t - await query(bad), t)

            def counts(
                sli: str, seconds: float, g: dict[Any, Any] = got, s: float = span
            ) -> tuple[float, float]:
                return g[(sli, s if seconds < 0 else seconds)]  # type: ignore[no-any-return]

            out[name] = _route_json(cfg, slo, span, _objectives(cfg, slo, counts))
    return {"source": "prometheus", "prometheus": url, "at": now(), "routes": out}
