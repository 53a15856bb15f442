"""Counts kept as documents change: documents per (entity, flow, state), and documents ended
per hour. The dashboard reads these instead of scanning the documents (a million rows), and
they change in the transaction of the change they count."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import engine as eng
from broker.store.schema import document_counts, ended_hours

# (entity, flow, state): how many documents moved in (+) or out (-).
Moves = Counter[tuple[str, str, str]]
# (hour, entity, flow, state): how many documents ended so then.
Ended = Counter[tuple[int, str, str, str]]
# The entity of the hourly rows that count every entity (what operators read: a month is
# then a few thousand rows, not one per entity and hour).
ALL = "*"


def moved(moves: Moves, ended: Ended, entity: str, flow: str, before: str | None,
          after: str, now: float) -> None:
    """Count one document going from ``before`` (None: new) to ``after``."""
    if before == after:
        return
    if before is not None:
        moves[(entity, flow, before)] -= 1
    moves[(entity, flow, after)] += 1
    if after in eng.TERMINAL:
        hour = int(now // 3600)
        ended[(hour, entity, flow, after)] += 1
        ended[(hour, ALL, flow, after)] += 1


async def record(conn: AsyncConnection, moves: Moves, ended: Ended) -> None:
    """Apply the moves, in key order (two writers lock the same rows in the same order)."""
    rows = [{"entity": e, "flow": f, "state": s, "n": n}
            for (e, f, s), n in sorted(moves.items()) if n]
    if rows:
        await conn.execute(_upsert(conn, document_counts, ("entity", "flow", "state")), rows)
    hours = [{"hour": h, "entity": e, "flow": f, "state": s, "n": n}
             for (h, e, f, s), n in sorted(ended.items())]
    if hours:
        await conn.execute(_upsert(conn, ended_hours, ("hour", "entity", "flow", "state")),
                           hours)


def _upsert(conn: AsyncConnection, table: sa.Table, keys: Iterable[str]) -> Any:
    insert = (postgresql.insert(table) if conn.dialect.name == "postgresql"
              else sqlite.insert(table))
    return insert.on_conflict_do_update(index_elements=list(keys),
                                        set_={"n": table.c.n + insert.excluded.n})


async def by_flow_and_state(conn: AsyncConnection,
                            entity: str | None) -> list[tuple[str, str, int]]:
    query = sa.select(document_counts.c.flow, document_counts.c.state,
                      sa.func.sum(document_counts.c.n)).group_by(
        document_counts.c.flow, document_counts.c.state)
    if entity:
        query = query.where(document_counts.c.entity == entity)
    return [(f, s, int(n)) for f, s, n in await conn.execute(query) if n]


async def ended_since(conn: AsyncConnection, entity: str | None,
                      since: float) -> list[tuple[int, str, int]]:
    """(hour since ``since``, state, documents that ended in that state then)."""
    first = int(since // 3600)
    query = sa.select(ended_hours.c.hour, ended_hours.c.state,
                      sa.func.sum(ended_hours.c.n)).where(ended_hours.c.hour >= first).group_by(
        ended_hours.c.hour, ended_hours.c.state)
    query = query.where(ended_hours.c.entity == (entity or ALL))
    return [(int(h) - first, s, int(n)) for h, s, n in await conn.execute(query)]
