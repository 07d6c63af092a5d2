"""The Open Inference Protocol over gRPC, beside REST on the same event loop and state.

``hybridserve serve --grpc-port N`` serves ``inference.GRPCInferenceService`` (ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) from the same process as
the HTTP server, so both share the loaded runtimes, their micro-batchers and the API keys. This
module only translates messages: the rules are :mod:`hybridserve.server.dataplane`'s, as for
REST, and a :class:`~hybridserve.errors.HybridServeError` becomes the gRPC status of its HTTP
status (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND,
503 UNAVAILABLE, 504 DEADLINE_EXCEEDED).

ModelInfer needs the ``predict`` scope when keys are configured: the key comes in the
``x-api-key`` or ``authorization: Bearer KEY`` metadata. Inputs come as typed ``contents`` or
as ``raw_input_contents``; the answer uses the same form (raw in, raw out, as KServe does;
tritonclient sends raw), unless the ``binary_data_output`` parameter says otherwise. The
request's gRPC deadline bounds the model call as the ``timeout`` parameter does.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridserve._optional import require
from hybridserve.errors import ConfigError, HybridServeError, InvalidInput
from hybridserve.server import dataplane
from hybridserve.server.auth import key_from
from hybridserve.server.dataplane import InferRequest, InferResult
from hybridserve.server.state import ServerState

grpc: Any = require("grpc", "grpc")
require("google.protobuf", "grpc")

from google.protobuf.message import DecodeError  # noqa: E402

from hybridserve.server.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402

log = logging.getLogger("hybridserve.server")

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""HTTP status of an error -> its gRPC status (anything else is INTERNAL)."""

_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Datatype -> the ``InferTensorContents`` field of its values (FP16 and BF16 have none)."""

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
Handler = Callable[[Any, Any], Awaitable[Any]]


def status_code(exc: HybridServeError) -> Any:
    """The gRPC status for an error."""
    return _CODES.get(exc.status, grpc.StatusCode.INTERNAL)


def _protocol_errors(method: Handler, request_type: Any) -> Handler:
    """Parse the request, call ``method``; end the call with an error's status and message,
    as REST answers ``{"error": ...}`` (a malformed message is INVALID_ARGUMENT, not gRPC's
    UNKNOWN)."""

    async def handler(data: bytes, context: Any) -> Any:
        try:
            try:
                request = request_type.FromString(data)
            except DecodeError as exc:
                raise InvalidInput(f"malformed {request_type.DESCRIPTOR.name}: {exc}") from None
            return await method(request, context)
        except HybridServeError as exc:
            code, message = status_code(exc), exc.message
        except Exception:
            log.exception("gRPC %s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, "internal error"
        await context.abort(code, message)  # raises: the call ends here

    return handler


# -- messages ------------------------------------------------------------------------------


def _parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """An ``InferParameter`` map as plain values."""
    out = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        out[key] = None if choice is None else getattr(param, choice)
    return out


def _values(head: dataplane.Header, contents: Any) -> npt.NDArray[Any]:
    """A tensor's typed contents, from the field of its datatype."""
    field = _CONTENTS.get(head.datatype)
    if field is None:
        raise InvalidInput(f"{head.where}: {head.datatype} values come only in raw_input_contents")
    values = getattr(contents, field)
    if not values:
        other = next((f for f in sorted(set(_CONTENTS.values())) if getattr(contents, f)), None)
        if other is not None:
            raise InvalidInput(
                f"{head.where}: {head.datatype} values belong in contents.{field}, not {other}"
            )
    return np.asarray(values)


