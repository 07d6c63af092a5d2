"""Both HTTP fronts (``serve --http uvicorn|granian``) serve the same app, and both drain: a
request in flight when SIGTERM arrives is answered before the process exits."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from conftest_server import free_port
from hybridserve.config import Project

MakeProject = Callable[..., Project]
pytestmark = pytest.mark.slow


def _start(project: Project, http: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (project.base_dir / f"{http}.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "hybridserve", "serve", "-p", str(project.base_dir)),
            *("--port", str(port), "--http", http, "--no-access-log", "--log-level", "info"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (project.base_dir / f"{http}.log").read_text()
        assert time.monotonic() < deadline, "the server did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        time.sleep(0.2)


@pytest.mark.parametrize("http", ["uvicorn", "granian"])
def test_the_front_serves_and_drains_a_request_in_flight(
    make_project: MakeProject, http: str
) -> None:
    project = make_project({"server": {"shutdown_timeout": "5s"}})
    proc, port = _start(project, http)
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/predict/fraud",
            json={"entity": "card_000001", "mode": "compute"},
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["predictions"][0]["source"] == "online"
        assert "hybridserve_requests_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        body = json.dumps({"entity": "card_000002", "mode": "compute"}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = (
                f"POST /v1/predict/fraud HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                f"\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode()
            sock.sendall(head + body[:5])  # the request is in flight, its body half sent
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            sock.sendall(body[5:])
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                assert chunk, f"{http} closed the connection without answering"
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert proc.wait(20) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _exchanges(port: int) -> list[tuple[int, object, dict[str, str]]]:
    """The same requests, answered: status, JSON body, the headers every front must set."""
    base = f"http://127.0.0.1:{port}"
    big = b'{"entity": "' + b"x" * 5000 + b'"}'
    calls: list[tuple[str, str, dict[str, object]]] = [
        ("POST", "/v1/predict/fraud", {"json": {"entity": "card_000003", "mode": "compute"}}),
        ("POST", "/v1/predict/fraud", {"content": b"{not json", "headers": {"x-request-id": "r1"}}),
        ("POST", "/v1/predict/nope", {"json": {"entity": "card_000003"}}),
        ("POST", "/v1/predict/fraud", {"content": big}),
        ("POST", "/v1/predict/fraud", {"content": iter([big])}),  # chunked: no content-length
        ("POST", "/v1/predict/fraud", {"json": {"entity": "card_000004", "mode": "stored"}}),
        ("GET", "/v1/predict/fraud", {}),
        ("GET", "/v2/models/nope", {}),
        ("POST", "/v2/models/fraud/infer", {"content": b"[]"}),
        ("GET", "/no/such/path?x=1", {}),
        (
            "POST",
            "/v1/predict/fraud",
            {
                "json": {"entities": ["card_000003", "card_000005"], "mode": "compute"},
                "headers": {"accept": "application/x-ndjson"},
            },
        ),
    ]
    out = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for method, path, kwargs in calls:
            r = client.request(method, path, **kwargs)  # type: ignore[arg-type]
            if r.headers["content-type"] == "application/x-ndjson":
                body: Any = [json.loads(line) for line in r.text.splitlines()]
                for line in body:
                    for key in ("as_of", "age_s", "request_id"):
                        line.pop(key, None)
            else:
                body = r.json()
            if isinstance(body, dict):
                body.pop("request_id", None)
                for p in body.get("predictions", []):
                    p.pop("as_of", None)
                    p.pop("age_s", None)
            kept = {k: r.headers[k] for k in ("content-type", "retry-after") if k in r.headers}
            if "x-request-id" in r.headers and path.startswith("/v1/predict"):
                kept["x-request-id"] = "r1" if r.headers["x-request-id"] == "r1" else "new"
            out.append((r.status_code, body, kept))
    return out


def test_both_fronts_give_the_same_answers_and_errors(make_project: MakeProject) -> None:
    project = make_project({"server": {"max_body_size": 4096}}, fallback=[])
    answers = {}
    for http in ("uvicorn", "granian"):
        proc, port = _start(project, http)
        try:
            answers[http] = _exchanges(port)
        finally:
            proc.terminate()
            proc.wait(20)
    statuses = [status for status, _, _ in answers["uvicorn"]]
    assert statuses == [200, 400, 404, 413, 413, 503, 405, 404, 400, 404, 200], answers["uvicorn"]
    streamed = answers["uvicorn"][-1][1]
    assert [line.get("entity") for line in streamed] == ["card_000003", "card_000005", None]
    assert answers["uvicorn"][5][2]["retry-after"] == "1"
    assert answers["uvicorn"][1][2]["x-request-id"] == "r1"
    for uv, gr in zip(answers["uvicorn"], answers["granian"], strict=True):
        assert uv == gr


@pytest.mark.parametrize("http", ["uvicorn", "granian"])
def test_a_body_that_stalls_gets_a_408_and_the_connection_closes(
    make_project: MakeProject, http: str
) -> None:
    project = make_project({"server": {"body_timeout": "0.5s"}})
    proc, port = _start(project, http)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/predict/fraud HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                b'\r\ncontent-length: 100\r\n\r\n{"entity"'
            )
            answer = b""
            while chunk := sock.recv(65536):  # the server closes after answering
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"connection: close" in head.lower()
        assert json.loads(body)["type"] == "RequestTimeout"
    finally:
        proc.terminate()
        proc.wait(20)
