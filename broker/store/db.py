"""Database engine: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) for several machines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")

# Serialises journal appends across processes on PostgreSQL (seq must stay gap-free).
JOURNAL_LOCK_KEY = 0x44454D4154


def padded(values: Iterable[T]) -> list[T]:
    """``values`` (at least one) padded to a power of two by repeating the last one.

    An IN list's length is part of the SQL text; with a few lengths only, the
    driver's prepared statements are reused instead of parsed again each time.
    """
    items = list(values)
    size = 1 << (len(items) - 1).bit_length()
    return items + [items[-1]] * (size - len(items))


def is_sqlite(engine: AsyncEngine | AsyncConnection) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # One connection: SQLite has one writer anyway, and a single pool slot
        # turns lock contention into an orderly asyncio queue.
        engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=120,
            connect_args={"timeout": 30},
        )
        _sqlite_pragmas(engine)
        return engine
    # Sized for intake, relay and a worker's prefetch at once; connections are
    # kept (no pre-ping round trip per checkout: asyncpg reports a dead one on use).
    return create_async_engine(url, pool_size=20, max_overflow=10, pool_recycle=3600)


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Manage transactions ourselves so BEGIN IMMEDIATE takes the write lock
        # up front: no deadlock between a reader upgrading and another writer.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def lock_journal(conn: AsyncConnection) -> None:
    """Take the journal append lock for the rest of the transaction."""
    if not is_sqlite(conn):
        await conn.execute(_JOURNAL_LOCK, {"k": JOURNAL_LOCK_KEY})


_JOURNAL_LOCK = sa.text("SELECT pg_advisory_xact_lock(:k)")


async def ping(engine: AsyncEngine) -> None:
    """One round trip to the store; raises what the driver raises when it does not answer."""
    async with engine.connect() as conn:
        await conn.execute(_PING)


_PING = sa.text("SELECT 1")
