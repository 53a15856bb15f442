"""What the operator dashboard reads: counts, activity, stuck and waiting documents, retries,
parked groups, connector health and searches. Every read takes an optional entity: an
entity's session sees its own documents only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import engine as eng
from broker.store import counts as kept
from broker.store.job_state import JobState
from broker.store.keys import documents_with
from broker.store.schema import documents, jobs

Row = Any


def _scoped(query: sa.Select[Any], entity: str | None) -> sa.Select[Any]:
    return query.where(documents.c.entity == entity) if entity else query


async def counts(conn: AsyncConnection, entity: str | None) -> list[tuple[str, str, int]]:
    """Documents per (flow, state), from the counts kept as they change."""
    return await kept.by_flow_and_state(conn, entity)


async def finished(conn: AsyncConnection, entity: str | None,
                   since: float) -> list[tuple[int, str, int]]:
    """Documents that ended since ``since``: (hour since ``since``, state, count)."""
    return await kept.ended_since(conn, entity, since)


def _overdue(limits: Mapping[tuple[str, str], float], default: float,
             now: float) -> sa.ColumnElement[bool]:
    """The document has been in its step longer than that step is expected to take."""
    cutoff = sa.case(*(((documents.c.flow == flow) & (documents.c.step == step), now - seconds)
                       for (flow, step), seconds in limits.items()),
                     else_=now - default) if limits else sa.literal(now - default)
    return documents.c.step_since < cutoff


async def stuck(conn: AsyncConnection, entity: str | None, limits: Mapping[tuple[str, str],
                float], default: float, now: float, limit: int) -> tuple[list[Row], int]:
    """Active documents past their step's expected time, longest first, and how many."""
    where = (documents.c.state.in_(sorted(eng.ACTIVE)), _overdue(limits, default, now))
    query = _scoped(sa.select(documents).where(*where), entity)
    rows = list((await conn.execute(query.order_by(documents.c.step_since).limit(limit))).all())
    total = await conn.scalar(_scoped(sa.select(sa.func.count()).select_from(documents)
                                      .where(*where), entity))
    return rows, int(total or 0)


@dataclass(frozen=True)
class Waiting:
    flow: str
    step: str | None
    count: int
    oldest_since: float
    oldest_id: str


async def waiting(conn: AsyncConnection, entity: str | None) -> list[Waiting]:
    """Per (flow, step) of active documents: how many, and the one waiting longest."""
    active = documents.c.state.in_(sorted(eng.ACTIVE))
    groups = (await conn.execute(_scoped(sa.select(
        documents.c.flow, documents.c.step, sa.func.count(), sa.func.min(documents.c.step_since))
        .where(active).group_by(documents.c.flow, documents.c.step), entity))).all()
    found = []
    for flow, step, count, oldest in groups:
        oldest_id = await conn.scalar(_scoped(sa.select(documents.c.id).where(
            active, documents.c.flow == flow, documents.c.step == step,
            documents.c.step_since == oldest).limit(1), entity))
        found.append(Waiting(flow, step, int(count), float(oldest or 0), str(oldest_id)))
    return sorted(found, key=lambda w: w.oldest_since)


async def retrying(conn: AsyncConnection, entity: str | None, limit: int) -> list[Row]:
    """Documents waiting for their next attempt, soonest first."""
    return list((await conn.execute(_scoped(sa.select(documents).where(
        documents.c.state == eng.RETRYING), entity).order_by(documents.c.next_due_at)
        .limit(limit))).all())


@dataclass(frozen=True)
class ParkedGroup:
    flow: str
    step: str | None
    error: str
    count: int
    newest: float


async def parked_groups(conn: AsyncConnection, entity: str | None,
                        limit: int) -> list[ParkedGroup]:
    """Parked (failed) documents grouped by flow, step and error, largest groups first."""
    error = sa.func.coalesce(documents.c.last_error, "")
    rows = await conn.execute(_scoped(sa.select(
        documents.c.flow, documents.c.step, error, sa.func.count(),
        sa.func.max(documents.c.updated_at)).where(documents.c.state == eng.FAILED)
        .group_by(documents.c.flow, documents.c.step, error), entity)
        .order_by(sa.func.count().desc()).limit(limit))
    return [ParkedGroup(f, s, e, int(n), float(t)) for f, s, e, n, t in rows]


@dataclass(frozen=True)
class Health:
    connector: str
    last_success: float | None
    finished: int
    failed: int

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None


async def health(conn: AsyncConnection, connectors: Sequence[str], entity: str | None,
                 since: float) -> list[Health]:
    """Per connector: its last successful job and its jobs ended since ``since`` (and how
    many of those ended in an error)."""
    ended = jobs.c.state.in_([JobState.DONE, JobState.PARKED])
    failed = sa.func.sum(sa.case((jobs.c.last_error.is_not(None), 1), else_=0))
    recent = sa.select(jobs.c.connector, sa.func.count(), failed).where(
        ended, jobs.c.finished_at >= since).group_by(jobs.c.connector)
    if entity:
        recent = recent.join(documents, documents.c.id == jobs.c.document_id).where(
            documents.c.entity == entity)
    counted = {c: (int(n), int(f or 0)) for c, n, f in await conn.execute(recent)}
    found = []
    for name in connectors:
        last = sa.select(sa.func.max(jobs.c.finished_at)).where(
            jobs.c.connector == name, jobs.c.state == JobState.DONE,
            jobs.c.last_error.is_(None))
        if entity:
            last = last.join(documents, documents.c.id == jobs.c.document_id).where(
                documents.c.entity == entity)
        n, f = counted.get(name, (0, 0))
        found.append(Health(name, await conn.scalar(last), n, f))
    return found


async def latest_change(conn: AsyncConnection, entity: str) -> Row | None:
    """The entity's document that changed last (its last activity)."""
    return (await conn.execute(sa.select(documents).where(documents.c.entity == entity)
                               .order_by(documents.c.updated_at.desc()).limit(1))).first()


# A search's state: any active one.
ACTIVE = "actifs"


@dataclass(frozen=True)
class Search:
    entity: str | None = None
    flow: str | None = None
    state: str | None = None
    step: str | None = None
    # Created in [since, until).
    since: float | None = None
    until: float | None = None
    # A document id or a domain key (act number, IDActe, NomFic, invoice number).
    ref: str | None = None
    # "new" (newest first) or "old".
    order: str = "new"


async def search(conn: AsyncConnection, s: Search, *, limit: int,
                 after: str | None = None) -> list[Row]:
    """Documents matching ``s``, ``limit + 1`` at most, continuing after the id ``after``."""
    query = sa.select(documents)
    for column, value in ((documents.c.entity, s.entity), (documents.c.flow, s.flow),
                          (documents.c.step, s.step)):
        if value:
            query = query.where(column == value)
    if s.state == ACTIVE:
        query = query.where(documents.c.state.in_(sorted(eng.ACTIVE)))
    elif s.state:
        query = query.where(documents.c.state == s.state)
    if s.since is not None:
        query = query.where(documents.c.created_at >= s.since)
    if s.until is not None:
        query = query.where(documents.c.created_at < s.until)
    if s.ref:
        # One IN over a union (not an OR): both databases then look each id up by key.
        query = query.where(documents.c.id.in_(sa.union(
            documents_with(s.ref), sa.select(sa.literal(s.ref)))))
    newest_first = s.order != "old"
    if after:
        query = query.where(documents.c.id < after if newest_first else documents.c.id > after)
    order = documents.c.id.desc() if newest_first else documents.c.id
    return list((await conn.execute(query.order_by(order).limit(limit + 1))).all())
