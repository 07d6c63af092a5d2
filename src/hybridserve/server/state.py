"""Everything a server process holds, built once at start-up."""

from __future__ import annotations

import asyncio
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
    scheduler: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        project: Project,
        *,
        services: Services | None = None,
        metrics: Metrics | None = None,
        access_log: bool = True,
        scheduler: bool = False,
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
            scheduler=scheduler,
        )

    async def start(self) -> None:
        """Load every model and check every store; raise (failing the start) on any problem."""
        await asyncio.to_thread(self.models.load_all)
        await self.services.online_kv.ping()
        await self.services.predictions_kv.ping()
        self.models.start()
        if self.scheduler:
            from hybridserve.batch.schedule import Scheduler

            sched = Scheduler(self.project)
            self.extra["scheduler"] = sched
            self._tasks.append(asyncio.get_running_loop().create_task(sched.run_forever()))
        self.ready = True

    async def stop(self) -> None:
        """Stop intake of new work, let in-flight work finish, then close every backend."""
        from hybridserve.server.events import close_sources

        self.ready = False
        sched = self.extra.get("scheduler")
        if sched is not None:
            await sched.close()  # type: ignore[attr-defined]
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.router.close()
        await close_sources(self.extra)
        await self.models.close()
        await self.services.close()
