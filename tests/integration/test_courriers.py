"""An act through the broker (embedded runtime, relay, worker) and the TdT simulator over
HTTPS; then the préfecture's letter about it is ingested once, linked to the act."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker import accounts, intake, operations, views
from broker.accounts import Principal
from broker.engine import TERMINAL
from broker.errors import ServiceError
from broker.ingest import Ingestor
from broker.relay import Relay
from broker.runtime import Runtime
from broker.settings import Settings
from broker.store import journal as stored_journal
from broker.wiring import catalog
from broker.worker import Worker
from simulators.common import stats_of
from simulators.samples import simple_pdf
from simulators.tdt import CertFiles, build_app, ensure_certs, serving_tls

ENTITY = "214400152"  # the simulator's authority
OPERATOR = Principal("t", accounts.OPERATOR, None)


@dataclass
class Stack:
    rt: Runtime
    tdt_url: str
    tdt_app: Any
    certs: CertFiles

    async def control(self, path: str, body: dict[str, Any]) -> Any:
        import ssl

        context = ssl.create_default_context(cafile=str(self.certs.ca))
        context.load_cert_chain(self.certs.client_cert, self.certs.client_key)
        async with aiohttp.ClientSession() as http, http.post(
            f"{self.tdt_url}{path}", json=body, ssl=context
        ) as resp:
            assert resp.status in (200, 201), await resp.text()
            return await resp.json()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    certs = ensure_certs(tmp_path / "certs")
    app = build_app(ack_after=0.1, cancel_after=0.1)
    async with serving_tls(app, certs) as url:
        settings = Settings(data_dir=tmp_path / "data", poll_first="100ms",
                            retry_ladder="100ms,100ms", ingest_interval="1h")
        rt = await Runtime.open(settings, catalog())
        async with rt.db.begin() as conn:
            await accounts.upsert_entity(conn, ENTITY, "Commune", {"tdt": {
                "url": url, "cert": str(certs.client_cert), "key": str(certs.client_key),
                "ca": str(certs.ca), "poll_after": 1}}, rt.catalog.settings)
        relay, worker = Relay(rt), Worker(rt)
        await relay.start()
        await worker.start()
        try:
            yield Stack(rt, url, app, certs)
        finally:
            await worker.stop()
            await relay.stop()
            await rt.close()


async def submit_act(rt: Runtime, numero: str, **meta: Any) -> dict[str, Any]:
    staged = await rt.blobs.stage(_chunks(simple_pdf([f"Délibération {numero}"])), 1 << 20)
    metadata = {"nature": "DE", "numero": numero, "date": "2024-03-01",
                "objet": "Vente d'un terrain communal", "classification": "1.1", **meta}
    submitted = await intake.submit(rt, OPERATOR, "actes", ENTITY, json.dumps(metadata), [
        intake.StagedPart("acte", f"{numero}.pdf", "application/pdf", staged)])
    return submitted.document


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def wait_state(rt: Runtime, document_id: str, timeout: float = 15) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            doc = await views.get_document(rt, OPERATOR, document_id)
            if doc["state"] in TERMINAL:
                return doc
            await asyncio.sleep(0.05)


async def refresh(rt: Runtime) -> dict[str, Any]:
    """Fetch the entity's classification: a document of its own, waited for."""
    fetch = await operations.refresh_classification(rt, OPERATOR, ENTITY, "actes")
    return await wait_state(rt, fetch.document["id"])


