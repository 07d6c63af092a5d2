"""One request in flight: a record per entity, why a step did not answer, and the answer.

The router works on a :class:`Job`: one :class:`Entity` per requested key, holding everything
known about it so far (its request features, the model it is routed to, a stale candidate for
the fallback, its feature values and their age) and, once answered, its :class:`Answer`.

Why a step did not answer is a :class:`Reason`, not text: the metric label for a fallback is
derived from the reasons recorded (:meth:`Entity.reason`), and the human-readable trail
(``store: stale (age 9000s > 3600s)``, ...) is rendered only when an answer is degraded or
missing, from the same :class:`Note` values.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from hybridserve.records import PredictionRecord, to_iso

Emit = Callable[[list[dict[str, Any]]], Awaitable[None]]
"""Receives answers (as their JSON) as soon as a step gives them."""

if TYPE_CHECKING:
    from hybridserve.config import RouteConfig
    from hybridserve.observability.metrics import RouteMetrics
    from hybridserve.routing.models import LoadedModel


class Reason(Enum):
    """Why a step did not answer an entity."""

    MISS = "miss"
    """Nothing stored (or cached) for it."""
    STALE = "stale"
    """Stored, but older than the request's staleness bound (or the fallback's ``max_age``)."""
    OTHER_VERSION = "other_version"
    """Stored, but made by another model version than the one it is routed to."""
    BREAKER_OPEN = "breaker_open"
    DEADLINE = "deadline"
    """No time left for the step."""
    OVERLOAD = "overload"
    """This process was too busy: shed by the micro-batcher, or a timeout the loop explains."""
    TIMEOUT = "timeout"
    ERROR = "error"
    INVALID_FEATURES = "invalid_features"
    """The model's Scorer rejected the entity's features."""
    NOT_LOADED = "not_loaded"
    """A fallback model that is not loaded."""


FAILURES = frozenset(
    {Reason.BREAKER_OPEN, Reason.DEADLINE, Reason.OVERLOAD, Reason.TIMEOUT, Reason.ERROR}
)
"""A dependency's outcome: the first of these in the primary path is why an entity fell back."""
_HELD = frozenset({Reason.STALE, Reason.OTHER_VERSION})


@dataclass(slots=True, frozen=True)
class Note:
    """One step's finding for one entity: ``step: detail`` in the trail."""

    step: str
    reason: Reason
    detail: str = ""

    def text(self) -> str:
        return f"{self.step}: {self.detail or self.reason.value.replace('_', ' ')}"


@dataclass(slots=True)
class Answer:
    """One entity's answer, as ``predictions[]`` of the hybrid API documents it."""

    entity: str
    score: float
    label: Any
    source: str
    """``cache``, ``batch``, ``stream``, ``online`` or ``fallback:<kind>``."""
    model: str | None
    model_version: int | None
    as_of: float | None
    age_s: float | None
    degraded: bool
    probabilities: dict[str, float] | None = None

    @classmethod
    def of(
        cls,
        rec: PredictionRecord,
        source: str,
        at: float,
        *,
        degraded: bool,
        probabilities: bool = False,
    ) -> Answer:
        return cls(
            rec.entity,
            rec.score,
            rec.label,
            source,
            rec.model,
            rec.model_version,
            rec.as_of,
            round(max(0.0, at - rec.as_of), 3),
            degraded,
            rec.probabilities if probabilities else None,
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "entity": self.entity,
            "score": self.score,
            "label": self.label,
            "source": self.source,
            "model": self.model,
            "model_version": self.model_version,
            "as_of": None if self.as_of is None else to_iso(self.as_of),
            "age_s": self.age_s,
            "degraded": self.degraded,
        }
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
        return out


@dataclass(slots=True)
class Entity:
    """Everything the router knows about one requested entity."""

    key: str
    extra: dict[str, Any] | None
    """Request-time features for it (``None``: none)."""
    model: LoadedModel
    """The version it is routed to: the primary, or the canary for entities in its share."""
    answer: Answer | None = None
    stale: PredictionRecord | None = None
    """The freshest stored record seen that could not be served: the stale fallback's answer."""
    values: dict[str, Any] | None = None
    """Feature values, once read (shared by the compute step and fallback models)."""
    feature_as_of: float | None = None
    """Event time of the stalest stored feature view read for it."""
    notes: list[Note] | None = None
    failure: Reason | None = None
    """The first dependency failure on the primary path."""
    held: Reason | None = None
    """The first stored-but-unservable finding (stale, other version)."""
    rejected: bool = False
    """The primary model's Scorer rejected its features."""
    sent: bool = False
    """Its answer was already given to the request's ``emit`` (a streamed answer)."""

    def note(self, step: str, reason: Reason, detail: str = "", *, primary: bool = True) -> None:
        if self.notes is None:
            self.notes = []
        self.notes.append(Note(step, reason, detail))
        if not primary:
            return
        if reason in FAILURES:
            if self.failure is None:
                self.failure = reason
        elif reason is Reason.INVALID_FEATURES:
            self.rejected = True
        elif reason in _HELD and self.held is None:
            self.held = reason

    def reason(self) -> Reason:
        """Why the primary path did not answer: the first dependency that failed, else a
        rejected row, else what the store held (stale, other version), else a miss."""
        if self.failure is not None:
            return self.failure
        if self.rejected:
            return Reason.INVALID_FEATURES
        return self.held or Reason.MISS

    def trail(self) -> list[str]:
        return [n.text() for n in self.notes or ()]

    def keep_stale(self, rec: PredictionRecord) -> None:
        if self.stale is None or rec.as_of > self.stale.as_of:
            self.stale = rec


@dataclass(slots=True)
class Job:
    """One request in flight."""

    route: str
    cfg: RouteConfig
    entities: list[Entity]
    at: float
    """Wall-clock time the request started (ages are measured from it)."""
    deadline: float
    """Loop time by which every answer must be ready."""
    request_staleness: float | None
    """The request's own ``max_staleness`` (it only tightens the route's bounds)."""
    request_id: str
    probabilities: bool
    metrics: RouteMetrics
    emit: Emit | None = None
    """Where new answers go as each step gives them (a streamed answer), if anywhere."""

    def open(self) -> list[Entity]:
        return [e for e in self.entities if e.answer is None]

    async def flush(self) -> None:
        """Give ``emit`` the answers it has not had yet (nothing without one)."""
        if self.emit is None:
            return
        new = [e for e in self.entities if e.answer is not None and not e.sent]
        if new:
            for e in new:
                e.sent = True
            await self.emit([e.answer.to_json() for e in new if e.answer is not None])

    def staleness(self, source: str) -> float:
        """How old a stored record from ``source`` may be for this request."""
        bound = self.cfg.staleness(source)
        asked = self.request_staleness
        return bound if asked is None else min(bound, asked)

    def note(self, todo: list[Entity], step: str, reason: Reason, detail: str = "") -> None:
        primary = not step.startswith("fallback")
        for e in todo:
            e.note(step, reason, detail, primary=primary)

    def fell_back(self, e: Entity, answer: Answer, kind: str) -> None:
        """Give ``e`` a fallback's answer and count it with why the primary path did not."""
        e.answer = answer
        self.metrics.fallbacks(kind, e.reason().value).inc()
