"""Invoices through the broker (embedded runtime, relay, worker, fetcher) with the Chorus
Pro, finance software and parapheur simulators over real HTTP: fetched once, checked,
delivered once, statuses sent in order, a refused visa sent REJETEE with its annotation,
a bad invoice refused with nothing delivered nor sent, never two fetches at once."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker import accounts, operations, views
from broker.accounts import Principal
from broker.errors import ServiceError
from broker.fetch import Fetcher
from broker.relay import Relay
from broker.runtime import Runtime
from broker.settings import Settings
from broker.store import cursors
from broker.store import journal as stored_journal
from broker.wiring import catalog
from broker.worker import Worker
from simulators import asalae, chorus, gf, parapheur
from simulators.chorus_samples import Spec, pivot, siret
from simulators.common import serving, stats_of

OPERATOR = Principal("t", accounts.OPERATOR, None)
# An entity without visa, one whose visas are refused, one that archives.
PLAIN, VISA, ARCHIVED = siret(31), siret(32), siret(33)
ANNOTATION = parapheur.DEFAULT_REJECT_ANNOTATION


@dataclass
class Stack:
    rt: Runtime
    chorus: web.Application
    chorus_url: str
    inbox: web.Application
    inbox_url: str
    fetcher: Fetcher
    http: aiohttp.ClientSession

    @property
    def store(self) -> chorus.ChorusStore:
        return self.chorus[chorus.STORE]

    async def fetch(self) -> list[Any]:
        return await self.fetcher.pass_once(self.http)

    async def receipts(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.inbox_url}/inbox") as resp:
            return list((await resp.json())["receipts"])

    async def documents(self) -> list[dict[str, Any]]:
        return list((await views.list_documents(self.rt, OPERATOR, flow="facture",
                                                limit=500))["items"])

    async def document(self, document_id: str) -> dict[str, Any]:
        return await views.get_document(self.rt, OPERATOR, document_id)


def chorus_settings(url: str, code: str, **more: Any) -> dict[str, Any]:
    return {"oauth_url": f"{url}/api/oauth/token", "api_url": url,
            "client_id": "demat-broker", "client_secret": "piste-secret", "login": "TECH_DEMAT",
            "password": "cpro-password", "siret": code, **more}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as stack:
        chorus_app = chorus.build_app(token_ttl=3600)
        chorus_url = await stack.enter_async_context(serving(chorus_app))
        inbox = gf.build_app(store_dir=tmp_path / "inbox")
        inbox_url = await stack.enter_async_context(serving(inbox))
        signer = parapheur.build_app(auto_sign_after=0.1, reject_ratio=1.0)
        signer_url = await stack.enter_async_context(serving(signer))
        sae = asalae.build_app(store_dir=tmp_path / "sae")
        sae_url = await stack.enter_async_context(serving(sae))
        settings = Settings(data_dir=tmp_path / "data", poll_first="100ms",
                            retry_ladder="100ms,100ms,100ms", fetch_tick="1h")
        rt = await Runtime.open(settings, catalog())
        stack.push_async_callback(rt.close)
        depot = {"url": f"{inbox_url}/inbox"}
        async with rt.db.begin() as conn:
            await accounts.upsert_entity(conn, PLAIN[:9], "Commune sans visa", {
                "chorus": chorus_settings(chorus_url, PLAIN), "depot": depot},
                rt.catalog.settings)
            await accounts.upsert_entity(conn, VISA[:9], "Commune avec visa", {
                "chorus": chorus_settings(chorus_url, VISA, visa=True), "depot": depot,
                "parapheur": {"url": f"{signer_url}/ws-iparapheur", "type": "ACTES",
                              "sous_type": "Deliberation", "poll_interval": 0.2,
                              "circuits": {"facture": {"type": "FACTURES",
                                                       "sous_type": "Visa"}}}},
                rt.catalog.settings)
            await accounts.upsert_entity(conn, ARCHIVED[:9], "Commune qui archive", {
                "chorus": chorus_settings(chorus_url, ARCHIVED, archive=True), "depot": depot,
                "sae": {"url": sae_url, "login": "demat", "password": "demat",
                        "archival_agency": "FRAD022", "transferring_agency": ARCHIVED[:9],
                        "originating_agency": ARCHIVED[:9], "poll_after": 0.2}},
                rt.catalog.settings)
        relay, worker = Relay(rt), Worker(rt)
        await relay.start()
        stack.push_async_callback(relay.stop)
        await worker.start()
        stack.push_async_callback(worker.stop)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        chorus_app[chorus.STORE].structure(PLAIN)
        chorus_app[chorus.STORE].structure(VISA)
        chorus_app[chorus.STORE].structure(ARCHIVED)
        yield Stack(rt, chorus_app, chorus_url, inbox, inbox_url, Fetcher(rt), http)


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            if found := await check():
                return found
            await asyncio.sleep(0.05)


async def settled(stack: Stack, count: int) -> list[dict[str, Any]]:
    """The invoices' documents once each waits for its next status or has ended."""
    async def check() -> list[dict[str, Any]] | None:
        found = await stack.documents()
        done = [d for d in found if d["state"] in ("completed", "rejected", "failed")
                or (d["state"] == "waiting" and d["step"] == "status")]
        return found if len(found) == count and len(done) == count else None
    return list(await until(check))


