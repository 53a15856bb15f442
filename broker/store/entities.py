"""The entities table: authorities and their stored connector settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import engine as eng
from broker.store.schema import documents, entities, tokens


async def get(conn: AsyncConnection, siren: str) -> Any | None:
    return (await conn.execute(sa.select(entities).where(entities.c.siren == siren))).first()


async def page(conn: AsyncConnection, limit: int, after: str | None = None) -> list[Any]:
    """Entities by SIREN, ``limit + 1`` at most (the extra one says there are more)."""
    query = sa.select(entities).order_by(entities.c.siren).limit(limit + 1)
    if after:
        query = query.where(entities.c.siren > after)
    return list((await conn.execute(query)).all())


async def put(conn: AsyncConnection, siren: str, name: str, connectors: Mapping[str, Any],
              now: float) -> bool:
    """Insert or update; True when the entity is new."""
    if await get(conn, siren) is not None:
        await conn.execute(entities.update().where(entities.c.siren == siren).values(
            name=name, connectors=dict(connectors)))
        return False
    await conn.execute(entities.insert().values(
        siren=siren, name=name, connectors=dict(connectors), created_at=now))
    return True


async def live_documents(conn: AsyncConnection, siren: str) -> int:
    count = await conn.scalar(sa.select(sa.func.count()).select_from(documents).where(
        documents.c.entity == siren, documents.c.state.in_(eng.ACTIVE)))
    return int(count or 0)


async def delete(conn: AsyncConnection, siren: str, now: float) -> None:
    """Remove the entity and revoke its tokens (its ended documents stay, for the record)."""
    await conn.execute(tokens.update().where(
        tokens.c.entity == siren, tokens.c.revoked_at.is_(None)).values(revoked_at=now))
    await conn.execute(entities.delete().where(entities.c.siren == siren))


async def all_settings(conn: AsyncConnection) -> list[tuple[str, dict[str, Any]]]:
    """(SIREN, stored connector settings) of every entity."""
    rows = await conn.execute(sa.select(entities.c.siren, entities.c.connectors))
    return [(siren, settings) for siren, settings in rows]
