"""A TCP proxy in front of a server (RabbitMQ, PostgreSQL) so a test can cut its clients off."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forwards TCP to ``upstream``'s host and port; the URL to give clients is ``url``."""

    def __init__(self, upstream: str, default_port: int = 5672) -> None:
        parts = urlsplit(upstream)
        self._target = (parts.hostname or "127.0.0.1", parts.port or default_port)
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pipes: set[asyncio.Task[None]] = set()
        self._refusing = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self._upstream)
        user = parts.username or ""
        auth = f"{user}:{parts.password}@" if parts.password else (f"{user}@" if user else "")
        return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{port}", parts.path, parts.query,
                           parts.fragment))

    async def reset(self) -> None:
        """Reset every connection, as a network failure would; new ones are accepted."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def cut(self) -> None:
        """Reset every connection and accept no more, as a crashed host would."""
        assert self._server is not None
        self._server.close()
        await self.reset()
        await self._server.wait_closed()

    async def refuse(self) -> None:
        """Reset every connection and drop new ones until :meth:`accept` (a server down)."""
        self._refusing = True
        await self.reset()

    def accept(self) -> None:
        """Forward new connections again (the server is back)."""
        self._refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
