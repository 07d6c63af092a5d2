"""Progressive rollouts as rows of the registry database: the state every worker follows.

A rollout moves one route from its primary version to a candidate through the stages of its
plan (``config.RolloutPlan``): a shadow step, then canary steps, then a promote. Its row says
where it is (``state``, ``step``); workers poll :meth:`Rollouts.active` (one indexed read) and
route accordingly, so a move reaches every process within a poll interval and survives
restarts. Every move is written in the same transaction as an audit-log row carrying the
figures that caused it; the final promote moves the alias in that transaction too.

Each worker writes its running per-arm totals for the current step (``rollout_stats``, one row
per rollout, step, worker and arm, replaced on every write), and the controller sums them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, select, update

from hybridserve.config import RolloutPlan, RolloutStage
from hybridserve.errors import Conflict, NotFound
from hybridserve.records import now
from hybridserve.registry import queries as q
from hybridserve.registry import schema as t
from hybridserve.registry.refs import ModelRef

if TYPE_CHECKING:
    from hybridserve.registry.registry import Registry

State = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
ACTIVE: tuple[State, ...] = ("running", "paused")
_r = t.rollouts
_s = t.rollout_stats


@dataclass(slots=True, frozen=True)
class Rollout:
    id: int
    route: str
    model: str
    version: int
    alias: str
    plan: RolloutPlan
    state: State
    step: int
    step_started_at: float
    started_at: float
    started_by: str
    updated_at: float
    reason: str

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Rollout:
        return cls(
            id=int(row["id"]),
            route=row["route"],
            model=row["model"],
            version=int(row["version"]),
            alias=row["alias"],
            plan=RolloutPlan.model_validate(row["plan"]),
            state=row["state"],
            step=int(row["step"]),
            step_started_at=float(row["step_started_at"]),
            started_at=float(row["started_at"]),
            started_by=row["started_by"],
            updated_at=float(row["updated_at"]),
            reason=row["reason"] or "",
        )

    @property
    def label(self) -> str:
        return f"{self.model}/{self.version}"

    def stages(self) -> list[tuple[str, RolloutStage]]:
        """``(kind, stage)`` in order: ``shadow`` (when planned), then ``canary`` steps."""
        out = [("shadow", self.plan.shadow)] if self.plan.shadow is not None else []
        return out + [("canary", s) for s in self.plan.steps]

    def stage(self) -> tuple[str, RolloutStage]:
        return self.stages()[self.step]

    @property
    def canary_percent(self) -> float:
        """The share of entities routed to the candidate now (0 unless running or paused)."""
        if self.state not in ACTIVE:
            return 0.0
        kind, stage = self.stage()
        return stage.percent if kind == "canary" else 0.0

    @property
    def shadow_percent(self) -> float:
        """The share of the primary's computed answers also scored on the candidate."""
        shadow = self.plan.shadow
        return shadow.percent if shadow is not None and self.state in ACTIVE else 0.0

    def to_json(self) -> dict[str, Any]:
        kind = self.stage()[0]
        return {
            "id": self.id,
            "route": self.route,
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "state": self.state,
            "step": self.step,
            "stage": kind,
            "stages": len(self.stages()),
            "canary_percent": self.canary_percent,
            "shadow_percent": self.shadow_percent,
            "step_started_at": self.step_started_at,
            "started_at": self.started_at,
            "started_by": self.started_by,
            "reason": self.reason,
            "plan": self.plan.model_dump(mode="json"),
        }


