"""Dashboard sign-in: an API token exchanged for a session cookie.

The cookie holds a random value the store never keeps (only its SHA-256), so a copy of
the database opens no session. Each sign-in makes a new session whatever cookie came
with the request (no fixation), sign-out ends it in the store (a copied cookie is
worthless from then on), and a revoked token ends every session made with it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import structlog
from aiohttp import web

from broker import accounts, journal
from broker.accounts import Principal
from broker.runtime import Runtime, now
from broker.store import journal as stored_journal
from broker.store import sessions as stored
from broker.ttlcache import TtlCache

log = structlog.get_logger("demat.web")

COOKIE = "demat_session"
# Over TLS: a name browsers keep only from this host, Secure and path=/ (no sibling
# subdomain can plant one).
SECURE_COOKIE = "__Host-demat_session"
# A session's last use is written at most this often (not on every page).
TOUCH_EVERY = 60.0
# Failed sign-ins allowed per client address per window.
MAX_FAILURES, FAILURE_WINDOW = 10, 60.0


@dataclass(frozen=True)
class Session:
    key: str  # SHA-256 of the cookie's value
    who: Principal
    csrf: str
    seen_at: float

    @property
    def short(self) -> str:
        """How the journal names the session (never enough to use it)."""
        return self.key[:12]


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Failures:
    """Failed sign-ins per client address, to slow down token guessing."""

    def __init__(self) -> None:
        self._seen: TtlCache[int] = TtlCache(FAILURE_WINDOW)

    def blocked(self, client: str) -> bool:
        return (self._seen.get(client) or 0) >= MAX_FAILURES

    def failed(self, client: str) -> None:
        self._seen.put(client, (self._seen.get(client) or 0) + 1)


async def sign_in(rt: Runtime, token: str, replacing: Session | None = None
                  ) -> tuple[str, Session] | None:
    """A new session for ``token``: (cookie value, session); None if the token is not live.
    The session the browser came with, if any, ends."""
    t = now()
    value = secrets.token_urlsafe(32)
    key, csrf = _hash(value), secrets.token_urlsafe(32)
    async with rt.db.begin() as conn:
        who = await accounts.authenticate(conn, token)
        if who is None:
            return None
        await stored.insert(conn, key, who.token_id, csrf, t,
                            t + rt.settings.seconds("session_lifetime"))
        await stored.prune(conn, t - 86_400)
        if replacing is not None:
            await stored.end(conn, replacing.key, t)
        await stored_journal.append(conn, [journal.Entry(
            "session", {"action": "sign-in", "session": key[:12]}, None, who.actor)], t)
    return value, Session(key, who, csrf, t)


async def current(rt: Runtime, request: web.Request) -> Session | None:
    value = request.cookies.get(cookie_name(rt, request))
    if not value or len(value) > 128:
        return None
    key, t = _hash(value), now()
    async with rt.db.connect() as conn:
        row = await stored.live(conn, key, t, t - rt.settings.seconds("session_idle"))
        if row is None:
            return None
        if t - row.seen_at > TOUCH_EVERY:
            await stored.touch(conn, key, t)
            await conn.commit()
    return Session(key, Principal(row.token_id, row.role, row.entity), row.csrf,
                   row.seen_at)


async def sign_out(rt: Runtime, session: Session) -> None:
    t = now()
    async with rt.db.begin() as conn:
        if await stored.end(conn, session.key, t):
            await stored_journal.append(conn, [journal.Entry(
                "session", {"action": "sign-out", "session": session.short}, None,
                session.who.actor)], t)


def secure(rt: Runtime, request: web.Request) -> bool:
    return rt.settings.behind_tls or request.secure


def cookie_name(rt: Runtime, request: web.Request) -> str:
    return SECURE_COOKIE if secure(rt, request) else COOKIE


def set_cookie(rt: Runtime, request: web.Request, response: web.StreamResponse,
               value: str) -> None:
    response.set_cookie(cookie_name(rt, request), value, httponly=True, samesite="Strict", path="/",
                        secure=secure(rt, request),
                        max_age=int(rt.settings.seconds("session_lifetime")))


def clear_cookie(rt: Runtime, request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(cookie_name(rt, request), path="/", secure=secure(rt, request),
                        httponly=True, samesite="Strict")


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and secrets.compare_digest(session.csrf.encode(), (sent or "").encode())
