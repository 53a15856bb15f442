"""Reads and writes of documents, files and jobs.

``write_transition`` is the one place where an engine transition reaches the
database: document row, produced files, next job, journal and state event,
always inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import journal
from broker.engine import CANCELLED, REJECTED, Doc, Job, Transition
from broker.ids import new_id
from broker.store.schema import documents, events, files, jobs

# A refused or cancelled act never reached the préfecture: its number is free again.
RELEASES_KEY = frozenset({REJECTED, CANCELLED})


@dataclass(frozen=True)
class StoredFile:
    """A file to record: a blob already committed under ``sha256``."""

    role: str
    name: str
    content_type: str
    size: int
    sha256: str
    step: str | None = None


def doc_of(row: Any) -> Doc:
    return Doc(row.id, row.flow, row.state, row.step, row.run, row.metadata)


def job_of(row: Any) -> Job:
    return Job(row.step, row.kind, row.run, row.polls, row.poll_deadline)


async def insert_document(conn: AsyncConnection, doc: Doc, entity: str, now: float,
                          unique_key: str | None = None,
                          submission_key: str | None = None) -> None:
    await conn.execute(documents.insert().values(
        id=doc.id, flow=doc.flow, entity=entity, state=doc.state, step=doc.step, run=doc.run,
        metadata=dict(doc.metadata), refs={}, created_at=now, updated_at=now,
        unique_key=unique_key, submission_key=submission_key))


async def insert_files(conn: AsyncConnection, document_id: str, stored: Sequence[StoredFile],
                       now: float) -> list[str]:
    ids = [new_id() for _ in stored]
    if stored:
        await conn.execute(files.insert(), [
            {"id": file_id, "document_id": document_id, "role": f.role, "name": f.name,
             "content_type": f.content_type, "size": f.size, "sha256": f.sha256, "step": f.step,
             "created_at": now}
            for file_id, f in zip(ids, stored, strict=True)])
    return ids


async def write_transition(conn: AsyncConnection, doc: Doc, entity: str, transition: Transition,
                           now: float, produced: Sequence[StoredFile] = ()) -> str | None:
    """Persist ``transition`` of ``doc``; return the id of the next job, if any."""
    values: dict[str, Any] = {
        "state": transition.state, "step": transition.step, "run": transition.run,
        "next_due_at": transition.next_due_at, "updated_at": now,
        "last_error": transition.last_error,
    }
    if transition.metadata:
        values["metadata"] = {**doc.metadata, **transition.metadata}
    if transition.state in RELEASES_KEY:
        values["unique_key"] = None
    await conn.execute(documents.update().where(documents.c.id == doc.id).values(**values))
    await insert_files(conn, doc.id, produced, now)
    job_id = None
    if transition.next_job:
        nxt = transition.next_job
        job_id = new_id()
        await conn.execute(jobs.insert().values(
            id=job_id, document_id=doc.id, connector=nxt.connector, step=nxt.step, kind=nxt.kind,
            run=nxt.run, polls=nxt.polls, poll_deadline=nxt.poll_deadline, state="scheduled",
            due_at=nxt.due_at, created_at=now))
    if transition.event:
        await conn.execute(events.insert().values(
            routing_key=transition.event, created_at=now,
            payload={"id": doc.id, "flow": doc.flow, "entity": entity,
                     "state": transition.state, "step": transition.step}))
    await journal.append(conn, transition.journal, now)
    return job_id


async def add_file_once(conn: AsyncConnection, document_id: str, stored: StoredFile,
                        now: float) -> str:
    """Record ``stored`` unless the document already has that content under that role."""
    existing = (await conn.execute(sa.select(files.c.id).where(
        files.c.document_id == document_id, files.c.role == stored.role,
        files.c.sha256 == stored.sha256))).first()
    if existing:
        return str(existing.id)
    (file_id,) = await insert_files(conn, document_id, [stored], now)
    return file_id


async def get_document(conn: AsyncConnection, document_id: str) -> Any | None:
    return (await conn.execute(
        sa.select(documents).where(documents.c.id == document_id))).first()


async def get_files(conn: AsyncConnection, document_id: str) -> list[Any]:
    return list((await conn.execute(
        sa.select(files).where(files.c.document_id == document_id).order_by(files.c.id))).all())


async def lock_document(conn: AsyncConnection, document_id: str) -> Any | None:
    """The document row, locked for the rest of the transaction (PostgreSQL)."""
    return (await conn.execute(
        sa.select(documents).where(documents.c.id == document_id).with_for_update())).first()


async def cancel_open_jobs(conn: AsyncConnection, document_id: str, now: float,
                           why: str = "cancelled") -> None:
    """Close the document's scheduled/published jobs (a running one is fenced at commit)."""
    await conn.execute(jobs.update().where(
        jobs.c.document_id == document_id,
        jobs.c.state.in_(("scheduled", "published"))).values(
        state="cancelled", finished_at=now, last_error=why))


async def set_ref(conn: AsyncConnection, document_id: str, key: str, value: str) -> None:
    row = await lock_document(conn, document_id)
    if row is None:
        return
    await conn.execute(documents.update().where(documents.c.id == document_id).values(
        refs={**row.refs, key: value}))
