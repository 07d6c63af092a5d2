"""Compiled histogram gradient boosting: sklearn's scores, bit for bit, on small batches."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from hybridserve.runtimes.base import FeatureSignature, Signature
from hybridserve.runtimes.sklearn import SklearnRuntime
from hybridserve.runtimes.trees import DISABLE_ENV, MAX_ROWS, compile_trees


def _data(seed: int = 7, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 - x[:, 2] > 0.3).astype(int)
    x[rng.random(size=x.shape) < 0.05] = np.nan  # missing values take the learned side
    return x, y


@pytest.fixture(scope="module")
def classifier() -> HistGradientBoostingClassifier:
    x, y = _data()
    return HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x, y)


def test_classifier_scores_equal_sklearn(classifier: HistGradientBoostingClassifier) -> None:
    compiled = compile_trees(classifier)
    assert compiled is not None
    x, _ = _data(seed=99, n=500)
    assert np.array_equal(compiled.scores(x), classifier.predict_proba(x)[:, 1])
    for n in (1, 2, MAX_ROWS):
        assert np.array_equal(compiled.scores(x[:n]), classifier.predict_proba(x[:n])[:, 1])


def test_regressor_values_equal_sklearn() -> None:
    x, y = _data()
    target = y + x[:, 3].clip(-1, 1)
    for loss in ("squared_error", "absolute_error"):
        model = HistGradientBoostingRegressor(max_iter=40, loss=loss, random_state=0)
        model.fit(x, np.nan_to_num(target))
        compiled = compile_trees(model)
        assert compiled is not None
        probe, _ = _data(seed=5, n=300)
        assert np.array_equal(compiled.scores(probe), model.predict(probe))


def test_what_cannot_be_reproduced_is_not_compiled() -> None:
    x, y = _data()
    three = np.where(x[:, 4] > 0.5, 2, y)
    multiclass = HistGradientBoostingClassifier(max_iter=10).fit(x, three)
    assert compile_trees(multiclass) is None
    cats = np.nan_to_num(x.copy())
    cats[:, 5] = (np.abs(cats[:, 5]) * 3).astype(int)
    categorical = HistGradientBoostingClassifier(max_iter=10, categorical_features=[5])
    assert compile_trees(categorical.fit(cats, y)) is None
    assert compile_trees(object()) is None


def test_the_runtime_uses_it_for_small_batches_only(
    classifier: HistGradientBoostingClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    sig = Signature(tuple(FeatureSignature(f"f{i}") for i in range(6)))
    runtime = SklearnRuntime(classifier, name="m", version=1, signature=sig, task="classification")
    assert runtime._trees is not None
    x, _ = _data(seed=3, n=200)
    for n in (1, MAX_ROWS, 200):  # compiled, compiled, sklearn
        got = runtime.predict(x[:n], probabilities=True)
        assert np.array_equal(got.scores, classifier.predict_proba(x[:n])[:, 1])
        assert got.probabilities is not None
        assert np.allclose(got.probabilities, classifier.predict_proba(x[:n]))
    monkeypatch.setenv(DISABLE_ENV, "0")
    off = SklearnRuntime(classifier, name="m", version=1, signature=sig, task="classification")
    assert off._trees is None
