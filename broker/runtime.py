"""The pieces a process runs with, opened and closed together."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from broker import accounts
from broker.batch import Batcher
from broker.blobs import BlobStore
from broker.catalog import Catalog
from broker.connector import Connector
from broker.engine import Policies
from broker.flows.base import Flow
from broker.settings import Settings
from broker.store.db import make_engine
from broker.store.migrate import upgrade
from broker.store.outage import StoreGate
from broker.transport import make_transport
from broker.transport.base import Transport
from broker.ttlcache import TtlCache


class Notifier:
    """Wakes the in-process relay when new work was committed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()


@dataclass
class Runtime:
    settings: Settings
    db: AsyncEngine
    blobs: BlobStore
    transport: Transport
    # The flows served and the connectors that run their steps.
    catalog: Catalog
    notifier: Notifier = field(default_factory=Notifier)
    # Group-commit writers of this process, by use (created by their users).
    writers: dict[str, Batcher[Any, Any]] = field(default_factory=dict)
    # Entities seen in the store lately: intake need not look them up each time.
    known_entities: TtlCache[bool] = field(default_factory=TtlCache)
    # Whether the store answers: work waits on it during an outage.
    gate: StoreGate = field(init=False)

    def __post_init__(self) -> None:
        self.gate = StoreGate(self.db)

    @property
    def connectors(self) -> Mapping[str, Connector]:
        return self.catalog.connectors

    @property
    def flows(self) -> Mapping[str, Flow]:
        return self.catalog.flows

    @property
    def policies(self) -> Policies:
        return Policies(self.settings.retry_policy, self.settings.poll_policy)

    @property
    def embedded(self) -> bool:
        return self.transport.name == "embedded"

    @classmethod
    async def open(cls, settings: Settings, catalog: Catalog, *, migrate: bool = True) -> Runtime:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        blobs = BlobStore(settings.blob_dir, settings.tmp_dir)
        blobs.ensure()
        db = await prepare_store(settings, catalog, migrate=migrate)
        transport = make_transport(settings.amqp_url, delivery_limit=settings.delivery_limit)
        await transport.start()
        for name in catalog.connectors:
            await transport.declare(transport.work_queue(name))
        return cls(settings, db, blobs, transport, catalog)

    async def close(self) -> None:
        await self.gate.close()
        await self.transport.close()
        await self.db.dispose()


async def prepare_store(settings: Settings, catalog: Catalog, *,
                        migrate: bool = True) -> AsyncEngine:
    """Migrate the database, load the entities the TOML config declares, return an engine.

    The declared settings are checked against the connectors' models: a bad value stops
    the start, naming the entity, the connector and the field.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        await upgrade(settings.db_url)
    db = make_engine(settings.db_url)
    declared = settings.entities_file()
    if declared:
        async with db.begin() as conn:
            await accounts.sync_from_config(conn, declared, catalog.settings)
    return db


def now() -> float:
    return time.time()