async def test_invoices_are_fetched_once_and_delivered_once(stack: Stack) -> None:
    made = [stack.store.add(PLAIN) for _ in range(4)]
    stack.store.add(PLAIN).history[-1].status = "SERVICE_FAIT"  # nothing to do for it
    runs = await stack.fetch()
    assert [(len(r.created), r.known, sum(r.skipped.values())) for r in runs
            if r.entity == PLAIN[:9]] == [(4, 0, 1)]
    async with stack.rt.db.begin() as conn:  # due again at once
        await cursors.due_now(conn, PLAIN[:9], "chorus", 0.0)
    again = [r for r in await stack.fetch() if r.entity == PLAIN[:9]]
    assert [(len(r.created), r.known) for r in again] == [(0, 4)]
    documents = await settled(stack, 4)
    assert {d["metadata"]["id_facture"] for d in documents} == {i.id for i in made}
    receipts = await stack.receipts()
    assert len(receipts) == 4
    for receipt in receipts:
        names = {f["name"] for f in receipt["files"]}
        invoice = stack.store.invoices[receipt["metadata"]["metadata"]["id_facture"]]
        assert {f"{invoice.number}.pdf", f"facture_{invoice.id}.xml",
                f"facture-{invoice.id}.json"} <= names
        roles = {f["role"] for f in receipt["metadata"]["files"]}
        assert {"facture", "pivot", "donnees"} <= roles
    assert stats_of(stack.chorus)["invoices_downloaded"] == 4
    journal = await stored_journal.verify(stack.rt.db)
    assert journal.ok


