"""What people and programs read: documents, files, journals, parking, events, as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import engine as eng
from broker.accounts import Principal
from broker.errors import ServiceError, not_found
from broker.flows.base import Flow, Problem
from broker.runtime import Runtime
from broker.store import documents as docs
from broker.store import events as stored_events
from broker.store import journal as stored_journal
from broker.store import reads

MAX_PAGE = 500


def _file_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "role": row.role, "name": row.name, "content_type": row.content_type,
            "size": row.size, "sha256": row.sha256, "step": row.step}


def document_view(row: Any, file_rows: Sequence[Any] | None = None) -> dict[str, Any]:
    view = {
        "id": row.id, "flow": row.flow, "entity": row.entity, "state": row.state,
        "step": row.step, "attempt": row.run,
        "next_due_at": eng.iso(row.next_due_at) if row.next_due_at else None,
        "last_error": row.last_error, "metadata": row.metadata, "refs": row.refs,
        "created_at": eng.iso(row.created_at), "updated_at": eng.iso(row.updated_at),
    }
    if file_rows is not None:
        view["files"] = [_file_view(f) for f in file_rows]
    return view


async def visible_document(rt: Runtime, who: Principal, document_id: str) -> Any:
    async with rt.db.connect() as conn:
        row = await docs.get_document(conn, document_id)
    # Another entity's document is "not found": no existence leak.
    if row is None or not who.may_see(row.entity):
        raise not_found(f"document {document_id}")
    return row


async def get_document(rt: Runtime, who: Principal, document_id: str) -> dict[str, Any]:
    row = await visible_document(rt, who, document_id)
    async with rt.db.connect() as conn:
        file_rows = await docs.get_files(conn, document_id)
    return document_view(row, file_rows)


async def list_documents(rt: Runtime, who: Principal, *, entity: str | None = None,
                         flow: str | None = None, state: str | None = None, limit: int = 100,
                         cursor: str | None = None, nom_fic: str | None = None
                         ) -> dict[str, Any]:
    """Newest first; ``next_cursor`` continues after the last item. ``nom_fic``: the PES
    of that NomFic (what finance software that polls looks its PES up by)."""
    if state and state not in eng.STATES:
        raise ServiceError(422, f"unknown state {state!r}",
                           [Problem("state", f"one of {', '.join(sorted(eng.STATES))}")])
    if not 1 <= limit <= MAX_PAGE:
        raise ServiceError(422, f"limit must be between 1 and {MAX_PAGE}",
                           [Problem("limit", f"between 1 and {MAX_PAGE}")])
    if not who.is_operator:
        if entity and entity != who.entity:
            raise ServiceError(403, f"this token may not list entity {entity}")
        entity = who.entity
    async with rt.db.connect() as conn:
        rows = await reads.documents_page(
            conn, limit=limit, entity=entity, flow=flow, state=state, before=cursor,
            metadata={"nom_fic": nom_fic} if nom_fic else None)
    page = rows[:limit]
    return {"items": [document_view(r) for r in page],
            "next_cursor": page[-1].id if len(rows) > limit else None}


async def file_of(rt: Runtime, who: Principal, document_id: str, file_id: str) -> Any:
    await visible_document(rt, who, document_id)
    async with rt.db.connect() as conn:
        for row in await docs.get_files(conn, document_id):
            if row.id == file_id:
                return row
    raise not_found(f"file {file_id} of document {document_id}")


async def download(rt: Runtime, who: Principal, document_id: str,
                   file_id: str) -> web.FileResponse:
    """A document's file as an attachment, named as stored, with its digest."""
    row = await file_of(rt, who, document_id, file_id)
    return web.FileResponse(rt.blobs.path(row.sha256), headers={
        "Content-Type": row.content_type,
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row.name, safe='')}",
        "Digest": f"sha-256={row.sha256}", "X-Content-Type-Options": "nosniff"})


async def journal_of(rt: Runtime, who: Principal, document_id: str) -> list[dict[str, Any]]:
    await visible_document(rt, who, document_id)
    async with rt.db.connect() as conn:
        rows = await stored_journal.for_document(conn, document_id)
    return [{"seq": r["seq"], "at": eng.iso(r["at"]), "kind": r["kind"], "actor": r["actor"],
             **r["data"]} for r in rows]


def _event_view(row: Any) -> dict[str, Any]:
    payload = row.payload
    return {"id": row.id, "at": eng.iso(row.created_at), "routing_key": row.routing_key,
            "published": row.published_at is not None, "document": payload.get("id"),
            **{k: payload.get(k) for k in ("flow", "entity", "state", "step")}}


async def recent_events(rt: Runtime, who: Principal, *, after: int = 0, limit: int = 100,
                        entity: str | None = None, flow: str | None = None) -> dict[str, Any]:
    """State events after ``after`` (oldest first): what a page opened late catches up with."""
    if not who.is_operator:
        entity = who.entity
    async with rt.db.connect() as conn:
        rows = await stored_events.recent(conn, after=after, limit=max(1, min(limit, MAX_PAGE)),
                                          entity=entity, flow=flow)
    return {"items": [_event_view(r) for r in rows],
            "last_id": rows[-1].id if rows else after}


async def parking(rt: Runtime, who: Principal, *, entity: str | None = None,
                  flow: str | None = None, limit: int = 100,
                  cursor: str | None = None) -> dict[str, Any]:
    """Failed documents, each parked with its last error; replayable."""
    if not who.is_operator:
        entity = who.entity
    limit = min(limit, MAX_PAGE)
    async with rt.db.connect() as conn:
        rows, connectors = await reads.parked_page(conn, limit=limit, entity=entity, flow=flow,
                                                   before=cursor)
    page = rows[:limit]
    items = [{**document_view(r), "connector": connectors.get(r.id)} for r in page]
    return {"items": items, "next_cursor": page[-1].id if len(rows) > limit else None}


async def current_classification(conn: AsyncConnection, entity: str,
                                 flow: Flow) -> Any | None:
    """The document that fetched the entity's current classification for ``flow``, if any."""
    if flow.classification_by is None:
        return None
    return await reads.latest_completed(conn, entity, flow.classification_by,
                                        where=("of", flow.name))


async def classification_of(rt: Runtime, who: Principal, entity: str,
                            flow: str) -> dict[str, Any]:
    if not who.may_see(entity):
        raise not_found(f"entity {entity}")
    row = None
    if (of := rt.flows.get(flow)) is not None:
        async with rt.db.connect() as conn:
            row = await current_classification(conn, entity, of)
    if row is None:
        raise not_found(f"classification of entity {entity} for flow {flow}")
    return {"entity": entity, "flow": flow, "version_date": row.metadata["version_date"],
            "fetched_at": eng.iso(row.updated_at), "document": row.id,
            "data": row.metadata["classification"]}
