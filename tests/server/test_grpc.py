"""The Open Inference Protocol over gRPC, in process: the adapter's messages, forms and status
codes, through this package's own stubs (tritonclient's and KServe's are in test_v2_clients)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import hybridserve
from conftest_server import free_port
from hybridserve import __version__
from hybridserve.server.grpc import grpc_predict_v2_pb2 as pb
from hybridserve.server.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

Stub = Any
N = 30


@pytest.fixture
async def stub(serve: Any) -> AsyncIterator[Callable[..., Any]]:
    """A factory: serve a project with gRPC on a free port; a stub on a channel to it."""
    channels: list[grpc.aio.Channel] = []

    async def start(project: Any) -> tuple[Any, Stub]:
        address = f"127.0.0.1:{free_port()}"
        app, _ = await serve(project, grpc_address=address)
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        return app, pb_grpc.GRPCInferenceServiceStub(channel)

    yield start
    for channel in channels:
        await channel.close()


def _request(x: np.ndarray, datatype: str = "FP64", raw: bool = True, **fields: Any) -> Any:
    req = pb.ModelInferRequest(model_name="fraud", **fields)
    tensor = req.inputs.add(name="input-0", datatype=datatype, shape=list(x.shape))
    if raw:
        req.raw_input_contents.append(x.astype("<f8" if datatype == "FP64" else "<f4").tobytes())
    elif datatype == "FP64":
        tensor.contents.fp64_contents.extend(x.ravel().tolist())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return req


def _outputs(resp: Any) -> dict[str, np.ndarray]:
    """Each output as an array, from raw or typed contents."""
    out = {}
    for i, t in enumerate(resp.outputs):
        if resp.raw_output_contents:
            dtype = {"FP64": "<f8", "INT64": "<i8"}[t.datatype]
            values = np.frombuffer(resp.raw_output_contents[i], dtype)
        else:
            field = {"FP64": "fp64_contents", "INT64": "int64_contents"}[t.datatype]
            values = np.asarray(getattr(t.contents, field))
        out[t.name] = values.reshape(list(t.shape))
    return out


def _rows(n: int = 3) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 5, size=(n, N))


async def test_health_and_metadata(make_project, stub) -> None:  # type: ignore[no-untyped-def]
    _, s = await stub(make_project())
    assert (await s.ServerLive(pb.ServerLiveRequest())).live is True
    assert (await s.ServerReady(pb.ServerReadyRequest())).ready is True
    assert (await s.ModelReady(pb.ModelReadyRequest(name="fraud"))).ready is True
    assert (await s.ModelReady(pb.ModelReadyRequest(name="fraud", version="1"))).ready is True
    meta = await s.ServerMetadata(pb.ServerMetadataRequest())
    assert (meta.name, meta.version, list(meta.extensions)) == (
        "hybridserve",
        __version__,
        ["binary_tensor_data"],
    )
    model = await s.ModelMetadata(pb.ModelMetadataRequest(name="fraud"))
    assert (model.name, list(model.versions), model.platform) == ("fraud", ["1"], "sklearn")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("input-0", "FP64", [-1, N])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("score", "FP64", [-1]),
        ("probabilities", "FP64", [-1, 2]),
        ("label", "INT64", [-1]),
    ]
    for call, req in [
        (s.ModelReady, pb.ModelReadyRequest(name="nope")),
        (s.ModelMetadata, pb.ModelMetadataRequest(name="fraud", version="2")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
        assert "is not loaded" in (err.value.details() or "")


async def test_infer_raw_and_typed_contents(make_project, stub) -> None:  # type: ignore[no-untyped-def]
    app, s = await stub(make_project())
    x = _rows()
    runtime = app.state.models.get("fraud").scorer.runtime
    want = runtime.predict(x, probabilities=True)
    x32 = x.astype(np.float32).astype(np.float64)
    want32 = runtime.predict(x32, probabilities=True)

    resp = await s.ModelInfer(_request(x, id="r1"))
    assert (resp.model_name, resp.model_version, resp.id) == ("fraud", "1", "r1")
    assert len(resp.raw_output_contents) == 3  # raw in, raw out
    assert not any(t.HasField("contents") for t in resp.outputs)
    got = _outputs(resp)
    np.testing.assert_array_equal(got["score"], want.scores)
    np.testing.assert_array_equal(got["probabilities"], want.probabilities)
    assert got["label"].tolist() == runtime.model.predict(x).tolist()

    for datatype, raw, expected in [
        ("FP64", False, want),
        ("FP32", True, want32),
        ("FP32", False, want32),
    ]:
        resp = await s.ModelInfer(_request(x, datatype, raw))
        assert bool(resp.raw_output_contents) is raw, (datatype, raw)
        np.testing.assert_array_equal(_outputs(resp)["score"], expected.scores)

    # One typed tensor per feature, one requested output; the timeout parameter is accepted.
    names = runtime.signature.names
    req = pb.ModelInferRequest(model_name="fraud", model_version="1")
    for j, name in enumerate(names):
        t = req.inputs.add(name=name, datatype="FP64", shape=[len(x), 1])
        t.contents.fp64_contents.extend(x[:, j].tolist())
    req.outputs.add(name="score")
    req.parameters["timeout"].int64_param = 10_000_000
    resp = await s.ModelInfer(req, metadata=(("x-request-id", "abc"),))
    assert resp.id == "abc" and [t.name for t in resp.outputs] == ["score"]
    np.testing.assert_array_equal(_outputs(resp)["score"], want.scores)


def _bad(**changes: Any) -> Any:
    x = np.full((1, N), 0.5)
    req = _request(x)
    for key, value in changes.items():
        if key == "raw":
            del req.raw_input_contents[:]
            req.raw_input_contents.extend(value)
        elif key == "shape":
            del req.inputs[0].shape[:]
            req.inputs[0].shape.extend(value)
        elif key == "output":
            req.outputs.add(name=value)
        else:
            setattr(req.inputs[0] if key == "datatype" else req, key, value)
    return req


def _typed(field: str, values: list[Any], datatype: str = "FP64") -> Any:
    req = pb.ModelInferRequest(model_name="fraud")
    t = req.inputs.add(name="x", datatype=datatype, shape=[1, N])
    getattr(t.contents, field).extend(values)
    return req


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (_bad(model_name="nope"), "NOT_FOUND", "model 'nope' is not loaded"),
        (_bad(model_version="3"), "NOT_FOUND", "version 3 is not loaded"),
        (_bad(model_version="x"), "INVALID_ARGUMENT", "expected a version number"),
        (_bad(shape=[1, 15]), "INVALID_ARGUMENT", "but 15 FP64 values take 120"),
        (_bad(shape=[2, N]), "INVALID_ARGUMENT", "240 bytes of raw data"),
        (_bad(shape=[N]), "INVALID_ARGUMENT", "expected shape [-1, 30]"),
        (_bad(shape=[1, -N]), "INVALID_ARGUMENT", "non-negative integers"),
        (_bad(datatype="BYTES"), "INVALID_ARGUMENT", "BYTES tensors"),
        (_bad(datatype="STRING"), "INVALID_ARGUMENT", "unknown datatype 'STRING'"),
        (_bad(raw=[]), "INVALID_ARGUMENT", "needs 30 values, data has 0"),
        (_bad(raw=[b"", b""]), "INVALID_ARGUMENT", "2 entries for 1 inputs"),
        (_bad(raw=[np.full(N, np.nan).tobytes()]), "INVALID_ARGUMENT", "NaN or infinite"),
        (_bad(output="odds"), "INVALID_ARGUMENT", "unknown output 'odds'"),
        (_typed("fp32_contents", [0.5] * N), "INVALID_ARGUMENT", "belong in contents.fp64"),
        (_typed("fp64_contents", [0.5] * 29), "INVALID_ARGUMENT", "needs 30 values"),
        (_typed("fp64_contents", [0.5] * N, "FP16"), "INVALID_ARGUMENT", "only in raw_input"),
        (pb.ModelInferRequest(model_name="fraud"), "INVALID_ARGUMENT", "non-empty list"),
    ],
)
async def test_bad_requests_get_the_right_status(
    make_project, stub, request_: Any, code: str, needle: str
) -> None:  # type: ignore[no-untyped-def]
    _, s = await stub(make_project())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ModelInfer(request_)
    assert err.value.code() == getattr(grpc.StatusCode, code), err.value.details()
    assert needle in (err.value.details() or ""), err.value.details()


async def test_timeouts_and_deadlines(make_project, stub) -> None:  # type: ignore[no-untyped-def]
    _, s = await stub(make_project())
    req = _bad()
    req.parameters["timeout"].int64_param = 1  # a microsecond: no model call fits
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    req.parameters["timeout"].string_param = "soon"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.timeout" in (err.value.details() or "")


async def test_infer_needs_the_predict_scope(make_project, stub) -> None:  # type: ignore[no-untyped-def]
    keys = [
        {"name": "app", "key": "k-predict", "scopes": ["predict"]},
        {"name": "ops", "key": "k-admin", "scopes": ["admin"]},
    ]
    _, s = await stub(make_project({"server": {"api_keys": keys}}))
    assert (await s.ModelReady(pb.ModelReadyRequest(name="fraud"))).ready is True
    assert (await s.ModelMetadata(pb.ModelMetadataRequest(name="fraud"))).name == "fraud"
    for metadata, code in [
        ((), "UNAUTHENTICATED"),
        ((("x-api-key", "wrong"),), "UNAUTHENTICATED"),
        ((("x-api-key", "k-admin"),), "PERMISSION_DENIED"),
        ((("authorization", "Bearer k-admin"),), "PERMISSION_DENIED"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.ModelInfer(_bad(), metadata=metadata)
        assert err.value.code() == getattr(grpc.StatusCode, code), metadata
    for metadata in [(("x-api-key", "k-predict"),), (("authorization", "Bearer k-predict"),)]:
        resp = await s.ModelInfer(_bad(), metadata=metadata)
        assert resp.model_name == "fraud"


async def test_requests_share_the_micro_batcher_with_rest(make_project, stub) -> None:  # type: ignore[no-untyped-def]
    app, s = await stub(make_project())
    batcher = app.state.models.get("fraud").batcher
    calls: list[int] = []
    real = batcher.predict

    async def spy(matrix: np.ndarray, *args: Any) -> Any:
        calls.append(len(matrix))
        return await real(matrix, *args)

    batcher.predict = spy
    await s.ModelInfer(_request(_rows(2)))
    assert calls == [2]


def _serve(project_file: Any, *args: str, pythonpath: str = "") -> subprocess.Popen[str]:
    """``hybridserve serve`` as a user runs it, from this checkout's package."""
    src = str(Path(hybridserve.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, src]))}
    argv = [sys.executable, "-m", "hybridserve", "serve", "-p", str(project_file), *args]
    pipe = subprocess.PIPE
    return subprocess.Popen(argv, stdout=pipe, stderr=pipe, text=True, env=env)