async def test_statuses_are_checked_first_then_sent_in_order(stack: Stack) -> None:
    invoice = stack.store.add(PLAIN)
    await stack.fetch()
    [document] = await settled(stack, 1)
    calls = stats_of(stack.chorus)["requests"]
    with pytest.raises(ServiceError) as refused:
        await operations.follow_up(stack.rt, OPERATOR, document["id"], "statuts",
                                   b'{"statuts": "MISE_EN_PAIEMENT"}')
    assert refused.value.status == 422
    said = "; ".join(p.message for p in refused.value.problems)
    assert "cannot become MISE_EN_PAIEMENT" in said and "SERVICE_FAIT" in said
    with pytest.raises(ServiceError, match="needs a motif"):
        await operations.follow_up(stack.rt, OPERATOR, document["id"], "statuts",
                                   b'{"statuts": "REJETEE"}')
    assert stats_of(stack.chorus)["requests"] == calls  # nothing was asked of Chorus Pro
    await operations.follow_up(stack.rt, OPERATOR, document["id"], "statuts",
                               b'{"statuts": "SERVICE_FAIT;MANDATEE", '
                               b'"numero_dp_mandat": "M-2026-77"}')

    async def mandated() -> bool:
        return invoice.status == "MANDATEE"
    await until(mandated)
    assert [c.status for c in invoice.history][-2:] == ["SERVICE_FAIT", "MANDATEE"]
    assert invoice.history[-1].comment == "M-2026-77"
    await settled(stack, 1)
    await until(lambda: _step_is(stack, document["id"], "waiting"))
    await operations.follow_up(stack.rt, OPERATOR, document["id"], "statuts",
                               b'{"statuts": ["MISE_EN_PAIEMENT"]}')
    ended = await until(lambda: _ended(stack, document["id"]))
    assert ended["state"] == "completed" and ended["metadata"]["statut"] == "MISE_EN_PAIEMENT"
    assert [c.status for c in invoice.history][-3:] == ["SERVICE_FAIT", "MANDATEE",
                                                       "MISE_EN_PAIEMENT"]
    assert stats_of(stack.chorus)["duplicates"] == 0
    with pytest.raises(ServiceError) as late:
        await operations.follow_up(stack.rt, OPERATOR, document["id"], "statuts",
                                   b'{"statuts": "COMPTABILISEE"}')
    assert late.value.status == 422 and "nothing to set" in str(late.value)


async def _step_is(stack: Stack, document_id: str, state: str) -> bool:
    return (await stack.document(document_id))["state"] == state


async def _ended(stack: Stack, document_id: str) -> dict[str, Any] | None:
    found = await stack.document(document_id)
    return found if found["state"] in ("completed", "rejected", "failed") else None


async def test_a_refused_visa_sends_rejetee_with_the_annotation(stack: Stack) -> None:
    invoice = stack.store.add(VISA)
    await stack.fetch()
    [document] = await settled(stack, 1)
    assert document["state"] == "rejected", document
    assert invoice.status == "REJETEE"
    assert invoice.history[-1].comment == ANNOTATION
    assert await stack.receipts() == []  # not delivered
    assert stats_of(stack.chorus)["duplicates"] == 0


async def test_a_bad_invoice_is_refused_then_a_person_tells_the_supplier(stack: Stack
                                                                         ) -> None:
    bad = pivot(Spec(number="FA-BAD", debtor_siret=PLAIN)).replace(
        b"<MontantTTC>289.20", b"<MontantTTC>389.20")
    invoice = stack.store.add(PLAIN, raw_pivot=bad)
    invoice.number = "FA-BAD"
    await stack.fetch()
    [document] = await settled(stack, 1)
    # Nothing delivered, nothing sent: it waits, its reason in view, for a person.
    assert (document["state"], document["step"]) == ("waiting", "status"), document
    assert "MontantTTC 389.20" in document["last_error"]
    assert await stack.receipts() == []
    assert invoice.status == "MISE_A_DISPOSITION"
    assert stats_of(stack.chorus)["status_changes"] == 0
    await operations.follow_up(stack.rt, OPERATOR, document["id"], "statuts",
                               '{"statuts": "REJETEE", "motif": "Montant TTC erroné"}'.encode())
    ended = await until(lambda: _ended(stack, document["id"]))
    assert ended["state"] == "rejected" and "MontantTTC 389.20" in ended["last_error"]
    assert invoice.status == "REJETEE" and invoice.history[-1].comment == "Montant TTC erroné"
    assert await stack.receipts() == []
    # Rejected at Chorus Pro: nothing more is taken.
    with pytest.raises(ServiceError):
        await operations.follow_up(stack.rt, OPERATOR, document["id"], "statuts",
                                   b'{"statuts": "SERVICE_FAIT"}')


async def _one_invoice_closed_by(stack: Stack, code: str, request: bytes
                                 ) -> tuple[chorus.Invoice, dict[str, Any], dict[str, Any]]:
    """An invoice for ``code`` fetched, settled, then sent ``request``: the invoice, its
    document as first settled, and the document once its flow has ended."""
    invoice = stack.store.add(code)
    await stack.fetch()
    [document] = await settled(stack, 1)
    await operations.follow_up(stack.rt, OPERATOR, document["id"], "statuts", request)
    ended = await until(lambda: _ended(stack, document["id"]), timeout=30)
    return invoice, document, ended


