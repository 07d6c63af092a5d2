"""A runtime whose scores come from a function: the test double that ships with the interface.

``FakeRuntime(handler)`` is a :class:`~hybridserve.runtimes.base.Runtime` like any loaded
model: the Scorer validates rows for it, the micro-batcher batches calls to it, and every
record names its ``name``/``version``. ``handler`` gets the validated float matrix and returns
one score per row (a sequence or array), or a full :class:`Prediction`; it may also raise or
block, to test what the router does when a model fails or is slow. Router and server tests use
it so they need no trained model::

    runtime = FakeRuntime(lambda m: m[:, 0] * 0.5, features=["amount"], name="fraud")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridserve.runtimes.base import FeatureSignature, Prediction, Signature, Task

Handler = Callable[[npt.NDArray[np.float64]], Any]


class FakeRuntime:
    def __init__(
        self,
        handler: Handler,
        *,
        features: Sequence[str],
        name: str = "fake",
        version: int = 1,
        task: Task = "classification",
    ) -> None:
        self.handler = handler
        self.name = name
        self.version = version
        self.task: Task = task
        self.signature = Signature(tuple(FeatureSignature(f) for f in features))
        self.calls: list[npt.NDArray[np.float64]] = []
        """Every matrix scored, in order (copies)."""

    def predict(
        self, matrix: npt.NDArray[np.float64], *, probabilities: bool = False
    ) -> Prediction:
        self.calls.append(matrix.copy())
        out = self.handler(matrix)
        if isinstance(out, Prediction):
            return out
        scores = np.asarray(out, dtype=np.float64).reshape(len(matrix))
        if self.task == "regression":
            return Prediction(scores)
        proba = np.stack([1.0 - scores, scores], axis=1) if probabilities else None
        return Prediction(scores, proba, [0, 1])
