"""A stream consumer's Prometheus metrics, and a tiny HTTP server that exposes them.

The consumer is its own process, so it has its own registry and its own ``/metrics``
(``--metrics-port``); nothing here depends on the web server.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hybridserve.observability.metrics import BATCH_BUCKETS, LightHistogram

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StreamMetrics:
    def __init__(self, stream: str, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"hybridserve_stream_{name}", doc, ["stream"], registry=r)

        self.read = counter("events_read_total", "Entries read from the source.").labels(stream)
        self.scored = counter("events_scored_total", "Events scored.").labels(stream)
        self.duplicates = counter("duplicates_total", "Duplicate events dropped.").labels(stream)
        self.late = counter("late_total", "Events beyond the allowed lateness.").labels(stream)
        self.dead = counter("dead_lettered_total", "Entries dead-lettered.").labels(stream)
        self.not_scored = counter(
            "not_scored_total", "Events the Scorer rejected (dead-lettered with its reason)."
        ).labels(stream)
        self.failed_alone = counter(
            "failed_alone_total",
            "Events that failed alone when their batch was split (dead-lettered).",
        ).labels(stream)
        self.failures = counter("batch_failures_total", "Micro-batches that failed.").labels(stream)
        self.conflicts = counter(
            "commit_conflicts_total",
            "Micro-batch commits redone because another consumer moved an entity's state first.",
        ).labels(stream)
        self.prediction_log = Counter(
            "hybridserve_prediction_log_total",
            "Prediction log rows by route and outcome (written, dropped, failed).",
            ["route", "outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "hybridserve_stream_batch_size",
            "Entries per micro-batch.",
            ["stream"],
            buckets=(*BATCH_BUCKETS, 1024, 2048, 4096),
            registry=r,
        ).labels(stream)
        self.event_latency = LightHistogram(
            "hybridserve_stream_event_latency_seconds",
            "From an event's time to its committed prediction.",
            ["stream"],
            buckets=LAG_BUCKETS,
            registry=r,
        ).labels(stream)
        self.read_latency = LightHistogram(
            "hybridserve_stream_read_latency_seconds",
            "From reading an event to its committed prediction.",
            ["stream"],
            buckets=LAG_BUCKETS,
            registry=r,
        ).labels(stream)
        self.lag = Gauge(
            "hybridserve_stream_lag",
            "Entries not yet delivered to the group.",
            ["stream"],
            registry=r,
        ).labels(stream)
        self.in_flight = Gauge(
            "hybridserve_stream_in_flight",
            "Entries read, not yet acknowledged.",
            ["stream"],
            registry=r,
        ).labels(stream)
        self.model_version = Gauge(
            "hybridserve_stream_model_version",
            "Model version scoring the stream.",
            ["stream"],
            registry=r,
        ).labels(stream)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: StreamMetrics, port: int, host: str = "0.0.0.0") -> asyncio.Server:
    """Serve ``GET /metrics`` on ``host:port``; close the returned server to stop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                body, status = metrics.render(), b"200 OK"
            else:
                body, status = b"not found\n", b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; version=0.0.4\r\n"
                b"content-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)
