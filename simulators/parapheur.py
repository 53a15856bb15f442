"""An i-Parapheur over real HTTP: the v4 SOAP web services, PAdES and XAdES signing, a page to
sign by hand.

``POST /ws-iparapheur-no-mtom`` (and ``/ws-iparapheur``, also without MTOM)
answers GetListeTypes, GetListeSousTypes, CreerDossier, GetHistoDossier,
GetDossier, ArchiverDossier, EffacerDossierRejete and echo like the product:
SOAP faults for unknown dossiers or malformed requests, ``MessageRetour`` KO
for refusals (unknown type or sous-type, DossierID already used, not a PDF...).

Dossiers are kept in memory. Signing applies a real PAdES signature with
pyHanko, by a signer certificate from a test CA made at start (``GET /ca.pem``;
paths at ``GET /_control/pki``). A type whose format is ``PES_V2`` (protocol HELIOS,
``--type PES:PES_V2=Bordereau``) takes a PES: ``XPathPourSignatureXML`` says what is
signed (``//Bordereau``: each bordereau, every one needs an Id; ``.``: the whole flow,
its root needs an Id), each signature XAdES enveloped (``simulators.xades``), and the
signed PES comes back in ``FichierPES``. With ``--auto-sign-after S`` a dossier is
signed (or, drawn with ``--reject-ratio``, rejected) S seconds after it was
created, at the next look at it; without it a person signs at ``GET /``.

Run: ``python -m simulators.parapheur --port 0 [--auto-sign-after 0.5] [--reject-ratio 0.1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import html
import io
import random
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko_certvalidator.registry import SimpleCertificateStore

from broker.xmlsafe import XmlError, parse_bytes
from connectors.parapheur.soap import NS, SOAP_ENV, XMIME, XSI
from simulators.common import Stats, add_common_arguments, create_app, run_simulator, store_dir_of
from simulators.faults import FaultRule
from simulators.pki import Issued, KeyType, TestCA
from simulators.samples import simple_pdf
from simulators.xades import sign_pes

COUNTERS = (
    "created",
    "signed",
    "rejected",
    "archived",
    "deleted",
    "duplicates",
    "soap_faults",
    "ko",
)
# The signature format of each type (the product's "protocole"); unlisted types are PAdES.
PES_V2 = "PES_V2"
DEFAULT_FORMATS: dict[str, str] = {"PES": PES_V2}
XPATHS = frozenset({"//Bordereau", "."})
DEFAULT_TYPES: dict[str, tuple[str, ...]] = {
    "ACTES": ("Deliberation", "Arrete", "Contrat"),
    "PES": ("Bordereau",),
    "Courrier": ("Signature",),
    "FACTURES": ("Visa",),
}
DEFAULT_REJECT_ANNOTATION = "Montant erroné à l'article 2, merci de corriger."
DEFAULT_SIGNER = "Marie Martin"
MAX_REQUEST = 256 * 1024 * 1024
_CHUNK = 256 * 1024
_DOSSIER_ID = re.compile(r"\w[\w@.(){}\-_éèêàùçëïü]{0,600}")
PENDING_STATUSES = frozenset({"NonLu", "Lu", "EnCoursVisa", "Vise"})


def _q(local: str) -> str:
    return f"{{{NS}}}{local}"


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


# --- documents --------------------------------------------------------------------------


class Signer:
    """Signs PDFs (PAdES B-B) and PES (XAdES per bordereau) with a certificate issued by the
    simulator's CA."""

    def __init__(self, ca: TestCA, issued: Issued, name: str) -> None:
        der = serialization.Encoding.DER
        key_der = issued.key.private_bytes(
            der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.name, self._issued = name, issued
        self._signer = signers.SimpleSigner(
            signing_cert=asn1_x509.Certificate.load(issued.cert.public_bytes(der)),
            signing_key=asn1_keys.PrivateKeyInfo.load(key_der),
            cert_registry=SimpleCertificateStore.from_certs(
                [asn1_x509.Certificate.load(ca.cert.public_bytes(der))]
            ),
        )

    def sign(self, pdf: bytes, reason: str) -> bytes:
        """Blocking: hashes the whole PDF."""
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        meta = signers.PdfSignatureMetadata(
            field_name=f"Signature-{secrets.token_hex(4)}",  # never clashes with an earlier one
            md_algorithm="sha256",
            subfilter=fields.SigSeedSubFilter.PADES,
            reason=reason,
            location="i-Parapheur (simulateur)",
            name=self.name,
        )
        return bytes(signers.sign_pdf(writer, meta, signer=self._signer).getvalue())

    def sign_pes(self, pes: bytes, xpath: str) -> bytes:
        """Blocking: parses and signs the whole PES."""
        return sign_pes(pes, xpath, self._issued.key_pem, self._issued.cert_pem,
                        city="Simulateur")


def pes_problem(data: bytes, xpath: str | None) -> str | None:
    """Why the PES in ``data`` cannot be signed as ``xpath`` says, or None."""
    if xpath not in XPATHS:
        return (f"XPathPourSignatureXML {xpath!r} non pris en charge pour un type PES_V2 "
                "(attendu //Bordereau ou .)")
    try:
        root = parse_bytes(data, max_bytes=MAX_REQUEST, encodings=("ISO-8859-1", "UTF-8"))
    except XmlError as exc:
        return f"le document principal n'est pas un PES lisible ({exc})"
    if xpath == ".":
        return None if root.get("Id") else "la racine du PES n'a pas d'attribut Id à signer"
    bordereaux = list(root.iter("Bordereau"))
    if not bordereaux:
        return "le PES ne contient aucun Bordereau à signer"
    if any(not b.get("Id") for b in bordereaux):
        return "un Bordereau du PES n'a pas d'attribut Id : il ne peut pas être signé"
    return None


def pdf_problem(data: bytes, what: str = "le document principal") -> str | None:
    """Why ``data`` cannot be signed as a PDF, or None."""
    if not data.startswith(b"%PDF"):
        return f"{what} n'est pas un fichier PDF"
    try:
        PdfFileReader(io.BytesIO(data)).root  # noqa: B018  (parsing is the check)
    except Exception as exc:  # pyHanko raises several kinds for a broken PDF
        return f"{what} est un PDF illisible ({exc})"
    return None


# --- the dossier store ------------------------------------------------------------------


@dataclass
class Log:
    timestamp: str
    nom: str
    status: str
    annotation: str


@dataclass
class Annexe:
    nom: str
    content: bytes
    content_type: str
    mimetype: str
    encoding: str


@dataclass
class SimDossier:
    id: str
    type_technique: str
    sous_type: str
    document: bytes
    content_type: str
    nom_doc: str
    visibilite: str
    date_limite: str | None
    annotation_publique: str | None
    annotation_privee: str | None
    email: str | None
    annexes: list[Annexe]
    metadata: dict[str, str]
    created: float
    draw: str  # "sign" or "reject": what auto mode will do
    history: list[Log] = field(default_factory=list)
    signed: bytes | None = None
    bordereau: bytes | None = None
    # PES_V2 types: what is signed, and the summary PDF the signer reads.
    xpath: str | None = None
    visuel: bytes | None = None

    @property
    def status(self) -> str:
        return self.history[-1].status

    @property
    def pending(self) -> bool:
        return self.status in PENDING_STATUSES

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type_technique,
            "sous_type": self.sous_type,
            "status": self.status,
            "nom_doc": self.nom_doc,
            "annexes": [a.nom for a in self.annexes],
            "date_limite": self.date_limite,
            "history": [vars(log) for log in self.history],
        }


