"""Shadow scoring: a copy of live traffic scored on another version, off the request path.

The router offers each computed answer; a bounded queue holds the copies (a full queue drops
the copy and counts it, never slowing the response), and one worker task scores them on the
shadow version through its own micro-batcher, then records agreement with the primary:
metrics for every comparison, and a log line for a sample of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hybridserve.routing.rollout import in_share

if TYPE_CHECKING:
    from hybridserve.features.online import OnlineFeatureStore
    from hybridserve.observability.metrics import Metrics
    from hybridserve.records import PredictionRecord
    from hybridserve.routing.models import LoadedModel

log = logging.getLogger("hybridserve.shadow")
_Copy = tuple[str, "LoadedModel", list[str], list[dict[str, Any] | None], list["PredictionRecord"]]
"""Route, the model to score on, keys, request features, the records to compare with."""
AGREE_WITHIN = 0.05
"""Scores closer than this (and with the same label, when labelled) agree."""
LOG_EVERY = 100


class ShadowScorer:
    """Scores offered copies on the model offered with them (the route's ``shadow``, or a
    rollout's candidate), with features read from ``features``; it needs nothing else of the
    router that offers them. ``on_compare(route, model, primary_record, agreed)`` hears every
    comparison."""

    def __init__(
        self,
        features: OnlineFeatureStore,
        metrics: Metrics,
        *,
        maxsize: int = 1000,
        on_compare: Callable[[str, LoadedModel, PredictionRecord, bool], None] | None = None,
    ) -> None:
        self.features = features
        self.metrics = metrics
        self.maxsize = maxsize
        self.on_compare = on_compare
        self._queue: asyncio.Queue[_Copy] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.compared = 0

    def offer(
        self,
        route: str,
        model: LoadedModel,
        percent: float,
        keys: Sequence[str],
        extra: Sequence[dict[str, Any] | None],
        records: Sequence[PredictionRecord],
    ) -> None:
        """Queue a copy of ``records`` (those in the ``percent`` share) for scoring on
        ``model``."""
        chosen = [r for r in records if in_share(r.entity, percent, "shadow:" + route)]
        if not chosen:
            return
        if self._queue is None:
            self._queue = asyncio.Queue(self.maxsize)
            self._worker = asyncio.get_running_loop().create_task(self._run())
        by_key = dict(zip(keys, extra, strict=True))
        try:
            self._queue.put_nowait(
                (
                    route,
                    model,
                    [r.entity for r in chosen],
                    [by_key.get(r.entity) for r in chosen],
                    list(chosen),
                )
            )
        except asyncio.QueueFull:
            self.metrics.child("shadow", route, "dropped").inc(len(chosen))

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            route, model, keys, extra, primary = await self._queue.get()
            try:
                await self._compare(route, model, keys, extra, primary)
            except Exception as exc:  # a failing shadow must never hurt serving
                self.metrics.child("shadow", route, "error").inc(len(keys))
                log.debug("shadow scoring failed: %s", exc)
            finally:
                self._queue.task_done()

    async def _compare(
        self,
        route: str,
        model: LoadedModel,
        keys: list[str],
        extra: list[dict[str, Any] | None],
        primary: list[PredictionRecord],
    ) -> None:
        rows = await self.features.read_route(route, keys)
        values = []
        for feature_row, req in zip(rows, extra, strict=True):
            v = feature_row.plain()
            v.update(req or {})
            values.append(v)
        prepared = model.scorer.prepare(keys, values)
        if prepared.errors:
            self.metrics.child("shadow", route, "error").inc(len(prepared.errors))
        if not prepared.rows:
            return
        prediction = await model.batcher.predict(prepared.matrix)
        threshold = model.scorer.threshold
        for pos, row in enumerate(prepared.rows):
            p = primary[row]
            s = float(prediction.scores[pos])
            delta = abs(s - p.score)
            same_label = threshold is None or (s >= threshold) == (p.score >= threshold)
            outcome = "agree" if delta <= AGREE_WITHIN and same_label else "disagree"
            self.metrics.child("shadow", route, outcome).inc()
            self.metrics.child("shadow_delta", route).observe(delta)
            if self.on_compare is not None:
                self.on_compare(route, model, p, outcome == "agree")
            self.compared += 1
            if self.compared % LOG_EVERY == 1:
                log.info(
                    "shadow %s entity=%s primary=%s/%s %.4f shadow=%s %.4f %s",
                    route,
                    p.entity,
                    p.model,
                    p.model_version,
                    p.score,
                    model.label,
                    s,
                    outcome,
                )

    async def drain(self) -> None:
        """Wait until every queued copy has been compared (tests, shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
