"""Runtimes on SQLite and PostgreSQL, and depot documents written straight to the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from broker import accounts
from broker import engine as eng
from broker.runtime import Runtime, now
from broker.settings import Settings
from broker.store import documents as docs
from broker.store.schema import jobs
from broker.wiring import catalog

ENTITY = "214000150"


async def open_runtime(database_url: str | None, data_dir: Path, **settings: Any) -> Runtime:
    runtime = await Runtime.open(
        Settings(data_dir=data_dir, database_url=database_url, **settings), catalog())
    async with runtime.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune", {"depot": {"url": "http://x"}},
                                     runtime.catalog.settings)
    return runtime


async def new_documents(rt: Runtime, count: int) -> list[tuple[str, str]]:
    """``count`` depot documents with their first job scheduled: (document id, job id)."""
    flow, t, new = rt.flows["depot"], now(), []
    for _ in range(count):
        doc = eng.Doc(docs.new_id(), "depot", eng.QUEUED, None, 0, {})
        new.append(docs.NewDocument(docs.TransitionWrite(doc, ENTITY, eng.start(
            flow, doc, t, "test")), [docs.StoredFile("document", "a.xml", "text/xml", 3,
                                                     "0" * 64)]))
    async with rt.db.begin() as conn:
        await docs.insert_documents(conn, new, t)
        rows = (await conn.execute(sa.select(jobs.c.document_id, jobs.c.id))).all()
    by_doc = {r.document_id: r.id for r in rows}
    return [(n.start.doc.id, by_doc[n.start.doc.id]) for n in new]


async def states(rt: Runtime, table: sa.Table, ids: list[str]) -> list[str]:
    async with rt.db.connect() as conn:
        found = dict((await conn.execute(sa.select(table.c.id, table.c.state).where(
            table.c.id.in_(ids)))).all())
    return [found[i] for i in ids]