class SoapFaultError(Exception):
    def __init__(self, string: str, code: str = "Client") -> None:
        super().__init__(string)
        self.code, self.string = code, string


class Refused(Exception):
    """Answered as ``MessageRetour`` KO."""


@dataclass
class Settings:
    types: Mapping[str, tuple[str, ...]]
    formats: Mapping[str, str]
    auto_sign_after: float | None
    reject_ratio: float
    reject_annotation: str
    login: str | None
    password: str | None


class Parapheur:
    """The dossiers, what was called, and the actions a signer takes."""

    def __init__(
        self,
        settings: Settings,
        stats: Stats,
        signer: Signer,
        seed: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.stats, self.signer, self.clock = settings, stats, signer, clock
        self.seed = seed
        self.rng = random.Random(f"parapheur/{seed}")
        self.dossiers: dict[str, SimDossier] = {}
        # Every dossier created, by id: the names it came with (kept after deletion).
        self.ever_created: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, str | None]] = []
        self._lock = asyncio.Lock()

    async def forget(self) -> None:
        self.dossiers.clear()
        self.ever_created.clear()
        self.calls.clear()
        self.rng = random.Random(f"parapheur/{self.seed}")

    def find(self, dossier_id: str) -> SimDossier:
        dossier = self.dossiers.get(dossier_id)
        if dossier is None:
            raise SoapFaultError(f"Dossier {dossier_id} inconnu")
        return dossier

    # Signer actions (web page, auto mode).

    async def sign(self, dossier: SimDossier, annotation: str = "") -> None:
        async with self._lock:
            if not dossier.pending:
                return
            signed = dossier.document
            if dossier.xpath is not None:
                signed = await asyncio.to_thread(
                    self.signer.sign_pes, dossier.document, dossier.xpath)
            elif dossier.content_type == "application/pdf":
                signed = await asyncio.to_thread(
                    self.signer.sign, dossier.document, f"Signature du dossier {dossier.id}"
                )
            dossier.signed = signed
            stamp, name = now_iso(), self.signer.name
            dossier.history.append(Log(stamp, name, "Lu", "Dossier lu et prêt pour la signature"))
            dossier.history.append(Log(stamp, name, "Signe", annotation))
            dossier.history.append(
                Log(stamp, name, "Archive", "Circuit terminé, dossier archivable")
            )
            dossier.bordereau = self._bordereau(dossier, f"Signé par {self.signer.name}", stamp)
            self.stats.incr("signed")

    async def reject(self, dossier: SimDossier, annotation: str) -> None:
        async with self._lock:
            if not dossier.pending:
                return
            stamp, name = now_iso(), self.signer.name
            dossier.history.append(Log(stamp, name, "Lu", "Dossier lu et prêt pour la signature"))
            dossier.history.append(Log(stamp, name, "RejetSignataire", annotation))
            dossier.bordereau = self._bordereau(dossier, f"Rejeté par {self.signer.name}", stamp)
            self.stats.incr("rejected")

    def _bordereau(self, dossier: SimDossier, outcome: str, stamp: str) -> bytes:
        lines = [
            "Bordereau de signature",
            f"Dossier : {dossier.id}",
            f"Type : {dossier.type_technique} / {dossier.sous_type}",
            f"{outcome} le {stamp}",
        ]
        lines += [
            f"{log.timestamp} {log.status} {log.nom} {log.annotation}" for log in dossier.history
        ]
        return simple_pdf(lines)

    async def settle(self, dossier: SimDossier) -> None:
        """Auto mode: the signer acts once the delay since creation has passed."""
        delay = self.settings.auto_sign_after
        if delay is None or not dossier.pending or self.clock() - dossier.created < delay:
            return
        if dossier.draw == "reject":
            await self.reject(dossier, self.settings.reject_annotation)
        else:
            await self.sign(dossier)

    async def settle_all(self) -> None:
        for dossier in list(self.dossiers.values()):
            await self.settle(dossier)

    # SOAP operations: each takes the request element, returns the response's children.

    async def op_echo(self, el: etree._Element) -> list[etree._Element]:
        return [_text_el("echoResponse", f'[simulateur] m\'a dit: "{el.text or ""}"!')]

    async def op_GetListeTypes(self, _el: etree._Element) -> list[etree._Element]:
        return [_text_el("TypeTechnique", name) for name in self.settings.types]

    async def op_GetListeSousTypes(self, el: etree._Element) -> list[etree._Element]:
        subtypes = self.settings.types.get((el.text or "").strip(), ())
        return [_text_el("SousType", name) for name in subtypes]

    async def op_CreerDossier(self, el: etree._Element) -> list[etree._Element]:
        dossier_id = _required(el, "DossierID")
        if not _DOSSIER_ID.fullmatch(dossier_id):
            raise SoapFaultError(f"DossierID invalide : {dossier_id!r}")
        type_technique, sous_type = _required(el, "TypeTechnique"), _required(el, "SousType")
        if dossier_id in self.ever_created:
            self.stats.incr("duplicates")
        if dossier_id in self.dossiers:
            raise Refused(f"Le dossier {dossier_id} existe déjà")
        if type_technique not in self.settings.types:
            raise Refused(f"Type technique inconnu : {type_technique}")
        if sous_type not in self.settings.types[type_technique]:
            raise Refused(f"Sous-type inconnu pour le type {type_technique} : {sous_type}")
        doc_el = el.find(_q("DocumentPrincipal"))
        if doc_el is None:
            raise SoapFaultError("Element DocumentPrincipal manquant")
        document, content_type = _decode(doc_el), doc_el.get(f"{{{XMIME}}}contentType", "")
        xpath = visuel = None
        if self.settings.formats.get(type_technique) == PES_V2:
            xpath = _opt(el, "XPathPourSignatureXML")
            problem = await asyncio.to_thread(pes_problem, document, xpath)
            visuel_el = el.find(_q("VisuelPDF"))
            if visuel_el is not None and (visuel_el.text or "").strip():
                visuel = _decode(visuel_el)
                problem = problem or pdf_problem(visuel, "le VisuelPDF")
        elif content_type == "application/pdf":
            problem = await asyncio.to_thread(pdf_problem, document)
        else:
            problem = None
        if problem:
            raise Refused(problem[0].upper() + problem[1:])
        dossier = SimDossier(
            id=dossier_id,
            type_technique=type_technique,
            sous_type=sous_type,
            document=document,
            content_type=content_type,
            nom_doc=_opt(el, "NomDocPrincipal") or dossier_id,
            visibilite=_opt(el, "Visibilite") or "SERVICE",
            date_limite=_opt(el, "DateLimite"),
            annotation_publique=_opt(el, "AnnotationPublique"),
            annotation_privee=_opt(el, "AnnotationPrivee"),
            email=_opt(el, "EmailEmetteur"),
            annexes=[
                _annexe(a) for a in el.iterfind(f"{_q('DocumentsAnnexes')}/{_q('DocAnnexe')}")
            ],
            metadata={
                _opt(m, "nom") or "": _opt(m, "valeur") or ""
                for m in el.iterfind(f"{_q('MetaData')}/{_q('MetaDonnee')}")
            },
            created=self.clock(),
            draw="reject" if self.rng.random() < self.settings.reject_ratio else "sign",
            xpath=xpath,
            visuel=visuel,
        )
        # The log the product writes (as the v5 legacy bridge does): "nom" is who acted.
        stamp, desk = now_iso(), self.signer.name.split()[-1]
        dossier.history.append(Log(stamp, "Service Web", "NonLu", "Création de dossier"))
        dossier.history.append(
            Log(
                stamp, "Service Web", "NonLu", f"Dossier déposé sur le bureau {desk} pour signature"
            )
        )
        self.dossiers[dossier_id] = dossier
        self.ever_created[dossier_id] = {"nom_doc": dossier.nom_doc,
                                         "annexes": [a.nom for a in dossier.annexes]}
        self.stats.incr("created")
        return [_retour("OK", f"Dossier {dossier_id} soumis dans le circuit")]

    async def op_GetHistoDossier(self, el: etree._Element) -> list[etree._Element]:
        dossier = self.find((el.text or "").strip())
        await self.settle(dossier)
        logs = []
        for log in dossier.history:
            entry = etree.Element(_q("LogDossier"))
            for name, value in (
                ("timestamp", log.timestamp),
                ("nom", log.nom),
                ("status", log.status),
                ("annotation", log.annotation),
                ("accessible", "OK"),
            ):
                entry.append(_text_el(name, value))
            logs.append(entry)
        return [*logs, _retour("OK", "")]

    async def op_GetDossier(self, el: etree._Element) -> list[etree._Element]:
        dossier = self.find((el.text or "").strip())
        await self.settle(dossier)
        out = [
            _text_el("TypeTechnique", dossier.type_technique),
            _text_el("SousType", dossier.sous_type),
        ]
        if dossier.email:
            out.append(_text_el("EmailEmetteur", dossier.email))
        out.append(_text_el("DossierID", dossier.id))
        for name, value in (
            ("AnnotationPublique", dossier.annotation_publique),
            ("AnnotationPrivee", dossier.annotation_privee),
        ):
            if value is not None:
                out.append(_text_el(name, value))
        out.append(_text_el("Visibilite", dossier.visibilite))
        out.append(_nillable_el("DateLimite", dossier.date_limite))
        if dossier.xpath is not None:  # PES_V2: the signed PES comes back apart
            out.append(_doc_el("DocPrincipal", dossier.document, dossier.content_type))
            if dossier.signed is not None:
                out.append(_doc_el("FichierPES", dossier.signed, dossier.content_type))
        else:
            out.append(
                _doc_el("DocPrincipal", dossier.signed or dossier.document, dossier.content_type)
            )
        out.append(_text_el("NomDocPrincipal", dossier.nom_doc))
        annexes = list(dossier.annexes)
        if dossier.bordereau is not None:
            name = f"{dossier.id}_bordereau.pdf"
            annexes.append(
                Annexe(name, dossier.bordereau, "application/pdf", "application/pdf", "UTF-8")
            )
        if annexes:
            container = etree.Element(_q("DocumentsAnnexes"))
            for annexe in annexes:
                doc = etree.SubElement(container, _q("DocAnnexe"))
                doc.append(_text_el("nom", annexe.nom))
                doc.append(_doc_el("fichier", annexe.content, annexe.content_type))
                doc.append(_text_el("mimetype", annexe.mimetype))
                doc.append(_text_el("encoding", annexe.encoding))
            out.append(container)
        if dossier.metadata:
            metas = etree.Element(_q("MetaDonnees"))
            for name, value in dossier.metadata.items():
                meta = etree.SubElement(metas, _q("MetaDonnee"))
                meta.append(_text_el("nom", name))
                meta.append(_text_el("valeur", value))
            out.append(metas)
        out.append(_retour("OK", ""))
        return out

    async def op_ArchiverDossier(self, el: etree._Element) -> list[etree._Element]:
        dossier = self.find(_required(el, "DossierID"))
        await self.settle(dossier)
        action = _opt(el, "ArchivageAction") or "ARCHIVER"
        if dossier.status != "Archive":
            raise Refused(f"Le dossier {dossier.id} n'est pas terminé (statut {dossier.status})")
        del self.dossiers[dossier.id]
        self.stats.incr("archived")
        url = None if action == "EFFACER" else f"/archives/{quote(dossier.id)}"
        return [_nillable_el("URL", url), _retour("OK", f"Dossier {dossier.id} {action.lower()}")]

    async def op_EffacerDossierRejete(self, el: etree._Element) -> list[etree._Element]:
        dossier = self.find((el.text or "").strip())
        await self.settle(dossier)
        if not dossier.status.startswith("Rejet"):
            raise Refused(f"Le dossier {dossier.id} n'est pas rejeté (statut {dossier.status})")
        del self.dossiers[dossier.id]
        self.stats.incr("deleted")
        return [_retour("OK", f"Dossier {dossier.id} effacé")]


