"""The chunk writer: one thread that writes scored chunks to their sinks, a bounded queue ahead.

A :class:`~hybridserve.batch.chunk.ChunkWorker` scores and encodes a chunk into columns, then
hands the writes (the run's records to the prediction store, the Parquet snapshot, rejected
rows) to its writer and goes on with the next chunk: the model does not wait on the store,
and while the model works the store has the previous chunk to write. At most ``depth``
chunks wait for the writer; one more blocks the worker until a slot frees (memory stays
bounded, and a slow store slows the run instead of filling memory). Writes run in order, one
at a time, on the writer's own event loop (the store's connections live there).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ChunkWriter:
    def __init__(self, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth: expected at least 1, got {depth}")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hybridserve-chunk-writer")
        self._slots = threading.BoundedSemaphore(depth)
        self._loop = asyncio.new_event_loop()
        self._closed = False

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the writer thread after the writes before it; block while ``depth``
        writes are already waiting."""
        self._slots.acquire()
        try:
            future = self._pool.submit(fn)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a store call on the writer's event loop (from inside a submitted function)."""
        return self._loop.run_until_complete(coro)

    def call(self, coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a store call in the writer thread and wait for it (opening, closing)."""
        return self.submit(lambda: self.run(coro())).result()

    def close(self) -> None:
        """Finish the writes queued, then stop the thread and its loop."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self._loop.close()
