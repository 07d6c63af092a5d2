"""``GET /v1/streams/{stream}/predictions``: a stream's outputs as server-sent events, resumable
from ``Last-Event-ID``."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from stream_helpers import STREAM, stream_project

from backends import redis_url
from conftest_server import uvicorn_in_thread
from hybridserve.server.app import create_app

pytestmark = pytest.mark.redis


@pytest.fixture
def tail_server(make_project: Any) -> Iterator[tuple[str, str, redis.Redis]]:
    url = redis_url()
    prefix = f"hs_test_{uuid.uuid4().hex[:10]}:"
    project = stream_project(make_project, stores={"online": url, "prefix": prefix},
                             source={"kind": "redis"})  # fmt: skip
    app = create_app(project, access_log=False)
    client = redis.Redis.from_url(url)
    from hybridserve.streaming.sources.base import output_key

    key = output_key(project, STREAM, project.streams[STREAM])
    with uvicorn_in_thread(app) as base:
        yield base, key, client
    for k in client.scan_iter(match=f"{prefix}*"):
        client.delete(k)
    client.close()


def _emit(client: redis.Redis, key: str, n: int, start: int) -> None:
    for i in range(start, start + n):
        client.xadd(key, {"id": f"e{i}", "d": orjson.dumps({"event_id": f"e{i}", "score": i})})


def _events(lines: Iterator[str], n: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    pending: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if not line:
            if "data" in pending:
                out.append((pending["id"], orjson.loads(pending["data"])))
                if len(out) == n:
                    return out
            pending = {}
            continue
        field, _, value = line.partition(": ")
        pending[field] = value
    return out


def test_outputs_stream_as_events_and_a_reconnect_resumes_after_the_last_id(
    tail_server: tuple[str, str, redis.Redis],
) -> None:
    base, key, client = tail_server
    _emit(client, key, 2, 0)  # before anyone tails: not sent without a Last-Event-ID
    with httpx.Client(base_url=base, timeout=30) as http:
        with http.stream("GET", f"/v1/streams/{STREAM}/predictions") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert next(lines).startswith(": tailing")
            threading.Timer(0.3, _emit, (client, key, 3, 2)).start()
            got = _events(lines, 3)
        assert [e["event_id"] for _, e in got] == ["e2", "e3", "e4"]
        last = got[1][0]  # the client saw e3, then dropped
        _emit(client, key, 1, 5)
        headers = {"last-event-id": last}
        with http.stream("GET", f"/v1/streams/{STREAM}/predictions", headers=headers) as r:
            resumed = _events(r.iter_lines(), 2)
        assert [e["event_id"] for _, e in resumed] == ["e4", "e5"]
        bad = http.get(f"/v1/streams/{STREAM}/predictions", headers={"last-event-id": "soon"})
        assert bad.status_code == 400


async def test_a_stream_whose_outputs_cannot_be_tailed_is_a_409(
    make_project: Any, serve: Any
) -> None:
    project = stream_project(make_project)  # a memory source
    _, client = await serve(project)
    r = await client.get(f"/v1/streams/{STREAM}/predictions")
    assert r.status_code == 409 and "cannot be tailed" in r.json()["error"]
    await asyncio.sleep(0)