# --- XML helpers ------------------------------------------------------------------------


def _text_el(local: str, text: str) -> etree._Element:
    el = etree.Element(_q(local))
    el.text = text
    return el


def _nillable_el(local: str, text: str | None) -> etree._Element:
    if text is None:
        return etree.Element(_q(local), {f"{{{XSI}}}nil": "true"}, nsmap={"xsi": XSI})
    return _text_el(local, text)


def _doc_el(local: str, content: bytes, content_type: str) -> etree._Element:
    el = _text_el(local, base64.b64encode(content).decode("ascii"))
    el.set(f"{{{XMIME}}}contentType", content_type or "application/octet-stream")
    return el


def _retour(code: str, message: str) -> etree._Element:
    el = etree.Element(_q("MessageRetour"))
    el.append(_text_el("codeRetour", code))
    el.append(_text_el("message", message))
    el.append(_text_el("severite", "INFO" if code == "OK" else "ERROR"))
    return el


def _opt(el: etree._Element, local: str) -> str | None:
    child = el.find(_q(local))
    if child is None or child.get(f"{{{XSI}}}nil") in ("true", "1"):
        return None
    return (child.text or "").strip()


def _required(el: etree._Element, local: str) -> str:
    value = _opt(el, local)
    if not value:
        raise SoapFaultError(f"Element {local} manquant ou vide")
    return value


