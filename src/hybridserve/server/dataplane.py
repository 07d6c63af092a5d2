"""The Open Inference Protocol's core, behind both of its transports.

REST (:mod:`hybridserve.server.v2`) and gRPC (:mod:`hybridserve.server.grpc`) only translate
their wire formats and errors; every rule of the protocol lives here once: which loaded model a
name and version mean, what its metadata says, how a tensor is checked and read, how requested
outputs, the timeout and the row limit are checked, and what each output holds. Inference goes
through the same runtimes and micro-batchers as the hybrid API, so both APIs share model calls.

A model takes its features either as one 2-D tensor ``[rows, n_features]`` in signature order
(any name; metadata calls it ``input-0``) or as one tensor per feature, named by the feature,
shaped ``[rows]`` or ``[rows, 1]``. Values come as numbers (JSON ``data``, gRPC typed
``contents``) or as raw little-endian bytes (REST's ``binary_tensor_data`` extension, gRPC's
``raw_input_contents``); BYTES tensors and non-finite values are refused. A model answers
``score`` (FP64 ``[rows]``: the positive-class probability of a binary classifier, the highest
probability of a multiclass one, the value of a regressor) and, for classifiers,
``probabilities`` (FP64 ``[rows, n_classes]``) and ``label`` (the most probable class). The
``timeout`` request parameter is in microseconds, as in Triton. Every error is a
:class:`~hybridserve.errors.HybridServeError`, which each transport maps to its own status.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridserve import __version__
from hybridserve.errors import DeadlineExceeded, HybridServeError, InvalidInput, ModelNotFound
from hybridserve.routing.models import LoadedModel
from hybridserve.runtimes.base import Prediction, Runtime
from hybridserve.server.state import ServerState

Matrix = npt.NDArray[np.float64]

EXTENSIONS = ["binary_tensor_data"]
INPUT = "input-0"

RAW = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
"""Datatype -> layout of its raw bytes (BF16 is read as the high half of an FP32)."""
_KINDS = {t: "b" if t == "BOOL" else "iu" if "INT" in t else "iuf" for t in RAW}
"""Datatype -> numpy kinds its numbers may hold (integers are fine for floats)."""


# -- models --------------------------------------------------------------------------------


def _version_number(version: str) -> int:
    try:
        return int(version)
    except ValueError:
        raise InvalidInput(f"version {version!r}: expected a version number") from None


def resolve(state: ServerState, name: str, version: str | None) -> LoadedModel:
    """The loaded model; without a version (or an empty one), the route's primary, else newest."""
    models = state.models
    if not version:
        version = None
        primary = [m for _, role, m in models.loaded() if role == "primary" and m.name == name]
        found = max(primary, key=lambda m: m.version) if primary else models.by_version(name)
    else:
        found = models.by_version(name, _version_number(version))
    if found is not None:
        return found
    names = sorted({m.name for _, _, m in models.loaded()})
    if version is None or models.by_version(name) is None:
        raise ModelNotFound(f"model {name!r} is not loaded (loaded: {', '.join(names)})")
    loaded = ", ".join(_versions(state, name))
    raise ModelNotFound(f"model {name!r} version {version} is not loaded (loaded: {loaded})")


def _versions(state: ServerState, name: str) -> list[str]:
    loaded = {m.version for _, _, m in state.models.loaded() if m.name == name}
    return [str(v) for v in sorted(loaded)]


def model_ready(state: ServerState, name: str, version: str | None) -> bool:
    """Whether the model (version) serves; :class:`ModelNotFound` when it is not loaded."""
    resolve(state, name, version)
    return state.ready


def server_metadata() -> dict[str, Any]:
    return {"name": "hybridserve", "version": __version__, "extensions": EXTENSIONS}


async def model_metadata(state: ServerState, name: str, version: str | None) -> dict[str, Any]:
    """The protocol's model metadata for a loaded model (version)."""
    model = resolve(state, name, version)
    mv = await asyncio.to_thread(state.services.registry.get, model.label)
    return metadata_of(model.scorer.runtime, mv.flavour, _versions(state, model.name))


def _classes(runtime: Runtime) -> list[Any]:
    return list(getattr(runtime, "classes", None) or [])


def _output_names(runtime: Runtime) -> tuple[str, ...]:
    return ("score", "probabilities", "label") if runtime.task == "classification" else ("score",)


def _label_values(classes: list[Any]) -> tuple[str, npt.NDArray[Any]]:
    """The datatype of class labels, and the labels as an array of that type."""
    arr = np.asarray(classes)
    if arr.dtype.kind == "b":
        return "BOOL", arr
    if arr.dtype.kind in "iu":
        return "INT64", arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return "FP64", arr.astype(np.float64)
    return "BYTES", arr.astype(str)


