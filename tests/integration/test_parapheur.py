"""The parapheur connector against the i-Parapheur simulator, over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import shutil
import ssl
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from asn1crypto import pem
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from broker.flows.actes import ACTES
from broker.retry import InCallRetry, RetryPolicy
from connectors.base import (
    Done,
    FileView,
    NewFile,
    Outcome,
    Pending,
    PermanentError,
    Rejected,
    StepContext,
    TransientError,
)
from connectors.parapheur import ParapheurClient, ParapheurConnector
from connectors.parapheur.soap import Attachment, DossierUnknown, NewDossier, SoapFault
from simulators.common import FAULTS, serving, stats_of
from simulators.faults import FaultRule
from simulators.parapheur import PARAPHEUR, PKI_FILES, Parapheur, build_app, simple_pdf
from simulators.pki import TestCA

ROOT = Path(__file__).resolve().parents[2]
DOC = "01J9ZQ4T6W8X2Y3Z4A5B6C7D8E"
ENTITY = "213500018"
ACTE = simple_pdf(["Deliberation n 2024-042", "Objet : budget primitif"])


class Crash(Exception):
    """Stands for the worker dying at this point."""


@dataclass
class Step:
    """A hand-made StepContext whose refs and saved files persist across runs, like the store."""

    tmp: Path
    http: aiohttp.ClientSession
    files: list[FileView] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    # Called with the NewFile before it is stored: lets a test look at the peer then.
    on_save_file: Any = None
    crash_on_ref: str | None = None
    runs: int = 0
    # The ACTES signature step's options, unless a test sets others.
    options: Mapping[str, Any] = field(default_factory=lambda: ACTES.step("sign").options)
    flow: str = "actes"
    metadata: Mapping[str, Any] = field(
        default_factory=lambda: {"objet": "Budget primitif 2024"})

    def add_file(self, role: str, name: str, content: bytes, content_type: str) -> FileView:
        digest = hashlib.sha256(content).hexdigest()
        path = self.tmp / "blobs" / digest
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        view = FileView(f"f{len(self.files)}", role, name, content_type, len(content), digest, path)
        self.files.append(view)
        return view

    async def _save_ref(self, key: str, value: str) -> None:
        if key == self.crash_on_ref:
            raise Crash(key)
        self.events.append(f"ref {key}")
        self.refs[key] = value

    async def _save_file(self, new: NewFile) -> FileView:
        if self.on_save_file is not None:
            self.on_save_file(new)
        self.events.append(f"file {new.role}")
        content = new.path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        for view in self.files:
            if view.role == new.role and view.sha256 == digest:
                return view
        return self.add_file(new.role, new.name, content, new.content_type)

    def context(self, config: Mapping[str, Any], attempts: int = 3) -> StepContext:
        self.runs += 1
        workdir = self.tmp / f"work-{self.runs}"
        workdir.mkdir()
        policy = RetryPolicy(in_call_attempts=attempts, in_call_initial=0.01, in_call_max=0.05)
        return StepContext(
            document_id=DOC,
            flow=self.flow,
            entity=ENTITY,
            step="sign",
            run=1,
            kind="run" if self.runs == 1 else "poll",
            metadata=self.metadata,
            files=list(self.files),
            config=config,
            refs=dict(self.refs),
            http=self.http,
            workdir=workdir,
            options=self.options,
            retry=InCallRetry(policy),
            save_ref=self._save_ref,
            save_file=self._save_file,
        )

    def role(self, role: str) -> list[FileView]:
        return [f for f in self.files if f.role == role]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def step(tmp_path: Path, http: aiohttp.ClientSession) -> Step:
    made = Step(tmp_path, http)
    made.add_file("acte", "deliberation.pdf", ACTE, "application/pdf")
    made.add_file("annexe", "budget annexe.pdf", simple_pdf(["Annexe"]), "application/pdf")
    return made


class Sim:
    """The simulator as a test sees it, with a clock the test moves."""

    def __init__(self, app: web.Application, http: aiohttp.ClientSession) -> None:
        self.app, self.http, self.url, self.now = app, http, "", 1000.0
        self.parapheur.clock = lambda: self.now

    @property
    def parapheur(self) -> Parapheur:
        return self.app[PARAPHEUR]

    @property
    def stats(self) -> dict[str, int]:
        return stats_of(self.app)

    @property
    def ca_path(self) -> Path:
        path: Path = self.app[PKI_FILES]["ca"]
        return path

    def config(self, **extra: Any) -> dict[str, Any]:
        base = {
            "url": f"{self.url}/ws-iparapheur-no-mtom",
            "type": "ACTES",
            "sous_type": "Deliberation",
            "poll_interval": 30,
        }
        return {**base, **extra}

    def ops(self) -> list[str]:
        return [f"{c['operation']}:{c['result']}" for c in self.parapheur.calls]

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(f"{self.url}{path}") as resp:
            return resp.status, await resp.text()

    async def post_form(self, path: str, **form: str) -> int:
        async with self.http.post(f"{self.url}{path}", data=form, allow_redirects=False) as resp:
            return resp.status


@pytest.fixture
async def sim(http: aiohttp.ClientSession, request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    options: dict[str, Any] = {"auto_sign_after": 60.0, **getattr(request, "param", {})}
    served = Sim(build_app(**options), http)
    async with serving(served.app) as served.url:
        yield served


def simulator(**options: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("sim", [options], indirect=True, ids=["sim"])


async def run(
    step: Step,
    config: Mapping[str, Any],
    connector: ParapheurConnector | None = None,
    **options: Any,
) -> Outcome:
    return await (connector or ParapheurConnector()).run(step.context(config, **options))


async def test_signed_pdf_is_stored_before_the_dossier_is_deleted(step: Step, sim: Sim) -> None:
    config = sim.config()
    seen_on_parapheur: list[bool] = []
    step.on_save_file = lambda _new: seen_on_parapheur.append(bool(sim.parapheur.dossiers))

    created = await run(step, config)
    assert isinstance(created, Pending) and created.poll_after == 30
    dossier_id = f"{DOC}_deliberation"
    assert created.remote_ref == dossier_id
    assert step.refs["parapheur_dossier"] == dossier_id
    assert step.refs["parapheur_date_limite"] == (date.today() + timedelta(days=30)).isoformat()

    waiting = await run(step, config)
    assert (
        isinstance(waiting, Pending)
        and waiting.note == "NonLu: Dossier déposé sur le bureau Martin pour signature"
    )

    sim.now += 61  # the signer signs
    done = await run(step, config)

    assert isinstance(done, Done)
    signature = done.metadata["parapheur"]
    assert signature["dossier_id"] == dossier_id
    assert signature["signer"] == "Marie Martin" and signature["status"] == "Signe"
    assert signature["signed_file"] == "deliberation-signe.pdf"
    assert signature["bordereau"] == "deliberation-bordereau.pdf"
    assert [f.name for f in step.role("acte_signe")] == ["deliberation-signe.pdf"]
    assert [f.name for f in step.role("bordereau_signature")] == ["deliberation-bordereau.pdf"]
    assert seen_on_parapheur == [True, True]  # both stored while the dossier still existed
    assert sim.ops() == [
        "GetHistoDossier:fault",
        "CreerDossier:OK",
        "GetHistoDossier:OK",
        "GetHistoDossier:OK",
        "GetDossier:OK",
        "ArchiverDossier:OK",
    ]
    assert step.events[-3:] == [
        "file acte_signe",
        "file bordereau_signature",
        "ref parapheur_signature",
    ]
    stats = sim.stats
    assert (stats["created"], stats["signed"], stats["archived"]) == (1, 1, 1)
    assert stats["duplicates"] == 0 and sim.parapheur.dossiers == {}


async def test_creation_sends_the_document_annexes_and_deadline(step: Step, sim: Sim) -> None:
    await run(step, sim.config(deadline_days=10, visibilite="confidentiel"))
    [dossier] = sim.parapheur.dossiers.values()
    assert dossier.document == ACTE and dossier.content_type == "application/pdf"
    assert dossier.nom_doc == "deliberation.pdf"
    assert [(a.nom, a.content) for a in dossier.annexes] == [
        ("budget_annexe.pdf", step.role("annexe")[0].path.read_bytes())
    ]
    assert dossier.date_limite == (date.today() + timedelta(days=10)).isoformat()
    assert dossier.visibilite == "CONFIDENTIEL"
    assert dossier.annotation_publique == "Budget primitif 2024"


async def _validate(signed: bytes, ca_pem: bytes) -> Any:
    _, _, der = pem.unarmor(ca_pem)
    context = ValidationContext(trust_roots=[asn1_x509.Certificate.load(der)])
    [embedded] = PdfFileReader(io.BytesIO(signed)).embedded_signatures
    return await async_validate_pdf_signature(embedded, context)


async def test_signed_pdf_verifies_against_the_test_ca(step: Step, sim: Sim) -> None:
    config = sim.config()
    await run(step, config)
    sim.now += 61
    assert isinstance(await run(step, config), Done)
    signed = step.role("acte_signe")[0].path.read_bytes()
    status, ca_text = await sim.get("/ca.pem")
    assert status == 200 and ca_text.encode() == sim.ca_path.read_bytes()

    result = await _validate(signed, ca_text.encode())

    assert result.intact and result.valid and result.trusted
    assert result.signing_cert.subject.native["common_name"] == "Marie Martin"
    assert signed.startswith(ACTE)  # PAdES is an incremental update of the sent PDF
    bordereau = step.role("bordereau_signature")[0].path.read_bytes()
    assert bordereau.startswith(b"%PDF") and "Signé par Marie Martin".encode("cp1252") in bordereau
    # Another CA's root does not vouch for it: the check above can fail.
    stranger = await _validate(signed, TestCA.create("Other CA").cert_pem)
    assert stranger.intact and not stranger.trusted


ANNOTATION = "Il manque l'annexe financière (p. 3) : « à compléter »."


@simulator(reject_ratio=1.0, reject_annotation=ANNOTATION)
async def test_rejection_keeps_the_annotation_verbatim(step: Step, sim: Sim) -> None:
    config = sim.config()
    assert isinstance(await run(step, config), Pending)
    sim.now += 61

    rejected = await run(step, config)

    assert isinstance(rejected, Rejected)
    assert rejected.reason == ANNOTATION
    assert rejected.metadata["parapheur"]["status"] == "RejetSignataire"
    assert rejected.metadata["parapheur"]["by"] == "Marie Martin"
    assert sim.ops()[-3:] == ["GetHistoDossier:OK", "GetDossier:OK", "EffacerDossierRejete:OK"]
    assert sim.stats["deleted"] == 1 and sim.stats["rejected"] == 1
    assert sim.parapheur.dossiers == {}
    assert [f.name for f in step.role("bordereau_signature")] == ["deliberation-bordereau.pdf"]
    assert step.role("acte_signe") == []

    # Re-run after the deletion (the commit was lost): same answer, nothing sent.
    requests = sim.stats["requests"]
    again = await run(step, config)
    assert isinstance(again, Rejected) and again.reason == ANNOTATION
    assert sim.stats["requests"] == requests


async def test_rerun_after_a_crash_right_after_creation_adopts_the_dossier(
    step: Step, sim: Sim
) -> None:
    config = sim.config()
    step.crash_on_ref = "parapheur_dossier"
    with pytest.raises(Crash):
        await run(step, config)
    assert sim.stats["created"] == 1 and "parapheur_dossier" not in step.refs

    step.crash_on_ref = None
    again = await run(step, config)

    assert isinstance(again, Pending)
    assert step.refs["parapheur_dossier"] == f"{DOC}_deliberation"
    assert sim.stats["created"] == 1 and sim.stats["duplicates"] == 0
    assert "CreerDossier:OK" not in sim.ops()[2:]
    sim.now += 61
    assert isinstance(await run(step, config), Done)


async def test_rerun_after_archiving_is_done_without_the_parapheur(step: Step, sim: Sim) -> None:
    config = sim.config()
    await run(step, config)
    sim.now += 61
    first = await run(step, config)
    assert isinstance(first, Done)

    again = await run(step, config)  # the worker died before committing Done

    assert isinstance(again, Done)
    assert again.metadata == first.metadata
    assert sim.ops()[-1] == "GetHistoDossier:fault"
    assert sim.stats["created"] == 1 and sim.stats["duplicates"] == 0
    assert len(step.role("acte_signe")) == 1


async def test_lost_creation_answer_is_reconciled(step: Step, sim: Sim) -> None:
    # The first CreerDossier is processed but its answer is lost; the quick retry is told
    # "existe déjà" and follows the dossier instead of failing.
    sim.app[FAULTS].replace(
        [FaultRule(kind="reset", phase="after", count=1, path="/ws-iparapheur-no-mtom", after=1)]
    )
    outcome = await run(step, sim.config())
    assert isinstance(outcome, Pending)
    assert step.refs["parapheur_dossier"] == f"{DOC}_deliberation"
    assert sim.ops()[:4] == [
        "GetHistoDossier:fault",
        "CreerDossier:OK",
        "CreerDossier:KO",
        "GetHistoDossier:OK",
    ]
    assert sim.stats["created"] == 1 and sim.stats["duplicates"] == 1  # the retry, refused


async def test_dossier_deleted_by_hand_is_a_permanent_soap_fault(step: Step, sim: Sim) -> None:
    config = sim.config()
    await run(step, config)
    sim.parapheur.dossiers.clear()

    with pytest.raises(PermanentError) as caught:
        await run(step, config)

    message = str(caught.value)
    assert (
        "no longer on the parapheur" in message and f"Dossier {DOC}_deliberation inconnu" in message
    )
    assert sim.stats["created"] == 1


async def test_soap_fault_and_ko_are_permanent_with_the_parapheurs_words(
    sim: Sim, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = ParapheurClient(http, sim.config()["url"])
    with pytest.raises(DossierUnknown) as unknown:
        await client.get_histo_dossier("nope")
    assert isinstance(unknown.value, PermanentError)
    assert (
        str(unknown.value) == "parapheur GetHistoDossier: SOAP fault S:Client: Dossier nope inconnu"
    )

    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(ACTE)
    new = NewDossier("d1", "ACTES", "Budget", Attachment(pdf, "application/pdf", "a.pdf"))
    with pytest.raises(
        PermanentError, match=r"CreerDossier: KO: Sous-type inconnu pour le type ACTES : Budget"
    ):
        await client.creer_dossier(new)
    assert sim.stats["ko"] == 1 and sim.stats["created"] == 0

    with pytest.raises(SoapFault, match="DossierID invalide"):
        await client.creer_dossier(NewDossier("bad id", "ACTES", "Arrete", new.document))
    assert await client.get_liste_types() == ["ACTES", "PES", "Courrier", "FACTURES"]
    assert await client.get_liste_sous_types("ACTES") == ["Deliberation", "Arrete", "Contrat"]


async def test_bad_sous_type_through_the_connector(step: Step, sim: Sim) -> None:
    with pytest.raises(PermanentError, match="Sous-type inconnu pour le type ACTES : Marche"):
        await run(step, sim.config(sous_type="Marche"))
    assert "parapheur_dossier" not in step.refs


@simulator(faults=[FaultRule(kind="503", retry_after=30)])
async def test_503_is_transient_with_its_retry_after(step: Step, sim: Sim) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="HTTP 503") as caught:
        await run(step, sim.config())
    assert caught.value.retry_after == 30 and time.monotonic() - started < 2
    assert sim.stats["created"] == 0


@simulator(faults=[FaultRule(kind="503", count=2, retry_after=0)])
async def test_short_503_is_retried_in_call(step: Step, sim: Sim) -> None:
    assert isinstance(await run(step, sim.config()), Pending)
    assert sim.stats["faults_503"] == 2 and sim.stats["created"] == 1


async def test_refused_connection_is_transient(step: Step, unused_port: int) -> None:
    config = {"url": f"http://127.0.0.1:{unused_port}/ws", "type": "ACTES", "sous_type": "X"}
    with pytest.raises(TransientError, match="ClientConnectorError"):
        await run(step, config, attempts=1)


@simulator(auto_sign_after=None)
async def test_signing_by_hand_on_the_web_page(step: Step, sim: Sim) -> None:
    config = sim.config()
    await run(step, config)
    dossier_id = f"{DOC}_deliberation"
    status, page = await sim.get("/")
    assert status == 200 and f"/dossiers/{dossier_id}" in page
    status, page = await sim.get(f"/dossiers/{dossier_id}")
    assert "action='/dossiers/" in page and "<button>Signer</button>" in page

    sim.now += 3600  # no auto mode: time alone changes nothing
    assert isinstance(await run(step, config), Pending)
    assert await sim.post_form(f"/dossiers/{dossier_id}/sign", annotation="Vu et signé") == 303

    done = await run(step, config)
    assert isinstance(done, Done) and done.metadata["parapheur"]["annotation"] == "Vu et signé"
    assert await sim.post_form(f"/dossiers/{dossier_id}/sign") == 404  # gone after archiving


@simulator(auto_sign_after=None)
async def test_rejecting_by_hand_on_the_web_page(step: Step, sim: Sim) -> None:
    config = sim.config()
    await run(step, config)
    dossier_id = f"{DOC}_deliberation"
    assert await sim.post_form(f"/dossiers/{dossier_id}/reject", annotation="") == 400
    assert await sim.post_form(f"/dossiers/{dossier_id}/reject", annotation=ANNOTATION) == 303
    status, page = await sim.get(f"/dossiers/{dossier_id}")
    assert status == 200 and "RejetSignataire" in page and "« à compléter »" in page
    assert "<button>Signer</button>" not in page
    assert await sim.post_form(f"/dossiers/{dossier_id}/sign") == 409

    rejected = await run(step, config)
    assert isinstance(rejected, Rejected) and rejected.reason == ANNOTATION


async def test_passed_date_limite_is_permanent(step: Step, sim: Sim) -> None:
    config = sim.config(deadline_days=2)
    await run(step, config)
    later = ParapheurConnector(today=lambda: date.today() + timedelta(days=2))
    assert isinstance(await run(step, config, later), Pending)  # the last day still counts

    too_late = ParapheurConnector(today=lambda: date.today() + timedelta(days=3))
    with pytest.raises(PermanentError, match=r"passed its DateLimite \d{4}-\d\d-\d\d"):
        await run(step, config, too_late)


@simulator(login="pastell", password="s3cret")
async def test_basic_auth(step: Step, sim: Sim) -> None:
    with pytest.raises(PermanentError, match="HTTP 401"):
        await run(step, sim.config())
    assert isinstance(await run(step, sim.config(login="pastell", password="s3cret")), Pending)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "ACTES", "sous_type": "D"}, "connectors.parapheur.url: required"),
        ({"url": "ftp://x", "type": "A", "sous_type": "D"}, "url: must be an http(s) URL"),
        ({"url": "http://x", "sous_type": "D"}, "connectors.parapheur.type: required"),
        ({"url": "http://x", "type": "A", "sous_type": "D", "deadline_days": 0},
         "connectors.parapheur.deadline_days: Input should be greater than 0"),
        ({"url": "http://x", "type": "A", "sous_type": "D", "visibilite": "x"},
         "connectors.parapheur.visibilite: Input should be 'PUBLIC', 'SERVICE' or"),
    ],
)
async def test_configuration_errors_say_what_to_fix(
    step: Step, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=re.escape(message)):
        await run(step, config)


async def test_the_step_options_say_which_file_roles_to_sign(step: Step, sim: Sim) -> None:
    # Another flow's signature step: the first role of its options that has a file.
    step.options = {"sign": ["acte", "document"], "signed_as": "courrier_signe"}
    step.files = []
    step.add_file("document", "courrier.pdf", ACTE, "application/pdf")
    step.add_file("document", "autre.pdf", simple_pdf(["autre"]), "application/pdf")
    await run(step, sim.config())
    assert list(sim.parapheur.dossiers) == [f"{DOC}_courrier"]

    step.files, step.refs = [], {}
    with pytest.raises(PermanentError, match="no file to sign \\(role 'acte' or 'document'\\)"):
        await run(step, sim.config())


async def test_large_document_is_streamed_with_its_length(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    lengths: list[str | None] = []

    async def record(request: web.Request, _response: web.StreamResponse) -> None:
        if request.path.startswith("/ws-"):
            lengths.append(request.headers.get("Content-Length"))

    app = build_app()
    app.on_response_prepare.append(record)
    big = tmp_path / "big.bin"
    content = bytes(range(256)) * (5 * 4096 + 7)  # ~5 MiB, not a multiple of the read size
    big.write_bytes(content)
    async with serving(app) as url:
        client = ParapheurClient(http, f"{url}/ws-iparapheur")
        new = NewDossier(
            "gros", "Courrier", "Signature", Attachment(big, "application/octet-stream", "big.bin")
        )
        assert await client.creer_dossier(new) == "gros"
    assert app[PARAPHEUR].dossiers["gros"].document == content
    # Announced up front (no chunked encoding): some SOAP servers insist on a length.
    assert lengths[0] is not None and int(lengths[0]) > len(content) * 4 // 3


async def test_simulator_starts_as_a_process(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.parapheur",
        "--port",
        "0",
        "--auto-sign-after",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ca_line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert ca_line == f"CA_PEM={tmp_path / 'state' / 'ca.pem'}"
        assert re.fullmatch(r"LISTENING http://127\.0\.0\.1:\d+", line), line
        url = line.split()[1]
        async with http.get(f"{url}/stats") as resp:
            stats = await resp.json()
        assert {k: stats[k] for k in ("created", "signed", "duplicates", "requests")} == {
            "created": 0,
            "signed": 0,
            "duplicates": 0,
            "requests": 0,
        }
        async with http.get(f"{url}/ca.pem") as resp:
            assert (await resp.read()) == (tmp_path / "state" / "ca.pem").read_bytes()
        client = ParapheurClient(http, f"{url}/ws-iparapheur-no-mtom")
        assert await client.get_liste_sous_types("PES") == ["Bordereau"]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0
    shutil.rmtree(tmp_path / "state", ignore_errors=True)


async def test_test_ca_serves_tls_with_client_certificates(tmp_path: Path) -> None:
    ca = TestCA.create()
    ca_file = ca.write(tmp_path)
    server = ca.issue_tls_server().write(tmp_path, "server")
    client = ca.issue_client("demat-broker").write(tmp_path, "client", p12_password=b"pw")
    assert client.p12 is not None and client.p12.stat().st_size > 0
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    server_ctx.load_cert_chain(server.cert, server.key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    async def hello(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        return web.Response(text=dict(x[0] for x in peer["subject"])["commonName"])

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        trusting = ssl.create_default_context(cafile=str(ca_file))
        trusting.load_cert_chain(client.cert, client.key)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/", ssl=trusting) as resp:
                assert await resp.text() == "demat-broker"
            anonymous = ssl.create_default_context(cafile=str(ca_file))
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"https://localhost:{port}/", ssl=anonymous) as resp:
                    await resp.read()
    finally:
        await runner.cleanup()