def _decode(el: etree._Element) -> bytes:
    try:
        return base64.b64decode("".join((el.text or "").split()), validate=True)
    except ValueError as exc:
        raise SoapFaultError(f"Contenu base64 invalide dans {etree.QName(el).localname}") from exc


def _annexe(el: etree._Element) -> Annexe:
    fichier = el.find(_q("fichier"))
    if fichier is None:
        raise SoapFaultError("DocAnnexe sans fichier")
    return Annexe(
        nom=_opt(el, "nom") or "annexe",
        content=_decode(fichier),
        content_type=fichier.get(f"{{{XMIME}}}contentType", "application/octet-stream"),
        mimetype=_opt(el, "mimetype") or "application/octet-stream",
        encoding=_opt(el, "encoding") or "UTF-8",
    )


def soap_envelope(payload: etree._Element) -> bytes:
    env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"S": SOAP_ENV})
    etree.SubElement(env, f"{{{SOAP_ENV}}}Header")
    etree.SubElement(env, f"{{{SOAP_ENV}}}Body").append(payload)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def soap_response(operation: str, children: list[etree._Element]) -> web.Response:
    if operation == "echo":
        payload = children[0]
    else:
        payload = etree.Element(_q(f"{operation}Response"), nsmap={None: NS, "xmime": XMIME})
        payload.extend(children)
    return web.Response(body=soap_envelope(payload), content_type="text/xml", charset="utf-8")


