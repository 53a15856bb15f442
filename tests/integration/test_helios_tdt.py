"""The HELIOS transmit step and client against the TdT simulator's HELIOS module and the
DGFiP behind it, over real HTTPS with a client certificate."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.outcomes import Done, NewFile, Outcome, Pending, Rejected
from broker.retry import InCallRetry, RetryPolicy
from connectors.base import FileView, PermanentError, StepContext
from connectors.helios.acquit import read_acquit
from connectors.helios.connector import DEPOSIT_MARK, TRANSACTION_REF, TdtHeliosConnector
from connectors.helios.retour import read_retour
from connectors.helios.tdt_client import HeliosClient
from connectors.s2low.client import Attachment, tdt_settings
from simulators.faults import FaultRule
from simulators.pes_samples import sample_pes
from simulators.tdt import HELIOS_MODULE, CertFiles, build_app, ensure_certs, serving_tls
from tests.integration.tdt_sim import Tdt

ENTITY = "214400152"
DOC = "0195d3a0-7b1c-7000-8000-0000000000b2"
DEPOSIT = "/modules/helios/api/helios_importer_fichier.php"


class Crash(Exception):
    """The worker dying between two statements."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return ensure_certs(tmp_path_factory.mktemp("tdt-certs"))


@pytest.fixture
async def tdt(certs: CertFiles, request: pytest.FixtureRequest) -> AsyncIterator[Tdt]:
    options: dict[str, Any] = {"acquit_after": 0.2, **getattr(request, "param", {})}
    app = build_app(**options)
    async with serving_tls(app, certs) as url:
        yield Tdt(app, url, certs)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Pes:
    """One helios document as the worker holds it."""

    tmp: Path
    http: aiohttp.ClientSession
    config: dict[str, Any]
    data: bytes
    refs: dict[str, str] = field(default_factory=dict)
    saved: list[tuple[str, str, bytes]] = field(default_factory=list)
    crash_on_ref: str | None = None

    def file(self) -> FileView:
        digest = hashlib.sha256(self.data).hexdigest()
        path = self.tmp / f"blob-{digest}"
        path.write_bytes(self.data)
        return FileView("f1", "pes", "mandats décembre.xml", "application/xml",
                        len(self.data), digest, path)

    async def save_ref(self, key: str, value: str) -> None:
        if key == self.crash_on_ref:
            raise Crash(f"crashed before saving {key}")
        self.refs[key] = value

    async def save_file(self, new: NewFile) -> FileView:
        data = new.path.read_bytes()
        self.saved.append((new.role, new.name, data))
        return FileView("f2", new.role, new.name, new.content_type, len(data), "", new.path)

    def context(self, kind: str = "run") -> StepContext:
        return StepContext(
            document_id=DOC, flow="helios", entity=ENTITY, step="transmit", run=1, kind=kind,
            metadata={"nom_fic": "PES_INT"}, files=[self.file()], config=self.config,
            refs=dict(self.refs), http=self.http,
            workdir=Path(tempfile.mkdtemp(prefix="work-", dir=self.tmp)),
            retry=InCallRetry(RetryPolicy(in_call_attempts=3, in_call_initial=0.01,
                                          in_call_max=0.05)),
            save_ref=self.save_ref, save_file=self.save_file)

    async def run(self, kind: str = "run") -> Outcome:
        return await TdtHeliosConnector().run(self.context(kind))

    async def until_answered(self, polls: int = 80) -> Done | Rejected:
        for _ in range(polls):
            outcome = await self.run("poll")
            if not isinstance(outcome, Pending):
                return outcome
            await asyncio.sleep(0.05)
        raise AssertionError("still pending")


def pes_doc(tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt, name: str = "PES_INT",
            **options: Any) -> Pes:
    return Pes(tmp_path, http, tdt.config, sample_pes(name, **options))


async def test_a_pes_is_deposited_once_and_comes_back_acquitted(
        tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt) -> None:
    doc = pes_doc(tmp_path, http, tdt)
    first = await doc.run()
    assert isinstance(first, Pending) and doc.refs[TRANSACTION_REF] == first.remote_ref
    assert DEPOSIT_MARK in doc.refs
    done = await doc.until_answered()
    assert isinstance(done, Done), done
    assert done.metadata["acquit"]["accepted"] is True
    (role, name, data), = doc.saved
    assert (role, name) == ("acquit", "PES_ACQUIT_PES_INT.xml")
    acquit = read_acquit(data)
    assert acquit.accepted and acquit.nom_fic == "PES_INT"
    # Two bordereaux and the PJ, each acknowledged.
    assert [e.subject for e in acquit.elements] == [
        "bordereau 1 (2026)", "bordereau 2 (2026)", "PJ PESINTPJ1"]
    held = tdt.app[HELIOS_MODULE].transactions[int(first.remote_ref or 0)]
    assert held.sent_as is not None and held.sent_as.startswith(f"PESALR2_{ENTITY}_")
    assert held.filename == "mandats_d_cembre.xml"
    assert tdt.stats["deposits"] == 1 and tdt.stats["duplicates"] == 0


