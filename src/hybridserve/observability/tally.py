"""Answers per route in time slots: what SLOs, health and cost per 1k are computed from.

The router records each request once: its route, its time in the server, the source of each
answer, and how many answers were degraded (a fallback answered) or missing (a 503). Two views
of the same counts:

- **minute slots**, kept until published: the SLO counters. ``operations/publish.py`` writes
  them to the project's store as one document per route, hour and process, so the sums cover
  every worker and survive a restart (a restarted process writes documents of its own);
- **second slots** over the health window: the recent answers that health judges, published
  with the process's heartbeat so that health sums every worker's.

CPU: the process's CPU seconds (``time.process_time``) between two charges are shared among
that interval's answers in proportion to each request's time in the server, an estimate that
costs nothing per request and charges a computed answer more than a cache hit.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hybridserve.observability.metrics import LATENCY_BUCKETS

MINUTE = 60
_NEVER = float("inf")
_FOLD_AT = 512
"""Distinct kinds of request held before they are added to the slots unasked."""


def _zeros() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS) + 1)


@dataclass(slots=True)
class Slot:
    """Counts of one route over some time: answers, requests, latency, CPU per source."""

    answers: int = 0
    """Entities asked for (answered or not)."""
    good: int = 0
    """Answered and not degraded."""
    degraded: int = 0
    unavailable: int = 0
    requests: int = 0
    slow: int = 0
    """Requests over the route's latency target (its SLO p99, else its latency budget)."""
    latency: list[int] = field(default_factory=_zeros)
    """Requests per bucket of ``LATENCY_BUCKETS`` (the last one: slower than all)."""
    sources: dict[str, list[float]] = field(default_factory=dict)
    """Source -> [answers, CPU seconds]."""

    def add(self, other: Slot) -> None:
        self.answers += other.answers
        self.good += other.good
        self.degraded += other.degraded
        self.unavailable += other.unavailable
        self.requests += other.requests
        self.slow += other.slow
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        for source, (n, cpu) in other.sources.items():
            have = self.sources.setdefault(source, [0.0, 0.0])
            have[0] += n
            have[1] += cpu

    def p99(self) -> tuple[float, float] | None:
        """The bounds of the latency bucket holding the 99th percentile request (``inf``
        past the last bound); ``None`` without requests."""
        if self.requests <= 0:
            return None
        rank, seen = 0.99 * self.requests, 0
        bounds = (0.0, *LATENCY_BUCKETS, float("inf"))
        for i, n in enumerate(self.latency):
            seen += n
            if seen >= rank:
                return bounds[i], bounds[i + 1]
        return LATENCY_BUCKETS[-1], float("inf")

    def to_json(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "good": self.good,
            "degraded": self.degraded,
            "unavailable": self.unavailable,
            "requests": self.requests,
            "slow": self.slow,
            "latency": self.latency,
            "sources": self.sources,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Slot:
        latency = [int(n) for n in data.get("latency", ())]
        return cls(
            int(data.get("answers", 0)),
            int(data.get("good", 0)),
            int(data.get("degraded", 0)),
            int(data.get("unavailable", 0)),
            int(data.get("requests", 0)),
            int(data.get("slow", 0)),
            latency if len(latency) == len(LATENCY_BUCKETS) + 1 else _zeros(),
            {str(k): [float(v[0]), float(v[1])] for k, v in dict(data.get("sources", {})).items()},
        )


class Tally:
    """One process's answer counts; the router records into it, a publisher reads it."""

    def __init__(
        self,
        targets: Mapping[str, float],
        *,
        window: float = 300.0,
        clock: Callable[[], float] = time.time,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.targets = dict(targets)
        """Route -> latency target in seconds (a request over it is ``slow``)."""
        self.window = window
        self._clock = clock
        self._cpu = cpu
        self._cpu_at = cpu()
        self._minutes: dict[tuple[str, int], Slot] = {}
        self._pending: dict[tuple[Any, ...], list[Any]] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._seconds: dict[str, deque[tuple[int, Slot]]] = {}
        self._weights: dict[tuple[str, int, str], float] = {}

    def record(
        self,
        route: str,
        seconds: float,
        sources: Mapping[str, int],
        degraded: int,
        unavailable: int,
    ) -> None:
        """One request: ``sources`` counts its answers by source (``cache``, ``fallback:..``).

        Requests alike (route, second, latency bucket, answers) are counted together and
        added to the slots when the slots are read (:meth:`_fold`): a request costs one
        dictionary update, not a dozen slot updates."""
        key = (
            route,
            int(self._clock()),
            bisect_left(LATENCY_BUCKETS, seconds),
            seconds > self.targets.get(route, _NEVER),
            tuple(sources.items()),
            degraded,
            unavailable,
        )
        held = self._pending.get(key)
        if held is None:
            self._pending[key] = [1, seconds]
            if len(self._pending) >= _FOLD_AT:
                self._fold()
        else:
            held[0] += 1
            held[1] += seconds

    def _fold(self) -> None:
        """Add the requests recorded since the last fold to their minute and second slots."""
        pending, self._pending = self._pending, {}
        weights = self._weights
        for kind, (n, spent) in pending.items():
            route, second, bucket, slow, sources, degraded, unavailable = kind
            answered = sum(c for _, c in sources)
            minute = second // MINUTE
            minute_slot = self._minute(route, minute)
            for slot in (minute_slot, self._second(route, second)):
                slot.answers += n * (answered + unavailable)
                slot.good += n * (answered - degraded)
                slot.degraded += n * degraded
                slot.unavailable += n * unavailable
                slot.requests += n
                slot.slow += n * slow
                slot.latency[bucket] += n
            total = answered + unavailable
            shares = [*sources, ("none", unavailable)] if unavailable else sources
            for source, c in shares:
                minute_slot.sources.setdefault(source, [0.0, 0.0])[0] += n * c
                key = (route, minute, source)
                weights[key] = weights.get(key, 0.0) + spent * c / total

    @property
    def minutes(self) -> dict[tuple[str, int], Slot]:
        """(route, minute) -> that minute's slot, until published."""
        self._fold()
        return self._minutes

    def _minute(self, route: str, minute: int) -> Slot:
        key = (route, minute)
        slot = self._minutes.get(key)
        if slot is None:
            slot = self._minutes[key] = Slot()
        self._dirty.add(key)
        return slot

    def _second(self, route: str, second: int) -> Slot:
        ring = self._seconds.get(route)
        if ring is None:
            ring = self._seconds[route] = deque()
        if not ring or ring[-1][0] != second:
            ring.append((second, Slot()))
            while ring and ring[0][0] <= second - self.window:
                ring.popleft()
        return ring[-1][1]

    def charge(self) -> float:
        """Share the CPU seconds used since the last charge among the answers recorded since;
        return them."""
        self._fold()
        cpu = self._cpu()
        spent, self._cpu_at = cpu - self._cpu_at, cpu
        weights, self._weights = self._weights, {}
        total = sum(weights.values())
        if total <= 0 or spent <= 0:
            return 0.0
        for (route, minute, source), weight in weights.items():
            slot = self._minutes.get((route, minute))
            if slot is not None:
                slot.sources.setdefault(source, [0.0, 0.0])[1] += spent * weight / total
                self._dirty.add((route, minute))
        return spent

    def recent(self, route: str) -> Slot:
        """The route's answers over the last ``window`` seconds."""
        self._fold()
        out = Slot()
        since = self._clock() - self.window
        for second, slot in self._seconds.get(route, ()):
            if second > since:
                out.add(slot)
        return out

    def routes(self) -> list[str]:
        self._fold()
        return sorted(self._seconds)

    def take_dirty(self) -> dict[tuple[str, int], dict[str, Any]]:
        """``(route, hour) -> {minute: slot}`` of every hour with news since the last call;
        minutes of past hours are dropped (their documents are then final)."""
        self._fold()
        hours = {(route, minute // 60) for route, minute in self._dirty}
        self._dirty = set()
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for route, hour in hours:
            out[(route, hour)] = {
                str(m): s.to_json()
                for (r, m), s in self._minutes.items()
                if r == route and m // 60 == hour
            }
        current = int(self._clock() // MINUTE) // 60
        for key in [k for k in self._minutes if k[1] // 60 < current]:
            del self._minutes[key]  # published (now or before); ``restore`` if that failed
        return out

    def restore(self, route: str, hour: int, minutes: Mapping[str, Any]) -> None:
        """Put back minutes whose publication failed (they are sent again next time)."""
        self._fold()
        for m, data in minutes.items():
            key = (route, int(m))
            if key not in self._minutes:
                self._minutes[key] = Slot.from_json(data)
            self._dirty.add(key)
