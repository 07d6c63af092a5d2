"""Everything a server process holds, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from hybridserve.config import Project
from hybridserve.observability.metrics import Metrics
from hybridserve.predictions.cache import L1Cache
from hybridserve.routing.models import ModelManager
from hybridserve.routing.router import Router
from hybridserve.server.auth import Authenticator
from hybridserve.services import Services


@dataclass
class ServerState:
    project: Project
    services: Services
    metrics: Metrics
    models: ModelManager
    router: Router
    auth: Authenticator
    ready: bool = False
    access_log: bool = True
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        project: Project,
        *,
        services: Services | None = None,
        metrics: Metrics | None = None,
        access_log: bool = True,
    ) -> ServerState:
        services = services or Services.open(project)
        metrics = metrics or Metrics()
        cfg = project.server
        models = ModelManager(
            services,
            metrics,
            max_batch_size=cfg.max_batch_size,
            poll_interval=cfg.reload_interval,
            execution=cfg.model_execution,
            inline_below=cfg.inline_below,
        )
        router = Router(services, models, metrics, L1Cache(cfg.l1_cache_size))
        return cls(
            project,
            services,
            metrics,
            models,
            router,
            Authenticator.from_project(project),
            access_log=access_log,
        )

    async def start(self) -> None:
        """Load every model and check every store; raise (failing the start) on any problem."""
        import asyncio

        await asyncio.to_thread(self.models.load_all)
        await self.services.online_kv.ping()
        await self.services.predictions_kv.ping()
        self.models.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.router.close()
        await self.models.close()
        await self.services.close()