@pytest.mark.parametrize("tdt", [{"faults": [FaultRule(
    kind="reset", path=DEPOSIT, phase="after", count=1)]}], indirect=True)
async def test_a_lost_deposit_answer_is_found_by_its_sha1_not_sent_again(
        tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt) -> None:
    doc = pes_doc(tmp_path, http, tdt)
    first = await doc.run()
    assert isinstance(first, Pending)
    assert tdt.stats["deposits"] == 1 and tdt.stats["faults_reset"] == 1
    assert isinstance(await doc.until_answered(), Done)


async def test_a_crash_after_the_deposit_adopts_the_transaction_on_the_next_run(
        tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt) -> None:
    doc = pes_doc(tmp_path, http, tdt)
    doc.crash_on_ref = TRANSACTION_REF
    with pytest.raises(Crash):
        await doc.run()
    doc.crash_on_ref = None
    again = await doc.run()
    assert isinstance(again, Pending)
    assert tdt.stats["deposits"] == 1, "deposited twice"
    assert doc.refs[TRANSACTION_REF] == "1"


async def test_an_unknown_post_is_rejected_with_every_dgfip_error(
        tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt) -> None:
    doc = pes_doc(tmp_path, http, tdt, id_post="999999")
    await doc.run()
    outcome = await doc.until_answered()
    assert isinstance(outcome, Rejected)
    assert outcome.reason == (
        "refused by the DGFiP: bordereau 1 (2026): ERREUR_CODIQUE: Le codique du poste "
        "comptable est inconnu; bordereau 2 (2026): ERREUR_CODIQUE: Le codique du poste "
        "comptable est inconnu")
    errors = outcome.metadata["errors"]
    assert [(e["bordereau"], e["code"]) for e in errors] == [
        ("1", "ERREUR_CODIQUE"), ("2", "ERREUR_CODIQUE")]
    assert outcome.metadata["acquit"]["accepted"] is False
    assert tdt.stats["acquits_ko"] == 1


async def test_a_bordereau_already_integrated_is_refused_as_a_duplicate(
        tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt) -> None:
    first = pes_doc(tmp_path, http, tdt, "PES_A", first_number=5)
    await first.run()
    assert isinstance(await first.until_answered(), Done)
    again = pes_doc(tmp_path / "b", http, tdt, "PES_B", first_number=6)
    (tmp_path / "b").mkdir()
    await again.run()
    outcome = await again.until_answered()
    assert isinstance(outcome, Rejected)
    # Bordereau 6 was integrated with PES_A; bordereau 7 is new.
    assert [(e["bordereau"], e["code"]) for e in outcome.metadata["errors"]] == [
        ("6", "ERREUR_DOUBLON_BORDEREAU")]


async def test_a_nomfic_the_tdt_already_sent_for_the_codcol_ends_in_error(
        tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt) -> None:
    first = pes_doc(tmp_path, http, tdt, "PES_SAME", first_number=20)
    await first.run()
    assert isinstance(await first.until_answered(), Done)
    (tmp_path / "b").mkdir()
    again = pes_doc(tmp_path / "b", http, tdt, "PES_SAME", first_number=30)
    await again.run()
    outcome = await again.until_answered()
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith("TdT status -1 (Erreur): Le fichier PES_SAME (NomFic) a "
                                     "déjà été transmis pour la collectivité 400")
    assert tdt.stats["duplicates"] == 1


async def test_the_same_file_twice_is_refused_by_the_tdt_as_a_doublon(
        http: aiohttp.ClientSession, tdt: Tdt, tmp_path: Path) -> None:
    client = HeliosClient(http, tdt_settings(tdt.config, ENTITY))
    path = tmp_path / "pes.xml"
    path.write_bytes(sample_pes("PES_TWICE"))
    await client.deposit(Attachment(path, "pes.xml", "application/xml"))
    with pytest.raises(PermanentError, match="doublon détecté"):
        await client.deposit(Attachment(path, "pes.xml", "application/xml"))
    assert tdt.stats["deposits"] == 1


async def test_pes_retour_are_listed_fetched_read_and_marked_read(
        http: aiohttp.ClientSession, tdt: Tdt, tmp_path: Path) -> None:
    async with http.post(f"{tdt.url}/_control/retour", json={"count": 2},
                         ssl=tdt.ssl) as resp:
        assert resp.status == 200
    connector = TdtHeliosConnector()
    found = await connector.incoming(tdt.config, ENTITY, http, tmp_path)
    assert [i.key for i in found] == ["pes-retour:1", "pes-retour:2"]
    first = found[0]
    assert first.flow == "helios-retour" and first.metadata["typ_fic"] == "PESRETOUR_DEP"
    assert first.link == ("id_coll", first.metadata["id_coll"])
    assert read_retour(first.files[0].path.read_bytes()).blocks == ("PES_DepenseRetour",)
    await connector.acknowledge(tdt.config, http, first.key)
    assert [i.key for i in await connector.incoming(tdt.config, ENTITY, http, tmp_path)] == [
        "pes-retour:2"]


