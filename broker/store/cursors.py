"""Fetch cursors: one row per (entity, source), claimed with a lease.

A claim is one conditional UPDATE (due, and no live lease), so of two processes asking at
once exactly one gets the row; the release is fenced by the owner, so a run whose lease
ran out and was taken over cannot write over its successor's cursor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.store.schema import fetch_cursors as table


@dataclass(frozen=True)
class Claimed:
    entity: str
    source: str
    cursor: dict[str, Any] | None


async def ensure(conn: AsyncConnection, entity: str, source: str, now: float) -> None:
    """A row for (entity, source), due now, unless there is one."""
    exists = await conn.scalar(sa.select(sa.func.count()).select_from(table).where(
        table.c.entity == entity, table.c.source == source))
    if exists:
        return
    try:
        async with conn.begin_nested():
            await conn.execute(table.insert().values(entity=entity, source=source,
                                                     next_run_at=now))
    except IntegrityError:
        pass  # another process made it meanwhile


async def claim(conn: AsyncConnection, entity: str, source: str, owner: str, now: float,
                lease: float) -> Claimed | None:
    """The row, leased to ``owner`` for ``lease`` seconds, when it is due and free."""
    taken = await conn.execute(table.update().where(
        table.c.entity == entity, table.c.source == source, table.c.next_run_at <= now,
        sa.or_(table.c.lease_until.is_(None), table.c.lease_until < now),
    ).values(lease_owner=owner, lease_until=now + lease))
    if taken.rowcount != 1:
        return None
    cursor = await conn.scalar(sa.select(table.c.cursor).where(
        table.c.entity == entity, table.c.source == source))
    return Claimed(entity, source, cursor)


async def release(conn: AsyncConnection, claimed: Claimed, owner: str, now: float, *,
                  cursor: dict[str, Any] | None, next_run_at: float,
                  result: dict[str, Any]) -> bool:
    """Keep the run's cursor and outcome, free the lease; False when the lease was lost."""
    kept = await conn.execute(table.update().where(
        table.c.entity == claimed.entity, table.c.source == claimed.source,
        table.c.lease_owner == owner,
    ).values(cursor=cursor, next_run_at=next_run_at, lease_owner=None, lease_until=None,
             last_run_at=now, last_result=result))
    return kept.rowcount == 1


async def due_now(conn: AsyncConnection, entity: str, source: str, now: float) -> None:
    """Run (entity, source) at the next pass (an operator's "fetch now")."""
    await conn.execute(table.update().where(
        table.c.entity == entity, table.c.source == source).values(next_run_at=now))


async def state_of(conn: AsyncConnection, entity: str, source: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(table).where(
        table.c.entity == entity, table.c.source == source))).first()
    return dict(row._mapping) if row is not None else None


async def renew(conn: AsyncConnection, claimed: Claimed, owner: str, until: float) -> bool:
    """Extend the lease while the run goes on; False when another process holds it now."""
    kept = await conn.execute(table.update().where(
        table.c.entity == claimed.entity, table.c.source == claimed.source,
        table.c.lease_owner == owner).values(lease_until=until))
    return kept.rowcount == 1