@pytest.mark.slow
def test_serve_command_serves_grpc(make_project) -> None:  # type: ignore[no-untyped-def]
    project = make_project()
    port, grpc_port = free_port(), free_port()
    proc = _serve(project.source_file, "--port", str(port), "--grpc-port", str(grpc_port))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                try:
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "the gRPC server did not become ready"
                time.sleep(0.2)
            resp = stub.ModelInfer(_request(_rows(2)), timeout=30)
            assert resp.model_name == "fraud" and len(resp.raw_output_contents) == 3
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_serve_command_refuses_bad_grpc_options(make_project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = make_project()
    proc = _serve(project.source_file, "--port", "8123", "--grpc-port", "8123")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--grpc-port 8123: the HTTP server already uses it" in err
    # Without grpcio, the command names the extra to install, in one line.
    (tmp_path / "nogrpc" / "grpc").mkdir(parents=True)
    (tmp_path / "nogrpc" / "grpc" / "__init__.py").write_text("raise ImportError('no grpc')\n")
    proc = _serve(project.source_file, "--grpc-port", "0", pythonpath=str(tmp_path / "nogrpc"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "pip install 'hybridserve[grpc]'" in err and len(err.strip().splitlines()) == 1, err


async def test_a_malformed_message_is_invalid_argument(make_project, stub) -> None:  # type: ignore[no-untyped-def]
    app, _ = await stub(make_project())
    address = app.grpc_address
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest" in (err.value.details() or "")
