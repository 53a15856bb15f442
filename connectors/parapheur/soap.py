"""SOAP messages of the i-Parapheur ``ws-iparapheur`` contract (WSDL "version 3.1").

Requests are built with lxml; the files of ``CreerDossier`` are not put in the
tree: the envelope is serialised around placeholders and the client streams
each file base64-encoded in their place, so a large PDF is never held in
memory. Answers are parsed through :mod:`broker.xmlsafe`; the large
``GetDossier`` answer is read from a file with ``iterparse`` and each document
is decoded straight to disk as soon as its element ends.

SOAP faults and ``MessageRetour`` codes other than ``OK`` become
:class:`ParapheurError` (a ``PermanentError``) carrying the parapheur's words.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import BinaryIO

from lxml import etree

from broker.outcomes import PermanentError
from broker.xmlsafe import XmlError, iter_elements, parse_bytes

NS = "http://www.adullact.org/spring-ws/iparapheur/1.0"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XMIME = "http://www.w3.org/2005/05/xmlmime"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NSMAP = {"soapenv": SOAP_ENV, "ns": NS, "xmime": XMIME, "xsi": XSI}

# SOAP 1.1 over HTTP; every operation of the binding declares soapAction="".
CONTENT_TYPE = "text/xml; charset=utf-8"
SOAP_ACTION = '""'

# Operations whose only subject is one DossierID: a "not found" answer means that dossier.
DOSSIER_OPERATIONS = frozenset(
    {"GetHistoDossier", "GetDossier", "ArchiverDossier", "EffacerDossierRejete"}
)
ARCHIVAGE_ACTIONS = ("ARCHIVER", "EFFACER")
VISIBILITES = ("PUBLIC", "SERVICE", "CONFIDENTIEL")

# What 4.x servers and the v5 bridge say about a missing or an existing dossier.
_UNKNOWN = re.compile(
    r"\binconnu\b|introuvable|n['’]existe pas|not found|does not exist|aucun dossier",
    re.IGNORECASE,
)
_EXISTS = re.compile(r"existe d[ée]j[àa]|already exists|d[ée]j[àa] utilis", re.IGNORECASE)

# Base64 is streamed in pieces of a multiple of 3 bytes so no padding appears mid-stream.
B64_READ = 3 * 256 * 1024
# Decoded text is taken in slices of a multiple of 4 characters.
_B64_SLICE = 4 * 256 * 1024

_FILE_ATTR = "{urn:x-demat:parapheur}file"  # marks a document decoded to disk
_TYPEDOC_TAGS = frozenset(
    f"{{{NS}}}{name}"
    for name in (
        "DocPrincipal",
        "VisuelPDF",
        "FichierPES",
        "SignatureDocPrincipal",
        "fichier",
        "signature",
    )
)


def q(local: str) -> str:
    """The qualified tag of an element of the contract."""
    return f"{{{NS}}}{local}"


# --- errors -------------------------------------------------------------------------------


class ParapheurError(PermanentError):
    """The parapheur refused the request (SOAP fault or ``MessageRetour`` KO)."""

    def __init__(self, message: str, *, operation: str, detail: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.detail = detail  # the parapheur's own words


class SoapFault(ParapheurError):
    def __init__(self, operation: str, code: str, string: str) -> None:
        super().__init__(
            f"parapheur {operation}: SOAP fault {code}: {string}",
            operation=operation,
            detail=string,
        )
        self.code = code


class RetourKO(ParapheurError):
    def __init__(self, operation: str, retour: MessageRetour) -> None:
        super().__init__(
            f"parapheur {operation}: {retour.code or retour.severite}: {retour.message}",
            operation=operation,
            detail=retour.message,
        )
        self.retour = retour


class DossierUnknown(ParapheurError):
    """The parapheur does not know this DossierID (never created, deleted or archived)."""


class DossierExists(ParapheurError):
    """``CreerDossier`` for a DossierID the parapheur already has."""


def _classified(operation: str, error: ParapheurError) -> ParapheurError:
    if operation in DOSSIER_OPERATIONS and _UNKNOWN.search(error.detail):
        return DossierUnknown(str(error), operation=operation, detail=error.detail)
    if operation == "CreerDossier" and _EXISTS.search(error.detail):
        return DossierExists(str(error), operation=operation, detail=error.detail)
    return error


def fault_error(operation: str, fault: etree._Element) -> ParapheurError:
    code = _text(fault.find("faultcode")) or "?"
    string = _text(fault.find("faultstring")) or "(no faultstring)"
    return _classified(operation, SoapFault(operation, code, string))


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageRetour:
    code: str
    message: str
    severite: str

    @property
    def ok(self) -> bool:
        # The schema allows an empty code; only an ERROR severity makes it a failure.
        return self.code == "OK" or (self.code == "" and self.severite.upper() != "ERROR")


@dataclass(frozen=True)
class LogDossier:
    timestamp: str
    nom: str
    status: str
    annotation: str
    accessible: str = ""


@dataclass(frozen=True)
class Attachment:
    """A local file to send, with its MIME type and the name the parapheur shows."""

    path: Path
    content_type: str
    name: str


@dataclass(frozen=True)
class NewDossier:
    """What ``CreerDossier`` sends (the WSDL's ``CreerDossierRequest``)."""

    dossier_id: str
    type_technique: str
    sous_type: str
    document: Attachment
    visibilite: str = "SERVICE"
    date_limite: date | None = None
    annexes: tuple[Attachment, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    email_emetteur: str | None = None
    annotation_publique: str | None = None
    annotation_privee: str | None = None
    visuel_pdf: Attachment | None = None
    # XML documents: what is signed (``//Bordereau``, ``.``); nil for the others.
    xpath: str | None = None


@dataclass(frozen=True)
class ReceivedFile:
    """A document of a ``GetDossier`` answer, decoded to ``path``."""

    path: Path
    content_type: str
    size: int


@dataclass(frozen=True)
class ReceivedAnnexe:
    nom: str
    file: ReceivedFile
    mimetype: str
    encoding: str
    signature: ReceivedFile | None = None


@dataclass(frozen=True)
class Dossier:
    """What ``GetDossier`` answered, documents on disk."""

    dossier_id: str
    type_technique: str
    sous_type: str
    visibilite: str
    date_limite: str | None
    annotation_publique: str | None
    annotation_privee: str | None
    nom_doc_principal: str | None
    doc_principal: ReceivedFile | None
    signature: ReceivedFile | None  # detached CAdES (PKCS7 types)
    fichier_pes: ReceivedFile | None
    visuel_pdf: ReceivedFile | None
    annexes: tuple[ReceivedAnnexe, ...]
    metadonnees: dict[str, str]
    retour: MessageRetour | None

    @property
    def bordereau(self) -> ReceivedAnnexe | None:
        """The signature report: the parapheur appends it as the last annexe."""
        return self.annexes[-1] if self.annexes else None


# --- building requests ----------------------------------------------------------------------


def _element(parent: etree._Element, local: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, q(local))
    if text is not None:
        child.text = text
    return child


def _nil(parent: etree._Element, local: str) -> etree._Element:
    return etree.SubElement(parent, q(local), {f"{{{XSI}}}nil": "true"})


def _optional_nillable(parent: etree._Element, local: str, text: str | None) -> None:
    if text is None:
        _nil(parent, local)
    else:
        _element(parent, local, text)


def envelope(payload: etree._Element) -> etree._Element:
    env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap=NSMAP)
    etree.SubElement(env, f"{{{SOAP_ENV}}}Header")
    etree.SubElement(env, f"{{{SOAP_ENV}}}Body").append(payload)
    return env


def serialize(env: etree._Element) -> bytes:
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def request_element(operation: str, text: str | None = None) -> etree._Element:
    el = etree.Element(q(f"{operation}Request"), nsmap=NSMAP)
    if text is not None:
        el.text = text
    return el


def simple_request(operation: str, text: str | None = None) -> bytes:
    """A request whose payload is one value (DossierID, TypeTechnique) or nothing."""
    return serialize(envelope(request_element(operation, text)))


def archiver_request(dossier_id: str, action: str = "EFFACER") -> bytes:
    if action not in ARCHIVAGE_ACTIONS:
        raise ValueError(f"ArchivageAction must be one of {ARCHIVAGE_ACTIONS}, got {action!r}")
    el = request_element("ArchiverDossier")
    _element(el, "DossierID", dossier_id)
    _element(el, "ArchivageAction", action)
    return serialize(envelope(el))


def b64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


@dataclass(frozen=True)
class StreamedBody:
    """A request body: literal bytes and files to insert base64-encoded, in order."""

    parts: tuple[bytes | Path, ...]

    def size(self) -> int:
        return sum(
            len(p) if isinstance(p, bytes) else b64_length(p.stat().st_size) for p in self.parts
        )

    def iter_blocking(self) -> Iterator[bytes]:
        """The body's bytes, files read in pieces (blocking reads)."""
        for part in self.parts:
            if isinstance(part, bytes):
                yield part
                continue
            with part.open("rb") as handle:
                while piece := handle.read(B64_READ):
                    yield base64.b64encode(piece)

    def materialize(self) -> bytes:
        """The whole body in memory (tests and small messages only)."""
        return b"".join(self.iter_blocking())


def _typedoc(parent: etree._Element, local: str, doc: Attachment, token: str) -> etree._Element:
    el = _element(parent, local, token)
    el.set(f"{{{XMIME}}}contentType", doc.content_type)
    return el


def creer_dossier_request(new: NewDossier) -> StreamedBody:
    """``CreerDossierRequest``, every element the WSDL requires present (nil when empty)."""
    if new.visibilite not in VISIBILITES:
        raise ValueError(f"Visibilite must be one of {VISIBILITES}, got {new.visibilite!r}")
    nonce = secrets.token_hex(12)
    files: dict[str, Path] = {}

    def token(doc: Attachment) -> str:
        key = f"@@{nonce}-{len(files)}@@"
        files[key] = doc.path
        return key

    el = request_element("CreerDossier")
    _element(el, "TypeTechnique", new.type_technique)
    _element(el, "SousType", new.sous_type)
    if new.email_emetteur:
        _element(el, "EmailEmetteur", new.email_emetteur)
    _element(el, "DossierID", new.dossier_id)
    _typedoc(el, "DocumentPrincipal", new.document, token(new.document))
    _element(el, "NomDocPrincipal", new.document.name)
    if new.visuel_pdf is None:
        # Nil, yet TypeDoc still requires its contentType attribute.
        _nil(el, "VisuelPDF").set(f"{{{XMIME}}}contentType", "application/pdf")
    else:
        _typedoc(el, "VisuelPDF", new.visuel_pdf, token(new.visuel_pdf))
    if new.annexes:
        annexes = _element(el, "DocumentsAnnexes")
        for annexe in new.annexes:
            doc = _element(annexes, "DocAnnexe")
            _element(doc, "nom", annexe.name)
            _typedoc(doc, "fichier", annexe, token(annexe))
            _element(doc, "mimetype", annexe.content_type)
            _element(doc, "encoding", "UTF-8")
    if new.metadata:
        metadata = _element(el, "MetaData")
        for name, value in new.metadata.items():
            meta = _element(metadata, "MetaDonnee")
            _element(meta, "nom", name)
            _element(meta, "valeur", value)
    if new.xpath is None:
        _nil(el, "XPathPourSignatureXML")
    else:
        _element(el, "XPathPourSignatureXML", new.xpath)
    _nil(el, "MetaDataTdtACTES")
    _optional_nillable(el, "AnnotationPublique", new.annotation_publique)
    _optional_nillable(el, "AnnotationPrivee", new.annotation_privee)
    _element(el, "Visibilite", new.visibilite)
    _optional_nillable(el, "DateLimite", new.date_limite.isoformat() if new.date_limite else None)
    return _split(serialize(envelope(el)), files)


def _split(xml: bytes, files: Mapping[str, Path]) -> StreamedBody:
    if not files:
        return StreamedBody((xml,))
    pattern = re.compile(b"|".join(re.escape(key.encode()) for key in files))
    parts: list[bytes | Path] = []
    start = 0
    for match in pattern.finditer(xml):
        parts.append(xml[start : match.start()])
        parts.append(files[match.group().decode()])
        start = match.end()
    parts.append(xml[start:])
    return StreamedBody(tuple(p for p in parts if p != b""))


# --- reading answers ----------------------------------------------------------------------


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    return el.text or ""


def _child_text(el: etree._Element, local: str) -> str | None:
    return _text(el.find(q(local)))


def _is_nil(el: etree._Element | None) -> bool:
    return el is not None and el.get(f"{{{XSI}}}nil") in ("true", "1")


def _body_child(root: etree._Element, operation: str) -> etree._Element:
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise ParapheurError(
            f"parapheur {operation}: the answer is not a SOAP 1.1 envelope ({root.tag})",
            operation=operation,
            detail=str(root.tag),
        )
    body = root.find(f"{{{SOAP_ENV}}}Body")
    payload = None if body is None else next(iter(body.iterchildren(tag=etree.Element)), None)
    if payload is None:
        raise ParapheurError(
            f"parapheur {operation}: the answer's SOAP Body is empty",
            operation=operation,
            detail="empty Body",
        )
    if payload.tag == f"{{{SOAP_ENV}}}Fault":
        raise fault_error(operation, payload)
    if payload.tag != q(f"{operation}Response"):
        raise ParapheurError(
            f"parapheur {operation}: expected {operation}Response, got {payload.tag}",
            operation=operation,
            detail=str(payload.tag),
        )
    return payload


def parse_response(data: bytes, operation: str) -> etree._Element:
    """The ``<operation>Response`` element, or the fault raised as a ParapheurError."""
    try:
        root = parse_bytes(data)
    except XmlError as exc:
        raise ParapheurError(
            f"parapheur {operation}: the answer is not XML: {exc}",
            operation=operation,
            detail=str(exc),
        ) from exc
    return _body_child(root, operation)


def fault_in(data: bytes, operation: str) -> ParapheurError | None:
    """The error a SOAP fault answer carries, or None when ``data`` is no SOAP fault."""
    try:
        root = parse_bytes(data)
    except XmlError:
        return None
    fault = root.find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    return None if fault is None else fault_error(operation, fault)


def retour_of(el: etree._Element) -> MessageRetour | None:
    retour = el.find(q("MessageRetour"))
    if retour is None:
        return None
    return MessageRetour(
        code=(_child_text(retour, "codeRetour") or "").strip(),
        message=_child_text(retour, "message") or "",
        severite=(_child_text(retour, "severite") or "").strip(),
    )


def check_retour(operation: str, el: etree._Element) -> MessageRetour | None:
    """Raise the parapheur's refusal when its ``MessageRetour`` says so."""
    retour = retour_of(el)
    if retour is not None and not retour.ok:
        raise _classified(operation, RetourKO(operation, retour))
    return retour


def values(el: etree._Element, local: str) -> list[str]:
    return [(child.text or "").strip() for child in el.findall(q(local))]


def parse_histo(el: etree._Element) -> list[LogDossier]:
    return [
        LogDossier(
            timestamp=_child_text(log, "timestamp") or "",
            nom=_child_text(log, "nom") or "",
            status=(_child_text(log, "status") or "").strip(),
            annotation=_child_text(log, "annotation") or "",
            accessible=_child_text(log, "accessible") or "",
        )
        for log in el.findall(q("LogDossier"))
    ]


def decode_base64_text(text: str, out: BinaryIO) -> int:
    """Decode ``text`` (line breaks allowed) into ``out`` slice by slice; bytes written."""
    written = 0
    carry = ""
    for start in range(0, len(text), _B64_SLICE):
        piece = carry + "".join(text[start : start + _B64_SLICE].split())
        usable = len(piece) - len(piece) % 4
        written += out.write(base64.b64decode(piece[:usable], validate=True))
        carry = piece[usable:]
    if carry:
        raise ValueError(f"base64 text ends with {len(carry)} stray character(s)")
    return written


def _received(el: etree._Element | None) -> ReceivedFile | None:
    if el is None or _is_nil(el) or el.get(_FILE_ATTR) is None:
        return None
    path = Path(el.get(_FILE_ATTR, ""))
    return ReceivedFile(path, el.get(f"{{{XMIME}}}contentType", ""), path.stat().st_size)


def _annexes(el: etree._Element) -> tuple[ReceivedAnnexe, ...]:
    found: list[ReceivedAnnexe] = []
    for doc in el.iterfind(f"{q('DocumentsAnnexes')}/{q('DocAnnexe')}"):
        file = _received(doc.find(q("fichier")))
        if file is None:
            continue
        found.append(
            ReceivedAnnexe(
                # Some servers quote annex names: Pastell trims the quotes too.
                nom=(_child_text(doc, "nom") or "").strip().strip('"'),
                file=file,
                mimetype=_child_text(doc, "mimetype") or file.content_type,
                encoding=_child_text(doc, "encoding") or "",
                signature=_received(doc.find(q("signature"))),
            )
        )
    return tuple(found)


def _metadonnees(el: etree._Element) -> dict[str, str]:
    return {
        (_child_text(meta, "nom") or ""): (_child_text(meta, "valeur") or "")
        for meta in el.iterfind(f"{q('MetaDonnees')}/{q('MetaDonnee')}")
    }


def _nillable_text(el: etree._Element, local: str) -> str | None:
    child = el.find(q(local))
    return None if child is None or _is_nil(child) else (child.text or "")


def dossier_from(el: etree._Element) -> Dossier:
    """A ``GetDossierResponse`` whose documents were decoded by :func:`read_get_dossier`."""
    return Dossier(
        dossier_id=(_child_text(el, "DossierID") or "").strip(),
        type_technique=(_child_text(el, "TypeTechnique") or "").strip(),
        sous_type=(_child_text(el, "SousType") or "").strip(),
        visibilite=(_child_text(el, "Visibilite") or "").strip(),
        date_limite=_nillable_text(el, "DateLimite"),
        annotation_publique=_nillable_text(el, "AnnotationPublique"),
        annotation_privee=_nillable_text(el, "AnnotationPrivee"),
        nom_doc_principal=_nillable_text(el, "NomDocPrincipal"),
        doc_principal=_received(el.find(q("DocPrincipal"))),
        signature=_received(el.find(q("SignatureDocPrincipal"))),
        fichier_pes=_received(el.find(q("FichierPES"))),
        visuel_pdf=_received(el.find(q("VisuelPDF"))),
        annexes=_annexes(el),
        metadonnees=_metadonnees(el),
        retour=retour_of(el),
    )


def read_get_dossier(source: Path, into: Path) -> Dossier:
    """Parse a ``GetDossier`` answer saved at ``source``; documents go to ``into``.

    Blocking. Each document's base64 is decoded to its own file when its element
    ends and then dropped from the tree, so memory holds one document's text at
    most, never the whole answer.
    """
    operation = "GetDossier"
    count = 0
    try:
        with source.open("rb") as handle:
            events = iter_elements(handle)
            for _event, el in events:
                if el.tag in _TYPEDOC_TAGS and not _is_nil(el):
                    count += 1
                    target = into / f"part-{count:03d}.bin"
                    with target.open("wb") as out:
                        decode_base64_text(el.text or "", out)
                    el.text = None
                    el.set(_FILE_ATTR, str(target))
    except XmlError as exc:
        raise ParapheurError(
            f"parapheur {operation}: the answer is not XML: {exc}",
            operation=operation,
            detail=str(exc),
        ) from exc
    except etree.XMLSyntaxError as exc:
        raise ParapheurError(
            f"parapheur {operation}: the answer is not XML: {exc.msg}",
            operation=operation,
            detail=str(exc.msg),
        ) from exc
    except ValueError as exc:  # binascii.Error included
        raise ParapheurError(
            f"parapheur {operation}: a document is not valid base64: {exc}",
            operation=operation,
            detail=str(exc),
        ) from exc
    payload = _body_child(events.root, operation)
    check_retour(operation, payload)
    return dossier_from(payload)


def sanitize_id(text: str, limit: int = 100) -> str:
    """A DossierID / annex name the WSDL's ``DossierID`` pattern accepts."""
    cleaned = re.sub(r"[^\w@.(){}\-]", "_", text)
    # The first character must be a letter or digit (the pattern's leading \w excludes "_").
    if not cleaned[:1].isalnum():
        cleaned = f"d{cleaned}"
    return cleaned[:limit]


def last_log_with(history: Sequence[LogDossier], statuses: frozenset[str]) -> LogDossier | None:
    """The latest log entry whose status is one of ``statuses``."""
    for log in reversed(history):
        if log.status in statuses:
            return log
    return None
