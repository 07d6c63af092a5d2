"""The live dashboard's figures (``GET /v1/dashboard/data``), from the server's own metrics.

Each call reads the exposition text ``/metrics`` answers (so every worker's counters are
summed, as :mod:`.shared` sums them, and the dashboard can never disagree with a scrape) and
keeps it as a snapshot. Rates are the change between this snapshot and the newest one at
least ``min_interval`` older (the page polls every 2 s: a rate over the last poll), and
latency quantiles, cache hit rates, ages and shadow agreement are over the last ``window``
seconds of snapshots (the whole life of the process until the first snapshot is that old).
Quantiles are estimated from histogram buckets the way PromQL's ``histogram_quantile`` does.

Streams and batch jobs come in as the plain data :func:`hybridserve.streaming.status.
stream_status` and :meth:`hybridserve.batch.manifest.RunManifest.to_dict` give; the server
gathers them (this layer does not import those packages).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from hybridserve.config import Project, RouteConfig

Labels = tuple[tuple[str, str], ...]
Series = dict[tuple[str, Labels], float]
"""Every sample of a scrape: (sample name, sorted labels) -> value."""

BREAKER_STATES = {0: "closed", 1: "half_open", 2: "open"}
STAGES = ("cache", "store", "features", "model", "fallback", "total")
_P = "hybridserve_"


def parse(text: bytes | str) -> Series:
    """The samples of a Prometheus exposition text."""
    raw = text.decode() if isinstance(text, bytes) else text
    out: Series = {}
    for family in text_string_to_metric_families(raw):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def samples(series: Series, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
    """The samples named ``name`` whose labels include ``match``."""
    found = []
    for (sample, labels), value in series.items():
        if sample != name:
            continue
        lab = dict(labels)
        if all(lab.get(k) == v for k, v in match.items()):
            found.append((lab, value))
    return found


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram given as (upper bound, cumulative count), ``+Inf``
    included; ``None`` without observations. Linear inside a bucket, like PromQL's."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in ordered:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bound: that bound is all we know
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


@dataclass(slots=True)
class _Delta:
    """Differences between two snapshots (a counter absent from the older one started at 0)."""

    new: Series
    old: Series
    seconds: float

    def value(self, key: tuple[str, Labels]) -> float:
        return max(0.0, self.new.get(key, 0.0) - self.old.get(key, 0.0))

    def total(self, name: str, **match: str) -> float:
        return sum(self.value(_key(name, lab)) for lab, _ in samples(self.new, name, **match))

    def buckets(self, name: str, **match: str) -> list[tuple[float, float]]:
        """A histogram's (upper bound, cumulative count) over the delta, summed over the
        series that match (e.g. every stage of a route when ``stage`` is not matched)."""
        by_bound: dict[float, float] = {}
        for lab, _ in samples(self.new, name + "_bucket", **match):
            bound = float(lab["le"])
            by_bound[bound] = by_bound.get(bound, 0.0) + self.value(_key(name + "_bucket", lab))
        return sorted(by_bound.items())


def _key(name: str, labels: Mapping[str, str]) -> tuple[str, Labels]:
    return name, tuple(sorted(labels.items()))


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Dashboard:
    """Snapshots of one process's scrapes and the view computed from them."""

    def __init__(self, *, window: float = 60.0, min_interval: float = 1.0) -> None:
        self.window = window
        self.min_interval = min_interval
        self.started = time.time()
        self._history: deque[tuple[float, Series]] = deque()
        self._lock = threading.Lock()

    def record(self, text: bytes | str, at: float | None = None) -> tuple[_Delta, _Delta]:
        """Keep a scrape; its (rate, window) deltas against the snapshots kept before it."""
        at = time.time() if at is None else at
        series = parse(text)
        with self._lock:
            history = self._history
            older = [(t, s) for t, s in history if t <= at - self.min_interval]
            rate_at, rate_base = older[-1] if older else (at, series)
            # Until the snapshots span the window, the window is the life of the process.
            spans = bool(history) and history[0][0] <= at - self.window
            win_at, win_base = history[0] if spans else (self.started, {})
            if not history or at - history[-1][0] >= self.min_interval:
                history.append((at, series))
            while len(history) > 1 and history[1][0] <= at - self.window:
                history.popleft()
        rate = _Delta(series, rate_base, at - rate_at)
        return rate, _Delta(series, win_base, at - win_at)

    def view(
        self,
        text: bytes | str,
        project: Project,
        *,
        streams: list[dict[str, Any]] | None = None,
        runs: Mapping[str, list[dict[str, Any]]] | None = None,
        at: float | None = None,
    ) -> dict[str, Any]:
        """Everything the page shows, as plain data (see the module docstring)."""
        at = time.time() if at is None else at
        rate, window = self.record(text, at)
        series = rate.new
        return {
            "at": at,
            "rate_seconds": round(rate.seconds, 3),
            "window_seconds": round(window.seconds, 3),
            "routes": {
                name: route_view(name, cfg, rate, window) for name, cfg in project.routes.items()
            },
            "breakers": {
                lab["dependency"]: BREAKER_STATES.get(int(v), str(v))
                for lab, v in samples(series, _P + "breaker_state")
            },
            "streams": [stream_view(s) for s in streams or []],
            "batch_jobs": {job: [run_view(r) for r in rs] for job, rs in (runs or {}).items()},
        }


