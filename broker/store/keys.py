"""The domain's keys a document is looked up by, kept in ``document_keys``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.store.schema import document_keys

# Metadata names whose values are indexed, in the order a document's reference is read:
# IDActe, act number, a PES's NomFic, an invoice's number.
SEARCH_KEYS = ("id_acte", "numero", "nom_fic", "numero_facture")
MAX_VALUE = 255


def key_values(metadata: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for name in SEARCH_KEYS:
        value = metadata.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            yield name, str(value)[:MAX_VALUE]


def reference(metadata: Mapping[str, Any]) -> str:
    """What a person calls the document: its IDActe, act number, NomFic or invoice number."""
    return next((value for _name, value in key_values(metadata)), "")


async def record(conn: AsyncConnection, found: Sequence[tuple[str, Mapping[str, Any]]], *,
                 replace: bool = True) -> None:
    """Index the keys of ``(document id, metadata)`` pairs: new documents (``replace`` off),
    or metadata changed; a later pair for the same document wins."""
    latest: dict[tuple[str, str], str | None] = {}
    for doc_id, metadata in found:
        latest.update({(doc_id, name): None for name in SEARCH_KEYS if name in metadata})
        latest.update({(doc_id, name): value for name, value in key_values(metadata)})
    if not latest:
        return
    if replace:  # a key set again replaces its value; a key cleared is forgotten
        await conn.execute(document_keys.delete().where(
            sa.tuple_(document_keys.c.document_id, document_keys.c.name).in_(list(latest))))
    rows = [{"document_id": d, "name": n, "value": v} for (d, n), v in latest.items() if v]
    if rows:
        await conn.execute(document_keys.insert(), rows)


def documents_with(value: str) -> sa.Select[Any]:
    """The ids of the documents holding ``value`` under one of the keys (a subquery)."""
    return sa.select(document_keys.c.document_id).where(
        document_keys.c.value == value[:MAX_VALUE])
