"""The sessions table: dashboard sign-ins, each bound to a live API token."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.store.schema import sessions, tokens


async def insert(conn: AsyncConnection, session_hash: str, token_id: str, csrf: str,
                 now: float, expires_at: float) -> None:
    await conn.execute(sessions.insert().values(
        id=session_hash, token_id=token_id, csrf=csrf, created_at=now, seen_at=now,
        expires_at=expires_at))


async def live(conn: AsyncConnection, session_hash: str, now: float,
               idle_since: float) -> Any | None:
    """The session with its token's role and entity; None once ended, expired, unused since
    ``idle_since``, or its token revoked."""
    return (await conn.execute(_LIVE, {"id": session_hash, "now": now,
                                       "idle": idle_since})).first()


async def touch(conn: AsyncConnection, session_hash: str, now: float) -> None:
    await conn.execute(sessions.update().where(sessions.c.id == session_hash).values(
        seen_at=now))


async def end(conn: AsyncConnection, session_hash: str, now: float) -> bool:
    """End the session; False if it had already ended."""
    result = await conn.execute(sessions.update().where(
        sessions.c.id == session_hash, sessions.c.ended_at.is_(None)).values(ended_at=now))
    return bool(result.rowcount)


async def prune(conn: AsyncConnection, before: float) -> None:
    """Forget sessions that ended or expired before ``before``."""
    await conn.execute(sessions.delete().where(sa.or_(
        sessions.c.expires_at < before, sessions.c.ended_at < before)))


_LIVE = sa.select(sessions, tokens.c.role, tokens.c.entity).join(
    tokens, tokens.c.id == sessions.c.token_id).where(
    sessions.c.id == sa.bindparam("id"), sessions.c.ended_at.is_(None),
    sessions.c.expires_at > sa.bindparam("now"), sessions.c.seen_at > sa.bindparam("idle"),
    tokens.c.revoked_at.is_(None))
