"""The Open Inference Protocol (KServe V2) over REST: health, metadata and inference.

Any V2 client (tritonclient, KServe's, MLServer's) can call a loaded model version directly,
with no feature lookup: the request carries the features. This module only translates HTTP:
paths to model names, JSON bodies (and Triton's ``binary_tensor_data`` extension, tritonclient's
default: raw little-endian tensors after the JSON, whose length the
``Inference-Header-Content-Length`` header gives) to the core's calls, and errors to
``{"error": message}`` with the status of the :mod:`hybridserve.errors` class raised. The rules
(models, tensors, outputs) are :mod:`hybridserve.server.dataplane`'s, shared with gRPC.
Health answers carry a JSON body as well as their status (KServe's client reads the body,
Triton's the status).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.errors import InvalidInput
from hybridserve.server import dataplane
from hybridserve.server.dataplane import InferRequest, InferResult, Matrix
from hybridserve.server.errors import dumps, json_response, protocol_errors
from hybridserve.server.http import json_object, read_body
from hybridserve.server.requests import authorize, state_of

_BYTES_HEADER = "Inference-Header-Content-Length"


# -- decoding a request --------------------------------------------------------------------


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
    head = dataplane.header(
        i, _field(spec, "name", str, f"inputs[{i}]."), spec.get("datatype"), spec.get("shape")
    )
    params = _field(spec, "parameters", dict, f"{head.where}: ") or {}
    nbytes = params.get("binary_data_size")
    if nbytes is not None:
        if type(nbytes) is not int or nbytes < 0:
            raise InvalidInput(f"{head.where}: binary_data_size: expected a number of bytes")
        if offset + nbytes > len(raw):
            raise InvalidInput(f"{head.where}: the body holds fewer bytes than binary_data_size")
        return head.name, dataplane.from_raw(head, raw[offset : offset + nbytes]), offset + nbytes
    if "data" not in spec:
        raise InvalidInput(f"{head.where}: no 'data' and no binary_data_size")
    return head.name, dataplane.from_data(head, spec["data"]), offset


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
    req = json_object(body)
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs: expected a non-empty list")
    tensors, offset = [], 0
    for i, spec in enumerate(inputs):
        name, x, offset = _tensor(spec, i, raw, offset)
        tensors.append((name, x))
    if offset != len(raw):
        raise InvalidInput(f"the body holds {len(raw) - offset} bytes no input claims")
    outputs = None
    requested = _field(req, "outputs", list, "")
    if requested is not None:
        outputs = []
        for i, out in enumerate(requested):
            if not isinstance(out, dict):
                raise InvalidInput(f"outputs[{i}]: expected an object with a name")
            outputs.append(
                (out.get("name"), _field(out, "parameters", dict, f"outputs[{i}].") or {})
            )
    return dataplane.infer_request(
        _field(req, "id", str, ""),
        tensors,
        _field(req, "parameters", dict, "") or {},
        outputs,
    )


# -- encoding a response -------------------------------------------------------------------


def encode_response(result: InferResult) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when raw tensors follow it."""
    entries, blobs = [], []
    for out in result.outputs:
        entry: dict[str, Any] = {
            "name": out.name,
            "shape": list(out.values.shape),
            "datatype": out.datatype,
        }
        if out.raw:
            blob = dataplane.raw_bytes(out)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif out.datatype == "BYTES":
            entry["data"] = out.values.reshape(-1).tolist()
        else:
            entry["data"] = out.values.reshape(-1)
        entries.append(entry)
    head = dumps(
        {
            "model_name": result.model_name,
            "model_version": result.model_version,
            "id": result.id,
            "outputs": entries,
        }
    )
    return (b"".join([head, *blobs]), len(head)) if blobs else (head, None)


# -- endpoints -----------------------------------------------------------------------------


async def live(_request: Request) -> Response:
    """200 ``{"live": true}`` while the process serves."""
    return json_response(200, {"live": True})


async def ready(request: Request) -> Response:
    """200 ``{"ready": true}`` once every model is loaded and the stores answered at start,
    and while the project's health is not critical; else 503."""
    is_ready = await state_of(request).serving()
    return json_response(200 if is_ready else 503, {"ready": is_ready})


async def server_metadata(_request: Request) -> Response:
    return json_response(200, dataplane.server_metadata())


def _model(request: Request) -> tuple[str, str | None]:
    return request.path_params["name"], request.path_params.get("version")


@protocol_errors
async def model_ready(request: Request) -> Response:
    """200 ``{"name": ..., "ready": true}`` when the model (version) serves, 503 while not."""
    name, version = _model(request)
    is_ready = dataplane.model_ready(state_of(request), name, version)
    return json_response(200 if is_ready else 503, {"name": name, "ready": is_ready})


@protocol_errors
async def metadata(request: Request) -> Response:
    return json_response(200, await dataplane.model_metadata(state_of(request), *_model(request)))


@protocol_errors
async def infer(request: Request) -> Response:
    state = state_of(request)
    if state.auth.enabled:
        authorize(request, "predict")
    body = await read_body(request.scope, request.receive, state.project.server.max_body_size)
    name, version = _model(request)
    model = dataplane.resolve(state, name, version)  # an unknown model: 404 before any 400
    req = decode_request(body, request.headers.get(_BYTES_HEADER))
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    content, json_length = encode_response(await dataplane.infer(state, model, req, rid))
    if json_length is None:
        return Response(content, 200, media_type="application/json")
    return Response(
        content,
        200,
        headers={_BYTES_HEADER: str(json_length)},
        media_type="application/octet-stream",
    )


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
