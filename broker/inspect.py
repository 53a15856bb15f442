"""A file judged while it streams in: its flow's inspector reads the upload's chunks in a
thread as they arrive, so a 128 MiB PES is judged by the time it is on disk, in bounded
memory (a few chunks queued), and never read twice.
"""

from __future__ import annotations

import asyncio
import io
import queue
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from broker.flows.base import Inspection, Inspector

# Chunks waiting for the inspector: the upload waits when it is this far ahead.
_QUEUED = 16
_END = b""


class _Abandoned(Exception):
    """The upload stopped before its end (refused, cut): the inspection has no verdict."""


class _Feed(io.RawIOBase):
    """The inspector's side: a blocking stream over the queued chunks."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        self._chunks, self._rest, self._ended = chunks, memoryview(b""), False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            if self._ended:
                return 0
            chunk = self._chunks.get()
            if chunk is None:
                raise _Abandoned
            if chunk == _END:
                self._ended = True
                return 0
            self._rest = memoryview(chunk)
        size = min(len(buffer), len(self._rest))
        buffer[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size

    def drain(self) -> None:
        """Take what the upload still sends after the inspector stopped reading."""
        while not self._ended:
            chunk = self._chunks.get()
            self._ended = chunk is None or chunk == _END


class Inspecting:
    """``async for chunk in inspecting.through(chunks)`` passes the chunks on, feeding the
    inspector; ``await inspecting.result()`` is its verdict once they have all passed."""

    def __init__(self, inspector: Inspector, name: str, options: Mapping[str, Any]) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(_QUEUED)
        self._feed = _Feed(self._chunks)
        self._task = asyncio.create_task(asyncio.to_thread(self._run, inspector, name,
                                                           options))

    def _run(self, inspector: Inspector, name: str,
             options: Mapping[str, Any]) -> Inspection | None:
        try:
            return inspector(io.BufferedReader(self._feed, 256 * 1024), name, options)
        except _Abandoned:
            return None
        finally:
            self._feed.drain()

    async def _put(self, chunk: bytes | None) -> None:
        try:
            self._chunks.put_nowait(chunk)
        except queue.Full:
            await asyncio.to_thread(self._chunks.put, chunk)

    async def through(self, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        ended = False
        try:
            async for chunk in chunks:
                if chunk:
                    await self._put(chunk)
                yield chunk
            ended = True
        finally:
            await self._put(_END if ended else None)

    async def result(self) -> Inspection | None:
        """The verdict; None when the upload did not reach its end."""
        return await self._task


async def inspect_file(inspector: Inspector, path: Path, name: str,
                       options: Mapping[str, Any]) -> Inspection:
    """The same verdict on a file already on disk (its flow was not known as it came)."""

    def run() -> Inspection:
        with path.open("rb") as stream:
            return inspector(stream, name, options)

    return await asyncio.to_thread(run)