async def test_an_act_is_acknowledged_then_its_courrier_is_ingested_once(stack: Stack) -> None:
    rt = stack.rt
    fetched = await refresh(rt)
    assert fetched["state"] == "completed" and fetched["metadata"]["version_date"] == "2024-01-15"
    assert [f["role"] for f in fetched["files"]] == ["classification"]  # the TdT's 7-2
    act = await wait_state(rt, (await submit_act(rt, "2024_042"))["id"])
    assert act["state"] == "completed", act
    assert act["metadata"]["id_acte"] == "044-214400152-20240301-2024_042-DE"
    assert [f["role"] for f in act["files"]] == ["acte", "aracte"]

    await stack.control("/_control/courrier", {"id_acte": act["metadata"]["id_acte"],
                                               "type": "4-1"})
    ingestor = Ingestor(rt)
    async with aiohttp.ClientSession() as http:
        assert await ingestor.pass_once(http) == 1
        assert await ingestor.pass_once(http) == 0  # marked read at the TdT
    page = await views.list_documents(rt, OPERATOR, flow="actes-courrier")
    (letter,) = page["items"]
    assert letter["state"] == "completed" and letter["metadata"]["related_document"] == act["id"]
    assert letter["metadata"]["code"] == "4-1" and letter["metadata"]["type"] == "4"
    full = await views.get_document(rt, OPERATOR, letter["id"])
    assert {"archive", "message", "courrier"} <= {f["role"] for f in full["files"]}
    act_journal = await views.journal_of(rt, OPERATOR, act["id"])
    assert any(e["kind"] == "incoming" and e["document"] == letter["id"] for e in act_journal)
    assert (await stored_journal.verify(rt.db)).ok


async def test_an_acknowledged_act_can_be_cancelled(stack: Stack) -> None:
    rt = stack.rt
    assert (await refresh(rt))["state"] == "completed"
    act = await wait_state(rt, (await submit_act(rt, "2024_043"))["id"])
    with pytest.raises(ServiceError, match="no action 'purger'"):
        await operations.perform(rt, OPERATOR, act["id"], "purger")
    await operations.perform(rt, OPERATOR, act["id"], "annuler")
    cancelled = await wait_state(rt, act["id"])
    assert cancelled["state"] == "completed", cancelled
    assert cancelled["metadata"]["annulation"]["id_acte"] == act["metadata"]["id_acte"]
    assert "arannulation" in {f["role"] for f in cancelled["files"]}
    assert stats_of(stack.tdt_app)["cancellations"] == 1


async def test_a_classification_fetch_is_retried_and_journaled_like_any_step(
        stack: Stack) -> None:
    rt = stack.rt
    await stack.control("/_control/faults", {"rules": [
        {"kind": "503", "path": "/modules/actes/actes_classification_fetch.php", "count": 4}]})
    fetched = await refresh(rt)
    assert fetched["state"] == "completed", fetched
    assert fetched["metadata"]["version_date"] == "2024-01-15"
    journal = await views.journal_of(rt, OPERATOR, fetched["id"])
    failed = [e for e in journal if e["kind"] == "attempt" and "error" in e]
    assert failed and all("503" in e["error"] for e in failed)
    assert any(e["kind"] == "transition" and e["to"] == "retrying" for e in journal)
    current = await views.classification_of(rt, OPERATOR, ENTITY, "actes")
    assert (current["document"], current["version_date"]) == (fetched["id"], "2024-01-15")


async def test_an_outdated_classification_is_refused_at_intake(stack: Stack) -> None:
    rt = stack.rt
    assert (await refresh(rt))["state"] == "completed"
    blobs_before = {p for p in rt.settings.blob_dir.rglob("*") if p.is_file()}
    with pytest.raises(ServiceError) as refused:
        await submit_act(rt, "2024_044", classification="9.9.9")
    assert refused.value.status == 422
    assert [p.field for p in refused.value.problems] == ["metadata.classification"]
    assert "2024-01-15" in refused.value.problems[0].message
    assert (await views.list_documents(rt, OPERATOR, flow="actes"))["items"] == []
    assert {p for p in rt.settings.blob_dir.rglob("*") if p.is_file()} == blobs_before
    assert [p for p in rt.settings.tmp_dir.rglob("*") if p.is_file()] == []


async def test_a_number_is_used_once_per_entity_until_the_act_is_refused(stack: Stack) -> None:
    rt = stack.rt
    assert (await refresh(rt))["state"] == "completed"
    first = await submit_act(rt, "2024_045")
    with pytest.raises(ServiceError) as refused:
        await submit_act(rt, "2024_045")
    assert refused.value.problems[0].field == "metadata.numero"
    assert first["id"] in refused.value.problems[0].message
    await operations.cancel(rt, OPERATOR, first["id"])
    again = await submit_act(rt, "2024_045")
    assert again["id"] != first["id"]
