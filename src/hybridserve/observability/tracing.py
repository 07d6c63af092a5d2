"""Distributed tracing with OpenTelemetry: off unless configured, nothing paid when off.

When on (``tracing: {enabled: true}`` in the project file, or any of the standard
``OTEL_TRACES_EXPORTER`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
environment variables set), every predict request is a server span, continuing the caller's
W3C ``traceparent``, with a child span per stage the route's metrics already time (``cache``
for L1, ``store``, ``features``, ``model`` for queueing and running the micro-batch, ``fallback``
and one span per fallback step); its attributes say the route, how many entities, which sources
answered, which model version, and whether the answer was degraded. Write-backs, batch chunks
and stream micro-batches get spans of their own. Sampling is the SDK's (``OTEL_TRACES_SAMPLER``,
``OTEL_TRACES_SAMPLER_ARG``) or ``tracing.sample_ratio``, parent-based, so a sampled caller's
trace is always continued.

The SDK is the extra ``otel`` (``pip install 'hybridserve[otel]'``), imported only when tracing
is on. Off, :data:`OFF` is a :class:`Tracing` whose ``enabled`` is false: the stage timers and the
request path check that one attribute and do nothing else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

_UNSAMPLED: ContextVar[bool] = ContextVar("hybridserve_unsampled_request", default=False)
"""Set while a request the sampler did not pick runs (and in the tasks it starts)."""
_ENV = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Tracing:
    """Where spans go; ``enabled`` false means nowhere, and costs nothing."""

    __slots__ = ("_propagator", "enabled", "provider", "tracer")

    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: Any = provider.get_tracer("hybridserve") if provider is not None else None
        self._propagator: Any = None
        if self.enabled:
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            self._propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def request(self, name: str, traceparent: str | None, **attributes: Any) -> Iterator[Any]:
        """A server span, the child of the caller's ``traceparent`` when it sent one. One the
        sampler did not pick is not made current: the request runs with :data:`_UNSAMPLED`
        set, so its stages build nothing (attaching and detaching the span, and asking for it
        in each stage, cost more than the span itself)."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        parent = None
        if traceparent:
            parent = self._propagator.extract({"traceparent": traceparent})
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        if not span.is_recording():
            token = _UNSAMPLED.set(True)
            try:
                yield span
            finally:
                _UNSAMPLED.reset(token)
            return
        with trace.use_span(span, end_on_exit=True):
            yield span

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        """A span, the child of whatever span is current (none: a root span). Inside a
        request the sampler did not pick, nothing is built: its children would not be
        recorded either, and building them cost a third of a stored answer's time at 1%. (A
        sampled parent that has ended, as a request's by the time its write-back runs, still
        gets its children.)"""
        if not self.enabled or _UNSAMPLED.get():
            return contextlib.nullcontext()
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid and not context.trace_flags.sampled:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]

    def annotate(self, **attributes: Any) -> None:
        """Set attributes on the current span (nothing when tracing is off or it is not
        recorded)."""
        if self.enabled and not _UNSAMPLED.get():
            from opentelemetry import trace

            span = trace.get_current_span()
            if span.is_recording():
                span.set_attributes(attributes)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


OFF = Tracing()


def wanted(config_enabled: bool, env: Mapping[str, str] = os.environ) -> bool:
    """Is tracing on: asked for in the project file, or an OTel exporter set in the environment."""
    if config_enabled:
        return True
    return any(env.get(k) and env.get(k) != "none" for k in _ENV)


def configure(
    enabled: bool, sample_ratio: float | None, service: str, exporter: Any = None
) -> Tracing:
    """The process's tracing: :data:`OFF`, or an SDK provider exporting in batches.

    ``exporter``: where spans go (tests pass an in-memory one); default the OTLP exporter the
    environment configures, else the console.
    """
    if not wanted(enabled) and exporter is None:
        return OFF
    from hybridserve._optional import require

    require("opentelemetry.sdk", "otel")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    kwargs: dict[str, Any] = {"resource": Resource.create({"service.name": service})}
    if sample_ratio is not None:
        kwargs["sampler"] = ParentBased(TraceIdRatioBased(sample_ratio))
    provider = TracerProvider(**kwargs)
    if exporter is not None:  # a test's: every span at once
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_default_exporter()))
    return Tracing(provider)


def _default_exporter() -> Any:
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from hybridserve._optional import require

    module = require("opentelemetry.exporter.otlp.proto.http.trace_exporter", "otel")
    return module.OTLPSpanExporter()
