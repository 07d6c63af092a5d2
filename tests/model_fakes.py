"""Stand-ins for a served model's predict function, for tests that slow, hold or break it."""

from __future__ import annotations

from collections.abc import Callable

from hybridserve.batching import MicroBatcher
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix

PredictFn = Callable[[Matrix], Prediction]


def swap_predict(batcher: MicroBatcher, wrap: Callable[[PredictFn], PredictFn]) -> None:
    """Replace ``batcher``'s model call with ``wrap(current call)``.

    The replacement blocks (sleeps, waits for an event), so it must run in the worker thread:
    on the event loop (a fast model may be called inline) it would stall the whole test.
    """
    batcher._predict = wrap(batcher._predict)
    batcher.inline = False
