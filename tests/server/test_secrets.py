"""No secret (a backend's password, an API key) reaches a response, a log line or a CLI error
when a backend fails: Redis going down while serving, Redis down at start-up, the PostgreSQL
registry unreachable, SQLite files that cannot be opened.

Redis runs as a server of this test's own, with a password, on a free port, so "Redis goes
down" is stopping that process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import REDIS_START, unavailable
from conftest_server import free_port
from hybridserve.config import Project
from hybridserve.errors import HybridServeError
from hybridserve.server.app import create_app

MakeProject = Callable[..., Project]
PASSWORD = "pw-Zq8sEcret"
API_KEY = "k-Secret-Admin-7"
KEYS = [{"name": "ops", "key": API_KEY, "scopes": ["predict", "admin"]}]
SECRETS = (PASSWORD, API_KEY)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of this test's own with a password: (its URL with the password, the process)."""
    exe = shutil.which("redis-server")
    if exe is None:
        unavailable("redis-server", "not on PATH", REDIS_START)
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the test's redis-server did not start")
            time.sleep(0.05)
    try:
        yield f"redis://:{PASSWORD}@127.0.0.1:{port}/0", proc
    finally:
        proc.terminate()
        proc.wait(10)


def hs(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridserve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
            **env,
        },
    )


async def test_redis_down_while_serving(
    make_project: MakeProject,
    serve: Any,
    redis_server: tuple[str, subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="hybridserve")
    url, proc = redis_server
    project = make_project(
        {"stores": {"online": url, "prefix": "hs-secrets-test:"}, "server": {"api_keys": KEYS}},
        fallback=[],  # nothing to fall back on: the answer is the 503 with the trail
    )
    _, client = await serve(project)
    proc.terminate()
    await asyncio.to_thread(proc.wait, 10)
    auth = {"authorization": f"Bearer {API_KEY}"}
    r = await client.post("/v1/predict/fraud", json={"entity": "card_000001"}, headers=auth)
    assert r.status_code == 503, r.text
    (unanswered,) = r.json()["unanswered"]
    assert "store: failed (StoreError)" in unanswered["steps"], unanswered
    r2 = await client.post("/v1/admin/reload", headers=auth)
    assert_no_secret(r.text, str(r.headers), r2.text, caplog.text)
    assert "redis://:***@127.0.0.1" in caplog.text  # the debug log names the store, masked


async def test_redis_down_at_start_up(
    make_project: MakeProject, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hybridserve")
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    project = make_project({"stores": {"online": url}, "server": {"api_keys": KEYS}})
    app = create_app(project, access_log=False)
    lifespan = app.starlette.router.lifespan_context(app.starlette)
    with pytest.raises(HybridServeError) as info:
        await lifespan.__aenter__()
    assert "redis://:***@127.0.0.1" in info.value.message
    assert_no_secret(info.value.message, repr(info.value), caplog.text)
    await app.state.services.close()


def test_serve_and_the_cli_with_redis_down(make_project: MakeProject) -> None:
    project = make_project({"server": {"api_keys": KEYS}})
    assert project.source_file is not None
    env = {"HYBRIDSERVE_ONLINE_STORE_URL": f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"}
    served = hs(
        "serve", "-p", str(project.source_file), "--port", str(free_port()), env=env, timeout=60
    )
    assert served.returncode != 0
    assert "redis://:***@127.0.0.1" in served.stderr, served.stderr
    materialized = hs(
        "features", "materialize", "card_profile", "-p", str(project.source_file), env=env
    )
    assert materialized.returncode != 0
    assert "redis://:***@127.0.0.1" in materialized.stderr, materialized.stderr
    assert_no_secret(served.stdout, served.stderr, materialized.stdout, materialized.stderr)


def test_postgres_registry_unreachable(make_project: MakeProject) -> None:
    project = make_project()
    assert project.source_file is not None
    for url in (
        f"postgresql://hs:{PASSWORD}@127.0.0.1:{free_port()}/test",  # nothing listens there
        f"mysql://hs:{PASSWORD}@127.0.0.1/test",  # not a supported registry
    ):
        r = hs(
            "registry",
            "list",
            "-p",
            str(project.source_file),
            env={"HYBRIDSERVE_REGISTRY_URL": url},
        )
        assert r.returncode != 0 and "hs:***@127.0.0.1" in r.stderr, r.stderr
        assert_no_secret(r.stdout, r.stderr)


@pytest.mark.parametrize(
    ("variable", "command"),
    [
        ("HYBRIDSERVE_ONLINE_STORE_URL", ["features", "materialize", "card_profile"]),
        ("HYBRIDSERVE_REGISTRY_URL", ["registry", "list"]),
    ],
)
def test_sqlite_that_cannot_be_opened(
    make_project: MakeProject, variable: str, command: list[str]
) -> None:
    project = make_project()
    assert project.source_file is not None
    blocker = project.base_dir / "not-a-directory"
    blocker.write_text("")
    r = hs(
        *command,
        "-p",
        str(project.source_file),
        env={variable: f"sqlite:///{blocker}/x.db", "HYBRIDSERVE_API_KEYS": f"ops:{API_KEY}:admin"},
    )
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot open"), r.stderr
    assert_no_secret(r.stdout, r.stderr)


def test_log_lines_mask_urls_in_a_drivers_text() -> None:
    """A traceback or a driver's message may name a URL: the log line masks it anyway."""
    from hybridserve.observability.logging import JsonFormatter, PlainFormatter

    try:
        raise ConnectionError(f"cannot reach postgresql://hs:{PASSWORD}@db:5432/registry")
    except ConnectionError as exc:
        record = logging.LogRecord(
            "hybridserve.test", logging.ERROR, __file__, 1, "failed: %s", (exc,), sys.exc_info()
        )
    for formatter in (JsonFormatter(), PlainFormatter("%(message)s")):
        line = formatter.format(record)
        assert "postgresql://hs:***@db:5432/registry" in line, line
        assert_no_secret(line)