def soap_fault(string: str, code: str = "Client") -> web.Response:
    fault = etree.Element(f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"S:{code}"
    etree.SubElement(fault, "faultstring").text = string
    return web.Response(
        status=500, body=soap_envelope(fault), content_type="text/xml", charset="utf-8"
    )


# --- HTTP -------------------------------------------------------------------------------


PARAPHEUR = web.AppKey("parapheur", Parapheur)
PKI_FILES = web.AppKey("pki_files", dict)


async def _read_body(request: web.Request) -> bytes:
    # Read from the stream: the app-wide client_max_size (1 MiB) would refuse real PDFs.
    body = bytearray()
    while chunk := await request.content.read(_CHUNK):
        body += chunk
        if len(body) > MAX_REQUEST:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST, actual_size=len(body))
    return bytes(body)


def _authorized(request: web.Request, settings: Settings) -> bool:
    if not settings.login:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        login, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return False
    return login == settings.login and password == (settings.password or "")


async def soap_endpoint(request: web.Request) -> web.Response:
    parapheur = request.app[PARAPHEUR]
    if not _authorized(request, parapheur.settings):
        return web.Response(
            status=401,
            text="Authentification requise",
            headers={"WWW-Authenticate": 'Basic realm="i-Parapheur"'},
        )
    operation, dossier_id = "?", None
    try:
        try:
            root = parse_bytes(await _read_body(request), max_bytes=MAX_REQUEST)
        except XmlError as exc:
            raise SoapFaultError(f"Requête illisible : {exc}") from exc
        body = root.find(f"{{{SOAP_ENV}}}Body")
        payload = None if body is None else next(iter(body.iterchildren(tag=etree.Element)), None)
        if root.tag != f"{{{SOAP_ENV}}}Envelope" or payload is None:
            raise SoapFaultError("Enveloppe SOAP 1.1 attendue")
        qname = etree.QName(payload)
        operation = qname.localname.removesuffix("Request")
        handler = getattr(parapheur, f"op_{operation}", None)
        if qname.namespace != NS or handler is None:
            raise SoapFaultError(f"No endpoint mapping found for {qname.text}")
        dossier_id = _opt(payload, "DossierID") if len(payload) else (payload.text or "").strip()
        children = await handler(payload)
    except SoapFaultError as fault:
        parapheur.stats.incr("soap_faults")
        parapheur.calls.append({"operation": operation, "dossier": dossier_id, "result": "fault"})
        return soap_fault(fault.string, fault.code)
    except Refused as refusal:
        parapheur.stats.incr("ko")
        parapheur.calls.append({"operation": operation, "dossier": dossier_id, "result": "KO"})
        return soap_response(operation, [_retour("KO", str(refusal))])
    parapheur.calls.append({"operation": operation, "dossier": dossier_id, "result": "OK"})
    return soap_response(operation, children)


