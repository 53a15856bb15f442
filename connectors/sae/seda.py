"""SEDA 2.1 for the SAE: the ArchiveTransfer we send, the archive carrying its
files, and the Acknowledgement / ArchiveTransferReply the SAE answers.

The builder takes a generic :class:`ArchiveDescription` (ACTES, HELIOS and
Chorus documents all fit it) and never loads a file in memory: digests come
from the stored sha256 or are computed in chunks, the tar.gz is streamed.
Everything is deterministic for a given input and date, so a re-run builds the
same transfer under the same ``MessageIdentifier``.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Literal

from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, model_validator

from broker import xmlsafe

SEDA_21 = "fr:gouv:culture:archivesdefrance:seda:v2.1"
SEDA_22 = "fr:gouv:culture:archivesdefrance:seda:v2.2"
SEDA_10 = "fr:gouv:culture:archivesdefrance:seda:v1.0"
_VERSIONS = {SEDA_21: "2.1", SEDA_22: "2.2", SEDA_10: "1.0"}
SHA256_URI = "http://www.w3.org/2001/04/xmlenc#sha256"
MESSAGE_PREFIX = "demat-"
# An ATR echoes the whole description: generous, but never unbounded.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024

Level = Literal[
    "Fonds",
    "Subfonds",
    "Class",
    "Collection",
    "Series",
    "Subseries",
    "RecordGrp",
    "SubGrp",
    "File",
    "Item",
    "OtherLevel",
]

# SEDA reply codes, for a reply that gives no comment of its own.
REPLY_CODES = {
    "000": "OK",
    "001": "OK, see comments",
    "002": "OK, request sent to the control authorities",
    "101": "malformed message",
    "102": "system temporarily unavailable",
    "200": "unknown producer",
    "201": "unknown archive service",
    "202": "unknown transferring service",
    "203": "not conform to the profile",
    "204": "format not handled",
    "205": "format not as declared",
    "206": "invalid message signature",
    "207": "invalid digest(s)",
    "208": "archive unavailable",
    "209": "archive missing",
    "210": "archive unknown",
    "211": "attachment missing",
    "212": "derogation refused",
    "300": "invalid agreement",
    "301": "agreement quota exceeded",
    "302": "producer not in the agreement",
    "303": "transferring service not in the agreement",
    "304": "archive service not in the agreement",
    "305": "document signatures missing",
    "306": "volume exceeds the agreement",
    "307": "format not in the agreement",
    "308": "digests missing",
    "309": "message unsigned",
    "310": "invalid document signature",
    "311": "document signature not verified",
    "312": "dates outside the agreement",
}

# PRONOM ids we can name without a format library: by MIME type, and PDF by header.
_PRONOM_BY_MIME = {"application/xml": "fmt/101", "text/xml": "fmt/101", "text/plain": "x-fmt/111"}
_PDF_PRONOM = {
    b"1.0": "fmt/14",
    b"1.1": "fmt/15",
    b"1.2": "fmt/16",
    b"1.3": "fmt/17",
    b"1.4": "fmt/18",
    b"1.5": "fmt/19",
    b"1.6": "fmt/20",
    b"1.7": "fmt/276",
    b"2.0": "fmt/1129",
}


class SedaError(ValueError):
    """A transfer that cannot be built, or an SAE message that cannot be read."""


class ArchiveFile(BaseModel):
    """One file to archive, as stored by the platform."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str = Field(min_length=1)
    name: str = Field(min_length=1)
    path: Path
    # The stored digest (hex); computed from the file when absent.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(default=None, ge=0)
    mime: str = "application/octet-stream"
    title: str | None = None
    format_id: str | None = None  # PRONOM id when the caller knows it


class ArchiveDescription(BaseModel):
    """What is archived: one top unit for the document, one ``Item`` per file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    document_id: str = Field(min_length=1)
    title: str = Field(min_length=1)
    description: str | None = None
    level: Level = "RecordGrp"
    start_date: date | None = None
    end_date: date | None = None
    keywords: tuple[str, ...] = ()
    language: str = Field(default="fra", pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
    files: tuple[ArchiveFile, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _dates_in_order(self) -> ArchiveDescription:
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        return self


class Agencies(BaseModel):
    """Who archives, who transfers, whose records (identifiers known to the SAE)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    archival_agency: str = Field(min_length=1)
    transferring_agency: str = Field(min_length=1)
    originating_agency: str = Field(min_length=1)
    submission_agency: str | None = None  # default: the transferring agency
    archival_agreement: str | None = None
    archival_profile: str | None = None


