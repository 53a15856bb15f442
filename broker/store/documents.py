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
from broker.engine import CANCELLED, FAILED, REJECTED, Doc, Job, Noted, Transition
from broker.ids import new_id
from broker.store import counts, keys
from broker.store import journal as stored_journal
from broker.store.job_state import JobState
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


@dataclass(frozen=True)
class NewDocument:
    """A submitted document: its first transition, its files and its keys."""

    start: TransitionWrite
    files: Sequence[StoredFile]
    unique_key: str | None = None
    submission_key: str | None = None


async def insert_documents(conn: AsyncConnection, new: Sequence[NewDocument],
                           now: float) -> list[list[str]]:
    """Insert documents already in their first state; the ids of their files, in order."""
    rows, file_rows, file_ids = [], [], []
    for n in new:
        doc, first = n.start.doc, n.start.transition
        rows.append({
            "id": doc.id, "flow": doc.flow, "entity": n.start.entity, "state": first.state,
            "step": first.step, "run": first.run, "next_due_at": first.next_due_at,
            "last_error": first.last_error, "metadata": {**doc.metadata, **first.metadata},
            "refs": {}, "created_at": now, "updated_at": now, "step_since": now,
            "unique_key": None if first.state in RELEASES_KEY else n.unique_key,
            "submission_key": n.submission_key})
        ids = [new_id() for _ in n.files]
        file_rows += [_file_row(i, doc.id, f, now) for i, f in zip(ids, n.files, strict=True)]
        file_ids.append(ids)
    await conn.execute(_INSERT_DOCUMENTS, rows)
    moves, ended = counts.Moves(), counts.Ended()
    for n in new:
        counts.moved(moves, ended, n.start.entity, n.start.doc.flow, None,
                     n.start.transition.state, now)
    await keys.record(conn, [(n.start.doc.id, {**n.start.doc.metadata,
                                                **n.start.transition.metadata}) for n in new],
                      replace=False)
    if file_rows:
        await conn.execute(_INSERT_FILES, file_rows)
    await write_transitions(conn, [n.start for n in new], now, rows_written=True)
    await counts.record(conn, moves, ended)
    return file_ids


async def insert_files(conn: AsyncConnection, document_id: str, stored: Sequence[StoredFile],
                       now: float) -> list[str]:
    ids = [new_id() for _ in stored]
    if stored:
        await conn.execute(_INSERT_FILES, [_file_row(file_id, document_id, f, now)
                                            for file_id, f in zip(ids, stored, strict=True)])
    return ids


@dataclass(frozen=True)
class TransitionWrite:
    """One document's transition, as one commit writes it."""

    doc: Doc
    entity: str
    transition: Transition
    produced: Sequence[StoredFile] = ()


async def write_transition(conn: AsyncConnection, doc: Doc, entity: str, transition: Transition,
                           now: float, produced: Sequence[StoredFile] = ()) -> str | None:
    """Persist ``transition`` of ``doc``; return the id of the next job, if any."""
    (job_id,) = await write_transitions(conn, [TransitionWrite(doc, entity, transition,
                                                               produced)], now)
    return job_id


