"""The TdT connector and client against the S²LOW-style simulator, over real HTTPS."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import ssl
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.outcomes import Done, NewFile, Outcome, Pending, Rejected, StepError
from broker.retry import AttemptRecord, InCallRetry, RetryPolicy
from connectors.actes.classification import Classification
from connectors.actes.connector import TdtActesConnector
from connectors.actes.envelope import read_archive
from connectors.actes.messages import (
    AnomalieActe,
    ARActe,
    ARAnnulation,
    CourrierSimple,
    LettreObservations,
    read_message,
)
from connectors.actes.tdt_client import TdtClient
from connectors.base import FileView, PermanentError, StepContext, TransientError
from connectors.s2low.client import tdt_settings
from simulators.faults import FaultRule
from simulators.pki import TestCA
from simulators.tdt import TDT, CertFiles, build_app, ensure_certs, serving_tls
from tests.integration.tdt_sim import Tdt

ROOT = Path(__file__).resolve().parents[2]
DOC = "0195d3a0-7b1c-7000-8000-0000000000a1"
ENTITY = "214400152"
ID_ACTE = "044-214400152-20240301-2024_042-DE"
ACT_PDF = b"%PDF-1.4\nacte non signe\n%%EOF\n"
SIGNED_PDF = b"%PDF-1.4\nacte signe\n%%EOF\n"
ANNEX_PDF = b"%PDF-1.4\nannexe\n%%EOF\n"
CREATE = "/modules/actes/actes_transac_create.php"


class Crash(Exception):
    """The worker dying between two statements."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return ensure_certs(tmp_path_factory.mktemp("tdt-certs"))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def tdt(certs: CertFiles, request: pytest.FixtureRequest) -> AsyncIterator[Tdt]:
    options: dict[str, Any] = {"ack_after": 0.1, **getattr(request, "param", {})}
    app = build_app(**options)
    async with serving_tls(app, certs) as url:
        yield Tdt(app, url, certs)