@dataclass(frozen=True)
class PackedObject:
    """A file as the bordereau describes it: ``uri`` is its name inside the archive."""

    id: str
    uri: str
    filename: str
    path: Path
    sha256: str
    size: int
    mime: str
    format_id: str | None


@dataclass(frozen=True)
class Transfer:
    message_identifier: str
    bordereau: bytes
    objects: tuple[PackedObject, ...]


def message_identifier(document_id: str) -> str:
    """The transfer id of a document: the same on every run, never another document's."""
    return f"{MESSAGE_PREFIX}{document_id}"


# -- building -----------------------------------------------------------------------------


def _sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _format_id(file: ArchiveFile) -> str | None:
    if file.format_id:
        return file.format_id
    if file.mime == "application/pdf":
        with file.path.open("rb") as handle:
            match = re.match(rb"%PDF-(\d\.\d)", handle.read(16))
        return _PDF_PRONOM.get(match.group(1)) if match else None
    return _PRONOM_BY_MIME.get(file.mime)


def _archive_name(name: str, taken: set[str]) -> str:
    """A flat, unique name inside the archive (As@lae refuses duplicate names)."""
    base = re.sub(r"[\x00-\x1f/\\]", "_", name).strip() or "file"
    if base in (".", ".."):
        base = "file"
    candidate, rank = base, 1
    stem, dot, suffix = base.rpartition(".")
    while candidate in taken:
        rank += 1
        candidate = f"{stem}-{rank}.{suffix}" if dot and stem else f"{base}-{rank}"
    taken.add(candidate)
    return candidate


def pack_objects(files: Sequence[ArchiveFile]) -> tuple[PackedObject, ...]:
    """Digest, size, format and archive name of each file (reads only what it must)."""
    taken: set[str] = set()
    packed = []
    for rank, file in enumerate(files, start=1):
        packed.append(
            PackedObject(
                id=f"obj-{rank}",
                uri=_archive_name(file.name, taken),
                filename=file.name,
                path=file.path,
                sha256=file.sha256 or _sha256_of(file.path),
                size=file.size if file.size is not None else file.path.stat().st_size,
                mime=file.mime,
                format_id=_format_id(file),
            )
        )
    return tuple(packed)


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, f"{{{SEDA_21}}}{tag}")
    if text is not None:
        element.text = text
    return element


def _binary_object(package: etree._Element, obj: PackedObject) -> None:
    node = _sub(package, "BinaryDataObject")
    node.set("id", obj.id)
    _sub(node, "Uri", obj.uri)
    _sub(node, "MessageDigest", obj.sha256).set("algorithm", SHA256_URI)
    if obj.size > 0:  # SizeInBytesType is a positiveInteger
        _sub(node, "Size", str(obj.size))
    formats = _sub(node, "FormatIdentification")
    _sub(formats, "MimeType", obj.mime)
    if obj.format_id:
        _sub(formats, "FormatId", obj.format_id)
    _sub(_sub(node, "FileInfo"), "Filename", obj.filename)


def _top_unit(parent: etree._Element, desc: ArchiveDescription) -> etree._Element:
    unit = _sub(parent, "ArchiveUnit")
    unit.set("id", "unit-0")
    content = _sub(unit, "Content")
    _sub(content, "DescriptionLevel", desc.level)
    _sub(content, "Title", desc.title)
    _sub(content, "OriginatingSystemId", desc.document_id)
    if desc.description:
        _sub(content, "Description", desc.description)
    _sub(content, "Language", desc.language)
    _sub(content, "DescriptionLanguage", desc.language)
    for keyword in desc.keywords:
        if keyword.strip():
            _sub(_sub(content, "Keyword"), "KeywordContent", keyword)
    if desc.start_date:
        _sub(content, "StartDate", desc.start_date.isoformat())
    if desc.end_date:
        _sub(content, "EndDate", desc.end_date.isoformat())
    return unit


def _item_unit(parent: etree._Element, rank: int, file: ArchiveFile, obj: PackedObject) -> None:
    unit = _sub(parent, "ArchiveUnit")
    unit.set("id", f"unit-{rank}")
    content = _sub(unit, "Content")
    _sub(content, "DescriptionLevel", "Item")
    _sub(content, "Title", file.title or file.name)
    _sub(content, "DocumentType", file.role)
    _sub(_sub(unit, "DataObjectReference"), "DataObjectReferenceId", obj.id)


