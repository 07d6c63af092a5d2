"""Tree ensembles scored through treelite: the library's scores, whichever compiler runs."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from toy_models import FEATURES, dataset, train

from hybridserve.config import project_from_dict
from hybridserve.errors import ConfigError, MissingExtra
from hybridserve.registry import Registry
from hybridserve.runtimes import compiled
from hybridserve.runtimes.base import Compile, Signature, Task
from hybridserve.runtimes.sklearn import SklearnRuntime

pytest.importorskip("treelite")
pytest.importorskip("tl2cgen")

SIG = Signature.from_list(FEATURES)
SIZES = (1, 8, 64, 300)


def _fit(kind: str) -> tuple[Any, Task]:
    if kind == "hgb-regressor":
        from sklearn.ensemble import HistGradientBoostingRegressor

        x, _, yr = dataset()
        x[np.random.default_rng(1).random(size=x.shape) < 0.05] = np.nan
        return HistGradientBoostingRegressor(max_iter=30, random_state=0).fit(x, yr), "regression"
    return train(kind), "classification"


def _rows(n: int = 300) -> np.ndarray[Any, Any]:
    x, _, _ = dataset(n, seed=5)
    x[np.random.default_rng(2).random(size=x.shape) < 0.1] = np.nan  # missing values too
    return x


def _load(model: Any, task: Task, tmp_path: Path, mode: Compile, name: str = "m") -> SklearnRuntime:
    artifact = tmp_path / f"{name}.joblib"
    if not artifact.exists():
        joblib.dump(model, artifact)
    return SklearnRuntime.load(
        artifact, name=name, version=1, signature=SIG, task=task, compile=mode
    )


@pytest.mark.parametrize("kind", ["hgb", "hgb-regressor", "lightgbm", "xgboost"])
@pytest.mark.parametrize("mode", ["tl2cgen", "treelite"])
def test_scores_equal_the_librarys_at_every_batch_size(
    kind: str, mode: Compile, tmp_path: Path
) -> None:
    if kind in ("lightgbm", "xgboost"):
        pytest.importorskip(kind)
    model, task = _fit(kind)
    runtime = _load(model, task, tmp_path, mode)
    assert runtime.compiler == mode
    # XGBoost computes in float32; treelite adds the same float32 leaves in another order.
    rtol = 1e-6 if kind == "xgboost" else 1e-12
    x = _rows()
    for n in SIZES:
        got = runtime.predict(x[:n], probabilities=True)
        if task == "classification":
            expected = model.predict_proba(x[:n])
            assert got.probabilities is not None
            np.testing.assert_allclose(got.probabilities, expected, rtol=rtol, atol=rtol)
            np.testing.assert_allclose(got.scores, expected[:, 1], rtol=rtol, atol=rtol)
        else:
            np.testing.assert_allclose(got.scores, model.predict(x[:n]), rtol=rtol, atol=rtol)


def test_the_compiled_library_is_built_once_per_artifact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, task = _fit("hgb")
    with caplog.at_level(logging.INFO, logger="hybridserve.runtimes"):
        _load(model, task, tmp_path, "tl2cgen")
        built = sorted(tmp_path.glob("m.joblib.*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        caplog.clear()
        again = _load(model, task, tmp_path, "tl2cgen")
    assert again.compiler == "tl2cgen"
    assert "compiling" not in caplog.text
    assert built[0].stat().st_mtime_ns == stamp
    # Another artifact (other bytes, other sha256) gets its own library.
    joblib.dump(_fit("hgb-regressor")[0], tmp_path / "m.joblib")
    _load(_fit("hgb-regressor")[0], "regression", tmp_path, "tl2cgen")
    assert len(sorted(tmp_path.glob("m.joblib.*.so"))) == 2


def test_gtil_serves_small_batches_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, task = _fit("hgb")
    runtime = _load(model, task, tmp_path, "treelite")
    assert runtime._trees is not None
    calls: list[int] = []
    raw = runtime._trees.raw
    counted = replace(runtime._trees, raw=lambda x: calls.append(len(x)) or raw(x))
    monkeypatch.setattr(runtime, "_trees", counted)
    x = _rows()
    runtime.predict(x[: compiled.GTIL_MAX_ROWS])
    runtime.predict(x[: compiled.GTIL_MAX_ROWS + 1])
    assert calls == [compiled.GTIL_MAX_ROWS]


def test_calls_larger_than_gtil_serves_load_no_gtil(tmp_path: Path) -> None:
    big = compiled.GTIL_MAX_ROWS + 1
    assert compiled.for_batches("auto", big) == "none"
    assert compiled.for_batches("treelite", big) == "none"
    assert compiled.for_batches("tl2cgen", big) == "tl2cgen"
    assert compiled.for_batches("auto", compiled.GTIL_MAX_ROWS) == "auto"
    model, task = _fit("hgb")
    runtime = _load(model, task, tmp_path, compiled.for_batches("auto", 50_000))
    assert runtime.compiler is None
    x = _rows()[:big]
    np.testing.assert_array_equal(runtime.predict(x).scores, model.predict_proba(x)[:, 1])


@pytest.mark.parametrize("mode", ["tl2cgen", "treelite"])
def test_a_mismatch_keeps_the_librarys_predict_and_says_so(
    mode: Compile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, task = _fit("hgb")
    build = compiled._tl2cgen if mode == "tl2cgen" else compiled._gtil

    def tampered(*args: Any, **kwargs: Any) -> Any:
        real = build(*args, **kwargs)
        return lambda x: real(x) + 1e-9  # off by far more than rounding

    monkeypatch.setattr(compiled, "_tl2cgen" if mode == "tl2cgen" else "_gtil", tampered)
    with caplog.at_level(logging.WARNING, logger="hybridserve.runtimes"):
        runtime = _load(model, task, tmp_path, mode, name="fraud")
    assert runtime.compiler is None
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "fraud/1" in warning.getMessage()
    assert f"{mode} scores differ" in warning.getMessage()
    assert "max relative difference 1e-09" in warning.getMessage()
    x = _rows(8)
    assert np.array_equal(runtime.predict(x).scores, model.predict_proba(x)[:, 1])


def test_auto_takes_gtil_and_falls_back_with_a_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, task = _fit("lightgbm")
    assert _load(model, task, tmp_path, "auto").compiler == "treelite"
    assert list(tmp_path.glob("*.so")) == []  # auto never builds with gcc
    assert _load(model, task, tmp_path, "none").compiler is None
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)  # no gcc
    with caplog.at_level(logging.INFO, logger="hybridserve.runtimes"):
        assert _load(model, task, tmp_path, "tl2cgen", name="nogcc").compiler is None
    assert any(
        r.levelno == logging.WARNING and "nogcc/1: gcc not found" in r.getMessage()
        for r in caplog.records
    )
    monkeypatch.setitem(sys.modules, "treelite", None)  # not installed
    with caplog.at_level(logging.INFO, logger="hybridserve.runtimes"):
        assert _load(model, task, tmp_path, "auto", name="bare").compiler is None
    assert "bare/1: treelite is not installed (extra 'compile')" in caplog.text


@pytest.mark.parametrize("missing", ["treelite", "tl2cgen"])
def test_an_explicit_compiler_that_is_missing_names_the_extra(
    missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, task = _fit("hgb")
    monkeypatch.setitem(sys.modules, missing, None)
    compiled._import_tl2cgen.cache_clear()
    try:
        with pytest.raises(MissingExtra, match=r"hybridserve\[compile\]"):
            _load(model, task, tmp_path, missing)  # type: ignore[arg-type]
    finally:
        compiled._import_tl2cgen.cache_clear()


def test_what_is_not_a_tree_ensemble_keeps_its_predict(tmp_path: Path) -> None:
    model, task = _fit("logreg")
    assert _load(model, task, tmp_path, "auto").compiler is None
    assert _load(model, task, tmp_path, "treelite", name="lr").compiler is None


def test_the_option_is_validated_and_reaches_the_runtime(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.fraud\.compile: .*'auto'.*got 'fast'"):
        project_from_dict({"models": {"fraud": {"compile": "fast"}}})
    project = project_from_dict(
        {
            "registry": {"url": f"sqlite:///{tmp_path}/r.db", "artifacts": str(tmp_path / "a")},
            "models": {
                "plain": {"compile": "none"},
                "gtil": {"compile": "treelite"},
                "cc": {"compile": "tl2cgen"},
            },
        },
        base_dir=tmp_path,
    )
    joblib.dump(_fit("hgb")[0], tmp_path / "m.joblib")
    with Registry.from_project(project) as registry:
        for name in ("plain", "gtil", "cc", "other"):
            registry.register(name, tmp_path / "m.joblib", features=FEATURES)
        loaded = {n: registry.load(n) for n in ("plain", "gtil", "cc", "other")}
        # A caller that only plans (a batch run's parent process) skips compiling.
        assert getattr(registry.load("gtil", compile="none"), "compiler", "?") is None
    assert {n: getattr(r, "compiler", "?") for n, r in loaded.items()} == {
        "plain": None,
        "gtil": "treelite",
        "cc": "tl2cgen",
        "other": "treelite",  # not in the project file: auto
    }


def test_a_model_without_an_artifact_is_built_in_a_directory_that_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, task = _fit("hgb")
    runtime = SklearnRuntime(
        model, name="m", version=1, signature=SIG, task=task, compile="tl2cgen"
    )
    assert runtime.compiler == "tl2cgen"
    assert list(tmp_path.iterdir()) == []  # the library stays loaded after its file is gone
    x = _rows(8)
    np.testing.assert_allclose(runtime.predict(x).scores, model.predict_proba(x)[:, 1], rtol=1e-12)


def test_the_compiled_library_reads_values_it_would_take_for_missing(tmp_path: Path) -> None:
    """tl2cgen's code reads a float64 whose low 32 bits are all ones as missing (its input
    union's ``int missing == -1``); 1.5 minus one ulp is such a value. Those rows must still
    score as the library scores them."""
    model, task = _fit("hgb")
    runtime = _load(model, task, tmp_path, "tl2cgen")
    assert runtime.compiler == "tl2cgen"
    x = _rows()
    ones = np.uint64(0xFFFFFFFF)
    punned = np.where(np.isnan(x), x, (x.view(np.uint64) | ones).view(np.float64))
    x[::3] = punned[::3]  # a third of the rows, every cell such a value
    got = runtime.predict(x, probabilities=True).scores
    np.testing.assert_allclose(got, model.predict_proba(x)[:, 1], rtol=1e-12, atol=1e-12)
    assert compiled.misread_rows(x) is not None
    assert compiled.misread_rows(_rows()) is None


_LOAD_AGAIN = """
import sys, numpy as np
from pathlib import Path
from hybridserve.runtimes.base import Signature
from hybridserve.runtimes.sklearn import SklearnRuntime
runtime = SklearnRuntime.load(
    Path(sys.argv[1]), name="m", version=1, signature=Signature.from_list(sys.argv[4].split(",")),
    task="classification", compile="tl2cgen",
)
np.save(sys.argv[3], runtime.predict(np.load(sys.argv[2]), probabilities=True).probabilities)
print("sklearn" in sys.modules, runtime.compiler, runtime.classes)
"""


@pytest.mark.parametrize("kind", ["hgb", "lightgbm"])
def test_a_version_checked_once_loads_again_without_its_library(kind: str, tmp_path: Path) -> None:
    """The first load builds and checks the library and keeps the trees beside it; a later
    load (a new process: a batch worker) scores with them, importing no scikit-learn."""
    if kind == "lightgbm":
        pytest.importorskip(kind)
    model, task = _fit(kind)
    first = _load(model, task, tmp_path, "tl2cgen")
    assert first.compiler == "tl2cgen"
    assert len(list(tmp_path.glob("m.joblib.*.tl"))) == len(list(tmp_path.glob("m.joblib.*.json")))
    x = _rows()
    np.save(tmp_path / "x.npy", x)
    script = [sys.executable, "-c", _LOAD_AGAIN, str(tmp_path / "m.joblib")]
    script += [str(tmp_path / "x.npy"), str(tmp_path / "out.npy"), ",".join(FEATURES)]
    run = subprocess.run(script, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:2] == ["False", "tl2cgen"], run.stdout  # no scikit-learn
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, model.predict_proba(x), rtol=1e-12, atol=1e-12)
    # In process too: the same scores, and the estimator unpickled only when asked for.
    again = _load(model, task, tmp_path, "tl2cgen")
    assert again._model is None and again.classes == first.classes
    np.testing.assert_allclose(again.predict(x).scores, first.predict(x).scores, rtol=0, atol=0)
    assert type(again.model) is type(model) and again._model is not None


def test_trees_that_failed_the_check_are_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, task = _fit("hgb")
    build = compiled._tl2cgen

    def tampered(*args: Any, **kwargs: Any) -> Any:
        raw = build(*args, **kwargs)
        return None if raw is None else (lambda x: raw(x) + 0.01)

    monkeypatch.setattr(compiled, "_tl2cgen", tampered)
    assert _load(model, task, tmp_path, "tl2cgen").compiler is None
    assert list(tmp_path.glob("m.joblib.*.so")) and not list(tmp_path.glob("m.joblib.*.json"))
    monkeypatch.setattr(compiled, "_tl2cgen", build)
    again = _load(model, task, tmp_path, "tl2cgen")  # checked again, from the estimator
    assert again.compiler == "tl2cgen" and again._model is not None
