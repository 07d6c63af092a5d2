"""Abstention and the review queue: answers a route will not decide alone, and their labels.

A route's ``review`` block (``config.ReviewConfig``) says when it abstains. :class:`ReviewRule`
applies it to one answer (a score, whether it was degraded, the feature values it was made
from) and returns the reasons, if any; the router's hook (``routing/abstain.py``) then marks the
answer ``decision: review`` and hands the case to a :class:`ReviewWriter`, which writes it to
the ``review_cases`` table of the registry database in batches, off the request path (a full
queue drops the case and counts it, never slowing answers). :class:`ReviewQueue` is that table:
list, show, resolve with a label. Resolved labels are what ground-truth feedback reads
(:meth:`ReviewQueue.labels`): a reviewer's verdict is a true outcome for the request it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from hybridserve.config import ReviewConfig, ScoreBetween
from hybridserve.errors import Conflict, InvalidInput, NotFound, StoreError
from hybridserve.quality.feedback import FeedbackStore, Outcome
from hybridserve.records import now
from hybridserve.registry import schema as t

log = logging.getLogger("hybridserve.review")
Status = Literal["open", "resolved"]


class ReviewRule:
    """One route's abstention rule: which of its conditions an answer meets."""

    def __init__(self, cfg: ReviewConfig, route: str) -> None:
        self.queue = cfg.queue or route
        self.bands = [c.score_between for c in cfg.when if isinstance(c, ScoreBetween)]
        self.on_degraded = "degraded" in cfg.when
        self.critical = cfg.critical_features if "missing_critical_features" in cfg.when else []

    def reasons(
        self, score: float | None, degraded: bool, values: Mapping[str, Any] | None
    ) -> list[str]:
        """Why this answer goes to review (empty: it does not).

        ``values`` are the feature values the answer was computed from (``None`` for a
        stored answer: its features were not read, so no feature can be found missing)."""
        out = []
        if score is not None:
            for low, high in self.bands:
                if low <= score <= high:
                    out.append(f"score_between:{low:g}-{high:g}")
                    break
        if degraded and self.on_degraded:
            out.append("degraded")
        if values is not None and any(values.get(f) is None for f in self.critical):
            out.append("missing_critical_features")
        return out


@dataclass(slots=True)
class ReviewCase:
    """One abstained answer with what it was made from."""

    queue: str
    route: str
    request_id: str
    entity: str
    score: float | None
    model: str | None
    model_version: int | None
    source: str
    degraded: bool
    reasons: list[str]
    context: dict[str, Any]
    created_at: float = field(default_factory=now)
    id: int | None = None
    status: Status = "open"
    label: float | None = None
    resolved_by: str | None = None
    resolved_at: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def outcome(self) -> dict[str, Any]:
        """A resolved case as a true outcome for feedback: an id of its own (so loading it
        again changes nothing), the label, and the answer it is about."""
        return {
            "id": f"review:{self.id}",
            "value": self.label,
            "request_id": self.request_id,
            "entity": self.entity,
            "at": self.created_at,
        }


def feed_back(case: ReviewCase, feedback: FeedbackStore) -> None:
    """A resolved case's label, given to the route's feedback (idempotent by the case's id),
    so it counts in the route's online quality figures."""
    if case.label is not None:
        feedback.submit(case.route, [Outcome(**case.outcome())])


_FIELDS = tuple(ReviewCase.__dataclass_fields__)


def _case(row: Mapping[Any, Any]) -> ReviewCase:
    return ReviewCase(**{k: row[k] for k in _FIELDS})