def build_bordereau(
    desc: ArchiveDescription,
    agencies: Agencies,
    objects: Sequence[PackedObject],
    when: datetime,
    identifier: str | None = None,
) -> bytes:
    """The ArchiveTransfer XML (SEDA 2.1) for already packed objects.

    ``identifier`` defaults to :func:`message_identifier` of the document.
    """
    if when.tzinfo is None:
        raise SedaError("the transfer date needs a time zone")
    root = etree.Element(f"{{{SEDA_21}}}ArchiveTransfer", nsmap={None: SEDA_21})  # type: ignore[dict-item]
    _sub(root, "Date", when.isoformat(timespec="seconds"))
    _sub(root, "MessageIdentifier", identifier or message_identifier(desc.document_id))
    if agencies.archival_agreement:
        _sub(root, "ArchivalAgreement", agencies.archival_agreement)
    code_lists = _sub(root, "CodeListVersions")
    _sub(code_lists, "MessageDigestAlgorithmCodeListVersion", "DigestAlgorithmCodeListVersion0")
    _sub(code_lists, "MimeTypeCodeListVersion", "MimeTypeCodeListVersion0")
    _sub(code_lists, "FileFormatCodeListVersion", "FileFormatCodeListVersion0")
    package = _sub(root, "DataObjectPackage")
    for obj in objects:
        _binary_object(package, obj)
    top = _top_unit(_sub(package, "DescriptiveMetadata"), desc)
    for rank, (file, obj) in enumerate(zip(desc.files, objects, strict=True), start=1):
        _item_unit(top, rank, file, obj)
    management = _sub(package, "ManagementMetadata")
    if agencies.archival_profile:
        _sub(management, "ArchivalProfile", agencies.archival_profile)
    _sub(management, "OriginatingAgencyIdentifier", agencies.originating_agency)
    _sub(
        management,
        "SubmissionAgencyIdentifier",
        agencies.submission_agency or agencies.transferring_agency,
    )
    _sub(_sub(root, "ArchivalAgency"), "Identifier", agencies.archival_agency)
    _sub(_sub(root, "TransferringAgency"), "Identifier", agencies.transferring_agency)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def build_transfer(
    desc: ArchiveDescription, agencies: Agencies, when: datetime, identifier: str | None = None
) -> Transfer:
    """Pack the files and write the bordereau (blocking: run it in a thread)."""
    identifier = identifier or message_identifier(desc.document_id)
    objects = pack_objects(desc.files)
    try:
        bordereau = build_bordereau(desc, agencies, objects, when, identifier)
    except ValueError as exc:  # e.g. a control character lxml will not write
        raise SedaError(f"cannot write the bordereau: {exc}") from exc
    return Transfer(identifier, bordereau, objects)


# -- the archive ----------------------------------------------------------------------------


