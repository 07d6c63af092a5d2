"""Opens what a project file declares (registry, stores) and builds Scorers from it.

The CLI, the server, batch jobs and stream consumers all start here, so they open the same
backends the same way from the same project file.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hybridserve.config import Project
from hybridserve.errors import InvalidInput
from hybridserve.features.online import OnlineFeatureStore, merge_request_features
from hybridserve.predictions.store import PredictionStore
from hybridserve.quality.drift import DriftMonitor
from hybridserve.quality.log import PredictionLog
from hybridserve.quality.profile import Profile
from hybridserve.records import now
from hybridserve.scoring import Scorer, ScoreResult
from hybridserve.storage import KVStore, open_store

if TYPE_CHECKING:
    from hybridserve.registry import Registry


@dataclass
class Services:
    project: Project
    registry: Registry
    online_kv: KVStore
    predictions_kv: KVStore
    features: OnlineFeatureStore
    predictions: PredictionStore
    _scorers: dict[tuple[str, str], Scorer] = field(default_factory=dict)
    prediction_log: PredictionLog = field(init=False)
    """Sampled answers of every path (its writer starts where a path samples)."""

    drift: DriftMonitor = field(init=False)
    """Drift of each route's recently logged answers (fed by the prediction log)."""

    def __post_init__(self) -> None:
        self.prediction_log = PredictionLog(self.project)
        self.drift = DriftMonitor(self.project, self.reference_profile)
        self.prediction_log.observers.append(self.drift.observe)

    @classmethod
    def open(cls, project: Project) -> Services:
        from hybridserve.registry import Registry

        registry = Registry.from_project(project)
        prefix = project.stores.prefix
        online_url = project.url(project.stores.online)
        online = open_store(online_url, prefix)
        pred_url = project.url(project.stores.predictions_url)
        predictions = online if pred_url == online_url else open_store(pred_url, prefix)
        return cls(
            project=project,
            registry=registry,
            online_kv=online,
            predictions_kv=predictions,
            features=OnlineFeatureStore(project, online),
            predictions=PredictionStore.open(project, predictions),
        )

    def scorer(self, route: str, model_ref: str | None = None) -> Scorer:
        """A Scorer for ``route`` with its model (or ``model_ref``), loaded once and reused."""
        ref = model_ref or self.project.route(route).model
        version = self.registry.get(ref)
        key = (route, version.ref)
        scorer = self._scorers.get(key)
        if scorer is None:
            scorer = Scorer(self.project, route, self.registry.load(version.ref))
            self._scorers[key] = scorer
        return scorer

    async def score_entities(
        self,
        route: str,
        entities: Sequence[str],
        *,
        model_ref: str | None = None,
        write: bool = False,
        at: float | None = None,
    ) -> ScoreResult:
        """Score ``entities`` now from their online features through the route's Scorer (or
        ``model_ref``'s), without a server; ``write`` stores the records (source ``online``).

        What ``hybridserve score`` and the demo's local step run.
        """
        if not entities:
            raise InvalidInput("give at least one entity key")
        scorer = self.scorer(route, model_ref)
        at = now() if at is None else at
        rows = await self.features.read_route(route, entities, at=at)
        values = [merge_request_features(r, None, at) for r in rows]
        as_of = [r.as_of if r.as_of is not None else at for r in rows]
        result = scorer.score_rows(entities, values, as_of=as_of, source="online", request_id="cli")
        if write and result.records:
            await self.predictions.put(result.records)
        return result

    def reference_profile(self, model: str, version: int) -> Profile | None:
        """The reference profile stored with ``model/version`` (for drift), or ``None``."""
        found = self.registry.reference(model, version)
        return None if found is None else Profile.from_dict(found)

    async def close(self) -> None:
        await asyncio.to_thread(self.prediction_log.close)
        await self.online_kv.close()
        if self.predictions_kv is not self.online_kv:
            await self.predictions_kv.close()
        self.registry.close()


def freeze_loaded() -> None:
    """Move everything loaded so far (libraries, models, config: it lives as long as the
    process) out of the garbage collector's sight, so a full collection under load walks only
    request or batch garbage instead of pausing the loop for tens of milliseconds."""
    gc.collect()
    gc.freeze()


def batch_gc() -> None:
    """Collect the youngest generation every 50,000 allocations instead of 700, for a process
    that works a micro-batch at a time (a stream consumer): a batch allocates tens of
    thousands of short-lived containers (events, rows, records), and with the default
    threshold the collector runs many times per batch and, promoting them, walks the
    decoded window states again and again (a third of a consumer's CPU in a profile)."""
    gc.set_threshold(50_000, 20, 100)