class ReviewQueue:
    """The ``review_cases`` table of the registry database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _rows(self, query: Any) -> list[ReviewCase]:
        try:
            with self.engine.connect() as conn:
                return [_case(r) for r in conn.execute(query).mappings()]
        except OperationalError as exc:
            raise StoreError(f"registry database error: {exc.orig or exc}") from exc

    def add_many(self, cases: list[ReviewCase]) -> None:
        if not cases:
            return
        rows = []
        for c in cases:
            row = c.to_json()
            del row["id"]
            rows.append(row)
        try:
            with self.engine.connect().execution_options(hs_write=True) as conn, conn.begin():
                conn.execute(t.review_cases.insert(), rows)
        except OperationalError as exc:
            raise StoreError(f"registry database error: {exc.orig or exc}") from exc

    def cases(
        self,
        *,
        queue: str | None = None,
        route: str | None = None,
        status: Status | None = "open",
        limit: int = 50,
    ) -> list[ReviewCase]:
        """Cases, newest first."""
        rc = t.review_cases
        query = select(rc).order_by(rc.c.id.desc()).limit(limit)
        if queue is not None:
            query = query.where(rc.c.queue == queue)
        if route is not None:
            query = query.where(rc.c.route == route)
        if status is not None:
            query = query.where(rc.c.status == status)
        return self._rows(query)

    def get(self, case_id: int) -> ReviewCase:
        found = self._rows(select(t.review_cases).where(t.review_cases.c.id == case_id))
        if not found:
            raise NotFound(f"no review case {case_id}")
        return found[0]

    def resolve(
        self, case_id: int, label: float, *, actor: str, note: str | None = None
    ) -> ReviewCase:
        """Give case ``case_id`` its true label; resolving it again with the same label is a
        no-op, with another one a Conflict (a verdict is not silently rewritten)."""
        if label != label or label in (float("inf"), float("-inf")):
            raise InvalidInput("label: expected a finite number")
        rc = t.review_cases
        try:
            with self.engine.connect().execution_options(hs_write=True) as conn, conn.begin():
                row = (
                    conn.execute(select(rc).where(rc.c.id == case_id).with_for_update())
                    .mappings()
                    .first()
                )
                if row is None:
                    raise NotFound(f"no review case {case_id}")
                case = _case(row)
                if case.status == "resolved":
                    if case.label == label:
                        return case
                    raise Conflict(
                        f"review case {case_id} is already resolved with label {case.label:g} "
                        f"by {case.resolved_by}"
                    )
                values = {
                    "status": "resolved",
                    "label": label,
                    "resolved_by": actor,
                    "resolved_at": now(),
                    "note": note,
                }
                conn.execute(rc.update().where(rc.c.id == case_id).values(**values))
        except OperationalError as exc:
            raise StoreError(f"registry database error: {exc.orig or exc}") from exc
        for key, value in values.items():
            setattr(case, key, value)
        return case

    def labels(self, route: str, since: float = 0.0) -> list[ReviewCase]:
        """Resolved cases of ``route`` resolved after ``since``, oldest first: the labels
        ground-truth feedback takes (:meth:`ReviewCase.outcome`: by ``request_id`` and
        ``entity``)."""
        rc = t.review_cases
        query = (
            select(rc)
            .where(rc.c.route == route, rc.c.status == "resolved", rc.c.resolved_at > since)
            .order_by(rc.c.resolved_at)
        )
        return self._rows(query)


class ReviewWriter:
    """Writes offered cases to a :class:`ReviewQueue` in batches, off the request path.

    The queue is bounded: when the database is failing or too slow, cases are dropped and
    counted (``dropped``), and answers are never held up."""

    def __init__(
        self,
        queue: ReviewQueue,
        *,
        maxsize: int = 10_000,
        dropped: Callable[[int], None] | None = None,
        batch: int = 500,
    ) -> None:
        self.queue = queue
        self.maxsize = maxsize
        self.batch = batch
        self._dropped = dropped or (lambda n: None)
        self._pending: asyncio.Queue[ReviewCase] | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def offer(self, case: ReviewCase) -> None:
        if self._pending is None:
            self._pending = asyncio.Queue(self.maxsize)
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            self._pending.put_nowait(case)
        except asyncio.QueueFull:
            self._dropped(1)

    async def _run(self) -> None:
        assert self._pending is not None
        pending = self._pending
        while True:
            cases = [await pending.get()]
            while len(cases) < self.batch and not pending.empty():
                cases.append(pending.get_nowait())
            try:
                await asyncio.to_thread(self.queue.add_many, cases)
                self.written += len(cases)
            except Exception as exc:  # the database failing must not stop later cases
                self._dropped(len(cases))
                log.warning("could not write %d review cases: %s", len(cases), exc)
            finally:
                for _ in cases:
                    pending.task_done()

    async def flush(self) -> None:
        """Wait until every offered case is written (or dropped)."""
        if self._pending is not None:
            await self._pending.join()

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), 5.0)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
