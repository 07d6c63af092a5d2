"""Circuit breakers: stop calling a dependency that keeps failing, probe it after a cool-down.

``closed``: calls go through; the breaker opens after ``failures`` consecutive failures, or
when at least ``min_calls`` of the last ``window`` calls were made and their failure share is
``error_rate`` or more. ``open``: calls are skipped (the router goes straight to the next
step) until ``cooldown`` has passed. ``half_open``: one probe call goes through; success
closes the breaker, failure opens it for another cool-down. A timeout counts as a failure.
A probe that never reports back (its caller was cancelled) frees the slot after a cool-down,
and a call that started before the breaker opened cannot close it by succeeding late.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hybridserve.config import BreakerConfig

State = Literal["closed", "open", "half_open"]
STATE_VALUE: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures: int = 5,
        error_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 10,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State], None] | None = None,
    ) -> None:
        self.name = name
        self.failures = failures
        self.error_rate = error_rate
        self.min_calls = min_calls
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._recent: deque[bool] = deque(maxlen=window)
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._probe_at = 0.0
        self.state: State = "closed"

    def allow(self) -> bool:
        """May a call go through now? (In ``half_open``, only one probe at a time.)"""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() - self._opened_at < self.cooldown:
                return False
            self._set("half_open")
        at = self._clock()
        if self._probing and at - self._probe_at < self.cooldown:
            return False
        self._probing = True
        self._probe_at = at
        return True

    def success(self) -> None:
        self._recent.append(True)
        self._consecutive = 0
        if self.state == "open":
            return  # a call let through before the breaker opened: only a probe may close it
        self._probing = False
        if self.state == "half_open":
            self._recent.clear()
            self._set("closed")

    def failure(self) -> None:
        self._recent.append(False)
        self._consecutive += 1
        self._probing = False
        if self.state == "half_open":
            self._open()
            return
        if self.state == "closed":
            n = len(self._recent)
            failed = n - sum(self._recent)
            if self._consecutive >= self.failures or (
                n >= self.min_calls and failed / n >= self.error_rate
            ):
                self._open()

    def release(self) -> None:
        """End a half-open probe that told nothing about the dependency (it was shed or
        cancelled before running): the next call may probe again, the state is unchanged."""
        self._probing = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set("open")

    def _set(self, state: State) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(self.name, state)


class Breakers:
    """One breaker per dependency, made on first use from the server's breaker settings.

    Names are ``prediction_store``, ``prediction_store:write``, ``feature_store`` and
    ``model:NAME/VERSION``; ``on_new`` hears of each new breaker and ``on_change`` of every
    state move (the server reports both as a metric, and moves as a log line).
    """

    def __init__(
        self,
        cfg: BreakerConfig,
        *,
        on_change: Callable[[str, State], None] | None = None,
        on_new: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._on_change = on_change
        self._on_new = on_new
        self._clock = clock
        self._all: dict[str, CircuitBreaker] = {}

    def __call__(self, name: str) -> CircuitBreaker:
        b = self._all.get(name)
        if b is None:
            cfg = self._cfg
            b = self._all[name] = CircuitBreaker(
                name,
                failures=cfg.failures,
                error_rate=cfg.error_rate,
                window=cfg.window,
                min_calls=cfg.min_calls,
                cooldown=cfg.cooldown,
                clock=self._clock,
                on_change=self._on_change,
            )
            if self._on_new is not None:
                self._on_new(name)
        return b

    def states(self) -> dict[str, State]:
        return {name: b.state for name, b in self._all.items()}
