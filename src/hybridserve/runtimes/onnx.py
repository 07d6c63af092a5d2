"""ONNX models through onnxruntime (the ``onnx`` extra), imported only when used.

A model takes one 2-D tensor input. A classifier exported by skl2onnx has two outputs,
the label and the probabilities; the probabilities come either as a tensor
(``options={'zipmap': False}``) or as a sequence of ``{class: probability}`` maps (the
default ZipMap), and both are handled. A model with one output is a regressor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridserve._optional import require
from hybridserve.errors import InvalidInput
from hybridserve.runtimes._output import (
    check_matrix,
    empty,
    from_probabilities,
    positive_index,
)
from hybridserve.runtimes.base import Compile, Flavour, Prediction, Signature, Task

_LABEL_ATTRS = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")


def _session(path: str | Path) -> Any:
    ort = require("onnxruntime", "onnx")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidInput(f"cannot load {path} as an ONNX model: {exc}") from exc


def _class_labels(path: str | Path) -> list[Any] | None:
    """Class labels stored in the graph's classifier or ZipMap node, when readable."""
    try:
        import onnx  # installed alongside skl2onnx; optional at serving time
    except ImportError:
        return None
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        for attr in node.attribute:
            if attr.name in _LABEL_ATTRS:
                if attr.strings:
                    return [s.decode() for s in attr.strings]
                return [int(i) for i in attr.ints]
    return None


def _task_of(session: Any) -> Task:
    return "classification" if len(session.get_outputs()) >= 2 else "regression"


class OnnxRuntime:
    """An ONNX graph scored in one ``session.run`` call per batch."""

    flavour: Flavour = "onnx"

    def __init__(
        self,
        session: Any,
        *,
        name: str,
        version: int,
        signature: Signature,
        task: Task,
        classes: list[Any] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.signature = signature
        self.task = task
        self._who = f"{name}/{version}"
        self._session = session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise InvalidInput(
                f"{self._who}: expected an ONNX model with one 2-D input, got {len(inputs)} inputs"
            )
        self._input = inputs[0].name
        self._dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32
        outputs = session.get_outputs()
        if task == "classification" and len(outputs) < 2:
            raise InvalidInput(f"{self._who}: a classifier needs label and probability outputs")
        # skl2onnx classifiers: outputs[0] is the label, outputs[1] the probabilities.
        self._output = outputs[1].name if task == "classification" else outputs[0].name
        self.classes: list[Any] = list(classes or [])
        self._pos = positive_index(self.classes) if self.classes else None

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
    ) -> OnnxRuntime:
        """Open an inference session on ``path`` (CPU provider; ``compile`` does not apply:
        onnxruntime optimizes its graph itself)."""
        session = _session(path)
        classes = _class_labels(path) if task == "classification" else None
        return cls(
            session, name=name, version=version, signature=signature, task=task, classes=classes
        )

    @classmethod
    def describe(
        cls, path: str | Path, *, features: list[str] | None, task: Task | None
    ) -> tuple[Signature, Task]:
        """An ONNX graph has no feature names: ``features`` is required; its count is checked."""
        session = _session(path)
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise InvalidInput(f"{path}: expected an ONNX model with one 2-D input")
        if not features:
            raise InvalidInput(
                f"{path}: an ONNX model does not carry feature names: pass features=[...] "
                "in the order of its input columns"
            )
        width = inputs[0].shape[1]
        if isinstance(width, int) and width != len(features):
            raise InvalidInput(f"{path} takes {width} features but {len(features)} were given")
        return Signature.from_list(list(features)), task or _task_of(session)

    def predict(self, matrix: npt.ArrayLike, *, probabilities: bool = False) -> Prediction:
        """One ``session.run`` for the whole batch."""
        x = check_matrix(matrix, self.signature, self._who).astype(self._dtype, copy=False)
        if not len(x):
            return empty(self.classes, probabilities)
        (out,) = self._session.run([self._output], {self._input: x})
        if self.task == "regression":
            return Prediction(scores=np.asarray(out, dtype=np.float64).reshape(-1))
        if isinstance(out, list):  # ZipMap: one {class: probability} dict per row
            if not self.classes:
                self.classes = list(out[0]) if out else []
                self._pos = positive_index(self.classes)
            out = [[row[c] for c in self.classes] for row in out]
        elif not self.classes:
            self.classes = list(range(np.shape(out)[1]))
            self._pos = positive_index(self.classes)
        return from_probabilities(out, self.classes, self._pos, probabilities)
