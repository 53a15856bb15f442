"""State events: the outbox the relay publishes from, then a bounded recent history."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.store.db import padded
from broker.store.schema import events

# How much history is kept once published: whichever bound is reached first.
KEEP_COUNT = 10_000
KEEP_SECONDS = 86_400.0


async def pending(conn: AsyncConnection, limit: int) -> list[Any]:
    """Events not yet published, oldest first, locked for this relay (SKIP LOCKED)."""
    return list((await conn.execute(_PENDING, {"limit": limit})).all())


async def mark_published(conn: AsyncConnection, ids: list[int], now: float) -> None:
    if ids:
        await conn.execute(_PUBLISHED, {"ids": padded(ids), "now": now})


async def prune(conn: AsyncConnection, now: float) -> None:
    """Forget published events past the bounds of the recent history."""
    newest = await conn.scalar(sa.select(sa.func.max(events.c.id)))
    if newest is None:
        return
    await conn.execute(events.delete().where(
        events.c.published_at.is_not(None),
        sa.or_(events.c.id <= newest - KEEP_COUNT, events.c.published_at < now - KEEP_SECONDS)))


async def recent(conn: AsyncConnection, *, after: int = 0, limit: int = 100,
                 entity: str | None = None, flow: str | None = None) -> list[Any]:
    """Events after id ``after``, oldest first (what a page opened late catches up with)."""
    query = sa.select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
    if entity is not None:
        query = query.where(events.c.entity == entity)
    if flow is not None:
        query = query.where(events.c.routing_key.startswith(f"{flow}."))
    return list((await conn.execute(query)).all())


# Built once (building and keying a statement costs as much as running it).
_PENDING = sa.select(events).where(events.c.published_at.is_(None)).order_by(
    events.c.id).limit(sa.bindparam("limit")).with_for_update(skip_locked=True)
_PUBLISHED = events.update().where(events.c.id.in_(sa.bindparam("ids", expanding=True))).values(
    published_at=sa.bindparam("now"))


async def last_id(conn: AsyncConnection) -> int:
    """The newest event's id (0 when none): where a page's live stream starts from."""
    return int(await conn.scalar(sa.select(sa.func.max(events.c.id))) or 0)
