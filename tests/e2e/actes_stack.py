"""The ``actes`` flow with its three peers as real processes: parapheur, TdT, As@lae.

Shared by the ``actes`` end-to-end tests: start the simulators, write the entity's
connector configuration, talk to the TdT over its client-certificate TLS, build acts,
and check a finished act the way an auditor would (ARActe, ATR, PAdES signature).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from asn1crypto import pem
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from connectors.actes.messages import ARActe, read_message
from connectors.sae.seda import read_transfer_reply
from simulators.samples import simple_pdf
from tests.e2e.harness import Api, Proc, start_simulator

ENTITY = "214000150"
DEPARTEMENT = "040"
SIGN_AFTER = "0.3"
ACK_AFTER = "0.3"
# The same short settings for every broker process of these tests.
SHORT_SETTINGS = {
    "DEMAT_POLL_FIRST": "300ms",
    "DEMAT_RETRY_LADDER": "300ms,500ms,1s,1s,1s,1s,1s,1s",
    "DEMAT_RETRY_IN_CALL": "3",
    "DEMAT_WORKER_STALE": "3s",
}


def id_acte_pattern(numero: str, nature: str = "DE") -> re.Pattern[str]:
    """The IDActe grammar (DPT-SIREN-YYYYMMDD-NUMBER-NA) for one act of the entity."""
    return re.compile(rf"{DEPARTEMENT}-{ENTITY}-20[0-9]{{2}}[01][0-9][0-3][0-9]-{numero}-{nature}")


@dataclass
class Peer:
    proc: Proc
    url: str

    def info(self, key: str) -> str:
        """A ``KEY=VALUE`` line the simulator printed before listening."""
        prefix = f"{key}="
        for line in self.proc.lines:
            if line.startswith(prefix):
                return line[len(prefix) :]
        raise KeyError(f"{key} not printed by {self.proc.args}: {self.proc.lines}")


@dataclass
class Peers:
    parapheur: Peer
    tdt: Peer
    sae: Peer

    def all(self) -> list[Proc]:
        return [self.parapheur.proc, self.tdt.proc, self.sae.proc]

    def connectors(self) -> dict[str, dict[str, Any]]:
        """The entity's connector configuration on these simulators."""
        return {
            "parapheur": {
                "url": f"{self.parapheur.url}/ws-iparapheur-no-mtom",
                "type": "ACTES",
                "sous_type": "Deliberation",
                # PES go through the simulator's PES_V2 type (XAdES per bordereau).
                "circuits": {"helios": {"type": "PES", "sous_type": "Bordereau"}},
            },
            "tdt": {
                "url": self.tdt.url,
                "cert": self.tdt.info("TDT_CLIENT_CERT"),
                "key": self.tdt.info("TDT_CLIENT_KEY"),
                "ca": self.tdt.info("TDT_CA"),
            },
            "sae": {
                "url": self.sae.url,
                "login": "demat",
                "password": "demat",
                "archival_agency": "FRAD040",
                "transferring_agency": ENTITY,
                "originating_agency": ENTITY,
            },
        }

    def tls(self) -> ssl.SSLContext:
        """What a client of the TdT presents: the test CA and the client certificate."""
        context = ssl.create_default_context(cafile=self.tdt.info("TDT_CA"))
        context.load_cert_chain(self.tdt.info("TDT_CLIENT_CERT"), self.tdt.info("TDT_CLIENT_KEY"))
        return context

    async def tdt_get(self, path: str) -> Any:
        connector = aiohttp.TCPConnector(ssl=self.tls())
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(f"{self.tdt.url}{path}") as resp,
        ):
            assert resp.status == 200, (path, resp.status, await resp.text())
            return await resp.json()

    async def tdt_stats(self) -> dict[str, int]:
        stats: dict[str, int] = await self.tdt_get("/stats")
        return stats

    async def tdt_faults(self, rules: list[dict[str, Any]]) -> None:
        connector = aiohttp.TCPConnector(ssl=self.tls())
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(f"{self.tdt.url}/_control/faults", json={"rules": rules}) as resp,
        ):
            assert resp.status == 200, await resp.text()

    async def ca_pem(self) -> bytes:
        async with aiohttp.ClientSession() as http, http.get(f"{self.parapheur.url}/ca.pem") as r:
            assert r.status == 200
            return await r.read()


