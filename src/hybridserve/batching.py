"""Deadline-aware micro-batching: concurrent requests for one model share one ``predict`` call.

When the model is idle a request runs at once: no timer, no added wait at low load. While a
batch runs, newcomers gather; the moment the model is free the next batch starts with up to
``max_batch_size`` rows, earliest deadlines first. A request whose deadline would pass before
the next batch can finish (judged from a moving average of batch times) is failed at once with
:class:`~hybridserve.errors.DeadlineExceeded`, so its caller can still use a fallback in time
instead of waiting for a model answer that would come too late.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from hybridserve.errors import DeadlineExceeded
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix

PredictFn = Callable[[Matrix], Prediction]
BatchObserver = Callable[[int, float], None]
"""Called after each model call with (rows, seconds)."""


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
        self.batch_seconds = 0.0
        """Moving average of one model call's duration (0 until the first call)."""

    async def predict(self, matrix: Matrix, deadline: float | None = None) -> Prediction:
        """Score ``matrix`` (rows of one request) in the next batch; ``deadline`` is loop time."""
        loop = asyncio.get_running_loop()
        if deadline is not None and self._busy_since is not None and self.batch_seconds:
            # Busy: the earliest this request can finish is after the running call and one
            # more. Fail now rather than when the next batch forms, so the caller has all the
            # time left for its fallback.
            at = loop.time()
            running_ends = max(at, self._busy_since + self.batch_seconds)
            if deadline < running_ends + self.batch_seconds:
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
                    prediction = self._predict(matrix)
                else:
                    prediction = await loop.run_in_executor(self._executor, self._predict, matrix)
            except Exception as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._busy_since = None
            took = time.perf_counter() - started
            self.batch_seconds = (
                took if not self.batch_seconds else 0.8 * self.batch_seconds + 0.2 * took
            )
            if self._observe is not None:
                self._observe(len(matrix), took)
            self._deliver(batch, prediction)

    def _take(self, at: float) -> list[_Item]:
        pending = self._pending
        if len(pending) > 1:
            pending.sort(key=lambda item: item.deadline)
        # Fail what cannot finish in time: its caller still has a fallback to try.
        horizon = at + self.batch_seconds
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
