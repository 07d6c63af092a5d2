"""Feature reads made in one turn of the loop go to the store as one call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from hybridserve.errors import StoreError
from hybridserve.features.online import CoalescedGets
from hybridserve.storage import Entry


class Store:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        self.calls.append(list(keys))
        await asyncio.sleep(0)
        if self.fail:
            raise StoreError("down")
        return [None if k.startswith("x") else Entry(k, k.encode(), 1.0, None) for k in keys]


async def test_concurrent_reads_share_one_call_and_each_gets_its_own() -> None:
    store = Store()
    get = CoalescedGets(store.get_many)
    a, b, c = await asyncio.gather(get(["a1", "a2"]), get(["xb"]), get(["c1"]))
    assert store.calls == [["a1", "a2", "xb", "c1"]]
    assert [e.key if e else None for e in a] == ["a1", "a2"]
    assert b == [None] and c[0] is not None and c[0].value == b"c1"
    assert await get(["d"]) and store.calls[-1] == ["d"]  # a later turn: its own call


async def test_a_failure_reaches_every_caller_and_a_caller_that_gave_up_is_skipped() -> None:
    failing = CoalescedGets(Store(fail=True).get_many)
    results = await asyncio.gather(failing(["a"]), failing(["b"]), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)

    store = Store()
    get = CoalescedGets(store.get_many)
    gone = asyncio.ensure_future(get(["a"]))
    kept = asyncio.ensure_future(get(["b"]))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await kept)[0] is not None
    with pytest.raises(asyncio.CancelledError):
        await gone
