"""One scrape, every worker: counters and histograms summed over the server's processes.

With ``serve --workers N`` each request reaches one worker, and so does each scrape of
``/metrics``: alone, a scrape would show a random worker's share. Each worker therefore writes
a snapshot of its counters and histograms to a directory the workers share (``serve`` makes
one per run and gives it as ``HYBRIDSERVE_METRICS_DIR``), once a second and at every scrape,
and the worker that answers a scrape adds up every snapshot but its own, then its own live
values. A worker that died leaves its last snapshot, so the sums never go down (a counter must
not) when uvicorn replaces it. Gauges (breaker states, the serving model version) are the
answering worker's own.

prometheus-client's multiprocess mode does the same for its own metric types with one mmap
file per metric and process; the request path here records into the light counters of
``metrics.py`` instead, whose values a snapshot copies under their locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from hybridserve.observability.metrics import LightCounter, LightHistogram, Metrics

log = logging.getLogger("hybridserve.metrics")
ENV = "HYBRIDSERVE_METRICS_DIR"


class SharedMetrics:
    def __init__(self, metrics: Metrics, directory: Path, *, interval: float = 1.0) -> None:
        self.metrics = metrics
        self.directory = directory
        self.interval = interval
        self.file = directory / f"worker-{os.getpid()}.json"
        self._light = [
            m for m in vars(metrics).values() if isinstance(m, LightCounter | LightHistogram)
        ]

    def snapshot(self) -> dict[str, list[Any]]:
        """This worker's counters and histograms: name -> [[labels, value or [counts, sum]]]."""
        out: dict[str, list[Any]] = {}
        for metric in self._light:
            rows = []
            for key, child in metric._items():
                with child._lock:
                    if isinstance(metric, LightCounter):
                        rows.append([list(key), child.value])
                    else:
                        rows.append([list(key), [list(child.counts), child.sum]])
            out[metric.name] = rows
        return out

    def write(self) -> None:
        """Replace this worker's snapshot file (atomically: readers see whole files only)."""
        tmp = self.file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        tmp.replace(self.file)

    def others(self) -> Iterator[dict[str, list[Any]]]:
        for path in self.directory.glob("worker-*.json"):
            if path == self.file:
                continue
            try:
                yield orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:  # a worker mid-write, or gone
                log.debug("skipping metrics snapshot %s: %s", path, exc)

    async def run(self) -> None:
        """Keep this worker's snapshot fresh (every ``interval``) for the others' scrapes."""
        while True:
            try:
                await asyncio.to_thread(self.write)
            except OSError as exc:
                log.warning("cannot write the metrics snapshot %s: %s", self.file, exc)
            await asyncio.sleep(self.interval)

    def render(self) -> bytes:
        """The exposition text: summed counters and histograms, this worker's gauges."""
        with contextlib.suppress(OSError):
            self.write()
        totals: dict[str, dict[tuple[str, ...], Any]] = {m.name: {} for m in self._light}
        for snap in [self.snapshot(), *self.others()]:
            for name, rows in snap.items():
                into = totals.setdefault(name, {})
                for labels, value in rows:
                    key = tuple(labels)
                    if isinstance(value, list):
                        counts, total = value
                        have = into.get(key)
                        if have is None:
                            into[key] = [list(counts), total]
                        else:
                            have[0] = [a + b for a, b in zip(have[0], counts, strict=True)]
                            have[1] += total
                    else:
                        into[key] = into.get(key, 0.0) + value
        registry = CollectorRegistry()
        registry.register(_Summed(self._light, totals))
        gauges = [
            c
            for c in list(self.metrics.registry._collector_to_names)
            if not isinstance(c, LightCounter | LightHistogram)
        ]
        for gauge in gauges:
            registry.register(gauge)
        return generate_latest(registry)


class _Summed(Collector):
    def __init__(
        self,
        light: list[LightCounter | LightHistogram],
        totals: dict[str, dict[tuple[str, ...], Any]],
    ) -> None:
        self.light = light
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        for metric in self.light:
            rows = self.totals.get(metric.name, {})
            if isinstance(metric, LightCounter):
                family: Metric = CounterMetricFamily(
                    metric.name, metric.documentation, labels=metric.labelnames
                )
                for key, value in rows.items():
                    family.add_metric(list(key), value)  # type: ignore[attr-defined]
            else:
                family = HistogramMetricFamily(
                    metric.name, metric.documentation, labels=metric.labelnames
                )
                for key, (counts, total) in rows.items():
                    family.add_metric(list(key), metric.buckets(counts), total)
            yield family


def from_env(metrics: Metrics) -> SharedMetrics | None:
    """The shared snapshot directory ``serve --workers N`` set up, if any."""
    directory = os.environ.get(ENV)
    if not directory:
        return None
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return SharedMetrics(metrics, path)
