"""The light hot-path metrics expose exactly what prometheus-client's own would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from hybridserve.observability.metrics import LightCounter, LightHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
VALUES = [0.0005, 0.001, 0.003, 0.01, 0.05, 0.2, 0.99, 1.0, 7.5, 0.0]


def _lines(registry: CollectorRegistry, prefix: str) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(x for x in text.splitlines() if x.startswith(prefix) and "_created" not in x)


def test_a_light_histogram_renders_like_a_prometheus_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    light = LightHistogram("h_seconds", "doc", ["stage"], buckets=BUCKETS, registry=ours)
    real = Histogram("h_seconds", "doc", ["stage"], buckets=BUCKETS, registry=theirs)
    for v in VALUES[:4]:
        light.labels("a").observe(v)
    light.labels("a").observe_many(VALUES[4:])
    light.labels("b").observe_many([])
    for v in VALUES:
        real.labels("a").observe(v)
    real.labels("b")
    assert _lines(ours, "h_seconds_") == _lines(theirs, "h_seconds_")
    assert 'h_seconds_bucket{le="0.001",stage="a"} 3.0' in _lines(ours, "h_seconds_")


def test_a_light_counter_renders_like_a_prometheus_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    light = LightCounter("c_total", "doc", ["route"], registry=ours)
    real = Counter("c_total", "doc", ["route"], registry=theirs)
    for amount in (1, 2.5, 0):
        light.labels("x").inc(amount)
        real.labels("x").inc(amount)
    assert _lines(ours, "c_total") == _lines(theirs, "c_total") == ['c_total{route="x"} 3.5']
