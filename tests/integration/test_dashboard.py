"""The dashboard over HTTP (no browser): sign-in and sessions, CSRF, entity isolation,
search by the domain's keys, the CSV export, actions and the live stream's bounds."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from broker import accounts
from broker.runtime import Runtime
from broker.settings import Settings
from broker.store.schema import journal, tokens
from broker.web import live
from broker.web.session import COOKIE
from broker.wiring import catalog
from tests.api_client import served

ENTITY = "214000150"
OTHER = "200000008"
SECRET = "pw-Zq81-never-shown"


class Site:
    def __init__(self, client: TestClient[Any, Any], rt: Runtime, tokens: dict[str, str]):
        self.client, self.rt, self.tokens = client, rt, tokens

    async def submit(self, entity: str = ENTITY, **metadata: Any) -> str:
        form = aiohttp.FormData()
        form.add_field("flow", "depot")
        form.add_field("entity", entity)
        form.add_field("metadata", json.dumps(metadata or {"n": 1}))
        form.add_field("document", b"<a/>", filename="a.xml")
        resp = await self.client.post("/api/v1/documents", data=form, headers={
            "Authorization": f"Bearer {self.tokens['operator']}"})
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])

    async def sign_in(self, who: str = "operator") -> aiohttp.ClientResponse:
        resp = await self.client.post("/ui/connexion", data={"jeton": self.tokens[who]},
                                      allow_redirects=False)
        assert resp.status == 303, await resp.text()
        return resp

    def cookie(self) -> str | None:
        found = self.client.session.cookie_jar.filter_cookies(self.client.make_url("/"))
        return found[COOKIE].value if COOKIE in found else None

    def set_cookie(self, value: str) -> None:
        self.client.session.cookie_jar.update_cookies({COOKIE: value},
                                                      response_url=self.client.make_url("/"))

    async def page(self, path: str) -> tuple[int, str]:
        resp = await self.client.get(path, allow_redirects=False)
        return resp.status, await resp.text()

    async def csrf(self, path: str = "/ui/") -> str:
        _status, html = await self.page(path)
        match = re.search(r'name="csrf" value="([^"]+)"', html)
        assert match, html[:500]
        return match.group(1)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    settings = Settings(data_dir=tmp_path / "data")
    rt = await Runtime.open(settings, catalog())
    depot = {"url": "http://127.0.0.1:9/inbox", "token": SECRET}
    async with rt.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune A", {"depot": depot},
                                     catalog().settings)
        await accounts.upsert_entity(conn, OTHER, "Commune B", {}, catalog().settings)
        found = {"operator": await accounts.create_token(conn, accounts.OPERATOR),
                 "entity": await accounts.create_token(conn, accounts.ENTITY, ENTITY),
                 "other": await accounts.create_token(conn, accounts.ENTITY, OTHER)}
    async with served(rt) as client:
        yield Site(client, rt, found)


async def test_the_root_leads_to_sign_in_then_back_where_one_was_going(site: Site) -> None:
    resp = await site.client.get("/ui/parking", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/ui/connexion?suite=")
    resp = await site.client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    resp = await site.client.post("/ui/connexion", allow_redirects=False, data={
        "jeton": site.tokens["operator"], "suite": "/ui/parking"})
    assert resp.status == 303 and resp.headers["Location"] == "/ui/parking"
    # Only this site's dashboard paths: no open redirect.
    for target in ("https://evil.example/", "//evil.example/ui/", "/ui//evil.example"):
        resp = await site.client.post("/ui/connexion", allow_redirects=False, data={
            "jeton": site.tokens["operator"], "suite": target})
        assert resp.headers["Location"] == "/ui/", target


async def test_a_wrong_token_is_refused_and_guessing_is_slowed(site: Site) -> None:
    resp = await site.client.post("/ui/connexion", data={"jeton": "dmt_forged"})
    assert resp.status == 401 and "Jeton inconnu" in await resp.text()
    assert site.cookie() is None
    for _ in range(12):
        resp = await site.client.post("/ui/connexion", data={"jeton": "dmt_forged"})
    assert resp.status == 429
    # Even the right token waits out the window from that address.
    resp = await site.client.post("/ui/connexion", data={"jeton": site.tokens["operator"]})
    assert resp.status == 429


async def test_the_cookie_is_httponly_strict_and_secure_behind_tls(site: Site) -> None:
    resp = await site.sign_in()
    header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" not in header
    site.rt.settings.behind_tls = True
    resp = await site.sign_in()
    assert "Secure" in resp.headers["Set-Cookie"]


async def test_every_page_sends_its_security_headers(site: Site) -> None:
    await site.sign_in()
    resp = await site.client.get("/ui/")
    assert resp.status == 200
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"


async def test_signing_in_makes_a_new_session_whatever_cookie_came_with_it(site: Site) -> None:
    site.set_cookie("planted-by-an-attacker")
    await site.sign_in()
    assert site.cookie() not in (None, "planted-by-an-attacker")
    first = site.cookie()
    await site.sign_in()
    assert site.cookie() != first  # each sign-in: a new session


async def test_a_stolen_cookie_is_useless_after_sign_out(site: Site) -> None:
    await site.sign_in()
    stolen = site.cookie()
    assert stolen
    status, _ = await site.page("/ui/")
    assert status == 200
    resp = await site.client.post("/ui/deconnexion", data={"csrf": await site.csrf()},
                                  allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/connexion"
    site.set_cookie(stolen)
    status, _ = await site.page("/ui/")
    assert status == 303  # back to sign-in
    resp = await site.client.get("/ui/live")
    assert resp.status == 401
    async with site.rt.db.connect() as conn:
        kinds = [(r.kind, r.data["action"]) for r in (await conn.execute(
            sa.select(journal).where(journal.c.kind == "session").order_by(journal.c.id)))]
    assert kinds == [("session", "sign-in"), ("session", "sign-out")]


async def test_a_revoked_token_ends_its_sessions(site: Site) -> None:
    await site.sign_in("entity")
    assert (await site.page("/ui/documents"))[0] == 200
    async with site.rt.db.begin() as conn:
        await conn.execute(tokens.update().where(tokens.c.role == "entity",
                                                 tokens.c.entity == ENTITY).values(
            revoked_at=1.0))
    assert (await site.page("/ui/documents"))[0] == 303


async def test_a_form_without_its_csrf_token_or_from_elsewhere_is_refused(site: Site) -> None:
    doc = await site.submit()
    await site.sign_in()
    for data, headers in (({"action": "cancel"}, {}),
                          ({"action": "cancel", "csrf": "guessed"}, {}),
                          ({"action": "cancel", "csrf": await site.csrf()},
                           {"Origin": "https://evil.example"})):
        resp = await site.client.post(f"/ui/documents/{doc}/action", data=data,
                                      headers=headers, allow_redirects=False)
        assert resp.status == 403, data
    _status, html = await site.page(f"/ui/documents/{doc}")
    assert "state-queued" in html and "state-cancelled" not in html
    # With its token, from this site: done, and journaled with who did it.
    resp = await site.client.post(f"/ui/documents/{doc}/action", allow_redirects=False,
                                  data={"action": "cancel", "csrf": await site.csrf()})
    assert resp.status == 303
    _status, html = await site.page(f"/ui/documents/{doc}?fait=cancel")
    assert "Demande « Annuler » enregistrée" in html
    async with site.rt.db.connect() as conn:
        row = (await conn.execute(sa.select(journal).where(
            journal.c.document_id == doc, journal.c.kind == "operator"))).one()
    assert row.data["action"] == "cancel" and row.actor.startswith("operator:")


async def test_an_action_the_state_does_not_allow_is_not_offered(site: Site) -> None:
    doc = await site.submit()
    await site.sign_in()
    await site.client.post(f"/ui/documents/{doc}/action",
                           data={"action": "cancel", "csrf": await site.csrf()})
    status, html = await site.page(f"/ui/documents/{doc}/confirmer?action=cancel")
    assert status == 409 and "pas possible" in html
    resp = await site.client.post(f"/ui/documents/{doc}/action",
                                  data={"action": "cancel", "csrf": await site.csrf()})
    assert resp.status == 409


async def test_an_entity_session_sees_its_own_documents_only(site: Site) -> None:
    mine = await site.submit(ENTITY, numero="2026-001")
    theirs = await site.submit(OTHER, numero="2026-002")
    async with site.rt.db.connect() as conn:
        file_id = (await conn.execute(sa.text(
            "SELECT id FROM files WHERE document_id = :d"), {"d": theirs})).scalar_one()
    await site.sign_in("entity")
    assert (await site.page(f"/ui/documents/{mine}"))[0] == 200
    for path in (f"/ui/documents/{theirs}", f"/ui/documents/{theirs}/fichiers/{file_id}",
                 f"/ui/documents/{theirs}/confirmer?action=cancel"):
        status, html = await site.page(path)
        assert status == 404 and theirs in html, path  # not found: no hint it exists
    _status, html = await site.page(f"/ui/documents?entite={OTHER}")
    assert mine in html and theirs not in html
    _status, html = await site.page("/ui/documents?ref=2026-002")
    assert theirs not in html
    resp = await site.client.get(f"/ui/documents.csv?entite={OTHER}")
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [r["id"] for r in rows] == [mine]
    assert (await site.page("/ui/entites"))[0] == 403
    assert (await site.page(f"/ui/entites/{OTHER}"))[0] == 403
    _status, html = await site.page("/ui/")
    assert "Entité 214000150" in html and theirs not in html


async def test_search_finds_a_document_by_its_keys_and_by_id(site: Site) -> None:
    wanted = await site.submit(numero="2026-DEL-17")
    await site.submit(numero="2026-DEL-18")
    await site.sign_in()
    for ref in ("2026-DEL-17", wanted):
        _status, html = await site.page(f"/ui/documents?ref={ref}")
        found = set(re.findall(r'href="/ui/documents/([0-9A-Z]{26})"', html))
        assert found == {wanted}, ref
    status, html = await site.page("/ui/documents?entite=12&du=hier")
    assert status == 422 and "SIREN de 9 chiffres" in html and "AAAA-MM-JJ" in html


async def test_the_csv_export_streams_every_matching_row(site: Site) -> None:
    ids = [await site.submit(numero=f"N{i}") for i in range(7)]
    await site.submit(OTHER)
    await site.sign_in()
    import broker.web.pages as pages
    pages.CSV_BATCH, batch = 3, pages.CSV_BATCH  # several batches for 7 rows
    try:
        resp = await site.client.get(f"/ui/documents.csv?entite={ENTITY}&tri=ancien")
        text = await resp.text()
    finally:
        pages.CSV_BATCH = batch
    assert resp.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["id"] for r in rows] == ids
    assert [r["reference"] for r in rows] == [f"N{i}" for i in range(7)]
    assert {r["entite"] for r in rows} == {ENTITY}


async def test_no_secret_reaches_a_page(site: Site) -> None:
    await site.submit()
    await site.sign_in()
    for path in ("/ui/", "/ui/documents", f"/ui/entites/{ENTITY}", "/ui/entites"):
        status, html = await site.page(path)
        assert status == 200 and SECRET not in html, path
    _status, html = await site.page(f"/ui/entites/{ENTITY}")
    assert "token" in html  # the setting is shown, its value is not


async def test_live_streams_are_bounded_per_session(site: Site) -> None:
    await site.sign_in()
    opened = [await site.client.get("/ui/live") for _ in range(live.PER_SESSION)]
    assert all(r.status == 200 for r in opened)
    extra = await site.client.get("/ui/live")
    assert extra.status == 429
    for r in opened:
        r.close()
    await asyncio.sleep(0.2)
    again = await site.client.get("/ui/live")
    assert again.status == 200
    again.close()


async def test_a_live_stream_catches_up_and_ends_at_sign_out(site: Site) -> None:
    await site.sign_in("entity")
    _status, html = await site.page("/ui/documents")
    after = re.search(r'data-after="(\d+)"', html)
    assert after
    mine = await site.submit(ENTITY)
    theirs = await site.submit(OTHER)
    for doc in (theirs, mine):  # each change of state is an event
        resp = await site.client.post(f"/api/v1/documents/{doc}/cancel", headers={
            "Authorization": f"Bearer {site.tokens['operator']}"})
        assert resp.status == 200
    resp = await site.client.get(f"/ui/live?apres={after.group(1)}")
    seen: list[dict[str, Any]] = []
    while len(seen) < 1:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode()
        if line.startswith("data: "):
            seen.append(json.loads(line[6:]))
    assert seen[0]["id"] == mine and seen[0]["state"] == "cancelled"
    assert seen[0]["state_label"] == "annulé"
    csrf = await site.csrf("/ui/documents")
    await site.client.post("/ui/deconnexion", data={"csrf": csrf})
    rest = await asyncio.wait_for(resp.content.read(), 5)  # the stream ends
    assert OTHER.encode() not in rest
