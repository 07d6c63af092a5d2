"""The fallback chain: an ordered list of small step objects behind one interface.

Each kind of fallback is one class with ``kind`` (its metric label and the answer's source,
``fallback:<kind>``) and ``run(ctx, job, todo)``, which answers what it can of ``todo`` and
notes why for the rest. :data:`STEPS` maps each config class of ``routes.*.fallback`` to its
step class; :func:`build_chain` builds a route's chain from it. A new kind of fallback is one
class here and one line in the table (and its config class).

Steps reach the rest of the router only through :class:`Context`, so this module does not
import the router.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from hybridserve.config import DefaultStep as DefaultConfig
from hybridserve.config import ModelStep as ModelConfig
from hybridserve.config import StalePredictionStep as StaleConfig
from hybridserve.records import PredictionRecord
from hybridserve.routing.job import Answer, Entity, Job, Reason
from hybridserve.routing.models import LoadedModel


class Context(Protocol):
    """What a step may use of the router."""

    def model(self, route: str, role: str) -> LoadedModel | None: ...

    async def score(
        self, job: Job, todo: list[Entity], model: LoadedModel, step: str
    ) -> dict[str, PredictionRecord]:
        """Read features (if not yet read) and score ``todo`` on ``model``: key -> record."""
        ...


class Step(Protocol):
    kind: ClassVar[str]
    needs_stored: ClassVar[bool]
    """Whether the step answers from stored records (the router then reads them even for a
    ``compute`` request, which skipped the stored step)."""

    async def run(self, ctx: Context, job: Job, todo: list[Entity]) -> None: ...


class StaleStep:
    """The freshest stored record the request saw, however old (up to ``max_age``)."""

    kind: ClassVar[str] = "stale_prediction"
    needs_stored: ClassVar[bool] = True

    def __init__(self, cfg: StaleConfig, index: int) -> None:
        self.max_age = cfg.max_age

    async def run(self, ctx: Context, job: Job, todo: list[Entity]) -> None:
        step = f"fallback {self.kind}"
        for e in todo:
            rec = e.stale
            if rec is None:
                e.note(step, Reason.MISS, "none stored", primary=False)
            elif self.max_age is not None and job.at - rec.as_of > self.max_age:
                e.note(step, Reason.STALE, "older than max_age", primary=False)
            else:
                job.fell_back(
                    e,
                    Answer.of(rec, "fallback:" + self.kind, job.at, degraded=True),
                    "stale_prediction",
                )


class ModelStep:
    """A simpler model (itself a registered model), scored on the same features."""

    kind: ClassVar[str] = "model"
    needs_stored: ClassVar[bool] = False

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        self.ref = cfg.model
        self.role = f"fallback{index}"

    async def run(self, ctx: Context, job: Job, todo: list[Entity]) -> None:
        model = ctx.model(job.route, self.role)
        if model is None:
            job.note(todo, f"fallback model {self.ref}", Reason.NOT_LOADED, "not loaded")
            return
        records = await ctx.score(job, todo, model, f"fallback model {model.label}")
        for e in todo:
            rec = records.get(e.key)
            if rec is not None:
                answer = Answer.of(
                    rec, "fallback:model", job.at, degraded=True, probabilities=job.probabilities
                )
                job.fell_back(e, answer, self.kind)


class DefaultStep:
    """A constant score: always answers."""

    kind: ClassVar[str] = "default"
    needs_stored: ClassVar[bool] = False

    def __init__(self, cfg: DefaultConfig, index: int) -> None:
        self.default = cfg.default

    async def run(self, ctx: Context, job: Job, todo: list[Entity]) -> None:
        for e in todo:
            answer = Answer(
                e.key, self.default, None, "fallback:default", None, None, None, None, True
            )
            job.fell_back(e, answer, self.kind)


STEPS: dict[type[Any], Callable[[Any, int], Step]] = {
    StaleConfig: StaleStep,
    ModelConfig: ModelStep,
    DefaultConfig: DefaultStep,
}
"""Config class of a ``routes.*.fallback`` entry -> the step that runs it."""


def build_chain(steps: Sequence[Any]) -> list[Step]:
    """A route's fallback chain, in its declared order."""
    return [STEPS[type(cfg)](cfg, i) for i, cfg in enumerate(steps)]
