"""What operators do to documents: retry, cancel, a flow's action, replay from parking,
and asking for an entity's classification to be fetched again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from broker import accounts
from broker import engine as eng
from broker.accounts import Principal
from broker.errors import ServiceError, not_found
from broker.flows.base import Flow, FollowUpRefused, Problem
from broker.intake import Submitted, submit
from broker.runtime import Runtime, now
from broker.store import documents as docs
from broker.store import reads
from broker.store.outage import is_conflict
from broker.views import get_document, visible_document

MAX_REPLAY_BATCH = 1000


async def refresh_classification(rt: Runtime, who: Principal, entity: str,
                                 flow_name: str) -> Submitted:
    """Submit a ``classification`` document: its step asks the flow's peer for the entity's
    current classification, retried and journaled like any other."""
    flow = rt.flows.get(flow_name)
    if flow is None or flow.classification_by is None:
        with_one = ", ".join(sorted(n for n, f in rt.flows.items() if f.classification_by))
        raise ServiceError(422, f"flow {flow_name!r} has no classification",
                           [Problem("flow", f"a flow with a classification ({with_one})")])
    if not who.may_see(entity):
        raise not_found(f"entity {entity}")
    async with rt.db.connect() as conn:  # the path names it: unknown is "not found"
        if await accounts.get_entity(conn, entity) is None:
            raise not_found(f"entity {entity}")
    return await submit(rt, who, flow.classification_by, entity,
                        json.dumps({"of": flow_name}), [])


def allowed(flow: Flow | None, state: str, metadata: Mapping[str, Any],
            who: Principal) -> list[str]:
    """The actions a document's state allows this principal (what ``_operate`` accepts)."""
    found = []
    if state == eng.FAILED:
        found.append("replay" if who.is_operator else "retry")
    elif state in (eng.QUEUED, eng.WAITING, eng.RETRYING):
        found.append("retry")
    if state not in eng.TERMINAL:
        found.append("cancel")
    if state == eng.COMPLETED and flow is not None:
        found += [action for action, (_step, needs) in flow.actions.items() if needs in metadata]
    return found


Make = Callable[[Flow, eng.Doc, Any, float], eng.Transition | eng.Noted]


async def _move(rt: Runtime, who: Principal, document_id: str, why: str,
                make: Make) -> dict[str, Any]:
    """Lock the document, ``make`` its transition, supersede its open jobs and write it."""
    await visible_document(rt, who, document_id)

    async def write() -> None:
        t = now()
        async with rt.db.begin() as conn:
            row = await docs.lock_document(conn, document_id)
            assert row is not None
            doc = docs.doc_of(row)
            try:
                transition = make(rt.flows[doc.flow], doc, row, t)
            except eng.NotAllowed as exc:
                raise ServiceError(409, str(exc)) from exc
            if isinstance(transition, eng.Noted):  # its jobs, a claimed one too, go on
                await docs.write_noted(conn, doc, transition, t)
                return
            await docs.cancel_open_jobs(conn, document_id, t, f"superseded by {why}")
            await docs.write_transition(conn, doc, row.entity, transition, t)

    # A worker claiming the document's job locks the job, then the document: this writer
    # locks them the other way round, and PostgreSQL may end one of the two.
    for conflicts in range(1, 6):
        try:
            await write()
            break
        except DBAPIError as exc:
            if not is_conflict(exc) or conflicts == 5:
                raise
            await asyncio.sleep(0.01 * conflicts)
    rt.notifier.notify()
    return await get_document(rt, who, document_id)


async def _operate(rt: Runtime, who: Principal, document_id: str, action: str) -> dict[str, Any]:
    def make(flow: Flow, doc: eng.Doc, _row: Any, t: float) -> eng.Transition:
        if action == "cancel":
            return eng.cancel(doc, t, who.actor)
        if action in ("retry", "replay"):
            return eng.retry(flow, doc, t, who.actor, action)
        return eng.act(flow, doc, action, t, who.actor)

    return await _move(rt, who, document_id, action, make)


async def follow_up(rt: Runtime, who: Principal, document_id: str, name: str,
                    body: bytes) -> dict[str, Any]:
    """A request for a step of the document's plan (an invoice's next statuses): checked
    whole by the flow before anything is changed or sent, then kept for that step, which
    runs at once if the document waits in it (``engine.follow_up``)."""
    def make(flow: Flow, doc: eng.Doc, row: Any, t: float) -> eng.Transition | eng.Noted:
        wanted = flow.follow_ups.get(name)
        if wanted is None:
            offered = ", ".join(sorted(flow.follow_ups)) or "none"
            raise not_found(f"request {name!r} for flow {flow.name} (requests: {offered})")
        try:
            asked = wanted.model.model_validate_json(body)
        except ValidationError as exc:
            raise ServiceError(422, f"invalid {name} request", [
                Problem(".".join(str(p) for p in e["loc"]) or "body", e["msg"])
                for e in exc.errors()]) from exc
        try:
            update = wanted.accept(doc.metadata, row.refs, asked, who.actor)
        except FollowUpRefused as exc:
            raise ServiceError(422, str(exc), exc.problems) from exc
        return eng.follow_up(flow, doc, name, t, who.actor,
                             asked.model_dump(mode="json", exclude_none=True), update)

    return await _move(rt, who, document_id, name, make)


async def perform(rt: Runtime, who: Principal, document_id: str,
                  action: str) -> dict[str, Any]:
    """A flow's follow-up action on a completed document."""
    return await _operate(rt, who, document_id, action)


async def retry(rt: Runtime, who: Principal, document_id: str) -> dict[str, Any]:
    return await _operate(rt, who, document_id, "retry")


async def cancel(rt: Runtime, who: Principal, document_id: str) -> dict[str, Any]:
    return await _operate(rt, who, document_id, "cancel")


async def replay(rt: Runtime, who: Principal, *, ids: Sequence[str] = (),
                 entity: str | None = None, flow: str | None = None, step: str | None = None,
                 error: str | None = None, all_parked: bool = False,
                 limit: int = 100, group: reads.Group | None = None) -> dict[str, Any]:
    """Replay parked documents: by id, by filter, by exact group, or all, at most ``limit``
    at a time."""
    if not who.is_operator:
        raise ServiceError(403, "only operators may replay parked documents")
    if not 1 <= limit <= MAX_REPLAY_BATCH:
        raise ServiceError(422, f"limit must be between 1 and {MAX_REPLAY_BATCH}",
                           [Problem("limit", f"between 1 and {MAX_REPLAY_BATCH}")])
    filtered = any((entity, flow, step, error, group))
    if not ids and not filtered and not all_parked:
        raise ServiceError(422, "say what to replay: ids, a filter (entity, flow, step, error) "
                           "or all=true", [Problem("body", "nothing selected")])
    async with rt.db.connect() as conn:
        chosen, remaining = await reads.parked_ids(conn, limit=limit, ids=ids, entity=entity,
                                                   flow=flow, step=step, error=error,
                                                   group=group)
    replayed = []
    for document_id in chosen:
        try:
            await _operate(rt, who, document_id, "replay")
            replayed.append(document_id)
        except ServiceError:
            continue  # changed state meanwhile
    return {"replayed": replayed, "count": len(replayed), "remaining": max(0, remaining)}
