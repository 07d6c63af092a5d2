"""A Python function as a model: rules, heuristics or a model loaded by user code.

The function is named ``module:function`` and imported when the version is loaded. It gets
the whole ``(n, len(signature))`` float matrix and returns ``n`` scores, or for a classifier
an ``(n, n_classes)`` probability matrix; a ``classes`` attribute on the function names the
columns (default ``0..k-1``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridserve._optional import import_string
from hybridserve.errors import InvalidInput
from hybridserve.runtimes._output import check_matrix, empty, from_probabilities, positive_index
from hybridserve.runtimes.base import Compile, Flavour, Prediction, Signature, Task

ScoreFn = Callable[[npt.NDArray[np.float64]], Any]


def resolve(ref: str | Path) -> ScoreFn:
    """Import ``module:function`` and check it is callable."""
    try:
        fn = import_string(str(ref))
    except (ImportError, AttributeError, ValueError) as exc:
        raise InvalidInput(f"cannot import callable {str(ref)!r}: {exc}") from exc
    if not callable(fn):
        raise InvalidInput(f"{str(ref)!r} is not callable")
    return fn


class CallableRuntime:
    """Calls the function once per batch."""

    flavour: Flavour = "callable"

    def __init__(
        self, fn: ScoreFn, *, name: str, version: int, signature: Signature, task: Task
    ) -> None:
        self.name = name
        self.version = version
        self.signature = signature
        self.task = task
        self._who = f"{name}/{version}"
        self._fn = fn
        self.classes: list[Any] = list(getattr(fn, "classes", None) or [])
        self._pos = positive_index(self.classes) if self.classes else None

    @classmethod
    def load(
        cls,
        ref: str | Path,
        *,
        name: str,
        version: int,
        signature: Signature,
        task: Task,
        compile: Compile = "auto",
    ) -> CallableRuntime:
        """Import the function ``ref`` names (``compile`` does not apply to user code)."""
        return cls(resolve(ref), name=name, version=version, signature=signature, task=task)

    @classmethod
    def describe(
        cls, ref: str | Path, *, features: list[str] | None, task: Task | None
    ) -> tuple[Signature, Task]:
        """``features`` is required; without ``task`` the function is called on one row of
        zeros and a 2-D answer means a classifier."""
        fn = resolve(ref)
        if not features:
            raise InvalidInput(
                f"callable {str(ref)!r} does not carry feature names: pass features=[...]"
            )
        signature = Signature.from_list(list(features))
        if task is None:
            out = np.asarray(fn(np.zeros((1, len(features)), dtype=np.float64)))
            task = "classification" if out.ndim == 2 else "regression"
        return signature, task

    def predict(self, matrix: npt.ArrayLike, *, probabilities: bool = False) -> Prediction:
        """One call of the function for the whole batch."""
        x = check_matrix(matrix, self.signature, self._who)
        if not len(x):
            return empty(self.classes, probabilities)
        out = np.asarray(self._fn(x), dtype=np.float64)
        if out.shape[0] != len(x) or out.ndim > 2:
            raise InvalidInput(f"{self._who} returned shape {out.shape} for {len(x)} rows")
        if out.ndim == 2 and self.task == "regression":
            if out.shape[1] != 1:
                raise InvalidInput(
                    f"{self._who} is a regressor but returned {out.shape[1]} columns"
                )
            out = out[:, 0]
        if out.ndim == 1:
            if self.task == "classification" and probabilities:
                # 1-D scores from a binary classifier: the positive-class probability.
                both = np.column_stack([1.0 - out, out])
                return Prediction(out, both, self.classes or [0, 1])
            return Prediction(scores=out)
        classes = self.classes or list(range(out.shape[1]))
        pos = self._pos if self.classes else positive_index(classes)
        return from_probabilities(out, classes, pos, probabilities)
