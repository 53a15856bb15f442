"""HTTP API (aiohttp): documents, parking, health and metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from broker import accounts, entities, intake, operations, views
from broker.accounts import Principal
from broker.api import models, openapi
from broker.api.query import query
from broker.blobs import TooLarge
from broker.errors import ServiceError
from broker.flows.base import Problem
from broker.inspect import Inspecting
from broker.intake import StagedPart
from broker.metrics import DOCUMENTS_BY_STATE, INTAKE_REFUSED
from broker.multipart import MultipartReader
from broker.runtime import Runtime
from broker.sniff import sniff
from broker.store import dashboard as board
from broker.store.db import ping
from broker.store.outage import is_outage
from broker.ttlcache import TtlCache
from broker.web import guard, routes

log = structlog.get_logger("demat.api")

RUNTIME = web.AppKey("runtime", Runtime)
PRINCIPAL = web.RequestKey("principal", Principal)
PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"})
TEXT_FIELDS = frozenset({"flow", "entity", "metadata"})
MAX_TEXT_FIELD = 1024 * 1024
TOKEN_CACHE_SECONDS = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, problems: list[Problem] | None = None
                   ) -> web.Response:
    body = {"error": message,
            "problems": [{"field": p.field, "message": p.message} for p in problems or []]}
    return web.json_response(body, status=status)


class TokenCache:
    """Hashed-token lookups, kept briefly so each request does not hit the store."""

    def __init__(self) -> None:
        self._seen: TtlCache[Principal | None] = TtlCache(TOKEN_CACHE_SECONDS)

    async def principal(self, rt: Runtime, token: str) -> Principal | None:
        key = accounts.hash_token(token)
        if self._seen.has(key):
            return self._seen.get(key)
        async with rt.db.connect() as conn:
            who = await accounts.authenticate(conn, token)
        self._seen.put(key, who)
        return who


TOKENS = web.AppKey("tokens", TokenCache)
BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/") and request.path not in PUBLIC:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return error_response(401, "missing bearer token (Authorization: Bearer …)")
        who = await request.app[TOKENS].principal(request.app[RUNTIME], header[7:].strip())
        if who is None:
            return error_response(401, "unknown or revoked token")
        request[PRINCIPAL] = who
    try:
        return await handler(request)
    except ServiceError as exc:
        if exc.status in (413, 422):
            INTAKE_REFUSED.labels(str(exc.status)).inc()
        return error_response(exc.status, exc.message, exc.problems)


def _who(request: web.Request) -> Principal:
    who: Principal = request[PRINCIPAL]
    return who


def _rt(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


async def _read_text(reader: MultipartReader, name: str) -> str:
    data = bytearray()
    async for chunk in reader.chunks():
        data += chunk
        if len(data) > MAX_TEXT_FIELD:
            raise ServiceError(413, f"form field {name!r} is larger than "
                               f"{MAX_TEXT_FIELD} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServiceError(422, f"form field {name!r} is not UTF-8",
                           [Problem(name, "not UTF-8 text")]) from exc


async def submit(request: web.Request) -> web.Response:
    rt = _rt(request)
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/"):
        return error_response(415, "send multipart/form-data: fields flow, entity, metadata "
                              "and one file part per file, named by its role")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 128:
        return error_response(400, "Idempotency-Key must be 1 to 128 characters")
    fields: dict[str, str] = {}
    parts: list[StagedPart] = []
    budget = rt.settings.max_upload
    try:
        reader = MultipartReader(request.content, content_type)
        while (part := await reader.next_part()) is not None:
            name = part.name or ""
            if part.filename is None and name in TEXT_FIELDS:
                fields[name] = await _read_text(reader, name)
                continue
            if not name:
                raise ServiceError(422, "a file part has no name",
                                   [Problem("files", "each file part must be named by its "
                                            "role, e.g. name=\"document\"")])
            flow = rt.flows.get(fields.get("flow") or "")
            inspector = flow.inspectors.get(name) if flow is not None else None
            inspecting = (Inspecting(inspector, part.filename or name,
                                     rt.settings.platform_options())
                          if inspector is not None else None)
            try:
                if inspecting is None:
                    staged = await rt.blobs.stage(reader.chunks(), budget)
                else:  # judged while it streams to disk
                    async with aclosing(inspecting.through(reader.chunks())) as chunks:
                        staged = await rt.blobs.stage(chunks, budget)
            except TooLarge as exc:
                raise ServiceError(413, f"upload is {exc} ({rt.settings.max_upload} bytes per "
                                   "document)", [Problem(f"files.{name}", f"file part "
                                   f"{part.filename or name!r} goes past the upload cap")]
                                   ) from exc
            budget -= staged.size
            # What the bytes are wins over what the client declared.
            declared = part.content_type or "application/octet-stream"
            parts.append(StagedPart(name, part.filename or name,
                                    sniff(staged.head).media_type or declared, staged,
                                    await inspecting.result() if inspecting else None))
        result = await intake.submit(rt, _who(request), fields.get("flow"),
                                      fields.get("entity"), fields.get("metadata"), parts,
                                      key)
    except ServiceError:
        for p in parts:
            rt.blobs.discard(p.staged)
        raise
    except ValueError as exc:  # malformed multipart
        for p in parts:
            rt.blobs.discard(p.staged)
        return error_response(400, f"malformed multipart body: {exc}")
    # A repeated Idempotency-Key answers with the document the first request created.
    return web.json_response(result.document, status=201 if result.created else 200)


async def get_document(request: web.Request) -> web.Response:
    return web.json_response(await views.get_document(_rt(request), _who(request),
                                                        request.match_info["id"]))


async def list_documents(request: web.Request) -> web.Response:
    page = await views.list_documents(
        _rt(request), _who(request), entity=query(request, "entity"),
        flow=query(request, "flow"), state=query(request, "state"),
        nom_fic=query(request, "nom_fic"),
        limit=query(request, "limit", 100), cursor=query(request, "cursor"))
    return web.json_response(page)


async def get_file(request: web.Request) -> web.StreamResponse:
    return await views.download(_rt(request), _who(request), request.match_info["id"],
                                request.match_info["file_id"])


async def get_journal(request: web.Request) -> web.Response:
    return web.json_response(await views.journal_of(_rt(request), _who(request),
                                                      request.match_info["id"]))


async def retry(request: web.Request) -> web.Response:
    return web.json_response(await operations.retry(_rt(request), _who(request),
                                                 request.match_info["id"]))


async def cancel(request: web.Request) -> web.Response:
    return web.json_response(await operations.cancel(_rt(request), _who(request),
                                                  request.match_info["id"]))


async def action(request: web.Request) -> web.Response:
    return web.json_response(await operations.perform(_rt(request), _who(request),
                                                   request.match_info["id"],
                                                   request.match_info["action"]))


async def follow_up(request: web.Request) -> web.Response:
    return web.json_response(await operations.follow_up(
        _rt(request), _who(request), request.match_info["id"], request.match_info["name"],
        await request.read()))


async def get_classification(request: web.Request) -> web.Response:
    return web.json_response(await views.classification_of(
        _rt(request), _who(request), request.match_info["siren"],
        query(request, "flow", "actes")))


async def refresh_classification(request: web.Request) -> web.Response:
    result = await operations.refresh_classification(
        _rt(request), _who(request), request.match_info["siren"],
        query(request, "flow", "actes"))
    # Accepted: the fetch is a document's step; its page says when it is done.
    return web.json_response(result.document, status=202)


async def _body(request: web.Request, model: type[BaseModelT]) -> BaseModelT:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            raise ServiceError(400, "body is not JSON (UTF-8): " + "; ".join(
                e["msg"] for e in errors)) from exc
        problems = [Problem(".".join(str(p) for p in e["loc"]) or "body", e["msg"])
                    for e in errors]
        raise ServiceError(422, "invalid request body", problems) from exc


async def list_entities(request: web.Request) -> web.Response:
    return web.json_response(await entities.list_entities(
        _rt(request), _who(request), query(request, "limit", 100), query(request, "cursor")))


async def create_entity(request: web.Request) -> web.Response:
    body = await _body(request, models.EntityIn)
    return web.json_response(await entities.create_entity(
        _rt(request), _who(request), body.siren, body.name, body.connectors), status=201)


async def get_entity(request: web.Request) -> web.Response:
    return web.json_response(await entities.get_entity(
        _rt(request), _who(request), request.match_info["siren"]))


async def update_entity(request: web.Request) -> web.Response:
    body = await _body(request, models.EntityPatch)
    return web.json_response(await entities.update_entity(
        _rt(request), _who(request), request.match_info["siren"], body.name, body.connectors))


async def delete_entity(request: web.Request) -> web.Response:
    await entities.delete_entity(_rt(request), _who(request), request.match_info["siren"])
    return web.Response(status=204)


async def check_connector(request: web.Request) -> web.Response:
    return web.json_response(await entities.check_connector(
        _rt(request), _who(request), request.match_info["siren"], request.match_info["name"]))


async def recent_events(request: web.Request) -> web.Response:
    return web.json_response(await views.recent_events(
        _rt(request), _who(request), after=query(request, "after", 0),
        limit=query(request, "limit", 100), entity=query(request, "entity"),
        flow=query(request, "flow")))


async def parking(request: web.Request) -> web.Response:
    return web.json_response(await views.parking(
        _rt(request), _who(request), entity=query(request, "entity"), flow=query(request, "flow"),
        limit=query(request, "limit", 100), cursor=query(request, "cursor")))


async def replay(request: web.Request) -> web.Response:
    body = await _body(request, models.ReplayIn)
    ids = [*body.ids, *([body.id] if body.id else [])]
    return web.json_response(await operations.replay(
        _rt(request), _who(request), ids=ids, entity=body.entity, flow=body.flow,
        step=body.step, error=body.error, all_parked=body.all, limit=body.limit))


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rt = _rt(request)
    checks: dict[str, Any] = {}
    try:
        await ping(rt.db)
        # A store that answers this probe but failed this process's work is still
        # recovering: not ready until the gate has seen it back.
        checks["store"] = "ok" if rt.gate.up else "down: reconnecting"
    except Exception as exc:
        if is_outage(exc):
            rt.gate.down(exc, "readiness probe")
        checks["store"] = f"down: {type(exc).__name__}"
    checks["transport"] = "ok" if await rt.transport.ready() else "down"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    async with _rt(request).db.connect() as conn:
        counts = await board.counts(conn, None)
    DOCUMENTS_BY_STATE.clear()
    for flow, state, count in counts:
        DOCUMENTS_BY_STATE.labels(flow, state).set(count)
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.build(_rt(request).flows))


def build_app(runtime: Runtime) -> web.Application:
    # client_max_size only bounds request.post(); multipart is streamed with its own cap.
    app = web.Application(middlewares=[errors_and_auth, guard.dashboard])
    app[RUNTIME] = runtime
    app[TOKENS] = TokenCache()
    routes.setup(app, runtime)
    app.add_routes([
        web.post("/api/v1/documents", submit),
        web.get("/api/v1/documents", list_documents),
        web.get("/api/v1/documents/{id}", get_document),
        web.get("/api/v1/documents/{id}/files/{file_id}", get_file),
        web.get("/api/v1/documents/{id}/journal", get_journal),
        web.post("/api/v1/documents/{id}/retry", retry),
        web.post("/api/v1/documents/{id}/cancel", cancel),
        web.post("/api/v1/documents/{id}/actions/{action}", action),
        web.post("/api/v1/documents/{id}/requests/{name}", follow_up),
        web.get("/api/v1/entities", list_entities),
        web.post("/api/v1/entities", create_entity),
        web.get("/api/v1/entities/{siren}", get_entity),
        web.patch("/api/v1/entities/{siren}", update_entity),
        web.delete("/api/v1/entities/{siren}", delete_entity),
        web.post("/api/v1/entities/{siren}/connectors/{name}/check", check_connector),
        web.get("/api/v1/entities/{siren}/classification", get_classification),
        web.post("/api/v1/entities/{siren}/classification", refresh_classification),
        web.get("/api/v1/events", recent_events),
        web.get("/api/v1/parking", parking),
        web.post("/api/v1/parking/replay", replay),
        web.get("/api/v1/openapi.json", openapi_json),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
    ])
    return app