def decode_request(msg: Any, time_remaining: float | None = None) -> InferRequest:
    """A ``ModelInferRequest`` as the core's request; the call's deadline caps its timeout."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents: {len(raw)} entries for {len(msg.inputs)} inputs (one each)"
        )
    tensors = []
    for i, spec in enumerate(msg.inputs):
        head = dataplane.header(i, spec.name, spec.datatype, list(spec.shape))
        if raw and spec.HasField("contents"):
            raise InvalidInput(f"{head.where}: contents given beside raw_input_contents")
        x = (
            dataplane.from_raw(head, raw[i])
            if raw
            else dataplane.from_data(head, _values(head, spec.contents))
        )
        tensors.append((head.name, x))
    outputs = [(o.name, _parameters(o.parameters)) for o in msg.outputs] or None
    req = dataplane.infer_request(
        msg.id or None, tensors, _parameters(msg.parameters), outputs, raw_output=bool(raw)
    )
    if time_remaining is not None and (req.timeout is None or time_remaining < req.timeout):
        req = dataclasses.replace(req, timeout=max(time_remaining, 0.0))
    return req


def encode_response(result: InferResult) -> Any:
    """The core's answer as a ``ModelInferResponse``: every output raw if any asks for it (the
    protocol allows raw contents only for all outputs or none)."""
    resp = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id
    )
    raw = any(out.raw for out in result.outputs)
    for out in result.outputs:
        tensor = resp.outputs.add(
            name=out.name, datatype=out.datatype, shape=list(out.values.shape)
        )
        if raw:
            resp.raw_output_contents.append(dataplane.raw_bytes(out))
        elif out.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(str(v).encode() for v in out.values.ravel())
        else:
            getattr(tensor.contents, _CONTENTS[out.datatype]).extend(out.values.ravel().tolist())
    return resp


def _tensor_metadata(tensors: list[dict[str, Any]]) -> list[Any]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=t["name"], datatype=t["datatype"], shape=t["shape"]
        )
        for t in tensors
    ]


# -- the service ---------------------------------------------------------------------------


class InferenceService:
    """One method per RPC of ``SERVICE``, taking and returning its messages."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def ServerLive(self, _request: Any, _context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, _request: Any, _context: Any) -> Any:
        return pb.ServerReadyResponse(ready=await self.state.serving())

    async def ModelReady(self, request: Any, _context: Any) -> Any:
        return pb.ModelReadyResponse(
            ready=dataplane.model_ready(self.state, request.name, request.version)
        )

    async def ServerMetadata(self, _request: Any, _context: Any) -> Any:
        return pb.ServerMetadataResponse(**dataplane.server_metadata())

    async def ModelMetadata(self, request: Any, _context: Any) -> Any:
        meta = await dataplane.model_metadata(self.state, request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=_tensor_metadata(meta["inputs"]),
            outputs=_tensor_metadata(meta["outputs"]),
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        state = self.state
        metadata = dict(context.invocation_metadata() or ())
        if state.auth.enabled:
            key = key_from(_raw(metadata.get("x-api-key")), _raw(metadata.get("authorization")))
            state.auth.check(key, "predict")
        model = dataplane.resolve(state, request.model_name, request.model_version)
        req = decode_request(request, context.time_remaining())
        rid = str(metadata.get("x-request-id") or uuid.uuid4().hex)
        return encode_response(await dataplane.infer(state, model, req, rid))

    def handlers(self) -> dict[str, Any]:
        """The service's method handlers, named and typed as the .proto declares them."""
        handlers = {}
        for method in SERVICE.methods:
            request_type = getattr(pb, method.input_type.name)
            response_type = getattr(pb, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _protocol_errors(getattr(self, method.name), request_type),
                response_serializer=response_type.SerializeToString,
            )
        return handlers


class GrpcServer:
    """The gRPC server of one serving process, on its event loop."""

    def __init__(self, state: ServerState, address: str) -> None:
        self.state = state
        self.address = address
        self._server: Any = None

    async def start(self) -> int:
        """Bind and start serving; the bound port (useful with port 0)."""
        limit = self.state.project.server.max_body_size
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
            ]
        )
        handlers = InferenceService(self.state).handlers()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
        )
        server.add_registered_method_handlers(SERVICE.full_name, handlers)
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise ConfigError(f"gRPC: cannot bind {self.address}: {exc}") from None
        await server.start()
        self._server = server
        log.info("gRPC (Open Inference Protocol) on %s", self.address)
        return int(port)

    async def stop(self, grace: float) -> None:
        """Refuse new calls and let calls in flight finish within ``grace`` seconds."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


def _raw(value: Any) -> bytes | None:
    """A metadata value as bytes (gRPC gives ASCII text values as ``str``)."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")
