"""The dashboard's pages. Each reads through the same views and operations as the API, with
the signed-in session's principal, so an entity's session sees what its token sees."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup

from broker import engine as eng
from broker import entities, operations, views
from broker.errors import ServiceError
from broker.runtime import Runtime
from broker.store import dashboard as board
from broker.store import documents as docs
from broker.store import events as stored_events
from broker.store.keys import reference
from broker.store.reads import Group
from broker.ttlcache import TtlCache
from broker.web import charts, labels
from broker.web.guard import RUNTIME_KEY, SESSION, form, hub, session_of
from broker.web.live import TooMany, event_line
from broker.web.session import Failures, clear_cookie, current, set_cookie, sign_in, sign_out

PAGE = 50
CSV_BATCH = 500
REPLAY_BATCH = 100
SHOWN = 20
FAILURES = web.AppKey("sign_in_failures", Failures)
HEARTBEAT = 15.0
_DEPTHS: TtlCache[dict[str, int | None]] = TtlCache(5.0)
COALESCE = 0.25
# A live stream checks now and then that its session still holds (ended elsewhere).
RECHECK = 30.0


def _rt(request: web.Request) -> Runtime:
    return request.app[RUNTIME_KEY]


def _page(request: web.Request, template: str, context: Mapping[str, Any],
          status: int = 200) -> web.Response:
    session = request.get(SESSION)
    base = {"session": session, "path": request.path,
            "flows": sorted(_rt(request).flows), "states": eng.STATES}
    return aiohttp_jinja2.render_template(template, request, {**base, **context},
                                          status=status)


def _local(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of this site only."""
    if target and target.startswith("/ui/") and not target.startswith("/ui//"):
        return target
    return "/ui/"


# --- sign-in ---------------------------------------------------------------------------

