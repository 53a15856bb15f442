"""The tokens table: API tokens, kept as hashes only."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.store.schema import tokens


async def insert(conn: AsyncConnection, token_id: str, token_hash: str, role: str,
                 entity: str | None, label: str, now: float) -> None:
    await conn.execute(tokens.insert().values(
        id=token_id, token_hash=token_hash, role=role, entity=entity, label=label,
        created_at=now))


async def live_by_hash(conn: AsyncConnection, token_hash: str) -> Any | None:
    return (await conn.execute(sa.select(tokens).where(
        tokens.c.token_hash == token_hash, tokens.c.revoked_at.is_(None)))).first()


async def any_exists(conn: AsyncConnection) -> bool:
    return (await conn.execute(sa.select(tokens.c.id).limit(1))).first() is not None