def tdt_options(**options: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("tdt", [options], indirect=True, ids=["options"])


def stored(folder: Path, name: str, content: bytes, role: str) -> FileView:
    digest = hashlib.sha256(content).hexdigest()
    path = folder / f"blob-{digest}"
    path.write_bytes(content)
    return FileView(f"f-{name}", role, name, "application/pdf", len(content), digest, path)


@dataclass
class Document:
    """One document as the worker holds it: metadata, files, persisted refs and files."""

    tmp: Path
    http: aiohttp.ClientSession
    config: dict[str, Any]
    metadata: dict[str, Any] = field(
        default_factory=lambda: {
            "nature": 1,
            "numero": "2024_042",
            "date": "2024-03-01",
            "objet": "Délibération fixant les tarifs de l’eau",
            "classification": "1.1",
            "type_piece": "99_DE",
            "type_pj": ["99_DE"],
        }
    )
    refs: dict[str, str] = field(default_factory=dict)
    saved: list[tuple[str, str, bytes]] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    crash_on_ref: str | None = None
    files: list[FileView] = field(init=False)

    def __post_init__(self) -> None:
        self.files = [
            stored(self.tmp, "délibération.pdf", ACT_PDF, "acte"),
            stored(self.tmp, "annexe 1.pdf", ANNEX_PDF, "annexe"),
        ]

    async def save_ref(self, key: str, value: str) -> None:
        if key == self.crash_on_ref:
            raise Crash(f"crashed before saving {key}")
        self.refs[key] = value

    async def save_file(self, new: NewFile) -> FileView:
        data = new.path.read_bytes()
        self.saved.append((new.role, new.name, data))
        return stored(self.tmp, new.name, data, new.role)

    def context(
        self, step: str = "transmit", *, attempts: int = 3, kind: str = "run"
    ) -> StepContext:
        policy = RetryPolicy(in_call_attempts=attempts, in_call_initial=0.01, in_call_max=0.05)
        workdir = Path(tempfile.mkdtemp(prefix="work-", dir=self.tmp))
        return StepContext(
            document_id=DOC,
            flow="actes",
            entity=ENTITY,
            step=step,
            run=1,
            kind=kind,
            metadata=self.metadata,
            files=self.files,
            config=self.config,
            refs=dict(self.refs),
            http=self.http,
            workdir=workdir,
            retry=InCallRetry(policy, record=self.attempts.append),
            save_ref=self.save_ref,
            save_file=self.save_file,
        )

    async def run(self, step: str = "transmit", **options: Any) -> Outcome:
        return await TdtActesConnector().run(self.context(step, **options))

    async def until_done(self, step: str = "transmit", polls: int = 60) -> Done | Rejected:
        for _ in range(polls):
            outcome = await self.run(step, kind="poll")
            if not isinstance(outcome, Pending):
                return outcome
            await asyncio.sleep(0.05)
        raise AssertionError(f"{step} still pending after {polls} polls")


@pytest.fixture
def doc(tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt) -> Document:
    return Document(tmp_path, http, tdt.config)


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


# -- TLS -----------------------------------------------------------------------------------


async def test_client_certificate_is_required(
    tdt: Tdt, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    no_cert = ssl.create_default_context(cafile=str(tdt.certs.ca))
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"{tdt.url}/modules/actes/api/list_actes.php", ssl=no_cert) as resp:
            await resp.read()
    # A certificate from another CA is refused too (under TLS 1.3 the client only sees
    # the connection closed, so the error may be transient or permanent).
    stranger = TestCA.create("Unknown CA").issue_client("intrus").write(tmp_path, "intrus")
    config = {**tdt.config, "cert": str(stranger.cert), "key": str(stranger.key)}
    with pytest.raises(StepError, match=f"TdT {tdt.url} list of transactions in status 1"):
        await TdtClient(http, tdt_settings(config, ENTITY)).list_transactions(1)
    assert tdt.stats["requests"] == 0
    assert await TdtClient(http, tdt_settings(tdt.config, ENTITY)).list_transactions(1) == []


@tdt_options(login="mairie", password="s3cret")
async def test_login_is_checked_when_the_tdt_wants_one(doc: Document, tdt: Tdt) -> None:
    with pytest.raises(PermanentError, match="KO: Échec de l'authentification"):
        await doc.run()
    doc.config.update(login="mairie", password="s3cret")
    assert isinstance(await doc.run(), Pending)


# -- transmit ------------------------------------------------------------------------------


async def test_transmit_sends_the_signed_act_and_stores_the_aracte(doc: Document, tdt: Tdt) -> None:
    doc.files.append(stored(doc.tmp, "délibération signée.pdf", SIGNED_PDF, "acte_signe"))

    first = await doc.run()
    assert isinstance(first, Pending) and first.poll_after == 1
    assert doc.refs["tdt_transaction"] == "1"
    done = await doc.until_done()

    assert isinstance(done, Done)
    assert done.metadata["id_acte"] == ID_ACTE
    assert done.metadata["tdt"]["transaction"] == "1"
    assert done.metadata["tdt"]["status"] == 4
    [(role, name, xml)] = doc.saved
    assert (role, name) == ("aracte", f"{ID_ACTE}-1-2.xml")
    aracte = read_message(xml)
    assert isinstance(aracte, ARActe) and aracte.id_acte == ID_ACTE
    assert done.metadata["tdt"]["date_ar"] == aracte.date_reception.isoformat()
    assert aracte.acte_recu is not None
    assert aracte.acte_recu.objet == "Délibération fixant les tarifs de l'eau"
    # The TdT built the archive from the fields: the signed act, then the annex, typed.
    sent = members(tdt.app[TDT].transactions[1].archive)  # type: ignore[arg-type]
    base = "044-214400152-20240301-2024_042-DE-1-1"
    assert sent[f"99_DE-{base}_1.pdf"] == SIGNED_PDF
    assert sent[f"99_DE-{base}_2.pdf"] == ANNEX_PDF
    assert tdt.stats["transmissions"] == 1
    assert tdt.stats["acknowledged"] == 1
    assert tdt.stats["duplicates"] == 0


@tdt_options(prefecture_classification_date=date(2024, 6, 1))
async def test_stale_classification_is_rejected_with_the_prefecture_words(
    doc: Document, tdt: Tdt
) -> None:
    assert isinstance(await doc.run(), Pending)
    rejected = await doc.until_done()

    assert isinstance(rejected, Rejected)
    assert rejected.reason == (
        "AnomalieActe 002 : ODT-VERIF-01 : Votre acte a été transmis avec une date de "
        "classification qui n'est pas à jour"
    )
    assert rejected.metadata["tdt"]["status"] == -1
    assert rejected.metadata["tdt"]["message"] == (
        "Anomalie signalee par le MIOCT : 002 - ODT-VERIF-01 : Votre acte a été transmis avec "
        "une date de classification qui n'est pas à jour"
    )
    assert rejected.metadata["tdt"]["anomalie"]["nature"] == "002"
    [(role, name, xml)] = doc.saved
    assert (role, name) == ("anomalie", "AnomalieActe-2024_042.xml")
    anomaly = read_message(xml)
    assert isinstance(anomaly, AnomalieActe)
    assert str(anomaly.classification_date_en_cours) == "2024-06-01"
    assert tdt.stats["anomalies"] == 1
    assert tdt.stats["acknowledged"] == 0


async def test_act_breaking_the_rules_gets_the_prefecture_anomaly(doc: Document, tdt: Tdt) -> None:
    doc.metadata["classification"] = "4.9"
    await doc.run()
    rejected = await doc.until_done()

    assert isinstance(rejected, Rejected)
    assert rejected.reason == (
        "AnomalieActe 001 : Acte non conforme : classification : classification code 4.9 "
        "does not exist in the classification of 2024-01-15 (under 4: 4.1)"
    )


async def test_lost_create_answer_is_adopted_by_the_in_call_retry(
    doc: Document, tdt: Tdt, http: aiohttp.ClientSession
) -> None:
    rule = {"kind": "reset", "phase": "after", "path": CREATE, "count": 1}
    async with http.post(f"{tdt.url}/_control/faults", json={"rules": [rule]}, ssl=tdt.ssl):
        pass

    assert isinstance(await doc.run(), Pending)

    assert [a.try_number for a in doc.attempts] == [1]
    assert doc.refs["tdt_transaction"] == "1"
    assert tdt.stats["transmissions"] == 1
    assert tdt.stats["duplicates"] == 0


async def test_crash_between_create_and_save_ref_adopts_the_transaction(
    doc: Document, tdt: Tdt
) -> None:
    doc.crash_on_ref = "tdt_transaction"
    with pytest.raises(Crash):
        await doc.run()
    assert set(doc.refs) == {"tdt_create_started"}
    assert tdt.stats["transmissions"] == 1

    # The job is run again after the crash, as the same first run.
    doc.crash_on_ref = None
    again = await doc.run()

    assert isinstance(again, Pending)
    assert doc.refs["tdt_transaction"] == "1"
    assert isinstance(await doc.until_done(), Done)
    assert tdt.stats["transmissions"] == 1
    assert tdt.stats["duplicates"] == 0


async def test_lookup_adopts_an_act_the_tdt_already_acknowledged(doc: Document, tdt: Tdt) -> None:
    doc.crash_on_ref = "tdt_transaction"
    with pytest.raises(Crash):
        await doc.run()
    await asyncio.sleep(0.3)  # acknowledged meanwhile: found among status-4 acts
    doc.crash_on_ref = None
    assert isinstance(await doc.run(), Pending)
    done = await doc.until_done()
    assert isinstance(done, Done) and done.metadata["id_acte"] == ID_ACTE
    assert tdt.stats["transmissions"] == 1


@pytest.mark.parametrize("kind,phase", [("503", "before"), ("503", "after"), ("500", "after")])
async def test_faults_on_create_are_transient_and_never_duplicate(
    doc: Document, tdt: Tdt, http: aiohttp.ClientSession, kind: str, phase: str
) -> None:
    rule = {"kind": kind, "phase": phase, "path": CREATE, "count": 1, "retry_after": 0}
    async with http.post(f"{tdt.url}/_control/faults", json={"rules": [rule]}, ssl=tdt.ssl):
        pass
    with pytest.raises(TransientError, match=f"HTTP {kind}"):
        await doc.run(attempts=1)
    assert "tdt_transaction" not in doc.refs

    assert isinstance(await doc.run(kind="retry"), Pending)
    done = await doc.until_done()

    assert isinstance(done, Done)
    assert tdt.stats["transmissions"] == 1
    assert tdt.stats["duplicates"] == 0
    assert tdt.stats[f"faults_{kind}"] == 1


@tdt_options(faults=[FaultRule(kind="503", ratio=0.1, retry_after=0)], seed=15, ack_after=0.05)
async def test_ten_percent_of_calls_failing_still_sends_each_act_once(
    tmp_path: Path, http: aiohttp.ClientSession, tdt: Tdt
) -> None:
    docs = []
    for n in range(6):
        folder = tmp_path / f"doc{n}"
        folder.mkdir()
        document = Document(folder, http, tdt.config)
        document.metadata["numero"] = f"2024_{n:03d}"
        docs.append(document)

    async def transmit(document: Document) -> Done | Rejected:
        for _ in range(5):  # scheduled retries when the in-call ones are spent
            try:
                if "tdt_transaction" not in document.refs:
                    await document.run(kind="retry")
                return await document.until_done()
            except TransientError:
                await asyncio.sleep(0.05)
        raise AssertionError("still failing after 5 runs")

    results = await asyncio.gather(*(transmit(d) for d in docs))

    assert [type(r).__name__ for r in results] == ["Done"] * 6
    assert tdt.stats["transmissions"] == 6
    assert tdt.stats["acknowledged"] == 6
    assert tdt.stats["duplicates"] == 0
    assert tdt.stats["faults_503"] > 0


async def test_duplicate_number_of_another_act_is_refused_with_the_tdt_words(
    doc: Document, tdt: Tdt, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    assert isinstance(await doc.run(), Pending)
    (tmp_path / "other").mkdir()
    other = Document(tmp_path / "other", http, tdt.config)
    other.metadata["date"] = "2024-02-01"  # same number, another act
    with pytest.raises(PermanentError, match="même numéro interne existe déjà"):
        await other.run()
    assert tdt.stats["transmissions"] == 1


# -- cancel --------------------------------------------------------------------------------


async def test_cancellation_is_acknowledged_by_an_arannulation(doc: Document, tdt: Tdt) -> None:
    await doc.run()
    done = await doc.until_done()
    assert isinstance(done, Done)
    doc.metadata.update(done.metadata)
    doc.saved.clear()

    assert isinstance(await doc.run("cancel"), Pending)
    assert doc.refs["tdt_cancel"] == "2"
    cancelled = await doc.until_done("cancel")

    assert isinstance(cancelled, Done)
    annulation = cancelled.metadata["annulation"]
    assert annulation["id_acte"] == ID_ACTE
    assert annulation["transaction"] == "2"
    [(role, name, xml)] = doc.saved
    assert (role, name) == ("arannulation", f"{ID_ACTE}-6-2.xml")
    message = read_message(xml)
    assert isinstance(message, ARAnnulation)
    assert message.date_reception.isoformat() == annulation["date_reception"]
    assert tdt.app[TDT].transactions[1].status == 0  # the act itself: annulé
    assert tdt.stats["cancellations"] == 1

    # Asked again after a lost answer: the pending/acknowledged one is adopted.
    del doc.refs["tdt_cancel"]
    assert isinstance(await doc.run("cancel"), Pending)
    assert doc.refs["tdt_cancel"] == "2"
    assert tdt.stats["cancellations"] == 1


# -- classification and préfecture documents -----------------------------------------------


@tdt_options(classification_date=date(2023, 11, 20))
async def test_classification_fetch_is_parsed(doc: Document) -> None:
    doc.metadata = {"of": "actes"}
    outcome = await doc.run("fetch")

    assert isinstance(outcome, Done) and outcome.note == "classification of 2023-11-20"
    assert outcome.metadata["version_date"] == "2023-11-20"
    [(role, name, xml)] = doc.saved  # the TdT's answer, kept as it came
    assert (role, name) == ("classification", "classification-2023-11-20.xml")
    assert b"RetourClassification" in xml
    classification = Classification.model_validate(outcome.metadata["classification"])
    assert classification.has_code("1.1")
    assert classification.label("7.1") == "Décisions budgétaires"
    assert classification.natures[1].abbr == "DE"


async def test_courriers_are_listed_fetched_and_marked_read(
    doc: Document, tdt: Tdt, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await doc.run()
    assert isinstance(await doc.until_done(), Done)
    for kind in ("2-1", "4-1"):
        async with http.post(
            f"{tdt.url}/_control/courrier", json={"id_acte": ID_ACTE, "type": kind}, ssl=tdt.ssl
        ) as resp:
            assert resp.status == 201
    client = TdtClient(http, tdt_settings(tdt.config, ENTITY))

    listed = await client.list_prefecture_documents()

    assert [(d.id, d.type, d.status, d.id_acte, d.related_transaction) for d in listed] == [
        ("2", "2", 21, ID_ACTE, "1"),
        ("3", "4", 7, ID_ACTE, "1"),
    ]
    related = await client.list_related_documents("1")
    assert [(r.type, r.status, r.id) for r in related] == [("2", 21, "2"), ("4", 7, "3")]
    archive = tmp_path / "courrier.tar.gz"
    await client.get_prefecture_document("2", archive)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    contents = read_archive(archive, unpacked)
    [courrier] = [m.message for m in contents.messages]
    assert isinstance(courrier, CourrierSimple) and courrier.id_acte == ID_ACTE
    assert [f.name for f in contents.files] == [courrier.document.nom_fichier]
    await client.get_prefecture_document("3", tmp_path / "lettre.tar.gz")
    (tmp_path / "lettre").mkdir()
    letter = read_archive(tmp_path / "lettre.tar.gz", tmp_path / "lettre").messages
    assert isinstance(letter[0].message, LettreObservations)

    await client.mark_prefecture_document_read("2")
    assert [d.id for d in await client.list_prefecture_documents()] == ["3"]


# -- the simulator as a process -------------------------------------------------------------


async def test_simulator_starts_as_a_process_with_its_certificates(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.tdt",
        "--port",
        "0",
        "--cert-dir",
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = {}
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
            if line.startswith("LISTENING "):
                url = line.removeprefix("LISTENING ")
                break
            key, _, value = line.partition("=")
            lines[key] = value
        assert url.startswith("https://127.0.0.1:")
        assert lines == {
            "TDT_CA": str(tmp_path / "ca.pem"),
            "TDT_CLIENT_CERT": str(tmp_path / "client.pem"),
            "TDT_CLIENT_KEY": str(tmp_path / "client.key"),
        }
        context = ssl.create_default_context(cafile=lines["TDT_CA"])
        context.load_cert_chain(lines["TDT_CLIENT_CERT"], lines["TDT_CLIENT_KEY"])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/_control/certs", ssl=context) as resp:
                assert (await resp.json())["client_cert"] == lines["TDT_CLIENT_CERT"]
            async with http.get(f"{url}/stats", ssl=context) as resp:
                stats = await resp.json()
        assert stats["transmissions"] == 0 and stats["duplicates"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
