"""The workers table: who runs jobs, and their heartbeats (the sweep judges the dead)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from broker.store.schema import workers

# A worker row not seen for this long is removed (its jobs were given back long before).
FORGET_AFTER = 3600.0


async def register(conn: AsyncConnection, worker_id: str, host: str, pid: int,
                   connectors: Sequence[str], now: float) -> None:
    await conn.execute(workers.insert().values(
        id=worker_id, host=host, pid=pid, connectors=list(connectors), started_at=now,
        seen_at=now))


async def beat(conn: AsyncConnection, worker_id: str, now: float) -> None:
    await conn.execute(workers.update().where(workers.c.id == worker_id).values(seen_at=now))


async def forget(conn: AsyncConnection, worker_id: str) -> None:
    await conn.execute(workers.delete().where(workers.c.id == worker_id))


async def forget_silent(conn: AsyncConnection, now: float) -> None:
    await conn.execute(workers.delete().where(workers.c.seen_at < now - FORGET_AFTER))