async def root(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def sign_in_form(request: web.Request) -> web.Response:
    return _page(request, "connexion.html", {"next": _local(request.query.get("suite")),
                                             "error": None})


async def sign_in_post(request: web.Request) -> web.Response:
    rt = _rt(request)
    data = await form(request)
    target = _local(data.get("suite"))
    client = request.remote or "?"
    failures = request.app[FAILURES]
    if failures.blocked(client):
        return _page(request, "connexion.html", {"next": target, "error": (
            "Trop d'essais manqués : réessayez dans une minute.")}, status=429)
    opened = await sign_in(rt, (data.get("jeton") or "").strip(), request.get(SESSION))
    if opened is None:
        failures.failed(client)
        return _page(request, "connexion.html", {"next": target, "error": (
            "Jeton inconnu ou révoqué. Collez le jeton d'API qui vous a été remis.")},
            status=401)
    value, _session = opened
    response = web.HTTPSeeOther(target)
    set_cookie(rt, request, response, value)
    raise response


async def sign_out_post(request: web.Request) -> web.Response:
    rt = _rt(request)
    session = session_of(request)
    await sign_out(rt, session)
    hub(request).end_session(session.key)
    response = web.HTTPSeeOther("/ui/connexion")
    clear_cookie(rt, request, response)
    raise response


# --- overview --------------------------------------------------------------------------

def activity(hours: list[tuple[int, str, int]], start: float, now: float
             ) -> tuple[list[charts.Bar], list[charts.Bar]]:
    """The last 24 hours and the last 30 days (Paris days, whatever the clock changes in
    between) from documents ended per hour since ``start`` (a Paris midnight)."""
    first_hour = now - now % 3600 - 23 * 3600
    today = datetime.fromtimestamp(now, labels.PARIS).date()
    days = [today - timedelta(days=29 - i) for i in range(30)]
    per_hour: dict[int, list[int]] = {}
    per_day: dict[Any, list[int]] = {d: [0, 0] for d in days}
    for bucket, state, n in hours:
        at = start + bucket * 3600
        bad = 1 if state in (eng.REJECTED, eng.FAILED) else 0
        per_hour.setdefault(int((at - first_hour) // 3600), [0, 0])[bad] += n
        day = datetime.fromtimestamp(at, labels.PARIS).date()
        if day in per_day:
            per_day[day][bad] += n
    by_hour = [charts.Bar(labels.when(first_hour + i * 3600)[11:13] + " h",
                          *per_hour.get(i, [0, 0])) for i in range(24)]
    by_day = [charts.Bar(d.strftime("%d/%m"), *per_day[d]) for d in days]
    return by_hour, by_day


async def overview(request: web.Request) -> web.Response:
    rt = _rt(request)
    who = session_of(request).who
    entity = None if who.is_operator else who.entity
    t = time.time()
    day = datetime.fromtimestamp(t, labels.PARIS).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
    day_start = (day - timedelta(days=29)).timestamp()
    settings = rt.settings
    async with rt.db.connect() as conn:
        counts = await board.counts(conn, entity)
        hours = await board.finished(conn, entity, day_start)
        stuck, stuck_total = await board.stuck(
            conn, entity, settings.stuck_limits, settings.seconds("stuck_default"), t, SHOWN)
        waiting = await board.waiting(conn, entity)
        retrying = await board.retrying(conn, entity, SHOWN)
        parked = await board.parked_groups(conn, entity, SHOWN)
        health = await board.health(conn, sorted(rt.connectors), entity, t - 3600)
        last_event = await stored_events.last_id(conn)
    table: dict[str, dict[str, int]] = {}
    for flow, state, n in counts:
        table.setdefault(flow, {})[state] = n
    by_hour, by_day = activity(hours, day_start, t)
    depths = await _depths(rt)
    return _page(request, "overview.html", {
        "table": table, "state_order": _STATE_ORDER,
        "hours_svg": Markup(charts.bars("Documents terminés par heure, 24 dernières heures",
                                        by_hour, every=3, key="hours")),
        "days_svg": Markup(charts.bars("Documents terminés par jour, 30 derniers jours",
                                       by_day, every=5, key="days")),
        "by_hour": by_hour, "by_day": by_day, "percent": charts.percent,
        "day_total": _sum(by_hour), "month_total": _sum(by_day),
        "stuck": stuck, "stuck_total": stuck_total, "limit_of": _limit_of(rt),
        "waiting": waiting, "retrying": retrying, "parked": parked, "health": health,
        "depths": depths, "now": t, "last_event": last_event})


def _sum(data: list[charts.Bar]) -> charts.Bar:
    return charts.Bar("total", sum(b.ok for b in data), sum(b.errors for b in data))


_STATE_ORDER = ["queued", "running", "waiting", "retrying", "completed", "rejected", "failed",
                "cancelled"]


def _limit_of(rt: Runtime) -> Any:
    limits, default = rt.settings.stuck_limits, rt.settings.seconds("stuck_default")
    return lambda flow, step: limits.get((flow, step or ""), default)


async def _depths(rt: Runtime) -> dict[str, int | None]:
    """Messages waiting in each connector's work queue, asked together and kept a few
    seconds: a busy overview does not open broker channels on every load."""
    kept = _DEPTHS.get(str(id(rt)))
    if kept is not None:
        return kept
    names = sorted(rt.connectors)

    async def one(name: str) -> int | None:
        try:
            return await asyncio.wait_for(rt.transport.depth(rt.transport.work_queue(name)),
                                          2.0)
        except TimeoutError:  # the page renders while the broker does not answer
            return None

    found = dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))
    _DEPTHS.put(str(id(rt)), found)
    return found


# --- search and export -----------------------------------------------------------------

def _search_of(request: web.Request) -> tuple[board.Search, dict[str, str], list[str]]:
    """The search the query string asks for, the form's values, and what is wrong in it."""
    rt = _rt(request)
    who = session_of(request).who
    q = {k: v.strip() for k, v in request.query.items() if k != "apres" and v.strip()}
    problems: list[str] = []
    entity = q.get("entite")
    if entity and not (len(entity) == 9 and entity.isdigit()):
        problems.append("Entité : un SIREN de 9 chiffres est attendu.")
        entity = None
    if not who.is_operator:
        entity = who.entity
    flow = q.get("flux")
    if flow and flow not in rt.flows:
        problems.append(f"Flux : « {flow} » n'existe pas ({', '.join(sorted(rt.flows))}).")
        flow = None
    state = q.get("etat")
    if state and state not in eng.STATES and state != board.ACTIVE:
        problems.append(f"État : « {state} » n'existe pas.")
        state = None
    dates: dict[str, float | None] = {}
    for name, label, shift in (("du", "Du", 0), ("au", "Au", 1)):
        raw = q.get(name)
        dates[name] = None
        if raw:
            try:
                start = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=labels.PARIS)
                dates[name] = (start + timedelta(days=shift)).timestamp()
            except ValueError:
                problems.append(f"{label} : une date AAAA-MM-JJ est attendue, pas « {raw} ».")
    order = "old" if q.get("tri") == "ancien" else "new"
    search = board.Search(entity=entity, flow=flow, state=state, step=q.get("etape"),
                          since=dates["du"], until=dates["au"], ref=q.get("ref"), order=order)
    return search, q, problems