async def start_peers(
    tmp_path: Path,
    *,
    parapheur: Sequence[str] = (),
    tdt: Sequence[str] = (),
    sae: Sequence[str] = (),
) -> Peers:
    """The three simulators (started together), short delays unless the arguments differ."""
    tdt_args = (
        "--siren",
        ENTITY,
        "--departement",
        DEPARTEMENT,
        "--ack-after",
        ACK_AFTER,
        "--cert-dir",
        str(tmp_path / "tdt-certs"),
    )
    sae_args = ("--ack-after", ACK_AFTER, "--atr-after", ACK_AFTER)
    starting = [
        start_simulator(
            "parapheur", tmp_path / "parapheur.log", "--auto-sign-after", SIGN_AFTER, *parapheur
        ),
        start_simulator("tdt", tmp_path / "tdt.log", *tdt_args, *tdt),
        start_simulator("asalae", tmp_path / "asalae.log", *sae_args, *sae),
    ]
    results = await asyncio.gather(*starting, return_exceptions=True)
    started = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await stop_procs([proc for proc, _url in started])
        raise failed[0]
    (para, para_url), (tdt_proc, tdt_url), (sae_proc, sae_url) = started
    return Peers(Peer(para, para_url), Peer(tdt_proc, tdt_url), Peer(sae_proc, sae_url))


