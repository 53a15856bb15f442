"""The dashboard's gate: a live session on every page but sign-in, the session's CSRF
token and this site's origin on every POST, security headers on every answer, and
errors shown as pages."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
import structlog
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from broker.errors import ServiceError
from broker.runtime import Runtime
from broker.web.live import LiveHub
from broker.web.session import Session, csrf_ok, current

log = structlog.get_logger("demat.web")

RUNTIME_KEY = web.AppKey("dashboard_runtime", Runtime)
HUB = web.AppKey("live_hub", LiveHub)
SESSION = web.RequestKey("dashboard_session", Session)
STARTED = web.RequestKey("dashboard_started", float)
FORM = web.RequestKey("dashboard_form", MultiDictProxy[str])
PREFIX = "/ui"
# Reached without a session.
OPEN = frozenset({"/ui/connexion"})
MAX_FORM = 64 * 1024
HEADERS = {
    # Only this site's own files; no inline script, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_of(request: web.Request) -> Session:
    session: Session = request[SESSION]
    return session


def hub(request: web.Request) -> LiveHub:
    return request.app[HUB]


async def form(request: web.Request) -> MultiDictProxy[str]:
    """The POSTed form (read once; files are not taken)."""
    if FORM not in request:
        if (request.content_length or 0) > MAX_FORM:
            raise ServiceError(413, "formulaire trop grand")
        data = await request.post()
        request[FORM] = MultiDictProxy(MultiDict(
            [(k, v) for k, v in data.items() if isinstance(v, str)]))
    found: MultiDictProxy[str] = request[FORM]
    return found


def _same_origin(request: web.Request, *, required: bool) -> bool:
    """The form was sent by a page of this site: its Origin (or Referer) is this site's
    public origin (``DEMAT_PUBLIC_URL``, or the scheme and host the request came to)."""
    sent = request.headers.get("Origin") or request.headers.get("Referer")
    if sent is None or sent == "null":
        # Browsers send Origin on every POST; without one only the CSRF token vouches, and
        # the sign-in form has none to check.
        return not required
    rt = request.app[RUNTIME_KEY]
    public = rt.settings.public_url
    if public:
        wanted = urlsplit(public)
        expected = (wanted.scheme, wanted.netloc)
    else:
        scheme = "https" if rt.settings.behind_tls or request.secure else "http"
        expected = (scheme, request.host)
    parts = urlsplit(sent)
    return (parts.scheme, parts.netloc) == expected


def _error(request: web.Request, status: int, message: str) -> web.Response:
    response = aiohttp_jinja2.render_template("error.html", request, {
        "session": request.get(SESSION), "status": status,
        "message": message, "path": request.path}, status=status)
    return response


@web.middleware
async def dashboard(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path != "/" and path != PREFIX and not path.startswith(PREFIX + "/"):
        return await handler(request)
    started = time.perf_counter()
    request[STARTED] = started
    try:
        return await _guarded(request, handler)
    except ServiceError as exc:
        return _error(request, exc.status, exc.message)


async def secured(request: web.Request, response: web.StreamResponse) -> None:
    """Every dashboard answer, streamed ones included, as its headers go out: the security
    headers, no caching but for the static files (their URLs change with their content),
    and the time the server took (``Server-Timing``)."""
    path = request.path
    if path != "/" and path != PREFIX and not path.startswith(PREFIX + "/"):
        return
    response.headers.update(HEADERS)
    if path.startswith(PREFIX + "/static/"):
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        response.headers["Cache-Control"] = "no-store"
    if (started := request.get(STARTED)) is not None:
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path == "/" or path.startswith(PREFIX + "/static/"):
        return await handler(request)
    if request.method == "POST" and not _same_origin(request, required=path in OPEN):
        log.warning("cross-site form refused", path=path, origin=request.headers.get("Origin"))
        raise ServiceError(403, "formulaire venu d'un autre site : refusé")
    session = await current(request.app[RUNTIME_KEY], request)
    if session is not None:
        request[SESSION] = session
    if path in OPEN:
        return await handler(request)
    if session is None:
        if request.method == "GET" and path != PREFIX + "/live":
            target = path + (f"?{request.query_string}" if request.query_string else "")
            raise web.HTTPSeeOther(f"{PREFIX}/connexion?{urlencode({'suite': target})}")
        raise ServiceError(401, "session absente ou terminée : reconnectez-vous")
    if request.method == "POST" and not csrf_ok(session, (await form(request)).get("csrf")):
        log.warning("form without its session's CSRF token", path=path,
                    actor=session.who.actor)
        raise ServiceError(403, "jeton de formulaire absent ou périmé : rechargez la page")
    return await handler(request)
