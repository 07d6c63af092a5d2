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
  as in Netflix's concurrency-limits), judged per window of :data:`WINDOW` answers: every
  admitted request reports how long it took, counted from when it arrived (the loop's lateness
  when it started, plus its own time), against its route's latency budget. A window where
  more than :data:`LATE_SHARE` of the answers were late cuts the limit by that share (by a
  fifth at least, by half at most); any other window raises it by one when requests filled
  at least half of it. Judging a window, not each answer, keeps the tail of a healthy load (a
  process that keeps up, whose p99 is over the budget now and then) from cutting the limit
  answer by answer. Under overload the limit settles where answers take about their budget;
  under a load the process keeps up with it grows to ``max_in_flight``. All the requests that
  arrive in one turn of a busy loop see the same loop lateness; the in-flight count is what
  stops them from all being admitted at once.
- **The loop's lateness** (:meth:`LoopLag.measured`): a request starting now has already waited
  about that long since it arrived. Past ``max_wait`` of its route's budget it is shed: what
  is left is too little to answer properly, and a refusal costs a fraction of an answer.

A late window cuts the limit only when this process was busy through it: it used at least
:data:`BUSY` of a core (CPU time over the window's wall time). A process that was not running
(stopped by SIGSTOP, frozen by a pause, or waiting for a core that another process holds on a
shared machine) answers late whatever its concurrency, and cutting the limit then only turns
the next load into refusals. Measured with a half-second freeze under 64 closed-loop
connections, and with two busy-looping processes on the same two cores: windows 44% late
while the server held half a core cut the limit from 85 to 48, below the connections; the
refused ones came straight back, their refusals slowed the admitted ones into more late
windows, and in one second the limit was at its floor, the server refusing 97% of requests
for as long as the load lasted.

Measured with closed-loop load (64 connections, each sending its next request when the last
is answered) on the computed-from-entity-keys route, a limit judged against three quarters of
the budget collapsed: the process was at capacity with a p90 near the budget, so windows ran
late, the limit fell below the 64 connections, and the refused ones came straight back, their
refusals taking the CPU the admitted ones needed. Judged against the budget itself, the same
load is answered in full.

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
WINDOW = 64
"""Answers per judgement of the limit."""
LATE_SHARE = 0.25
"""The share of a window's answers over their target that makes the window late."""
BUSY = 0.8
"""The share of a core this process must have used over a window for its lateness to count."""
START_LIMIT = 128.0
"""Where the limit starts (or ``max_in_flight`` when lower): high enough for a process with
room to spare, low enough that the first second of an overload does not queue seconds of work
before the first late answer comes back to lower it."""


class Admission:
    __slots__ = (
        "_answers",
        "_clock",
        "_cpu",
        "_cpu_clock",
        "_late",
        "_since",
        "_used",
        "in_flight",
        "lag",
        "limit",
        "max_in_flight",
        "max_wait",
    )

    def __init__(
        self,
        lag: LoopLag,
        *,
        max_in_flight: int,
        max_wait: float,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.lag = lag
        self.max_in_flight = max_in_flight
        """Most predict requests in flight at once in this process, whatever the limit."""
        self.max_wait = max_wait
        """Share of a route's latency budget a request may have waited for the loop."""
        self._clock = clock
        self.in_flight = 0
        self.limit = min(float(max_in_flight), START_LIMIT)
        """The concurrency limit now: at most ``max_in_flight``, at least :data:`MIN_LIMIT`."""
        self._cpu_clock = cpu_clock
        self._answers = self._late = self._used = 0
        """This window's answers, how many were late, the most requests in flight in it."""
        self._since = clock()
        self._cpu = cpu_clock()
        """When this window began, on the clock and on this process's CPU clock."""

    def refuse(self, budget: float) -> Overloaded | None:
        """Why a request to a route with latency budget ``budget`` is shed now (or ``None``)."""
        if self.in_flight >= self.limit:
            return Overloaded(
                f"{self.in_flight} requests in flight, the most this server answers in time"
                " now (server.admission)"
            )
        self.lag.start()
        late = self.lag.measured()
        if late > self.max_wait * budget:
            return Overloaded(
                f"the server runs {late * 1000:.0f} ms behind, more than"
                f" {self.max_wait:.0%} of the route's {budget * 1000:g} ms budget"
            )
        return None

    def enter(self) -> float:
        """Admit one; returns when it arrived (now, less the loop's lateness), for :meth:`leave`."""
        self.in_flight += 1
        return self._clock() - self.lag.measured()

    def leave(self, arrived: float, budget: float) -> None:
        """One admitted request is done; it took from ``arrived`` until now."""
        in_flight = self.in_flight
        self.in_flight = in_flight - 1
        if in_flight > self._used:
            self._used = in_flight
        self._answers += 1
        if self._clock() - arrived > budget:
            self._late += 1
        if self._answers >= WINDOW:
            self._judge()

    def _judge(self) -> None:
        late = self._late / self._answers
        at, cpu = self._clock(), self._cpu_clock()
        busy = cpu - self._cpu >= BUSY * (at - self._since)
        self._since, self._cpu = at, cpu
        if late > LATE_SHARE:
            if busy:  # else: not our concurrency's doing (see the module's docstring)
                floor = min(MIN_LIMIT, float(self.max_in_flight))
                self.limit = max(floor, self.limit * min(0.8, max(0.5, 1.0 - late)))
        elif 2 * self._used >= self.limit:  # only a limit that was used is raised
            self.limit = min(float(self.max_in_flight), self.limit + 1.0)
        self._answers = self._late = self._used = 0
