"""Runtime behaviour that does not need a registry: shapes, errors, inference, overhead."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import toy_models as tm

from hybridserve.errors import ConfigError, InvalidInput, MissingExtra
from hybridserve.runtimes import (
    Signature,
    infer_signature,
    infer_task,
    load_runtime,
    runtime_class,
)
from hybridserve.runtimes.callable import CallableRuntime
from hybridserve.runtimes.sklearn import LightGBMRuntime, SklearnRuntime

SIG = Signature.from_list(tm.FEATURES)


def test_infer_signature_and_task() -> None:
    model = tm.train("logreg")
    assert infer_signature(model, tm.FEATURES).names == tm.FEATURES
    assert infer_task(model) == "classification"
    assert infer_task(tm.train("regressor")) == "regression"
    with pytest.raises(InvalidInput, match="pass features"):
        infer_signature(model, None)
    with pytest.raises(InvalidInput, match="takes 4 features but 2"):
        infer_signature(model, ["a", "b"])


def test_predict_checks_the_matrix_width_and_handles_empty_batches() -> None:
    rt = SklearnRuntime(
        tm.train("logreg"), name="m", version=1, signature=SIG, task="classification"
    )
    with pytest.raises(InvalidInput, match=r"m/1 expects a \(n, 4\) matrix"):
        rt.predict(np.zeros((2, 3)))
    empty = rt.predict(np.zeros((0, 4)), probabilities=True)
    assert empty.scores.shape == (0,)
    assert empty.probabilities is not None and empty.probabilities.shape == (0, 2)


def test_predict_is_one_model_call_per_batch() -> None:
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return tm.rules_score(x)

    rt = CallableRuntime(fn, name="c", version=1, signature=SIG, task="regression")
    rt.predict(np.ones((64, 4)))
    assert calls == [64]


def test_unknown_flavour_and_bad_callables() -> None:
    with pytest.raises(ConfigError, match="known flavours: callable, lightgbm"):
        runtime_class("tensorflow")
    with pytest.raises(InvalidInput, match="cannot import callable"):
        load_runtime(
            "callable", "toy_models:nope", name="c", version=1, signature=SIG, task="regression"
        )
    with pytest.raises(InvalidInput, match="is not callable"):
        load_runtime(
            "callable",
            "toy_models:NOT_CALLABLE",
            name="c",
            version=1,
            signature=SIG,
            task="regression",
        )


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # import lightgbm -> ImportError
    with pytest.raises(MissingExtra, match=r"hybridserve\[lightgbm\]"):
        LightGBMRuntime.load("unused.joblib", name="m", version=1, signature=SIG, task="regression")
