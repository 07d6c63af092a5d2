"""Clients this project did not write, against one running server over REST and gRPC:
tritonclient (HTTP and gRPC) in this process, KServe's REST and gRPC clients in a child
process (``kserve_calls.py``: kserve and tritonclient.grpc cannot share a process). Every
score equals the Scorer's (what ``hybridserve score`` prints) to the last digit."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest_server import free_port
from hybridserve.config import Project
from hybridserve.features.online import merge_request_features
from hybridserve.services import Services

CARDS = [f"card_{i:06d}" for i in range(1, 6)]
HERE = Path(__file__).resolve().parent


def _scorer_view(project: Project) -> tuple[np.ndarray, list[float], Any]:
    """The cards' feature matrix, the Scorer's scores for them, and the runtime."""

    async def go() -> tuple[np.ndarray, list[float], Any]:
        services = Services.open(project)
        try:
            scored = await services.score_entities("fraud", CARDS)
            rows = await services.features.read_route("fraud", CARDS)
            scorer = services.scorer("fraud")
            prepared = scorer.prepare(CARDS, [merge_request_features(r, None, 0.0) for r in rows])
            assert prepared.rows == list(range(len(CARDS))), prepared.errors
            scores = [r.score for r in scored.records]
            return prepared.matrix, scores, scorer.runtime
        finally:
            await services.close()

    return asyncio.run(go())


@pytest.mark.slow
def test_every_client_scores_as_the_scorer(make_project, live_server) -> None:  # type: ignore[no-untyped-def]
    project = make_project()
    x, scorer_scores, runtime = _scorer_view(project)
    expected = runtime.predict(x, probabilities=True)
    np.testing.assert_array_equal(expected.scores, scorer_scores)  # the Scorer's, exactly
    x32 = x.astype(np.float32).astype(np.float64)
    expected32 = runtime.predict(x32, probabilities=True)
    grpc_address = f"127.0.0.1:{free_port()}"
    url = live_server(project, grpc_address=grpc_address)

    # -- tritonclient HTTP: binary and JSON tensors, FP64 and FP32
    http = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=30.0)
    try:
        assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("fraud")
        for datatype, want in [("FP64", expected), ("FP32", expected32)]:
            for binary in (True, False):
                inp = httpclient.InferInput("input-0", list(x.shape), datatype)
                inp.set_data_from_numpy(x.astype(datatype.lower().replace("fp", "float")), binary)
                outs = [httpclient.InferRequestedOutput(n, binary) for n in ("score", "label")]
                result = http.infer("fraud", [inp], outputs=outs)
                np.testing.assert_array_equal(result.as_numpy("score"), want.scores)
    finally:
        http.close()

    # -- tritonclient gRPC: raw tensors (its only form), FP64 and FP32
    client = grpcclient.InferenceServerClient(grpc_address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fraud") and client.is_model_ready("fraud", "1")
        meta = client.get_model_metadata("fraud", as_json=True)
        assert meta["name"] == "fraud" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "30"]}]
        assert client.get_server_metadata().name == "hybridserve"
        for datatype, want in [("FP64", expected), ("FP32", expected32)]:
            inp = grpcclient.InferInput("input-0", list(x.shape), datatype)
            inp.set_data_from_numpy(x.astype(datatype.lower().replace("fp", "float")))
            result = client.infer("fraud", [inp], request_id="g1", client_timeout=30)
            assert result.get_response().id == "g1"
            np.testing.assert_array_equal(result.as_numpy("score"), want.scores)
            np.testing.assert_array_equal(result.as_numpy("probabilities"), want.probabilities)
            assert result.as_numpy("label").tolist() == runtime.model.predict(x).tolist()
        # One tensor per feature, one requested output, Triton's timeout parameter.
        cols = []
        for j, name in enumerate(runtime.signature.names):
            col = grpcclient.InferInput(name, [len(x), 1], "FP64")
            col.set_data_from_numpy(x[:, [j]].copy())
            cols.append(col)
        out = grpcclient.InferRequestedOutput("score")
        result = client.infer("fraud", cols, model_version="1", outputs=[out], timeout=10**7)
        np.testing.assert_array_equal(result.as_numpy("score"), expected.scores)
        bad = grpcclient.InferInput("input-0", [len(x), 15], "FP64")
        bad.set_data_from_numpy(x[:, :15].copy())
        for call, status, needle in [
            (lambda: client.infer("fraud", [bad]), "INVALID_ARGUMENT", "expected shape [-1, 30]"),
            (lambda: client.infer("nope", [inp]), "NOT_FOUND", "model 'nope' is not loaded"),
            (lambda: client.is_model_ready("nope"), "NOT_FOUND", "not loaded"),
        ]:
            with pytest.raises(InferenceServerException, match=re.escape(needle)) as err:
                call()
            assert err.value.status() == f"StatusCode.{status}"
    finally:
        client.close()

    # -- KServe's InferenceRESTClient and InferenceGRPCClient, in a process of their own
    done = subprocess.run(
        [sys.executable, str(HERE / "kserve_calls.py"), url, grpc_address, json.dumps(x.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    rest, grpc = got["rest"], got["grpc"]
    assert (rest["live"], rest["ready"], rest["model_ready"]) == (True, True, True)
    assert rest["unknown_model_ready"] is False
    assert (grpc["live"], grpc["ready"], grpc["model_ready"]) == (True, True, True)
    assert rest["server_metadata"]["name"] == grpc["server_metadata"]["name"] == "hybridserve"
    meta = rest["model_metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == ("fraud", ["1"], "sklearn")
    assert meta["inputs"][0]["shape"] == [-1, 30]
    assert grpc["model_metadata"]["inputs"] == [["input-0", "FP64", [-1, 30]]]
    assert [o[0] for o in grpc["model_metadata"]["outputs"]] == ["score", "probabilities", "label"]
    for transport, forms in [(rest, ("binary", "json")), (grpc, ("raw", "typed"))]:
        for datatype, want in [("FP64", expected), ("FP32", expected32)]:
            for form in forms:
                answer = transport[f"infer_{datatype}_{form}"]
                assert answer["id"] == f"{datatype}-{form in ('binary', 'raw')}"
                np.testing.assert_array_equal(answer["score"], want.scores)
                np.testing.assert_array_equal(answer["probabilities"], want.probabilities)
                assert answer["label"] == runtime.model.predict(x).tolist()
    assert rest["errors"]["wrong_shape"][0] == 400
    assert "expected shape [-1, 30]" in rest["errors"]["wrong_shape"][1]
    assert rest["errors"]["unknown_model"][0] == 404
    assert grpc["errors"]["wrong_shape"][0] == "INVALID_ARGUMENT"
    assert grpc["errors"]["unknown_model"][0] == "NOT_FOUND"
    assert grpc["errors"]["unknown_model_ready"][0] == "NOT_FOUND"
