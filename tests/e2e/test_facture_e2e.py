"""``facture`` end to end: 200 Chorus Pro invoices for 5 entities appear in the simulator
over time and are fetched, checked, [given a visa], delivered and processed.

Real processes: the Chorus Pro simulator (tokens living 3 s, at most 25 calls a second per
token then 429, 5% of calls 503), the finance software's inbox, the parapheur (a third of
the visas refused), and the broker on RabbitMQ + PostgreSQL (``demat api``, ``demat
relay``, two ``demat worker``, one SIGKILLed mid-run). Each invoice reaches the inbox
exactly once with its PDF, PIVOT and data; the statuses the finance software asks for
through the API reach Chorus Pro in order; an invalid one is refused before any call,
naming the allowed ones; a refused visa makes the invoice REJETEE with the annotation;
Chorus Pro counts no status sent twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from simulators.chorus_samples import siret
from simulators.parapheur import DEFAULT_REJECT_ANNOTATION
from tests.e2e.actes_stack import SHORT_SETTINGS, _table, api_client, stop_procs
from tests.e2e.harness import (
    Api,
    Proc,
    WorkerPool,
    demat_env,
    isolated_amqp,
    prepare_store,
    run_cli,
    sim_stats,
    start_simulator,
    start_split_layout,
    wait_mid_run,
)

ENTITIES = [siret(40 + n) for n in range(5)]
VISA = ENTITIES[4]  # its invoices go through the parapheur first
PER_ENTITY = 40
TOTAL = PER_ENTITY * len(ENTITIES)
APPEAR_OVER = 12.0
TIMEOUT = 240.0
MANDATE = "DP-2026-"


def config(path: Path, chorus_url: str, inbox_url: str, parapheur_url: str) -> Path:
    lines: list[str] = []
    for code in ENTITIES:
        siren = code[:9]
        lines += [f"[entities.{siren}]", f'name = "Collectivité {siren}"']
        lines += _table(f"entities.{siren}.connectors.chorus", {
            "oauth_url": f"{chorus_url}/api/oauth/token", "api_url": chorus_url,
            "client_id": "demat-broker", "client_secret": "piste-secret",
            "login": "TECH_DEMAT", "password": "cpro-password", "siret": code,
            "poll_every": "1", "visa": "true" if code == VISA else "false"})
        lines += _table(f"entities.{siren}.connectors.depot", {"url": f"{inbox_url}/inbox"})
        if code == VISA:
            lines += _table(f"entities.{siren}.connectors.parapheur", {
                "url": f"{parapheur_url}/ws-iparapheur", "type": "FACTURES",
                "sous_type": "Visa", "poll_interval": "0.3"})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def _json(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with http.request(method, url, json=body) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return await resp.json()


async def all_invoices(api: Api) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await api.get("/api/v1/documents", flow="facture", limit="500",
                             **({"cursor": cursor} if cursor else {}))
        found += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return found


def waiting_for_status(doc: dict[str, Any]) -> bool:
    return doc["state"] == "waiting" and doc["step"] == "status"


def ended(doc: dict[str, Any]) -> bool:
    return doc["state"] in ("completed", "rejected", "failed", "cancelled")


async def ask(api: Api, doc: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
    """The finance software asks for the next statuses: taken even while the step runs."""
    return await api.post(f"/api/v1/documents/{doc['id']}/requests/statuts", body)


def plan_for(n: int) -> list[dict[str, Any]]:
    """What the finance software asks for invoice ``n`` (by arrival order)."""
    if n % 5 == 0:
        return [{"statuts": "REJETEE", "motif": f"Facture {n} en double"}]
    if n % 5 == 1:
        return [{"statuts": "SERVICE_FAIT"}]
    return [{"statuts": "SERVICE_FAIT;MANDATEE", "numero_dp_mandat": f"{MANDATE}{n}"},
            {"statuts": "MISE_EN_PAIEMENT"}]


@pytest.fixture
async def amqp_vhost(amqp_url: str) -> AsyncIterator[str]:
    async with isolated_amqp(amqp_url) as url:
        yield url


@pytest.mark.slow
async def test_200_invoices_for_5_entities_exactly_once_with_a_worker_killed(
        tmp_path: Path, amqp_vhost: str, pg_url: str) -> None:
    procs: list[Proc] = []
    chorus, chorus_url = await start_simulator(
        "chorus", tmp_path / "chorus.log", "--token-ttl", "3", "--rate", "25",
        "--fault", "503:0.05,path=/cpro/,retry_after=0", "--seed", "7")
    procs.append(chorus)
    inbox, inbox_url = await start_simulator("gf", tmp_path / "gf.log")
    procs.append(inbox)
    signer, signer_url = await start_simulator(
        "parapheur", tmp_path / "parapheur.log", "--auto-sign-after", "0.3",
        "--reject-ratio", "0.34", "--seed", "3")
    procs.append(signer)
    env = demat_env(tmp_path / "data",
                    DEMAT_CONFIG=str(config(tmp_path / "demat.toml", chorus_url, inbox_url,
                                            signer_url)),
                    DEMAT_AMQP_URL=amqp_vhost, DEMAT_DATABASE_URL=pg_url, DEMAT_PORT="0",
                    DEMAT_FETCH_TICK="200ms", **SHORT_SETTINGS)
    pg = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    workers = WorkerPool(env, tmp_path, pg, procs)
    started = time.monotonic()
    try:
        token = await prepare_store(pg_url)
        url = await start_split_layout(env, workers, procs, tmp_path)
        async with api_client(url, token) as api, aiohttp.ClientSession() as http:
            await _json(http, "POST", f"{chorus_url}/_control/schedule", {
                "invoices": [{"siret": code, "count": PER_ENTITY} for code in ENTITIES],
                "over": APPEAR_OVER})
            delivered = [0]

            async def kill_once() -> None:
                pid, _ = await wait_mid_run(lambda: delivered[0], 40, workers.claimed,
                                            timeout=TIMEOUT)
                await workers.kill_and_replace(pid)

            killing = asyncio.create_task(kill_once())
            asked: dict[str, int] = {}  # document -> requests sent
            order: dict[str, int] = {}
            refused_first: dict[str, Any] = {}
            deadline = time.monotonic() + TIMEOUT
            while True:
                docs = await all_invoices(api)
                delivered[0] = sum(1 for d in docs if waiting_for_status(d) or ended(d))
                for doc in sorted(docs, key=lambda d: d["metadata"]["id_facture"]):
                    if doc["entity"] == VISA[:9] or not waiting_for_status(doc):
                        continue
                    n = order.setdefault(doc["id"], len(order))
                    steps = plan_for(n)
                    if asked.get(doc["id"], 0) >= len(steps):
                        continue
                    if not refused_first:
                        # Not allowed from MISE_A_DISPOSITION: refused before any call.
                        before = (await sim_stats(chorus_url))["refused_changes"]
                        status, body = await ask(api, doc, {"statuts": "MISE_EN_PAIEMENT"})
                        refused_first.update(status=status, body=body, before=before)
                    status, body = await ask(api, doc, steps[asked.get(doc["id"], 0)])
                    assert status == 200, (status, body)
                    asked[doc["id"]] = asked.get(doc["id"], 0) + 1
                finals = {d["id"]: d for d in docs}
                done = [d for d in docs if ended(d) or (
                    waiting_for_status(d) and d["entity"] != VISA[:9]
                    and asked.get(d["id"], 0) >= len(plan_for(order.get(d["id"], 0)))
                    and plan_for(order[d["id"]])[-1]["statuts"] == "SERVICE_FAIT")
                    or (waiting_for_status(d) and d["entity"] == VISA[:9])]
                if len(docs) == TOTAL and len(done) == TOTAL:
                    break
                assert time.monotonic() < deadline, (
                    f"{len(docs)} documents, {len(done)} settled: "
                    + str(sorted({(d['state'], d['step']) for d in docs
                                  if d['id'] not in {x['id'] for x in done}})))
                await asyncio.sleep(0.5)
            await asyncio.wait_for(killing, 10)
            seconds = time.monotonic() - started

            # An invalid transition: refused by the broker, allowed ones named, no call made.
            assert refused_first["status"] == 422, refused_first
            said = str(refused_first["body"])
            assert "cannot become MISE_EN_PAIEMENT" in said and "SERVICE_FAIT" in said, said

            invoices = {i["idFacture"]: i for i in await _json(
                http, "GET", f"{chorus_url}/_control/invoices")}
            assert len(invoices) == TOTAL
            by_invoice = {d["metadata"]["id_facture"]: d for d in finals.values()}
            assert sorted(by_invoice) == sorted(invoices), "one document per invoice"
            receipts = (await _json(http, "GET", f"{inbox_url}/inbox"))["receipts"]
            delivered_ids = [r["metadata"]["metadata"]["id_facture"] for r in receipts]
            assert len(delivered_ids) == len(set(delivered_ids)), "an invoice delivered twice"
            refused_visas = 0
            for invoice_id, doc in by_invoice.items():
                invoice = invoices[invoice_id]
                if doc["entity"] == VISA[:9]:
                    if doc["state"] == "rejected":
                        refused_visas += 1
                        assert invoice["statut"] == "REJETEE", invoice
                        history = await _json(http, "GET", f"{chorus_url}/_control/invoices/"
                                                           f"{invoice_id}")
                        assert history["history"][-1]["commentaire"] == \
                            DEFAULT_REJECT_ANNOTATION
                        assert invoice_id not in delivered_ids
                    else:
                        assert waiting_for_status(doc), doc
                        assert invoice_id in delivered_ids
                    continue
                assert invoice_id in delivered_ids
                n = order[doc["id"]]
                expected = [s for step in plan_for(n) for s in step["statuts"].split(";")]
                assert invoice["statuts"][3:] == expected, (invoice, expected)
                if expected[-1] in ("REJETEE", "MISE_EN_PAIEMENT"):
                    assert doc["state"] == "completed", doc
            for receipt in receipts:
                roles = {f["role"] for f in receipt["metadata"]["files"]}
                assert {"facture", "pivot", "donnees"} <= roles, receipt
            assert 0 < refused_visas < PER_ENTITY
            stats = await sim_stats(chorus_url)
            assert stats["duplicates"] == 0, stats
            assert stats["refused_changes"] == refused_first["before"] == 0, stats
            assert stats["invoices_downloaded"] >= TOTAL
            assert stats["tokens"] >= 2 and stats["rate_limited"] > 0 and \
                stats["faults_503"] > 0, stats
            gf = await sim_stats(inbox_url)
            assert gf["duplicates"] == 0 and gf["received"] == len(receipts), gf
            assert "journal OK" in run_cli(env, "journal", "verify")
            print(f"\nfacture e2e amqp+pg: {TOTAL} invoices for {len(ENTITIES)} entities "
                  f"({refused_visas} visas refused), delivered={len(receipts)}, status "
                  f"changes={stats['status_changes']}, duplicates={stats['duplicates']}, "
                  f"tokens={stats['tokens']}, 429={stats['rate_limited']}, "
                  f"503={stats['faults_503']}, downloads={stats['invoices_downloaded']}, "
                  f"worker killed=1, seconds={seconds:.1f}")
    finally:
        await pg.close()
        await stop_procs(procs)
