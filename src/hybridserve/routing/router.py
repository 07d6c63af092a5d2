"""The hybrid router: for each entity, the freshest acceptable answer within the deadline.

Steps, in order, each given at most the time left and skipped while its circuit breaker is
open:

1. the L1 cache, then the prediction store: serve a record fresh enough for this request and
   made by the version this entity is routed to (primary, or canary by a sticky hash);
2. compute now: online features (TTL checked) plus request-time features, through the
   micro-batcher; the new record is written back to the store and L1;
3. the route's fallback chain in its declared order (``routing/fallback.py``): a stale stored
   prediction, a fallback model, a default value; what is still unanswered gets a 503 saying
   what each step found.

This module holds only that algorithm. Its collaborators are small parts of their own, each
testable alone: the breakers (``routing/breaker.py``), the write-behind queue
(``predictions/write_behind.py``), the run-pointer cache (``predictions/store.py``), the
fallback steps, the per-request records and reasons (``routing/job.py``), the route's metric
children (``observability/metrics.py``) and the event-loop lag monitor (``routing/lag.py``).
The core of this module never touches HTTP; the server adapts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar

from hybridserve.errors import DeadlineExceeded, HybridServeError, InvalidInput, NoFreshPrediction
from hybridserve.observability.metrics import Metrics, RouteMetrics
from hybridserve.observability.tally import Tally
from hybridserve.observability.tracing import OFF, Tracing
from hybridserve.predictions.cache import L1Cache
from hybridserve.predictions.store import RunPointer, RunPointerCache
from hybridserve.predictions.write_behind import WriteBehind
from hybridserve.records import PredictionRecord, new_request_id, now
from hybridserve.routing.breaker import STATE_VALUE, Breakers, CircuitBreaker, State
from hybridserve.routing.fallback import Step, build_chain
from hybridserve.routing.job import Answer, Emit, Entity, Job, Reason
from hybridserve.routing.lag import LoopLag
from hybridserve.routing.logged import log_job
from hybridserve.routing.models import LoadedModel, ModelManager
from hybridserve.routing.progressive import Splits
from hybridserve.routing.rollout import in_share
from hybridserve.routing.schema import PredictRequest
from hybridserve.routing.shadow import ShadowScorer
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import value_problem
from hybridserve.services import Services

log = logging.getLogger("hybridserve.router")
_STAGES = {"store": "prediction_store", "features": "feature_store", "model": "model"}
"""A stage budget's name -> the dependency ``Router._call`` applies it to (``model``: any
model, primary, canary or fallback)."""
T = TypeVar("T")


@dataclass(slots=True)
class Outcome:
    """The result of one request: HTTP-agnostic status and a JSON-ready body."""

    status: int
    body: dict[str, Any]
    model_version: str = ""
    sources: str = ""


class Router:
    def __init__(
        self,
        services: Services,
        models: ModelManager,
        metrics: Metrics,
        cache: L1Cache,
        tracing: Tracing = OFF,
        *,
        hooks: Sequence[Callable[[Job], None]] = (),
    ) -> None:
        self.services = services
        self.tracing = tracing
        self.models = models
        self.metrics = metrics
        self.cache = cache
        self.project = services.project
        self.breakers = Breakers(
            self.project.server.breaker,
            on_change=self._breaker_moved,
            on_new=lambda name: metrics.breaker_state.labels(name).set(0),
        )
        self.shadow = ShadowScorer(
            services.features, metrics, maxsize=self.project.server.shadow_queue
        )
        self.splits = Splits(self.project, models)
        """Canary and shadow per route: a progressive rollout's, else the project file's."""
        self.hooks = list(hooks)
        """Called with each answered job before its answer is rendered (the arm counts);
        they must not block."""
        self.decide: Callable[[Job, list[Entity]], None] | None = None
        """Sees each answer before it is sent or rendered, once (abstention, which may mark
        it ``decision: review``)."""
        self.writes = WriteBehind(
            lambda records: services.predictions.put(records),
            # Writes have their own breaker: a store that cannot write (a full or read-only
            # disk) may still serve reads, and failed writes must not stop them.
            self.breakers("prediction_store:write"),
            dropped=metrics.write_back_dropped.inc,
            tracing=tracing,
        )
        self.runs = RunPointerCache(interval=1.0)
        self.lag = LoopLag()
        """Tells a dependency's timeout from the loop's own lateness (see ``routing/lag.py``)."""
        routes = self.project.routes
        self.chains: dict[str, list[Step]] = {r: build_chain(c.fallback) for r, c in routes.items()}
        self.route_metrics = {r: RouteMetrics(metrics, r, tracing) for r in routes}
        self.grace = {
            r: min(c.budgets.store or c.latency_budget, 0.1 * c.latency_budget)
            for r, c in routes.items()
        }
        """Per route, how long a store read may take once the deadline has passed."""
        self.limits: dict[str, dict[str, float]] = {}
        """Per route, each dependency kind's own budget (``routes.*.budgets``)."""
        for r, c in routes.items():
            self.limits[r] = {}
            for stage, dependency in _STAGES.items():
                limit = c.budgets.of(stage)
                if limit is not None:
                    self.limits[r][dependency] = limit
                    metrics.stage_budget.labels(r, stage).set(limit)
        self.tally = Tally(
            {r: c.latency_target for r, c in routes.items()}, window=self.project.health.window
        )
        """Answers per route and minute (SLOs, cost) and per second (health)."""
        self.prediction_log = services.prediction_log

    def breaker(self, name: str) -> CircuitBreaker:
        return self.breakers(name)

    def _breaker_moved(self, name: str, state: State) -> None:
        self.metrics.breaker_state.labels(name).set(STATE_VALUE[state])
        log.warning("circuit breaker %s is now %s", name, state)

    # -- the request -----------------------------------------------------------------

    async def predict(
        self,
        route: str,
        req: PredictRequest,
        request_id: str | None = None,
        emit: Emit | None = None,
    ) -> Outcome:
        """Answer ``req``. ``emit``: called with each step's new answers as soon as the step
        has them (stored ones, then each computed micro-batch, then fallbacks), for a caller
        that streams them; the outcome still holds them all."""
        started = perf_counter()
        job = self._job(route, req, request_id or new_request_id())
        if self.tracing.enabled:
            self.tracing.annotate(**{"hybridserve.entities": len(job.entities)})
        m = job.metrics
        job.emit = emit
        job.decide = self.decide
        with m.total():
            if req.mode != "compute":
                await self._stored(job)
                await job.flush()
            if req.mode != "stored" and job.open():
                await self._compute(job)
            if job.open():
                with m.fallback():
                    await self._fallback(job, req.mode == "compute")
                await job.flush()
        outcome = self._outcome(job, started)
        if self.prediction_log.online:  # no route samples online answers: this check only
            log_job(self.prediction_log, job)
        return outcome

    def _job(self, route: str, req: PredictRequest, request_id: str) -> Job:
        cfg = self.project.route(route)
        items = req.items()
        limit = self.project.server.max_entities
        if len(items) > limit:
            raise InvalidInput(f"entities: {len(items)} given, at most {limit} per request")
        primary = self.models.get(route)
        if primary is None:
            raise HybridServeError(f"route {route!r} has no model loaded")
        canary, pct = self.splits.canary(route)
        allowed = cfg.request_features
        entities = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                key, feats, where = item, req.features, "features"
            else:
                key, where = item.key, f"entities.{i}.features"
                feats = {**req.features, **item.features} if req.features else item.features
            if feats:
                _check_request_features(route, feats, allowed, where)
            model = canary if canary is not None and in_share(key, pct, route) else primary
            entities.append(Entity(key, feats or None, model))
        budget = cfg.latency_budget
        if req.timeout_ms is not None:
            budget = min(budget, req.timeout_ms / 1000)
        self.lag.start()
        # The request already waited for the loop about as long as the loop runs late: under
        # overload that time is spent, and what cannot finish in what is left falls back now.
        budget -= self.lag.current()
        loop_now = asyncio.get_running_loop().time()
        return Job(
            route,
            cfg,
            entities,
            now(),
            loop_now + budget,
            req.max_staleness,
            request_id,
            req.probabilities,
            self.route_metrics[route],
        )

    # -- calling a dependency ----------------------------------------------------------

    async def _call(
        self,
        dependency: str,
        job: Job,
        todo: list[Entity],
        step: str,
        coro: Coroutine[Any, Any, T],
        model: LoadedModel | None = None,
    ) -> T | None:
        """Await ``coro`` within the time left, through ``dependency``'s breaker.

        Any failure (an error, a timeout) is noted for the entities and returns ``None`` so
        the next step can answer; it never becomes a 500. Errors and timeouts charge the
        dependency's breaker, except when the cause is our own: a request shed by the
        micro-batcher, one that timed out behind model batches whose own work (the CPU time
        of the thread that ran them) fits well within budget, or a timeout while the event
        loop itself ran late (saturated by its own requests, or frozen by a pause) says this
        process was busy or short of CPU, not that the dependency is broken, and opening its
        breaker would turn overload into an outage.
        """
        breaker = self.breakers(dependency)
        remaining = job.deadline - asyncio.get_running_loop().time()
        if remaining <= 0 and dependency == "prediction_store":
            # Too late already (the request waited for an overloaded loop): a stored answer is
            # still far better than a default, and one read costs little, so it gets a grace.
            remaining = self.grace[job.route]
        if remaining <= 0:
            coro.close()
            job.note(todo, step, Reason.DEADLINE, "skipped (deadline passed)")
            return None
        limits = self.limits[job.route]
        limit = limits.get("model" if model is not None else dependency) if limits else None
        cut = limit is not None and limit < remaining
        if cut:
            remaining = limit  # type: ignore[assignment]
        if not breaker.allow():
            coro.close()
            job.note(todo, step, Reason.BREAKER_OPEN, f"skipped ({dependency} circuit open)")
            return None
        started = perf_counter()
        try:
            async with asyncio.timeout(remaining):
                result = await coro
        except DeadlineExceeded as exc:
            breaker.release()  # busy, not broken: frees a half-open probe without judging
            job.note(todo, step, Reason.OVERLOAD, f"shed ({exc.message})")
            return None
        except TimeoutError:
            if model is not None and model.batcher.work_seconds < remaining / 2:
                breaker.release()
                job.note(todo, step, Reason.OVERLOAD, f"timed out queueing for {model.label}")
                return None
            if self.lag.explains(started, remaining):
                breaker.release()
                late = self.lag.since(started) * 1000
                job.note(todo, step, Reason.OVERLOAD, f"timed out, event loop {late:.0f} ms late")
                return None
            breaker.failure()
            cause = (
                f"its {remaining * 1000:g} ms stage budget" if cut else f"{remaining * 1000:.0f} ms"
            )
            job.note(todo, step, Reason.TIMEOUT, f"timed out after {cause}")
            return None
        except Exception as exc:  # any failure of a dependency: fall back, never a 500
            breaker.failure()
            log.debug("%s: %s failed: %r", dependency, step, exc)
            # The class only: a dependency's message may carry its URL, and with it secrets.
            job.note(todo, step, Reason.ERROR, f"failed ({type(exc).__name__})")
            return None
        breaker.success()
        return result

    # -- step 1: stored predictions --------------------------------------------------

    def _serve_stored(self, job: Job, e: Entity, rec: PredictionRecord, tier: str) -> bool:
        model = e.model
        if rec.model != model.name or rec.model_version != model.version:
            detail = f"made by {rec.model}/{rec.model_version}, route serves {model.label}"
            e.note(tier, Reason.OTHER_VERSION, detail)
        elif job.at - rec.as_of > (bound := job.staleness(rec.source)):
            age = job.at - rec.as_of
            e.note(tier, Reason.STALE, f"stale (age {age:.0f}s > {bound:.0f}s)")
        else:
            source = "cache" if tier == "l1" else rec.source
            e.answer = Answer.of(rec, source, job.at, degraded=False)
            return True
        e.keep_stale(rec)
        return False

    async def _stored(self, job: Job) -> None:
        # First learn which batch run is served (cached; re-read every second): a newly
        # published run clears L1, so L1 never hides it.
        run_id = await self._run_id(job)
        m, route = job.metrics, job.route
        with m.cache():
            for e in job.entities:
                rec = self.cache.get(route, e.key, job.at)
                if rec is None:
                    e.note("l1", Reason.MISS)
                elif self._serve_stored(job, e, rec, "l1"):
                    m.l1_hits.inc()
        todo = job.open()
        if not todo:
            return
        with m.store():
            records = await self._call(
                "prediction_store",
                job,
                todo,
                "store",
                self.services.predictions.get(route, [e.key for e in todo], run_id=run_id),
            )
        if records is None:
            return
        for e, rec in zip(todo, records, strict=True):
            if rec is None:
                e.note("store", Reason.MISS)
            elif self._serve_stored(job, e, rec, "store"):
                m.store_hits.inc()
                self.cache.put(rec, job.cfg.loosest_staleness, job.at)

    async def _run_id(self, job: Job) -> str | None:
        """The batch run the route serves, read at most every ``runs.interval``."""
        route = job.route
        t = asyncio.get_running_loop().time()
        fresh, run_id = self.runs.get(route, t)
        if fresh:
            return run_id

        async def read() -> tuple[RunPointer | None]:
            # In a tuple: ``None`` from _call means the read failed, not "no run published".
            return (await self.services.predictions.current_run(route),)

        got = await self._call("prediction_store", job, job.entities, "store", read())
        if got is None:  # the store is failing: keep serving the run we knew
            return self.runs.known(route)
        new = None if got[0] is None else got[0].run_id
        if self.runs.set(route, new, t):
            # A newly published run must not be hidden by what L1 holds from the old one.
            self.cache.invalidate(route)
            log.info("route %s now serves batch run %s (was %s)", route, new, run_id)
        return new

    # -- step 2: compute now ---------------------------------------------------------

    async def _features(self, job: Job, todo: list[Entity], model: LoadedModel) -> None:
        """Fill ``values`` for ``todo``: stored features merged with request features."""
        need = [e for e in todo if e.values is None]
        if not need:
            return
        wanted = self.project.route_features(job.route)
        names = model.scorer.name_set
        # Features the request already gives are not read; views left empty are skipped.
        read = [e for e in need if not (e.extra and e.extra.keys() >= names)] if wanted else []
        got = None
        if read:
            with job.metrics.features():
                got = await self._call(
                    "feature_store",
                    job,
                    read,
                    "features",
                    self.services.features.read_values(wanted, [e.key for e in read], at=job.at),
                )
            if got is None:  # the feature store failed: only request features can score
                need = [e for e in need if e not in read]
            else:
                for e, (values, as_of) in zip(read, got, strict=True):
                    if e.extra:
                        values.update(e.extra)  # request features override stored ones
                    e.values, e.feature_as_of = values, as_of
        for e in need:
            if e.values is None:
                e.values = dict(e.extra or {})

    async def score(
        self, job: Job, todo: list[Entity], model: LoadedModel, step: str
    ) -> dict[str, PredictionRecord]:
        """Features for ``todo`` (read once per entity), scored on ``model``: key -> record."""
        await self._features(job, todo, model)
        ready = [e for e in todo if e.values is not None]
        if not ready:
            return {}
        scorer = model.scorer
        prepared = scorer.prepare([e.key for e in ready], [e.values or {} for e in ready])
        primary = not step.startswith("fallback")
        for err in prepared.errors:
            e = ready[err.index]
            e.note(step, Reason.INVALID_FEATURES, f"{model.label}: {err.reason}", primary=primary)
        if not prepared.rows:
            return {}
        rows = [ready[r] for r in prepared.rows]
        with job.metrics.model():
            prediction = await self._call(
                f"model:{model.label}",
                job,
                rows,
                step,
                model.batcher.predict(prepared.matrix, job.deadline),
                model,
            )
        if prediction is None:
            return {}
        if not job.probabilities and prediction.probabilities is not None:
            prediction = Prediction(prediction.scores, None, prediction.classes)
        # A score is as fresh as its stalest stored input; request features are fresh now.
        records = scorer.records(
            [e.key for e in rows],
            prediction,
            as_of=[e.feature_as_of or job.at for e in rows],
            source="online",
            request_id=job.request_id,
            computed_at=job.at,
        )
        return {r.entity: r for r in records}

    def model(self, route: str, role: str) -> LoadedModel | None:
        return self.models.get(route, role)

    async def _compute(self, job: Job) -> None:
        if job.deadline <= asyncio.get_running_loop().time():
            # Overloaded (or frozen): no time to read features or build a batch for nothing.
            job.note(job.open(), "compute", Reason.DEADLINE, "skipped (deadline passed)")
            return
        groups: dict[int, list[Entity]] = {}
        for e in job.open():
            groups.setdefault(id(e.model), []).append(e)
        fresh: list[PredictionRecord] = []
        for todo in groups.values():
            records = await self.score(job, todo, todo[0].model, "compute")
            for e in todo:
                rec = records.get(e.key)
                if rec is not None:
                    e.answer = Answer.of(
                        rec, "online", job.at, degraded=False, probabilities=job.probabilities
                    )
                    fresh.append(rec)
            await job.flush()
        if fresh:
            max_stale = job.cfg.loosest_staleness
            for rec in fresh:
                self.cache.put(rec, max_stale, job.at)
            self.writes.put(fresh)
            shadow, pct = self.splits.shadow(job.route)
            if shadow is not None:
                self.shadow.offer(
                    job.route,
                    shadow,
                    pct,
                    [e.key for e in job.entities],
                    [e.extra for e in job.entities],
                    fresh,
                )

    # -- step 3: fallbacks -----------------------------------------------------------

    async def _fallback(self, job: Job, skipped_store: bool) -> None:
        chain = self.chains[job.route]
        for e in job.open():
            if e.stale is None:
                e.stale = self.cache.get(job.route, e.key, job.at)
        unread = [e for e in job.open() if e.stale is None]
        if unread and skipped_store and any(step.needs_stored for step in chain):
            # Step 1 was skipped for this request; a fallback that serves stored records
            # still needs them.
            records = await self._call(
                "prediction_store",
                job,
                unread,
                "fallback store read",
                self.services.predictions.get(
                    job.route, [e.key for e in unread], run_id=self.runs.known(job.route)
                ),
            )
            for e, rec in zip(unread, records or [None] * len(unread), strict=True):
                e.stale = rec
        for step in chain:
            todo = job.open()
            if not todo:
                return
            if self.tracing.enabled:
                with self.tracing.span(f"fallback {step.kind}", entities=len(todo)):
                    await step.run(self, job, todo)
            else:
                await step.run(self, job, todo)

    # -- the answer ------------------------------------------------------------------

    def _outcome(self, job: Job, started: float) -> Outcome:
        if self.decide is not None:
            self.decide(job, [e for e in job.entities if e.answer is not None and not e.sent])
        for hook in self.hooks:
            hook(job)
        m = job.metrics
        answered: list[dict[str, Any]] = []
        versions: set[str] = set()
        sources: dict[str, int] = {}
        degraded = 0
        ages = []
        missing = []
        for e in job.entities:
            a = e.answer
            if a is None:
                missing.append({"entity": e.key, "steps": e.trail()})
                continue
            m.answered(a.source).inc()
            if a.age_s is not None:
                ages.append(a.age_s)
            if a.model is not None:
                versions.add(f"{a.model}/{a.model_version}")
            sources[a.source] = sources.get(a.source, 0) + 1
            degraded += a.degraded
            answered.append(a.to_json())
        if ages:
            m.age.observe_many(ages)
        self.tally.record(job.route, perf_counter() - started, sources, degraded, len(missing))
        version_text, source_text = ",".join(sorted(versions)), ",".join(sorted(sources))
        body: dict[str, Any] = {
            "request_id": job.request_id,
            "route": job.route,
            "predictions": answered,
        }
        if not missing:
            return Outcome(200, body, version_text, source_text)
        m.unavailable.inc(len(missing))
        body = {
            "error": f"no acceptable prediction for {len(missing)} of {len(job.entities)} "
            f"entities of route {job.route!r}",
            "type": NoFreshPrediction.__name__,
            **body,
            "unanswered": missing,
        }
        return Outcome(NoFreshPrediction.status, body, version_text, source_text)

    async def flush(self) -> None:
        """Wait for pending write-backs and shadow comparisons."""
        await self.writes.flush()
        await self.shadow.drain()

    async def close(self) -> None:
        self.lag.stop()
        await self.shadow.close()
        await self.writes.aclose()


def _check_request_features(
    route: str, feats: dict[str, Any], allowed: dict[str, Any], where: str
) -> None:
    """Every request feature declared for the route, and of its declared type (a 400 if not)."""
    if not feats.keys() <= allowed.keys():
        unknown = [f for f in feats if f not in allowed]
        raise InvalidInput(
            f"{where}: unknown request feature {unknown[0]!r} for route {route!r}"
            + (
                f" (allowed: {', '.join(sorted(allowed))})"
                if allowed
                else " (this route takes no request features)"
            )
        )
    for name, value in feats.items():
        problem = value_problem(allowed[name], value)
        if problem is not None:
            raise InvalidInput(f"{where}.{name}: {problem}")
