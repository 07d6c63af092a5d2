"""KServe's own clients against a running hybridserve: run as a script, answers JSON on stdout.

    python kserve_calls.py HTTP_URL GRPC_ADDRESS ROWS_JSON

It runs in a process of its own because ``kserve`` and ``tritonclient.grpc`` each register
the same ``inference.*`` protobuf names, so the two cannot be imported into one process.
Floats go back as JSON numbers, which round-trip float64 exactly.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse


def _request(x: np.ndarray, datatype: str, binary: bool, model: str = "fraud") -> InferRequest:
    inp = InferInput("input-0", list(x.shape), datatype)
    inp.set_data_from_numpy(x.astype(np.float32 if datatype == "FP32" else np.float64), binary)
    return InferRequest(model_name=model, infer_inputs=[inp], request_id=f"{datatype}-{binary}")


def _scores(response: Any) -> dict[str, Any]:
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    return {
        "id": response.id,
        "score": outputs["score"].tolist(),
        "probabilities": outputs["probabilities"].tolist(),
        "label": outputs["label"].tolist(),
    }


async def rest(url: str, x: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        out["live"] = await client.is_server_live(url)
        out["ready"] = await client.is_server_ready(url)
        out["model_ready"] = await client.is_model_ready(url, "fraud")
        out["unknown_model_ready"] = await client.is_model_ready(url, "nope")
        async with httpx.AsyncClient(base_url=url) as http:  # the client has no metadata call
            server = ServerMetadataResponse.model_validate_json((await http.get("/v2")).content)
            model = ModelMetadataResponse.model_validate_json(
                (await http.get("/v2/models/fraud")).content
            )
        out["server_metadata"] = server.model_dump(mode="json")
        out["model_metadata"] = model.model_dump(mode="json", exclude_none=True)
        for datatype in ("FP64", "FP32"):
            for binary in (True, False):
                result = await client.infer(url, _request(x, datatype, binary), "fraud")
                out[f"infer_{datatype}_{'binary' if binary else 'json'}"] = _scores(result)
        out["errors"] = {}
        for name, req, model_name in [
            ("wrong_shape", _request(x[:, :15], "FP64", True), "fraud"),
            ("unknown_model", _request(x, "FP64", False, "nope"), "nope"),
        ]:
            try:
                await client.infer(url, req, model_name)
                out["errors"][name] = None
            except httpx.HTTPStatusError as exc:
                out["errors"][name] = [exc.response.status_code, str(exc)]
    finally:
        await client.close()
    return out


async def grpc_calls(address: str, x: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    client = InferenceGRPCClient(address, timeout=30, retries=0)
    try:
        out["live"] = await client.is_server_live()
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready("fraud")
        async with grpc.aio.insecure_channel(address) as channel:  # KServe's generated stub
            stub = GRPCInferenceServiceStub(channel)
            server = await stub.ServerMetadata(pb.ServerMetadataRequest())
            model = await stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"))
        out["server_metadata"] = {"name": server.name, "extensions": list(server.extensions)}
        out["model_metadata"] = {
            "name": model.name,
            "versions": list(model.versions),
            "platform": model.platform,
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in model.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in model.outputs],
        }
        for datatype in ("FP64", "FP32"):
            for raw in (True, False):
                result = await client.infer(_request(x, datatype, raw))
                out[f"infer_{datatype}_{'raw' if raw else 'typed'}"] = _scores(result)
        out["errors"] = {}
        for name, call in [
            ("wrong_shape", lambda: client.infer(_request(x[:, :15], "FP64", True))),
            ("unknown_model", lambda: client.infer(_request(x, "FP64", True, "nope"))),
            ("unknown_model_ready", lambda: client.is_model_ready("nope")),
        ]:
            try:
                await call()
                out["errors"][name] = None
            except grpc.aio.AioRpcError as exc:
                out["errors"][name] = [exc.code().name, exc.details()]
    finally:
        await client.close()
    return out


async def main(url: str, address: str, rows: str) -> dict[str, Any]:
    x = np.asarray(json.loads(rows), dtype=np.float64)
    return {"rest": await rest(url, x), "grpc": await grpc_calls(address, x)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
