"""The Chorus Pro client against the Chorus Pro simulator over real HTTP: PISTE tokens
(cached, one refresh at a time, renewed before expiry and on 401), codeRetour handling,
paging, downloads split under the size cap, status changes, 429 and 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.retry import InCallRetry, RetryPolicy
from connectors.base import Done, Pending, PermanentError, StepContext, TransientError
from connectors.chorus.client import (
    ChorusClient,
    Refused,
    StatusInconsistent,
    TokenCache,
    TooLarge,
)
from connectors.chorus.pivot import read_pivot
from connectors.chorus.sending import send_statuses
from connectors.chorus.settings import ChorusSettings
from connectors.chorus.statuses import Change
from simulators.chorus import STORE, ChorusStore, build_app
from simulators.chorus_samples import siret
from simulators.common import serving, stats_of
from simulators.faults import FaultRule

SIRET = siret(21)


@dataclass
class Peer:
    url: str
    app: web.Application
    http: aiohttp.ClientSession

    @property
    def store(self) -> ChorusStore:
        return self.app[STORE]

    def settings(self, **changes: Any) -> ChorusSettings:
        given: dict[str, Any] = {
            "oauth_url": f"{self.url}/api/oauth/token", "api_url": self.url,
            "client_id": "demat-broker", "client_secret": "piste-secret",
            "login": "TECH_DEMAT", "password": "cpro-password", "siret": SIRET}
        return ChorusSettings.model_validate({**given, **changes})

    def client(self, tokens: TokenCache | None = None, **changes: Any) -> ChorusClient:
        return ChorusClient(self.http, self.settings(**changes), "21000000000000",
                            tokens or TokenCache())

    @property
    def stats(self) -> dict[str, int]:
        return stats_of(self.app)


@asynccontextmanager
async def _peer(**options: Any) -> AsyncIterator[Peer]:
    app = build_app(**options)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        yield Peer(url, app, http)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    async with _peer() as made:
        yield made


async def test_one_token_serves_many_calls_and_one_refresh_serves_many_callers(
        peer: Peer) -> None:
    peer.store.structure(SIRET)
    tokens = TokenCache()
    client = peer.client(tokens)
    found = await asyncio.gather(*(client.structure(SIRET) for _ in range(20)))
    assert {s.idStructureCPP for s in found} == {found[0].idStructureCPP}
    assert peer.stats["tokens"] == 1
    assert tokens.fetched["demat-broker"] == 1


async def test_a_token_is_renewed_before_it_expires() -> None:
    async with _peer(token_ttl=1.0) as peer:
        peer.store.structure(SIRET)
        now = [0.0]
        tokens = TokenCache(clock=lambda: now[0])
        client = peer.client(tokens)
        await client.structure(SIRET)
        now[0] = 0.95  # within the last tenth of its life: renewed without a 401 first
        await client.structure(SIRET)
        assert peer.stats["tokens"] == 2
        assert peer.stats["requests"] == 4  # two tokens, two calls: no refused call


async def test_a_refused_token_is_renewed_once_and_the_call_made_again(peer: Peer) -> None:
    peer.store.structure(SIRET)
    client = peer.client()
    await client.structure(SIRET)
    peer.store.tokens.clear()  # PISTE forgets it (revoked, restarted...)
    assert (await client.structure(SIRET)).identifiantStructure == SIRET
    assert peer.stats["tokens"] == 2


async def test_a_wrong_application_secret_is_permanent_and_says_which(peer: Peer) -> None:
    with pytest.raises(PermanentError, match="'demat-broker' is refused"):
        await peer.client(client_secret="wrong").health()


async def test_a_wrong_technical_account_is_refused(peer: Peer) -> None:
    with pytest.raises(PermanentError, match="403"):
        await peer.client(password="wrong").health()


async def test_a_search_reads_every_page_within_the_window(peer: Peer) -> None:
    structure = peer.store.structure(SIRET)
    made = [peer.store.add(SIRET) for _ in range(25)]
    other = peer.store.add(siret(22))
    old = made[0]
    old.history[-1].at -= timedelta(days=40)
    client = peer.client()
    now = datetime.now(UTC)
    found = [s async for s in client.search_received(structure.id, now - timedelta(days=30),
                                                     now + timedelta(minutes=1), page_size=10)]
    assert [s.idFacture for s in found] == [i.id for i in made[1:]]
    assert all(s.statut == "MISE_A_DISPOSITION" and s.codeDestinataire == SIRET for s in found)
    assert other.id not in {s.idFacture for s in found}
    assert peer.stats["searches"] == 3


async def test_a_search_without_result_is_empty(peer: Peer) -> None:
    structure = peer.store.structure(SIRET)
    now = datetime.now(UTC)
    assert [s async for s in peer.client().search_received(structure.id, now, now)] == []


async def test_an_unknown_structure_is_said(peer: Peer) -> None:
    with pytest.raises(PermanentError, match=f"no structure with SIRET {SIRET}"):
        await peer.client().structure(SIRET)


async def test_a_download_gives_each_invoice_pivot(peer: Peer, tmp_path: Path) -> None:
    invoice = peer.store.add(SIRET, facturx=True)
    [file] = await peer.client().download([invoice.id], tmp_path)
    assert file.name == f"facture_{invoice.id}.xml"
    reading = read_pivot(file.path, tmp_path / "read")
    assert reading.problems == []
    assert reading.invoices[0].number == invoice.number
    assert reading.invoices[0].chorus_id == invoice.id


async def test_a_group_over_the_cap_is_split_until_each_part_fits(tmp_path: Path) -> None:
    async with _peer(download_cap=300_000) as peer:
        ids = [peer.store.add(SIRET, attachment_bytes=60_000).id for _ in range(8)]
        files = await peer.client().download(ids, tmp_path)
        assert sorted(f.name for f in files) == sorted(f"facture_{i}.xml" for i in ids)
        assert peer.stats["too_large"] >= 1
        assert peer.stats["invoices_downloaded"] == 8  # each once, whatever the splits
        big = peer.store.add(SIRET, attachment_bytes=400_000)
        with pytest.raises(TooLarge, match=f"invoice {big.id} alone"):
            await peer.client().download([big.id], tmp_path / "big")


async def test_status_changes_and_their_refusals(peer: Peer) -> None:
    invoice = peer.store.add(SIRET)
    client = peer.client()
    assert "SERVICE_FAIT" in await client.next_statuses("MISE_A_DISPOSITION")
    done = await client.process(invoice.id, Change("SERVICE_FAIT"))
    assert (done.idFacture, done.nouveauStatut) == (invoice.id, "SERVICE_FAIT")
    with pytest.raises(StatusInconsistent, match="20002"):
        await client.process(invoice.id, Change("A_RECYCLER"))
    with pytest.raises(PermanentError, match="motif est obligatoire"):
        await client.process(invoice.id, Change("REJETEE"))
    done = await client.process(invoice.id, Change("MANDATEE", numero_dp_mandat="M-17"))
    history = await client.history(invoice.id)
    assert history.statutCourantCode == "MANDATEE"
    assert [e.histoStatutCode for e in history.entries][:2] == ["MANDATEE", "SERVICE_FAIT"]
    assert [e.histoStatutCode for e in history.oldest_first()][-2:] == ["SERVICE_FAIT",
                                                                       "MANDATEE"]
    assert peer.stats["status_changes"] == 2
    assert peer.stats["duplicates"] == 0


async def test_an_unknown_invoice_is_a_functional_error(peer: Peer) -> None:
    # Refused (Chorus Pro said no), which a status step records, not a broken exchange.
    with pytest.raises(Refused, match=r"GDP_MSG_11\.008"):
        await peer.client().history(999_999)


async def test_rate_limits_and_server_errors_are_transient_and_ridden_out() -> None:
    async with _peer(rate=3) as peer:
        peer.store.structure(SIRET)
        client = peer.client()
        with pytest.raises(TransientError) as raised:
            for _ in range(6):
                await client.structure(SIRET)
        assert raised.value.retry_after == 1.0
        retry = InCallRetry(RetryPolicy(in_call_attempts=6, in_call_initial=0.05,
                                        in_call_max=1.5))
        found = await asyncio.gather(*(retry(lambda: client.structure(SIRET))
                                       for _ in range(8)))
        assert len(found) == 8
        assert peer.stats["rate_limited"] >= 1
    async with _peer(faults=[FaultRule(kind="503", count=2, path="/cpro/",
                                       retry_after=0)]) as peer:
        client = peer.client()
        retry = InCallRetry(RetryPolicy(in_call_attempts=4, in_call_initial=0.01, in_call_max=0.05))
        assert await retry(client.health) == "CODE PAR DEFAUT"
        assert peer.stats["faults_503"] == 2


async def test_a_consultation_names_the_invoice(peer: Peer) -> None:
    invoice = peer.store.add(SIRET)
    found = await peer.client().consult(invoice.id)
    assert (found["idFacture"], found["numeroFacture"], found["statutFacture"]) == (
        invoice.id, invoice.number, "MISE_A_DISPOSITION")


def _status_step(peer: Peer, tmp_path: Path, metadata: dict[str, Any],
                 refs: dict[str, str]) -> StepContext:
    async def save_ref(key: str, value: str) -> None:
        refs[key] = value

    return StepContext(
        document_id="01TEST", flow="facture", entity=SIRET[:9], step="status", run=1,
        kind="run", metadata=metadata, files=[], refs=refs,
        config=peer.settings().model_dump(mode="json") | {
            "client_secret": "piste-secret", "password": "cpro-password"},
        http=peer.http, workdir=tmp_path / "work", save_ref=save_ref)


async def test_a_status_sent_before_a_crash_is_found_and_not_sent_again(
        peer: Peer, tmp_path: Path) -> None:
    invoice = peer.store.add(SIRET)
    client = peer.client()
    await client.process(invoice.id, Change("SERVICE_FAIT"))  # sent; the answer was lost
    refs = {"statut.1.1": "sending"}
    metadata = {"id_facture": invoice.id, "statut": "MISE_A_DISPOSITION",
                "statuts_demandes": [{"statuts": ["SERVICE_FAIT", "MANDATEE"],
                                      "numero_dp_mandat": "DP-9"}]}
    outcome = await send_statuses(_status_step(peer, tmp_path, metadata, refs))
    assert isinstance(outcome, Pending)
    assert refs["statut.1.1"] == "sent (found at Chorus Pro)"
    assert refs["statut.1.2"].startswith("sent") and refs["chorus.statut"] == "MANDATEE"
    assert [c.status for c in invoice.history][-2:] == ["SERVICE_FAIT", "MANDATEE"]
    assert peer.stats["duplicates"] == 0
    # Run again (another crash): nothing is sent twice.
    again = await send_statuses(_status_step(peer, tmp_path, metadata, refs))
    assert isinstance(again, Pending) and peer.stats["status_changes"] == 2


async def test_a_status_chorus_refuses_is_kept_refused_and_its_chain_stopped(
        peer: Peer, tmp_path: Path) -> None:
    invoice = peer.store.add(SIRET)
    peer.store.set_status(invoice, "REJETEE")  # changed at Chorus Pro meanwhile
    refs: dict[str, str] = {}
    metadata = {"id_facture": invoice.id, "statut": "MISE_A_DISPOSITION",
                "statuts_demandes": [{"statuts": ["SERVICE_FAIT", "MANDATEE"],
                                      "numero_dp_mandat": "DP-9"}]}
    outcome = await send_statuses(_status_step(peer, tmp_path, metadata, refs))
    assert refs["statut.1.1"].startswith("refused: ") and "20002" in refs["statut.1.1"]
    assert "statut.1.2" not in refs
    assert isinstance(outcome, Done) and outcome.metadata == {"statut": "REJETEE"}
    assert [f.role for f in outcome.files] == ["historique"]


async def test_a_fetch_skips_invoices_of_services_not_followed_and_says_why(peer: Peer) -> None:
    from connectors.chorus.intake import fetch

    peer.store.structure(SIRET)
    followed = peer.store.add(SIRET, service="FACTURES")
    other = peer.store.add(SIRET, service="TECHNIQUE")
    config = peer.settings(services=["FACTURES"]).model_dump(mode="json") | {
        "client_secret": "piste-secret", "password": "cpro-password"}
    fetched = await fetch(config, SIRET[:9], peer.http, None)
    by_id = {f.metadata["id_facture"]: f for f in fetched.found}
    assert by_id[followed.id].skip is None
    assert by_id[other.id].skip == "service TECHNIQUE not followed"
    # The cursor moves on: the next fetch asks only from where this one ended.
    assert fetched.cursor["structure"] == peer.store.structure(SIRET).id
    again = await fetch(config, SIRET[:9], peer.http, fetched.cursor)
    assert {f.metadata["id_facture"] for f in again.found} <= {followed.id, other.id}


async def test_a_status_whose_answer_is_lost_is_found_not_sent_again_nor_said_refused(
        tmp_path: Path) -> None:
    # Chorus Pro makes the change, then the answer is lost (500 after processing).
    async with _peer(faults=[FaultRule(kind="500", phase="after", count=1,
                                       path="/cpro/factures/v1/traiter/recue")]) as peer:
        invoice = peer.store.add(SIRET)
        refs: dict[str, str] = {}
        metadata = {"id_facture": invoice.id, "statut": "MISE_A_DISPOSITION",
                    "statuts_demandes": [{"statuts": ["SERVICE_FAIT", "MANDATEE"],
                                          "numero_dp_mandat": "DP-9"}]}
        with pytest.raises(TransientError, match="may have been made"):
            await send_statuses(_status_step(peer, tmp_path, metadata, refs))
        # Not tried again within the call: the change went through once.
        assert refs["statut.1.1"] == "sending" and peer.stats["status_changes"] == 1
        outcome = await send_statuses(_status_step(peer, tmp_path, metadata, refs))
        assert isinstance(outcome, Pending)
        assert refs["statut.1.1"] == "sent (found at Chorus Pro)"
        assert refs["statut.1.2"].startswith("sent")
        statuses = [c.status for c in invoice.history]
        assert statuses[-2:] == ["SERVICE_FAIT", "MANDATEE"]
        assert statuses.count("SERVICE_FAIT") == 1
        assert peer.stats["duplicates"] == 0 and peer.stats["refused_changes"] == 0


async def test_a_change_made_then_passed_by_helios_is_found_in_the_history(
        peer: Peer, tmp_path: Path) -> None:
    invoice = peer.store.add(SIRET)
    client = peer.client()
    await client.process(invoice.id, Change("SERVICE_FAIT"))
    await client.process(invoice.id, Change("MANDATEE", numero_dp_mandat="DP-9"))
    peer.store.set_status(invoice, "MISE_A_DISPOSITION_COMPTABLE")  # Hélios took it
    refs = {"statut.1.1": "sent", "statut.1.2": "sending", "chorus.statut": "SERVICE_FAIT"}
    metadata = {"id_facture": invoice.id, "statut": "MISE_A_DISPOSITION",
                "statuts_demandes": [{"statuts": ["SERVICE_FAIT", "MANDATEE"],
                                      "numero_dp_mandat": "DP-9"}]}
    await send_statuses(_status_step(peer, tmp_path, metadata, refs))
    assert refs["statut.1.2"] == "sent (found at Chorus Pro)"
    assert peer.stats["status_changes"] == 2 and peer.stats["refused_changes"] == 0


async def test_each_step_of_a_chain_carries_only_its_own_fields(peer: Peer,
                                                                  tmp_path: Path) -> None:
    from connectors.chorus.sending import pending_changes

    metadata = {"statuts_demandes": [{"statuts": ["SERVICE_FAIT", "MANDATEE"],
                                      "numero_dp_mandat": "DP-9", "motif": "vu"}]}
    assert [c for _, c in pending_changes(metadata, {})] == [
        Change("SERVICE_FAIT"), Change("MANDATEE", numero_dp_mandat="DP-9")]


async def test_no_invoice_is_missed_when_statuses_change_while_pages_are_read(
        peer: Peer) -> None:
    peer.store.structure(SIRET)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    invoices = [peer.store.add(SIRET) for _ in range(25)]
    for n, invoice in enumerate(invoices):
        invoice.history[-1].at = base + timedelta(seconds=n)
    client = peer.client()
    structure = peer.store.structure(SIRET).id
    seen = []
    async for summary in client.search_received(structure, base - timedelta(minutes=1),
                                                datetime.now(UTC) + timedelta(minutes=1),
                                                page_size=10):
        seen.append((summary.idFacture, summary.statut))
        if len(seen) == 1:
            # Processed meanwhile (by the broker's own status step): it leaves its place.
            await client.process(invoices[0].id, Change("SERVICE_FAIT"))
    ids = [i for i, _ in seen]
    assert set(ids) == {i.id for i in invoices}, sorted({i.id for i in invoices} - set(ids))
    assert (invoices[0].id, "SERVICE_FAIT") in seen  # its change is found too
    assert len(seen) == len(set(seen))  # no row given twice


async def test_a_gateway_refusal_or_page_is_not_read_as_an_empty_answer(peer: Peer) -> None:
    async def gateway(request: web.Request) -> web.Response:
        if request.path.endswith("/rechercher"):
            return web.json_response({"error": "invalid_request"}, status=400)
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "token_type": "Bearer",
                                  "expires_in": 60})

    app = web.Application()
    app.router.add_post("/api/oauth/token", token)
    app.router.add_post("/cpro/{tail:.*}", gateway)
    async with serving(app) as url:
        client = ChorusClient(peer.http, ChorusSettings.model_validate({
            "oauth_url": f"{url}/api/oauth/token", "api_url": url, "client_id": "c",
            "client_secret": "s", "login": "l", "password": "p", "siret": SIRET}),
            tokens=TokenCache())
        with pytest.raises(PermanentError, match=r"HTTP 400.*invalid_request"):
            await client.structure(SIRET)
        with pytest.raises(TransientError, match="not JSON"):
            await client.health()


async def test_a_fetch_asks_the_structure_again_when_the_siret_changes(peer: Peer) -> None:
    from connectors.chorus.intake import fetch

    invoice = peer.store.add(SIRET)
    config = peer.settings().model_dump(mode="json") | {
        "client_secret": "piste-secret", "password": "cpro-password"}
    stale = {"structure": peer.store.structure(siret(22)).id, "siret": siret(22)}
    fetched = await fetch(config, SIRET[:9], peer.http, stale)
    assert [f.metadata["id_facture"] for f in fetched.found] == [invoice.id]
    assert fetched.cursor["structure"] == peer.store.structure(SIRET).id


def test_a_second_suspension_without_dates_is_a_new_key() -> None:
    from connectors.chorus.intake import key_of
    from connectors.chorus.models import InvoiceSummary

    summary = InvoiceSummary.model_validate({"idFacture": 7, "numeroFacture": "F-7",
                                             "statut": "COMPLETEE"})
    assert key_of(summary, 41) != key_of(summary, 57)
    dated = InvoiceSummary.model_validate({"idFacture": 7, "numeroFacture": "F-7",
                                           "statut": "COMPLETEE",
                                           "dateHeureEtatCourant": "2026-12-01T10:00:00"})
    assert key_of(dated) == "7:COMPLETEE:2026-12-01T10:00:00"


async def test_a_rejetee_sent_before_the_run_stopped_is_not_sent_again(
        peer: Peer, tmp_path: Path) -> None:
    # The REJETEE after a refused visa went out; reading the history afterwards failed.
    invoice = peer.store.add(SIRET)
    await peer.client().process(invoice.id, Change("REJETEE", motif="Visa refusé"))
    refs = {"statut.visa": "sent 2026-12-03"}
    metadata = {"id_facture": invoice.id, "statut": "MISE_A_DISPOSITION",
                "rejection": {"step": "visa", "reason": "Visa refusé"}}
    outcome = await send_statuses(_status_step(peer, tmp_path, metadata, refs))
    assert isinstance(outcome, Done) and outcome.metadata["statut"] == "REJETEE"
    assert peer.stats["status_changes"] == 1 and peer.stats["refused_changes"] == 0


async def test_a_fetch_finds_works_invoices_too(peer: Peer) -> None:
    from connectors.chorus.intake import fetch

    plain = peer.store.add(SIRET)
    works = peer.store.add(SIRET, payment_kind="FACTURE_TRAVAUX")
    config = peer.settings().model_dump(mode="json") | {
        "client_secret": "piste-secret", "password": "cpro-password"}
    fetched = await fetch(config, SIRET[:9], peer.http, None)
    kinds = {f.metadata["id_facture"]: f.metadata["type_demande_paiement"]
             for f in fetched.found}
    assert kinds == {plain.id: "FACTURE", works.id: "FACTURE_TRAVAUX"}


async def test_statuses_asked_before_a_refused_visa_are_said_refused_not_sent(
        peer: Peer, tmp_path: Path) -> None:
    invoice = peer.store.add(SIRET)
    refs: dict[str, str] = {}
    metadata = {"id_facture": invoice.id, "statut": "MISE_A_DISPOSITION",
                "statuts_demandes": [{"statuts": ["SERVICE_FAIT"]}],
                "rejection": {"step": "visa", "reason": "Visa refusé"}}
    outcome = await send_statuses(_status_step(peer, tmp_path, metadata, refs))
    assert isinstance(outcome, Done)
    assert refs["statut.1.1"] == "refused: not sent, the invoice was rejected at step visa"
    assert [c.status for c in invoice.history][-1] == "REJETEE"
    assert peer.stats["status_changes"] == 1
