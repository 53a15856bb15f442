"""The dashboard over HTTP (no browser): sign-in and sessions, CSRF, entity isolation,
search by the domain's keys, the CSV export, actions and the live stream's bounds."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
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

    @property
    def origin(self) -> dict[str, str]:
        """What a browser sends with a form of this site."""
        url = self.client.make_url("/")
        return {"Origin": f"{url.scheme}://{url.host}:{url.port}"}

    async def sign_in(self, who: str = "operator") -> aiohttp.ClientResponse:
        resp = await self.client.post("/ui/connexion", data={"jeton": self.tokens[who]},
                                      headers=self.origin, allow_redirects=False)
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
async def site(tmp_path: Path, database_url: str | None) -> AsyncIterator[Site]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
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
        "jeton": site.tokens["operator"], "suite": "/ui/parking"}, headers=site.origin)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/parking"
    # Only this site's dashboard paths: no open redirect.
    for target in ("https://evil.example/", "//evil.example/ui/", "/ui//evil.example"):
        resp = await site.client.post("/ui/connexion", allow_redirects=False, data={
            "jeton": site.tokens["operator"], "suite": target}, headers=site.origin)
        assert resp.headers["Location"] == "/ui/", target


async def test_a_wrong_token_is_refused_and_guessing_is_slowed(site: Site) -> None:
    resp = await site.client.post("/ui/connexion", data={"jeton": "dmt_forged"},
                                  headers=site.origin)
    assert resp.status == 401 and "Jeton inconnu" in await resp.text()
    assert site.cookie() is None
    for _ in range(12):
        resp = await site.client.post("/ui/connexion", data={"jeton": "dmt_forged"},
                                      headers=site.origin)
    assert resp.status == 429
    # Even the right token waits out the window from that address.
    resp = await site.client.post("/ui/connexion", data={"jeton": site.tokens["operator"]},
                                  headers=site.origin)
    assert resp.status == 429


async def test_the_cookie_is_httponly_strict_and_secure_behind_tls(site: Site) -> None:
    resp = await site.sign_in()
    header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" not in header
    site.rt.settings.behind_tls = True  # the proxy's TLS: forms come from https://
    resp = await site.client.post("/ui/connexion", data={"jeton": site.tokens["operator"]},
                                  headers={"Origin": site.origin["Origin"].replace(
                                      "http://", "https://")}, allow_redirects=False)
    assert resp.status == 303
    header = resp.headers["Set-Cookie"]
    assert header.startswith("__Host-demat_session=") and "Secure" in header
    assert "Path=/" in header and "Domain" not in header


async def test_every_page_sends_its_security_headers(site: Site) -> None:
    await site.sign_in()
    resp = await site.client.get("/ui/")
    assert resp.status == 200
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"
    assert re.fullmatch(r"app;dur=[0-9.]+", resp.headers["Server-Timing"])
    # Streamed answers too: the CSV export is neither cached nor sniffed.
    resp = await site.client.get("/ui/documents.csv")
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_signing_in_makes_a_new_session_whatever_cookie_came_with_it(site: Site) -> None:
    site.set_cookie("planted-by-an-attacker")
    await site.sign_in()
    assert site.cookie() not in (None, "planted-by-an-attacker")
    first = site.cookie()
    assert first
    await site.sign_in()
    assert site.cookie() != first  # each sign-in: a new session, and the old one ends
    site.set_cookie(first)
    assert (await site.page("/ui/"))[0] == 303


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


async def test_an_idle_session_ends(site: Site) -> None:
    await site.sign_in()
    assert (await site.page("/ui/"))[0] == 200
    async with site.rt.db.begin() as conn:
        await conn.execute(sa.text("UPDATE sessions SET seen_at = seen_at - 3 * 3600"))
    assert (await site.page("/ui/"))[0] == 303


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


async def test_a_session_holds_a_bounded_number_of_live_streams(site: Site) -> None:
    """A page past the bound takes the place of the oldest (a closed tab is noticed late)."""
    await site.sign_in()
    opened = [await site.client.get("/ui/live") for _ in range(live.PER_SESSION)]
    assert all(r.status == 200 for r in opened)
    newest = await site.client.get("/ui/live")
    assert newest.status == 200
    ended = await asyncio.wait_for(opened[0].content.read(), 5)  # the oldest ends
    assert ended.startswith(b"retry:")
    from broker.web.guard import HUB
    assert site.client.app is not None
    assert site.client.app[HUB].open_streams == live.PER_SESSION
    for r in [*opened, newest]:
        r.close()


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


async def _park(site: Site, doc_id: str, step: str | None, error: str | None,
                at: float | None = None) -> None:
    async with site.rt.db.begin() as conn:
        await conn.execute(sa.text(
            "UPDATE documents SET state = 'failed', step = :step, last_error = :error, "
            "updated_at = coalesce(:at, updated_at) WHERE id = :id"),
            {"step": step, "error": error, "id": doc_id, "at": at})


async def test_a_group_replay_reaches_its_group_only(site: Site) -> None:
    ids = [await site.submit() for _ in range(6)]
    await _park(site, ids[0], "deliver", "HTTP 503")
    await _park(site, ids[1], "deliver", "HTTP 503")
    await _park(site, ids[2], "deliver", "HTTP 503 from another inbox")  # another group
    await _park(site, ids[3], None, None)  # a group without step nor error
    await _park(site, ids[4], "deliver", None)
    await _park(site, ids[5], "deliver", "HTTP 503", at=4_000_000_000.0)  # after the page
    await site.sign_in()
    _status, html = await site.page("/ui/parking")
    until = re.search(r'name="jusqua" value="([^"]+)"', html)
    assert until
    csrf = await site.csrf("/ui/parking")

    async def replay(step: str, error: str) -> dict[str, Any]:
        resp = await site.client.post("/ui/parking/rejouer", headers={
            "Accept": "application/json"}, data={"csrf": csrf, "flux": "depot", "etape": step,
                                                 "erreur": error, "jusqua": until.group(1)})
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result

    assert (await replay("deliver", "HTTP 503"))["done"] == 2
    assert (await replay("", ""))["done"] == 1
    states = {}
    async with site.rt.db.connect() as conn:
        for row in await conn.execute(sa.text("SELECT id, state FROM documents")):
            states[row.id] = row.state
    assert [states[i] for i in ids] == ["queued", "queued", "failed", "queued", "failed",
                                        "failed"]


async def test_the_overview_shows_stuck_waiting_and_parked(site: Site) -> None:
    old, fresh, parked = [await site.submit() for _ in range(3)]
    long_ago = time.time() - 3 * 3600
    async with site.rt.db.begin() as conn:
        await conn.execute(sa.text("UPDATE documents SET step_since = :t WHERE id = :id"),
                           {"t": long_ago, "id": old})
    await _park(site, parked, "deliver", "HTTP 500 from the inbox")
    await site.sign_in()
    _status, html = await site.page("/ui/")
    stuck = html.split('id="t-bloques"')[1].split("</section>")[0]
    assert "Documents bloqués (1)" in html and old in stuck and fresh not in stuck
    assert "3 h 0 min" in stuck and "1 h 0 min" in stuck  # in the step for, expected
    waiting = html.split('id="t-attente"')[1].split("</section>")[0]
    assert old in waiting and ">2</a>" in waiting  # two documents queued, the oldest named
    groups = html.split('id="t-parking"')[1].split("</section>")[0]
    assert "HTTP 500 from the inbox" in groups


async def test_a_replayed_document_enters_its_step_again(site: Site) -> None:
    doc = await site.submit()
    await _park(site, doc, "deliver", "HTTP 503")
    async with site.rt.db.begin() as conn:
        await conn.execute(sa.text("UPDATE documents SET step_since = 1.0 WHERE id = :id"),
                           {"id": doc})
    resp = await site.client.post("/api/v1/parking/replay", json={"ids": [doc]}, headers={
        "Authorization": f"Bearer {site.tokens['operator']}"})
    assert resp.status == 200
    async with site.rt.db.connect() as conn:
        since = (await conn.execute(sa.text("SELECT step_since FROM documents WHERE id = :id"),
                                    {"id": doc})).scalar_one()
    assert since > 1_000_000_000  # now, not when it first entered the step


async def test_a_csv_cell_never_starts_a_formula(site: Site) -> None:
    await site.submit(numero="=HYPERLINK(\"http://evil.example\")")
    await site.sign_in()
    rows = list(csv.DictReader(io.StringIO(await (await site.client.get(
        "/ui/documents.csv")).text())))
    assert rows[0]["reference"] == "'=HYPERLINK(\"http://evil.example\")"


async def test_the_sign_in_form_must_come_from_this_site(site: Site) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {},
                    {"Referer": "http://evil.example/ui/connexion"}):
        resp = await site.client.post("/ui/connexion", data={"jeton": site.tokens["operator"]},
                                      headers=headers, allow_redirects=False)
        assert resp.status == 403, headers
    assert site.cookie() is None
    site.rt.settings.public_url = "https://demat.example.fr"  # a proxy rewrites Host
    resp = await site.client.post("/ui/connexion", data={"jeton": site.tokens["operator"]},
                                  headers={"Origin": "https://demat.example.fr"},
                                  allow_redirects=False)
    assert resp.status == 303


async def test_two_writes_for_one_document_apply_in_order_and_keys_follow(site: Site) -> None:
    from broker.engine import Doc, Transition
    from broker.store import documents as docs

    doc_id = await site.submit(numero="K1")
    doc = Doc(doc_id, "depot", "queued", "deliver", 1, {"numero": "K1"})
    writes = [docs.TransitionWrite(doc, ENTITY, Transition("running", "deliver", 1,
                                                            metadata={"id_acte": "A-1"})),
              docs.TransitionWrite(doc, ENTITY, Transition("waiting", "deliver", 1,
                                                            metadata={"id_acte": "A-2"})),
              docs.TransitionWrite(doc, ENTITY, Transition("completed", "deliver", 1))]
    async with site.rt.db.begin() as conn:
        await docs.write_transitions(conn, writes, time.time())
    async with site.rt.db.begin() as conn:  # a key cleared is forgotten
        await docs.write_transitions(conn, [docs.TransitionWrite(
            doc, ENTITY, Transition("completed", "deliver", 1, metadata={"numero": None}))],
            time.time())
    async with site.rt.db.connect() as conn:
        state = (await conn.execute(sa.text("SELECT state FROM documents WHERE id = :id"),
                                    {"id": doc_id})).scalar_one()
        found = dict((await conn.execute(sa.text(
            "SELECT name, value FROM document_keys WHERE document_id = :id"),
            {"id": doc_id})).all())
    assert state == "completed"
    assert found == {"id_acte": "A-2"}


async def _kept_and_counted(site: Site) -> tuple[dict[Any, int], dict[Any, int]]:
    async with site.rt.db.connect() as conn:
        kept = {(r.entity, r.flow, r.state): int(r.n) for r in await conn.execute(sa.text(
            "SELECT entity, flow, state, n FROM document_counts")) if r.n}
        counted = {(r.entity, r.flow, r.state): int(r.n) for r in await conn.execute(sa.text(
            "SELECT entity, flow, state, count(*) AS n FROM documents "
            "GROUP BY entity, flow, state"))}
    return kept, counted


async def test_the_counts_kept_follow_every_change(site: Site) -> None:
    ids = [await site.submit(ENTITY) for _ in range(4)] + [await site.submit(OTHER)]
    for doc in (ids[0], ids[4]):
        resp = await site.client.post(f"/api/v1/documents/{doc}/cancel", headers={
            "Authorization": f"Bearer {site.tokens['operator']}"})
        assert resp.status == 200
    kept, counted = await _kept_and_counted(site)
    assert kept == counted == {(ENTITY, "depot", "queued"): 3,
                               (ENTITY, "depot", "cancelled"): 1,
                               (OTHER, "depot", "cancelled"): 1}
    await site.sign_in("entity")
    _status, html = await site.page("/ui/")
    assert "Dépôt" in html and ">3</a>" in html and ">1</a>" in html
    hours = html.split("<caption>Par heure</caption>")[1].split("</table>")[0]
    assert re.search(r"<td>1</td><td>0</td><td>0,0 %</td>", hours)  # its one cancellation
