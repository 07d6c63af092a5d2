"""Auth, headers and request bodies at the HTTP edge: what a client can send that is not
well-formed (bytes that are not UTF-8, a body that never finishes) gets a JSON 4xx on every
endpoint, one key rule holds on every endpoint, and every admin endpoint needs ``admin``.

The malformed requests go over a raw socket to a real server: HTTP clients refuse to send
them, and the server's own parsing is part of what is tested.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from starlette.routing import BaseRoute, Mount, Route

from hybridserve.config import Project

MakeProject = Callable[..., Project]
LiveServer = Callable[[Project], str]

NON_ASCII_KEY = "clé-secrète".encode()  # a client sending UTF-8 bytes
KEYS = [
    {"name": "app", "key": "k-predict", "scopes": ["predict"]},
    {"name": "ops", "key": "k-admin", "scopes": ["admin"]},
    {
        "name": "intl",
        "sha256": hashlib.sha256(NON_ASCII_KEY).hexdigest(),
        "scopes": ["predict", "admin"],
    },
]
PREDICT = orjson.dumps({"entity": "card_000001"})
INFER = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [0.5] * 30}]}
)
# (method, path, body) of one endpoint per part of the server: the raw predict path, V2, admin.
ENDPOINTS = [
    ("POST", "/v1/predict/fraud", PREDICT),
    ("POST", "/v2/models/fraud/infer", INFER),
    ("GET", "/v1/admin/routes", b""),
]


def raw_request(
    base: str,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    content_length: int | None = None,
    timeout: float = 20.0,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send exactly these bytes; return the status, headers and body of the answer."""
    url = urlsplit(base)
    head = [f"{method} {path} HTTP/1.1".encode(), f"host: {url.netloc}".encode()]
    head += [name + b": " + value for name, value in headers]
    head.append(b"content-length: %d" % (len(body) if content_length is None else content_length))
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {data!r}"
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        status_line, *lines = top.split(b"\r\n")
        answer = {}
        for line in lines:
            name, _, value = line.partition(b":")
            answer[name.strip().lower()] = value.strip()
        length = int(answer.get(b"content-length", b"0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(status_line.split()[1]), answer, rest


@pytest.fixture
def secured(make_project: MakeProject, live_server: LiveServer) -> str:
    return live_server(make_project({"server": {"api_keys": KEYS}}))


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "key_header",
    [(b"x-api-key", b"\xe9"), (b"authorization", b"Bearer \xe9"), (b"x-api-key", b"k-\xff\xfe")],
    ids=["x-api-key", "bearer", "x-api-key-invalid-utf8"],
)
def test_a_key_header_that_is_not_utf8_is_a_401(
    secured: str, method: str, path: str, body: bytes, key_header: tuple[bytes, bytes]
) -> None:
    status, headers, answer = raw_request(secured, method, path, [key_header], body)
    assert status == 401, answer
    assert headers[b"content-type"] == b"application/json"
    assert orjson.loads(answer)["error"] == "invalid API key"


def test_a_request_id_that_is_not_utf8_is_ignored(secured: str) -> None:
    headers = [(b"x-api-key", b"k-predict"), (b"x-request-id", b"id-\xff\xfe")]
    status, answer_headers, answer = raw_request(
        secured, "POST", "/v1/predict/fraud", headers, PREDICT
    )
    assert status == 200, answer
    assert answer_headers[b"content-type"] == b"application/json"
    rid = answer_headers[b"x-request-id"]
    assert rid.isascii() and b"id-" not in rid  # a new id, not the bytes sent


def test_a_valid_request_id_is_echoed(secured: str) -> None:
    headers = [(b"x-api-key", b"k-predict"), (b"x-request-id", b"trace-42")]
    status, answer_headers, _ = raw_request(secured, "POST", "/v1/predict/fraud", headers, PREDICT)
    assert status == 200 and answer_headers[b"x-request-id"] == b"trace-42"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_a_non_ascii_key_matches_the_same_way_on_every_endpoint(
    secured: str, method: str, path: str, body: bytes
) -> None:
    """The key is the bytes sent, on the raw path and the Starlette ones alike."""
    for header in (b"x-api-key", b"authorization"):
        value = NON_ASCII_KEY if header == b"x-api-key" else b"Bearer " + NON_ASCII_KEY
        status, _, answer = raw_request(secured, method, path, [(header, value)], body)
        assert status == 200, (header, answer)
    # The same text in another encoding is other bytes: no match, anywhere.
    latin1 = "clé-secrète".encode("latin-1")
    status, _, answer = raw_request(secured, method, path, [(b"x-api-key", latin1)], body)
    assert status == 401, answer


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [*ENDPOINTS[:2], ("POST", "/v1/admin/models/fraud/promote", b'{"version": 1}')],
)
def test_a_body_that_never_finishes_gets_a_408(
    make_project: MakeProject,
    live_server: LiveServer,
    method: str,
    path: str,
    body: bytes,
) -> None:
    base = live_server(make_project({"server": {"api_keys": KEYS, "body_timeout": "300ms"}}))
    status, headers, answer = raw_request(
        base,
        method,
        path,
        [(b"x-api-key", NON_ASCII_KEY)],
        b'{"entit',  # 7 of the 100 bytes announced, then nothing
        content_length=100,
    )
    assert status == 408, answer
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"  # the rest of the body may still come
    assert "server.body_timeout" in orjson.loads(answer)["error"]


