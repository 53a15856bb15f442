"""The read side: documents listed, paged and filtered for the API, the CLI and dashboards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import engine as eng
from broker.store.jobs import JobState
from broker.store.schema import documents, jobs


async def by_submission_key(conn: AsyncConnection, entity: str, key: str) -> Any | None:
    return (await conn.execute(sa.select(documents).where(
        documents.c.entity == entity, documents.c.submission_key == key))).first()


async def latest_completed(conn: AsyncConnection, entity: str, flow: str, *,
                           where: tuple[str, str]) -> Any | None:
    """The entity's latest completed document of ``flow`` whose metadata ``key`` is ``value``."""
    key, value = where
    return (await conn.execute(sa.select(documents).where(
        documents.c.entity == entity, documents.c.flow == flow,
        documents.c.state == eng.COMPLETED, documents.c.metadata[key].as_string() == value,
    ).order_by(documents.c.id.desc()).limit(1))).first()


async def documents_page(conn: AsyncConnection, *, limit: int, entity: str | None = None,
                         flow: str | None = None, state: str | None = None,
                         before: str | None = None,
                         metadata: Mapping[str, str] | None = None) -> list[Any]:
    """Newest first, ``limit + 1`` rows at most (the extra one says there are more);
    ``metadata``: top-level metadata values the documents must have."""
    query = sa.select(documents).order_by(documents.c.id.desc()).limit(limit + 1)
    for key, wanted in (metadata or {}).items():
        query = query.where(documents.c.metadata[key].as_string() == wanted)
    for column, value in ((documents.c.entity, entity), (documents.c.flow, flow),
                          (documents.c.state, state)):
        if value:
            query = query.where(column == value)
    if before:
        query = query.where(documents.c.id < before)
    return list((await conn.execute(query)).all())


@dataclass(frozen=True)
class Group:
    """Parked documents as the dashboard groups them: exactly this flow, step and error,
    parked no later than ``until`` (what the page showed, not what failed since)."""

    flow: str
    step: str | None
    error: str
    until: float


def _parked(entity: str | None, flow: str | None, step: str | None,
            error: str | None, group: Group | None = None) -> sa.Select[Any]:
    query = sa.select(documents).where(documents.c.state == eng.FAILED)
    for column, value in ((documents.c.entity, entity), (documents.c.flow, flow),
                          (documents.c.step, step)):
        if value:
            query = query.where(column == value)
    if error:
        query = query.where(documents.c.last_error.contains(error, autoescape=True))
    if group is not None:
        query = query.where(
            documents.c.flow == group.flow,
            documents.c.step == group.step if group.step else documents.c.step.is_(None),
            sa.func.coalesce(documents.c.last_error, "") == group.error,
            documents.c.updated_at <= group.until)
    return query


async def parked_page(conn: AsyncConnection, *, limit: int, entity: str | None = None,
                      flow: str | None = None, before: str | None = None
                      ) -> tuple[list[Any], dict[str, str]]:
    """Failed documents newest first (``limit + 1`` at most), and the connector each is
    parked at."""
    query = _parked(entity, flow, None, None).order_by(documents.c.id.desc())
    if before:
        query = query.where(documents.c.id < before)
    rows = list((await conn.execute(query.limit(limit + 1))).all())
    connectors = dict((await conn.execute(
        sa.select(jobs.c.document_id, jobs.c.connector).where(
            jobs.c.document_id.in_([r.id for r in rows[:limit]]),
            jobs.c.state == JobState.PARKED))).all())
    return rows, connectors


async def parked_ids(conn: AsyncConnection, *, limit: int, ids: Sequence[str] = (),
                     entity: str | None = None, flow: str | None = None,
                     step: str | None = None, error: str | None = None,
                     group: Group | None = None) -> tuple[list[str], int]:
    """Up to ``limit`` parked documents matching, oldest first, and how many more match."""
    query = _parked(entity, flow, step, error, group).order_by(documents.c.id)
    if ids:
        query = query.where(documents.c.id.in_(list(ids)))
    chosen = [r.id for r in (await conn.execute(query.limit(limit))).all()]
    matching = (await conn.execute(sa.select(sa.func.count()).select_from(
        query.subquery()))).scalar_one()
    return chosen, int(matching) - len(chosen)