async def test_a_suspended_invoice_completed_by_its_supplier_comes_back(stack: Stack) -> None:
    invoice, first, _ = await _one_invoice_closed_by(
        stack, PLAIN, b'{"statuts": "SUSPENDUE", "motif": "Bon de livraison absent"}')
    assert invoice.status == "SUSPENDUE"
    stack.store.set_status(invoice, "COMPLETEE", "Bon de livraison joint")
    async with stack.rt.db.begin() as conn:
        await cursors.due_now(conn, PLAIN[:9], "chorus", 0.0)
    await stack.fetch()
    documents = await settled(stack, 2)
    second = next(d for d in documents if d["id"] != first["id"])
    assert second["metadata"]["statut"] == "COMPLETEE"
    assert second["metadata"]["id_facture"] == invoice.id
    assert len(await stack.receipts()) == 2


async def test_two_processes_never_fetch_for_one_entity_at_once(stack: Stack) -> None:
    for _ in range(3):
        stack.store.add(PLAIN)
    other = Fetcher(stack.rt, owner="other-process")
    runs = await asyncio.gather(stack.fetch(), other.pass_once(stack.http))
    plain = [r for batch in runs for r in batch if r.entity == PLAIN[:9]]
    assert len(plain) == 1 and len(plain[0].created) == 3


async def test_a_pivot_given_as_a_raw_file_is_served_as_is(stack: Stack) -> None:
    raw = pivot(Spec(number="FA-RAW", debtor_siret=PLAIN))
    async with stack.http.post(f"{stack.chorus_url}/_control/invoices", json={
            "siret": PLAIN, "pivot": base64.b64encode(raw).decode()}) as resp:
        [made] = (await resp.json())["ids"]
    assert stack.store.invoices[made].pivot() == raw


async def test_every_bad_invoice_is_refused_with_nothing_delivered_nor_sent(stack: Stack
                                                                            ) -> None:
    from tests.unit.chorus.test_pivot import BAD

    made = {stack.store.add(PLAIN, raw_pivot=make()).id: (case, said)
            for case, make, said in BAD}
    await stack.fetch()
    documents = await settled(stack, len(BAD))
    for doc in documents:
        case, said = made[doc["metadata"]["id_facture"]]
        assert (doc["state"], doc["step"]) == ("waiting", "status"), (case, doc)
        assert said in doc["last_error"] or any(said in p for p in doc["metadata"]["problemes"]), \
            (case, doc["last_error"])
    assert await stack.receipts() == []
    assert stats_of(stack.chorus)["status_changes"] == 0
    assert all(i.status == "MISE_A_DISPOSITION" for i in stack.store.invoices.values())


async def test_a_closed_invoice_is_archived_with_its_status_history(stack: Stack) -> None:
    invoice, document, ended = await _one_invoice_closed_by(
        stack, ARCHIVED, '{"statuts": "REJETEE", "motif": "Montant contesté"}'.encode())
    assert ended["state"] == "completed", ended
    assert invoice.status == "REJETEE" and invoice.history[-1].comment == "Montant contesté"
    full = await stack.document(document["id"])
    roles = [f["role"] for f in full["files"]]
    assert {"facture", "pivot", "donnees", "historique", "atr"} <= set(roles), roles
    history = next(f for f in full["files"] if f["role"] == "historique")
    row = await views.file_of(stack.rt, OPERATOR, document["id"], history["id"])
    kept = json.loads(stack.rt.blobs.path(row.sha256).read_bytes())
    assert [e["histoStatutCode"] for e in kept["historique"]][-2:] == ["MISE_A_DISPOSITION",
                                                                      "REJETEE"]