def _page(title: str, body: str) -> web.Response:
    text = (
        "<!doctype html><html lang=fr><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .6em;"
        "border-bottom:1px solid #ddd;text-align:left}</style>"
        f"<h1>{html.escape(title)}</h1>{body}</html>"
    )
    return web.Response(text=text, content_type="text/html")


async def index(request: web.Request) -> web.Response:
    parapheur = request.app[PARAPHEUR]
    await parapheur.settle_all()
    rows = "".join(
        f"<tr><td><a href='/dossiers/{quote(d.id)}'>{html.escape(d.id)}</a></td>"
        f"<td>{html.escape(d.type_technique)} / {html.escape(d.sous_type)}</td>"
        f"<td>{html.escape(d.status)}</td><td>{html.escape(d.date_limite or '')}</td></tr>"
        for d in parapheur.dossiers.values()
    )
    table = (
        "<table><tr><th>Dossier</th><th>Type</th><th>Statut</th><th>Date limite</th></tr>"
        f"{rows}</table>"
        if rows
        else "<p>Aucun dossier.</p>"
    )
    return _page("i-Parapheur (simulateur) : dossiers", table)


def _dossier_of(request: web.Request) -> SimDossier:
    dossier = request.app[PARAPHEUR].dossiers.get(request.match_info["id"])
    if dossier is None:
        raise web.HTTPNotFound(text=f"Dossier {request.match_info['id']} inconnu")
    return dossier


