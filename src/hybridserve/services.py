"""Opens what a project file declares (registry, stores) and builds Scorers from it.

The CLI, the server, batch jobs and stream consumers all start here, so they open the same
backends the same way from the same project file.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hybridserve.config import Project
from hybridserve.features.online import OnlineFeatureStore
from hybridserve.predictions.store import PredictionStore
from hybridserve.scoring import Scorer
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
            predictions=PredictionStore(predictions),
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

    async def close(self) -> None:
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
