"""The Open Inference Protocol (KServe V2 REST): health, metadata and inference.

Any V2 client (tritonclient, KServe's, MLServer's) can call a loaded model version directly,
with no feature lookup: the request carries the features. Inference goes through the same
runtimes and micro-batchers as the hybrid API, so both APIs share model calls.

A model takes its features either as one 2-D tensor ``[rows, n_features]`` in signature order
(any name; metadata calls it ``input-0``) or as one tensor per feature, named by the feature,
shaped ``[rows]`` or ``[rows, 1]``. Data are JSON numbers (flat or nested, row-major) or raw
little-endian bytes (Triton's ``binary_tensor_data`` extension, tritonclient's default); BYTES
tensors and non-finite values are refused. It answers ``score`` (FP64 ``[rows]``: the
positive-class probability of a binary classifier, the highest probability of a multiclass
one, the value of a regressor) and, for classifiers, ``probabilities`` (FP64
``[rows, n_classes]``) and ``label`` (the most probable class). The ``timeout`` request
parameter is in microseconds, as in Triton. Errors are ``{"error": message}`` with the status
of the :mod:`hybridserve.errors` class raised.
"""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve import __version__
from hybridserve.errors import (
    DeadlineExceeded,
    HybridServeError,
    InvalidInput,
    ModelNotFound,
)
from hybridserve.routing.models import LoadedModel
from hybridserve.runtimes.base import Prediction, Runtime
from hybridserve.server.http import read_body
from hybridserve.server.requests import authorize, state_of
from hybridserve.server.state import ServerState

Matrix = npt.NDArray[np.float64]
Handler = Callable[[Request], Awaitable[Response]]

EXTENSIONS = ["binary_tensor_data"]
INPUT = "input-0"
_BYTES_HEADER = "Inference-Header-Content-Length"

_RAW = {
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
_KINDS = {t: "b" if t == "BOOL" else "iu" if "INT" in t else "iuf" for t in _RAW}
"""Datatype -> numpy kinds its JSON data may hold (JSON integers are fine for floats)."""


# -- errors --------------------------------------------------------------------------------


def _json(status: int, body: Any) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status,
        media_type="application/json",
    )


def _protocol_errors(handler: Handler) -> Handler:
    """Answer a :class:`HybridServeError` with the protocol's ``{"error": message}`` body."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except HybridServeError as exc:
            return _json(exc.status, {"error": exc.message})

    return wrapper


# -- models --------------------------------------------------------------------------------


def _version_number(version: str) -> int:
    try:
        return int(version)
    except ValueError:
        raise InvalidInput(f"version {version!r}: expected a version number") from None


def _resolve(state: ServerState, name: str, version: str | None) -> LoadedModel:
    """The loaded model; without a version, the one a route serves as primary (else newest)."""
    models = state.models
    if version is None:
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


def model_metadata(runtime: Runtime, platform: str, versions: list[str]) -> dict[str, Any]:
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


# -- decoding a request --------------------------------------------------------------------


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[tuple[str, Matrix]]
    outputs: list[tuple[str, bool]] | None
    """Requested (name, as binary) pairs; ``None`` for every output."""
    binary_output: bool
    timeout: float | None
    """Seconds."""


_KIND_NAMES: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``obj[key]`` if absent or of type ``kind``; else InvalidInput naming it."""
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise InvalidInput(f"{where}{key}: expected {_KIND_NAMES[kind]}")
    return value