class _Hashing:
    """Reads a file for tarfile while hashing what it hands over."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def write_archive(objects: Iterable[PackedObject], target: Path) -> int:
    """Stream the files into ``target`` (tar.gz, names as the bordereau's ``Uri``).

    Deterministic bytes (no dates, owners or modes from the disk), so a re-run
    sends the same archive. A stored file that no longer matches the digest or
    size it was recorded with raises :class:`SedaError`. Returns the archive size.
    """
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for obj in objects:
            info = tarfile.TarInfo(obj.uri)
            info.size, info.mode, info.mtime = obj.size, 0o644, 0
            with obj.path.open("rb") as handle:
                reader = _Hashing(handle)
                try:
                    tar.addfile(info, reader)
                except OSError as exc:  # shorter than recorded: tarfile stops short
                    raise _mismatch(obj) from exc
                if handle.read(1) or reader.digest.hexdigest() != obj.sha256:
                    raise _mismatch(obj)
    return target.stat().st_size


def _mismatch(obj: PackedObject) -> SedaError:
    return SedaError(
        f"stored file {obj.filename!r} does not match its recorded "
        f"sha256/size ({obj.sha256}, {obj.size} bytes)"
    )


# -- reading the SAE's answers --------------------------------------------------------------


@dataclass(frozen=True)
class Acknowledgement:
    version: str
    message_identifier: str | None
    received_identifier: str | None
    sender: str | None
    receiver: str | None
    comments: tuple[str, ...]


@dataclass(frozen=True)
class TransferReply:
    version: str
    message_identifier: str | None
    # The transfer this replies to (MessageRequestIdentifier, 1.0: TransferIdentifier).
    transfer_id: str | None
    reply_code: str | None
    # The archive's id in the SAE, when it accepted the transfer.
    archive_id: str | None
    comments: tuple[str, ...]
    grant_date: str | None

    @property
    def accepted(self) -> bool:
        """Accepted iff the code is ``000`` (any other code is a refusal, as Pastell reads it)."""
        return self.reply_code == "000"

    @property
    def meaning(self) -> str:
        """What the reply code means in the SEDA code list."""
        if self.reply_code is None:
            return "no reply code given"
        return REPLY_CODES.get(self.reply_code, "a code outside the SEDA list")

    @property
    def reason(self) -> str:
        """The code's meaning, then the SAE's own comment when it gave one."""
        said = " ".join(self.comments)
        return f"{self.meaning}: {said}" if said else self.meaning


class _Reader:
    """Namespace-bound lookups on one SAE message."""

    def __init__(self, data: bytes, expected: str) -> None:
        try:
            self.root = xmlsafe.parse_bytes(data, max_bytes=MAX_MESSAGE_BYTES)
        except xmlsafe.XmlError as exc:
            raise SedaError(f"{expected}: unreadable XML: {exc}") from exc
        qname = etree.QName(self.root)
        if qname.localname != expected or qname.namespace not in _VERSIONS:
            raise SedaError(
                f"expected a SEDA {expected}, got {{{qname.namespace or ''}}}{qname.localname}"
            )
        self.ns = qname.namespace
        self.version = _VERSIONS[qname.namespace]

    def text(self, path: str, start: etree._Element | None = None) -> str | None:
        steps = "/".join(f"{{{self.ns}}}{step}" for step in path.split("/"))
        found = (self.root if start is None else start).find(steps)
        if found is None or found.text is None:
            return None
        return " ".join(found.text.split()) or None

    def comments(self) -> tuple[str, ...]:
        comments = self.root.iterfind(f"{{{self.ns}}}Comment")
        texts = (" ".join((c.text or "").split()) for c in comments)
        return tuple(t for t in texts if t)


def read_acknowledgement(data: bytes) -> Acknowledgement:
    doc = _Reader(data, "Acknowledgement")
    old = doc.version == "1.0"
    party = "Identification" if old else "Identifier"
    return Acknowledgement(
        version=doc.version,
        message_identifier=doc.text("AcknowledgementIdentifier" if old else "MessageIdentifier"),
        received_identifier=doc.text("MessageReceivedIdentifier"),
        sender=doc.text(f"Sender/{party}"),
        receiver=doc.text(f"Receiver/{party}"),
        comments=doc.comments(),
    )


def _archive_id_2x(doc: _Reader) -> str | None:
    # The top unit's id; the first one anywhere for a reply that nests differently.
    top = doc.root.find(
        f"{{{doc.ns}}}DataObjectPackage/{{{doc.ns}}}DescriptiveMetadata/{{{doc.ns}}}ArchiveUnit"
    )
    if top is not None and (own := doc.text("Content/ArchivalAgencyArchiveUnitIdentifier", top)):
        return own
    for element in doc.root.iter(f"{{{doc.ns}}}ArchivalAgencyArchiveUnitIdentifier"):
        text = " ".join((element.text or "").split())
        if text:
            return text
    return None


def read_transfer_reply(data: bytes) -> TransferReply:
    doc = _Reader(data, "ArchiveTransferReply")
    if doc.version == "1.0":
        return TransferReply(
            version=doc.version,
            message_identifier=doc.text("TransferReplyIdentifier"),
            transfer_id=doc.text("TransferIdentifier"),
            reply_code=doc.text("ReplyCode"),
            archive_id=doc.text("Archive/ArchivalAgencyArchiveIdentifier"),
            comments=doc.comments(),
            grant_date=doc.text("GrantDate"),
        )
    return TransferReply(
        version=doc.version,
        message_identifier=doc.text("MessageIdentifier"),
        transfer_id=doc.text("MessageRequestIdentifier"),
        reply_code=doc.text("ReplyCode"),
        archive_id=_archive_id_2x(doc),
        comments=doc.comments(),
        grant_date=doc.text("GrantDate"),
    )
