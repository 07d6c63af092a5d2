"""Awaiting with a deadline that holds even when the awaited call ignores cancellation.

``asyncio.wait_for`` cancels an awaitable that ran out of time and then *waits for it to
finish cancelling*. redis-py's asyncio client sometimes swallows a cancellation that lands
inside a blocking command (redis/redis-py#2028: reproduced with ``XREADGROUP ... BLOCK``
on redis-py 8.1, where the cancelled task kept waiting on its socket), so such a wait can
last forever: a stream consumer that cancelled its reader after a failed batch hung there
and ignored SIGTERM. :func:`bounded` and :func:`stop` cancel and then stop waiting: a call
that does not end in time is *abandoned*, its task kept referenced here until it ends (a
closed client ends it) and its outcome retrieved, so nothing is logged as never retrieved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

_abandoned: set[asyncio.Future[Any]] = set()


def _retrieve(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()


def abandon(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and stop caring how (or whether) it ends."""
    task.cancel()
    if not task.done():
        _abandoned.add(task)
        task.add_done_callback(_retrieve)


async def bounded(aw: Awaitable[T], seconds: float) -> T:
    """``await aw``, or :class:`TimeoutError` after ``seconds`` (the call is then abandoned).

    Cancelling the caller cancels the call and returns at once, whether the call noticed.
    """
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        abandon(task)
        raise
    if not done:
        abandon(task)
        raise TimeoutError(f"no answer in {seconds:g}s")
    return task.result()


async def stop(task: asyncio.Future[Any], seconds: float) -> bool:
    """Cancel ``task`` and wait up to ``seconds`` for it to end; ``False`` if it was abandoned."""
    task.cancel()
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, seconds))
    except asyncio.CancelledError:
        abandon(task)
        raise
    if done:
        _retrieve(task)
        return True
    abandon(task)
    return False


async def close_client(aclose: Callable[[], Awaitable[Any]], seconds: float) -> None:
    """Close a Redis client so that no socket of it outlives the close.

    Closing the client's pool ends the calls abandoned past their deadline: their sockets
    close. But redis-py retries a call whose connection closed under it, and the retry
    connects again, to a pool nobody closes any more: a socket left to the garbage collector
    (a ``ResourceWarning``, seen in CI). So wait up to ``seconds`` for this loop's abandoned
    calls to end, and close the pool once more.
    """
    with contextlib.suppress(TimeoutError):
        await bounded(aclose(), seconds)
    loop = asyncio.get_running_loop()
    left = [t for t in _abandoned if t.get_loop() is loop]
    if left:
        await asyncio.wait(left, timeout=seconds)
        with contextlib.suppress(TimeoutError):
            await bounded(aclose(), seconds)