def _tensor(spec: Any, i: int, raw: memoryview, offset: int) -> tuple[str, Matrix, int]:
    """One input as a float64 array of its shape, and the offset of the next raw tensor."""
    if not isinstance(spec, dict):
        raise InvalidInput(f"inputs[{i}]: expected an object")
    name = _field(spec, "name", str, f"inputs[{i}].")
    if not name:
        raise InvalidInput(f"inputs[{i}].name: expected a string")
    where = f"input {name!r}"
    datatype = spec.get("datatype")
    if datatype == "BYTES":
        raise InvalidInput(f"{where}: BYTES tensors are not accepted; send numbers")
    if not isinstance(datatype, str) or datatype not in _KINDS:
        raise InvalidInput(f"{where}: unknown datatype {datatype!r} (known: {', '.join(_RAW)})")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: shape: expected a list of non-negative integers")
    size = math.prod(shape)
    params = _field(spec, "parameters", dict, f"{where}: ") or {}
    nbytes = params.get("binary_data_size")
    if nbytes is not None:
        arr, offset = _raw_tensor(where, datatype, size, nbytes, raw, offset)
    elif "data" not in spec:
        raise InvalidInput(f"{where}: no 'data' and no binary_data_size")
    else:
        try:
            arr = np.asarray(spec["data"])
        except (ValueError, TypeError):
            raise InvalidInput(f"{where}: data: not a regular array of numbers") from None
        if arr.size != size:
            raise InvalidInput(f"{where}: shape {shape} needs {size} values, data has {arr.size}")
        if size and arr.dtype.kind not in _KINDS[datatype]:
            raise InvalidInput(f"{where}: data: values do not match datatype {datatype}")
    return name, arr.astype(np.float64, copy=False).reshape(shape), offset


def _raw_tensor(
    where: str, datatype: str, size: int, nbytes: Any, raw: memoryview, offset: int
) -> tuple[npt.NDArray[Any], int]:
    dtype = _RAW[datatype]
    if type(nbytes) is not int or nbytes != size * dtype.itemsize:
        raise InvalidInput(
            f"{where}: binary_data_size {nbytes!r} does not match {size} {datatype} values"
        )
    if offset + nbytes > len(raw):
        raise InvalidInput(f"{where}: the body holds fewer bytes than binary_data_size")
    arr = np.frombuffer(raw[offset : offset + nbytes], dtype=dtype)
    if datatype == "BF16":
        arr = (arr.astype("<u4") << 16).view("<f4")
    return arr, offset + nbytes


def decode_request(body: bytes, json_length: str | None = None) -> InferRequest:
    """Parse an inference request; ``json_length`` splits off raw tensor data."""
    raw = memoryview(b"")
    if json_length is not None:
        try:
            n = int(json_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InvalidInput(f"{_BYTES_HEADER}: expected a length within the body")
        raw = memoryview(body)[n:]
        body = body[:n]
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(req, dict):
        raise InvalidInput("expected a JSON object")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs: expected a non-empty list")
    tensors, offset = [], 0
    for i, spec in enumerate(inputs):
        name, x, offset = _tensor(spec, i, raw, offset)
        tensors.append((name, x))
    if offset != len(raw):
        raise InvalidInput(f"the body holds {len(raw) - offset} bytes no input claims")
    params = _field(req, "parameters", dict, "") or {}
    binary = params.get("binary_data_output", False) is True
    timeout = params.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0
    ):
        raise InvalidInput("parameters.timeout: expected a positive number of microseconds")
    outputs = None
    requested = _field(req, "outputs", list, "")
    if requested is not None:
        outputs = []
        for i, out in enumerate(requested):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInput(f"outputs[{i}]: expected an object with a name")
            oparams = _field(out, "parameters", dict, f"outputs[{i}].") or {}
            if oparams.get("classification"):
                raise InvalidInput(f"outputs[{i}]: the classification extension is not supported")
            outputs.append((out["name"], oparams.get("binary_data", binary) is True))
    rid = _field(req, "id", str, "")
    return InferRequest(rid, tensors, outputs, binary, None if timeout is None else timeout / 1e6)


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


# -- encoding a response -------------------------------------------------------------------


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


