"""``demat demo``: the broker with its simulators, a sample entity and sample documents.

The samples: acts (with and without signature, archived or not), deliveries, one PES
with two bordereaux and a PJ that is signed in the parapheur (XAdES per bordereau),
deposited at the TdT, acquitted by the DGFiP behind it, archived, and the finance
software's webhook told; and Chorus Pro invoices, put in the Chorus Pro simulator, fetched
for the entity, given a visa in the parapheur and delivered to the finance software, where
they wait for their statuses.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import aiohttp

from broker import accounts
from broker.serve import Roles, run
from broker.settings import Settings
from broker.store.db import make_engine
from broker.store.migrate import upgrade
from broker.wiring import catalog
from simulators.pes_samples import sample_pes
from simulators.samples import simple_pdf

SAMPLE_ENTITY = "214000150"
SAMPLE_NAME = "Commune d'exemple"
SAMPLE_SIRET = "21400015000018"
INVOICES = 2
# The sample finance software's webhook secret (the gf simulator checks it).
CALLBACK_SECRET = "demat-demo-callback"


def _say(key: str, value: str) -> None:
    print(f"{key}={value}", flush=True)


@dataclass
class Simulator:
    proc: asyncio.subprocess.Process
    url: str
    # KEY=VALUE lines printed before LISTENING (certificate paths...).
    info: dict[str, str]


async def start_simulator(module: str, *args: str) -> Simulator:
    """Start ``python -m simulators.<module>`` on a free port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"simulators.{module}", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    info: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        if line.startswith("LISTENING "):
            return Simulator(proc, line.split(" ", 1)[1], info)
        key, sep, value = line.partition("=")
        if not sep:
            proc.kill()
            raise RuntimeError(f"simulator {module} did not start: {line!r}")
        info[key] = value


def connectors_config(sims: dict[str, Simulator]) -> dict[str, Any]:
    """The sample entity's endpoints on the running simulators."""
    tdt = sims["tdt"].info
    return {
        "depot": {"url": f"{sims['gf'].url}/inbox"},
        "parapheur": {"url": f"{sims['parapheur'].url}/ws-iparapheur-no-mtom",
                      "type": "ACTES", "sous_type": "Deliberation",
                      "circuits": {"helios": {"type": "PES", "sous_type": "Bordereau"},
                                   "facture": {"type": "FACTURES", "sous_type": "Visa"}}},
        "callback": {"url": f"{sims['gf'].url}/callbacks", "signing_secret": CALLBACK_SECRET},
        "tdt": {"url": sims["tdt"].url, "cert": tdt["TDT_CLIENT_CERT"],
                "key": tdt["TDT_CLIENT_KEY"], "ca": tdt["TDT_CA"]},
        "sae": {"url": sims["asalae"].url, "login": "demat", "password": "demat",
                "archival_agency": "FRAD040", "transferring_agency": SAMPLE_ENTITY,
                "originating_agency": SAMPLE_ENTITY},
        "chorus": {"oauth_url": f"{sims['chorus'].url}/api/oauth/token",
                   "api_url": sims["chorus"].url, "client_id": "demat-broker",
                   "client_secret": "piste-secret", "login": "TECH_DEMAT",
                   "password": "cpro-password", "siret": SAMPLE_SIRET, "poll_every": 3,
                   "visa": True},
    }


SIMULATORS: dict[str, tuple[str, ...]] = {
    "gf": ("--callback-secret", CALLBACK_SECRET),
    "parapheur": ("--auto-sign-after", "3"),
    "tdt": ("--siren", SAMPLE_ENTITY, "--departement", "040", "--ack-after", "1"),
    "asalae": ("--ack-after", "1", "--atr-after", "1"),
    "chorus": (),
}


async def _prepare(settings: Settings, connectors: dict[str, Any]) -> tuple[str, str]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        async with engine.begin() as conn:
            await accounts.upsert_entity(conn, SAMPLE_ENTITY, SAMPLE_NAME, connectors,
                                        catalog().settings)
            operator = await accounts.create_token(conn, accounts.OPERATOR, label="demo")
            entity = await accounts.create_token(conn, accounts.ENTITY, SAMPLE_ENTITY, "demo")
    finally:
        await engine.dispose()
    return operator, entity