# -- the admin scope, on every admin endpoint the app has -------------------------------


def _routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _routes(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path, route


def _admin_calls(app: Any) -> list[tuple[str, str]]:
    calls = []
    for path, route in _routes(app.starlette.routes):
        if path.startswith("/v1/admin"):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                calls.append((method, path.replace("{name}", "fraud")))
    return calls


async def test_every_admin_endpoint_needs_the_admin_scope(
    make_project: MakeProject, serve: Any
) -> None:
    app, client = await serve(make_project({"server": {"api_keys": KEYS}}))
    calls = _admin_calls(app)
    known = {"/v1/admin/routes", "/v1/admin/models", "/v1/admin/reload"}
    assert known <= {path for _, path in calls} and len(calls) >= 5, calls
    for method, path in calls:
        body = {"version": 1} if path.endswith("/promote") else {}
        for headers, status in (
            ({}, 401),
            ({"x-api-key": "wrong"}, 401),
            ({"x-api-key": "k-predict"}, 403),
            ({"authorization": "Bearer k-predict"}, 403),
        ):
            r = await client.request(method, path, json=body, headers=headers)
            assert r.status_code == status, (method, path, headers, r.text)
            assert "error" in r.json()
        r = await client.request(method, path, json=body, headers={"x-api-key": "k-admin"})
        # Past auth: the endpoint's own answer (a rollback with nothing to go back to is 409).
        assert r.status_code not in (401, 403), (method, path, r.text)
        assert r.status_code < 500, (method, path, r.text)


async def test_reload_is_written_to_the_audit_log(make_project: MakeProject, serve: Any) -> None:
    app, client = await serve(make_project({"server": {"api_keys": KEYS}}))
    r = await client.post("/v1/admin/reload", headers={"authorization": "Bearer k-admin"})
    assert r.status_code == 200, r.text
    (entry,) = app.state.services.registry.audit(limit=1)
    assert (entry.action, entry.actor, entry.model) == ("reload", "ops", "*")
    assert entry.details == {"changes": r.json()["changes"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ops:clé:admin", "HYBRIDSERVE_API_KEYS: ops: expected visible ASCII characters only"),
        ("ops:a b:admin", "HYBRIDSERVE_API_KEYS: ops: expected visible ASCII characters only"),
    ],
)
def test_environment_keys_follow_the_project_file_rule(text: str, expected: str) -> None:
    from hybridserve.errors import ConfigError
    from hybridserve.server.auth import parse_env_keys

    with pytest.raises(ConfigError) as info:
        parse_env_keys(text)
    assert info.value.message.startswith(expected) and "clé" not in info.value.message
