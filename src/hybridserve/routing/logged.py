"""The router's side of the prediction log: a finished request's answers, sampled per route.

The router calls :func:`log_job` from one place, and only when ``log.online`` is set (some
route samples online answers), so a project that logs nothing pays one attribute check.
"""

from __future__ import annotations

from hybridserve.quality.log import PredictionLog, row
from hybridserve.records import now
from hybridserve.routing.job import Job


def log_job(plog: PredictionLog, job: Job) -> None:
    """Offer each answered entity of ``job`` to the log, as the route's sampling draws."""
    route = job.route
    keep = plog.keep(route)
    latency_ms = (now() - job.at) * 1000
    for e in job.entities:
        a = e.answer
        if a is None or not plog.sampled(route, "online"):
            continue
        plog.offer(
            row(
                ts=job.at,
                route=route,
                source=a.source,
                entity=e.key,
                model=a.model,
                model_version=a.model_version,
                score=a.score,
                label=a.label,
                degraded=a.degraded,
                latency_ms=latency_ms,
                request_id=job.request_id,
                features=e.values,
                keep=keep,
            ),
            e.values,
        )
