"""How late the event loop runs its own work: evidence that a slow call was our fault.

A dependency call that times out is normally the dependency's failure, and it charges that
dependency's circuit breaker. But a call also times out when the process itself could not get
to the answer in time: the event loop was saturated by its own requests, a garbage-collection
pause froze it, or the whole process was stopped (SIGSTOP, a VM hiccup). Charging the
breaker then turns our own saturation into a dependency outage: measured with Redis healthy
under 64 connections, the prediction-store and model breakers opened within 0.3 s and most
answers became fallbacks. After a half-second freeze every call in flight timed out at once.

:class:`LoopLag` keeps a timer that should fire every ``interval`` seconds and notes by how much
each firing was late. A call that timed out is explained by the loop when the lateness seen
while it ran adds up to a good part of the time it was allowed (:meth:`explains`); the router
then releases the breaker instead of charging it. The same lateness says how long a request that
starts now already waited for the loop since it arrived (:meth:`current`): under overload the
router takes it off the request's budget, so work that cannot finish in time goes down the
fallback chain at once instead of answering late. The timer costs one callback per ``interval``
(100 a second by default); reading it, one clock read per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class LoopLag:
    def __init__(
        self,
        *,
        interval: float = 0.01,
        keep: float = 5.0,
        threshold: float = 0.002,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.interval = interval
        self.keep = keep
        self.threshold = threshold
        """Lateness below this is ordinary timer jitter and is not recorded."""
        self._clock = clock
        self._late: deque[tuple[float, float]] = deque()
        """(when the timer fired, how late it was), for firings later than ``threshold``."""
        self._due = 0.0
        self._last = 0.0
        """How late the latest firing was (0 when within ``threshold``)."""
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start watching the running loop (idempotent)."""
        if self._handle is None:
            self._loop = asyncio.get_running_loop()
            self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._clock() + self.interval
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        at = self._clock()
        self.note(at, at - self._due)
        self._schedule()

    def note(self, at: float, late: float) -> None:
        """Record that work due before ``at`` ran ``late`` seconds late."""
        self._last = late if late > self.threshold else 0.0
        if late > self.threshold:
            self._late.append((at, late))
        while self._late and self._late[0][0] < at - self.keep:
            self._late.popleft()

    def since(self, started: float) -> float:
        """Seconds of lateness the loop showed after ``started`` (a ``perf_counter`` time)."""
        total = 0.0
        for at, late in reversed(self._late):
            if at <= started:
                break
            total += min(late, at - started)
        # The timer has not fired yet for a stall still going on or just ended.
        if self._handle is not None:
            now = self._clock()
            overdue = now - self._due
            if overdue > self.threshold:
                total += min(overdue, now - started)
        return total

    def current(self) -> float:
        """How late the loop runs now, in seconds: how long work made ready now will wait.

        The lateness of the latest firing, or, when the timer is overdue (the loop is busy
        with a long round of work, or was just frozen), how overdue it is. A request that
        starts now has already waited about that long since it arrived, so the router takes
        it off the request's budget (see ``Router._job``).
        """
        if self._handle is None:
            return 0.0
        overdue = self._clock() - self._due
        return max(self._last, overdue if overdue > self.threshold else 0.0)

    def measured(self) -> float:
        """The lateness of the latest firing (0 when within ``threshold``), in seconds.

        Unlike :meth:`current`, not how overdue the timer is now: code that runs without
        yielding (a test driving the app in process, a handler's own synchronous stretch)
        makes the timer overdue without any request having waited. In a server, a request's
        task runs in the loop's turn after the one that read its bytes, and the timer fires in
        that first turn, so a request that waited through a freeze sees it here.
        """
        return self._last if self._handle is not None else 0.0

    def explains(self, started: float, allowed: float) -> bool:
        """Was a call started at ``started`` and allowed ``allowed`` seconds held up by the loop?

        True when the loop ran late for at least a quarter of the allowed time while the call
        was out: the answer may well have been there, waiting for the loop to read it.
        """
        return self.since(started) >= 0.25 * allowed