class Rollouts:
    """The rollout rows of a :class:`Registry`'s database."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = now) -> None:
        self.registry = registry
        self.clock = clock
        """Wall-clock time of moves (tests pass a fake one, so steps take no real time)."""

    # -- reads -------------------------------------------------------------------------

    def active(self) -> list[Rollout]:
        """Running and paused rollouts (what workers follow)."""
        with self.registry._tx() as conn:
            rows = conn.execute(select(_r).where(_r.c.state.in_(ACTIVE))).mappings()
            return [Rollout.from_row(r) for r in rows]

    def get(self, rollout_id: int) -> Rollout:
        with self.registry._tx() as conn:
            return self._get(conn, rollout_id)

    def latest(self, route: str | None = None, model: str | None = None) -> list[Rollout]:
        """Rollouts of ``route`` (or of ``model``), newest first."""
        query = select(_r).order_by(_r.c.id.desc()).limit(20)
        if route is not None:
            query = query.where(_r.c.route == route)
        if model is not None:
            query = query.where(_r.c.model == model)
        with self.registry._tx() as conn:
            return [Rollout.from_row(r) for r in conn.execute(query).mappings()]

    def stats(self, rollout_id: int, step: int) -> dict[str, list[dict[str, Any]]]:
        """Arm -> each worker's totals for the step."""
        query = select(_s.c.arm, _s.c.counts).where(
            _s.c.rollout_id == rollout_id, _s.c.step == step
        )
        out: dict[str, list[dict[str, Any]]] = {}
        with self.registry._tx() as conn:
            for arm, counts in conn.execute(query):
                out.setdefault(arm, []).append(dict(counts))
        return out

    # -- writes ------------------------------------------------------------------------

    def start(
        self, route: str, model: str, version: int, alias: str, plan: RolloutPlan, *, actor: str
    ) -> Rollout:
        """Begin rolling ``model/version`` out on ``route`` (one active rollout per route)."""
        at = self.clock()
        with self.registry._tx(write=True) as conn:
            self.registry._lock_model(conn, model)
            q.fetch_version(conn, ModelRef(model, version=version))  # ModelNotFound
            busy = conn.execute(
                select(_r.c.id, _r.c.model, _r.c.version).where(
                    _r.c.route == route, _r.c.state.in_(ACTIVE)
                )
            ).first()
            if busy is not None:
                raise Conflict(
                    f"route {route!r} already has rollout {busy.id} of {busy.model}/"
                    f"{busy.version} in progress: abort it first"
                )
            row = {
                "route": route,
                "model": model,
                "version": version,
                "alias": alias,
                "plan": plan.model_dump(mode="json"),
                "state": "running",
                "step": 0,
                "step_started_at": at,
                "started_at": at,
                "started_by": actor,
                "updated_at": at,
                "reason": "",
            }
            inserted = conn.execute(_r.insert().values(**row)).inserted_primary_key
            assert inserted is not None
            new_id = int(inserted[0])
            rollout = Rollout.from_row({**row, "id": new_id})
            kind, stage = rollout.stage()
            q.write_audit(
                conn,
                actor,
                "rollout_start",
                model,
                alias,
                None,
                version,
                {"rollout": new_id, "route": route, "stage": kind, "percent": stage.percent},
            )
        return rollout

    def move(
        self,
        rollout: Rollout,
        action: str,
        *,
        actor: str,
        state: State | None = None,
        step: int | None = None,
        reason: str = "",
        details: dict[str, Any] | None = None,
    ) -> Rollout:
        """Change ``rollout``'s state or step, audited as ``action`` with ``details``.

        Only from the state and step it was read at (a Conflict otherwise: another process
        moved it first). A move to ``promoted`` also points the alias at the candidate."""
        at = self.clock()
        values: dict[str, Any] = {"updated_at": at, "reason": reason}
        if state is not None:
            values["state"] = state
        if step is not None:
            values.update(step=step, step_started_at=at)
        with self.registry._tx(write=True) as conn:
            self.registry._lock_model(conn, rollout.model)
            done = conn.execute(
                update(_r)
                .where(
                    _r.c.id == rollout.id,
                    _r.c.state == rollout.state,
                    _r.c.step == rollout.step,
                )
                .values(**values)
            ).rowcount
            if done != 1:
                now_is = self._get(conn, rollout.id)
                raise Conflict(
                    f"rollout {rollout.id} is {now_is.state} at step {now_is.step}, "
                    f"not {rollout.state} at step {rollout.step}"
                )
            primary = q.alias_version(conn, rollout.model, rollout.alias)
            if state == "promoted":
                self.registry._set(
                    conn, rollout.model, rollout.alias, rollout.version, "promote", actor
                )
            q.write_audit(
                conn,
                actor,
                action,
                rollout.model,
                rollout.alias,
                primary,
                rollout.version,
                {
                    "rollout": rollout.id,
                    "route": rollout.route,
                    "reason": reason,
                    **(details or {}),
                },
            )
            return self._get(conn, rollout.id)

    def lease(self, rollout_id: int, owner: str, seconds: float) -> bool:
        """Take or renew the right to judge ``rollout_id`` for ``seconds``: one controller at
        a time, and another takes over when the holder stops renewing."""
        at = self.clock()
        with self.registry._tx(write=True) as conn:
            done = conn.execute(
                update(_r)
                .where(_r.c.id == rollout_id)
                .where(
                    (_r.c.lease_owner == owner)
                    | (_r.c.lease_until.is_(None))
                    | (_r.c.lease_until < at)
                )
                .values(lease_owner=owner, lease_until=at + seconds)
            ).rowcount
        return bool(done)

    def put_stats(self, worker: str, rows: list[tuple[int, int, str, dict[str, Any]]]) -> None:
        """Replace this worker's totals: ``(rollout_id, step, arm, counts)`` each."""
        if not rows:
            return
        at = self.clock()
        with self.registry._tx(write=True) as conn:
            for rollout_id, step, arm, counts in rows:
                key = (
                    (_s.c.rollout_id == rollout_id)
                    & (_s.c.step == step)
                    & (_s.c.worker == worker)
                    & (_s.c.arm == arm)
                )
                done = conn.execute(
                    update(_s).where(key).values(counts=counts, updated_at=at)
                ).rowcount
                if not done:
                    conn.execute(
                        _s.insert().values(
                            rollout_id=rollout_id,
                            step=step,
                            worker=worker,
                            arm=arm,
                            counts=counts,
                            updated_at=at,
                        )
                    )

    def _get(self, conn: Connection, rollout_id: int) -> Rollout:
        row = conn.execute(select(_r).where(_r.c.id == rollout_id)).mappings().first()
        if row is None:
            raise NotFound(f"no rollout {rollout_id}")
        return Rollout.from_row(row)
