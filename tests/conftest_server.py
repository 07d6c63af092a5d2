"""Fixtures for server tests: a trained fraud project (trained once per session, copied per
test), an in-process app with its lifespan entered, and a real uvicorn server on a free port.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from hybridserve.config import Project, load_project
from hybridserve.server.app import HybridApp, create_app


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scaffolded fraud project with both models registered and features materialized."""
    from hybridserve.examples.fraud import scaffold
    from hybridserve.examples.fraud.train import train
    from hybridserve.features.materialize import materialize
    from hybridserve.services import Services

    root = tmp_path_factory.mktemp("fraud")
    scaffold(root, n_cards=400)
    project = load_project(root)
    services = Services.open(project)
    try:
        train(project, n_cards=3000, registry=services.registry)
        asyncio.run(materialize(project, services.features, "card_profile"))
    finally:
        asyncio.run(services.close())
    return root


ProjectFactory = Callable[..., Project]


@pytest.fixture
def make_project(trained_dir: Path, tmp_path: Path) -> ProjectFactory:
    """Copy the trained project and apply ``changes`` (a dict merged into the YAML)."""

    def make(changes: dict[str, Any] | None = None, **route_changes: Any) -> Project:
        dest = tmp_path / "project"
        if not dest.exists():
            shutil.copytree(trained_dir, dest)
        raw = yaml.safe_load((dest / "hybridserve.yaml").read_text())
        for key, value in (changes or {}).items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        raw["routes"]["fraud"].update(route_changes)
        (dest / "hybridserve.yaml").write_text(yaml.safe_dump(raw))
        return load_project(dest / "hybridserve.yaml", env=False)

    return make


def without(project: Project, *sections: str) -> Project:
    """``project`` with top-level ``sections`` (``streams``, ``batch_jobs``) cut from its file."""
    assert project.source_file is not None
    raw = yaml.safe_load(project.source_file.read_text())
    for section in sections:
        raw.pop(section, None)
    project.source_file.write_text(yaml.safe_dump(raw))
    return load_project(project.source_file, env=False)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Project], Any]]:
    """Start an app in process (lifespan entered); yields a factory returning (app, client)."""
    stack: list[Any] = []

    async def start(project: Project, **options: Any) -> tuple[HybridApp, httpx.AsyncClient]:
        app = create_app(project, access_log=False, **options)
        lifespan = app.starlette.router.lifespan_context(app.starlette)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hs")
        stack.append((lifespan, client))
        return app, client

    yield start
    for lifespan, client in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn in a thread (lifespan on) while the block runs;
    yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def live_server() -> Iterator[Callable[[Project], str]]:
    """Run a real uvicorn server in a thread; the factory returns its base URL."""
    with ExitStack() as stack:

        def start(project: Project, **options: Any) -> str:
            app = create_app(project, access_log=False, **options)
            return stack.enter_context(uvicorn_in_thread(app))

        yield start


@pytest.fixture
def worker_route_changes() -> dict[str, Any]:
    return {}


@pytest.fixture
def worker_project_changes() -> dict[str, Any]:
    return {}


@pytest.fixture
def two_workers(
    make_project: ProjectFactory,
    worker_route_changes: dict[str, Any],
    worker_project_changes: dict[str, Any],
) -> Iterator[tuple[str, Project]]:
    """``serve --workers 2`` on a copy of the trained project (the project and its route changed
    by ``worker_project_changes`` and ``worker_route_changes``, fixtures a test module may
    override); yields the base URL."""
    project = make_project(worker_project_changes, **worker_route_changes)
    port = free_port()
    log = (project.base_dir / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "hybridserve", "serve", "-p", str(project.base_dir)),
            *("--port", str(port), "--workers", "2", "--no-access-log", "--log-level", "info"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (project.base_dir / "server.log").read_text()
            assert time.monotonic() < deadline, "the workers did not start"
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        # Both workers ready: each answers on its own, so wait until two pids have logged it.
        while (project.base_dir / "server.log").read_text().count('"ready: ') < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.2)
        yield base, project
    finally:
        proc.terminate()
        proc.wait(30)
