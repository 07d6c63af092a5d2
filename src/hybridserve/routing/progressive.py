"""Following progressive rollouts in a serving process: the splits, per-arm counts, the poll.

:class:`Splits` answers the router's two questions per request: which canary (and share) an
entity may go to, and which model (and share) computed answers are shadowed on. A rollout in
progress (``registry/rollouts.py``) overrides the project file's fixed ``canary`` and
``shadow``. :class:`ArmRecorder` runs after every answer: it counts requests, answers,
model errors, degraded answers and latency per model version (Prometheus), and per arm of a
rollout's current step (``primary``, ``candidate``); shadow agreement reaches it from the
shadow scorer. :class:`RolloutFollower` polls the registry every ``server.reload_interval``:
it loads a new candidate off the event loop, moves the splits, writes this process's per-arm
totals, and (in the process holding the lease) lets the controller judge the step.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hybridserve.quality.rollout import RolloutController, latency_bucket, new_counts, worker_id
from hybridserve.records import now
from hybridserve.registry.rollouts import Rollouts
from hybridserve.routing.job import Reason

if TYPE_CHECKING:
    from hybridserve.config import Project
    from hybridserve.observability.metrics import Metrics
    from hybridserve.records import PredictionRecord
    from hybridserve.registry import Registry
    from hybridserve.routing.job import Entity, Job
    from hybridserve.routing.models import LoadedModel, ModelManager

log = logging.getLogger("hybridserve.rollout")
_MODEL_FAILED = frozenset({Reason.ERROR, Reason.TIMEOUT, Reason.BREAKER_OPEN})
"""Outcomes of the compute step that say the model failed (its breaker opens on failures)."""


@dataclass(slots=True, frozen=True)
class RolloutArm:
    """What a process serves of one rollout: its current step and the candidate loaded."""

    rollout_id: int
    step: int
    model: LoadedModel
    canary_percent: float
    shadow_percent: float


class Splits:
    """The canary and shadow of each route: a rollout's, else the project file's."""

    def __init__(self, project: Project, models: ModelManager) -> None:
        self.project = project
        self.models = models
        self.rollouts: dict[str, RolloutArm] = {}

    def canary(self, route: str) -> tuple[LoadedModel | None, float]:
        arm = self.rollouts.get(route)
        if arm is not None:
            return arm.model, arm.canary_percent
        cfg = self.project.routes[route].canary
        if cfg is None:
            return None, 0.0
        return self.models.get(route, "canary"), cfg.percent

    def shadow(self, route: str) -> tuple[LoadedModel | None, float]:
        arm = self.rollouts.get(route)
        if arm is not None:  # at a full canary, nothing is left to compare with
            return arm.model, arm.shadow_percent if arm.canary_percent < 100 else 0.0
        cfg = self.project.routes[route].shadow
        if cfg is None:
            return None, 0.0
        return self.models.get(route, "shadow"), cfg.percent


def _failed(e: Entity) -> bool:
    """The entity's model call failed (or nothing answered it)."""
    if e.answer is None:
        return True
    if e.notes is None:  # answered at the first step it tried (most answers)
        return False
    return any(n.step == "compute" and n.reason in _MODEL_FAILED for n in e.notes)