def metadata_of(runtime: Runtime, platform: str, versions: list[str]) -> dict[str, Any]:
    """The protocol's model metadata for a runtime."""
    names = runtime.signature.names
    inputs = [
        {
            "name": INPUT,
            "datatype": "FP64",
            "shape": [-1, len(names)],
            # As MLServer's metadata tensors do: the column order, which a client needs.
            "parameters": {"feature_names": ",".join(names)},
        }
    ]
    outputs: list[dict[str, Any]] = [{"name": "score", "datatype": "FP64", "shape": [-1]}]
    if runtime.task == "classification":
        classes = _classes(runtime)
        outputs.append(
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(classes) or -1]}
        )
        if classes:  # an ONNX model may only learn its labels on its first call
            outputs.append({"name": "label", "datatype": _label_values(classes)[0], "shape": [-1]})
    return {
        "name": runtime.name,
        "versions": versions,
        "platform": platform,
        "inputs": inputs,
        "outputs": outputs,
    }


# -- a request -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """A checked input tensor header."""

    name: str
    datatype: str
    shape: list[int]

    @property
    def where(self) -> str:
        return f"input {self.name!r}"

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def header(i: int, name: Any, datatype: Any, shape: Any) -> Header:
    """Check input ``i``'s name, datatype and shape."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{i}].name: expected a string")
    where = f"input {name!r}"
    if datatype == "BYTES":
        raise InvalidInput(f"{where}: BYTES tensors are not accepted; send numbers")
    if not isinstance(datatype, str) or datatype not in _KINDS:
        raise InvalidInput(f"{where}: unknown datatype {datatype!r} (known: {', '.join(RAW)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: shape: expected a list of non-negative integers")
    return Header(name, datatype, shape)


def from_data(head: Header, data: Any) -> Matrix:
    """The tensor from numbers (nested or flat, row-major), as float64 of its shape."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"{head.where}: data: not a regular array of numbers") from None
    size = head.size
    if arr.size != size:
        raise InvalidInput(
            f"{head.where}: shape {head.shape} needs {size} values, data has {arr.size}"
        )
    if size and arr.dtype.kind not in _KINDS[head.datatype]:
        raise InvalidInput(f"{head.where}: data: values do not match datatype {head.datatype}")
    return arr.astype(np.float64, copy=False).reshape(head.shape)


def from_raw(head: Header, blob: bytes | memoryview) -> Matrix:
    """The tensor from its raw little-endian bytes, as float64 of its shape."""
    dtype = RAW[head.datatype]
    want = head.size * dtype.itemsize
    if len(blob) != want:
        raise InvalidInput(
            f"{head.where}: {len(blob)} bytes of raw data, but {head.size} {head.datatype} "
            f"values take {want}"
        )
    arr = np.frombuffer(blob, dtype=dtype)
    if head.datatype == "BF16":
        arr = (arr.astype("<u4") << 16).view("<f4")
    return arr.astype(np.float64, copy=False).reshape(head.shape)


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    inputs: list[tuple[str, Matrix]]
    outputs: list[tuple[str, bool]] | None
    """Requested (name, as raw bytes) pairs; ``None`` for every output."""
    raw_output: bool
    """Whether outputs not requested by name come as raw bytes."""
    timeout: float | None
    """Seconds."""


def infer_request(
    rid: str | None,
    inputs: list[tuple[str, Matrix]],
    parameters: Mapping[str, Any],
    outputs: Sequence[tuple[Any, Mapping[str, Any]]] | None,
    *,
    raw_output: bool = False,
) -> InferRequest:
    """Check a decoded request's inputs, parameters and requested outputs.

    ``raw_output`` is the transport's default for outputs; the ``binary_data_output`` request
    parameter and each output's ``binary_data`` parameter override it.
    """
    if not inputs:
        raise InvalidInput("inputs: expected a non-empty list")
    raw_output = parameters.get("binary_data_output", raw_output) is True
    timeout = parameters.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0
    ):
        raise InvalidInput("parameters.timeout: expected a positive number of microseconds")
    wanted = None
    if outputs is not None:
        wanted = []
        for i, (name, params) in enumerate(outputs):
            if not isinstance(name, str) or not name:
                raise InvalidInput(f"outputs[{i}]: expected an object with a name")
            if params.get("classification"):
                raise InvalidInput(f"outputs[{i}]: the classification extension is not supported")
            wanted.append((name, params.get("binary_data", raw_output) is True))
    return InferRequest(rid, inputs, wanted, raw_output, None if timeout is None else timeout / 1e6)


