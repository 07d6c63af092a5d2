"""Tiny seeded models and data for the runtime and registry tests, plus callables to
register as the ``callable`` flavour (importable as ``toy_models:<function>``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FEATURES = ["amount", "velocity", "age", "mismatch"]


def dataset(n: int = 240, seed: int = 0) -> tuple[npt.NDArray[np.float64], Any, Any]:
    """A float matrix, a binary target and a continuous target, all from one seed."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    signal = x @ np.array([1.5, -1.0, 0.5, 2.0])
    binary = (signal + rng.normal(scale=0.5, size=n) > 0).astype(int)
    return x, binary, signal + rng.normal(scale=0.1, size=n)


def train(kind: str) -> Any:
    """A fitted estimator of the given kind, fitted on :func:`dataset`."""
    x, yb, yr = dataset()
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression().fit(x, yb)
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(x, yb)
    if kind == "regressor":
        from sklearn.linear_model import Ridge

        return Ridge().fit(x, yr)
    if kind == "multiclass":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression().fit(x, np.digitize(yr, [-1.0, 1.0]))
    if kind == "lightgbm":
        import lightgbm

        return lightgbm.LGBMClassifier(n_estimators=15, verbose=-1, random_state=0).fit(x, yb)
    if kind == "xgboost":
        import xgboost

        return xgboost.XGBClassifier(n_estimators=15, max_depth=3, random_state=0).fit(x, yb)
    raise ValueError(kind)


def to_onnx(model: Any, *, zipmap: bool = False) -> bytes:
    """The model converted by skl2onnx (classifier probabilities as a tensor unless zipmap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": zipmap}} if hasattr(model, "predict_proba") else None
    onx = convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))], options=options
    )
    return bytes(onx.SerializeToString())


def rules_probabilities(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A hand-written classifier: two columns, P(0) and P(1)."""
    p1 = 1.0 / (1.0 + np.exp(-(1.5 * x[:, 0] + 2.0 * x[:, 3])))
    return np.column_stack([1.0 - p1, p1])


def rules_score(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A hand-written regressor: one score per row."""
    return np.asarray(x[:, 0] * 2.0 - x[:, 1], dtype=np.float64)


NOT_CALLABLE = 42