def _samples(count: int) -> list[tuple[str, dict[str, Any], str, str, bytes]]:
    """(flow, metadata, file role, file name, content) of the sample documents."""
    today = date.today().isoformat()
    acts = [("actes", {"nature": "DE", "numero": f"DEMO_{n:03d}", "date": today,
                       "objet": f"Délibération de démonstration n°{n}", "classification": "1.1",
                       "signature": n % 2 == 0, "archive": n % 3 == 0},
             "acte", f"deliberation-{n}.pdf",
             simple_pdf([f"Délibération de démonstration n°{n}"]))
            for n in range(1, count + 1)]
    deposits = [("depot", {"objet": f"Mandat de démonstration {n}", "exercice": 2026},
                 "document", f"demo-{n}.xml", f"<demo n='{n}'/>".encode())
                for n in range(1, count + 1)]
    # NomFic is taken once per CodCol on a platform: a second demo on the same data gets its own.
    nom_fic = f"DEMO_PES_{datetime.now():%y%m%d%H%M%S}"
    pes = sample_pes(nom_fic, bordereaux=2, pieces=2, pjs=1, demat="1")  # to be signed
    helios = [("helios", {"signature": True, "archive": True}, "pes", f"{nom_fic}.xml", pes)]
    return acts + deposits + helios


async def _fetch_classification(http: aiohttp.ClientSession, api_url: str) -> None:
    """Fetch the sample entity's classification and wait for it: acts are checked against it."""
    async with http.post(f"{api_url}/api/v1/entities/{SAMPLE_ENTITY}/classification") as resp:
        fetch: dict[str, Any] = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"classification refresh refused: {fetch}")
    for _ in range(300):
        async with http.get(f"{api_url}/api/v1/documents/{fetch['id']}") as resp:
            doc: dict[str, Any] = await resp.json()
        if doc["state"] == "completed":
            return
        if doc["state"] in ("failed", "rejected", "cancelled"):
            raise RuntimeError(f"classification fetch {doc['state']}: {doc.get('last_error')}")
        await asyncio.sleep(0.1)
    raise RuntimeError("classification fetch still not done after 30 s")


async def _submit_samples(api_url: str, token: str, count: int) -> list[str]:
    ids = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        await _fetch_classification(http, api_url)
        for flow, metadata, role, name, content in _samples(count):
            form = aiohttp.FormData()
            form.add_field("flow", flow)
            form.add_field("entity", SAMPLE_ENTITY)
            form.add_field("metadata", json.dumps(metadata))
            form.add_field(role, content, filename=name)
            async with http.post(f"{api_url}/api/v1/documents", data=form) as resp:
                body: dict[str, Any] = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"sample {flow} document refused: {body}")
                ids.append(body["id"])
    return ids


async def _sample_invoices(api_url: str, token: str, chorus_url: str) -> list[str]:
    """Invoices for the sample entity in Chorus Pro, and their documents once fetched."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{chorus_url}/_control/invoices",
                             json={"siret": SAMPLE_SIRET, "count": INVOICES}) as resp:
            made = (await resp.json())["ids"]
        for _ in range(600):
            async with http.get(f"{api_url}/api/v1/documents",
                                params={"flow": "facture", "limit": "100"}) as resp:
                page: dict[str, Any] = await resp.json()
            found = [d["id"] for d in page["items"] if d["metadata"]["id_facture"] in made]
            if len(found) == len(made):
                return found
            await asyncio.sleep(0.1)
    raise RuntimeError("the sample invoices were not fetched within 60 s")


async def run_demo(settings: Settings, documents: int) -> None:
    async with AsyncExitStack() as stack:
        sims: dict[str, Simulator] = {}
        for name, args in SIMULATORS.items():
            sims[name] = await start_simulator(name, *args)
            stack.callback(sims[name].proc.terminate)
        if settings.xades_trust is None:  # the PES it signs verify against its CA
            settings = settings.model_copy(
                update={"xades_trust": Path(sims["parapheur"].info["CA_PEM"])})
        operator, entity_token = await _prepare(settings, connectors_config(sims))
        api_url: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def announce(key: str, value: str) -> None:
            if key == "API_URL" and not api_url.done():
                api_url.set_result(value)
            _say(key, value)

        server = asyncio.create_task(run(settings, Roles(api=True, relay=True, worker=True),
                                         announce=announce))
        url = await asyncio.wait_for(asyncio.shield(api_url), 60)
        _say("TOKEN", operator)
        _say("ENTITY", SAMPLE_ENTITY)
        _say("ENTITY_TOKEN", entity_token)
        for name, sim in sims.items():
            _say(f"{name.upper()}_URL", sim.url)
        _say("DATA_DIR", str(settings.data_dir.resolve()))
        ids = await _submit_samples(url, operator, documents)
        _say("DOCUMENTS", ",".join(ids))
        # The PES: signed at PARAPHEUR_URL, then at the TdT, acquitted, archived, told.
        _say("HELIOS_DOCUMENT", ids[-1])
        _say("WATCH", f"{url}/api/v1/documents/{ids[-1]}/journal")
        # Invoices: fetched from CHORUS_URL, visa at PARAPHEUR_URL, delivered to GF_URL.
        _say("INVOICES", ",".join(await _sample_invoices(url, operator, sims["chorus"].url)))
        await server