class ArmRecorder:
    """Counts answers per model version, and per arm of each rollout's current step."""

    def __init__(self, metrics: Metrics, splits: Splits) -> None:
        self.metrics = metrics
        self.splits = splits
        self.counts: dict[tuple[int, int, str], dict[str, Any]] = {}
        """(rollout id, step, arm) -> this process's totals."""
        self._bound: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}

    def __call__(self, job: Job) -> None:
        elapsed = max(0.0, now() - job.at)
        groups: dict[int, tuple[LoadedModel, list[int]]] = {}
        for e in job.entities:
            group = groups.get(id(e.model))
            if group is None:
                group = groups[id(e.model)] = (e.model, [0, 0, 0])
            tally = group[1]
            tally[0] += 1
            if _failed(e):
                tally[1] += 1
            if e.answer is None or e.answer.degraded:
                tally[2] += 1
        arm = self.splits.rollouts.get(job.route)
        for model, (n, errors, degraded) in groups.values():
            bound = self._bound.get((job.route, model.label))
            if bound is None:
                bound = self._bind(job.route, model)
            total, failed, fell_back, seconds = bound
            total.inc(n)
            if errors:
                failed.inc(errors)
            if degraded:
                fell_back.inc(degraded)
            seconds.observe(elapsed)
            if arm is not None:
                c = self._counts(arm, model)
                c["requests"] += 1
                c["answers"] += n
                c["errors"] += errors
                c["degraded"] += degraded
                bucket = str(latency_bucket(elapsed))
                c["latency"][bucket] = c["latency"].get(bucket, 0) + 1

    def _bind(self, route: str, model: LoadedModel) -> tuple[Any, Any, Any, Any]:
        """The version's metric children, bound once (not looked up per request)."""
        labels = (route, model.name, str(model.version))
        answers = self.metrics.arm_answers
        bound = (
            answers.labels(*labels, "total"),
            answers.labels(*labels, "error"),
            answers.labels(*labels, "degraded"),
            self.metrics.arm_seconds.labels(*labels),
        )
        self._bound[(route, model.label)] = bound
        return bound

    def _counts(self, arm: RolloutArm, model: LoadedModel) -> dict[str, Any]:
        side = "candidate" if model.label == arm.model.label else "primary"
        key = (arm.rollout_id, arm.step, side)
        c = self.counts.get(key)
        if c is None:
            c = self.counts[key] = new_counts()
        return c

    def compared(
        self, route: str, model: LoadedModel, primary: PredictionRecord, agreed: bool
    ) -> None:
        """A shadow comparison on ``model`` (the shadow scorer's ``on_compare``); an answer
        the candidate made itself (a canary entity) is no comparison."""
        arm = self.splits.rollouts.get(route)
        if (
            arm is not None
            and model.label == arm.model.label
            and (primary.model, primary.model_version) != (model.name, model.version)
        ):
            self._counts(arm, model)["agree" if agreed else "disagree"] += 1

    def snapshot(self) -> list[tuple[int, int, str, dict[str, Any]]]:
        """Totals of the steps in progress (a copy); those of finished steps are forgotten."""
        live = {(a.rollout_id, a.step) for a in self.splits.rollouts.values()}
        for key in [k for k in self.counts if k[:2] not in live]:
            del self.counts[key]
        return [(*k, {**c, "latency": dict(c["latency"])}) for k, c in self.counts.items()]


class RolloutFollower:
    """Keeps a process's :class:`Splits` on the registry's rollouts and reports its counts."""

    def __init__(
        self,
        registry: Registry,
        models: ModelManager,
        splits: Splits,
        recorder: ArmRecorder,
        *,
        interval: float,
        controller: RolloutController | None = None,
    ) -> None:
        self.rollouts = Rollouts(registry)
        self.models = models
        self.splits = splits
        self.recorder = recorder
        self.interval = interval
        self.controller = controller
        self.worker = worker_id()
        self._task: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        """Follow the rollouts now and write this process's totals."""
        active = {r.route: r for r in await asyncio.to_thread(self.rollouts.active)}
        splits = self.splits.rollouts
        if any(route not in active for route in splits):
            # A rollout ended: when it promoted, the alias moved; follow it before the split
            # goes, so no request meanwhile goes back to the old version.
            await self.models.refresh()
        for route in [r for r in splits if r not in active]:
            del splits[route]
            self.models.uninstall(route, "rollout")
            log.info("route %s: rollout over, canary and shadow as in the project file", route)
        for route, r in active.items():
            if route not in self.splits.project.routes:
                continue
            held = splits.get(route)
            model = held.model if held is not None and held.model.label == r.label else None
            if model is None:
                try:
                    model = await asyncio.to_thread(
                        self.models.load_version, route, r.model, r.version
                    )
                except Exception as exc:
                    log.warning("rollout %d: cannot load %s: %s", r.id, r.label, exc)
                    continue
                self.models.install(route, "rollout", model)
            arm = RolloutArm(r.id, r.step, model, r.canary_percent, r.shadow_percent)
            if arm != held:
                splits[route] = arm
                log.info(
                    "route %s: rollout %d of %s %s at step %d (canary %g%%, shadow %g%%)",
                    *(route, r.id, r.label, r.state, r.step, arm.canary_percent),
                    arm.shadow_percent,
                )
        rows = self.recorder.snapshot()
        if rows:
            await asyncio.to_thread(self.rollouts.put_stats, self.worker, rows)

    async def step(self) -> None:
        """One poll: follow, and judge when this process runs the controller."""
        await self.sync()
        if self.controller is not None:
            moved = await asyncio.to_thread(self.controller.tick)
            if moved:
                await self.sync()  # a move made here applies here at once

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.step()
            except Exception:  # keep following even if one poll fails
                log.exception("following rollouts failed")

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