async def documents_list(request: web.Request) -> web.Response:
    rt = _rt(request)
    search, q, problems = _search_of(request)
    after = request.query.get("apres") or None
    async with rt.db.connect() as conn:
        rows = await board.search(conn, search, limit=PAGE, after=after)
        last_event = await stored_events.last_id(conn)
    page = rows[:PAGE]
    more = page[-1].id if len(rows) > PAGE else None
    return _page(request, "documents.html", {
        "rows": page, "q": q, "problems": problems,
        "next_url": f"?{urlencode({**q, 'apres': more})}" if more else None,
        "csv_url": f"/ui/documents.csv?{urlencode(q)}", "last_event": last_event,
        "first_page": after is None}, status=422 if problems else 200)


CSV_COLUMNS = ["id", "flux", "entite", "etat", "etape", "essai", "reference", "cree_le",
               "modifie_le", "derniere_erreur"]


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one that would start a formula is quoted."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def documents_csv(request: web.Request) -> web.StreamResponse:
    """Streamed a batch at a time: the whole result is never in memory."""
    rt = _rt(request)
    search, _q, problems = _search_of(request)
    if problems:
        raise ServiceError(422, " ".join(problems))
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": "attachment; filename=\"documents.csv\""})
    await response.prepare(request)
    buffer = io.StringIO()
    out = csv.writer(buffer)
    out.writerow(CSV_COLUMNS)
    after: str | None = None
    while True:
        async with rt.db.connect() as conn:
            rows = await board.search(conn, search, limit=CSV_BATCH, after=after)
        for r in rows[:CSV_BATCH]:
            out.writerow([_cell(v) for v in (
                r.id, r.flow, r.entity, r.state, r.step or "", r.run, reference(r.metadata),
                labels.iso(r.created_at), labels.iso(r.updated_at), r.last_error or "")])
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
        if len(rows) <= CSV_BATCH:
            break
        after = rows[CSV_BATCH - 1].id
    await response.write_eof()
    return response


# --- one document ----------------------------------------------------------------------

def _allowed(request: web.Request, row: Any) -> list[str]:
    return operations.allowed(_rt(request).flows.get(row.flow), row.state, row.metadata,
                              session_of(request).who)


_SUMMARY_KEYS = ("step", "from", "to", "run", "try", "poll", "error", "reason", "action",
                 "note", "status", "warnings", "deadline", "parked", "crashes", "worker")


