"""Everything a server process holds, built once at start-up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hybridserve.config import Project
from hybridserve.observability.dashboard import Dashboard
from hybridserve.observability.metrics import Metrics
from hybridserve.observability.shared import SharedMetrics
from hybridserve.observability.shared import from_env as shared_from_env
from hybridserve.observability.tracing import OFF, Tracing
from hybridserve.observability.tracing import configure as configure_tracing
from hybridserve.operations.health import HealthReport
from hybridserve.operations.publish import Publisher
from hybridserve.operations.report import health_report
from hybridserve.predictions.cache import L1Cache
from hybridserve.quality.drift import DriftMonitor
from hybridserve.quality.export import run_exporter
from hybridserve.quality.feedback import FeedbackStore
from hybridserve.quality.review import ReviewQueue, ReviewWriter
from hybridserve.quality.rollout import RolloutController
from hybridserve.routing.abstain import Abstain
from hybridserve.routing.models import ModelManager
from hybridserve.routing.progressive import ArmRecorder, RolloutFollower
from hybridserve.routing.router import Router
from hybridserve.server.auth import Authenticator
from hybridserve.services import Services
from hybridserve.storage import KVStore
from hybridserve.streaming.sources import Producer, open_producer

if TYPE_CHECKING:
    from hybridserve.batch.schedule import Scheduler


class IngestSources:
    """The producers ``POST /v1/events`` appends with: one per stream per server process,
    opened on first use (opening is synchronous, so two requests cannot open one twice)."""

    def __init__(self, project: Project, kv: KVStore) -> None:
        self.project = project
        self.kv = kv
        self._open: dict[str, Producer] = {}

    def get(self, stream: str) -> Producer:
        producer = self._open.get(stream)
        if producer is None:
            producer = open_producer(self.project, stream, kv=self.kv)
            self._open[stream] = producer
        return producer

    async def close(self) -> None:
        opened, self._open = self._open, {}
        for producer in opened.values():
            await producer.close()


@dataclass
class ServerState:
    project: Project
    services: Services
    metrics: Metrics
    models: ModelManager
    router: Router
    auth: Authenticator
    ingest: IngestSources
    """The sources the events endpoint appends to."""
    reviews: ReviewWriter
    """Abstained answers on their way to the review queue."""
    rollouts: RolloutFollower
    """Follows progressive rollouts (and judges them, while this process holds the lease)."""
    feedback: FeedbackStore
    drift: DriftMonitor
    """Drift of each route's recent answers; ``drift.reasons()`` says which routes drifted."""
    ready: bool = False
    access_log: bool = True
    scheduler: bool = False
    tracing: Tracing = OFF
    _scheduler: Scheduler | None = None
    shared_metrics: SharedMetrics | None = None
    """Set with ``serve --workers N``: scrapes sum every worker's counters."""
    publisher: Publisher | None = None
    """Publishes this process's heartbeat and SLO counters to the prediction store."""
    _health: tuple[float, HealthReport] | None = None
    dashboard: Dashboard = field(default_factory=Dashboard)
    """The snapshots behind ``/v1/dashboard/data`` (its rates and windows)."""
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
        tracing_exporter: Any = None,
    ) -> ServerState:
        """``tracing_exporter``: where spans go, tracing on (tests pass an in-memory one)."""
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
        tracing = configure_tracing(
            project.tracing.enabled, project.tracing.sample_ratio, project.name, tracing_exporter
        )
        router = Router(services, models, metrics, L1Cache(cfg.l1_cache_size), tracing)
        services.predictions.on_unreadable = metrics.unreadable_records.inc
        pending = [r.review.max_pending for r in project.routes.values() if r.review is not None]
        reviews = ReviewWriter(
            ReviewQueue(services.registry.engine),
            maxsize=max(pending, default=1),
            dropped=metrics.review_dropped.inc,
        )
        recorder = ArmRecorder(metrics, router.splits)
        if pending:  # some route may abstain
            router.decide = Abstain(project, reviews, metrics)
        router.hooks.append(recorder)
        router.shadow.on_compare = recorder.compared
        budgets = {name: route.latency_budget for name, route in project.routes.items()}
        follower = RolloutFollower(
            services.registry,
            models,
            router.splits,
            recorder,
            interval=cfg.reload_interval,
            controller=RolloutController(services.registry, budgets),
        )
        plog = services.prediction_log
        plog.on_count = lambda r, o, n: metrics.prediction_log.labels(r, o).inc(n)
        drift = services.drift
        return cls(
            project,
            services,
            metrics,
            models,
            router,
            Authenticator.from_project(project),
            IngestSources(project, services.online_kv),
            reviews,
            follower,
            FeedbackStore(project, plog.sink),
            drift,
            access_log=access_log,
            scheduler=scheduler,
            tracing=tracing,
        )

    async def start(self) -> None:
        """Load every model and check every store; raise (failing the start) on any problem."""
        await asyncio.to_thread(self.models.load_all)
        await self.services.online_kv.ping()
        await self.services.predictions_kv.ping()
        self.models.start()
        self.services.prediction_log.start_for("online")
        self._tasks.append(
            asyncio.get_running_loop().create_task(
                run_exporter(self.metrics, self.feedback, self.drift)
            )
        )
        self.publisher = Publisher(self.services.predictions_kv, self.router)
        self._tasks.append(asyncio.get_running_loop().create_task(self.publisher.run()))
        await self.rollouts.sync()  # a rollout in progress applies from the first request
        self.rollouts.start()
        self.shared_metrics = shared_from_env(self.metrics)
        if self.shared_metrics is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self.shared_metrics.run()))
        if self.scheduler:
            from hybridserve.batch.schedule import Scheduler

            self._scheduler = Scheduler(self.project)
            self._tasks.append(
                asyncio.get_running_loop().create_task(self._scheduler.run_forever())
            )
        self.ready = True

    async def health(self, max_age: float = 1.0) -> HealthReport:
        """The project's health (every process's), computed at most every ``max_age``."""
        loop_now = asyncio.get_running_loop().time()
        cached = self._health
        if cached is not None and loop_now - cached[0] < max_age:
            return cached[1]
        own = self.publisher.view() if self.publisher is not None else None
        report = await health_report(self.services, own=own)
        self._health = (loop_now, report)
        return report

    async def serving(self) -> bool:
        """Ready, and not critical: what ``/v2/health/ready`` answers (health at most one
        publish interval old, so frequent probes cost one report per interval)."""
        if not self.ready:
            return False
        return not (await self.health(self.project.health.publish_interval)).critical

    def metrics_text(self) -> bytes:
        """What ``/metrics`` answers: every worker's sums when there are several."""
        shared = self.shared_metrics
        return self.metrics.render() if shared is None else shared.render()

    async def stop(self) -> None:
        """Stop intake of new work, let in-flight work finish, then close every backend."""
        self.ready = False
        if self._scheduler is not None:
            await self._scheduler.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.rollouts.close()
        await self.router.close()
        if self.publisher is not None:
            await self.publisher.close()
        await self.reviews.close()
        await self.ingest.close()
        await self.models.close()
        await self.services.close()
        self.tracing.shutdown()
