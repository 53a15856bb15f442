"""Intake: a submission checked whole, then stored in one transaction.

Intake is all-or-nothing: files are staged in tmp/, everything is checked, and only
then are blobs committed and the document, its first job, its journal entry and its
event written in one transaction (submissions arriving together share it).
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

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import accounts
from broker import engine as eng
from broker.accounts import Principal
from broker.batch import Batcher
from broker.blobs import Staged
from broker.errors import ServiceError
from broker.flows.base import Flow, Inspection, Intake, Problem, UploadedFile
from broker.ids import new_id, siren_problem
from broker.inspect import inspect_file
from broker.metrics import DOCUMENTS_SUBMITTED
from broker.runtime import Runtime, now
from broker.store import documents as docs
from broker.store import reads
from broker.store.documents import StoredFile
from broker.views import current_classification, document_view


@dataclass(frozen=True)
class StagedPart:
    role: str
    name: str
    content_type: str
    staged: Staged
    # The flow's inspector's verdict on it, when it was judged as it streamed in.
    inspection: Inspection | None = None


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
        uploads: list[UploadedFile] = []
        if flow is not None and model is not None and entity:
            uploads = [UploadedFile(p.role, p.name, p.staged.size, p.staged.head,
                                    await _inspection(rt, flow, p)) for p in parts]
            problems += flow.check(model, uploads, await _intake(store, flow, entity))
            if unique := flow.unique_key(model, uploads):
                problems += await _key_problems(await store.conn(), flow.name, entity, unique)
    if problems:
        raise ServiceError(422, "; ".join(f"{p.field}: {p.message}" for p in problems), problems)
    assert flow is not None and entity is not None and model is not None and metadata is not None
    unique = flow.unique_key(model, uploads)
    metadata = {**metadata, **flow.derived(uploads)}
    doc = eng.Doc(new_id(), flow.name, eng.QUEUED, None, 0, metadata)
    stored = [StoredFile(p.role, p.name, p.content_type, p.staged.size, p.staged.sha256)
              for p in parts]
    warnings = [w for u in uploads if u.inspection for w in u.inspection.warnings]
    first = eng.start(flow, doc, now(), who.actor, [(f.role, f.name) for f in stored],
                      warnings)
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
    return Submitted(document_view(row, files))


async def _inspection(rt: Runtime, flow: Flow, part: StagedPart) -> Inspection | None:
    """The part's verdict: judged as it came, or now (its flow was named after it)."""
    inspector = flow.inspectors.get(part.role)
    if part.inspection is not None or inspector is None:
        return part.inspection
    return await inspect_file(inspector, part.staged.tmp_path, part.name,
                              rt.settings.platform_options())


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
    return document_view(row, await docs.get_files(conn, row.id)) if row else None


async def _intake(store: _LazyConnection, flow: Flow, entity: str) -> Intake:
    # Only a flow with a classification reads one.
    known = (await current_classification(await store.conn(), entity, flow)
             if flow.classification_by else None)
    if known is None:
        return Intake(entity, date.today())
    return Intake(entity, date.today(), known.metadata["classification"],
                  known.metadata["version_date"])


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
