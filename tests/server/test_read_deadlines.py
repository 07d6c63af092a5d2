"""One periodic check bounds every body read: a hung read becomes a RequestTimeout, a quick
one is untouched, and the reading task is not left cancelled."""

from __future__ import annotations

import asyncio

import pytest

from hybridserve.errors import RequestTimeout
from hybridserve.server.http import ReadDeadlines


async def test_a_hung_read_times_out_and_the_task_goes_on() -> None:
    deadlines = ReadDeadlines(tick=0.01)
    loop = asyncio.get_running_loop()
    never: asyncio.Future[bytes] = loop.create_future()
    with pytest.raises(RequestTimeout, match=r"0\.05 s"):
        await deadlines.read(never, loop.time() + 0.05, 0.05)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # not left cancelled
    await asyncio.sleep(0)  # and it can go on awaiting


async def test_a_quick_read_is_untouched_and_the_check_stops() -> None:
    deadlines = ReadDeadlines(tick=0.01)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    loop.call_soon(done.set_result, b"body")
    assert await deadlines.read(done, loop.time() + 5, 5) == b"body"
    await asyncio.sleep(0.03)
    assert deadlines._handle is None and not deadlines._reads  # nothing armed once idle


async def test_a_real_cancel_is_not_mistaken_for_a_timeout() -> None:
    deadlines = ReadDeadlines(tick=0.01)
    loop = asyncio.get_running_loop()
    never: asyncio.Future[bytes] = loop.create_future()
    task = asyncio.ensure_future(deadlines.read(never, loop.time() + 5, 5))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_check_left_on_a_stopped_loop_does_not_stop_deadlines_on_a_new_one() -> None:
    deadlines = ReadDeadlines(tick=0.01)

    async def hang() -> None:
        await deadlines.read(asyncio.get_running_loop().create_future(), 0.0, 0.01)

    async def arm_and_leave() -> None:
        task = asyncio.ensure_future(hang())
        await asyncio.sleep(0)  # armed on this loop, which then ends with the check pending
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(arm_and_leave())

    async def again() -> None:
        with pytest.raises(RequestTimeout):  # still fires on a new loop
            await asyncio.wait_for(hang(), 2)

    asyncio.run(again())
