"""Ground-truth feedback: true outcomes, kept beside the prediction log and joined to it.

An outcome names the answer it is about in one of two ways:

- by ``request_id`` (the ``request_id`` of the online answer, or the ``event_id`` of a stream
  answer, or a batch run's id) and, when that request answered several entities, ``entity``;
- by ``entity`` and time ``at``: the last answer served for the entity at or before ``at``
  (and at most ``quality.max_join_age`` before it).

Feedback is **idempotent by its id**: :meth:`FeedbackStore.submit` claims each id in the sink
(``SET NX`` on Redis) and keeps only the ids never seen, so a client that retries sends
nothing twice; reads also keep each id's first row. Two outcomes with *different* ids for
the same answer: the one received last wins (a correction). Outcomes are joined when the
figures are computed, not when they arrive, so **late** feedback (days after the answer) and
feedback that arrives before its answer has reached the log both count as soon as both sides
are there; :meth:`FeedbackStore.pairs` reports those still unmatched.

The window of the figures is by answer time: "the quality of what was served in the last
day", per model version.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hybridserve.config import Project
from hybridserve.quality.figures import Figures, figures
from hybridserve.quality.sinks import Sink
from hybridserve.records import now

_JOIN_COLUMNS = (
    "ts",
    "entity",
    "request_id",
    "event_id",
    "run_id",
    "score",
    "model",
    "model_version",
    "source",
)
"""What a join reads of the logged answers (not their features)."""


@dataclass(slots=True, frozen=True)
class Outcome:
    """One true outcome, as a client sends it."""

    id: str
    value: float
    request_id: str | None = None
    entity: str | None = None
    at: float | None = None
    """When the outcome is about (for a join by entity; default: when it was received)."""


@dataclass(slots=True)
class Pair:
    """An answer and its true outcome."""

    feedback_id: str
    answered_at: float
    score: float
    value: float
    model: str
    model_version: int
    source: str
    entity: str


@dataclass(slots=True)
class Joined:
    pairs: list[Pair]
    unmatched: int
    """Outcomes whose answer is not (or not yet) in the log."""


class FeedbackStore:
    def __init__(self, project: Project, sink: Sink) -> None:
        self.project = project
        self.sink = sink

    def submit(self, route: str, outcomes: Sequence[Outcome]) -> tuple[int, list[str]]:
        """Keep the outcomes whose ids are new: (how many were kept, the duplicate ids)."""
        self.project.route(route)  # a 404 for an unknown route
        fresh = self.sink.claim(route, [o.id for o in outcomes])
        received = now()
        rows = [
            {
                "ts": received,
                "id": o.id,
                "route": route,
                "request_id": o.request_id,
                "entity": o.entity,
                "at": received if o.at is None and o.request_id is None else o.at,
                "value": float(o.value),
            }
            for o, new in zip(outcomes, fresh, strict=True)
            if new
        ]
        if rows:
            self.sink.append("feedback", route, rows)
        return len(rows), [o.id for o, new in zip(outcomes, fresh, strict=True) if not new]

    def pairs(self, route: str, since: float, until: float | None = None) -> Joined:
        """The answers served in ``[since, until]`` that have an outcome, with it."""
        until = now() if until is None else until
        outcomes = self.sink.read("feedback", route, since)
        if not outcomes:  # no need to read the answers
            return Joined([], 0)
        answers = [
            a
            for a in self.sink.read("predictions", route, since, until, columns=_JOIN_COLUMNS)
            if a.get("score") is not None and a.get("model") is not None
        ]
        by_request: dict[str, list[dict[str, Any]]] = {}
        by_entity: dict[str, list[dict[str, Any]]] = {}
        for a in answers:
            for key in ("request_id", "event_id", "run_id"):
                if a.get(key):
                    by_request.setdefault(a[key], []).append(a)
            by_entity.setdefault(a["entity"], []).append(a)  # oldest first, as read
        max_age = self.project.route(route).quality.max_join_age
        found: dict[tuple[float, str, str], tuple[float, dict[str, Any], dict[str, Any]]] = {}
        seen: set[str] = set()
        unmatched = 0
        for fb in outcomes:
            if fb["id"] in seen:
                continue
            seen.add(fb["id"])
            answer = _match(fb, by_request, by_entity, max_age)
            if answer is None:
                unmatched += 1
                continue
            ident = (answer["ts"], answer["entity"], answer.get("request_id") or "")
            if ident not in found or fb["ts"] >= found[ident][0]:  # the latest outcome wins
                found[ident] = (fb["ts"], fb, answer)
        out = [
            Pair(
                fb["id"],
                a["ts"],
                float(a["score"]),
                float(fb["value"]),
                a["model"],
                int(a["model_version"]),
                a["source"],
                a["entity"],
            )
            for _, fb, a in found.values()
        ]
        out.sort(key=lambda p: p.answered_at)
        return Joined(out, unmatched)

    def quality(
        self, route: str, window: float | None = None
    ) -> tuple[dict[tuple[str, int], Figures], Joined]:
        """The figures per (model, version) over the answers of the last ``window`` seconds
        (default: the route's ``quality.window``), and the join they came from."""
        cfg = self.project.route(route)
        span = cfg.quality.window if window is None else window
        joined = self.pairs(route, now() - span)
        groups: dict[tuple[str, int], list[Pair]] = {}
        for p in joined.pairs:
            groups.setdefault((p.model, p.model_version), []).append(p)
        result = {
            key: figures(
                [p.score for p in ps],
                [p.value for p in ps],
                task=cfg.quality.task,
                threshold=cfg.threshold,
                bins=cfg.quality.bins,
            )
            for key, ps in sorted(groups.items())
        }
        return result, joined


def _match(
    fb: dict[str, Any],
    by_request: dict[str, list[dict[str, Any]]],
    by_entity: dict[str, list[dict[str, Any]]],
    max_age: float,
) -> dict[str, Any] | None:
    entity = fb.get("entity")
    if fb.get("request_id"):
        cands = by_request.get(fb["request_id"], [])
        if entity:
            cands = [a for a in cands if a["entity"] == entity]
        # A request that answered several entities needs the entity to say which.
        return cands[0] if len({a["entity"] for a in cands}) == 1 else None
    if not entity:
        return None
    answers = by_entity.get(entity, [])
    at = fb["at"] if fb.get("at") is not None else fb["ts"]
    i = bisect.bisect_right([a["ts"] for a in answers], at)
    if i == 0:
        return None
    answer = answers[i - 1]
    return answer if at - answer["ts"] <= max_age else None
