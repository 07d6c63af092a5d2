"""The Open Inference Protocol (KServe V2 REST): in process, and from tritonclient against a
real server."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from hybridserve.features.online import merge_request_features
from hybridserve.registry import Registry

CARDS = ["card_000001", "card_000002", "card_000003"]


async def _features(app: Any, cards: list[str]) -> np.ndarray:
    """The matrix the hybrid API scores for ``cards``, from the online store."""
    rows = await app.state.services.features.read_route("fraud", cards)
    scorer = app.state.models.get("fraud").scorer
    prepared = scorer.prepare(cards, [merge_request_features(r, None, 0.0) for r in rows])
    assert prepared.rows == list(range(len(cards))), prepared.errors
    return prepared.matrix


def _tensor(name: str, x: np.ndarray, datatype: str = "FP64") -> dict[str, Any]:
    return {"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}


def _output(body: dict[str, Any], name: str) -> np.ndarray:
    (out,) = [o for o in body["outputs"] if o["name"] == name]
    return np.asarray(out["data"]).reshape(out["shape"])


async def test_server_metadata_and_health(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    from hybridserve import __version__

    _, client = await serve(make_project())
    r = await client.get("/v2")
    assert r.status_code == 200
    assert r.json() == {
        "name": "hybridserve",
        "version": __version__,
        "extensions": ["binary_tensor_data"],
    }
    # The status code is the answer for Triton's clients; KServe's parses the JSON body.
    for path, body in [("live", {"live": True}), ("ready", {"ready": True})]:
        r = await client.get(f"/v2/health/{path}")
        assert r.status_code == 200 and r.json() == body, path
        assert r.headers["content-type"] == "application/json"


async def test_health_while_not_ready(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    app, client = await serve(make_project())
    app.state.ready = False
    r = await client.get("/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False}
    r = await client.get("/v2/models/fraud/ready")
    assert r.status_code == 503 and r.json() == {"name": "fraud", "ready": False}
    r = await client.get("/v2/health/live")
    assert r.status_code == 200 and r.json() == {"live": True}


async def test_model_readiness_is_the_status_code(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project())
    r = await client.get("/v2/models/fraud/versions/1/ready")
    assert r.json() == {"name": "fraud", "ready": True}
    for path, status in [
        ("/v2/models/fraud/ready", 200),
        ("/v2/models/fraud/versions/1/ready", 200),
        ("/v2/models/fraud_rules/ready", 200),
        ("/v2/models/fraud/versions/9/ready", 404),
        ("/v2/models/nope/ready", 404),
        ("/v2/models/fraud/versions/latest/ready", 400),
    ]:
        assert (await client.get(path)).status_code == status, path


async def test_model_metadata(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    app, client = await serve(make_project())
    names = app.state.models.get("fraud").scorer.runtime.signature.names
    r = await client.get("/v2/models/fraud")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "name": "fraud",
        "versions": ["1"],
        "platform": "sklearn",
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": [-1, 30],
                "parameters": {"feature_names": ",".join(names)},
            }
        ],
        "outputs": [
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
    }
    assert (await client.get("/v2/models/fraud/versions/1")).json() == r.json()
    rules = (await client.get("/v2/models/fraud_rules")).json()
    assert rules["inputs"][0]["shape"] == [-1, 5] and rules["versions"] == ["1"]
    r = await client.get("/v2/models/fraud/versions/2")
    assert r.status_code == 404 and r.json() == {
        "error": "model 'fraud' version 2 is not loaded (loaded: 1)"
    }


async def test_infer_matches_hybrid_api_and_the_model(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    app, client = await serve(make_project())
    x = await _features(app, CARDS)
    hybrid = await client.post("/v1/predict/fraud", json={"entities": CARDS})
    hybrid_scores = [p["score"] for p in hybrid.json()["predictions"]]
    estimator = app.state.models.get("fraud").scorer.runtime.model
    proba = estimator.predict_proba(x)

    flat = await client.post(
        "/v2/models/fraud/infer", json={"id": "42", "inputs": [_tensor("x", x)]}
    )
    assert flat.status_code == 200, flat.text
    body = flat.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("fraud", "1", "42")
    assert [o["name"] for o in body["outputs"]] == ["score", "probabilities", "label"]
    assert body["outputs"][0] == {
        "name": "score",
        "shape": [3],
        "datatype": "FP64",
        "data": body["outputs"][0]["data"],
    }
    np.testing.assert_allclose(_output(body, "score"), hybrid_scores, rtol=1e-12)
    np.testing.assert_allclose(_output(body, "score"), proba[:, 1], rtol=1e-12)
    np.testing.assert_allclose(_output(body, "probabilities"), proba, rtol=1e-12)
    assert _output(body, "label").tolist() == estimator.predict(x).tolist()

    # Nested data, and one tensor per feature (in any order, [-1] or [-1, 1]), agree.
    nested = {"name": "input-0", "shape": [3, 30], "datatype": "FP32", "data": x.tolist()}
    names = app.state.models.get("fraud").scorer.runtime.signature.names
    columns = [
        _tensor(n, x[:, [j]] if j % 2 else x[:, j]) for j, n in reversed(list(enumerate(names)))
    ]
    for inputs in ([nested], columns):
        r = await client.post("/v2/models/fraud/versions/1/infer", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(_output(r.json(), "score"), proba[:, 1], rtol=1e-12)


async def test_requested_outputs_and_request_id(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    app, client = await serve(make_project())
    x = await _features(app, CARDS[:2])
    rules_names = app.state.models.get("fraud", "fallback1").scorer.runtime.signature.names
    fraud_names = app.state.models.get("fraud").scorer.runtime.signature.names
    xr = x[:, [fraud_names.index(n) for n in rules_names]]
    r = await client.post(
        "/v2/models/fraud_rules/infer",
        json={
            "inputs": [_tensor("input-0", xr)],
            "outputs": [{"name": "label"}, {"name": "probabilities"}],
        },
        headers={"x-request-id": "abc"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "fraud_rules"
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("label", "INT64", [2]),
        ("probabilities", "FP64", [2, 2]),
    ]
    estimator = app.state.models.get("fraud", "fallback1").scorer.runtime.model
    assert _output(body, "label").tolist() == estimator.predict(xr).tolist()
    np.testing.assert_allclose(_output(body, "probabilities"), estimator.predict_proba(xr))


async def test_binary_tensor_data(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    app, client = await serve(make_project())
    x = await _features(app, CARDS)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [3, 30],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 3 * 30 * 4},
                }
            ],
            "outputs": [{"name": "score", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    )
    r = await client.post(
        "/v2/models/fraud/infer",
        content=head + x.astype("<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    body = orjson.loads(r.content[:n])
    score, label = body["outputs"]
    assert score == {
        "name": "score",
        "shape": [3],
        "datatype": "FP64",
        "parameters": {"binary_data_size": 24},
    }
    assert len(label["data"]) == 3
    proba = app.state.models.get("fraud").scorer.runtime.model.predict_proba(
        x.astype(np.float32).astype(np.float64)
    )
    np.testing.assert_allclose(np.frombuffer(r.content[n:], "<f8"), proba[:, 1], rtol=1e-12)


def _body(**changes: Any) -> bytes:
    req: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [0.5] * 30}]
    }
    req.update(changes)
    return orjson.dumps(req)


def _input(**changes: Any) -> bytes:
    tensor = {"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [0.5] * 30, **changes}
    return orjson.dumps({"inputs": [tensor]})


def _columns(*names: str) -> bytes:
    tensors = [{"name": n, "shape": [1], "datatype": "FP64", "data": [1]} for n in names]
    return orjson.dumps({"inputs": tensors})


_NAN_LITERAL = b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[NaN]}]}'


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("nope", _body(), 404, "model 'nope' is not loaded"),
        ("fraud/versions/3", _body(), 404, "version 3 is not loaded"),
        ("fraud/versions/x", _body(), 400, "expected a version number"),
        ("fraud", b"{not json", 400, "malformed JSON"),
        ("fraud", b"[1]", 400, "expected a JSON object"),
        ("fraud", b'{"inputs": []}', 400, "inputs: expected a non-empty list"),
        ("fraud", _input(shape=[2, 30]), 400, "needs 60 values, data has 30"),
        ("fraud", _input(shape=[1, 15], data=[0.5] * 15), 400, "expected shape [-1, 30]"),
        ("fraud", _input(shape=[30]), 400, "expected shape [-1, 30]"),
        ("fraud", _input(shape=[1, -30]), 400, "non-negative integers"),
        ("fraud", _input(datatype="BYTES", data=["a"] * 30), 400, "BYTES tensors"),
        ("fraud", _input(datatype="STRING"), 400, "unknown datatype 'STRING'"),
        ("fraud", _input(data=["a"] * 30), 400, "do not match datatype FP64"),
        ("fraud", _input(datatype="INT32"), 400, "do not match datatype INT32"),
        ("fraud", _input(data=[[0.5], [0.5, 1.0]]), 400, "not a regular array"),
        ("fraud", _input(data=None), 400, "needs 30 values, data has 1"),
        ("fraud", _input(data=[None] * 30), 400, "do not match datatype FP64"),
        ("fraud", _NAN_LITERAL, 400, "malformed JSON"),
        ("fraud", _input(data=[*[0.5] * 29, float("nan")]), 400, "do not match"),  # NaN -> null
        ("fraud", _body(outputs=[{"name": "odds"}]), 400, "unknown output 'odds'"),
        ("fraud", _body(parameters={"timeout": "soon"}), 400, "parameters.timeout"),
        ("fraud", _body(id=7), 400, "id: expected a string"),
        ("fraud", _columns("amount_mean_30d"), 400, "missing input(s): amount_std_30d"),
        ("fraud", _columns("colour", "colour"), 400, "unknown input 'colour'"),
        ("fraud", _columns("amount_mean_30d", "amount_mean_30d"), 400, "given twice"),
    ],
)
async def test_bad_requests_get_a_protocol_error(
    make_project, serve, path: str, body: bytes, status: int, needle: str
) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project())
    r = await client.post(f"/v2/models/{path}/infer", content=body)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and needle in r.json()["error"], r.json()


async def test_binary_size_mismatch_and_timeout(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project())
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 30],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 240},
                }
            ]
        }
    )
    nan = np.full(30, np.nan).tobytes()
    for extra, header, needle in [
        (nan, str(len(head)), "input 'x': data: NaN or infinite values are not accepted"),
        (b"\0" * 100, str(len(head)), "fewer bytes than binary_data_size"),
        (b"\0" * 250, str(len(head)), "10 bytes no input claims"),
        (b"\0" * 240, "x", "Inference-Header-Content-Length"),
    ]:
        r = await client.post(
            "/v2/models/fraud/infer",
            content=head + extra,
            headers={"Inference-Header-Content-Length": header},
        )
        assert r.status_code == 400 and needle in r.json()["error"], r.text
    # A timeout (microseconds, as in Triton) too short for any model call.
    r = await client.post("/v2/models/fraud/infer", content=_body(parameters={"timeout": 1}))
    assert r.status_code == 504 and list(r.json()) == ["error"], r.text


async def test_infer_needs_the_predict_scope(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    keys = [
        {"name": "app", "key": "k-predict", "scopes": ["predict"]},
        {"name": "ops", "key": "k-admin", "scopes": ["admin"]},
    ]
    _, client = await serve(make_project({"server": {"api_keys": keys}}))
    assert (await client.get("/v2/models/fraud")).status_code == 200
    assert (await client.get("/v2/models/fraud/ready")).status_code == 200
    r = await client.post("/v2/models/fraud/infer", content=_body())
    assert r.status_code == 401 and list(r.json()) == ["error"]
    r = await client.post(
        "/v2/models/fraud/infer", content=_body(), headers={"x-api-key": "k-admin"}
    )
    assert r.status_code == 403
    r = await client.post(
        "/v2/models/fraud/infer", content=_body(), headers={"authorization": "Bearer k-predict"}
    )
    assert r.status_code == 200, r.text


def test_tritonclient_against_a_real_server(make_project, live_server) -> None:  # type: ignore[no-untyped-def]
    """A client this project did not write: Triton's, with binary and JSON tensors."""
    project = make_project()
    url = live_server(project).removeprefix("http://")
    with Registry.from_project(project) as registry:
        runtime = registry.load("fraud@production")
    names = runtime.signature.names
    x = np.random.default_rng(7).uniform(0, 5, size=(4, len(names)))
    expected = runtime.predict(x, probabilities=True)

    client = httpclient.InferenceServerClient(url, network_timeout=30.0)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fraud") and client.is_model_ready("fraud", "1")
        assert not client.is_model_ready("fraud", "2") and not client.is_model_ready("nope")
        meta = client.get_model_metadata("fraud")
        assert meta["name"] == "fraud" and meta["versions"] == ["1"]
        assert meta["inputs"][0]["shape"] == [-1, len(names)]
        assert client.get_server_metadata()["name"] == "hybridserve"

        # FP64, binary both ways (tritonclient's defaults): every output comes back.
        inp = httpclient.InferInput("input-0", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)
        result = client.infer("fraud", [inp], request_id="r1")
        assert result.get_response()["id"] == "r1"
        np.testing.assert_allclose(result.as_numpy("score"), expected.scores, rtol=1e-12)
        assert expected.probabilities is not None
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), expected.probabilities, rtol=1e-12
        )
        assert result.as_numpy("label").dtype == np.int64

        # FP32 as JSON, one tensor per feature, one requested output as JSON.
        x32 = x.astype(np.float32)
        inputs = []
        for j, name in enumerate(names):
            col = httpclient.InferInput(name, [len(x), 1], "FP32")
            col.set_data_from_numpy(x32[:, [j]], binary_data=False)
            inputs.append(col)
        out = httpclient.InferRequestedOutput("score", binary_data=False)
        result = client.infer("fraud", inputs, model_version="1", outputs=[out], timeout=5_000_000)
        assert [o["name"] for o in result.get_response()["outputs"]] == ["score"]
        want = runtime.predict(x32.astype(np.float64)).scores
        np.testing.assert_allclose(result.as_numpy("score"), want, rtol=1e-12)

        with pytest.raises(InferenceServerException, match="model 'nope' is not loaded"):
            client.infer("nope", [inp])
        bad = httpclient.InferInput("input-0", [1, 2], "BYTES")
        bad.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
        with pytest.raises(InferenceServerException, match="BYTES tensors are not accepted"):
            client.infer("fraud", [bad])
    finally:
        client.close()


async def test_openapi_describes_v2(make_project, serve) -> None:  # type: ignore[no-untyped-def]
    _, client = await serve(make_project())
    spec = (await client.get("/openapi.json")).json()
    for path in ("/v2", "/v2/models/{name}", "/v2/models/{name}/versions/{version}/infer"):
        assert path in spec["paths"], path
    for path, status, keys in [
        ("/v2/health/live", "200", ["live"]),
        ("/v2/health/ready", "503", ["ready"]),
        ("/v2/models/{name}/ready", "200", ["name", "ready"]),
    ]:
        answer = spec["paths"][path]["get"]["responses"][status]
        assert answer["content"]["application/json"]["schema"]["required"] == keys, path
    refs = {r.split("/")[-1] for r in _refs(spec["paths"])}
    assert refs <= set(spec["components"]["schemas"]), refs


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
