"""Prometheus metrics for every path, on one registry per server process.

Label children that the hot path touches are bound once and cached (``labels()`` costs a
dict lookup and a lock), so recording a request costs a few microseconds.

The counters and histograms a request touches (about a dozen updates per answer) are
:class:`LightCounter` and :class:`LightHistogram`: plain numbers behind one uncontended lock,
turned into Prometheus samples only when ``/metrics`` is read. prometheus-client's own take a
lock per value and walk several Python layers per update, which cost a stored answer about a
fifth of its time.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from hybridserve.observability.tracing import OFF, Tracing

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _CounterChild:
    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self.value += amount


class _HistogramChild:
    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        i = bisect_left(self._bounds, value)  # the first bucket whose bound is >= value
        with self._lock:
            self.counts[i] += 1
            self.sum += value

    def observe_many(self, values: Sequence[float]) -> None:
        """Observe each of ``values``: one lock for all of them."""
        bounds = self._bounds
        at = [bisect_left(bounds, v) for v in values]
        total = sum(values)
        with self._lock:
            counts = self.counts
            for i in at:
                counts[i] += 1
            self.sum += total


class _Light(Collector):
    """A labelled family of children, exposed through a registry like prometheus-client's."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def _new(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, self._new())
        return child

    def _items(self) -> list[tuple[tuple[str, ...], Any]]:
        with self._lock:
            return list(self._children.items())

    def describe(self) -> Iterator[Metric]:
        return iter(())


