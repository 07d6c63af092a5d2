"""The dashboard's figures from scrapes: quantiles, rates between snapshots, the window, the
model roles of a route, and sums over workers (through the same text ``/metrics`` answers)."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from hybridserve.config import (
    EntityConfig,
    Project,
    RolloutConfig,
    RouteConfig,
)
from hybridserve.observability.dashboard import Dashboard, quantile, run_view, stream_view
from hybridserve.observability.metrics import Metrics, RouteMetrics
from hybridserve.observability.shared import SharedMetrics

INF = math.inf


def _project(**route: object) -> Project:
    return Project(
        entities={"card": EntityConfig(key="card_id")},
        routes={"fraud": RouteConfig(model="fraud@production", entity="card", **route)},  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(0.1, 5), (0.2, 10), (INF, 10)], 0.1),
        (0.75, [(0.1, 5), (0.2, 10), (INF, 10)], 0.15),  # linear inside the bucket
        (0.5, [(0.1, 0), (0.2, 4), (INF, 4)], 0.15),
        (0.99, [(0.1, 5), (0.2, 5), (INF, 10)], 0.2),  # in +Inf: the last finite bound
        (0.5, [(0.1, 0), (INF, 0)], None),
        (0.5, [], None),
    ],
)
def test_quantile_from_buckets_like_promql(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    got = quantile(q, buckets)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_rates_are_the_change_since_the_previous_snapshot() -> None:
    metrics = Metrics()
    route = RouteMetrics(metrics, "fraud")
    dash = Dashboard(window=60, min_interval=1)
    project = _project()
    route.answered("batch").inc(10)
    first = dash.view(metrics.render(), project, at=1000.0)
    assert first["routes"]["fraud"]["answers"]["batch"] == {"total": 10, "per_s": None}
    route.answered("batch").inc(6)
    route.answered("fallback:model").inc(2)
    # A poll less than min_interval later is measured against the older snapshot.
    dash.view(metrics.render(), project, at=1001.5)
    route.answered("batch").inc(2)
    view = dash.view(metrics.render(), project, at=1002.0)
    answers = view["routes"]["fraud"]["answers"]
    assert view["rate_seconds"] == 2.0
    assert answers["batch"] == {"total": 18, "per_s": 4.0}
    assert answers["fallback:model"] == {"total": 2, "per_s": 1.0}
    # The poll at 1002 came too soon to be kept: the next rate is against 1001.5.
    later = dash.view(metrics.render(), project, at=1004.0)
    assert later["routes"]["fraud"]["answers"]["batch"]["per_s"] == 0.8
    route.unavailable.inc(3)
    later = dash.view(metrics.render(), project, at=1006.0)
    assert later["routes"]["fraud"]["answers"]["batch"]["per_s"] == 0.0
    assert later["routes"]["fraud"]["errors"] == {"unavailable": 3}


def test_latency_and_hit_rates_are_over_the_window() -> None:
    metrics = Metrics()
    route = RouteMetrics(metrics, "fraud")
    dash = Dashboard(window=60, min_interval=1)
    dash.started = 0.0
    project = _project(latency_budget="20ms", budgets={"store": "5ms", "model": "10ms"})
    for _ in range(99):
        route.total.child.observe(0.0015)  # in the (1 ms, 2 ms] bucket
    route.total.child.observe(0.3)
    route.answered("cache").inc(3)
    route.answered("online").inc(1)
    route.l1_hits.inc(3)
    view = dash.view(metrics.render(), project, at=10.0)
    stage = view["routes"]["fraud"]["stages"]["total"]
    assert view["window_seconds"] == 10.0  # the process's life: no older snapshot yet
    assert stage["count"] == 100 and stage["budget_ms"] == 20.0
    assert stage["p50_ms"] == pytest.approx(1.505)
    assert stage["p99_ms"] == pytest.approx(2.0)
    assert stage["over_budget"] is False
    assert view["routes"]["fraud"]["cache"]["l1"] == {"hits": 3, "hit_rate": 0.75}
    # 70 s on: the window is the last 60 s, in which only slow answers came.
    for _ in range(10):
        route.total.child.observe(0.04)
    route.answered("online").inc(4)
    view = dash.view(metrics.render(), project, at=80.0)
    stage = view["routes"]["fraud"]["stages"]["total"]
    assert view["window_seconds"] == 70.0
    assert stage["count"] == 10 and stage["total_count"] == 110
    assert stage["p99_ms"] == pytest.approx(49.7) and stage["over_budget"] is True
    assert view["routes"]["fraud"]["cache"]["l1"] == {"hits": 3, "hit_rate": 0.0}
    stages = view["routes"]["fraud"]["stages"]
    assert stages["store"]["p50_ms"] is None and stages["store"]["over_budget"] is None
    assert [stages[s]["budget_ms"] for s in ("store", "features", "model")] == [5.0, None, 10.0]


def test_age_distribution_counts_answers_per_bucket() -> None:
    metrics = Metrics()
    route = RouteMetrics(metrics, "fraud")
    for age in (0.5, 5, 5, 7200, 10**7):
        route.age.observe(age)
    age = Dashboard().view(metrics.render(), _project())["routes"]["fraud"]["age"]
    counts = {b["le"]: b["count"] for b in age["buckets"]}
    assert counts[1.0] == 1 and counts[10.0] == 2 and counts[4 * 3600.0] == 1
    assert counts["+Inf"] == 1 and age["count"] == 5


def test_model_roles_with_canary_share_and_shadow_agreement() -> None:
    metrics = Metrics()
    metrics.set_model("fraud", "primary", "fraud", 3)
    metrics.set_model("fraud", "canary", "fraud", 4)
    metrics.set_model("fraud", "shadow", "fraud", 5)
    metrics.shadow.labels("fraud", "agree").inc(9)
    metrics.shadow.labels("fraud", "disagree").inc(1)
    metrics.shadow.labels("fraud", "dropped").inc(5)
    project = _project(
        canary=RolloutConfig(model="fraud/4", percent=10),
        shadow=RolloutConfig(model="fraud/5", percent=50),
    )
    models = Dashboard().view(metrics.render(), project)["routes"]["fraud"]["models"]
    assert [(m["role"], m["version"], m["percent"]) for m in models] == [
        ("primary", 3, 90.0),
        ("canary", 4, 10.0),
        ("shadow", 5, 50.0),
    ]
    assert models[2]["agreement"] == 0.9 and models[2]["compared"] == 10


def test_breaker_states_are_named() -> None:
    metrics = Metrics()
    metrics.breaker_state.labels("feature_store").set(2)
    metrics.breaker_state.labels("prediction_store").set(0)
    view = Dashboard().view(metrics.render(), _project())
    assert view["breakers"] == {"feature_store": "open", "prediction_store": "closed"}


def test_every_workers_answers_are_counted(tmp_path: Path) -> None:
    """The dashboard reads what a scrape answers, so another worker's snapshot is summed in."""
    metrics = Metrics()
    RouteMetrics(metrics, "fraud").answered("batch").inc(2)
    other = {"hybridserve_requests_total": [[["fraud", "batch", "ok"], 5.0]]}
    (tmp_path / "worker-1.json").write_bytes(orjson.dumps(other))
    shared = SharedMetrics(metrics, tmp_path)
    view = Dashboard().view(shared.render(), _project())
    assert view["routes"]["fraud"]["answers"]["batch"]["total"] == 7


def test_stream_and_batch_rows() -> None:
    stream = stream_view(
        {
            "stream": "tx",
            "route": "fraud",
            "source": "redis",
            "lag": 4,
            "pending": 1,
            "dead_letters": 2,
            "events_per_s": 12.5,
            "consumers": [{}, {}],
        }
    )
    assert stream["lag"] == 4 and stream["dead_letters"] == 2 and stream["consumers"] == 2
    run = run_view(
        {
            "run_id": "r1",
            "status": "completed",
            "model_ref": "fraud/1",
            "rows_read": 400,
            "rows_scored": 398,
            "rows_rejected": 2,
            "seconds": 0.5,
        }
    )
    assert run["rows_per_s"] == 800.0 and run["rejected"] == 2
    assert run_view({"run_id": "r2", "status": "running", "seconds": None})["rows_per_s"] is None