def assemble(inputs: list[tuple[str, Matrix]], features: list[str]) -> Matrix:
    """The ``(rows, n_features)`` matrix in signature order, from either input form."""
    matrix = _arrange(inputs, features)
    if not np.isfinite(matrix).all():  # one check per request; find the culprit only then
        name = next(n for n, x in inputs if not np.isfinite(x).all())
        raise InvalidInput(f"input {name!r}: data: NaN or infinite values are not accepted")
    return matrix


def _arrange(inputs: list[tuple[str, Matrix]], features: list[str]) -> Matrix:
    k = len(features)
    if len(inputs) == 1 and inputs[0][0] not in features:
        name, x = inputs[0]
        if x.ndim != 2 or x.shape[1] != k:
            raise InvalidInput(
                f"input {name!r}: expected shape [-1, {k}] (a row per instance, the {k} "
                f"features in signature order) or one tensor per feature; got {list(x.shape)}"
            )
        return x
    index = {f: j for j, f in enumerate(features)}
    matrix: Matrix | None = None
    seen: set[str] = set()
    for name, x in inputs:
        j = index.get(name)
        if j is None:
            raise InvalidInput(
                f"unknown input {name!r}: send one [-1, {k}] tensor, or one tensor per feature "
                f"named by the feature ({_preview(features)})"
            )
        if name in seen:
            raise InvalidInput(f"input {name!r} given twice")
        if not (x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1)):
            raise InvalidInput(f"input {name!r}: expected shape [-1] or [-1, 1], got {x.shape}")
        if matrix is None:
            matrix = np.empty((x.shape[0], k), dtype=np.float64)
        elif x.shape[0] != len(matrix):
            raise InvalidInput(f"input {name!r} has {x.shape[0]} rows, others {len(matrix)}")
        matrix[:, j] = x.reshape(-1)
        seen.add(name)
    missing = [f for f in features if f not in seen]
    if missing or matrix is None:
        raise InvalidInput(f"missing input(s): {_preview(missing)}")
    return matrix


def _preview(names: list[str], limit: int = 8) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# -- the answer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    name: str
    datatype: str
    values: npt.NDArray[Any]
    raw: bool
    """Whether the transport sends it as raw bytes (:func:`raw_bytes`)."""


@dataclass(frozen=True, slots=True)
class InferResult:
    model_name: str
    model_version: str
    id: str
    outputs: list[Output]


async def infer(state: ServerState, model: LoadedModel, req: InferRequest, rid: str) -> InferResult:
    """Score a checked request on a model from :func:`resolve`; ``rid`` is the id if none."""
    runtime = model.scorer.runtime
    known = _output_names(runtime)
    for out, _ in req.outputs or ():
        if out not in known:
            raise InvalidInput(f"unknown output {out!r} (outputs: {', '.join(known)})")
    matrix = assemble(req.inputs, runtime.signature.names)
    limit = state.project.server.max_entities
    if len(matrix) > limit:
        raise InvalidInput(f"at most {limit} rows per request (server.max_entities)")
    pred = await _predict(model, matrix, req.timeout)
    wanted = req.outputs if req.outputs is not None else [(n, req.raw_output) for n in known]
    outputs = [Output(n, *_output(n, runtime, pred), raw) for n, raw in wanted]
    return InferResult(model.name, str(model.version), req.id or rid, outputs)


async def _predict(model: LoadedModel, matrix: Matrix, timeout: float | None) -> Prediction:
    if timeout is None:
        return await model.batcher.predict(matrix)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            return await model.batcher.predict(matrix, deadline)
    except TimeoutError:
        raise DeadlineExceeded(f"{model.label}: no answer within the request's timeout") from None


def _output(name: str, runtime: Runtime, pred: Prediction) -> tuple[str, npt.NDArray[Any]]:
    """Datatype and values of one output."""
    if name == "score":
        return "FP64", np.ascontiguousarray(pred.scores, dtype=np.float64)
    n = len(pred.scores)
    proba = pred.probabilities
    if proba is None:
        if n:
            raise HybridServeError(f"{runtime.name}/{runtime.version} returned no probabilities")
        proba = np.empty((0, len(pred.classes)))
    if name == "probabilities":
        return "FP64", np.ascontiguousarray(proba, dtype=np.float64)
    classes = pred.classes or _classes(runtime) or list(range(proba.shape[1]))
    datatype, labels = _label_values(classes)
    return datatype, labels[np.argmax(proba, axis=1)] if n else labels[:0]


def raw_bytes(out: Output) -> bytes:
    """An output's raw form: little-endian values, or length-prefixed strings for BYTES."""
    if out.datatype != "BYTES":
        return out.values.astype(RAW[out.datatype], copy=False).tobytes()
    items = [str(v).encode() for v in out.values.reshape(-1)]
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)
