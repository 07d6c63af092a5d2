"""Runtimes for pickled scikit-learn-API estimators (sklearn, LightGBM, XGBoost).

The three flavours load the same way (``joblib.load``) and are called the same way; the
LightGBM and XGBoost classes only check first that their library is installed, so a missing
extra is reported by name instead of as an unpickling error. Tree ensembles are scored through
treelite when the version's ``compile`` option allows (:mod:`.compiled`).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from hybridserve._optional import require
from hybridserve.errors import InvalidInput
from hybridserve.runtimes._output import (
    Matrix,
    check_matrix,
    empty,
    from_probabilities,
    positive_index,
)
from hybridserve.runtimes.base import Compile, Flavour, Prediction, Signature, Task
from hybridserve.runtimes.compiled import CompiledTrees, compile_trees, verified_trees
from hybridserve.runtimes.introspect import feature_names_in, infer_signature, infer_task

_NO_NAMES = "X does not have valid feature names"


def load_estimator(path: str | Path) -> Any:
    """Unpickle an estimator (``joblib.load`` reads plain pickles as well)."""
    import joblib

    try:
        return joblib.load(path)
    except FileNotFoundError:
        raise
    except ModuleNotFoundError as exc:
        for module, extra in (("lightgbm", "lightgbm"), ("xgboost", "xgboost")):
            if exc.name and exc.name.split(".")[0] == module:
                require(module, extra)
        raise
    except Exception as exc:
        raise InvalidInput(f"cannot load {path} as a pickled estimator: {exc}") from exc


def detect_flavour(model: Any) -> Flavour:
    """``lightgbm`` or ``xgboost`` from the estimator's module, else ``sklearn``."""
    top = type(model).__module__.split(".")[0]
    if top in ("lightgbm", "xgboost"):
        return top  # type: ignore[return-value]
    return "sklearn"


def _forget_feature_names(obj: Any, seen: set[int] | None = None) -> None:
    """Drop fitted feature names so numpy input does not warn on every call.

    The names are kept in the version's signature, and the Scorer builds each matrix in
    exactly that order, so sklearn's check adds nothing here. Doing it once at load time keeps
    the hot path free of ``warnings.catch_warnings``, which costs microseconds per call and
    mutates process-wide state (not thread-safe before Python 3.14).
    """
    seen = set() if seen is None else seen
    if id(obj) in seen or len(seen) > 10_000:
        return
    seen.add(id(obj))
    if isinstance(obj, list | tuple):
        for item in obj:
            _forget_feature_names(item, seen)
        return
    if isinstance(obj, dict):
        for item in obj.values():
            _forget_feature_names(item, seen)
        return
    attrs = getattr(obj, "__dict__", None)
    if not isinstance(attrs, dict) or not hasattr(obj, "get_params"):
        return
    attrs.pop("feature_names_in_", None)
    if attrs.get("_fitted_with_feature_names"):  # LightGBM keeps its names behind a flag
        attrs["_fitted_with_feature_names"] = False
    for value in list(attrs.values()):
        _forget_feature_names(value, seen)


