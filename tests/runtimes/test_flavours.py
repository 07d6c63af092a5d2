"""Every flavour round-trips through the registry: register, load, and score exactly as the
model itself does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pytest
import toy_models as tm

from hybridserve.registry import Registry
from hybridserve.runtimes import Runtime


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry.open(f"sqlite:///{tmp_path}/registry.db", tmp_path / "artifacts") as reg:
        yield reg


def _dump(model: Any, path: Path) -> Path:
    joblib.dump(model, path)
    return path


@pytest.mark.parametrize(
    ("kind", "flavour"),
    [
        ("logreg", "sklearn"),
        ("hgb", "sklearn"),
        ("lightgbm", "lightgbm"),
        ("xgboost", "xgboost"),
    ],
)
def test_pickled_classifiers_match_predict_proba(
    registry: Registry, tmp_path: Path, kind: str, flavour: str
) -> None:
    model = tm.train(kind)
    mv = registry.register(kind, _dump(model, tmp_path / f"{kind}.joblib"), features=tm.FEATURES)
    assert (mv.flavour, mv.task) == (flavour, "classification")  # inferred, not given
    runtime = registry.load(mv.ref)
    assert isinstance(runtime, Runtime)
    x, _, _ = tm.dataset(n=50, seed=1)
    expected = model.predict_proba(x)
    out = runtime.predict(x, probabilities=True)
    # Within float32 rounding: XGBoost computes in float32, and its compiled form (the default
    # ``compile: auto``) adds the same float32 leaves in another order.
    np.testing.assert_allclose(out.scores, expected[:, 1], rtol=1e-6, atol=1e-6)
    assert out.probabilities is not None
    np.testing.assert_allclose(out.probabilities, expected, rtol=1e-6, atol=1e-6)
    assert out.classes == [0, 1]
    assert out.scores.dtype == np.float64


def test_regressor_returns_the_value(registry: Registry, tmp_path: Path) -> None:
    model = tm.train("regressor")
    mv = registry.register("price", _dump(model, tmp_path / "r.pkl"), features=tm.FEATURES)
    assert mv.task == "regression"
    x, _, _ = tm.dataset(n=20, seed=2)
    out = registry.load("price").predict(x, probabilities=True)
    np.testing.assert_allclose(out.scores, model.predict(x))
    assert out.probabilities is None


def test_multiclass_score_is_the_highest_probability(registry: Registry, tmp_path: Path) -> None:
    model = tm.train("multiclass")
    registry.register("tier", _dump(model, tmp_path / "m.joblib"), features=tm.FEATURES)
    x, _, _ = tm.dataset(n=20, seed=3)
    out = registry.load("tier").predict(x, probabilities=True)
    np.testing.assert_allclose(out.scores, model.predict_proba(x).max(axis=1))
    assert out.classes == [0, 1, 2]


def test_feature_names_come_from_the_model_and_numpy_input_does_not_warn(
    registry: Registry, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y, _ = tm.dataset()
    table = pa.table({name: x[:, i] for i, name in enumerate(tm.FEATURES)})
    model = LogisticRegression().fit(table, y)
    mv = registry.register("named", _dump(model, tmp_path / "named.joblib"))
    assert mv.signature.names == tm.FEATURES
    # pytest turns warnings into errors: a feature-name warning would fail here.
    out = registry.load("named").predict(x[:10])
    np.testing.assert_allclose(out.scores, model.predict_proba(table.slice(0, 10))[:, 1])


@pytest.mark.parametrize("zipmap", [False, True])
def test_onnx_classifier_matches_the_sklearn_model(
    registry: Registry, tmp_path: Path, zipmap: bool
) -> None:
    model = tm.train("logreg")
    path = tmp_path / "logreg.onnx"
    path.write_bytes(tm.to_onnx(model, zipmap=zipmap))
    mv = registry.register("onnx_clf", path, features=tm.FEATURES)
    assert (mv.flavour, mv.task) == ("onnx", "classification")
    x, _, _ = tm.dataset(n=30, seed=4)
    out = registry.load(mv.ref).predict(x, probabilities=True)
    expected = model.predict_proba(x)
    np.testing.assert_allclose(out.scores, expected[:, 1], atol=1e-5)
    assert out.probabilities is not None
    np.testing.assert_allclose(out.probabilities, expected, atol=1e-5)
    assert out.classes == [0, 1]


def test_onnx_regressor(registry: Registry, tmp_path: Path) -> None:
    model = tm.train("regressor")
    path = tmp_path / "ridge.onnx"
    path.write_bytes(tm.to_onnx(model))
    mv = registry.register("onnx_reg", path, features=tm.FEATURES)
    assert mv.task == "regression"
    x, _, _ = tm.dataset(n=30, seed=5)
    np.testing.assert_allclose(
        registry.load(mv.ref).predict(x).scores, model.predict(x), rtol=1e-4, atol=1e-4
    )


def test_callable_classifier_and_regressor(registry: Registry) -> None:
    clf = registry.register(
        "rules", callable_ref="toy_models:rules_probabilities", features=tm.FEATURES
    )
    reg = registry.register("score", callable_ref="toy_models:rules_score", features=tm.FEATURES)
    assert (clf.flavour, clf.task, clf.artifact, clf.sha256) == (
        "callable",
        "classification",
        None,
        None,
    )
    assert reg.task == "regression"
    x, _, _ = tm.dataset(n=15, seed=6)
    out = registry.load("rules").predict(x, probabilities=True)
    np.testing.assert_allclose(out.scores, tm.rules_probabilities(x)[:, 1])
    assert out.classes == [0, 1]
    np.testing.assert_allclose(registry.load("score").predict(x).scores, tm.rules_score(x))
