"""The prediction log: sampled answers of every path, written off the hot path in batches.

Every path hands its answers to one :class:`PredictionLog`: the router (``routing/logged.py``,
called from one place in the router), the stream pipeline and the batch runner. What it keeps
per answer is one row of :data:`~hybridserve.quality.sinks.PREDICTION_SCHEMA`: the request,
event or run id, route, entity, model and version, source, score, degraded flag, latency and
the feature values (or their fingerprint, as the route's ``log.features`` says).

Sampling is per route and source (``routes.R.log``: ``online``, ``stream``, ``batch``). A path
first reads one attribute (``log.online``, ``log.stream``, ``log.batch``: does any route
sample it?) and pays nothing more when it is ``False``; then :meth:`PredictionLog.sampled`
draws per answer.

The writer is a thread that takes rows from a bounded queue, up to ``batch_rows`` at a time
or whatever arrived within ``flush_interval``, and appends them to the sink grouped by route.
``offer`` never waits: when the queue is full (the writer fell behind, or was stopped), the
row is dropped and counted (``hybridserve_prediction_log_total{outcome="dropped"}``), so a
slow disk or Redis costs log rows, never answer time. A failing sink costs the batch it was
writing (counted as ``failed``), and the writer goes on.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hybridserve.config import LogSampling, Project
from hybridserve.quality.sinks import Sink, open_sink
from hybridserve.records import PredictionRecord

log = logging.getLogger("hybridserve.quality.log")

Count = Callable[[str, str, int], None]
"""Called with (route, outcome, n): outcome ``written``, ``dropped`` or ``failed``."""


@dataclass(slots=True)
class _Flush:
    done: threading.Event


_STOP = object()


def encode_features(values: Mapping[str, Any] | None, how: str) -> tuple[str | None, str | None]:
    """(features JSON, fingerprint) as a route's ``log.features`` keeps them."""
    if values is None or how == "none":
        return None, None
    text = orjson.dumps(dict(values), option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    if how == "fingerprint":
        return None, hashlib.sha256(text).hexdigest()[:16]
    return text.decode(), None


def row(
    *,
    ts: float,
    route: str,
    source: str,
    entity: str,
    model: str | None,
    model_version: int | None,
    score: float | None,
    label: Any = None,
    degraded: bool = False,
    latency_ms: float | None = None,
    request_id: str | None = None,
    run_id: str | None = None,
    event_id: str | None = None,
    features: Mapping[str, Any] | None = None,
    keep: str = "values",
) -> dict[str, Any]:
    """One logged answer, as the sinks store it."""
    feats, fingerprint = encode_features(features, keep)
    return {
        "ts": ts,
        "route": route,
        "source": source,
        "entity": entity,
        "request_id": request_id,
        "run_id": run_id,
        "event_id": event_id,
        "model": model,
        "model_version": model_version,
        "score": score,
        "label": None if label is None else orjson.dumps(label, default=str).decode(),
        "degraded": degraded,
        "latency_ms": latency_ms,
        "features": feats,
        "fingerprint": fingerprint,
    }


def log_records(
    plog: PredictionLog,
    records: Sequence[PredictionRecord],
    features: Sequence[Mapping[str, Any] | None],
    *,
    source: str,
    latency_ms: Sequence[float | None] | None = None,
) -> int:
    """Offer the sampled ones of ``records`` (with their ``features``) to ``plog``: what the
    stream pipeline and the batch runner log. Returns how many were offered."""
    offered = 0
    for i, r in enumerate(records):
        if not plog.sampled(r.route, source):
            continue
        values = features[i]
        plog.offer(
            row(
                ts=r.computed_at,
                route=r.route,
                source=r.source,
                entity=r.entity,
                model=r.model,
                model_version=r.model_version,
                score=r.score,
                label=r.label,
                latency_ms=None if latency_ms is None else latency_ms[i],
                request_id=r.request_id,
                run_id=r.run_id,
                event_id=r.event_id,
                features=values,
                keep=plog.keep(r.route),
            ),
            values,
        )
        offered += 1
    return offered


class PredictionLog:
    """Sampling, the bounded queue and its writer thread, in front of one :class:`Sink`."""

    def __init__(
        self,
        project: Project,
        sink: Sink | None = None,
        *,
        on_count: Count | None = None,
        observers: Iterable[Callable[[dict[str, Any]], None]] = (),
    ) -> None:
        cfg = project.prediction_log
        self.sampling: dict[str, LogSampling] = {r: c.log for r, c in project.routes.items()}
        rates = list(self.sampling.values())
        self.online = any(s.online > 0 for s in rates)
        """Does any route sample online answers? The router's one check when none does."""
        self.stream = any(s.stream > 0 for s in rates)
        self.batch = any(s.batch > 0 for s in rates)
        self._project = project
        self._sink = sink
        self._queue: queue.Queue[Any] = queue.Queue(cfg.queue)
        self._batch_rows = cfg.batch_rows
        self._interval = cfg.flush_interval
        self.on_count = on_count
        self.observers = list(observers)
        """Called with each offered row (plus its feature ``values``): the drift monitor."""
        self._thread: threading.Thread | None = None
        self._closed = False
        self.counts: Counter[tuple[str, str]] = Counter()
        self._count_lock = threading.Lock()

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            self._sink = open_sink(self._project)
        return self._sink

    # -- the paths' side -----------------------------------------------------------------

    def sampled(self, route: str, source: str) -> bool:
        """Draw whether to log one answer of ``route`` from ``source``."""
        s = self.sampling.get(route)
        if s is None:
            return False
        rate: float = getattr(s, source, 0.0)
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def keep(self, route: str) -> str:
        """How ``route`` keeps feature values: ``values``, ``fingerprint`` or ``none``."""
        s = self.sampling.get(route)
        return "none" if s is None else s.features

    def offer(self, record: dict[str, Any], features: Mapping[str, Any] | None = None) -> bool:
        """Queue one row for the writer without waiting; ``False`` (counted) when dropped.

        ``features`` (the values, whatever the route logs of them) go to the observers, the
        in-process drift monitor.
        """
        for observe in self.observers:
            observe({**record, "values": features})
        if self._closed:
            self._count(record["route"], "dropped", 1)
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._count(record["route"], "dropped", 1)
            return False
        return True

    def _count(self, route: str, outcome: str, n: int) -> None:
        with self._count_lock:
            self.counts[(route, outcome)] += n
        if self.on_count is not None:
            self.on_count(route, outcome, n)

    def count(self, outcome: str, route: str | None = None) -> int:
        """Rows ``written``, ``dropped`` or ``failed`` (for ``route``, or all routes)."""
        with self._count_lock:
            items = self.counts.items()
            return sum(n for (r, o), n in items if o == outcome and route in (None, r))

    # -- the writer --------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    def start_for(self, *sources: str) -> None:
        """Start the writer when some route samples one of ``sources``."""
        if any(getattr(self, s) for s in sources):
            self.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            items: list[Any] = []
            try:
                items.append(self._queue.get(timeout=self._interval))
            except queue.Empty:
                continue
            while len(items) < self._batch_rows:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [i for i in items if isinstance(i, dict)]
            self._write(rows)
            for i in items:
                if isinstance(i, _Flush):
                    self._sink_flush()
                    i.done.set()
            if any(i is _STOP for i in items):
                self._sink_flush()
                return

    def _write(self, rows: list[dict[str, Any]]) -> None:
        by_route: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_route.setdefault(r["route"], []).append(r)
        for route, group in by_route.items():
            try:
                self.sink.append("predictions", route, group)
            except Exception as exc:  # a failing sink costs this batch, never the writer
                log.warning("prediction log: %d rows of route %s lost: %s", len(group), route, exc)
                self._count(route, "failed", len(group))
            else:
                self._count(route, "written", len(group))

    def _sink_flush(self) -> None:
        try:
            self.sink.flush()
        except Exception as exc:
            log.warning("prediction log: cannot close the open files: %s", exc)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written and readable; ``False`` on timeout
        (or when the writer is not running)."""
        if not self.running:
            return False
        marker = _Flush(threading.Event())
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (within ``timeout``), stop the writer and close the sink.
        Rows offered after this are dropped and counted."""
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                log.warning("prediction log: writer did not drain its queue at close")
            thread.join(timeout)
        self._thread = None
        if self._sink is not None:
            try:
                self._sink.close()
            except Exception as exc:
                log.warning("prediction log: closing the sink failed: %s", exc)
