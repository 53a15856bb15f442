"""Open dashboard pages that listen live: signed-in sessions, each holding the live streams a
session may hold, read until closed. Used by ``depot.py --live-pages N``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from broker.web.live import PER_SESSION


@dataclass
class LivePages:
    url: str
    token: str
    pages: int
    events: list[int] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    async def open(self) -> None:
        self.events = [0] * self.pages
        opened = 0
        while opened < self.pages:
            http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            self._sessions.append(http)
            async with http.post(f"{self.url}/ui/connexion", data={"jeton": self.token},
                                 headers={"Origin": self.url}, allow_redirects=False) as resp:
                assert resp.status == 303, await resp.text()
            for _ in range(min(PER_SESSION, self.pages - opened)):
                ready = asyncio.Event()
                self._tasks.append(asyncio.create_task(self._read(http, opened, ready)))
                await ready.wait()
                opened += 1

    async def _read(self, http: aiohttp.ClientSession, index: int, ready: asyncio.Event) -> None:
        async with http.get(f"{self.url}/ui/live", timeout=aiohttp.ClientTimeout()) as resp:
            assert resp.status == 200, resp.status
            ready.set()
            async for line in resp.content:
                if line.startswith(b"data: "):
                    self.events[index] += 1

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await task
        for http in self._sessions:
            await http.close()


@contextlib.asynccontextmanager
async def live_pages(url: str, token: str, pages: int) -> AsyncIterator[LivePages]:
    opened = LivePages(url, token, pages)
    try:
        if pages:
            await opened.open()
        yield opened
    finally:
        await opened.close()
