"""Guardrails of a progressive rollout: the figures of a step, the verdict, the controller.

Workers count, per rollout step and arm (``primary``, ``candidate``), requests, answers, model
errors, degraded answers, latencies (in fixed buckets, so totals of several workers add up)
and shadow agreement (``routing/progressive.py``), and write their totals to the registry
database. :func:`judge` turns the summed totals into :class:`Figures` and a :class:`Verdict`:
a guardrail breached (once it has ``min_samples`` to judge by) rolls the candidate back at
once; a step whose guardrails hold advances after its ``min_time`` and ``min_answers``; the
last one promotes. :class:`RolloutController` applies verdicts; several processes may run it,
and a lease in the rollout's row lets only one act at a time.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from hybridserve.config import Guardrails, Project, RolloutPlan
from hybridserve.errors import Conflict, InvalidInput, NotFound
from hybridserve.records import now
from hybridserve.registry import queries as q
from hybridserve.registry.refs import ModelRef
from hybridserve.registry.registry import Registry
from hybridserve.registry.rollouts import Rollout, Rollouts, State

log = logging.getLogger("hybridserve.rollout")

LATENCY_BOUNDS = tuple(0.0001 * 1.25**i for i in range(60))
"""Upper bounds of the latency buckets (0.1 ms to about 64 s, 25 % apart)."""
LOWER_IS_BETTER = frozenset({"brier", "log_loss", "mae", "rmse"})
"""Quality metrics where a larger value is worse (others, such as ``auc``, the reverse)."""

QualityProvider = Callable[[Rollout, str], tuple[float | None, float | None, int]]
"""``(rollout, metric) -> (candidate's value, primary's value, labelled answers)`` for the
current step, from ground-truth feedback."""
DriftProvider = Callable[[Rollout], float | None]
"""``rollout -> the largest PSI`` of the candidate's features and scores, when known."""


def latency_bucket(seconds: float) -> int:
    return bisect_left(LATENCY_BOUNDS, seconds)


def new_counts() -> dict[str, Any]:
    return {
        "requests": 0,
        "answers": 0,
        "errors": 0,
        "degraded": 0,
        "agree": 0,
        "disagree": 0,
        "latency": {},
    }


