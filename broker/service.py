"""Use cases behind the API and the CLI: intake, queries, operator actions.

Intake is all-or-nothing: files are staged in tmp/, everything is checked,
and only then are blobs committed and the document, its first job, its journal
entry and its event written in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import date
from functools import partial
from types import SimpleNamespace
from typing import Any

import aiohttp
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import accounts, journal
from broker import engine as eng
from broker.accounts import Principal
from broker.batch import Batcher
from broker.blobs import Staged
from broker.connector import ClassificationSource
from broker.flows.base import Flow, Intake, Problem, UploadedFile
from broker.ids import new_id, siren_problem
from broker.metrics import DOCUMENTS_SUBMITTED
from broker.outcomes import StepError
from broker.runtime import Runtime, now
from broker.store import classifications, reads
from broker.store import documents as docs
from broker.store import events as stored_events
from broker.store import journal as stored_journal
from broker.store.documents import StoredFile

MAX_PAGE = 500
MAX_REPLAY_BATCH = 1000


class ServiceError(Exception):
    """A refusal with an HTTP-like status and the problems that caused it."""

    def __init__(self, status: int, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = list(problems)


def not_found(what: str) -> ServiceError:
    return ServiceError(404, f"{what} not found")


@dataclass(frozen=True)
class StagedPart:
    role: str
    name: str
    content_type: str
    staged: Staged


def _metadata_problems(raw: str | None) -> tuple[dict[str, Any] | None, list[Problem]]:
    if raw is None:
        return {}, []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, [Problem("metadata", f"metadata is not valid JSON: {exc.msg} at line "
                              f"{exc.lineno} column {exc.colno}")]
    if not isinstance(value, dict):
        return None, [Problem("metadata", "metadata must be a JSON object")]
    return value, []


@dataclass(frozen=True)
class Submitted:
    document: dict[str, Any]
    # False when an Idempotency-Key matched an earlier submission.
    created: bool = True


async def submit(rt: Runtime, who: Principal, flow_name: str | None, entity: str | None,
                 raw_metadata: str | None, parts: Sequence[StagedPart],
                 submission_key: str | None = None) -> Submitted:
    """Accept a document or raise ServiceError; staged parts are consumed either way."""
    try:
        return await _submit(rt, who, flow_name, entity, raw_metadata, parts, submission_key)
    except BaseException:
        for part in parts:
            rt.blobs.discard(part.staged)
        raise


def _flow_problems(rt: Runtime, flow_name: str | None) -> tuple[Flow | None, list[Problem]]:
    flow = rt.flows.get(flow_name or "")
    known = ", ".join(sorted(name for name, f in rt.flows.items() if not f.incoming_only))
    if not flow_name:
        return None, [Problem("flow", f"flow is required (one of: {known})")]
    if flow is None:
        return None, [Problem("flow", f"unknown flow {flow_name!r} (one of: {known})")]
    if flow.incoming_only:
        return None, [Problem("flow", f"documents of flow {flow_name} come from peers; they "
                              "cannot be submitted")]
    return flow, []


async def _submit(rt: Runtime, who: Principal, flow_name: str | None, entity: str | None,
                  raw_metadata: str | None, parts: Sequence[StagedPart],
                  submission_key: str | None) -> Submitted:
    flow, problems = _flow_problems(rt, flow_name)
    entity = entity or who.entity
    if not entity:
        problems.append(Problem("entity", "entity (SIREN) is required"))
    elif not who.may_see(entity):
        raise ServiceError(403, f"this token may not submit for entity {entity}")
    elif bad := siren_problem(entity):
        problems.append(Problem("entity", bad))
        entity = None
    metadata, meta_problems = _metadata_problems(raw_metadata)
    problems += meta_problems
    if flow is not None:
        total = sum(p.staged.size for p in parts)
        cap = flow.max_upload or rt.settings.max_upload
        if total > cap:
            raise ServiceError(413, f"upload of {total} bytes exceeds the {cap} bytes allowed "
                               f"for flow {flow.name}", [Problem("files", f"{total} bytes in "
                               f"all, {cap} allowed for flow {flow.name}")])
    # Every check that needs the store, on one connection opened only if one does.
    async with AsyncExitStack() as stack:
        store = _LazyConnection(rt, stack)
        if entity and not rt.known_entities.has(entity):
            if await accounts.get_entity(await store.conn(), entity) is None:
                problems.append(Problem("entity", f"unknown entity {entity}"))
                entity = None
            else:
                rt.known_entities.put(entity, True)
        if entity and submission_key:
            earlier = await _by_submission_key(await store.conn(), entity, submission_key)
            if earlier is not None:
                for part in parts:
                    rt.blobs.discard(part.staged)
                return Submitted(earlier, created=False)
        model = None
        if flow is not None and metadata is not None:
            try:
                model = flow.metadata_model.model_validate(metadata)
            except ValidationError as exc:
                problems += [Problem("metadata." + ".".join(str(p) for p in err["loc"]),
                                     err["msg"]) for err in exc.errors()]
        if flow is not None and model is not None and entity:
            uploads = [UploadedFile(p.role, p.name, p.staged.size, p.staged.head) for p in parts]
            problems += flow.check(model, uploads, await _intake(store, flow, entity))
            if unique := flow.unique_key(model):
                problems += await _key_problems(await store.conn(), flow.name, entity, unique)
    if problems:
        raise ServiceError(422, "; ".join(f"{p.field}: {p.message}" for p in problems), problems)
    assert flow is not None and entity is not None and model is not None and metadata is not None
    unique = flow.unique_key(model)
    doc = eng.Doc(new_id(), flow.name, eng.QUEUED, None, 0, metadata)
    stored = [StoredFile(p.role, p.name, p.content_type, p.staged.size, p.staged.sha256)
              for p in parts]
    first = eng.start(flow, doc, now(), who.actor)
    new = docs.NewDocument(docs.TransitionWrite(doc, entity, first), stored,
                           unique[1] if unique else None, submission_key)
    written = await _intake_writer(rt)(_Pending(new, [p.staged for p in parts]))
    if written is None:
        # Another submission took the same key between the check and the insert.
        async with rt.db.connect() as conn:
            if submission_key and (earlier := await _by_submission_key(conn, entity,
                                                                       submission_key)):
                return Submitted(earlier, created=False)
            problems = await _key_problems(conn, flow.name, entity, unique)
        raise ServiceError(422, "; ".join(f"{p.field}: {p.message}" for p in problems)
                           or "conflicting submission", problems)
    file_ids, t = written
    DOCUMENTS_SUBMITTED.labels(flow.name).inc()
    rt.notifier.notify()
    # The answer is what was just written: no read back.
    row = SimpleNamespace(
        id=doc.id, flow=flow.name, entity=entity, state=first.state, step=first.step,
        run=first.run, next_due_at=first.next_due_at, last_error=first.last_error,
        metadata={**metadata, **first.metadata}, refs={}, created_at=t, updated_at=t)
    files = [SimpleNamespace(id=file_id, **asdict(f)) for file_id, f in zip(file_ids, stored,
                                                                           strict=True)]
    return Submitted(_doc_view(row, files))


class _LazyConnection:
    """A store connection opened on first use, closed with the stack."""

    def __init__(self, rt: Runtime, stack: AsyncExitStack) -> None:
        self._rt, self._stack = rt, stack
        self._conn: AsyncConnection | None = None

    async def conn(self) -> AsyncConnection:
        if self._conn is None:
            self._conn = await self._stack.enter_async_context(self._rt.db.connect())
        return self._conn


@dataclass(frozen=True)
class _Pending:
    """A checked submission waiting for the next intake commit."""

    new: docs.NewDocument
    staged: list[Staged]


def _intake_writer(rt: Runtime) -> Batcher[_Pending, tuple[list[str], float] | None]:
    writer = rt.writers.get("intake")
    if writer is None:
        writer = rt.writers["intake"] = Batcher("intake", partial(_write_intakes, rt))
    return writer


async def _write_intakes(rt: Runtime, pending: list[_Pending]
                         ) -> list[tuple[list[str], float] | None]:
    """Commit the blobs, then insert the documents in one transaction.

    Each gets its file ids and the commit time, or None when its keys conflict
    with a document stored meanwhile (the others still go in).
    """
    # Blobs first: a crash before the commit leaves unreferenced blobs only.
    await rt.blobs.commit_many([s for p in pending for s in p.staged])
    t = now()
    try:
        async with rt.db.begin() as conn:
            ids = await docs.insert_documents(conn, [p.new for p in pending], t)
        return [(file_ids, t) for file_ids in ids]
    except IntegrityError:
        if len(pending) == 1:
            return [None]
    written: list[tuple[list[str], float] | None] = []
    for p in pending:
        try:
            async with rt.db.begin() as conn:
                (file_ids,) = await docs.insert_documents(conn, [p.new], t)
            written.append((file_ids, t))
        except IntegrityError:
            written.append(None)
    return written


async def _by_submission_key(conn: AsyncConnection, entity: str,
                             key: str) -> dict[str, Any] | None:
    row = await reads.by_submission_key(conn, entity, key)
    return _doc_view(row, await docs.get_files(conn, row.id)) if row else None


async def _intake(store: _LazyConnection, flow: Flow, entity: str) -> Intake:
    # Only a flow with a classification reads one.
    known = (await classifications.get(await store.conn(), entity, flow.name)
             if flow.classification_from else None)
    return Intake(entity, date.today(), known.data if known else None,
                  known.version_date if known else None)


async def _key_problems(conn: AsyncConnection, flow: str, entity: str,
                        key: tuple[str, str] | None) -> list[Problem]:
    if key is None:
        return []
    field, value = key
    other = await docs.with_unique_key(conn, entity, flow, value)
    if other is None:
        return []
    return [Problem(field, f"{value!r} is already used by document {other} of entity "
                    f"{entity}")]


async def classification_of(rt: Runtime, who: Principal, entity: str,
                            flow: str) -> dict[str, Any]:
    if not who.may_see(entity):
        raise not_found(f"entity {entity}")
    async with rt.db.connect() as conn:
        row = await classifications.get(conn, entity, flow)
    if row is None:
        raise not_found(f"classification of entity {entity} for flow {flow}")
    return {"entity": entity, "flow": flow, "version_date": row.version_date,
            "fetched_at": eng.iso(row.fetched_at), "data": row.data}


async def refresh_classification(rt: Runtime, who: Principal, entity: str,
                                 flow_name: str) -> dict[str, Any]:
    """Ask the flow's peer for the entity's current classification and keep it."""
    flow = rt.flows.get(flow_name)
    if flow is None or flow.classification_from is None:
        raise ServiceError(422, f"flow {flow_name!r} has no classification",
                           [Problem("flow", "a flow with a classification, e.g. actes")])
    if not who.may_see(entity):
        raise not_found(f"entity {entity}")
    source = rt.connectors.get(flow.classification_from)
    if not isinstance(source, ClassificationSource):
        raise ServiceError(500, f"connector {flow.classification_from} cannot fetch "
                           "classifications")
    async with rt.db.connect() as conn:
        row = await accounts.get_entity(conn, entity)
    if row is None:
        raise not_found(f"entity {entity}")
    config = row.connectors.get(rt.connectors[flow.classification_from].settings_key, {})
    try:
        async with aiohttp.ClientSession() as http:
            version_date, data = await source.fetch_classification(config, http)
    except StepError as exc:
        raise ServiceError(502, f"{flow.classification_from}: {exc}") from exc
    async with rt.db.begin() as conn:
        await classifications.put(conn, entity, flow_name, version_date, data, now())
        await stored_journal.append(conn, [journal.Entry(
            "operator", {"action": "classification", "entity": entity, "flow": flow_name,
                         "version_date": version_date}, None, who.actor)], now())
    return await classification_of(rt, who, entity, flow_name)


def _file_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "role": row.role, "name": row.name, "content_type": row.content_type,
            "size": row.size, "sha256": row.sha256, "step": row.step}


def _doc_view(row: Any, file_rows: Sequence[Any] | None = None) -> dict[str, Any]:
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


async def _visible(rt: Runtime, who: Principal, document_id: str) -> Any:
    async with rt.db.connect() as conn:
        row = await docs.get_document(conn, document_id)
    # Another entity's document is "not found": no existence leak.
    if row is None or not who.may_see(row.entity):
        raise not_found(f"document {document_id}")
    return row


async def get_document(rt: Runtime, who: Principal, document_id: str) -> dict[str, Any]:
    row = await _visible(rt, who, document_id)
    async with rt.db.connect() as conn:
        file_rows = await docs.get_files(conn, document_id)
    return _doc_view(row, file_rows)


async def list_documents(rt: Runtime, who: Principal, *, entity: str | None = None,
                         flow: str | None = None, state: str | None = None, limit: int = 100,
                         cursor: str | None = None) -> dict[str, Any]:
    """Newest first; ``next_cursor`` continues after the last item."""
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
        rows = await reads.documents_page(conn, limit=limit, entity=entity, flow=flow,
                                          state=state, before=cursor)
    page = rows[:limit]
    return {"items": [_doc_view(r) for r in page],
            "next_cursor": page[-1].id if len(rows) > limit else None}


async def file_of(rt: Runtime, who: Principal, document_id: str, file_id: str) -> Any:
    await _visible(rt, who, document_id)
    async with rt.db.connect() as conn:
        for row in await docs.get_files(conn, document_id):
            if row.id == file_id:
                return row
    raise not_found(f"file {file_id} of document {document_id}")


async def journal_of(rt: Runtime, who: Principal, document_id: str) -> list[dict[str, Any]]:
    await _visible(rt, who, document_id)
    async with rt.db.connect() as conn:
        rows = await stored_journal.for_document(conn, document_id)
    return [{"seq": r["seq"], "at": eng.iso(r["at"]), "kind": r["kind"], "actor": r["actor"],
             **r["data"]} for r in rows]


async def _operate(rt: Runtime, who: Principal, document_id: str, action: str) -> dict[str, Any]:
    await _visible(rt, who, document_id)
    t = now()
    async with rt.db.begin() as conn:
        row = await docs.lock_document(conn, document_id)
        assert row is not None
        doc = docs.doc_of(row)
        flow = rt.flows[doc.flow]
        try:
            if action == "cancel":
                transition = eng.cancel(doc, t, who.actor)
            elif action in ("retry", "replay"):
                transition = eng.retry(flow, doc, t, who.actor, action)
            else:
                transition = eng.act(flow, doc, action, t, who.actor)
        except eng.NotAllowed as exc:
            raise ServiceError(409, str(exc)) from exc
        await docs.cancel_open_jobs(conn, document_id, t, f"superseded by {action}")
        await docs.write_transition(conn, doc, row.entity, transition, t)
    rt.notifier.notify()
    return await get_document(rt, who, document_id)


async def perform(rt: Runtime, who: Principal, document_id: str,
                  action: str) -> dict[str, Any]:
    """A flow's follow-up action on a completed document."""
    return await _operate(rt, who, document_id, action)


