"""Documents peers send on their own (a préfecture's letters), fetched on a cadence.

For each entity whose configuration names a connector able to list such
documents, the ingestor stores each one as a document of its flow, linked to
the document it is about, exactly once (the peer's id is the unique key), and
only then tells the peer it was received.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from sqlalchemy.exc import IntegrityError

from broker import engine as eng
from broker import journal
from broker.connector import Incoming, IngestSource
from broker.ids import new_id
from broker.outcomes import StepError
from broker.runtime import Runtime, now
from broker.store import documents as docs
from broker.store import entities as stored_entities
from broker.store.documents import StoredFile

log = structlog.get_logger("demat.ingest")


class Ingestor:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._task: asyncio.Task[None] | None = None
        self.sources = {name: c for name, c in runtime.connectors.items()
                        if isinstance(c, IngestSource)}

    async def start(self) -> None:
        if self.sources:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        interval = self.rt.settings.seconds("ingest_interval")
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    await self.pass_once(http)
                except Exception:
                    log.exception("ingest pass failed")
                await asyncio.sleep(interval)

    async def pass_once(self, http: aiohttp.ClientSession) -> int:
        """Ask every configured source once; return how many documents were stored."""
        async with self.rt.db.connect() as conn:
            rows = await stored_entities.all_settings(conn)
        stored = 0
        for siren, connectors in rows:
            for name, source in self.sources.items():
                config = connectors.get(self.rt.connectors[name].settings_key)
                if config:
                    stored += await self._entity(http, siren, name, source, config)
        return stored

    async def _entity(self, http: aiohttp.ClientSession, entity: str, name: str,
                      source: IngestSource, config: dict[str, Any]) -> int:
        workdir = Path(tempfile.mkdtemp(prefix="ingest-", dir=self.rt.settings.tmp_dir))
        stored = 0
        try:
            for item in await source.incoming(config, entity, http, workdir):
                document_id = await store(self.rt, entity, item, f"connector:{name}")
                stored += document_id is not None
                # Stored now (or earlier, by a pass whose acknowledgement was lost).
                await source.acknowledge(config, http, item.key)
        except StepError as exc:
            log.warning("ingest failed", entity=entity, connector=name, error=str(exc))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return stored


async def store(rt: Runtime, entity: str, item: Incoming, actor: str) -> str | None:
    """Store one incoming document; None when it was stored before."""
    flow = rt.flows[item.flow]
    async with rt.db.connect() as conn:
        if await docs.with_unique_key(conn, entity, flow.name, item.key) is not None:
            return None
        related = None
        if item.link:
            related = await docs.with_metadata(conn, entity, *item.link)
    files = []
    for new in item.files:
        staged = await rt.blobs.stage_file(new.path)
        await rt.blobs.commit(staged)
        files.append(StoredFile(new.role, new.name, new.content_type, staged.size,
                                staged.sha256))
    t = now()
    doc = eng.Doc(new_id(), flow.name, eng.QUEUED, None, 0,
                  {**item.metadata, "related_document": related})
    transition = eng.start(flow, doc, t, actor, [(f.role, f.name) for f in files])
    if related:
        transition.journal.append(journal.Entry(
            "incoming", {"document": doc.id, "flow": flow.name, "summary": item.summary},
            related, actor))
    try:
        async with rt.db.begin() as conn:
            await docs.insert_documents(conn, [docs.NewDocument(
                docs.TransitionWrite(doc, entity, transition), files, item.key)], t)
    except IntegrityError:
        return None  # another relay stored it meanwhile
    log.info("incoming document stored", document=doc.id, flow=flow.name, related=related)
    return doc.id
