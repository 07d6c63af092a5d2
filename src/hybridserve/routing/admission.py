"""Admission: shed a predict request at the door when this process cannot answer it in time.

Past its capacity a server does not slow down gracefully by itself: requests keep arriving,
wait for the event loop, and every one of them is late. Measured open-loop at three times the
computed route's capacity (``bench/online.py``'s overload point) before this, the server sent
every request down the fallback chain (the router takes the loop's lateness off the budget)
yet answered the slowest after seconds: parsing the bodies, running the router and writing
the fallbacks alone took more than the core, so the queue in front of the router grew for as
long as the load lasted.

:meth:`Admission.refuse` decides before the body is read, at the cost of a clock read:

- **A concurrency limit found by additive increase, multiplicative decrease** (TCP's rule,
  as in Netflix's concurrency-limits): every admitted request reports how long it took,
  counted from when it arrived (the loop's lateness when it started, plus its own time). One
  within its target (``max_wait`` of its route's latency budget) raises the limit by
  ``1/limit``, so by one per limit's worth of answers, while requests fill at least half of
  it; one over its target cuts the limit by a fifth (by up to half when it took twice its
  target or more), at most once per target's time. The limit starts at 128. Under
  overload the limit settles where answers take about their target; under a load the
  process keeps up with, it grows to ``max_in_flight``. All the requests that arrive in one
  turn of a busy loop see the same loop lateness; the in-flight count is what stops them
  from all being admitted at once.
- **The loop's lateness** (:meth:`LoopLag.current`): a request starting now has already waited
  about that long since it arrived. Past ``max_wait`` of its route's budget it is shed: what
  is left is too little to answer properly, and a refusal costs a fraction of an answer.

A shed request gets a 503 with ``Retry-After`` and the reason, its body unread, and is counted
with ``status="shed"`` in ``hybridserve_requests_total`` and as unavailable in the route's SLO.
The predict endpoint (``server/predict.py``, for both HTTP fronts) calls :meth:`enter` and
:meth:`leave` around every request it admits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hybridserve.errors import Overloaded
from hybridserve.routing.lag import LoopLag

MIN_LIMIT = 4.0
START_LIMIT = 128.0
"""Where the limit starts (or ``max_in_flight`` when lower): high enough for a process with
room to spare, low enough that the first second of an overload does not queue seconds of work
before the first late answer comes back to lower it."""


class Admission:
    __slots__ = ("_clock", "_cut_at", "in_flight", "lag", "limit", "max_in_flight", "max_wait")

    def __init__(
        self,
        lag: LoopLag,
        *,
        max_in_flight: int,
        max_wait: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.lag = lag
        self.max_in_flight = max_in_flight
        """Most predict requests in flight at once in this process, whatever the limit."""
        self.max_wait = max_wait
        """Share of a route's latency budget a request may take before it counts as late."""
        self._clock = clock
        self.in_flight = 0
        self.limit = min(float(max_in_flight), START_LIMIT)
        """The concurrency limit now: at most ``max_in_flight``, at least :data:`MIN_LIMIT`."""
        self._cut_at = 0.0

    def refuse(self, budget: float) -> Overloaded | None:
        """Why a request to a route with latency budget ``budget`` is shed now (or ``None``)."""
        if self.in_flight >= self.limit:
            return Overloaded(
                f"{self.in_flight} requests in flight, the most this server answers in time"
                " now (server.admission)"
            )
        self.lag.start()
        late = self.lag.current()
        if late > self.max_wait * budget:
            return Overloaded(
                f"the server runs {late * 1000:.0f} ms behind, more than"
                f" {self.max_wait:.0%} of the route's {budget * 1000:g} ms budget"
            )
        return None

    def enter(self) -> float:
        """Admit one; returns when it arrived (now, less the loop's lateness), for :meth:`leave`."""
        self.in_flight += 1
        return self._clock() - self.lag.current()

    def leave(self, arrived: float, budget: float) -> None:
        """One admitted request is done; it took from ``arrived`` until now."""
        in_flight = self.in_flight
        self.in_flight = in_flight - 1
        now = self._clock()
        target = self.max_wait * budget
        took = now - arrived
        if took > target:
            if now - self._cut_at >= target:  # once per target's time: one cut per episode
                self._cut_at = now
                # By the share of the target it took, so far over it cuts harder: by a fifth
                # at least, by half at most.
                cut = min(0.8, max(0.5, target / took))
                self.limit = max(min(MIN_LIMIT, float(self.max_in_flight)), self.limit * cut)
        elif 2 * in_flight >= self.limit:  # only a limit that was used is raised
            self.limit = min(float(self.max_in_flight), self.limit + 1.0 / self.limit)
