"""Online quality figures from (score, true outcome) pairs, as scikit-learn defines them.

Classifiers (scores are positive-class probabilities, outcomes 0 or 1): ROC AUC (the
Mann-Whitney form, ties counted half), log loss (scores clipped to ``[eps, 1 - eps]`` with
float64's machine epsilon, as ``sklearn.metrics.log_loss`` does), Brier score, a calibration
table of ``bins`` equal-width score bins (each non-empty bin's mean score, observed positive
share and count, as ``sklearn.calibration.calibration_curve(strategy="uniform")``), and
precision and recall at the route's threshold (0.5 when it has none). Regressors: MAE, RMSE.

Written with numpy (and scipy's ranks) rather than importing ``sklearn.metrics`` into the
server; a test checks every figure against scikit-learn on the same pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Task = Literal["classification", "regression"]


@dataclass(slots=True)
class Figures:
    task: Task
    n: int
    values: dict[str, float | None] = field(default_factory=dict)
    """``roc_auc``, ``log_loss``, ``brier``, ``precision``, ``recall``, ``positives`` or
    ``mae``, ``rmse``; ``None`` where undefined (an AUC with one class only)."""
    calibration: list[dict[str, float]] = field(default_factory=list)
    """Per non-empty bin: ``lo``, ``hi``, ``mean_score``, ``observed``, ``count``."""
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "n": self.n, **self.values}
        if self.task == "classification":
            out["threshold"] = self.threshold
            out["calibration"] = self.calibration
        return out


def task_of(outcomes: Sequence[float], declared: str = "auto") -> Task:
    """The declared task, or for ``auto`` classification when every outcome is 0 or 1."""
    if declared in ("classification", "regression"):
        return declared  # type: ignore[return-value]
    return "classification" if all(v in (0.0, 1.0) for v in outcomes) else "regression"


def roc_auc(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64]) -> float | None:
    from scipy.stats import rankdata

    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(p)  # ties get their average rank: a tie counts half
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def calibration(
    y: npt.NDArray[np.float64], p: npt.NDArray[np.float64], bins: int
) -> list[dict[str, float]]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    sums = np.bincount(ids, weights=p, minlength=bins)
    trues = np.bincount(ids, weights=y, minlength=bins)
    totals = np.bincount(ids, minlength=bins)
    return [
        {
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "mean_score": float(sums[i] / totals[i]),
            "observed": float(trues[i] / totals[i]),
            "count": int(totals[i]),
        }
        for i in range(bins)
        if totals[i]
    ]


def figures(
    scores: Sequence[float],
    outcomes: Sequence[float],
    *,
    task: str = "auto",
    threshold: float | None = None,
    bins: int = 10,
) -> Figures:
    """The quality figures of ``scores`` against ``outcomes`` (same length, same order)."""
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(outcomes, dtype=np.float64)
    kind = task_of(list(y), task)
    out = Figures(kind, int(y.size))
    if y.size == 0:
        return out
    if kind == "regression":
        err = p - y
        out.values = {
            "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err**2))),
        }
        return out
    eps = np.finfo(np.float64).eps
    clipped = np.clip(p, eps, 1 - eps)
    cut = 0.5 if threshold is None else threshold
    predicted = p >= cut
    tp = int(np.sum(predicted & (y == 1)))
    out.threshold = cut
    out.values = {
        "positives": float(y.sum()),
        "roc_auc": roc_auc(y, p),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "brier": float(np.mean((p - y) ** 2)),
        "precision": tp / int(predicted.sum()) if predicted.any() else None,
        "recall": tp / int(y.sum()) if y.any() else None,
    }
    out.calibration = calibration(y, p, bins)
    return out