def route_view(name: str, cfg: RouteConfig, rate: _Delta, window: _Delta) -> dict[str, Any]:
    series = rate.new
    answers: dict[str, dict[str, float | None]] = {}
    errors: dict[str, float] = {}
    for lab, total in samples(series, _P + "requests_total", route=name):
        key = _key(_P + "requests_total", lab)
        if lab["status"] == "ok":
            answers[lab["source"]] = {
                "total": total,
                "per_s": round(rate.value(key) / rate.seconds, 3) if rate.seconds > 0 else None,
            }
        elif total > 0:
            errors[lab["status"]] = errors.get(lab["status"], 0.0) + total
    answered = window.total(_P + "requests_total", route=name, status="ok")
    return {
        "models": _models(name, cfg, window),
        "answers": dict(sorted(answers.items())),
        "errors": errors,
        "stages": _stages(name, cfg, window),
        "cache": {
            tier: {
                "hits": sum(v for _, v in samples(series, _P + "cache_hits_total", **m)),
                "hit_rate": _share(window.total(_P + "cache_hits_total", **m), answered),
            }
            for tier in ("l1", "store")
            for m in [{"route": name, "tier": tier}]
        },
        "age": _age(name, window),
        "fallbacks": {
            f"{lab['kind']}/{lab['reason']}": v
            for lab, v in samples(series, _P + "fallbacks_total", route=name)
        },
    }


def _models(name: str, cfg: RouteConfig, window: _Delta) -> list[dict[str, Any]]:
    shares = {
        "canary": cfg.canary.percent if cfg.canary else None,
        "shadow": cfg.shadow.percent if cfg.shadow else None,
    }
    shares["primary"] = 100.0 - (shares["canary"] or 0.0)
    agree = window.total(_P + "shadow_total", route=name, outcome="agree")
    disagree = window.total(_P + "shadow_total", route=name, outcome="disagree")
    out = []
    for lab, _ in samples(window.new, _P + "model_info", route=name):
        role = lab["role"]
        item: dict[str, Any] = {
            "role": role,
            "model": lab["model"],
            "version": int(lab["version"]),
            "percent": shares.get(role),
        }
        if role == "shadow":
            item["agreement"] = _share(agree, agree + disagree)
            item["compared"] = agree + disagree
        out.append(item)
    order = {"primary": 0, "canary": 1, "shadow": 2}
    return sorted(out, key=lambda m: (order.get(m["role"], 9), m["role"]))


def _stages(name: str, cfg: RouteConfig, window: _Delta) -> dict[str, dict[str, Any]]:
    budgets = stage_budgets(cfg)
    out = {}
    for stage in STAGES:
        buckets = window.buckets(_P + "stage_seconds", route=name, stage=stage)
        count = buckets[-1][1] if buckets else 0.0
        ever = sum(
            v for _, v in samples(window.new, _P + "stage_seconds_count", route=name, stage=stage)
        )
        p99 = quantile(0.99, buckets)
        budget = budgets.get(stage)
        out[stage] = {
            "count": count,
            "total_count": ever,
            "p50_ms": _ms(quantile(0.5, buckets)),
            "p99_ms": _ms(p99),
            "budget_ms": _ms(budget),
            "over_budget": None if budget is None or p99 is None else p99 > budget,
        }
    return out


def stage_budgets(cfg: RouteConfig) -> dict[str, float]:
    """Seconds per stage the route allows: its ``budgets`` (``store``, ``features``,
    ``model``), and ``total``, its ``latency_budget``."""
    out = {"total": cfg.latency_budget}
    for stage in STAGES:
        limit = cfg.budgets.of(stage)
        if limit is not None:
            out[stage] = limit
    return out


def _age(name: str, window: _Delta) -> dict[str, Any]:
    buckets = window.buckets(_P + "prediction_age_seconds", route=name)
    counts, below = [], 0.0
    for bound, cumulative in buckets:
        counts.append({"le": "+Inf" if math.isinf(bound) else bound, "count": cumulative - below})
        below = cumulative
    return {
        "buckets": counts,
        "count": below,
        "p50_s": quantile(0.5, buckets),
        "p99_s": quantile(0.99, buckets),
    }


def stream_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """A stream's row: what :func:`~hybridserve.streaming.status.stream_status` says of it."""
    return {
        "stream": status["stream"],
        "route": status.get("route"),
        "source": status.get("source"),
        "lag": status.get("lag"),
        "pending": status.get("pending"),
        "events_per_s": status.get("events_per_s"),
        "dead_letters": status.get("dead_letters"),
        "consumers": len(status.get("consumers", [])),
        "error": status.get("error"),
    }


def run_view(run: Mapping[str, Any]) -> dict[str, Any]:
    """A batch run's row, from its manifest (:meth:`RunManifest.to_dict`)."""
    seconds = run.get("seconds")
    rows = int(run.get("rows_read", 0))
    return {
        "run_id": run["run_id"],
        "status": run.get("status"),
        "model": run.get("model_ref"),
        "started_at": run.get("started_at"),
        "rows": rows,
        "scored": run.get("rows_scored"),
        "rejected": run.get("rows_rejected"),
        "seconds": seconds,
        "rows_per_s": round(rows / seconds, 1) if seconds else None,
        "error": run.get("error"),
    }