class SklearnRuntime:
    """A fitted estimator with ``predict`` (and ``predict_proba`` for classifiers)."""

    flavour: ClassVar[Flavour] = "sklearn"
    extra: ClassVar[tuple[str, str] | None] = None

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        version: int,
        signature: Signature,
        task: Task,
        compile: Compile = "auto",
        artifact: Path | None = None,
        verified: tuple[CompiledTrees, dict[str, Any]] | None = None,
    ) -> None:
        """``verified``: compiled trees an earlier load checked (:func:`verified_trees`) and
        what it remembered; then ``model`` is ``None`` and the estimator is unpickled from
        ``artifact`` only if something asks for it (:attr:`model`)."""
        self.name = name
        self.version = version
        self.signature = signature
        self.task = task
        self._who = f"{name}/{version}"
        self._artifact = artifact
        self._model: Any = None
        self._lock = threading.Lock()
        self.classes: list[Any] = []
        classification = task == "classification"
        if verified is not None:
            self._trees: CompiledTrees | None = verified[0]
            self.classes = list(verified[1].get("classes", []))
        else:
            self._bind(model)
            if classification:
                self.classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
            self._trees = compile_trees(
                model,
                compile,
                reference=self._library,
                classification=classification,
                who=self._who,
                artifact=artifact,
                remember={"classes": self.classes},
            )
        self._pos = positive_index(self.classes) if classification else None
        self.compiler: str | None = self._trees.compiler if self._trees else None
        """Which compiler scores this version (``tl2cgen``, ``treelite``), ``None``: the
        library's own predict."""

    def _bind(self, model: Any) -> None:
        """Take ``model`` as the estimator whose predict the library path calls."""
        _forget_feature_names(model)
        # A name we could not drop (a read-only property) falls back to a per-call filter.
        self._quiet = feature_names_in(model) is not None
        if self.task == "classification":
            if not hasattr(model, "predict_proba"):
                raise InvalidInput(f"{self._who} is a classifier without predict_proba")
            self._call = model.predict_proba
        else:
            self._call = model.predict
        self._model = model

    @property
    def model(self) -> Any:
        """The fitted estimator (unpickled now if this version loaded from verified trees)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    assert self._artifact is not None
                    self._bind(load_estimator(self._artifact))
        return self._model

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        name: str,
        version: int,
        signature: Signature,
        task: Task,
        compile: Compile = "auto",
    ) -> SklearnRuntime:
        """Unpickle the artifact at ``path``; with ``compile: tl2cgen`` and trees an earlier
        load checked beside it, score with those and leave the estimator (and its library)
        unloaded until asked for."""
        if compile == "tl2cgen":
            verified = verified_trees(
                Path(path), classification=task == "classification", who=f"{name}/{version}"
            )
            if verified is not None:
                return cls(
                    None,
                    name=name,
                    version=version,
                    signature=signature,
                    task=task,
                    artifact=Path(path),
                    verified=verified,
                )
        if cls.extra is not None:
            require(*cls.extra)
        model = load_estimator(path)
        return cls(
            model,
            name=name,
            version=version,
            signature=signature,
            task=task,
            compile=compile,
            artifact=Path(path),
        )

    @classmethod
    def describe(
        cls, path: str | Path, *, features: list[str] | None, task: Task | None
    ) -> tuple[Signature, Task]:
        """Signature and task of the artifact, for registration."""
        if cls.extra is not None:
            require(*cls.extra)
        model = load_estimator(path)
        return infer_signature(model, features), task or infer_task(model)

    def predict(self, matrix: npt.ArrayLike, *, probabilities: bool = False) -> Prediction:
        """One model call for the whole batch."""
        x = check_matrix(matrix, self.signature, self._who)
        if not len(x):
            return empty(self.classes, probabilities)
        out = self._run(x)
        if self.task == "classification":
            return from_probabilities(out, self.classes, self._pos, probabilities)
        return Prediction(scores=np.asarray(out, dtype=np.float64).reshape(-1))

    def _run(self, x: Matrix) -> Any:
        if self._trees is not None and self._trees.covers(len(x)):
            return self._trees.predict(x)
        return self._library(x)

    def _library(self, x: Matrix) -> Any:
        if self._model is None:
            self.model  # noqa: B018 - unpickles it, and binds its predict
        if not self._quiet:
            return self._call(x)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_NAMES, category=UserWarning)
            return self._call(x)


class LightGBMRuntime(SklearnRuntime):
    """A LightGBM scikit-learn estimator (``LGBMClassifier``, ``LGBMRegressor``)."""

    flavour = "lightgbm"
    extra = ("lightgbm", "lightgbm")


class XGBoostRuntime(SklearnRuntime):
    """An XGBoost scikit-learn estimator (``XGBClassifier``, ``XGBRegressor``)."""

    flavour = "xgboost"
    extra = ("xgboost", "xgboost")