class LightCounter(_Light):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry) -> None:  # fmt: skip
        super().__init__(name, documentation, labelnames, registry)
        self._plain = None if labelnames else self.labels()

    def _new(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        """For a counter without labels."""
        assert self._plain is not None, f"{self.name} has labels"
        self._plain.inc(amount)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._items():
            family.add_metric(list(key), child.value)
        yield family


class LightHistogram(_Light):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:  # fmt: skip
        self.bounds = tuple(float(b) for b in buckets)
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._items():
            with child._lock:
                counts, total = list(child.counts), child.sum
            family.add_metric(list(key), self.buckets(counts), total)
        yield family

    def buckets(self, counts: Sequence[int]) -> list[tuple[str, int]]:
        """Per-bucket counts as Prometheus writes them: cumulative, by ``le`` bound."""
        les = [*(_le(b) for b in self.bounds), "+Inf"]
        cumulative, out = 0, []
        for le, n in zip(les, counts, strict=True):
            cumulative += n
            out.append((le, cumulative))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.stage_seconds = LightHistogram(
            "hybridserve_stage_seconds",
            "Time spent per route and stage (cache, store, features, model, fallback, total).",
            ["route", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = LightCounter(
            "hybridserve_requests_total",
            "Answers per route, source and status.",
            ["route", "source", "status"],
            registry=r,
        )
        self.cache_hits = LightCounter(
            "hybridserve_cache_hits_total",
            "Stored predictions served, by tier (l1, store).",
            ["route", "tier"],
            registry=r,
        )
        self.fallbacks = LightCounter(
            "hybridserve_fallbacks_total",
            "Fallback answers by route, kind and reason.",
            ["route", "kind", "reason"],
            registry=r,
        )
        self.stage_budget = Gauge(
            "hybridserve_stage_budget_seconds",
            "Each stage's own budget per route (routes.*.budgets), to read stage latency against.",
            ["route", "stage"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "hybridserve_breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open).",
            ["dependency"],
            registry=r,
        )
        self.batch_size = LightHistogram(
            "hybridserve_batch_size",
            "Rows per model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_seconds = LightHistogram(
            "hybridserve_model_seconds",
            "Duration of one model call.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prediction_age = LightHistogram(
            "hybridserve_prediction_age_seconds",
            "Age of served predictions.",
            ["route"],
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.shadow = LightCounter(
            "hybridserve_shadow_total",
            "Shadow comparisons by outcome (agree, disagree, dropped, error).",
            ["route", "outcome"],
            registry=r,
        )
        self.shadow_delta = LightHistogram(
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
        self.write_back_dropped = LightCounter(
            "hybridserve_write_back_dropped_total",
            "Computed predictions not written back (store failing or too far behind).",
            registry=r,
        )
        self.unreadable_records = LightCounter(
            "hybridserve_unreadable_records_total",
            "Stored predictions skipped on read: not a record, or times that cannot be rendered.",
            registry=r,
        )
        self.arm_answers = LightCounter(
            "hybridserve_arm_answers_total",
            "Entities answered per route and model version (the arm they were routed to), "
            "by outcome: total, degraded (a fallback answered), error (the model call failed).",
            ["route", "model", "version", "outcome"],
            registry=r,
        )
        self.arm_seconds = LightHistogram(
            "hybridserve_arm_request_seconds",
            "Latency of requests per route and model version they were answered on.",
            ["route", "model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reviews = LightCounter(
            "hybridserve_review_total",
            "Answers a route abstained on (decision: review), by the condition that matched.",
            ["route", "reason"],
            registry=r,
        )
        self.review_dropped = LightCounter(
            "hybridserve_review_dropped_total",
            "Review cases not written to the queue (database failing or too far behind).",
            registry=r,
        )
        self.events = LightCounter(
            "hybridserve_events_total",
            "Events accepted on the ingest endpoint.",
            ["stream", "status"],
            registry=r,
        )

        self.prediction_log = LightCounter(
            "hybridserve_prediction_log_total",
            "Prediction log rows by route and outcome (written, dropped: the writer fell "
            "behind, failed: the sink refused them).",
            ["route", "outcome"],
            registry=r,
        )

        self.feedback = LightCounter(
            "hybridserve_feedback_total",
            "Feedback outcomes received, by route and outcome (accepted, duplicate).",
            ["route", "outcome"],
            registry=r,
        )
        self.quality = Gauge(
            "hybridserve_quality",
            "Online quality over the route's quality.window, per model version and figure "
            "(roc_auc, log_loss, brier, precision, recall, mae, rmse, n).",
            ["route", "model", "version", "figure"],
            registry=r,
        )
        self.calibration = Gauge(
            "hybridserve_calibration_observed",
            "Observed positive share per score bin (label bin: its lower edge).",
            ["route", "model", "version", "bin"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "hybridserve_drift_psi",
            "PSI of a feature (or 'score') over the route's drift.window vs the reference.",
            ["route", "feature"],
            registry=r,
        )
        self.drift_missing = Gauge(
            "hybridserve_drift_missing_share",
            "Share of missing values of a feature over the route's drift.window.",
            ["route", "feature"],
            registry=r,
        )
        self.drifted = Gauge(
            "hybridserve_drifted",
            "1 when a feature (or 'score') of the route crossed a drift threshold, else 0.",
            ["route", "feature"],
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


class Timing:
    """``with stage():`` observes the block's duration (``perf_counter``) into the stage."""

    __slots__ = ("_child", "_started")

    def __init__(self, child: _HistogramChild) -> None:
        self._child = child
        self._started = 0.0

    def __enter__(self) -> Timing:
        self._started = perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._child.observe(perf_counter() - self._started)


class _TracedTiming(Timing):
    """A :class:`Timing` that is also a tracing span (only built when tracing is on)."""

    __slots__ = ("_span",)

    def __init__(self, child: _HistogramChild, span: AbstractContextManager[Any]) -> None:
        super().__init__(child)
        self._span = span

    def __enter__(self) -> Timing:
        self._span.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__()
        self._span.__exit__(*exc)


class Stage:
    """One route's latency histogram for one stage; call it for a :class:`Timing` (a span of
    the stage's name too, when tracing is on)."""

    __slots__ = ("child", "name", "tracing")

    def __init__(self, child: _HistogramChild, name: str = "", tracing: Tracing = OFF) -> None:
        self.child = child
        self.name = name
        self.tracing = tracing

    def __call__(self) -> Timing:
        if self.tracing.enabled:
            return _TracedTiming(self.child, self.tracing.span(self.name))
        return Timing(self.child)


class RouteMetrics:
    """A route's metric children, bound once at start-up (a misspelt stage fails mypy)."""

    def __init__(self, metrics: Metrics, route: str, tracing: Tracing = OFF) -> None:
        self._metrics = metrics
        self.route = route
        stage = metrics.stage_seconds

        def bind(name: str) -> Stage:
            return Stage(stage.labels(route, name), name, tracing)

        self.cache = bind("cache")
        self.store = bind("store")
        self.features = bind("features")
        self.model = bind("model")
        self.fallback = bind("fallback")
        self.total = Stage(stage.labels(route, "total"))  # the request's own span covers it
        self.l1_hits: _CounterChild = metrics.cache_hits.labels(route, "l1")
        self.store_hits: _CounterChild = metrics.cache_hits.labels(route, "store")
        self.age: _HistogramChild = metrics.prediction_age.labels(route)
        self.unavailable: _CounterChild = metrics.requests.labels(route, "none", "unavailable")
        self._answered: dict[str, _CounterChild] = {}
        self._fallbacks: dict[tuple[str, str], _CounterChild] = {}

    def answered(self, source: str) -> _CounterChild:
        """Answers from ``source`` (``cache``, ``batch``, ..., ``fallback:<kind>``)."""
        child = self._answered.get(source)
        if child is None:
            child = self._answered[source] = self._metrics.requests.labels(self.route, source, "ok")
        return child

    def fallbacks(self, kind: str, reason: str) -> _CounterChild:
        """Fallback answers of ``kind`` given because of ``reason``."""
        key = (kind, reason)
        child = self._fallbacks.get(key)
        if child is None:
            child = self._fallbacks[key] = self._metrics.fallbacks.labels(self.route, kind, reason)
        return child
