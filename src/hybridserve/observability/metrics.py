"""Prometheus metrics for every path, on one registry per server process.

Label children that the hot path touches are bound once and cached (``labels()`` costs a
dict lookup and a lock), so recording a request costs a few microseconds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.stage_seconds = Histogram(
            "hybridserve_stage_seconds",
            "Time spent per route and stage (cache, store, features, model, fallback, total).",
            ["route", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "hybridserve_requests_total",
            "Answers per route, source and status.",
            ["route", "source", "status"],
            registry=r,
        )
        self.cache_hits = Counter(
            "hybridserve_cache_hits_total",
            "Stored predictions served, by tier (l1, store).",
            ["route", "tier"],
            registry=r,
        )
        self.fallbacks = Counter(
            "hybridserve_fallbacks_total",
            "Fallback answers by route, kind and reason.",
            ["route", "kind", "reason"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "hybridserve_breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open).",
            ["dependency"],
            registry=r,
        )
        self.batch_size = Histogram(
            "hybridserve_batch_size",
            "Rows per model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "hybridserve_model_seconds",
            "Duration of one model call.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prediction_age = Histogram(
            "hybridserve_prediction_age_seconds",
            "Age of served predictions.",
            ["route"],
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.shadow = Counter(
            "hybridserve_shadow_total",
            "Shadow comparisons by outcome (agree, disagree, dropped, error).",
            ["route", "outcome"],
            registry=r,
        )
        self.shadow_delta = Histogram(
            "hybridserve_shadow_score_delta",
            "Absolute score difference, shadow vs primary.",
            ["route"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.model_info = Gauge(
            "hybridserve_model_info",
            "The model version serving each route and role (value 1).",
            ["route", "role", "model", "version"],
            registry=r,
        )
        self.write_back_dropped = Counter(
            "hybridserve_write_back_dropped_total",
            "Computed predictions not written back (store failing or too far behind).",
            registry=r,
        )
        self.events = Counter(
            "hybridserve_events_total",
            "Events accepted on the ingest endpoint.",
            ["stream", "status"],
            registry=r,
        )

    @lru_cache(maxsize=4096)  # noqa: B019 - one Metrics per process, bounded cache
    def child(self, name: str, *labels: str) -> Any:
        """A bound label child, cached: ``metrics.child("requests", route, source, status)``."""
        metric = getattr(self, name)
        return metric.labels(*labels) if labels else metric

    def set_model(self, route: str, role: str, model: str, version: int) -> None:
        for sample in [s for m in self.model_info.collect() for s in m.samples]:
            lab = sample.labels
            if lab["route"] == route and lab["role"] == role:
                self.model_info.remove(route, role, lab["model"], lab["version"])
        self.model_info.labels(route, role, model, str(version)).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