async def stop_procs(procs: Sequence[Proc]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            await proc.stop()


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _table(name: str, settings: Mapping[str, Any]) -> list[str]:
    """A TOML table of strings; a mapping value is a sub-table."""
    lines = [f"[{name}]"]
    lines += [f"{key} = {_toml(value)}" for key, value in settings.items()
              if not isinstance(value, Mapping)]
    for key, value in settings.items():
        if isinstance(value, Mapping):
            lines += _table(f"{name}.{key}", value)
    return lines


def write_config(
    path: Path, peers: Peers, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> Path:
    """The TOML declaring the entity and its connectors on ``peers`` (and ``extra`` ones)."""
    lines = [f"[entities.{ENTITY}]", 'name = "Commune de Test"']
    for name, settings in {**peers.connectors(), **(extra or {})}.items():
        lines += _table(f"entities.{ENTITY}.connectors.{name}", settings)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- acts ------------------------------------------------------------------------------


def act_metadata(
    numero: str, *, signature: bool = False, archive: bool = False, **changes: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "nature": "DE",
        "numero": numero,
        "date": dt.date.today().isoformat(),
        "objet": f"Délibération {numero} : travaux de voirie",
        "classification": "1.1",
        "signature": signature,
        "archive": archive,
    }
    data.update(changes)
    return data


def act_pdf(numero: str) -> bytes:
    return simple_pdf([f"Délibération n° {numero}", "Le conseil municipal décide."])


async def refresh_classification(api: Api, timeout: float = 30) -> dict[str, Any]:
    """Fetch the entity's classification (a document of its own) and wait until it is kept."""
    status, body = await api.post(f"/api/v1/entities/{ENTITY}/classification")
    assert status == 202 and body["flow"] == "classification", body
    deadline = time.monotonic() + timeout
    while (doc := await api.get(f"/api/v1/documents/{body['id']}"))["state"] != "completed":
        assert doc["state"] not in ("failed", "rejected", "cancelled"), doc
        assert time.monotonic() < deadline, f"classification fetch still {doc['state']}"
        await asyncio.sleep(0.1)
    result: dict[str, Any] = await api.get(f"/api/v1/entities/{ENTITY}/classification")
    return result


async def post_act(
    api: Api,
    numero: str,
    *,
    signature: bool = False,
    archive: bool = False,
    content_type: str = "application/pdf",
    key: str | None = None,
) -> tuple[int, Any]:
    """Submit act ``numero`` (its PDF declared as ``content_type``); (status, body).

    ``key``: the submission's ``Idempotency-Key``, for a client that sends it again.
    """
    form = aiohttp.FormData()
    form.add_field("flow", "actes")
    form.add_field("entity", ENTITY)
    form.add_field(
        "metadata", json.dumps(act_metadata(numero, signature=signature, archive=archive))
    )
    form.add_field(
        "acte", act_pdf(numero), filename=f"deliberation-{numero}.pdf", content_type=content_type
    )
    headers = {"Idempotency-Key": key} if key else None
    async with api.http.post(f"{api.url}/api/v1/documents", data=form, headers=headers) as resp:
        return resp.status, await resp.json()


async def submit_act(
    api: Api,
    numero: str,
    *,
    signature: bool = False,
    archive: bool = False,
    content_type: str = "application/pdf",
) -> str:
    status, doc = await post_act(
        api, numero, signature=signature, archive=archive, content_type=content_type
    )
    assert status == 201, doc
    return str(doc["id"])


async def download(api: Api, doc: dict[str, Any], role: str) -> bytes:
    """The one file of ``role`` of a document, through the API."""
    found = [f for f in doc.get("files", []) if f["role"] == role]
    assert len(found) == 1, (role, [f["role"] for f in doc.get("files", [])])
    async with api.http.get(f"{api.url}/api/v1/documents/{doc['id']}/files/{found[0]['id']}") as r:
        assert r.status == 200, (r.status, await r.text())
        return await r.read()


async def wait_state(api: Api, doc_id: str, states: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            doc = await api.get(f"/api/v1/documents/{doc_id}")
            if doc["state"] in states:
                return doc
        await asyncio.sleep(0.2)
    raise AssertionError(f"document {doc_id} not in {states} after {timeout}s: {doc}")


# --- checking a finished act -----------------------------------------------------------


def trust_roots(ca_pem: bytes) -> list[asn1_x509.Certificate]:
    _type, _headers, der = pem.unarmor(ca_pem)
    return [asn1_x509.Certificate.load(der)]


async def check_signed_pdf(pdf: bytes, ca: asn1_x509.Certificate) -> str:
    """The PAdES signature is intact, valid and chains to the parapheur's CA; signer's name."""
    reader = PdfFileReader(io.BytesIO(pdf))
    assert len(reader.embedded_signatures) == 1, "expected one signature"
    context = ValidationContext(trust_roots=[ca], allow_fetching=False)
    status = await async_validate_pdf_signature(reader.embedded_signatures[0], context)
    details: Any = status.pretty_print_details
    assert status.intact, details()
    assert status.valid, details()
    assert status.trusted, details()
    assert status.validation_path is not None
    root = status.validation_path.trust_anchor.authority
    assert root.name == ca.subject, (root.name.human_friendly, ca.subject.human_friendly)
    return str(status.signing_cert.subject.human_friendly)


async def check_completed_act(
    api: Api, doc: dict[str, Any], ca: asn1_x509.Certificate | None
) -> None:
    """Acknowledged (IDActe, ARActe), archived with ATR 000 if asked, signed if asked."""
    meta = doc["metadata"]
    assert doc["state"] == "completed", (doc["id"], doc["state"], doc["last_error"])
    id_acte = meta.get("id_acte")
    assert isinstance(id_acte, str) and id_acte_pattern(meta["numero"]).fullmatch(id_acte), (
        meta["numero"],
        id_acte,
    )
    ar = read_message(await download(api, doc, "aracte"))
    assert isinstance(ar, ARActe), type(ar)
    assert ar.id_acte == id_acte
    roles = sorted(f["role"] for f in doc["files"])
    if meta["archive"]:
        assert meta["archive"]["reply_code"] == "000", meta["archive"]
        reply = read_transfer_reply(await download(api, doc, "atr"))
        assert reply.accepted and reply.reply_code == "000", reply
    else:
        assert "archive" not in meta or not isinstance(meta["archive"], dict), meta
        assert "atr" not in roles, roles
    if meta["signature"]:
        assert ca is not None
        signer = await check_signed_pdf(await download(api, doc, "acte_signe"), ca)
        assert "Marie Martin" in signer, signer
    else:
        assert "acte_signe" not in roles, roles


@contextlib.asynccontextmanager
async def api_client(url: str, token: str) -> AsyncIterator[Api]:
    api = Api(url, token)
    try:
        yield api
    finally:
        await api.close()
