"""Health: ``healthy``, ``degraded`` or ``critical`` for the service and each of its parts.

:func:`~hybridserve.operations.report.health_report` is the one entry point (``GET
/v1/health``, ``hybridserve status``, the dashboard): it gathers a :class:`HealthContext`
(the project, every live server process's heartbeat, store pings) and runs every registered
check on it. A check is one async function of the context returning :class:`Component`
statuses, each with its reasons; a new check is that function plus ``@CHECKS.register``
(the built-in ones are in ``operations/checks.py``)::

    @CHECKS.register
    async def drift(ctx: HealthContext) -> list[Component]:
        return [Component("drift:fraud", "drift", Status.DEGRADED, ["score PSI 0.31 > 0.2"])]

The service is as bad as its worst route; any other part that is not healthy makes it at
least degraded. Only ``critical`` makes ``/v2/health/ready`` false.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hybridserve.config import Project
from hybridserve.observability.tally import Slot
from hybridserve.operations.publish import ProcessView
from hybridserve.services import Services


class Status(enum.IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(slots=True)
class Component:
    name: str
    """``route:fraud``, ``prediction_store``, ``model:fraud_gb/3``, ``stream:txns``, ..."""
    kind: str
    """``route``, ``dependency``, ``model``, ``stream`` or ``batch_job`` (or a new check's)."""
    status: Status
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status.label,
            "reasons": self.reasons,
            **({"details": self.details} if self.details else {}),
        }


@dataclass(slots=True)
class HealthReport:
    status: Status
    reasons: list[str]
    components: list[Component]
    at: float
    processes: int

    @property
    def critical(self) -> bool:
        return self.status is Status.CRITICAL

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.label,
            "reasons": self.reasons,
            "at": self.at,
            "processes": self.processes,
            "components": [c.to_json() for c in self.components],
        }


@dataclass
class HealthContext:
    """What every check reads: gathered once per report."""

    project: Project
    services: Services
    at: float
    processes: list[ProcessView]
    """Every live server process (this one's live view included when asked from a server)."""
    unreachable: dict[str, str] = field(default_factory=dict)
    """Store dependency (``prediction_store``, ``feature_store``) -> why it did not answer."""
    slow: dict[str, str] = field(default_factory=dict)
    """Store dependency -> why it is slow (answered no ping within the timeout)."""

    def breaker_open(self, name: str) -> list[str]:
        """Writers of the processes in which breaker ``name`` is open."""
        return [p.writer for p in self.processes if p.breakers.get(name) == "open"]

    def down(self, name: str) -> str | None:
        """Why dependency ``name`` cannot answer now (unreachable, or its breaker open)."""
        if name in self.unreachable:
            return f"{name} unreachable"
        opened = self.breaker_open(name)
        if opened:
            return f"{name} circuit open in {len(opened)} of {len(self.processes)} processes"
        return None

    def recent(self, route: str) -> Slot:
        """The route's answers over the health window, summed over every process."""
        out = Slot()
        for p in self.processes:
            slot = p.recent.get(route)
            if slot is not None:
                out.add(slot)
        return out

    def models(self, route: str) -> dict[str, str]:
        """Role -> ``name/version`` served for ``route`` by any process."""
        out: dict[str, str] = {}
        for p in self.processes:
            out.update(p.models.get(route, {}))
        return out


Check = Callable[[HealthContext], Awaitable[list[Component]]]


class Checks:
    """The registry of health checks, run in registration order."""

    def __init__(self) -> None:
        self._checks: list[Check] = []

    def register(self, check: Check) -> Check:
        if check not in self._checks:
            self._checks.append(check)
        return check

    def __iter__(self) -> Iterator[Check]:
        return iter(list(self._checks))


CHECKS = Checks()
