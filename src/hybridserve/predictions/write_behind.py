"""Computed predictions written back to the store in batches, off the request path.

Writing each request's record in its own transaction or round trip would cost more than
scoring it. :meth:`WriteBehind.put` only queues records; a task gathers them for ``delay``
and writes them with one call. The queue is bounded: when the store cannot keep up, or its
write breaker is open, records are dropped and counted, since serving matters more than
remembering. Writes have their own breaker, so a store that cannot write (a full or read-only
disk) does not stop reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from hybridserve.errors import DeadlineExceeded, StoreError
from hybridserve.observability.tracing import OFF, Tracing
from hybridserve.records import PredictionRecord

log = logging.getLogger("hybridserve.write_behind")
_FAILURES = (StoreError, TimeoutError, DeadlineExceeded, OSError)


class Breaker(Protocol):
    """The part of a circuit breaker (``routing/breaker.py``) the writer uses."""

    def allow(self) -> bool: ...

    def success(self) -> None: ...

    def failure(self) -> None: ...


class WriteBehind:
    def __init__(
        self,
        write: Callable[[Sequence[PredictionRecord]], Awaitable[int]],
        breaker: Breaker,
        *,
        dropped: Callable[[int], None] = lambda n: None,
        delay: float = 0.005,
        max_pending: int = 50_000,
        timeout: float = 2.0,
        tracing: Tracing = OFF,
    ) -> None:
        self._write = write
        self.breaker = breaker
        self._dropped = dropped
        self.delay = delay
        self.max_pending = max_pending
        self.timeout = timeout
        self.tracing = tracing
        self._pending: list[PredictionRecord] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def put(self, records: Sequence[PredictionRecord]) -> None:
        """Queue ``records`` for the store (dropped and counted past ``max_pending``)."""
        if len(self._pending) + len(records) > self.max_pending:
            self._dropped(len(records))
            return
        self._pending.extend(records)
        if not self._tasks:
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        await asyncio.sleep(self.delay)
        while self._pending:
            records, self._pending = self._pending, []
            if not self.breaker.allow():
                self._dropped(len(records))
                continue
            try:
                with self.tracing.span("write-back", records=len(records)):
                    async with asyncio.timeout(self.timeout):
                        await self._write(records)
                self.breaker.success()
            except _FAILURES as exc:
                self.breaker.failure()
                self._dropped(len(records))
                log.warning("write-back of %d predictions failed: %s", len(records), exc)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) until what is queued now has been written or dropped."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        await self.flush()
