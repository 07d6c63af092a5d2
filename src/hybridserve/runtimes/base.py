"""The runtime interface: a loaded model version that scores a 2-D batch in one call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from hybridserve.config import Compile as Compile  # re-exported: the runtimes take it

Task = Literal["classification", "regression"]
Flavour = Literal["sklearn", "lightgbm", "xgboost", "onnx", "callable"]


@dataclass(frozen=True, slots=True)
class FeatureSignature:
    name: str
    dtype: str = "float"


@dataclass(frozen=True, slots=True)
class Signature:
    """Ordered inputs of a model: the Scorer builds its matrix in exactly this order."""

    features: tuple[FeatureSignature, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_list(self) -> list[dict[str, str]]:
        return [{"name": f.name, "dtype": f.dtype} for f in self.features]

    @classmethod
    def from_list(cls, items: list[dict[str, str]] | list[str]) -> Signature:
        feats = [
            FeatureSignature(i)
            if isinstance(i, str)
            else FeatureSignature(i["name"], i.get("dtype", "float"))
            for i in items
        ]
        return cls(tuple(feats))


@dataclass(slots=True)
class Prediction:
    """What a runtime returns for a batch of ``n`` rows."""

    scores: npt.NDArray[np.float64]
    """Shape ``(n,)``: positive-class probability for a classifier, the value for a regressor."""
    probabilities: npt.NDArray[np.float64] | None = None
    """Shape ``(n, n_classes)`` for classifiers when asked for, else ``None``."""
    classes: list[Any] = field(default_factory=list)


@runtime_checkable
class Runtime(Protocol):
    """A loaded model version. ``predict`` is called once per batch, never per row."""

    name: str
    version: int
    signature: Signature
    task: Task

    def predict(
        self, matrix: npt.NDArray[np.float64], *, probabilities: bool = False
    ) -> Prediction:
        """Score a ``(n, len(signature))`` float matrix."""
        ...