def _bytes(datatype: str, values: npt.NDArray[Any]) -> bytes:
    if datatype != "BYTES":
        return values.astype(_RAW[datatype], copy=False).tobytes()
    items = [str(v).encode() for v in values.reshape(-1)]
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def encode_response(
    model: LoadedModel, req: InferRequest, rid: str, pred: Prediction
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when raw tensors follow it."""
    runtime = model.scorer.runtime
    known = _output_names(runtime)
    wanted = req.outputs if req.outputs is not None else [(n, req.binary_output) for n in known]
    entries, blobs, binary = [], [], False
    for name, as_binary in wanted:
        datatype, values = _output(name, runtime, pred)
        entry: dict[str, Any] = {"name": name, "shape": list(values.shape), "datatype": datatype}
        if as_binary:
            blob = _bytes(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
            binary = True
        elif datatype == "BYTES":
            entry["data"] = values.reshape(-1).tolist()
        else:
            entry["data"] = values.reshape(-1)
        entries.append(entry)
    head = orjson.dumps(
        {
            "model_name": model.name,
            "model_version": str(model.version),
            "id": rid,
            "outputs": entries,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return (b"".join([head, *blobs]), len(head)) if binary else (head, None)


def _check_outputs(req: InferRequest, runtime: Runtime) -> None:
    if req.outputs is None:
        return
    known = _output_names(runtime)
    for name, _ in req.outputs:
        if name not in known:
            raise InvalidInput(f"unknown output {name!r} (outputs: {', '.join(known)})")


# -- endpoints -----------------------------------------------------------------------------


async def live(_request: Request) -> Response:
    """200 while the process serves."""
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    """200 once every model is loaded and the stores answer."""
    return Response(status_code=200 if state_of(request).ready else 503)


async def server_metadata(_request: Request) -> Response:
    return _json(200, {"name": "hybridserve", "version": __version__, "extensions": EXTENSIONS})


@_protocol_errors
async def model_ready(request: Request) -> Response:
    """200 when the model (version) is loaded; the status code is the answer."""
    state = state_of(request)
    _resolve(state, request.path_params["name"], request.path_params.get("version"))
    return Response(status_code=200 if state.ready else 503)


@_protocol_errors
async def metadata(request: Request) -> Response:
    state = state_of(request)
    model = _resolve(state, request.path_params["name"], request.path_params.get("version"))
    mv = await asyncio.to_thread(state.services.registry.get, model.label)
    body = model_metadata(model.scorer.runtime, mv.flavour, _versions(state, model.name))
    return _json(200, body)


@_protocol_errors
async def infer(request: Request) -> Response:
    state = state_of(request)
    if state.auth.enabled:
        authorize(request, "predict")
    body = await read_body(request.scope, request.receive, state.project.server.max_body_size)
    model = _resolve(state, request.path_params["name"], request.path_params.get("version"))
    req = decode_request(body, request.headers.get(_BYTES_HEADER))
    runtime = model.scorer.runtime
    _check_outputs(req, runtime)
    matrix = assemble(req.inputs, runtime.signature.names)
    limit = state.project.server.max_entities
    if len(matrix) > limit:
        raise InvalidInput(f"at most {limit} rows per request (server.max_entities)")
    pred = await _predict(model, matrix, req.timeout)
    rid = req.id or request.headers.get("x-request-id") or uuid.uuid4().hex
    content, json_length = encode_response(model, req, rid, pred)
    if json_length is None:
        return Response(content, 200, media_type="application/json")
    return Response(
        content,
        200,
        headers={_BYTES_HEADER: str(json_length)},
        media_type="application/octet-stream",
    )


async def _predict(model: LoadedModel, matrix: Matrix, timeout: float | None) -> Prediction:
    if timeout is None:
        return await model.batcher.predict(matrix)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            return await model.batcher.predict(matrix, deadline)
    except TimeoutError:
        raise DeadlineExceeded(f"{model.label}: no answer within the request's timeout") from None


def routes() -> list[Route]:
    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route(f"{model}/ready", model_ready),
        Route(f"{version}/ready", model_ready),
        Route(model, metadata),
        Route(version, metadata),
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{version}/infer", infer, methods=["POST"]),
    ]