def _timeline(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    shown = []
    previous: float | None = None
    for e in entries:
        at = datetime.fromisoformat(e["at"]).timestamp()
        details = {k: v for k, v in e.items() if k not in ("seq", "at", "kind", "actor")}
        shown.append({"at": at, "kind": e["kind"], "actor": e["actor"],
                      "after": None if previous is None else at - previous,
                      "main": {k: details[k] for k in _SUMMARY_KEYS if k in details},
                      "other": {k: v for k, v in details.items() if k not in _SUMMARY_KEYS}})
        previous = at
    return shown


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "oui" if value else "non"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _requests(rt: Runtime, row: Any, refused: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """The forms of the requests the document still takes (an invoice's statuses): each
    field of the request's model, what to know now, and a refusal to show again."""
    flow = rt.flows.get(row.flow)
    if flow is None:
        return []
    doc = docs.doc_of(row)
    shown = []
    for name, wanted in sorted(flow.follow_ups.items()):
        if not eng.takes_follow_up(flow, doc, name):
            continue
        schema = wanted.model.model_json_schema()
        properties, required = schema.get("properties", {}), set(schema.get("required", ()))
        mine = refused if refused and refused.get("name") == name else {}
        shown.append({
            "name": name, "description": wanted.description,
            "hint": wanted.hint(row.metadata, row.refs) if wanted.hint else "",
            "fields": [{"name": field, "title": spec.get("title", field),
                        "required": field in required,
                        "value": (mine.get("values") or {}).get(field, "")}
                       for field, spec in properties.items()],
            "message": mine.get("message"), "problems": mine.get("problems", [])})
    return shown


async def document_page(request: web.Request, refused: Mapping[str, Any] | None = None
                        ) -> web.Response:
    rt = _rt(request)
    who = session_of(request).who
    doc_id = request.match_info["id"]
    doc = await views.get_document(rt, who, doc_id)
    row = await views.visible_document(rt, who, doc_id)
    journal = await views.journal_of(rt, who, doc_id)
    async with rt.db.connect() as conn:
        last_event = await stored_events.last_id(conn)
    requests = _requests(rt, row, refused)
    # A refusal whose form is no longer offered (the document moved on) is shown alone.
    refusal = None
    if refused is not None and all(r["name"] != refused.get("name") for r in requests):
        refusal = refused.get("message")
    return _page(request, "document.html", {
        "doc": doc, "row": row, "timeline": _timeline(journal), "allowed": _allowed(request, row),
        "requests": requests, "refusal": refusal,
        "metadata": {k: _shown(v) for k, v in row.metadata.items()},
        "done": request.query.get("fait"), "last_event": last_event,
        "in_step": time.time() - (row.step_since or row.updated_at)},
        status=int(refused.get("status", 422)) if refused else 200)


async def request_post(request: web.Request) -> web.Response:
    """A request's form (an invoice's next statuses): sent as the API would take it; a
    refusal shows the page again with every reason and what was typed."""
    rt = _rt(request)
    who = session_of(request).who
    doc_id, name = request.match_info["id"], request.match_info["name"]
    sent = await form(request)
    values = {k: v.strip() for k, v in sent.items() if k != "csrf" and v.strip()}
    try:
        await operations.follow_up(rt, who, doc_id, name, json.dumps(values).encode())
    except ServiceError as exc:
        if exc.status not in (409, 422):
            raise
        # Refused, or no longer possible (the invoice moved on since the page was shown).
        return await document_page(request, {
            "name": name, "values": values, "message": exc.message, "status": exc.status,
            "problems": [f"{p.field} : {p.message}" for p in exc.problems]})
    raise web.HTTPSeeOther(f"/ui/documents/{doc_id}?{urlencode({'fait': name})}")


async def download(request: web.Request) -> web.StreamResponse:
    return await views.download(_rt(request), session_of(request).who,
                                request.match_info["id"], request.match_info["file_id"])


async def confirm_form(request: web.Request) -> web.Response:
    rt = _rt(request)
    who = session_of(request).who
    row = await views.visible_document(rt, who, request.match_info["id"])
    action = request.query.get("action", "")
    if action not in _allowed(request, row):
        raise ServiceError(409, f"l'action « {action} » n'est pas possible pour ce document "
                           f"({labels.label(labels.STATES, row.state)})")
    return _page(request, "confirm.html", {"row": row, "action": action})


async def action_post(request: web.Request) -> web.Response:
    rt = _rt(request)
    who = session_of(request).who
    doc_id = request.match_info["id"]
    action = (await form(request)).get("action", "")
    if action == "retry":
        await operations.retry(rt, who, doc_id)
    elif action == "cancel":
        await operations.cancel(rt, who, doc_id)
    elif action == "replay":
        await operations.replay(rt, who, ids=[doc_id], limit=1)
    else:
        await operations.perform(rt, who, doc_id, action)
    raise web.HTTPSeeOther(f"/ui/documents/{doc_id}?{urlencode({'fait': action})}")


# --- parking ---------------------------------------------------------------------------

async def parking_page(request: web.Request) -> web.Response:
    rt = _rt(request)
    who = session_of(request).who
    entity = None if who.is_operator else who.entity
    async with rt.db.connect() as conn:
        groups = await board.parked_groups(conn, entity, 200)
    listing = await views.parking(rt, who, limit=PAGE, cursor=request.query.get("apres"))
    return _page(request, "parking.html", {"groups": groups, "listing": listing,
                                           "until": repr(time.time())})


async def replay_post(request: web.Request) -> web.Response:
    """Replay one group exactly as the page showed it (its flow, step and error, parked no
    later than the page's time), a bounded batch per request; says how many remain."""
    rt = _rt(request)
    data = await form(request)
    flow, step, error = data.get("flux") or "", data.get("etape") or None, data.get("erreur")
    try:
        until, done = float(data.get("jusqua", "")), int(data.get("deja") or 0)
    except ValueError as exc:
        raise ServiceError(422, "formulaire de rejeu incomplet : rechargez le parking") from exc
    if not flow or error is None:
        raise ServiceError(422, "choisissez un groupe (flux, étape, erreur)")
    result = await operations.replay(rt, session_of(request).who, limit=REPLAY_BATCH,
                                     group=Group(flow, step, error, until))
    done += result["count"]
    context = {"flow": flow, "step": step or "", "error": error, "until": data["jusqua"],
               "done": done, "count": result["count"], "remaining": result["remaining"]}
    if request.headers.get("Accept") == "application/json":
        return web.json_response(context)
    return _page(request, "replayed.html", context)


# --- entities --------------------------------------------------------------------------

async def entities_page(request: web.Request) -> web.Response:
    found = await entities.list_entities(_rt(request), session_of(request).who,
                                         limit=PAGE, cursor=request.query.get("apres"))
    return _page(request, "entities.html", {"listing": found})


async def entity_page(request: web.Request, checks: list[dict[str, Any]] | None = None
                      ) -> web.Response:
    rt = _rt(request)
    who = session_of(request).who
    siren = request.match_info["siren"]
    entity = await entities.get_entity(rt, who, siren)
    async with rt.db.connect() as conn:
        health = await board.health(conn, sorted(rt.connectors), siren, time.time() - 3600)
        latest = await board.latest_change(conn, siren)
    return _page(request, "entity.html", {
        "entity": entity, "health": [h for h in health if h.finished or h.last_success],
        "latest": latest, "checks": checks,
        "settings": {k: json.dumps(v, ensure_ascii=False, indent=1)
                     for k, v in entity["connectors"].items()}})


async def entity_check(request: web.Request) -> web.Response:
    """Ask each configured peer of the entity a harmless question."""
    rt = _rt(request)
    who = session_of(request).who
    siren = request.match_info["siren"]
    entity = await entities.get_entity(rt, who, siren)
    results = []
    for name, connector in sorted(rt.connectors.items()):
        if connector.settings_key not in entity["connectors"]:
            continue
        try:
            results.append(await entities.check_connector(rt, who, siren, name))
        except ServiceError as exc:
            results.append({"connector": name, "ok": False, "detail": exc.message})
    return await entity_page(request, results)


# --- live ------------------------------------------------------------------------------

async def live(request: web.Request) -> web.StreamResponse:
    """Server-sent events: what the session may see, caught up from the store first."""
    rt = _rt(request)
    session = session_of(request)
    entity = None if session.who.is_operator else session.who.entity
    try:
        stream = await hub(request).open(session.key, session.who.token_id, entity)
    except TooMany as exc:
        raise ServiceError(429, str(exc)) from exc
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        raw = request.headers.get("Last-Event-ID") or request.query.get("apres") or ""
        if raw.isdigit():
            async with rt.db.connect() as conn:
                missed = await stored_events.recent(conn, after=int(raw), limit=500,
                                                    entity=entity)
            for row in missed:
                await response.write(event_line({**row.payload, "event": row.id}))
        checked = time.monotonic()
        while True:
            try:
                line = await asyncio.wait_for(stream.queue.get(), HEARTBEAT)
            except TimeoutError:
                line = b": ping\n\n"
            if line is not None and not line.startswith(b":"):
                # A page needs its news within a second, not each at once: what arrives in
                # the next moment goes in the same write (busy servers write far less).
                await asyncio.sleep(COALESCE)
            lines = [line]
            while lines[-1] is not None and not stream.queue.empty():
                lines.append(stream.queue.get_nowait())
            ended = lines[-1] is None
            if stream.overflowed:  # events were dropped: the page reloads what it shows
                stream.overflowed = False
                lines = [b"event: reload\ndata: {}\n\n"]
            sent = b"".join(x for x in lines if x is not None)
            if sent:
                await response.write(sent)
            if ended:
                break
            if time.monotonic() - checked > RECHECK:
                checked = time.monotonic()
                if not await _still_signed_in(rt, request):
                    break
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    finally:
        hub(request).close(stream)


async def _still_signed_in(rt: Runtime, request: web.Request) -> bool:
    return await current(rt, request) is not None