async def dossier_page(request: web.Request) -> web.Response:
    dossier = _dossier_of(request)
    await request.app[PARAPHEUR].settle(dossier)
    link = f"/dossiers/{quote(dossier.id)}"
    history = "".join(
        f"<tr><td>{html.escape(log.timestamp)}</td><td>{html.escape(log.status)}</td>"
        f"<td>{html.escape(log.nom)}</td><td>{html.escape(log.annotation)}</td></tr>"
        for log in dossier.history
    )
    parts = [
        f"<p>Type : {html.escape(dossier.type_technique)} / {html.escape(dossier.sous_type)}"
        f" — statut : <strong id=status>{html.escape(dossier.status)}</strong>"
        f" — date limite : {html.escape(dossier.date_limite or 'aucune')}</p>",
        f"<p><a href='{link}/document'>{html.escape(dossier.nom_doc)}</a>"
        + (" (signé)" if dossier.signed else "")
        + (f" — <a href='{link}/bordereau'>bordereau</a>" if dossier.bordereau else "")
        + (f" — <a href='{link}/visuel'>visuel</a>" if dossier.visuel else "")
        + "</p>",
        f"<table><tr><th>Date</th><th>Statut</th><th>Par</th><th>Annotation</th></tr>{history}</table>",
    ]
    if dossier.pending:
        parts.append(
            f"<form method=post action='{link}/sign'><p><label>Annotation "
            "<input name=annotation></label> <button>Signer</button></p></form>"
            f"<form method=post action='{link}/reject'><p><label>Motif du rejet "
            "<textarea name=annotation required></textarea></label> "
            "<button>Rejeter</button></p></form>"
        )
    return _page(f"Dossier {dossier.id}", "".join(parts))


async def _annotation(request: web.Request) -> str:
    form = await request.post()
    value = form.get("annotation", "")
    return value if isinstance(value, str) else ""


async def sign_form(request: web.Request) -> web.Response:
    dossier = _dossier_of(request)
    if not dossier.pending:
        raise web.HTTPConflict(text=f"Dossier {dossier.id} déjà traité ({dossier.status})")
    await request.app[PARAPHEUR].sign(dossier, (await _annotation(request)).strip())
    raise web.HTTPSeeOther(f"/dossiers/{quote(dossier.id)}")


async def reject_form(request: web.Request) -> web.Response:
    dossier = _dossier_of(request)
    if not dossier.pending:
        raise web.HTTPConflict(text=f"Dossier {dossier.id} déjà traité ({dossier.status})")
    annotation = await _annotation(request)
    if len(annotation.strip()) < 3:
        raise web.HTTPBadRequest(text="Un motif de rejet (3 caractères au moins) est requis")
    await request.app[PARAPHEUR].reject(dossier, annotation)
    raise web.HTTPSeeOther(f"/dossiers/{quote(dossier.id)}")


async def document(request: web.Request) -> web.Response:
    dossier = _dossier_of(request)
    return web.Response(body=dossier.signed or dossier.document, content_type=dossier.content_type)


async def visuel(request: web.Request) -> web.Response:
    dossier = _dossier_of(request)
    if dossier.visuel is None:
        raise web.HTTPNotFound(text="Pas de VisuelPDF pour ce dossier")
    return web.Response(body=dossier.visuel, content_type="application/pdf")


async def bordereau(request: web.Request) -> web.Response:
    dossier = _dossier_of(request)
    if dossier.bordereau is None:
        raise web.HTTPNotFound(text="Pas encore de bordereau")
    return web.Response(body=dossier.bordereau, content_type="application/pdf")


async def ca_pem(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[PKI_FILES]["ca"].read_bytes(), content_type="application/x-pem-file"
    )


async def pki_files(request: web.Request) -> web.Response:
    return web.json_response({k: str(v) for k, v in request.app[PKI_FILES].items()})


async def calls(request: web.Request) -> web.Response:
    return web.json_response({"calls": request.app[PARAPHEUR].calls})


async def listing(request: web.Request) -> web.Response:
    parapheur = request.app[PARAPHEUR]
    return web.json_response({"dossiers": [d.describe() for d in parapheur.dossiers.values()],
                              "created": parapheur.ever_created})


