"""Deadline-aware micro-batching: concurrent requests for one model share one ``predict`` call.

When the model is idle a request runs at once: no timer, no added wait at low load. While a
batch runs, newcomers gather; the moment the model is free the next batch starts with up to
``max_batch_size`` rows, earliest deadlines first. A request whose deadline would pass before
the next batch can finish is failed at once with :class:`~hybridserve.errors.DeadlineExceeded`,
so its caller can still use a fallback in time instead of waiting for a model answer that would
come too late.

That judgement rests on :class:`BatchTimes`, an estimate that cannot wedge: it is the median of
the last few batch times (one call slowed by a stall, a garbage-collection pause or a
SIGSTOP'd process does not move it), and it decays towards zero while no batch runs. A moving
average used to be the figure: one 500 ms stall pushed it past a 50 ms budget, every request
was then refused before any batch ran, the average never came down, and the server answered
from fallbacks for good. Now the evidence keeps being refreshed: when nothing has run for a
while the estimate shrinks until a batch runs again and measures the model anew.

Where the model call runs is chosen per model (``inline``): a slow model runs in a worker
thread, off the event loop. A fast one (a batch in about a millisecond, like most tree
ensembles on tabular rows) runs on the loop itself: such models release and re-take the GIL
many times per call (once per tree for scikit-learn's gradient boosting), and while the loop
is busy with other requests each re-take waits for the interpreter's switch interval (5 ms),
so in a thread the same 1 ms call takes tens of milliseconds under load (measured: ~100 ms
per batch at 64 concurrent requests). Inline, it costs exactly its own time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from statistics import median

import numpy as np

from hybridserve.errors import DeadlineExceeded
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix

PredictFn = Callable[[Matrix], Prediction]
BatchObserver = Callable[[int, float], None]
"""Called after each model call with (rows, seconds)."""


class BatchTimes:
    """How long one model call takes: the median of the last ``window`` calls, decaying while
    no call runs (halving for every ``half_life`` seconds that the model sat idle, counted from
    when the next call could have started after the last one ended)."""

    def __init__(
        self,
        *,
        window: int = 15,
        half_life: float = 0.25,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self._median = 0.0
        self._last = 0.0
        self.half_life = half_life
        self._clock = clock

    def observe(self, seconds: float) -> None:
        self._recent.append(seconds)
        self._median = median(self._recent)
        self._last = self._clock()

    @property
    def seconds(self) -> float:
        """The current estimate (0 until the first call)."""
        if not self._median:
            return 0.0
        # Idle: past the time the next call could have started after the last one ended.
        idle = self._clock() - self._last - self._median
        if idle <= 0:
            return self._median
        return float(self._median * 0.5 ** (idle / self.half_life))


@dataclass(slots=True)
class _Item:
    matrix: Matrix
    deadline: float
    future: asyncio.Future[Prediction]


class MicroBatcher:
    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int = 64,
        executor: ThreadPoolExecutor | None = None,
        observe: BatchObserver | None = None,
        name: str = "model",
        inline: bool = False,
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.name = name
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"hs-{name}")
        self._own_executor = executor is None
        self._observe = observe
        self.inline = inline
        self._pending: list[_Item] = []
        self._runner: asyncio.Task[None] | None = None
        self._busy_since: float | None = None
        """Loop time the running model call started (``None`` while the model is idle)."""
        self.times = BatchTimes()
        """How long one model call takes (see :class:`BatchTimes`)."""
        self.work = BatchTimes()
        """The CPU time of the thread that ran it, for the same calls: the model's own work,
        without the time it waited for a core or for the interpreter's lock."""

    @property
    def batch_seconds(self) -> float:
        """The estimate of one model call's duration (0 until the first call)."""
        return self.times.seconds

    @property
    def work_seconds(self) -> float:
        """The estimate of one model call's own work, in CPU seconds (0 until the first call).

        Far below :attr:`batch_seconds` when calls wait: for the lock, while the event loop
        is busy with requests (a model in a thread), or for a core that another process holds
        on a shared machine. A call that timed out then says this process was short of CPU,
        not that the model is slow (the router's breaker rule).
        """
        return self.work.seconds

    def _timed(self, matrix: Matrix) -> tuple[Prediction, float]:
        """``predict(matrix)`` and the CPU time of the thread that ran it."""
        began = time.thread_time()
        prediction = self._predict(matrix)
        return prediction, time.thread_time() - began

    async def predict(self, matrix: Matrix, deadline: float | None = None) -> Prediction:
        """Score ``matrix`` (rows of one request) in the next batch; ``deadline`` is loop time."""
        loop = asyncio.get_running_loop()
        if deadline is not None and self._busy_since is not None:
            # Busy: the earliest this request can finish is after the running call and one
            # more. Fail now rather than when the next batch forms, so the caller has all the
            # time left for its fallback.
            took = self.times.seconds
            at = loop.time()
            running_ends = max(at, self._busy_since + took)
            if took and deadline < running_ends + took:
                raise DeadlineExceeded(
                    f"{self.name}: deadline would pass before the next batch ends"
                )
        future: asyncio.Future[Prediction] = loop.create_future()
        self._pending.append(_Item(matrix, float("inf") if deadline is None else deadline, future))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._take(loop.time())
            if not batch:
                continue
            self._busy_since = loop.time()
            started = time.perf_counter()  # loop.time() ticks in whole ms on uvloop
            try:
                matrix = (
                    batch[0].matrix
                    if len(batch) == 1
                    else np.concatenate([b.matrix for b in batch])
                )
                if self.inline:
                    prediction, work = self._timed(matrix)
                else:
                    prediction, work = await loop.run_in_executor(
                        self._executor, self._timed, matrix
                    )
            except Exception as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._busy_since = None
            took = time.perf_counter() - started
            self.times.observe(took)
            self.work.observe(work)
            if self._observe is not None:
                self._observe(len(matrix), took)
            self._deliver(batch, prediction)

    def _take(self, at: float) -> list[_Item]:
        pending = self._pending
        if len(pending) > 1:
            pending.sort(key=lambda item: item.deadline)
        # Fail what cannot finish in time: its caller still has a fallback to try.
        horizon = at + self.times.seconds
        batch: list[_Item] = []
        rows = 0
        keep: list[_Item] = []
        for item in pending:
            if item.future.done():  # the caller gave up (cancelled or timed out)
                continue
            if item.deadline < horizon:
                item.future.set_exception(
                    DeadlineExceeded(f"{self.name}: deadline would pass before the next batch ends")
                )
                continue
            n = len(item.matrix)
            if batch and rows + n > self.max_batch_size:
                keep.append(item)
                continue
            batch.append(item)
            rows += n
        self._pending = keep
        return batch

    @staticmethod
    def _deliver(batch: list[_Item], prediction: Prediction) -> None:
        start = 0
        for item in batch:
            n = len(item.matrix)
            if not item.future.done():
                if len(batch) == 1:
                    item.future.set_result(prediction)
                else:
                    item.future.set_result(
                        Prediction(
                            prediction.scores[start : start + n],
                            None
                            if prediction.probabilities is None
                            else prediction.probabilities[start : start + n],
                            prediction.classes,
                        )
                    )
            start += n

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        """Let queued work finish, then stop the worker thread."""
        if self._runner is not None:
            await asyncio.shield(self._runner)
        if self._own_executor:
            self._executor.shutdown(wait=False)
