"""Quality and drift figures as Prometheus gauges (set by the server every few seconds).

Each call replaces the route's samples whole, so a model version that stopped serving (or a
feature no longer judged) does not linger with its last value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hybridserve.observability.metrics import Metrics
from hybridserve.quality.drift import DriftMonitor, DriftReport
from hybridserve.quality.feedback import FeedbackStore
from hybridserve.quality.figures import Figures

log = logging.getLogger("hybridserve.quality")


def _drop_route(gauge: Any, route: str) -> None:
    for metric in gauge.collect():
        for sample in metric.samples:
            labels = sample.labels
            if labels.get("route") == route:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels.values())


def export_quality(
    metrics: Metrics, route: str, by_version: dict[tuple[str, int], Figures]
) -> None:
    _drop_route(metrics.quality, route)
    _drop_route(metrics.calibration, route)
    for (model, version), f in by_version.items():
        v = str(version)
        metrics.quality.labels(route, model, v, "n").set(f.n)
        for name, value in f.values.items():
            if value is not None:
                metrics.quality.labels(route, model, v, name).set(value)
        for b in f.calibration:
            metrics.calibration.labels(route, model, v, f"{b['lo']:g}").set(b["observed"])


def export_drift(metrics: Metrics, report: DriftReport) -> None:
    route = report.route
    for gauge in (metrics.drift_psi, metrics.drift_missing, metrics.drifted):
        _drop_route(gauge, route)
    if not report.judged:
        return
    items = [*report.features, *([report.score] if report.score is not None else [])]
    for f in items:
        metrics.drift_psi.labels(route, f.name).set(f.psi)
        metrics.drift_missing.labels(route, f.name).set(f.missing)
        metrics.drifted.labels(route, f.name).set(1 if f.drifted else 0)


def export_all(
    metrics: Metrics, feedback: FeedbackStore, drift: DriftMonitor, *, quality: bool = True
) -> None:
    """Every route's drift report and (with ``quality``) quality figures, into the gauges
    (blocking: reads the log and the registry)."""
    for route in feedback.project.routes:
        export_drift(metrics, drift.report(route, fresh=True))
        if not quality:
            continue
        try:
            by_version, _ = feedback.quality(route)
        except Exception as exc:  # a failing log store leaves the last figures in place
            log.warning("quality of route %s not computed: %s", route, exc)
            continue
        export_quality(metrics, route, by_version)


async def run_exporter(
    metrics: Metrics,
    feedback: FeedbackStore,
    drift: DriftMonitor,
    *,
    interval: float = 15.0,
    quality_every: int = 4,
) -> None:
    """:func:`export_all` every ``interval`` seconds, off the event loop, until cancelled;
    the quality figures (which read a window of the log) every ``quality_every``-th time."""
    n = 0
    while True:
        try:
            quality = n % quality_every == 0
            await asyncio.to_thread(export_all, metrics, feedback, drift, quality=quality)
        except Exception as exc:
            log.warning("quality figures not exported: %s", exc)
        n += 1
        await asyncio.sleep(interval)
