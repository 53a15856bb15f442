"""The jobs table's SQL: claims, fenced outcomes, dispatch. Job states are :class:`JobState`.

A job goes ``scheduled`` → ``published`` (the relay put its message on a queue) →
``running`` (a worker holds a lease and a claim token) → ``done``, ``parked`` or
``cancelled``. Lost claims are taken back by ``broker.store.recovery``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import engine as eng
from broker.store.db import padded
from broker.store.documents import TransitionWrite, doc_of, job_of, write_transitions
from broker.store.job_state import ENDED, JobState
from broker.store.schema import documents, entities, files, jobs

__all__ = ["ENDED", "Claimed", "JobState"]


@dataclass(frozen=True)
class Claimed:
    """What one claim transaction read: jobs, their documents (as they were before the
    claim: the steps need their metadata and refs, not their state), files, settings."""

    jobs: dict[str, Any]
    documents: dict[str, Any]
    files: dict[str, list[Any]]
    settings: dict[str, dict[str, Any]]


async def claim(conn: AsyncConnection, job_ids: Iterable[str], worker: str, token: str,
                now: float, lease: float) -> Claimed:
    """Take the jobs not taken yet (or taken by this very token, tried again) with a lease,
    mark their documents running and read what the steps need, in one transaction."""
    job_rows = {row.id: row for row in await conn.execute(_CLAIM, {
        "ids": padded(sorted(set(job_ids))), "now": now, "worker": worker, "token": token,
        "until": now + lease})}
    if not job_rows:
        return Claimed({}, {}, {}, {})
    # Documents after jobs, in id order: the claim's lock order since it has one.
    locked = await lock_documents(conn, (j.document_id for j in job_rows.values()))
    doc_rows = {doc_id: row for doc_id, row in locked.items() if row.state not in eng.TERMINAL}
    ended = [j.id for j in job_rows.values() if j.document_id not in doc_rows]
    if ended:
        await conn.execute(jobs.update().where(jobs.c.id.in_(padded(ended))).values(
            state=JobState.CANCELLED, finished_at=now, last_error="document no longer active"))
    if not doc_rows:
        return Claimed(job_rows, {}, {}, {})
    # The document runs the step: a transition of the engine's, journaled like any other.
    writes = []
    for job in sorted(job_rows.values(), key=lambda j: j.document_id):
        if (row := doc_rows.get(job.document_id)) is not None:
            doc = doc_of(row)
            writes.append(TransitionWrite(doc, row.entity, eng.claimed(doc, job_of(job), worker)))
    await write_transitions(conn, writes, now)
    file_rows: dict[str, list[Any]] = {}
    for f in await conn.execute(_FILES_OF, {"ids": padded(doc_rows)}):
        file_rows.setdefault(f.document_id, []).append(f)
    settings = {row.siren: row.connectors for row in await conn.execute(
        _SETTINGS, {"sirens": padded({d.entity for d in doc_rows.values()})})}
    return Claimed(job_rows, doc_rows, file_rows, settings)


async def lock_documents(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, Any]:
    """The documents' rows, locked in id order (the lock order of every writer)."""
    return {row.id: row for row in await conn.execute(_LOCK_DOCUMENTS, {
        "ids": padded(sorted(set(ids)))})}


async def fence(conn: AsyncConnection, claims: Iterable[tuple[str, str]], now: float) -> set[str]:
    """End the jobs whose (id, token) still hold their claim; the ids that did."""
    return set((await conn.execute(_FENCE, {"claims": padded(claims), "now": now})).scalars())


async def set_outcomes(conn: AsyncConnection, updates: Sequence[dict[str, Any]]) -> None:
    """``{"_id", "state", "last_error"}`` for each job whose end is not a plain ``done``."""
    if updates:
        await conn.execute(_UPDATE, list(updates))


async def due(conn: AsyncConnection, now: float, limit: int) -> list[Any]:
    """Scheduled jobs due now, oldest first, locked for this relay (SKIP LOCKED)."""
    return list((await conn.execute(_DUE, {"now": now, "limit": limit})).all())


async def mark_published(conn: AsyncConnection, ids: Iterable[str], now: float) -> None:
    await conn.execute(_PUBLISHED, {"ids": padded(ids), "now": now})


async def republish_forgotten(conn: AsyncConnection, now: float, older_than: float) -> None:
    """Jobs published long ago and never claimed go out again (a message lost anyway)."""
    await conn.execute(jobs.update().where(
        jobs.c.state == JobState.PUBLISHED, jobs.c.published_at < now - older_than,
    ).values(state=JobState.SCHEDULED, due_at=now))


async def reschedule_published(conn: AsyncConnection, now: float) -> int:
    """Every published job goes out again (in-process queues died with the last process)."""
    result = await conn.execute(jobs.update().where(
        jobs.c.state == JobState.PUBLISHED).values(state=JobState.SCHEDULED, due_at=now))
    return int(result.rowcount or 0)


async def get(conn: AsyncConnection, job_id: str) -> Any | None:
    return (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()


async def park(conn: AsyncConnection, job_id: str, now: float, reason: str) -> None:
    await conn.execute(jobs.update().where(jobs.c.id == job_id).values(
        state=JobState.PARKED, finished_at=now, last_error=reason))


# The statements of every claim, commit and relay tick, built once: building and keying a
# statement costs as much as running it.
_CLAIM = jobs.update().where(
    jobs.c.id.in_(sa.bindparam("ids", expanding=True)),
    sa.or_(jobs.c.state.in_((JobState.PUBLISHED, JobState.SCHEDULED)),
           sa.and_(jobs.c.state == JobState.RUNNING,
                   # Lease ran out, or this very claim, tried again after an outage.
                   sa.or_(jobs.c.lease_until < sa.bindparam("now"),
                          jobs.c.claim_token == sa.bindparam("token")))),
).values(state=JobState.RUNNING, worker_id=sa.bindparam("worker"),
         claim_token=sa.bindparam("token"), lease_until=sa.bindparam("until")
         ).returning(*jobs.c)
_FILES_OF = sa.select(files).where(
    files.c.document_id.in_(sa.bindparam("ids", expanding=True))).order_by(files.c.id)
_SETTINGS = sa.select(entities.c.siren, entities.c.connectors).where(
    entities.c.siren.in_(sa.bindparam("sirens", expanding=True)))
# Documents first, in id order: the lock order of the API's cancel and retry.
_LOCK_DOCUMENTS = sa.select(documents).where(
    documents.c.id.in_(sa.bindparam("ids", expanding=True))
).order_by(documents.c.id).with_for_update()
# Each outcome applies only if its job still carries the token of its claim.
_FENCE = jobs.update().where(
    sa.tuple_(jobs.c.id, jobs.c.claim_token).in_(sa.bindparam("claims", expanding=True)),
    jobs.c.state == JobState.RUNNING,
).values(state=JobState.DONE, finished_at=sa.bindparam("now")).returning(jobs.c.id)
_UPDATE = jobs.update().where(jobs.c.id == sa.bindparam("_id"))
_DUE = sa.select(jobs.c.id, jobs.c.connector).where(
    jobs.c.state == JobState.SCHEDULED, jobs.c.due_at <= sa.bindparam("now"),
).order_by(jobs.c.due_at).limit(sa.bindparam("limit")).with_for_update(skip_locked=True)
_PUBLISHED = jobs.update().where(jobs.c.id.in_(sa.bindparam("ids", expanding=True))).values(
    state=JobState.PUBLISHED, published_at=sa.bindparam("now"))
