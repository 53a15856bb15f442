"""Fetches from peers that keep a cursor: each entity's Chorus Pro invoices.

Every process with the relay role looks, each ``fetch_tick``, at the (entity, source)
pairs whose fetch is due; it runs one only once it holds the pair's lease (``store.
cursors``), renewed while it runs, so two processes never fetch for one entity at once.
A run asks the source what changed since the cursor, stores one document per thing found
that needs work — never two for one key: the store's unique key, and the keys kept with
the cursor for a while, since a document that ended rejected frees its unique key — and
journals what it found, created and skipped. A failed run keeps its cursor and is tried
again at the next cadence; its error is journaled.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from broker import journal
from broker.connector import Connector, Fetched, FetchSource, Incoming
from broker.ingest import store
from broker.outcomes import StepError
from broker.retry import InCallRetry
from broker.runtime import Runtime, now
from broker.store import cursors
from broker.store import entities as stored_entities
from broker.store import journal as stored_journal

log = structlog.get_logger("demat.fetch")

# Keys stored are remembered this long with the cursor (beyond the peers' overlap windows).
SEEN_FOR = 7 * 86_400.0
SEEN_KEY = "_seen"


@dataclass
class Run:
    """What one fetch did, as journaled."""

    entity: str
    source: str
    found: int = 0
    created: list[str] = field(default_factory=list)
    known: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def journaled(self) -> dict[str, Any]:
        return {"source": self.source, "entity": self.entity, "found": self.found,
                "created": len(self.created), "known": self.known,
                "skipped": sum(self.skipped.values()),
                **({"skipped_why": self.skipped} if self.skipped else {}),
                **({"documents": self.created[:100]} if self.created else {}),
                **({"error": self.error} if self.error else {})}


class Fetcher:
    def __init__(self, runtime: Runtime, owner: str | None = None) -> None:
        self.rt = runtime
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.sources: dict[str, Connector] = {
            name: c for name, c in runtime.connectors.items() if isinstance(c, FetchSource)}
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[Run]] = set()

    async def start(self) -> None:
        if self.sources:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        tick = self.rt.settings.seconds("fetch_tick")
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    await self.start_due(http)
                except Exception:
                    log.exception("fetch pass failed")
                await asyncio.sleep(tick)

    async def start_due(self, http: aiohttp.ClientSession) -> list[asyncio.Task[Run]]:
        """Start a run for each due pair this process could lease (not awaited)."""
        started = []
        for entity, name, config in await self._configured():
            claimed = await self._claim(entity, name)
            if claimed is None:
                continue
            task = asyncio.create_task(self._run(http, claimed, config))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            started.append(task)
        return started

    async def pass_once(self, http: aiohttp.ClientSession) -> list[Run]:
        """Run every due fetch this process could lease, and wait for them."""
        return list(await asyncio.gather(*await self.start_due(http)))

    async def _configured(self) -> list[tuple[str, str, dict[str, Any]]]:
        async with self.rt.db.connect() as conn:
            rows = await stored_entities.all_settings(conn)
        return [(entity, name, config)
                for entity, settings in rows
                for name, connector in self.sources.items()
                if (config := settings.get(connector.settings_key))]

    async def _claim(self, entity: str, name: str) -> cursors.Claimed | None:
        t = now()
        async with self.rt.db.begin() as conn:
            await cursors.ensure(conn, entity, name, t)
            return await cursors.claim(conn, entity, name, self.owner, t,
                                       self.rt.settings.seconds("fetch_lease"))

    async def _renew(self, claimed: cursors.Claimed) -> None:
        lease = self.rt.settings.seconds("fetch_lease")
        while True:
            await asyncio.sleep(lease / 3)
            async with self.rt.db.begin() as conn:
                if not await cursors.renew(conn, claimed, self.owner, now() + lease):
                    log.warning("fetch lease lost", entity=claimed.entity,
                                source=claimed.source)
                    return

    async def _run(self, http: aiohttp.ClientSession, claimed: cursors.Claimed,
                   config: dict[str, Any]) -> Run:
        source = self.sources[claimed.source]
        assert isinstance(source, FetchSource)
        run = Run(claimed.entity, claimed.source)
        renewing = asyncio.create_task(self._renew(claimed))
        cursor = dict(claimed.cursor or {})
        seen: dict[str, float] = dict(cursor.pop(SEEN_KEY, None) or {})
        try:
            try:
                fetched = await InCallRetry(self.rt.policies.retry)(
                    lambda: source.fetch(config, claimed.entity, http, cursor or None))
            except StepError as exc:
                run.error = exc.message
            else:
                cursor = await self._store(run, fetched, seen)
        finally:
            renewing.cancel()
        t = now()
        horizon = t - SEEN_FOR
        kept = {key: at for key, at in seen.items() if at >= horizon}
        every = source.fetch_every(config, claimed.entity)
        async with self.rt.db.begin() as conn:
            held = await cursors.release(conn, claimed, self.owner, t,
                                         cursor={**cursor, SEEN_KEY: kept},
                                         next_run_at=t + every, result=run.journaled())
            await stored_journal.append(conn, [journal.Entry(
                "fetch", run.journaled(), None, f"connector:{claimed.source}")], t)
        if not held:
            log.warning("fetch lease was lost; its cursor was not kept", entity=run.entity,
                        source=run.source)
        log.info("fetched", **run.journaled())
        return run

    async def _store(self, run: Run, fetched: Fetched, seen: dict[str, float]
                     ) -> dict[str, Any]:
        actor = f"connector:{run.source}"
        for found in fetched.found:
            run.found += 1
            if found.skip is not None:
                run.skipped[found.skip] = run.skipped.get(found.skip, 0) + 1
                continue
            if found.key in seen:
                run.known += 1
                continue
            document = await store(self.rt, run.entity, Incoming(
                key=found.key, flow=found.flow, metadata=found.metadata, files=(),
                summary=found.summary), actor)
            seen[found.key] = now()
            if document is None:
                run.known += 1
            else:
                run.created.append(document)
        if run.created:
            self.rt.notifier.notify()
        return dict(fetched.cursor)
