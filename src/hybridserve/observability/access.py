"""The access log: one JSON line per request, written in batches.

Logging each request through :mod:`logging` (a record, a formatter, a locked handler, a write
and a flush) costs about as much as answering a request from the cache. Like nginx's
``access_log ... buffer=`` this log keeps lines in memory and writes them together: when the
buffer passes ``max_buffer`` bytes, ``flush_interval`` seconds after the first unwritten line,
and at shutdown. A line has the shape :class:`~hybridserve.observability.logging.JsonFormatter`
gives every other log line.

When :func:`~hybridserve.observability.logging.configure` has not set up the log stream (the
app embedded in another program), lines go through the ``hybridserve.access`` logger instead,
one by one, so that program's logging configuration applies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import IO

import orjson

from hybridserve.observability import logging as hs_logging

LOGGER = "hybridserve.access"


class AccessLog:
    def __init__(self, *, flush_interval: float = 0.25, max_buffer: int = 64 * 1024) -> None:
        self.logger = logging.getLogger(LOGGER)
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def stream(self) -> IO[bytes] | None:
        """The byte stream lines are batched to (``None``: log line by line)."""
        return hs_logging.stream_for(self.logger)

    def write(self, request_id: str, method: str, path: str, status: int, ms: float) -> None:
        stream = self.stream
        if stream is None:
            if self.logger.isEnabledFor(logging.INFO):
                self.logger.info(
                    "",
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "path": path,
                        "status": status,
                        "ms": ms,
                    },
                )
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        line = orjson.dumps(
            {
                "ts": round(time.time(), 6),
                "level": "info",
                "logger": LOGGER,
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "ms": ms,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.max_buffer:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Write every buffered line now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data, self._lines, self._size = b"".join(self._lines), [], 0
        stream = self.stream
        if stream is None:  # logging was reconfigured since: the lines still go somewhere
            for line in data.splitlines():
                self.logger.info(line.decode())
            return
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not fail requests
            pass
