"""``hybridserve export prometheus-rules`` and ``hybridserve export grafana``.

The rules: for every route's SLO, recording rules of each SLI's error ratio over the burn
windows, and the multi-window, multi-burn-rate alerts of the Google SRE workbook ("Alerting
on SLOs", table 5-8): page when 2% of the budget burns in 1 h (checked over 5 m too) or 5% in
6 h (and 30 m); a ticket when 10% burns in 1 d (and 2 h) or in 3 d (and 6 h). The burn
factors follow from the route's SLO window (14.4, 6, 3 and 1 for 30 days).

The dashboard: a Grafana JSON model with a row per route (answers per second by source,
latency p50/p99, p99 per stage, cache hits by tier, fallbacks by reason, age of served
answers, SLO error ratio against the budget) and one of shared panels (breakers, models,
streams), on the metric names of ``observability/metrics.py`` and ``streaming/metrics.py``.
"""

from __future__ import annotations

from typing import Any

import yaml

from hybridserve.config import Project
from hybridserve.operations import promql
from hybridserve.operations.slo import LATENCY_TARGET, slo_routes

ALERTS = (
    # (long window, short window, share of the budget burnt in the long window, severity)
    ("1h", "5m", 0.02, "page"),
    ("6h", "30m", 0.05, "page"),
    ("1d", "2h", 0.10, "ticket"),
    ("3d", "6h", 0.10, "ticket"),
)
_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def _seconds(window: str) -> float:
    return float(window[:-1]) * _SECONDS[window[-1]]


def prometheus_rules(project: Project) -> dict[str, Any]:
    """The rule file (as data; :func:`rules_yaml` writes it)."""
    groups = []
    for route, slo in slo_routes(project, None).items():
        cfg = project.routes[route]
        slis = [("availability", slo.availability, 0.0)]
        if slo.latency is not None:
            slis.append(("latency", LATENCY_TARGET, slo.latency.p99))
        rules: list[dict[str, Any]] = []
        for sli, _, target in slis:
            labels = {"route": route, "slo": sli}
            for w in promql.BURN_WINDOWS:
                rules.append(
                    {
                        "record": promql.recorded(w),
                        "expr": promql.error_ratio(route, sli, w, target),
                        "labels": labels,
                    }
                )
        for sli, objective, _ in slis:
            budget = 1.0 - objective
            sel = f'{{route="{route}",slo="{sli}"}}'
            for long, short, share, severity in ALERTS:
                factor = round(share * slo.window / _seconds(long), 4)
                threshold = f"({factor} * {budget:.6g})"
                rules.append(
                    {
                        "alert": f"HybridserveSLOBurn_{route}_{sli}_{long}",
                        "expr": f"{promql.recorded(long)}{sel} > {threshold} and "
                        f"{promql.recorded(short)}{sel} > {threshold}",
                        "labels": {"severity": severity, "route": route, "slo": sli},
                        "annotations": {
                            "summary": f"route {route}: {sli} error budget burning "
                            f"{factor}x too fast",
                            "description": f"{share:.0%} of the {slo.window / 86400:g}-day "
                            f"error budget ({sli} target {objective:.4%}, latency budget "
                            f"{cfg.latency_budget * 1000:g} ms) spent within {long}.",
                        },
                    }
                )
        groups.append({"name": f"hybridserve-slo-{route}", "rules": rules})
    return {"groups": groups}


def rules_yaml(project: Project) -> str:
    return yaml.safe_dump(prometheus_rules(project), sort_keys=False, width=1000)


def _panel(pid: int, title: str, targets: list[tuple[str, str]], x: int, y: int, unit: str):  # type: ignore[no-untyped-def]
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _route_panels(project: Project, route: str, pid: int, y: int) -> list[dict[str, Any]]:
    r = f'route="{route}"'
    q = "histogram_quantile({q}, sum by (le) (rate(hybridserve_stage_seconds_bucket{{" + r
    q += ',stage="total"}}[5m])))'
    panels = [
        ("answers/s by source", [(f"sum by (source) (rate({promql.REQUESTS}{{{r}}}[1m]))",
                                  "{{source}}")], "reqps"),
        ("latency p50 / p99", [(q.format(q=0.5), "p50"), (q.format(q=0.99), "p99")], "s"),
        ("p99 per stage", [("histogram_quantile(0.99, sum by (le, stage) (rate("
                            f"hybridserve_stage_seconds_bucket{{{r}}}[5m])))", "{{stage}}")], "s"),
        ("cache hits/s by tier", [(f"sum by (tier) (rate(hybridserve_cache_hits_total{{{r}}}"
                                   "[1m]))", "{{tier}}")], "reqps"),
        ("fallbacks/s by reason", [("sum by (kind, reason) (rate(hybridserve_fallbacks_total"
                                    f"{{{r}}}[1m]))", "{{kind}} {{reason}}")], "reqps"),
        ("age of served answers (p50, p99)", [
            ("histogram_quantile(0.5, sum by (le) (rate(hybridserve_prediction_age_seconds_bucket"
             f"{{{r}}}[5m])))", "p50"),
            ("histogram_quantile(0.99, sum by (le) (rate("
             f"hybridserve_prediction_age_seconds_bucket{{{r}}}[5m])))", "p99")], "s"),
    ]  # fmt: skip
    cfg = project.routes[route]
    if cfg.slo is not None:
        panels.append(
            (
                "SLO error ratio (1h) vs budget",
                [
                    (f"{promql.recorded('1h')}{{{r}}}", "{{slo}}"),
                    (f"vector({1 - cfg.slo.availability:.6g})", "availability budget"),
                ],
                "percentunit",
            )
        )
    out: list[dict[str, Any]] = [
        {"id": pid, "type": "row", "title": f"route {route}", "collapsed": False,
         "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
    ]  # fmt: skip
    for i, (title, targets, unit) in enumerate(panels):
        out.append(_panel(pid + 1 + i, title, targets, (i % 3) * 8, y + 1 + (i // 3) * 8, unit))
    return out


_DATASOURCE = {"name": "datasource", "type": "datasource", "query": "prometheus"}


def grafana_dashboard(project: Project) -> dict[str, Any]:
    """The dashboard's JSON model (import it, or provision it from a file)."""
    panels: list[dict[str, Any]] = []
    y = 0
    for route in project.routes:
        block = _route_panels(project, route, len(panels) + 1, y)
        panels += block
        y = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in block)
    shared = [
        ("breaker state (0 closed, 1 half-open, 2 open)",
         [("max by (dependency) (hybridserve_breaker_state)", "{{dependency}}")], "none"),
        ("serving model versions",
         [("max by (route, role, model, version) (hybridserve_model_info)",
           "{{route}} {{role}} {{model}}/{{version}}")], "none"),
        ("stream lag and dead letters",
         [("max by (stream) (hybridserve_stream_lag)", "lag {{stream}}"),
          ("sum by (stream) (rate(hybridserve_stream_dead_lettered_total[5m]))",
           "dead letters/s {{stream}}")], "none"),
    ]  # fmt: skip
    panels.append(
        {"id": len(panels) + 1, "type": "row", "title": "shared", "collapsed": False,
         "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
    )  # fmt: skip
    for i, (title, targets, unit) in enumerate(shared):
        panels.append(_panel(len(panels) + 1, title, targets, i * 8, y + 1, unit))
    return {
        "title": f"hybridserve: {project.name}",
        "uid": f"hybridserve-{project.name}"[:40],
        "tags": ["hybridserve"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [_DATASOURCE]},
        "panels": panels,
    }
