"""A store wrapper that can be switched off: for outage drills, the demo and tests.

``FaultyStore(inner)`` behaves exactly like ``inner`` until ``down`` is set; then every call
raises :class:`~hybridserve.errors.StoreError`, as a backend that stopped answering would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pyarrow as pa

from hybridserve.errors import StoreError
from hybridserve.storage.base import Entry, KVStore, Write
from hybridserve.urls import masked_url


class FaultyStore:
    def __init__(self, inner: KVStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreError(f"{masked_url(self.url)} is down (outage drill)")

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        self._check()
        return await self.inner.get_many(keys)

    async def put_many(self, writes: Sequence[Write]) -> int:
        self._check()
        return await self.inner.put_many(writes)

    async def put_columns(
        self,
        keys: Sequence[str],
        values: Sequence[bytes],
        as_of: Sequence[float],
        expires_at: float | None = None,
    ) -> int:
        self._check()
        return await self.inner.put_columns(keys, values, as_of, expires_at)

    async def delete_many(self, keys: Sequence[str]) -> int:
        self._check()
        return await self.inner.delete_many(keys)

    async def put_run(self, run: str, rows: pa.RecordBatch, expires_at: float | None = None) -> int:
        self._check()
        return await self.inner.put_run(run, rows, expires_at)

    async def get_run(
        self, run: str, members: Sequence[str], keys: Sequence[str] = ()
    ) -> list[Entry | None]:
        self._check()
        return await self.inner.get_run(run, members, keys)

    async def scan_run(self, run: str) -> AsyncIterator[str]:
        self._check()
        async for member in self.inner.scan_run(run):
            yield member

    async def seal_run(self, run: str) -> None:
        self._check()
        await self.inner.seal_run(run)

    async def drop_run(self, run: str) -> None:
        self._check()
        await self.inner.drop_run(run)

    async def scan(self, prefix: str) -> AsyncIterator[str]:
        self._check()
        async for key in self.inner.scan(prefix):
            yield key

    async def ping(self) -> None:
        self._check()
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
