"""The domain's keys a document is looked up by, kept in ``document_keys``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.store.schema import document_keys

# Metadata names whose values are indexed: act number, IDActe, a PES's NomFic, an
# invoice's number.
SEARCH_KEYS = ("numero", "id_acte", "nom_fic", "numero_facture")
MAX_VALUE = 255


def key_values(metadata: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for name in SEARCH_KEYS:
        value = metadata.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            yield name, str(value)[:MAX_VALUE]


async def record(conn: AsyncConnection, found: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Index the keys of ``(document id, metadata)`` pairs (new ones, or newly set)."""
    rows = [{"document_id": doc_id, "name": name, "value": value}
            for doc_id, metadata in found for name, value in key_values(metadata)]
    if not rows:
        return
    pairs = [(r["document_id"], r["name"]) for r in rows]
    # A key set again (a new IDActe after a cancellation...) replaces the old value.
    await conn.execute(document_keys.delete().where(
        sa.tuple_(document_keys.c.document_id, document_keys.c.name).in_(pairs)))
    await conn.execute(document_keys.insert(), rows)


async def documents_with(conn: AsyncConnection, value: str) -> list[str]:
    """Ids of the documents holding ``value`` under one of the keys."""
    return list((await conn.scalars(sa.select(document_keys.c.document_id).where(
        document_keys.c.value == value[:MAX_VALUE]).distinct())).all())
