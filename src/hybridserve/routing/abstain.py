"""Abstention on the online path: answers a route sends to human review.

Before an answer is sent (streamed as its step gives it, or rendered in the response),
:class:`Abstain` applies the route's review rule (``quality/review.py``) to it: one that
matches is marked ``decision: review`` (its score stays in the answer) and its case, with what
it was made from (the model version, the source, the trail of the steps, the feature values and
request features), goes to the review writer, off the request path. Each abstention is counted
by route and condition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybridserve.quality.review import ReviewCase, ReviewRule, ReviewWriter

if TYPE_CHECKING:
    from hybridserve.config import Project
    from hybridserve.observability.metrics import Metrics
    from hybridserve.routing.job import Entity, Job


class Abstain:
    """The router's ``decide`` hook for routes with a ``review`` block."""

    def __init__(self, project: Project, writer: ReviewWriter, metrics: Metrics) -> None:
        self.rules = {
            name: ReviewRule(cfg.review, name)
            for name, cfg in project.routes.items()
            if cfg.review is not None
        }
        self.writer = writer
        self.metrics = metrics

    def __call__(self, job: Job, entities: list[Entity]) -> None:
        """Judge the answers of ``entities`` (each once: before it is streamed or rendered)."""
        rule = self.rules.get(job.route)
        if rule is None:
            return
        for e in entities:
            a = e.answer
            if a is None:
                continue
            reasons = rule.reasons(a.score, a.degraded, e.values)
            if not reasons:
                continue
            a.decision = "review"
            for reason in reasons:
                self.metrics.child("reviews", job.route, reason.partition(":")[0]).inc()
            self.writer.offer(
                ReviewCase(
                    queue=rule.queue,
                    route=job.route,
                    request_id=job.request_id,
                    entity=e.key,
                    score=a.score,
                    model=a.model,
                    model_version=a.model_version,
                    source=a.source,
                    degraded=a.degraded,
                    reasons=reasons,
                    context={
                        "label": a.label,
                        "as_of": a.as_of,
                        "age_s": a.age_s,
                        "routed_to": e.model.label,
                        "steps": e.trail(),
                        "features": e.values,
                        "request_features": e.extra,
                    },
                )
            )