def merge(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several workers' totals."""
    total = new_counts()
    for part in parts:
        for key, value in part.items():
            if key == "latency":
                for bucket, n in value.items():
                    total["latency"][bucket] = total["latency"].get(bucket, 0) + n
            else:
                total[key] = total.get(key, 0) + value
    return total


def _quantile(latency: dict[str, int], q: float) -> float | None:
    n = sum(latency.values())
    if n == 0:
        return None
    rank = math.ceil(q * n)
    seen = 0
    for bucket in sorted(latency, key=int):
        seen += latency[bucket]
        if seen >= rank:
            i = int(bucket)
            return LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else math.inf
    return math.inf  # unreachable: the ranks add up to n


@dataclass(slots=True)
class Figures:
    """One arm's figures over one step."""

    requests: int
    answers: int
    error_rate: float | None
    degraded_share: float | None
    p99_s: float | None
    """Upper bound of the bucket holding the 99th percentile request latency."""
    comparisons: int
    agreement: float | None

    @classmethod
    def of(cls, counts: dict[str, Any]) -> Figures:
        answers, compared = counts["answers"], counts["agree"] + counts["disagree"]
        return cls(
            requests=counts["requests"],
            answers=answers,
            error_rate=counts["errors"] / answers if answers else None,
            degraded_share=counts["degraded"] / answers if answers else None,
            p99_s=_quantile(counts["latency"], 0.99),
            comparisons=compared,
            agreement=counts["agree"] / compared if compared else None,
        )


@dataclass(slots=True)
class Breach:
    guard: str
    value: float
    limit: float

    def text(self) -> str:
        return f"{self.guard} {self.value:.4g} beyond {self.limit:.4g}"


@dataclass(slots=True)
class Verdict:
    breaches: list[Breach]
    ready: bool
    """Every guardrail holds and the step's minimum time and answers are reached."""
    waiting: list[str]
    """What the step still waits for (empty when ready or breached)."""
    figures: dict[str, Any] = field(default_factory=dict)
    """Per arm, then the quality and drift figures used: what the audit log records."""


def judge(
    rollout: Rollout,
    stats: dict[str, list[dict[str, Any]]],
    at: float,
    *,
    budget: float,
    quality: QualityProvider | None = None,
    drift: DriftProvider | None = None,
) -> Verdict:
    """The verdict on ``rollout``'s current step from every worker's ``stats`` at time ``at``
    (``budget``: the route's latency budget, the default p99 limit)."""
    kind, stage = rollout.stage()
    g = stage.guardrails or rollout.plan.guardrails
    cand = Figures.of(merge(stats.get("candidate", ())))
    prim = Figures.of(merge(stats.get("primary", ())))
    figures: dict[str, Any] = {"candidate": asdict(cand), "primary": asdict(prim)}
    breaches = _rates(cand, g, budget)
    if g.min_agreement is not None and cand.comparisons >= g.min_samples:
        assert cand.agreement is not None
        if cand.agreement < g.min_agreement:
            breaches.append(Breach("agreement", cand.agreement, g.min_agreement))
    if quality is not None and g.max_quality_drop is not None:
        mine, theirs, labelled = quality(rollout, g.quality_metric)
        figures["quality"] = {
            "metric": g.quality_metric,
            "candidate": mine,
            "primary": theirs,
            "labelled": labelled,
        }
        if mine is not None and theirs is not None and labelled >= g.min_samples:
            drop = mine - theirs if g.quality_metric in LOWER_IS_BETTER else theirs - mine
            if drop > g.max_quality_drop:
                breaches.append(Breach(f"{g.quality_metric} drop", drop, g.max_quality_drop))
    if drift is not None and g.max_drift is not None:
        psi = figures["drift_psi"] = drift(rollout)
        if psi is not None and psi > g.max_drift:
            breaches.append(Breach("drift psi", psi, g.max_drift))
    done = cand.comparisons if kind == "shadow" else cand.answers
    waited = at - rollout.step_started_at
    waiting = []
    if waited < stage.min_time:
        waiting.append(f"time {waited:.0f}s of {stage.min_time:.0f}s")
    if done < stage.min_answers:
        what = "comparisons" if kind == "shadow" else "answers"
        waiting.append(f"{what} {done} of {stage.min_answers}")
    ready = not breaches and not waiting
    return Verdict(breaches, ready, [] if breaches else waiting, figures)


def _rates(cand: Figures, g: Guardrails, budget: float) -> list[Breach]:
    if cand.answers < g.min_samples:
        return []
    out = []
    if g.max_error_rate is not None and (cand.error_rate or 0.0) > g.max_error_rate:
        out.append(Breach("error rate", cand.error_rate or 0.0, g.max_error_rate))
    if g.max_degraded_share is not None and (cand.degraded_share or 0.0) > g.max_degraded_share:
        out.append(Breach("degraded share", cand.degraded_share or 0.0, g.max_degraded_share))
    limit = g.max_p99 if g.max_p99 is not None else budget
    if cand.p99_s is not None and cand.p99_s > limit:
        out.append(Breach("p99 latency (s)", cand.p99_s, limit))
    return out


def worker_id() -> str:
    """This process, as stats rows and leases name it."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class RolloutController:
    """Applies verdicts: advance, promote, or roll back; each move audited with its figures."""

    ACTOR = "rollout-controller"

    def __init__(
        self,
        registry: Registry,
        budgets: dict[str, float],
        *,
        owner: str | None = None,
        clock: Callable[[], float] = now,
        lease: float = 10.0,
        quality: QualityProvider | None = None,
        drift: DriftProvider | None = None,
    ) -> None:
        self.rollouts = Rollouts(registry, clock)
        self.budgets = budgets
        """Route -> latency budget (the default p99 limit)."""
        self.owner = owner or worker_id()
        self.clock = clock
        self.lease = lease
        self.quality = quality
        self.drift = drift

    def tick(self) -> list[str]:
        """Judge every running rollout this process holds the lease of; a line per move."""
        moves = []
        for rollout in self.rollouts.active():
            if rollout.state != "running" or not self.rollouts.lease(
                rollout.id, self.owner, self.lease
            ):
                continue
            try:
                line = self._judge(rollout)
            except Conflict:  # moved by a command meanwhile (pause, abort): judged next tick
                continue
            if line:
                moves.append(line)
                log.info("%s", line)
        return moves

    def _judge(self, rollout: Rollout) -> str | None:
        verdict = judge(
            rollout,
            self.rollouts.stats(rollout.id, rollout.step),
            self.clock(),
            budget=self.budgets.get(rollout.route, 0.1),
            quality=self.quality,
            drift=self.drift,
        )
        kind, stage = rollout.stage()
        details = {
            "step": rollout.step,
            "stage": kind,
            "percent": stage.percent,
            "figures": verdict.figures,
            "controller": self.owner,
        }
        where = f"rollout {rollout.id} of {rollout.label} on {rollout.route}"
        if verdict.breaches:
            reason = "; ".join(b.text() for b in verdict.breaches)
            details["breaches"] = [asdict(b) for b in verdict.breaches]
            self.rollouts.move(
                rollout,
                "rollout_rollback",
                actor=self.ACTOR,
                state="rolled_back",
                reason=f"{kind} step {rollout.step} ({stage.percent:g}%): {reason}",
                details=details,
            )
            return f"{where}: rolled back at {kind} {stage.percent:g}%: {reason}"
        if not verdict.ready:
            return None
        if rollout.step == len(rollout.stages()) - 1:
            self.rollouts.move(
                rollout,
                "rollout_promote",
                actor=self.ACTOR,
                state="promoted",
                reason="every step held its guardrails",
                details=details,
            )
            return f"{where}: promoted to {rollout.model}@{rollout.alias}"
        nxt_kind, nxt = rollout.stages()[rollout.step + 1]
        self.rollouts.move(
            rollout,
            "rollout_step",
            actor=self.ACTOR,
            step=rollout.step + 1,
            reason=f"{kind} {stage.percent:g}% held its guardrails",
            details={**details, "next": {"stage": nxt_kind, "percent": nxt.percent}},
        )
        return f"{where}: {kind} {stage.percent:g}% held; now {nxt_kind} {nxt.percent:g}%"


# -- commands ------------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, int]:
    """``fraud@3`` or ``fraud/3``: the model and the version to roll out."""
    name, sep, version = text.replace("/", "@", 1).partition("@")
    if not sep or not (version.isascii() and version.isdigit()):
        raise InvalidInput(f"expected MODEL@VERSION (e.g. fraud@3), got {text!r}")
    ref = ModelRef(name, version=int(version))  # checks the name and the number
    assert ref.version is not None
    return ref.name, ref.version


def start_rollout(
    registry: Registry,
    project: Project,
    target: str,
    *,
    route: str | None = None,
    plan: RolloutPlan | None = None,
    actor: str,
    clock: Callable[[], float] = now,
) -> Rollout:
    """Start rolling ``target`` (``MODEL@VERSION``) out on its route, by ``plan`` (default:
    the route's ``rollout`` block, else the default plan)."""
    model, version = parse_target(target)
    serving = [n for n, r in project.routes.items() if ModelRef.parse(r.model).name == model]
    if route is None:
        if len(serving) != 1:
            raise InvalidInput(
                f"model {model!r} is the primary of {len(serving)} routes "
                f"({', '.join(serving) or 'none'}): say which with --route"
            )
        route = serving[0]
    elif route not in serving:
        raise InvalidInput(f"route {route!r} does not serve model {model!r}")
    cfg = project.route(route)
    plan = plan or cfg.rollout or RolloutPlan()
    alias = plan.alias or ModelRef.parse(cfg.model).alias
    if alias is None:
        raise InvalidInput(
            f"route {route!r} serves a fixed version ({cfg.model}): a rollout moves an alias "
            f"at the end, so give the route an alias or the plan an 'alias'"
        )
    with registry._tx() as conn:
        if q.alias_version(conn, model, alias) == version:
            raise Conflict(f"{model}@{alias} already points at version {version}")
    return Rollouts(registry, clock).start(route, model, version, alias, plan, actor=actor)


def find_rollout(registry: Registry, target: str) -> Rollout:
    """The newest rollout of ``MODEL@VERSION``."""
    model, version = parse_target(target)
    for r in Rollouts(registry).latest(model=model):
        if r.version == version:
            return r
    raise NotFound(f"no rollout of {model}/{version}")


_COMMANDS: dict[str, tuple[tuple[State, ...], State]] = {
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "abort": (("running", "paused"), "aborted"),
}


def command(
    registry: Registry,
    target: str,
    what: str,
    *,
    actor: str,
    reason: str = "",
    clock: Callable[[], float] = now,
) -> Rollout:
    """``pause``, ``resume`` or ``abort`` the rollout of ``target``, audited."""
    rollout = find_rollout(registry, target)
    allowed, state = _COMMANDS[what]
    if rollout.state not in allowed:
        raise Conflict(f"rollout {rollout.id} of {rollout.label} is {rollout.state}: cannot {what}")
    rollouts = Rollouts(registry, clock)
    stats = rollouts.stats(rollout.id, rollout.step)
    figures = {arm: asdict(Figures.of(merge(parts))) for arm, parts in stats.items()}
    return rollouts.move(
        rollout,
        f"rollout_{what}",
        actor=actor,
        state=state,
        reason=reason or f"{what} by {actor}",
        details={"step": rollout.step, "figures": figures},
    )


def report(registry: Registry, project: Project, target: str | None = None) -> list[dict[str, Any]]:
    """``target``'s newest rollout (default: every active one) with the current step's figures
    from every worker, its breaches, what it waits for, and its moves, oldest first."""
    rollouts = Rollouts(registry)
    found = [find_rollout(registry, target)] if target else rollouts.active()
    out = []
    for r in found:
        route = project.routes.get(r.route)
        verdict = judge(
            r,
            rollouts.stats(r.id, r.step),
            now(),
            budget=route.latency_budget if route is not None else 0.1,
        )
        moves = [
            e.to_dict()
            for e in registry.audit(r.model, limit=500)
            if e.action.startswith("rollout_") and e.details.get("rollout") == r.id
        ]
        out.append(
            {
                **r.to_json(),
                "figures": verdict.figures,
                "breaches": [b.text() for b in verdict.breaches],
                "waiting": verdict.waiting,
                "moves": list(reversed(moves)),
            }
        )
    return out
