"""Closing a Redis client while a call it made is abandoned past its deadline."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as redis_asyncio

from backends import redis_url
from hybridserve.streaming import deadlines

pytestmark = pytest.mark.redis


async def test_a_call_that_reconnects_after_the_close_leaves_no_socket_open() -> None:
    client = redis_asyncio.from_url(redis_url())
    await client.ping()
    let_go = asyncio.Event()

    async def stubborn() -> None:
        # A call that swallowed its cancellation (redis/redis-py#2028) and then, its
        # connection closed under it by the client's close, retried: the retry reconnects.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        await let_go.wait()
        await client.ping()

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    deadlines.abandon(task)
    closing = asyncio.ensure_future(deadlines.close_client(client.aclose, 5.0))
    await asyncio.sleep(0.05)  # the first close has run; the call now retries
    let_go.set()
    await closing
    assert task.done() and not task.cancelled() and task.exception() is None
    pool = client.connection_pool
    connections = [*pool._available_connections, *pool._in_use_connections]
    assert connections, "the retry took a connection from the pool"
    assert not any(c.is_connected for c in connections)
