"""The hybrid router: for each entity, the freshest acceptable answer within the deadline.

Steps, in order, each given at most the time left and skipped while its circuit breaker is
open:

1. the L1 cache, then the prediction store: serve a record fresh enough for this request and
   made by the version this entity is routed to (primary, or canary by a sticky hash);
2. compute now: online features (TTL checked) plus request-time features, through the
   micro-batcher; the new record is written back to the store and L1;
3. the route's fallback chain in its declared order: a stale stored prediction, a fallback
   model, a default value; what is still unanswered gets a 503 saying what each step answered.

The answer says, per entity, where it came from, the model version, its age and whether it
was degraded. The core of this module never touches HTTP; the server adapts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from hybridserve.config import DefaultStep, ModelStep, RouteConfig, StalePredictionStep
from hybridserve.errors import DeadlineExceeded, HybridServeError, InvalidInput, StoreError
from hybridserve.observability.metrics import Metrics
from hybridserve.predictions.cache import L1Cache
from hybridserve.predictions.store import RunPointer
from hybridserve.records import PredictionRecord, new_request_id, now, to_iso
from hybridserve.routing.breaker import STATE_VALUE, CircuitBreaker, State
from hybridserve.routing.lag import LoopLag
from hybridserve.routing.models import LoadedModel, ModelManager
from hybridserve.routing.rollout import in_share
from hybridserve.routing.schema import EntityItem, PredictRequest
from hybridserve.routing.shadow import ShadowScorer
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import value_problem
from hybridserve.services import Services

log = logging.getLogger("hybridserve.router")
_FAILURES = (StoreError, TimeoutError, DeadlineExceeded, OSError)


@dataclass(slots=True)
class Outcome:
    """The result of one request: HTTP-agnostic status and a JSON-ready body."""

    status: int
    body: dict[str, Any]
    model_version: str = ""
    sources: str = ""


@dataclass(slots=True)
class _Job:
    """One request in flight: what each entity has been answered and why not yet."""

    keys: list[str]
    extra: list[dict[str, Any] | None]
    at: float
    deadline: float
    max_stale: float
    models: list[LoadedModel]
    answers: list[dict[str, Any] | None]
    trail: list[list[str]]
    stored: list[PredictionRecord | None]
    values: list[dict[str, Any] | None] = field(default_factory=list)
    """Feature values per entity, once read (shared by the compute step and fallback models)."""
    feature_as_of: list[float | None] = field(default_factory=list)

    def open(self) -> list[int]:
        return [i for i, a in enumerate(self.answers) if a is None]


class Router:
    def __init__(
        self, services: Services, models: ModelManager, metrics: Metrics, cache: L1Cache
    ) -> None:
        self.services = services
        self.models = models
        self.metrics = metrics
        self.cache = cache
        self.project = services.project
        cfg = self.project.server.breaker
        self.breakers: dict[str, CircuitBreaker] = {}
        self._breaker_args = {
            "failures": cfg.failures,
            "error_rate": cfg.error_rate,
            "window": cfg.window,
            "min_calls": cfg.min_calls,
            "cooldown": cfg.cooldown,
            "on_change": self._breaker_moved,
        }
        self.shadow = ShadowScorer(self, metrics, maxsize=self.project.server.shadow_queue)
        self._writebacks: set[asyncio.Task[None]] = set()
        self._pending_writes: list[PredictionRecord] = []
        self.write_back_delay = 0.005
        self.max_pending_writes = 50_000
        # route -> (batch run id served, loop time it was checked)
        self._runs: dict[str, tuple[str | None, float]] = {}
        self.run_check_interval = 1.0
        self.lag = LoopLag()
        """Tells a dependency's timeout from the loop's own lateness (see ``routing/lag.py``)."""

    # -- breakers --------------------------------------------------------------------

    def breaker(self, name: str) -> CircuitBreaker:
        b = self.breakers.get(name)
        if b is None:
            b = self.breakers[name] = CircuitBreaker(name, **self._breaker_args)  # type: ignore[arg-type]
            self.metrics.breaker_state.labels(name).set(0)
        return b

    def _breaker_moved(self, name: str, state: State) -> None:
        self.metrics.breaker_state.labels(name).set(STATE_VALUE[state])
        log.warning("circuit breaker %s is now %s", name, state)

    # -- the request -----------------------------------------------------------------

    async def predict(
        self, route: str, req: PredictRequest, request_id: str | None = None
    ) -> Outcome:
        cfg = self.project.route(route)
        request_id = request_id or new_request_id()
        loop = asyncio.get_running_loop()
        self.lag.start()
        t0 = perf_counter()  # stage timings; deadlines use the loop's clock (1 ms on uvloop)
        job = self._job(route, cfg, req, loop.time())
        m = self.metrics
        if req.mode != "compute":
            await self._stored(route, cfg, job)
        if job.open() and req.mode != "stored":
            await self._compute(route, cfg, req, job, request_id)
        if job.open():
            t = perf_counter()
            await self._fallback(route, cfg, req, job, request_id)
            m.child("stage_seconds", route, "fallback").observe(perf_counter() - t)
        m.child("stage_seconds", route, "total").observe(perf_counter() - t0)
        return self._outcome(route, job, request_id)

    def _job(self, route: str, cfg: RouteConfig, req: PredictRequest, t0: float) -> _Job:
        items: list[str | EntityItem] = list(req.entities)
        if req.entity is not None:
            items.append(req.entity)
        if not items:
            raise InvalidInput("give 'entities' (a list of keys) or 'entity'")
        limit = self.project.server.max_entities
        if len(items) > limit:
            raise InvalidInput(f"entities: {len(items)} given, at most {limit} per request")
        allowed = cfg.request_features
        keys: list[str] = []
        extra: list[dict[str, Any] | None] = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                key, feats = item, req.features
            else:
                key = item.key
                feats = {**req.features, **item.features} if req.features else item.features
            if feats and not feats.keys() <= allowed.keys():
                unknown = [f for f in feats if f not in allowed]
                where = "features" if isinstance(item, str) else f"entities.{i}.features"
                raise InvalidInput(
                    f"{where}: unknown request feature {unknown[0]!r} for route {route!r}"
                    + (
                        f" (allowed: {', '.join(sorted(allowed))})"
                        if allowed
                        else " (this route takes no request features)"
                    )
                )
            if feats:
                for name, value in feats.items():
                    problem = value_problem(allowed[name], value)
                    if problem is not None:
                        where = "features" if isinstance(item, str) else f"entities.{i}.features"
                        raise InvalidInput(f"{where}.{name}: {problem}")
            keys.append(key)
            extra.append(feats or None)
        budget = cfg.latency_budget
        if req.timeout_ms is not None:
            budget = min(budget, req.timeout_ms / 1000)
        max_stale = (
            cfg.max_staleness
            if req.max_staleness is None
            else min(cfg.max_staleness, req.max_staleness)
        )
        primary = self.models.get(route)
        if primary is None:
            raise HybridServeError(f"route {route!r} has no model loaded")
        canary = self.models.get(route, "canary")
        pct = cfg.canary.percent if cfg.canary is not None else 0.0
        models = [
            canary if canary is not None and in_share(k, pct, route) else primary for k in keys
        ]
        n = len(keys)
        return _Job(
            keys,
            extra,
            now(),
            t0 + budget,
            max_stale,
            models,
            [None] * n,
            [[] for _ in range(n)],
            [None] * n,
            [None] * n,
            [None] * n,
        )

    # -- step 1: stored predictions --------------------------------------------------

    def _fresh(self, rec: PredictionRecord, job: _Job, i: int) -> str | None:
        """Why ``rec`` cannot be served to entity ``i`` (``None``: it can)."""
        model = job.models[i]
        if rec.model != model.name or rec.model_version != model.version:
            return f"made by {rec.model}/{rec.model_version}, route serves {model.label}"
        age = job.at - rec.as_of
        if age > job.max_stale:
            return f"stale (age {age:.0f}s > {job.max_stale:.0f}s)"
        return None

    def _serve_stored(
        self, route: str, job: _Job, i: int, rec: PredictionRecord, tier: str
    ) -> bool:
        why = self._fresh(rec, job, i)
        if why is None:
            source = "cache" if tier == "l1" else rec.source
            job.answers[i] = self._answer(rec, source, job.at, degraded=False)
            self.metrics.child("cache_hits", route, tier).inc()
            return True
        job.trail[i].append(f"{tier}: {why}")
        if job.stored[i] is None or rec.as_of > job.stored[i].as_of:  # type: ignore[union-attr]
            job.stored[i] = rec
        return False

    async def _stored(self, route: str, cfg: RouteConfig, job: _Job) -> None:
        # First learn which batch run is served (cached; re-read every run_check_interval):
        # a newly published run clears L1, so L1 never hides it.
        run_id = await self._run_id(route, job, range(len(job.keys)))
        t = perf_counter()
        for i, key in enumerate(job.keys):
            rec = self.cache.get(route, key, job.at)
            if rec is None:
                job.trail[i].append("l1: miss")
            else:
                self._serve_stored(route, job, i, rec, "l1")
        self.metrics.child("stage_seconds", route, "cache").observe(perf_counter() - t)
        todo = job.open()
        if not todo:
            return
        t = perf_counter()
        keys = [job.keys[i] for i in todo]
        records = await self._call(
            "prediction_store",
            job,
            todo,
            "store",
            self.services.predictions.get(route, keys, run_id=run_id),
        )
        self.metrics.child("stage_seconds", route, "store").observe(perf_counter() - t)
        if records is None:
            return
        for i, rec in zip(todo, records, strict=True):
            if rec is None:
                job.trail[i].append("store: miss")
            elif self._serve_stored(route, job, i, rec, "store"):
                self.cache.put(rec, cfg.max_staleness, job.at)

    async def _run_id(self, route: str, job: _Job, todo: Sequence[int]) -> str | None:
        """The batch run the route serves, checked at most every ``run_check_interval``."""
        cached = self._runs.get(route)
        t = asyncio.get_running_loop().time()
        if cached is not None and t - cached[1] < self.run_check_interval:
            return cached[0]

        async def read() -> tuple[RunPointer | None]:
            return (await self.services.predictions.current_run(route),)

        got = await self._call("prediction_store", job, todo, "store", read())
        if got is None:  # the store is failing: keep serving the run we knew
            return None if cached is None else cached[0]
        run_id = None if got[0] is None else got[0].run_id
        if cached is not None and cached[0] != run_id:
            # A newly published run must not be hidden by what L1 holds from the old one.
            self.cache.invalidate(route)
            log.info("route %s now serves batch run %s (was %s)", route, run_id, cached[0])
        self._runs[route] = (run_id, t)
        return run_id

    async def _call(
        self,
        dependency: str,
        job: _Job,
        todo: Sequence[int],
        step: str,
        coro: Any,
        model: LoadedModel | None = None,
    ) -> Any:
        """Await ``coro`` within the time left, through ``dependency``'s breaker.

        Any failure (an error, a timeout) is noted in the entities' trail and returns
        ``None`` so the next step can answer; it never becomes a 500. Errors and timeouts
        charge the dependency's breaker, except when the cause is our own: a request shed by
        the micro-batcher, one that timed out queueing behind model batches that each run
        well within budget, or a timeout while the event loop itself ran late (saturated by
        its own requests, or frozen by a pause) says this process was busy, not that the
        dependency is broken, and opening its breaker would turn overload into an outage.
        """
        breaker = self.breaker(dependency)
        remaining = job.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            coro.close()
            self._note(job, todo, f"{step}: skipped (deadline passed)")
            return None
        if not breaker.allow():
            coro.close()
            self._note(job, todo, f"{step}: skipped ({dependency} circuit open)")
            return None
        started = perf_counter()
        try:
            async with asyncio.timeout(remaining):
                result = await coro
        except DeadlineExceeded as exc:
            self._busy(breaker)
            self._note(job, todo, f"{step}: shed ({exc.message})")
            return None
        except TimeoutError:
            if model is not None and model.batcher.batch_seconds < remaining / 2:
                self._busy(breaker)
                self._note(job, todo, f"{step}: timed out queueing for {model.label} (busy)")
                return None
            if self.lag.explains(started, remaining):
                self._busy(breaker)
                late = self.lag.since(started) * 1000
                self._note(job, todo, f"{step}: timed out, event loop {late:.0f} ms late (busy)")
                return None
            breaker.failure()
            log.debug("%s: %s timed out", dependency, step)
            self._note(job, todo, f"{step}: timed out after {remaining * 1000:.0f} ms")
            return None
        except Exception as exc:  # any failure of a dependency: fall back, never a 500
            breaker.failure()
            log.debug("%s: %s failed: %r", dependency, step, exc)
            self._note(job, todo, f"{step}: failed ({type(exc).__name__}: {exc})")
            return None
        breaker.success()
        return result

    @staticmethod
    def _busy(breaker: CircuitBreaker) -> None:
        """A busy-but-healthy outcome: frees a half-open probe without judging it."""
        breaker.release()

    @staticmethod
    def _note(job: _Job, todo: Sequence[int], text: str) -> None:
        for i in todo:
            job.trail[i].append(text)

    # -- step 2: compute now ---------------------------------------------------------

    async def _features(self, route: str, job: _Job, todo: list[int], model: LoadedModel) -> None:
        """Fill ``job.values`` for ``todo``: stored features merged with request features."""
        need = [i for i in todo if job.values[i] is None]
        if not need:
            return
        names = model.scorer.name_set
        wanted = self.project.route_features(route)
        # Features the request already gives are not read; views left empty are skipped.
        read = (
            [i for i in need if not (job.extra[i] and job.extra[i].keys() >= names)]  # type: ignore[union-attr]
            if wanted
            else []
        )
        rows: dict[int, Any] = {}
        if read and wanted:
            t = perf_counter()
            got = await self._call(
                "feature_store",
                job,
                read,
                "features",
                self.services.features.read_values(wanted, [job.keys[i] for i in read], at=job.at),
            )
            self.metrics.child("stage_seconds", route, "features").observe(perf_counter() - t)
            if got is None:
                need = [i for i in need if i not in set(read)]
            else:
                rows = dict(zip(read, got, strict=True))
        for i in need:
            got_row = rows.get(i)
            if got_row is None:
                job.values[i] = dict(job.extra[i] or {})
            else:
                values, as_of = got_row
                if job.extra[i]:
                    values.update(job.extra[i])  # request features override stored ones
                job.values[i] = values
                job.feature_as_of[i] = as_of

    async def _score(
        self,
        route: str,
        job: _Job,
        todo: list[int],
        model: LoadedModel,
        request_id: str,
        source: str,
        probabilities: bool,
    ) -> list[PredictionRecord]:
        await self._features(route, job, todo, model)
        ready = [i for i in todo if job.values[i] is not None]
        if not ready:
            return []
        scorer = model.scorer
        prepared = scorer.prepare([job.keys[i] for i in ready], [job.values[i] for i in ready])  # type: ignore[misc]
        for err in prepared.errors:
            job.trail[ready[err.index]].append(f"{source}: {model.label}: {err.reason}")
        if not prepared.rows:
            return []
        rows = [ready[r] for r in prepared.rows]
        t = perf_counter()
        prediction = await self._call(
            f"model:{model.label}",
            job,
            rows,
            source,
            model.batcher.predict(prepared.matrix, job.deadline),
            model,
        )
        self.metrics.child("stage_seconds", route, "model").observe(perf_counter() - t)
        if prediction is None:
            return []
        if not probabilities and prediction.probabilities is not None:
            prediction = Prediction(prediction.scores, None, prediction.classes)
        # A score is as fresh as its stalest stored input; request features are fresh now.
        as_of = [job.feature_as_of[i] or job.at for i in rows]
        return scorer.records(
            [job.keys[i] for i in rows],
            prediction,
            as_of=as_of,
            source="online",
            request_id=request_id,
            computed_at=job.at,
        )

    async def _compute(
        self, route: str, cfg: RouteConfig, req: PredictRequest, job: _Job, request_id: str
    ) -> None:
        groups: dict[int, list[int]] = {}
        for i in job.open():
            groups.setdefault(id(job.models[i]), []).append(i)
        fresh: list[PredictionRecord] = []
        for todo in groups.values():
            model = job.models[todo[0]]
            records = await self._score(
                route, job, todo, model, request_id, "compute", req.probabilities
            )
            by_key = {r.entity: r for r in records}
            for i in todo:
                rec = by_key.get(job.keys[i])
                if rec is not None:
                    job.answers[i] = self._answer(rec, "online", job.at, False, req.probabilities)
                    fresh.append(rec)
        if fresh:
            for rec in fresh:
                self.cache.put(rec, cfg.max_staleness, job.at)
            self._write_back(fresh)
            if cfg.shadow is not None:
                self.shadow.offer(route, cfg.shadow.percent, job.keys, job.extra, fresh)

    def _write_back(self, records: list[PredictionRecord]) -> None:
        """Queue computed records for the store; one write carries many requests' records.

        Writing each request's record in its own transaction or round trip would cost more
        than scoring it; instead records gather for ``write_back_delay`` and go in one
        ``put_many``. The queue is bounded: when the store cannot keep up, records are
        dropped (and counted), since serving matters more than remembering.
        """
        if len(self._pending_writes) + len(records) > self.max_pending_writes:
            self.metrics.child("write_back_dropped").inc(len(records))
            return
        self._pending_writes.extend(records)
        if not self._writebacks:
            task = asyncio.get_running_loop().create_task(self._flush_writes())
            self._writebacks.add(task)
            task.add_done_callback(self._writebacks.discard)

    async def _flush_writes(self) -> None:
        await asyncio.sleep(self.write_back_delay)
        while self._pending_writes:
            records, self._pending_writes = self._pending_writes, []
            # Writes have their own breaker: a store that cannot write (a full or read-only
            # disk) may still serve reads, and failed writes must not stop them.
            breaker = self.breaker("prediction_store:write")
            if not breaker.allow():
                self.metrics.child("write_back_dropped").inc(len(records))
                continue
            try:
                async with asyncio.timeout(2.0):
                    await self.services.predictions.put(records)
                breaker.success()
            except _FAILURES as exc:
                breaker.failure()
                self.metrics.child("write_back_dropped").inc(len(records))
                log.warning("write-back of %d predictions failed: %s", len(records), exc)

    # -- step 3: fallbacks -----------------------------------------------------------

    async def _fallback(
        self, route: str, cfg: RouteConfig, req: PredictRequest, job: _Job, request_id: str
    ) -> None:
        for i in job.open():
            if job.stored[i] is None:
                job.stored[i] = self.cache.get(route, job.keys[i], job.at)
        unread = [i for i in job.open() if job.stored[i] is None]
        if (
            unread
            and req.mode == "compute"
            and any(isinstance(s, StalePredictionStep) for s in cfg.fallback)
        ):
            # Step 1 was skipped for this request; the stale fallback still needs the store.
            keys = [job.keys[i] for i in unread]
            run_id = self._runs.get(route, (None, 0.0))[0]
            records = await self._call(
                "prediction_store",
                job,
                unread,
                "fallback store read",
                self.services.predictions.get(route, keys, run_id=run_id),
            )
            for i, rec in zip(unread, records or [None] * len(unread), strict=True):
                job.stored[i] = rec
        for n, step in enumerate(cfg.fallback):
            todo = job.open()
            if not todo:
                return
            if isinstance(step, StalePredictionStep):
                for i in todo:
                    rec = job.stored[i]
                    if rec is None:
                        job.trail[i].append("fallback stale_prediction: none stored")
                    elif step.max_age is not None and job.at - rec.as_of > step.max_age:
                        job.trail[i].append("fallback stale_prediction: older than max_age")
                    else:
                        job.answers[i] = self._answer(
                            rec, "fallback:stale_prediction", job.at, True
                        )
                        self.metrics.child(
                            "fallbacks", route, "stale_prediction", _reason(job.trail[i])
                        ).inc()
            elif isinstance(step, ModelStep):
                model = self.models.get(route, f"fallback{n}")
                if model is None:
                    self._note(job, todo, f"fallback model {step.model}: not loaded")
                    continue
                records = await self._score(
                    route,
                    job,
                    todo,
                    model,
                    request_id,
                    f"fallback model {model.label}",
                    req.probabilities,
                )
                by_key = {r.entity: r for r in records}
                for i in todo:
                    rec = by_key.get(job.keys[i])
                    if rec is not None:
                        job.answers[i] = self._answer(
                            rec, "fallback:model", job.at, True, req.probabilities
                        )
                        self.metrics.child("fallbacks", route, "model", _reason(job.trail[i])).inc()
            elif isinstance(step, DefaultStep):
                for i in todo:
                    job.answers[i] = {
                        "entity": job.keys[i],
                        "score": step.default,
                        "label": None,
                        "source": "fallback:default",
                        "model": None,
                        "model_version": None,
                        "as_of": None,
                        "age_s": None,
                        "degraded": True,
                    }
                    self.metrics.child("fallbacks", route, "default", _reason(job.trail[i])).inc()

    # -- the answer ------------------------------------------------------------------

    @staticmethod
    def _answer(
        rec: PredictionRecord, source: str, at: float, degraded: bool, probabilities: bool = False
    ) -> dict[str, Any]:
        out = {
            "entity": rec.entity,
            "score": rec.score,
            "label": rec.label,
            "source": source,
            "model": rec.model,
            "model_version": rec.model_version,
            "as_of": to_iso(rec.as_of),
            "age_s": round(max(0.0, at - rec.as_of), 3),
            "degraded": degraded,
        }
        if probabilities and rec.probabilities is not None:
            out["probabilities"] = rec.probabilities
        return out

    def _outcome(self, route: str, job: _Job, request_id: str) -> Outcome:
        m = self.metrics
        answered = [a for a in job.answers if a is not None]
        for a in answered:
            m.child("requests", route, a["source"], "ok").inc()
            if a["age_s"] is not None:
                m.child("prediction_age", route).observe(a["age_s"])
        versions = ",".join(
            sorted(
                {f"{a['model']}/{a['model_version']}" for a in answered if a["model"] is not None}
            )
        )
        sources = ",".join(sorted({a["source"] for a in answered}))
        if len(answered) == len(job.keys):
            return Outcome(
                200,
                {"request_id": request_id, "route": route, "predictions": answered},
                versions,
                sources,
            )
        missing = [
            {"entity": job.keys[i], "steps": job.trail[i]}
            for i, a in enumerate(job.answers)
            if a is None
        ]
        m.child("requests", route, "none", "unavailable").inc(len(missing))
        return Outcome(
            503,
            {
                "error": f"no acceptable prediction for {len(missing)} of {len(job.keys)} "
                f"entities of route {route!r}",
                "type": "NoFreshPrediction",
                "request_id": request_id,
                "route": route,
                "predictions": answered,
                "unanswered": missing,
            },
            versions,
            sources,
        )

    async def flush(self) -> None:
        """Wait for pending write-backs and shadow comparisons."""
        if self._writebacks:
            await asyncio.wait(list(self._writebacks), timeout=5)
        await self.shadow.drain()

    async def close(self) -> None:
        self.lag.stop()
        await self.shadow.close()
        if self._writebacks:
            await asyncio.wait(self._writebacks, timeout=5)


_REASONS = (  # (text in a trail step, reason label), most specific first
    ("circuit open", "breaker_open"),
    ("deadline passed", "deadline"),
    ("shed (", "overload"),
    ("(busy)", "overload"),
    ("timed out", "timeout"),
    ("failed (", "error"),
)


def _reason(trail: list[str]) -> str:
    """Why the primary path did not answer, as a metric label (from the entity's trail).

    The first failed dependency decides: its outcome (``breaker_open``,
    ``deadline``, ``overload``, ``timeout``, ``error``), a row the model's Scorer rejected
    (``invalid_features``), or, when nothing was computed, what the store held
    (``stale``, ``other_version``, ``miss``).
    """
    steps = [s for s in trail if not s.startswith("fallback")]
    for step in steps:  # the first dependency that failed is the cause
        for text, reason in _REASONS:
            if text in step:
                return reason
    if any(s.startswith("compute") for s in steps):
        return "invalid_features"
    for step in steps:
        if ": stale" in step:
            return "stale"
        if ": made by" in step:
            return "other_version"
    return "miss"
