"""CircuitBreaker on a fake clock: when it opens, how it probes, how it closes."""

from __future__ import annotations

import pytest

from hybridserve.routing.breaker import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    clock: Clock, changes: list[tuple[str, State]] | None = None, **kw: float
) -> CircuitBreaker:
    args: dict[str, float] = {"failures": 3, "error_rate": 0.5, "window": 10, "min_calls": 6}
    args.update(kw)
    return CircuitBreaker(
        "dep",
        failures=int(args["failures"]),
        error_rate=args["error_rate"],
        window=int(args["window"]),
        min_calls=int(args["min_calls"]),
        cooldown=5.0,
        clock=clock,
        on_change=None if changes is None else lambda name, s: changes.append((name, s)),
    )


def state(b: CircuitBreaker) -> State:
    """The state now (a call, so a type checker does not keep an earlier narrowing)."""
    return b.state


def run(b: CircuitBreaker, outcomes: str) -> None:
    """Make one allowed call per character: ``s`` succeeds, ``f`` fails."""
    for o in outcomes:
        assert b.allow()
        b.success() if o == "s" else b.failure()


def test_opens_after_consecutive_failures(clock: Clock) -> None:
    b = make(clock)
    run(b, "ffsff")  # a success resets the count
    assert state(b) == "closed" and b.allow()
    b.failure()
    assert state(b) == "open"
    assert not b.allow()


def test_opens_on_error_rate_over_the_window(clock: Clock) -> None:
    b = make(clock, failures=100, min_calls=6, window=10)
    run(b, "sfsfs")  # 2 of 5: too few calls to judge
    assert state(b) == "closed"
    run(b, "f")  # 3 of 6 = 50%
    assert state(b) == "open"


def test_error_rate_counts_only_the_window(clock: Clock) -> None:
    b = make(clock, failures=100, min_calls=4, window=4)
    run(b, "fsfs" + "ssss" + "ssf")  # the old failures slid out: 1 of 4
    assert state(b) == "closed"


def test_half_open_after_cooldown_lets_exactly_one_probe_through(clock: Clock) -> None:
    changes: list[tuple[str, State]] = []
    b = make(clock, changes)
    run(b, "fff")
    clock.advance(4.9)
    assert not b.allow() and state(b) == "open"
    clock.advance(0.2)
    assert b.allow()
    assert state(b) == "half_open"
    assert [b.allow() for _ in range(5)] == [False] * 5
    b.success()
    assert state(b) == "closed"
    assert all(b.allow() for _ in range(5))
    assert changes == [("dep", "open"), ("dep", "half_open"), ("dep", "closed")]


def test_failed_probe_reopens_for_another_cooldown(clock: Clock) -> None:
    changes: list[tuple[str, State]] = []
    b = make(clock, changes)
    run(b, "fff")
    clock.advance(5.1)
    assert b.allow()
    b.failure()
    assert state(b) == "open"
    clock.advance(4.9)
    assert not b.allow()
    clock.advance(0.2)
    assert b.allow() and state(b) == "half_open"
    assert changes == [("dep", "open"), ("dep", "half_open"), ("dep", "open"), ("dep", "half_open")]


def test_closing_forgets_the_failures_before(clock: Clock) -> None:
    b = make(clock)
    run(b, "fff")
    clock.advance(6)
    run(b, "s")
    assert state(b) == "closed"
    run(b, "ff")  # two failures after closing: not yet three in a row
    assert state(b) == "closed"


def test_on_change_only_on_transitions(clock: Clock) -> None:
    changes: list[tuple[str, State]] = []
    b = make(clock, changes)
    run(b, "ssss")
    assert changes == []
    run(b, "fff")
    b.failure()  # a late failure while open changes nothing
    assert changes == [("dep", "open")]


def test_late_success_of_a_call_started_before_opening_keeps_it_open(clock: Clock) -> None:
    """Calls in flight when the breaker opens must not close it without a probe."""
    b = make(clock, failures=1)
    assert b.allow() and b.allow()  # two concurrent calls
    b.failure()
    assert state(b) == "open"
    b.success()  # the slower one comes back fine
    assert state(b) == "open"
    assert not b.allow()


def test_a_probe_that_never_reports_does_not_wedge_the_breaker(clock: Clock) -> None:
    """A probe whose caller vanished (cancelled, unexpected error) must not block forever."""
    b = make(clock)
    run(b, "fff")
    clock.advance(5.1)
    assert b.allow()  # the probe goes out and is never heard of again
    assert not b.allow()
    clock.advance(5.1)  # a whole cooldown later, another probe may go
    assert b.allow()
    b.success()
    assert state(b) == "closed"
