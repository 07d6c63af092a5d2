"""The chunk writer: writes run in order in one thread, at most ``depth`` waiting."""

from __future__ import annotations

import threading
import time

import pytest

from hybridserve.batch.writer import ChunkWriter


def test_writes_run_in_order_and_the_queue_is_bounded() -> None:
    writer = ChunkWriter(depth=2)
    gate, order = threading.Event(), []
    try:
        first = writer.submit(lambda: (gate.wait(10), order.append(1)))
        second = writer.submit(lambda: order.append(2))
        blocked = threading.Event()

        def third() -> None:
            writer.submit(lambda: order.append(3)).result()
            blocked.set()

        t = threading.Thread(target=third)
        t.start()
        time.sleep(0.2)
        # Two writes wait (one running, one queued): the third caller is held back.
        assert not blocked.is_set() and order == []
        gate.set()
        first.result(5), second.result(5)
        t.join(5)
        assert blocked.is_set() and order == [1, 2, 3]
    finally:
        gate.set()
        writer.close()


def test_a_failed_write_raises_through_its_future_and_frees_its_slot() -> None:
    writer = ChunkWriter(depth=1)
    try:

        def fail() -> None:
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            writer.submit(fail).result(5)
        assert writer.submit(lambda: 7).result(5) == 7

        async def coro() -> int:
            return 8

        assert writer.call(coro) == 8
    finally:
        writer.close()
    with pytest.raises(ValueError, match="depth"):
        ChunkWriter(depth=0)
