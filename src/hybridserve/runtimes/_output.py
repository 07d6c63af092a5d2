"""Turning a classifier's probability matrix into a :class:`Prediction`, the same way for
every flavour, so a score means the same thing whichever runtime produced it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridserve.errors import InvalidInput
from hybridserve.runtimes.base import Prediction, Signature

Matrix = npt.NDArray[np.float64]


def positive_index(classes: Sequence[Any]) -> int | None:
    """Column holding the positive class of a binary classifier (class ``1``, else the last);
    ``None`` for multiclass, whose score is the highest probability."""
    if len(classes) != 2:
        return None
    for i, c in enumerate(classes):
        if isinstance(c, int | np.integer | bool | np.bool_) and c == 1:
            return i
    return 1


def from_probabilities(
    proba: npt.ArrayLike, classes: list[Any], pos: int | None, probabilities: bool
) -> Prediction:
    """Scores (positive-class or max probability), plus the full matrix when asked for."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:  # an empty ZipMap list, or a single row flattened by a callable
        p = p.reshape(-1, max(len(classes), 1))
    scores = p[:, pos] if pos is not None else p.max(axis=1)
    if probabilities:
        return Prediction(scores=scores, probabilities=p, classes=classes)
    return Prediction(scores=scores)


def check_matrix(matrix: npt.ArrayLike, signature: Signature, who: str) -> Matrix:
    """The batch as a C-contiguous float64 ``(n, len(signature))`` array, or InvalidInput."""
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(signature.features):
        raise InvalidInput(
            f"{who} expects a (n, {len(signature.features)}) matrix, got shape {x.shape}"
        )
    return x


def empty(classes: list[Any], probabilities: bool) -> Prediction:
    """The prediction for a batch of no rows (models themselves often reject those)."""
    scores = np.empty(0, dtype=np.float64)
    if probabilities and classes:
        return Prediction(scores, np.empty((0, len(classes)), dtype=np.float64), classes)
    return Prediction(scores)