def build_app(
    *,
    types: Mapping[str, Iterable[str]] | None = None,
    formats: Mapping[str, str] | None = None,
    auto_sign_after: float | None = None,
    reject_ratio: float = 0.0,
    reject_annotation: str = DEFAULT_REJECT_ANNOTATION,
    signer_name: str = DEFAULT_SIGNER,
    login: str | None = None,
    password: str | None = None,
    state_dir: Path | None = None,
    key_type: KeyType = "ec",
    faults: list[FaultRule] | None = None,
    seed: int = 0,
) -> web.Application:
    """The parapheur app; without ``state_dir`` the CA files go to a temp dir removed at cleanup."""
    if not 0.0 <= reject_ratio <= 1.0:
        raise ValueError(f"reject_ratio must be within [0, 1], got {reject_ratio}")
    root, remove_state = store_dir_of(state_dir, "parapheur")
    ca = TestCA.create("Parapheur Simulateur Test CA", key_type=key_type)
    issued = ca.issue_signing(signer_name, email="signataire@parapheur.test")
    files = {"ca": ca.write(root, "ca"), "signer": root / "signer.pem"}
    files["signer"].write_bytes(issued.cert_pem)
    settings = Settings(
        types={k: tuple(v) for k, v in (types or DEFAULT_TYPES).items()},
        formats=dict(DEFAULT_FORMATS if formats is None else formats),
        auto_sign_after=auto_sign_after,
        reject_ratio=reject_ratio,
        reject_annotation=reject_annotation,
        login=login,
        password=password,
    )
    stats = Stats(COUNTERS)
    parapheur = Parapheur(settings, stats, Signer(ca, issued, signer_name), seed)
    app = create_app(stats=stats, faults=faults or (), seed=seed, on_reset=parapheur.forget)
    app[PARAPHEUR] = parapheur
    app[PKI_FILES] = files
    for path in ("/ws-iparapheur-no-mtom", "/ws-iparapheur"):
        app.router.add_post(path, soap_endpoint)
    app.router.add_get("/", index)
    app.router.add_get("/dossiers/{id}", dossier_page)
    app.router.add_get("/dossiers/{id}/document", document)
    app.router.add_get("/dossiers/{id}/bordereau", bordereau)
    app.router.add_get("/dossiers/{id}/visuel", visuel)
    app.router.add_post("/dossiers/{id}/sign", sign_form)
    app.router.add_post("/dossiers/{id}/reject", reject_form)
    app.router.add_get("/ca.pem", ca_pem)
    app.router.add_get("/_control/pki", pki_files)
    app.router.add_get("/_control/calls", calls)
    app.router.add_get("/_control/dossiers", listing)
    app.on_cleanup.append(remove_state)
    return app


def _type_argument(spec: str) -> tuple[str, str, tuple[str, ...]]:
    """``TYPE[:FORMAT]=SOUS_TYPE[,SOUS_TYPE...]``: FORMAT PADES (default) or PES_V2."""
    name, sep, subtypes = spec.partition("=")
    name, _, format_ = name.partition(":")
    format_ = format_.strip().upper() or "PADES"
    if not sep or not name.strip() or not subtypes.strip() or format_ not in ("PADES", PES_V2):
        raise argparse.ArgumentTypeError(
            f"expected TYPE[:PADES|PES_V2]=SOUS_TYPE[,SOUS_TYPE...], got {spec!r}")
    return name.strip(), format_, tuple(s.strip() for s in subtypes.split(",") if s.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.parapheur", description="i-Parapheur (v4 SOAP) simulator."
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--auto-sign-after",
        type=float,
        metavar="SECONDS",
        help="sign (or reject) each dossier this long after its creation "
        "(default: only by hand, at GET /)",
    )
    parser.add_argument(
        "--reject-ratio",
        type=float,
        default=0.0,
        help="share of dossiers auto mode rejects instead (seeded; default 0)",
    )
    parser.add_argument(
        "--reject-annotation",
        default=DEFAULT_REJECT_ANNOTATION,
        help="annotation of auto-mode rejections",
    )
    parser.add_argument(
        "--signer-name",
        default=DEFAULT_SIGNER,
        help=f"signer's name, in the log and the certificate (default {DEFAULT_SIGNER})",
    )
    defaults = " ".join(f"{k}{':' + DEFAULT_FORMATS[k] if k in DEFAULT_FORMATS else ''}"
                        f"={','.join(v)}" for k, v in DEFAULT_TYPES.items())
    parser.add_argument(
        "--type",
        dest="types",
        action="append",
        type=_type_argument,
        metavar="TYPE[:PES_V2]=SOUS_TYPE[,SOUS_TYPE...]",
        help=f"a type and its sous-types (repeatable; replaces {defaults})",
    )
    parser.add_argument("--login", help="require HTTP Basic auth on the web services")
    parser.add_argument("--password", help="password that goes with --login")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the CA and signer certificates are written (default: temp dir)",
    )
    parser.add_argument(
        "--key-type",
        choices=("ec", "rsa"),
        default="ec",
        help="key type of the test CA and signer (default ec)",
    )
    args = parser.parse_args(argv)
    app = build_app(
        types={name: subs for name, _f, subs in args.types} if args.types else None,
        formats={name: f for name, f, _s in args.types if f == PES_V2} if args.types else None,
        auto_sign_after=args.auto_sign_after,
        reject_ratio=args.reject_ratio,
        reject_annotation=args.reject_annotation,
        signer_name=args.signer_name,
        login=args.login,
        password=args.password,
        state_dir=args.state_dir,
        key_type=args.key_type,
        faults=args.faults,
        seed=args.seed,
    )
    sys.stdout.write(f"CA_PEM={app[PKI_FILES]['ca']}\n")
    run_simulator(app, args.host, args.port)


if __name__ == "__main__":
    main()