async def test_statuses_asked_before_the_status_step_are_kept_and_sent_once(stack: Stack
                                                                           ) -> None:
    invoice = stack.store.add(PLAIN)
    [run] = [r for r in await stack.fetch() if r.entity == PLAIN[:9]]
    [document_id] = run.created
    # Asked at once: the invoice is still being received or delivered.
    asked = await operations.follow_up(stack.rt, OPERATOR, document_id, "statuts",
                                       b'{"statuts": "SERVICE_FAIT"}')
    assert asked["metadata"]["statuts_demandes"][-1]["statuts"] == ["SERVICE_FAIT"]
    again = await operations.follow_up(
        stack.rt, OPERATOR, document_id, "statuts",
        b'{"statuts": "MANDATEE", "numero_dp_mandat": "DP-1"}')
    assert again["metadata"]["statuts_demandes"][-1]["statuts"] == ["MANDATEE"]

    async def mandated() -> bool:
        return invoice.status == "MANDATEE"
    await until(mandated)
    assert [c.status for c in invoice.history][-2:] == ["SERVICE_FAIT", "MANDATEE"]
    assert stats_of(stack.chorus)["duplicates"] == 0
    assert len(await stack.receipts()) == 1
    journal = await views.journal_of(stack.rt, OPERATOR, document_id)
    assert [e["asked"]["statuts"] for e in journal if e.get("action") == "statuts"] == [
        "SERVICE_FAIT", "MANDATEE"]


async def test_an_operator_sends_statuses_from_the_dashboard_form(stack: Stack) -> None:
    import re

    from aiohttp.test_utils import TestClient, TestServer

    from broker.api.app import build_app

    invoice = stack.store.add(PLAIN)
    await stack.fetch()
    [document] = await settled(stack, 1)
    async with stack.rt.db.begin() as conn:
        token = await accounts.create_token(conn, accounts.OPERATOR)
    client = TestClient(TestServer(build_app(stack.rt)))
    await client.start_server()
    try:
        url = client.make_url("/")
        origin = {"Origin": f"{url.scheme}://{url.host}:{url.port}"}
        signed = await client.post("/ui/connexion", data={"jeton": token}, headers=origin,
                                   allow_redirects=False)
        assert signed.status == 303
        page = f"/ui/documents/{document['id']}"
        html = await (await client.get(page)).text()
        assert "Statuts possibles ensuite : A_RECYCLER, REJETEE" in html
        csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
        form = f"{page}/demandes/statuts"
        # Refused before any call: every reason shown, what was typed kept.
        calls = stats_of(stack.chorus)["requests"]
        refused = await client.post(form, data={"csrf": csrf, "statuts": "REJETEE",
                                                "motif": ""}, headers=origin)
        text = await refused.text()
        assert refused.status == 422 and "REJETEE needs a motif" in text
        assert 'value="REJETEE"' in text and stats_of(stack.chorus)["requests"] == calls
        sent = await client.post(form, data={"csrf": csrf, "statuts": "SERVICE_FAIT"},
                                 headers=origin, allow_redirects=False)
        assert sent.status == 303, await sent.text()

        async def done() -> bool:
            return invoice.status == "SERVICE_FAIT"
        await until(done)
        # Without its CSRF token, nothing is taken.
        forged = await client.post(form, data={"statuts": "MANDATEE"}, headers=origin)
        assert forged.status == 403
        journal = await views.journal_of(stack.rt, OPERATOR, document["id"])
        [entry] = [e for e in journal if e.get("action") == "statuts"]
        assert entry["actor"].startswith("operator:")
        # Once the invoice has ended, the form is gone and a late one is told why.
        closing = await client.post(form, data={"csrf": csrf, "statuts": "REJETEE",
                                                "motif": "Doublon"}, headers=origin,
                                    allow_redirects=False)
        assert closing.status == 303
        await until(lambda: _ended(stack, document["id"]))
        late = await client.post(form, data={"csrf": csrf, "statuts": "MANDATEE",
                                             "numero_dp_mandat": "DP-1"}, headers=origin)
        text = await late.text()
        assert late.status in (409, 422) and "Demande non prise" in text
        assert 'action="' + form + '"' not in text
    finally:
        await client.close()
