"""A small, fast HTTP/1.1 load generator for tests: N keep-alive connections, one request in
flight on each, bodies taken in turn from a list, every answer logged with the time it came.

httpx spends about a millisecond of Python per request, so 64 httpx clients in the test
process offered the server less than a hundred requests a second: no load at all. This writes
the request bytes itself and reads each answer by its ``content-length``, at several thousand
requests a second from one core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson


@dataclass(slots=True)
class Answer:
    at: float
    """``time.monotonic()`` when the answer was read."""
    status: int
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


async def _one_connection(
    host: str, port: int, requests: Sequence[bytes], offset: int, until: float, log: list[Answer]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.monotonic() < until:
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            log.append(Answer(time.monotonic(), status, body))
    except (ConnectionError, asyncio.IncompleteReadError):
        log.append(Answer(time.monotonic(), 0, b""))
    finally:
        writer.close()


def post_requests(host: str, port: int, path: str, bodies: Sequence[object]) -> list[bytes]:
    """Raw keep-alive POST requests, one per JSON body."""
    out = []
    for body in bodies:
        data = orjson.dumps(body)
        out.append(
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n\r\n".encode()
            + data
        )
    return out


async def run_load(
    host: str, port: int, requests: Sequence[bytes], *, seconds: float, connections: int
) -> list[Answer]:
    """Keep ``connections`` requests in flight for ``seconds``; every answer, in order."""
    log: list[Answer] = []
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(_one_connection(host, port, requests, n * 7919, until, log) for n in range(connections))
    )
    return log
