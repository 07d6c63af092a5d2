"""A TCP proxy a test controls: "the dependency goes down" without stopping a shared server."""

from __future__ import annotations

import asyncio
import gc


class TcpProxy:
    """Forwards a local port to ``target``; :meth:`stop` is an outage, :meth:`start` the end."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def up(self) -> bool:
        return self._server is not None

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for w in list(self._conns):
            w.transport.abort()
        await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self._server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._conns.discard(writer)
            return
        self._conns.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                # One side is gone: so is the other (as when a server dies).
                writer.transport.abort()
                up_writer.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._conns.discard(writer)
            self._conns.discard(up_writer)


def release_leaked_redis_pipelines() -> None:
    """Close the connections of Redis pipelines leaked by a failed call, without warnings.

    ``RedisStore`` leaks a pipeline (and its connection) when a call fails mid-way, the bug
    ``tests/storage/test_redis_outages.py`` shows. Each warns when garbage-collected, which may
    happen during any later test; an outage test calls this when its server has stopped.
    """
    import redis.asyncio.client

    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, redis.asyncio.client.Pipeline) and obj.connection is not None:
            connection, obj.connection = obj.connection, None
            connection._close()  # type: ignore[no-untyped-call]
