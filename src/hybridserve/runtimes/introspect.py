"""What a fitted estimator says about itself: its inputs (signature) and its task.

Used at registration, so a version carries its feature order from the moment it exists and
the Scorer never has to guess it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hybridserve.errors import InvalidInput
from hybridserve.runtimes.base import FeatureSignature, Signature, Task


def feature_names_in(model: Any) -> list[str] | None:
    """The feature names an estimator was fitted with, if it was fitted on named columns."""
    try:
        names = model.feature_names_in_
    except (AttributeError, ValueError, TypeError):
        # LightGBM and XGBoost raise AttributeError from a property when fitted unnamed.
        return None
    return None if names is None else [str(n) for n in names]


def infer_signature(model: Any, features: Sequence[str] | None) -> Signature:
    """The model's ``feature_names_in_`` when present, else ``features``; one must exist.

    When both exist they must agree: a silent mismatch would feed columns in the wrong order.
    """
    names = feature_names_in(model)
    given = list(features) if features is not None else None
    if names is not None and given is not None and names != given:
        raise InvalidInput(
            f"features {given} do not match the names the model was fitted with {names}; "
            "pass them in the fitted order or leave features out"
        )
    chosen = names if names is not None else given
    if not chosen:
        raise InvalidInput(
            "the model does not carry feature names (it was fitted on a plain array): pass "
            "features=[...] in the order of its input columns (models.<name>.features in "
            "the project file, or --features on the command line)"
        )
    n_in = getattr(model, "n_features_in_", None)
    if isinstance(n_in, int) and n_in != len(chosen):
        raise InvalidInput(f"the model takes {n_in} features but {len(chosen)} were given")
    if len(set(chosen)) != len(chosen):
        raise InvalidInput(f"feature names must be unique, got {chosen}")
    return Signature(tuple(FeatureSignature(n, "float") for n in chosen))


def infer_task(model: Any) -> Task:
    """``classification`` for anything with ``predict_proba`` or ``classes_``."""
    if hasattr(model, "predict_proba") or hasattr(model, "classes_"):
        return "classification"
    return "regression"