async def retry(rt: Runtime, who: Principal, document_id: str) -> dict[str, Any]:
    return await _operate(rt, who, document_id, "retry")


async def cancel(rt: Runtime, who: Principal, document_id: str) -> dict[str, Any]:
    return await _operate(rt, who, document_id, "cancel")


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
    items = [{**_doc_view(r), "connector": connectors.get(r.id)} for r in page]
    return {"items": items, "next_cursor": page[-1].id if len(rows) > limit else None}


async def replay(rt: Runtime, who: Principal, *, ids: Sequence[str] = (),
                 entity: str | None = None, flow: str | None = None, step: str | None = None,
                 error: str | None = None, all_parked: bool = False,
                 limit: int = 100) -> dict[str, Any]:
    """Replay parked documents: by id, by filter, or all, at most ``limit`` at a time."""
    if not who.is_operator:
        raise ServiceError(403, "only operators may replay parked documents")
    if not 1 <= limit <= MAX_REPLAY_BATCH:
        raise ServiceError(422, f"limit must be between 1 and {MAX_REPLAY_BATCH}",
                           [Problem("limit", f"between 1 and {MAX_REPLAY_BATCH}")])
    filtered = any((entity, flow, step, error))
    if not ids and not filtered and not all_parked:
        raise ServiceError(422, "say what to replay: ids, a filter (entity, flow, step, error) "
                           "or all=true", [Problem("body", "nothing selected")])
    async with rt.db.connect() as conn:
        chosen, remaining = await reads.parked_ids(conn, limit=limit, ids=ids, entity=entity,
                                                   flow=flow, step=step, error=error)
    replayed = []
    for document_id in chosen:
        try:
            await _operate(rt, who, document_id, "replay")
            replayed.append(document_id)
        except ServiceError:
            continue  # changed state meanwhile
    return {"replayed": replayed, "count": len(replayed), "remaining": max(0, remaining)}
