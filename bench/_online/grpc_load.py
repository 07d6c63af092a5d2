"""The gRPC load generator: N concurrent callers of ``ModelInfer`` on one channel (grpc.aio).

Usage: ``python grpc_load.py ADDRESS ROWS.npy MODEL CONCURRENCY SECONDS``, run pinned to the
client core. Each request carries one row of ``ROWS.npy`` as a raw FP64 ``[1, n]`` tensor
(what tritonclient sends) and asks for ``score``; rows rotate over the file. Like wrk, it is a
closed loop: each caller sends its next request when its answer arrives. It prints one
``GRPC_RESULT {json}`` line with the same fields as ``post.lua``'s ``WRK_RESULT``. The server
computes every answer (the protocol has no stored predictions).

The callers share one channel, as a gRPC client does (HTTP/2 multiplexes the calls on one
connection); wrk opens one connection per caller.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np

from hybridserve.server.grpc import grpc_predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def requests(rows: np.ndarray, model: str) -> list[bytes]:
    """One serialized ``ModelInferRequest`` per row (built once: the client's cost stays low)."""
    out = []
    for row in rows:
        req = pb.ModelInferRequest(model_name=model)
        req.inputs.add(name="input-0", datatype="FP64", shape=[1, len(row)])
        req.outputs.add(name="score")
        req.raw_input_contents.append(np.ascontiguousarray(row, dtype="<f8").tobytes())
        out.append(req.SerializeToString())
    return out


def check(resp: Any) -> str:
    """The answer's kind: ``model`` for a score, else what was wrong."""
    if len(resp.raw_output_contents) == 1 and len(resp.raw_output_contents[0]) == 8:
        return "model"
    return "bad_answer"


async def run(
    address: str, bodies: list[bytes], concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    sources: Counter[str] = Counter()
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
        )
        await call(bodies[0], timeout=30)  # connected before the clock starts
        start = time.perf_counter()
        stop = start + seconds

        async def caller(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    resp = await call(bodies[i % len(bodies)], timeout=10)
                    sources[check(resp)] += 1
                except grpc.aio.AioRpcError as exc:
                    errors += 1
                    sources[f"grpc_{exc.code().name}"] += 1
                latencies.append(time.perf_counter() - t0)
                i += concurrency

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.sort(np.asarray(latencies)) * 1e6 if latencies else np.full(1, np.nan)

    def pct(q: float) -> float:
        return float(lat[min(len(lat) - 1, int(q * (len(lat) - 1)))])

    return {
        "requests": len(latencies),
        "duration_us": elapsed * 1e6,
        "p50_us": pct(0.5),
        "p90_us": pct(0.9),
        "p99_us": pct(0.99),
        "max_us": float(lat[-1]),
        "errors": errors,
        "not_ok": errors + sources["bad_answer"],
        "sources": dict(sources),
    }


def probe(address: str, rows: np.ndarray, model: str) -> tuple[int, Any]:
    """One call; ``(200, answer)`` on success, else ``(0, the gRPC status and message)``."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
        )
        try:
            resp = call(requests(rows[:1], model)[0], timeout=30)
        except grpc.RpcError as exc:
            return 0, f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    score = float(np.frombuffer(resp.raw_output_contents[0], "<f8")[0])
    return 200, {"model_name": resp.model_name, "score": score, "source": check(resp)}


def main(argv: list[str]) -> None:
    address, rows_path, model = argv[0], argv[1], argv[2]
    concurrency, seconds = int(argv[3]), float(argv[4])
    bodies = requests(np.load(rows_path), model)
    result = asyncio.run(run(address, bodies, concurrency, seconds))
    print("GRPC_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
