"""MicroBatcher: no wait when idle, merging while busy, deadlines, errors and cancellation.

The fake model records every call; a gate (a ``threading.Event``) holds the model busy so the
tests decide exactly what is queued when the next batch forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from hybridserve.batching import BatchTimes, MicroBatcher
from hybridserve.errors import DeadlineExceeded
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix


class FakeModel:
    """Scores each row as ``2 * row[0]``; can hold its next call until released."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[Matrix] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def hold(self) -> None:
        """Block the next call inside the model until :meth:`release`."""
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    async def busy(self) -> None:
        """Wait until a held call is inside the model."""
        assert await asyncio.to_thread(self.entered.wait, 5.0)

    def __call__(self, matrix: Matrix) -> Prediction:
        self.calls.append(matrix.copy())
        self.entered.set()
        assert self.gate.wait(5.0)
        if self.delay:
            time.sleep(self.delay)
        if (matrix[:, 0] < 0).any():
            raise ValueError("poisoned row")
        scores = matrix[:, 0] * 2.0
        return Prediction(scores, np.stack([1 - scores, scores], axis=1), [0, 1])

    @property
    def sizes(self) -> list[int]:
        return [len(m) for m in self.calls]


def rows(*values: float) -> Matrix:
    return np.array([[v, 0.0] for v in values], dtype=np.float64)


@pytest.fixture
async def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
async def batcher(model: FakeModel) -> AsyncIterator[MicroBatcher]:
    b = MicroBatcher(model, max_batch_size=4, name="fake")
    yield b
    model.release()
    await b.close()