async def write_transitions(conn: AsyncConnection, writes: Sequence[TransitionWrite],
                            now: float, *, rows_written: bool = False) -> list[str | None]:
    """Persist several transitions with one statement per table; the next job ids, in order.

    Two writes for one document apply in order (the later one wins on the row).
    ``rows_written``: the document rows already hold the new state (intake).
    """
    # Rows of one key set go in one executemany; a document written again under another key
    # set starts a new round, so each document's writes apply in order.
    rounds: list[dict[frozenset[str], list[dict[str, Any]]]] = [{}]
    placed: dict[str, frozenset[str]] = {}
    new_files: list[tuple[str, StoredFile]] = []
    new_jobs: list[dict[str, Any]] = []
    new_events: list[dict[str, Any]] = []
    entries: list[journal.Entry] = []
    new_keys: list[tuple[str, dict[str, Any]]] = []
    moves, ended = counts.Moves(), counts.Ended()
    job_ids: list[str | None] = []
    for w in writes:
        doc, transition = w.doc, w.transition
        values: dict[str, Any] = {
            "_id": doc.id, "state": transition.state, "step": transition.step,
            "run": transition.run, "next_due_at": transition.next_due_at, "updated_at": now,
            "last_error": transition.last_error, "_step": transition.step, "_now": now,
        }
        if transition.metadata:
            values["metadata"] = {**doc.metadata, **transition.metadata}
            new_keys.append((doc.id, transition.metadata))
        if transition.state in RELEASES_KEY:
            values["unique_key"] = None
        if not rows_written:
            counts.moved(moves, ended, w.entity, doc.flow, doc.state, transition.state, now)
        keyset = frozenset(values)
        if placed.get(doc.id, keyset) != keyset:
            rounds.append({})
            placed.clear()
        placed[doc.id] = keyset
        rounds[-1].setdefault(keyset, []).append(values)
        new_files += [(doc.id, f) for f in w.produced]
        job_id = None
        if nxt := transition.next_job:
            job_id = new_id()
            new_jobs.append({
                "id": job_id, "document_id": doc.id, "connector": nxt.connector,
                "step": nxt.step, "kind": nxt.kind, "run": nxt.run, "polls": nxt.polls,
                "poll_deadline": nxt.poll_deadline, "state": JobState.SCHEDULED,
                "due_at": nxt.due_at, "created_at": now})
        job_ids.append(job_id)
        if transition.event:
            new_events.append({
                "routing_key": transition.event, "created_at": now, "entity": w.entity,
                "payload": {"id": doc.id, "flow": doc.flow, "entity": w.entity,
                            "state": transition.state, "step": transition.step}})
        entries += transition.journal
    if not rows_written:
        for updates in rounds:
            for rows in updates.values():
                await conn.execute(_UPDATE_DOCUMENT, rows)
        await keys.record(conn, new_keys)
    if new_files:
        await conn.execute(_INSERT_FILES, [
            _file_row(new_id(), document_id, f, now) for document_id, f in new_files])
    if new_jobs:
        await conn.execute(_INSERT_JOBS, new_jobs)
    if new_events:
        await conn.execute(_INSERT_EVENTS, new_events)
    await stored_journal.append(conn, entries, now)
    # Last: the counters' rows are locked until commit, the shortest time possible.
    await counts.record(conn, moves, ended)
    return job_ids


# Built once: a statement's construction and cache key cost as much as running it.
# A document enters its step when the step changes or when it leaves parking (replayed):
# decided from the row as it was, so every write has the same keys.
_UPDATE_DOCUMENT = documents.update().where(documents.c.id == sa.bindparam("_id")).values(
    step_since=sa.case((sa.or_(documents.c.step.is_distinct_from(sa.bindparam("_step")),
                               documents.c.state == FAILED), sa.bindparam("_now")),
                       else_=documents.c.step_since))
_INSERT_DOCUMENTS = documents.insert()
_INSERT_FILES = files.insert()
_INSERT_JOBS = jobs.insert()
_INSERT_EVENTS = events.insert()


async def write_noted(conn: AsyncConnection, doc: Doc, noted: Noted, now: float) -> None:
    """Merge ``noted``'s metadata into the document and journal it; nothing else moves."""
    await conn.execute(documents.update().where(documents.c.id == doc.id).values(
        metadata={**doc.metadata, **noted.metadata}, updated_at=now))
    await keys.record(conn, [(doc.id, noted.metadata)])
    await stored_journal.append(conn, noted.journal, now)


def _file_row(file_id: str, document_id: str, f: StoredFile, now: float) -> dict[str, Any]:
    return {"id": file_id, "document_id": document_id, "role": f.role, "name": f.name,
            "content_type": f.content_type, "size": f.size, "sha256": f.sha256,
            "step": f.step, "created_at": now}


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
        jobs.c.state.in_((JobState.SCHEDULED, JobState.PUBLISHED))).values(
        state=JobState.CANCELLED, finished_at=now, last_error=why))


async def set_ref(conn: AsyncConnection, document_id: str, key: str, value: str) -> None:
    row = await lock_document(conn, document_id)
    if row is None:
        return
    await conn.execute(documents.update().where(documents.c.id == document_id).values(
        refs={**row.refs, key: value}))


async def with_unique_key(conn: AsyncConnection, entity: str, flow: str, key: str) -> str | None:
    """The id of the entity's document of ``flow`` holding business key ``key``, if any."""
    found = await conn.scalar(sa.select(documents.c.id).where(
        documents.c.entity == entity, documents.c.flow == flow, documents.c.unique_key == key))
    return str(found) if found is not None else None


async def with_metadata(conn: AsyncConnection, entity: str, key: str, value: str) -> str | None:
    """The id of an entity's document whose metadata ``key`` is ``value``, if any."""
    found = await conn.scalar(sa.select(documents.c.id).where(
        documents.c.entity == entity, documents.c.metadata[key].as_string() == value))
    return str(found) if found is not None else None
