"""The journal's SQL: append in the caller's transaction, seal into the chain, verify."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.journal import GENESIS, Entry, Verdict, entry_hash
from broker.store.db import lock_journal
from broker.store.schema import journal

# Built once: building and keying a statement costs as much as running it.
_INSERT = journal.insert()
_LAST_SEALED = sa.select(journal.c.seq, journal.c.hash).where(
    journal.c.seq.is_not(None)).order_by(journal.c.seq.desc()).limit(1)
_UNSEALED = sa.select(journal).where(journal.c.seq.is_(None)).order_by(journal.c.id).limit(
    sa.bindparam("limit"))
_SEAL = journal.update().where(journal.c.id == sa.bindparam("_id")).values(
    seq=sa.bindparam("_seq"), prev_hash=sa.bindparam("_prev"), hash=sa.bindparam("_hash"))


async def append(conn: AsyncConnection, entries: Sequence[Entry], now: float) -> None:
    """Write ``entries`` in the caller's transaction; the relay seals them."""
    if entries:
        await conn.execute(_INSERT, [
            {"at": now, "document_id": e.document_id, "kind": e.kind, "actor": e.actor,
             "data": e.data} for e in entries])


async def seal(engine: AsyncEngine, batch: int = 2000) -> int:
    """Chain the entries written since the last seal, in the order they were written."""
    sealed = 0
    while True:
        async with engine.begin() as conn:
            await lock_journal(conn)
            last = (await conn.execute(_LAST_SEALED)).first()
            seq, prev = (last.seq, last.hash) if last else (0, GENESIS)
            rows = (await conn.execute(_UNSEALED, {"limit": batch})).all()
            if not rows:
                return sealed
            updates = []
            for row in rows:
                seq += 1
                digest = entry_hash(seq, row.at, row.document_id, row.kind, row.actor, row.data,
                                    prev)
                updates.append({"_id": row.id, "_seq": seq, "_prev": prev, "_hash": digest})
                prev = digest
            await conn.execute(_SEAL, updates)
        sealed += len(rows)


async def for_document(conn: AsyncConnection, document_id: str) -> list[dict[str, Any]]:
    result = await conn.execute(
        sa.select(journal).where(journal.c.document_id == document_id).order_by(journal.c.id)
    )
    return [dict(row._mapping) for row in result]


async def _rows(engine: AsyncEngine, batch: int = 2000) -> AsyncIterator[Any]:
    after = 0
    while True:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(journal).where(journal.c.seq > after).order_by(journal.c.seq)
                .limit(batch))).all()
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].seq


async def verify(engine: AsyncEngine) -> Verdict:
    """Seal what is pending, walk the whole chain; report the first altered or missing entry."""
    await seal(engine)
    expected_seq, prev, checked = 1, GENESIS, 0
    async for row in _rows(engine):
        if row.seq != expected_seq:
            return Verdict(False, checked, f"entry {expected_seq} is missing "
                           f"(next entry found is {row.seq})", expected_seq)
        if row.prev_hash != prev:
            return Verdict(False, checked, f"entry {row.seq} does not follow entry "
                           f"{row.seq - 1} (previous hash differs): an entry was altered "
                           "or replaced", row.seq)
        digest = entry_hash(row.seq, row.at, row.document_id, row.kind, row.actor, row.data,
                            row.prev_hash)
        if digest != row.hash:
            return Verdict(False, checked, f"entry {row.seq} was altered (its content no longer "
                           "matches its hash)", row.seq)
        prev, expected_seq, checked = row.hash, expected_seq + 1, checked + 1
    return Verdict(True, checked)