async def test_idle_model_runs_a_request_at_once(model: FakeModel, batcher: MicroBatcher) -> None:
    # "At once" without a stopwatch: an idle batcher sets no timer (nothing waits for more
    # requests to gather), and sequential requests are never held back to be merged.
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    real_call_later, real_call_at = loop.call_later, loop.call_at

    def call_later(delay: float, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        timers.append(delay)
        return real_call_later(delay, *args, **kw)

    def call_at(when: float, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        timers.append(when - loop.time())
        return real_call_at(when, *args, **kw)

    loop.call_later, loop.call_at = call_later, call_at  # type: ignore[method-assign]
    try:
        for i in range(50):
            got = await batcher.predict(rows(i / 100))
            assert got.scores.tolist() == pytest.approx([2 * i / 100])
    finally:
        loop.call_later, loop.call_at = real_call_later, real_call_at  # type: ignore[method-assign]
    assert timers == []
    assert set(model.sizes) == {1}


async def test_busy_model_merges_waiting_requests_up_to_max_batch_size(
    model: FakeModel, batcher: MicroBatcher
) -> None:
    model.hold()
    first = asyncio.ensure_future(batcher.predict(rows(0.0)))
    await model.busy()
    waiting = [asyncio.ensure_future(batcher.predict(rows(i / 100))) for i in range(1, 11)]
    await asyncio.sleep(0.01)
    assert batcher.queued == 10
    model.release()
    results = await asyncio.gather(first, *waiting)
    assert model.sizes == [1, 4, 4, 2]
    for i, pred in enumerate(results):
        assert pred.scores.tolist() == pytest.approx([2 * i / 100])


async def test_merged_results_are_split_back_per_request(
    model: FakeModel, batcher: MicroBatcher
) -> None:
    model.hold()
    first = asyncio.ensure_future(batcher.predict(rows(0.9)))
    await model.busy()
    shapes = [rows(0.1), rows(0.2, 0.21, 0.22), rows(0.3, 0.31)]
    waiting = [asyncio.ensure_future(batcher.predict(m)) for m in shapes]
    await asyncio.sleep(0.01)
    model.release()
    await first
    got = await asyncio.gather(*waiting)
    assert model.sizes == [1, 4, 2]  # whole requests only, packed up to max_batch_size
    for matrix, pred in zip(shapes, got, strict=True):
        assert pred.scores.tolist() == pytest.approx((matrix[:, 0] * 2).tolist())
        assert pred.probabilities is not None and pred.probabilities.shape == (len(matrix), 2)
        assert pred.probabilities[:, 1].tolist() == pytest.approx(pred.scores.tolist())
        assert pred.classes == [0, 1]


async def test_earliest_deadlines_go_first_when_more_is_pending_than_fits(
    model: FakeModel,
) -> None:
    batcher = MicroBatcher(model, max_batch_size=2, name="fake")
    loop = asyncio.get_running_loop()
    model.hold()
    first = asyncio.ensure_future(batcher.predict(rows(0.0)))
    await model.busy()
    now = loop.time()
    # The value of each row is its deadline rank; submitted out of order, one with no deadline.
    order = [5, 1, 4, 2, 3]
    waiting = [
        asyncio.ensure_future(batcher.predict(rows(rank / 10), now + 10 + rank)) for rank in order
    ]
    waiting.append(asyncio.ensure_future(batcher.predict(rows(0.6))))
    await asyncio.sleep(0.01)
    model.release()
    await asyncio.gather(first, *waiting)
    await batcher.close()
    served = [sorted(round(v * 10) for v in m[:, 0]) for m in model.calls[1:]]
    assert served == [[1, 2], [3, 4], [5, 6]]


async def test_request_that_would_miss_its_deadline_fails_fast() -> None:
    model = FakeModel(delay=0.1)
    batcher = MicroBatcher(model, max_batch_size=4, name="fake")
    loop = asyncio.get_running_loop()
    await batcher.predict(rows(0.1))  # learn how long a batch takes (~0.1 s)
    assert batcher.batch_seconds >= 0.09
    model.entered.clear()
    busy = asyncio.ensure_future(batcher.predict(rows(0.2)))
    await model.busy()
    # The running batch ends in ~0.1 s and the next one ~0.1 s after: 0.15 s is too short.
    # It fails at once: before the running batch ends (the model is still held inside it).
    model.hold()
    t = loop.time()
    with pytest.raises(DeadlineExceeded):
        await batcher.predict(rows(0.3), t + 0.15)
    assert not busy.done(), "the request waited for the running batch instead of failing"
    model.release()
    # One with enough time is served, and the model never saw the failed rows.
    ok = await batcher.predict(rows(0.4), loop.time() + 5)
    assert ok.scores.tolist() == pytest.approx([0.8])
    await busy
    assert 0.3 not in [m[0, 0] for m in model.calls]
    # Idle, a deadline shorter than one batch also fails without calling the model.
    calls = len(model.calls)
    with pytest.raises(DeadlineExceeded):
        await batcher.predict(rows(0.5), loop.time() + 0.01)
    assert len(model.calls) == calls
    await batcher.close()


async def test_predict_error_reaches_every_caller_of_the_batch_and_batcher_recovers(
    model: FakeModel, batcher: MicroBatcher
) -> None:
    model.hold()
    first = asyncio.ensure_future(batcher.predict(rows(0.0)))
    await model.busy()
    # One poisoned row makes the whole merged call fail.
    waiting = [asyncio.ensure_future(batcher.predict(rows(v))) for v in (0.1, -1.0, 0.3)]
    await asyncio.sleep(0.01)
    model.release()
    assert (await first).scores.tolist() == [0.0]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert model.sizes == [1, 3]
    assert all(isinstance(r, ValueError) and "poisoned" in str(r) for r in results), results
    again = await batcher.predict(rows(0.5))
    assert again.scores.tolist() == pytest.approx([1.0])


async def test_rows_that_cannot_be_merged_fail_their_batch_not_the_batcher(
    model: FakeModel, batcher: MicroBatcher
) -> None:
    model.hold()
    first = asyncio.ensure_future(batcher.predict(rows(0.0)))
    await model.busy()
    narrow = asyncio.ensure_future(batcher.predict(rows(0.1)))
    wide = asyncio.ensure_future(batcher.predict(np.zeros((1, 3))))
    await asyncio.sleep(0.01)
    model.release()
    await first
    for waiting in (narrow, wide):
        with pytest.raises(ValueError):
            await asyncio.wait_for(waiting, 2)
    assert (await batcher.predict(rows(0.25))).scores.tolist() == [0.5]


async def test_cancelled_caller_is_skipped(model: FakeModel, batcher: MicroBatcher) -> None:
    model.hold()
    first = asyncio.ensure_future(batcher.predict(rows(0.0)))
    await model.busy()
    gone = asyncio.ensure_future(batcher.predict(rows(0.1)))
    kept = asyncio.ensure_future(batcher.predict(rows(0.2)))
    timed_out = asyncio.ensure_future(asyncio.wait_for(batcher.predict(rows(0.3)), 0.005))
    await asyncio.sleep(0.01)
    gone.cancel()
    with pytest.raises(TimeoutError):
        await timed_out
    model.release()
    await first
    assert (await kept).scores.tolist() == pytest.approx([0.4])
    assert gone.cancelled()
    assert [m[:, 0].tolist() for m in model.calls] == [[0.0], [0.2]]


async def test_close_lets_queued_work_finish(model: FakeModel) -> None:
    batcher = MicroBatcher(model, max_batch_size=1, name="fake")
    model.hold()
    waiting = [asyncio.ensure_future(batcher.predict(rows(i / 10))) for i in range(3)]
    await model.busy()
    model.release()
    await batcher.close()
    assert all(w.done() and not w.exception() for w in waiting)
    assert model.sizes == [1, 1, 1]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_batch_time_estimate_is_the_median_so_one_stall_does_not_move_it() -> None:
    clock = FakeClock()
    times = BatchTimes(clock=clock)
    for _ in range(10):
        times.observe(0.002)
    times.observe(0.5)  # one call caught in a half-second freeze
    assert times.seconds == pytest.approx(0.002)


def test_batch_time_estimate_decays_while_no_batch_runs() -> None:
    clock = FakeClock()
    times = BatchTimes(clock=clock, half_life=0.25)
    for _ in range(15):
        times.observe(0.2)  # the model really is slow (or every recent call was stalled)
    assert times.seconds == pytest.approx(0.2)
    clock.t += 0.2  # no later than the next call could have started: no decay
    assert times.seconds == pytest.approx(0.2)
    clock.t += 0.25  # idle for one half-life
    assert times.seconds == pytest.approx(0.1)
    clock.t += 0.5  # two more
    assert times.seconds == pytest.approx(0.2 * 0.5**3)
    clock.t += 10
    assert times.seconds < 1e-6
    times.observe(0.01)  # a batch ran again: its time counts, the old ones still weigh
    assert times.seconds == pytest.approx(0.2)


async def test_a_stalled_batch_does_not_leave_the_batcher_refusing_everything() -> None:
    # One model call that took 0.5 s (the process was frozen during it) used to push the
    # moving average past a 50 ms deadline; then every request was failed before any batch
    # ran, the average never came down, and the model never answered again.
    model = FakeModel()
    batcher = MicroBatcher(model, max_batch_size=4, name="fake")
    loop = asyncio.get_running_loop()
    for _ in range(5):
        await batcher.predict(rows(0.1), loop.time() + 0.05)
    model.delay = 0.5
    await batcher.predict(rows(0.1))  # the stalled call
    model.delay = 0.0
    answered = 0
    for _ in range(20):
        try:
            await batcher.predict(rows(0.1), loop.time() + 0.05)
            answered += 1
        except DeadlineExceeded:
            await asyncio.sleep(0.05)
    assert answered >= 19
    await batcher.close()


async def test_a_model_slower_than_the_deadline_is_still_probed() -> None:
    # Every call takes longer than the deadline: requests are shed, but while nothing runs the
    # estimate decays, so a call runs now and then and measures the model again.
    model = FakeModel(delay=0.08)
    batcher = MicroBatcher(model, max_batch_size=4, name="fake")
    loop = asyncio.get_running_loop()
    await batcher.predict(rows(0.1))
    calls = len(model.calls)
    until = loop.time() + 2.0
    while loop.time() < until:
        with contextlib.suppress(DeadlineExceeded):
            await asyncio.wait_for(batcher.predict(rows(0.1), loop.time() + 0.05), 1)
        await asyncio.sleep(0.01)
    assert len(model.calls) > calls + 1  # probes kept running
    model.delay = 0.0
    await batcher.predict(rows(0.1))
    answered = 0
    for _ in range(200):
        try:
            await batcher.predict(rows(0.1), loop.time() + 0.05)
            answered += 1
            if answered == 10:
                break
        except DeadlineExceeded:
            await asyncio.sleep(0.02)
    assert answered == 10, "the model got fast again but the batcher kept refusing"
    await batcher.close()


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.parametrize("inline", [True, False])
async def test_a_call_that_waits_is_told_apart_from_one_that_works(inline: bool) -> None:
    # The breaker rule reads work_seconds: a call that sat waiting (here asleep, as a model
    # thread waits for the lock or a core) is long on the clock and short on CPU time.
    waiting = MicroBatcher(FakeModel(delay=0.05), name="waits", inline=inline)
    await waiting.predict(rows(0.1))
    assert waiting.batch_seconds >= 0.045
    assert waiting.work_seconds < 0.02

    def working(matrix: Matrix) -> Prediction:
        _spin(0.05)
        return Prediction(matrix[:, 0] * 2.0)

    busy = MicroBatcher(working, name="works", inline=inline)
    await busy.predict(rows(0.1))
    assert busy.work_seconds >= 0.045
    await waiting.close()
    await busy.close()
