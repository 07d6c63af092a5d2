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
