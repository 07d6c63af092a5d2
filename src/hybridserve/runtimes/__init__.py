"""Model runtimes, one per flavour, behind the :class:`~.base.Runtime` protocol.

Flavours are a table of import strings resolved on first use (as uvicorn does), so
onnxruntime, LightGBM and XGBoost stay optional extras, and a user can point a flavour at
their own class. A runtime class provides two class methods: ``describe`` (signature and
task of an artifact, used at registration) and ``load`` (a ready :class:`Runtime`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, cast

from hybridserve._optional import import_string
from hybridserve.errors import ConfigError, InvalidInput
from hybridserve.runtimes.base import (
    Compile,
    FeatureSignature,
    Flavour,
    Prediction,
    Runtime,
    Signature,
    Task,
)
from hybridserve.runtimes.introspect import infer_signature, infer_task

RUNTIMES: dict[str, str] = {
    "sklearn": "hybridserve.runtimes.sklearn:SklearnRuntime",
    "lightgbm": "hybridserve.runtimes.sklearn:LightGBMRuntime",
    "xgboost": "hybridserve.runtimes.sklearn:XGBoostRuntime",
    "onnx": "hybridserve.runtimes.onnx:OnnxRuntime",
    "callable": "hybridserve.runtimes.callable:CallableRuntime",
}


class RuntimeClass(Protocol):
    """What a flavour's entry in :data:`RUNTIMES` must point at."""

    def load(
        self,
        path_or_ref: str | Path,
        *,
        name: str,
        version: int,
        signature: Signature,
        task: Task,
        compile: Compile = "auto",
    ) -> Runtime: ...

    def describe(
        self, path_or_ref: str | Path, *, features: list[str] | None, task: Task | None
    ) -> tuple[Signature, Task]: ...


def runtime_class(flavour: str) -> RuntimeClass:
    """The class registered for ``flavour`` (ConfigError naming the known flavours)."""
    target = RUNTIMES.get(flavour)
    if target is None:
        raise ConfigError(
            f"unknown model flavour {flavour!r}; known flavours: {', '.join(sorted(RUNTIMES))}"
        )
    return cast(RuntimeClass, import_string(target))


def load_runtime(
    flavour: str,
    path_or_ref: str | Path,
    *,
    name: str,
    version: int,
    signature: Signature,
    task: Task,
    compile: Compile = "auto",
) -> Runtime:
    """Load a model version: an artifact path, or ``module:function`` for ``callable``.

    ``compile`` is the model's ``compile`` option; flavours that are not tree ensembles
    (``onnx``, ``callable``) ignore it."""
    return runtime_class(flavour).load(
        path_or_ref, name=name, version=version, signature=signature, task=task, compile=compile
    )


def infer_flavour(artifact: Path) -> str:
    """``onnx`` from ``.onnx``; for pickles, ``lightgbm``/``xgboost``/``sklearn`` by module."""
    suffix = artifact.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".joblib", ".pkl", ".pickle"):
        from hybridserve.runtimes.sklearn import detect_flavour, load_estimator

        return detect_flavour(load_estimator(artifact))
    raise InvalidInput(
        f"cannot infer the flavour of {artifact.name} from its suffix: pass flavour= "
        "(sklearn, lightgbm, xgboost, onnx or callable)"
    )


def describe(
    flavour: str, path_or_ref: str | Path, *, features: list[str] | None, task: Task | None
) -> tuple[Signature, Task]:
    """Signature and task of an artifact (or callable), inferred where the model allows."""
    return runtime_class(flavour).describe(path_or_ref, features=features, task=task)


__all__ = [
    "RUNTIMES",
    "Compile",
    "FeatureSignature",
    "Flavour",
    "Prediction",
    "Runtime",
    "RuntimeClass",
    "Signature",
    "Task",
    "describe",
    "infer_flavour",
    "infer_signature",
    "infer_task",
    "load_runtime",
    "runtime_class",
]
