"""The ACTES archive: a tar.gz of envelope, message(s) and files.

Building streams the files from disk (an act may weigh 150 MiB). Reading unpacks member
by member into a folder, refusing what could escape it or exhaust the disk: absolute
or ``..`` names, links, devices, too many members, too many bytes once expanded.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import shutil
import tarfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lxml import etree

from broker.flows.base import Problem, UploadedFile
from broker.sniff import HEAD_BYTES, FileKind, sniff_file
from broker.xmlsafe import XmlError, parse_bytes, parse_file
from connectors.actes import names, rules
from connectors.actes.messages import (
    ENVELOPES,
    IDCL,
    Acte,
    AnomalieEnveloppe,
    DonneesActe,
    EnveloppeCLMISILL,
    EnveloppeMISILLCL,
    FichierSigne,
    Referent,
    read_element,
    to_xml,
)
from connectors.actes.natures import ANNEX_KINDS, nature
from connectors.actes.problems import ActesError, MessageError
from connectors.actes.rules import ActeMetadata
from connectors.actes.schema import violations
from connectors.actes.xmlbind import ENCODINGS, ActesModel, local

MiB = 1024 * 1024
_COPY_CHUNK = MiB


class EnvelopeError(ActesError):
    """An archive that cannot be built or read; each problem names the member."""


@dataclass(frozen=True)
class Limits:
    """Caps applied while unpacking a received archive."""

    max_members: int = 64
    max_member_bytes: int = rules.MAX_TOTAL_BYTES
    # Act and annexes at most, plus room for the XML files and tar headers.
    max_total_bytes: int = rules.MAX_TOTAL_BYTES + 16 * MiB
    max_xml_bytes: int = 16 * MiB


# -- building ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sender:
    """Who sends through the TdT: the envelope's IDCL, return addresses and contact."""

    idcl: IDCL
    return_addresses: Sequence[str]
    referent: Referent | None = None
    itc: str = "SLO"  # TdT trigram, first part of the archive name
    app: str = "EACT"  # application code (TACT: test platform)


@dataclass(frozen=True)
class Attachment:
    """A file to send, with its typology code (prefix of its name) when it has one."""

    path: Path
    type_code: str | None = None


@dataclass(frozen=True)
class BuiltArchive:
    path: Path
    members: list[str]  # in archive order: envelope, message, act/documents, annexes
    envelope_name: str
    message_name: str
    message: ActesModel  # as sent, with the file names filled in
    id_acte: str | None


def write_archive(path: Path, members: Sequence[tuple[str, bytes | Path]]) -> list[str]:
    """A tar.gz holding ``members`` in order, files streamed from disk; written atomically."""
    partial = path.with_name(path.name + ".part")
    now = time.time()
    try:
        with tarfile.open(partial, "w:gz", format=tarfile.USTAR_FORMAT, compresslevel=6) as tar:
            for name, content in members:
                info = tarfile.TarInfo(name)
                info.mtime, info.mode = int(now), 0o644
                if isinstance(content, Path):
                    info.size = content.stat().st_size
                    with content.open("rb") as stream:
                        tar.addfile(info, stream)
                else:
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return [name for name, _ in members]


def build_archive(
    dest_dir: Path,
    *,
    sender: Sender,
    message: ActesModel,
    attachments: Sequence[Attachment] = (),
    serial: int,
    day: dt.date | None = None,
    encoding: str = "ISO-8859-1",
) -> BuiltArchive:
    """Name everything, fill the message's file names, check, then write the archive.

    Raises ``EnvelopeError`` with every problem (sender, files, schema) before writing.
    """
    day = day or dt.date.today()
    idcl = sender.idcl
    problems = rules.entity_problems(idcl.siren, idcl.departement, idcl.arrondissement, idcl.nature)
    problems += [
        Problem("return_addresses", p)
        for p in map(rules.email_problem, sender.return_addresses)
        if p
    ]
    if not sender.return_addresses:
        problems.append(Problem("return_addresses", "at least one return address is needed"))
    if problems:
        raise EnvelopeError(problems)
    act = _act_of(message, idcl)
    base = names.message_base(idcl.departement, idcl.siren, message.CODE or "", act)
    message_name = names.file_name(base, 0, "xml")
    file_names = [
        names.file_name(base, index, _extension(a.path), a.type_code)
        for index, a in enumerate(attachments, start=1)
    ]
    message = _with_files(message, file_names)
    envelope_name = names.envelope_name(sender.app, idcl.siren, day, serial)
    envelope = EnveloppeCLMISILL(
        emetteur=idcl,
        referent=sender.referent,
        adresses_retour=list(sender.return_addresses),
        formulaires=[FichierSigne(nom_fichier=message_name)],
    )
    xml = {envelope_name: to_xml(envelope, encoding), message_name: to_xml(message, encoding)}
    problems = [
        Problem(f"{name}:{line}", text)
        for name, data in xml.items()
        for line, text in violations(parse_bytes(data, encodings=ENCODINGS))
    ]
    if problems:
        raise EnvelopeError(problems)
    path = dest_dir / names.archive_name(sender.itc, envelope_name)
    members: list[tuple[str, bytes | Path]] = [*xml.items()]
    members += [(name, a.path) for name, a in zip(file_names, attachments, strict=True)]
    return BuiltArchive(
        path=path,
        members=write_archive(path, members),
        envelope_name=envelope_name,
        message_name=message_name,
        message=message,
        id_acte=str(act) if act else None,
    )


def acte_from(meta: ActeMetadata, classification_date: dt.date, document_papier: str = "N") -> Acte:
    """The 1-1 message for submitted metadata (file names are filled when building)."""
    code = tuple(int(part) for part in meta.classification.split("."))
    return Acte(
        date=meta.date,
        numero_interne=meta.numero,
        code_nature=meta.nature,
        **DonneesActe.matiere_fields(code),
        objet=meta.objet,
        classification_date=classification_date,
        document=FichierSigne(nom_fichier="-"),
        document_papier=document_papier,
    )


def metadata_from(acte: DonneesActe, *, typology: bool = True) -> ActeMetadata:
    """The submission metadata an act message carries (the inverse of ``acte_from``).

    Typology codes come from the file names; with ``typology=False``, or when a file
    name has none, they are left to the nature's defaults. Raises ``ValidationError``.
    """
    codes = [names.type_code(f.nom_fichier) for f in (acte.document, *acte.annexes)]
    typed = typology and all(codes)
    return ActeMetadata.model_validate(
        {
            "nature": acte.code_nature,
            "numero": acte.numero_interne,
            "date": acte.date,
            "objet": acte.objet,
            "classification": acte.classification,
            "type_piece": codes[0] if typed else None,
            "type_pj": codes[1:] if typed else None,
        }
    )


def uploaded_files(
    acte: DonneesActe, members: Sequence[Member]
) -> tuple[list[UploadedFile], list[str]]:
    """The act's document and annexes among unpacked members, as ``check_act`` sees them,
    and the names the message gives that are not among the members."""
    by_name = {m.name: m for m in members}
    found, missing = [], []
    for index, file in enumerate((acte.document, *acte.annexes)):
        member = by_name.get(file.nom_fichier)
        if member is None:
            missing.append(file.nom_fichier)
            continue
        with member.path.open("rb") as stream:
            head = stream.read(HEAD_BYTES)
        found.append(
            UploadedFile("acte" if index == 0 else "annexe", member.name, member.size, head)
        )
    return found, missing


def build_acte_archive(
    dest_dir: Path,
    *,
    sender: Sender,
    meta: ActeMetadata,
    classification_date: dt.date,
    act: Path,
    annexes: Sequence[Path] = (),
    serial: int,
    day: dt.date | None = None,
) -> BuiltArchive:
    """The archive of a 1-1 sending: act then annexes, each named with its typology code."""
    attachments = [Attachment(act, meta.piece_type)]
    attachments += [
        Attachment(path, code)
        for path, code in zip(annexes, meta.annex_types(len(annexes)), strict=True)
    ]
    return build_archive(
        dest_dir,
        sender=sender,
        message=acte_from(meta, classification_date),
        attachments=attachments,
        serial=serial,
        day=day,
    )


def _act_of(message: ActesModel, idcl: IDCL) -> names.IdActe | None:
    if isinstance(message, DonneesActe):
        abbr = nature(message.code_nature).abbr
        return names.IdActe(
            idcl.departement, idcl.siren, message.date, message.numero_interne, abbr
        )
    id_acte = getattr(message, "id_acte", None)
    return names.parse_id_acte(id_acte) if isinstance(id_acte, str) else None


def _extension(path: Path) -> str:
    kind = sniff_file(path)
    if kind not in ANNEX_KINDS:
        message = f"by its content, this file is {kind.described}: @CTES takes PDF, XML, JPEG, PNG"
        raise EnvelopeError([Problem(path.name, message)])
    return kind.extension


def _with_files(message: ActesModel, file_names: list[str]) -> ActesModel:
    """The message naming its files: act then annexes, or its document(s)."""
    files = [FichierSigne(nom_fichier=name) for name in file_names]
    fields = type(message).model_fields
    if isinstance(message, DonneesActe):
        if not files:
            raise EnvelopeError([Problem(message.ROOT, "an act needs its document")])
        update = {"document": files[0], "annexes": files[1:], "nombre_annexes": len(files) - 1}
    elif "document" in fields:
        if len(files) != 1:
            raise EnvelopeError(
                [
                    Problem(
                        message.ROOT,
                        f"{message.ROOT} carries exactly one document, got {len(files)}",
                    )
                ]
            )
        update = {"document": files[0]}
    elif "documents" in fields:
        update = {"documents": files}
    elif files:
        raise EnvelopeError([Problem(message.ROOT, f"{message.ROOT} carries no file")])
    else:
        update = {}
    return message.model_copy(update=update)


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A member unpacked from an archive."""

    name: str
    path: Path
    size: int
    kind: FileKind


@dataclass(frozen=True)
class ReceivedMessage:
    name: str
    path: Path
    message: ActesModel


@dataclass(frozen=True)
class ArchiveContents:
    envelope_name: str | None
    # None only for an archive holding a bare AnomalieEnveloppe.
    envelope: EnveloppeCLMISILL | EnveloppeMISILLCL | None
    messages: list[ReceivedMessage]
    files: list[Member]  # the members that are not the envelope or a message
    members: list[Member] = field(default_factory=list)  # all of them, in archive order


class _TooLarge(Exception):
    pass


class _Capped(io.RawIOBase):
    """Decompressed bytes, counted: a gzip bomb stops at the cap, whatever the headers say."""

    def __init__(self, source: gzip.GzipFile, cap: int) -> None:
        self.source, self.cap, self.seen = source, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.source.read(len(buffer))
        self.seen += len(data)
        if self.seen > self.cap:
            raise _TooLarge
        buffer[: len(data)] = data
        return len(data)


def extract_members(
    path: Path, dest_dir: Path, limits: Limits = Limits()
) -> tuple[list[Member], list[Problem]]:
    """Unpack ``path`` into ``dest_dir`` with every check; what was written and what is wrong.

    On problems the caller decides (``read_archive`` removes everything it wrote).
    """
    members: list[Member] = []
    problems: list[Problem] = []
    with path.open("rb") as raw:
        kind = sniff_file(path)
        if kind is not FileKind.GZIP:
            return [], [
                Problem(path.name, f"not a gzip-compressed archive (content: {kind.label})")
            ]
        # Tar headers and padding come on top of the members' bytes.
        stream = _Capped(gzip.GzipFile(fileobj=raw, mode="rb"), limits.max_total_bytes + 4 * MiB)
        try:
            _unpack(io.BufferedReader(stream), dest_dir, limits, members, problems)
        except _TooLarge:
            problems.append(
                Problem(
                    path.name,
                    f"the archive expands to more than "
                    f"{limits.max_total_bytes:,} bytes (gzip bomb?)",
                )
            )
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            problems.append(Problem(path.name, f"unreadable archive: {exc or type(exc).__name__}"))
        except BaseException:
            for member in members:  # e.g. a full disk: leave nothing behind
                member.path.unlink(missing_ok=True)
            raise
    return members, problems


def _unpack(
    stream: IO[bytes],
    dest_dir: Path,
    limits: Limits,
    members: list[Member],
    problems: list[Problem],
) -> None:
    total = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for count, info in enumerate(tar, start=1):
            if count > limits.max_members:
                problems.append(
                    Problem(info.name, f"the archive has more than {limits.max_members} members")
                )
                return
            problem = member_problem(info, limits)
            if problem is None and any(m.name == info.name for m in members):
                problem = "this name appears twice in the archive"
            if problem is not None:
                problems.append(Problem(info.name, problem))
                continue
            total += info.size
            if total > limits.max_total_bytes:
                problems.append(
                    Problem(
                        info.name,
                        f"the archive expands to more than {limits.max_total_bytes:,} bytes",
                    )
                )
                return
            source = tar.extractfile(info)
            assert source is not None  # a regular file
            target = dest_dir / info.name
            try:
                with source, target.open("xb") as out:
                    shutil.copyfileobj(source, out, _COPY_CHUNK)
            except BaseException:
                target.unlink(missing_ok=True)  # a half-written member is never left behind
                raise
            members.append(Member(info.name, target, info.size, sniff_file(target)))


def member_problem(info: tarfile.TarInfo, limits: Limits) -> str | None:
    """Why a member may not be unpacked, or None."""
    name = info.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path: members must be plain file names"
    if ".." in parts:
        return "path with '..': members may not leave the archive's folder"
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        return f"{kind} link to {info.linkname!r}: links are refused"
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or FIFO: only regular files are accepted"
    if info.isdir():
        return "directory: an ACTES archive holds files only"
    if not info.isreg() or info.issparse():
        return "unsupported member type: only regular files are accepted"
    if len(parts) > 1:
        return "file in a sub-folder: an ACTES archive is flat"
    if name in ("", ".") or len(name) > 255 or any(ord(c) < 32 for c in name):
        return "unusable file name"
    if info.size > limits.max_member_bytes:
        return f"{info.size:,} bytes, more than the {limits.max_member_bytes:,} allowed per file"
    return None


def read_archive(path: Path, dest_dir: Path, limits: Limits = Limits()) -> ArchiveContents:
    """Unpack and read a received (or built) archive; ``EnvelopeError`` with every problem.

    Whatever was unpacked is removed again when the archive is refused.
    """
    members, problems = extract_members(path, dest_dir, limits)
    try:
        if problems:
            raise EnvelopeError(problems)
        return interpret(members, limits)
    except EnvelopeError:
        for member in members:
            member.path.unlink(missing_ok=True)
        raise


def parse_member(member: Member, limits: Limits) -> etree._Element:
    """A member's XML, hardened and capped; ``EnvelopeError`` naming member and line."""
    try:
        return parse_file(member.path, max_bytes=limits.max_xml_bytes, encodings=ENCODINGS)
    except XmlError as exc:
        where = f"{member.name}:{exc.line}" if exc.line else member.name
        raise EnvelopeError([Problem(where, exc.reason)]) from exc


def read_member(member: Member, root: etree._Element) -> ActesModel:
    try:
        return read_element(root)
    except MessageError as exc:
        raise EnvelopeError(
            [Problem(f"{member.name}:{p.field}", p.message) for p in exc.problems]
        ) from exc


def interpret(members: list[Member], limits: Limits = Limits()) -> ArchiveContents:
    """Envelope, messages and files among unpacked members; ``EnvelopeError`` otherwise.

    The envelope is found by its root element and the messages are the files it lists, so
    neither member order nor ``_0``/``_1`` suffixes are assumed.
    """
    problems: list[Problem] = []
    roots: dict[str, etree._Element] = {}
    # Unreadable XML matters only if it is the envelope or a message, not an XML annex.
    unreadable: dict[str, list[Problem]] = {}
    for member in members:
        if member.kind is FileKind.XML and member.size <= limits.max_xml_bytes:
            try:
                roots[member.name] = parse_member(member, limits)
            except EnvelopeError as exc:
                unreadable[member.name] = exc.problems
    by_root = {m.name: local(roots[m.name]) for m in members if m.name in roots}
    envelopes = [m for m in members if by_root.get(m.name) in {e.ROOT for e in ENVELOPES}]
    if len(envelopes) > 1:
        raise EnvelopeError([Problem(envelopes[1].name, "a second envelope in the same archive")])
    envelope: EnveloppeCLMISILL | EnveloppeMISILLCL | None = None
    if envelopes:
        read = read_member(envelopes[0], roots[envelopes[0].name])
        assert isinstance(read, EnveloppeCLMISILL | EnveloppeMISILLCL)
        envelope, wanted = read, [f.nom_fichier for f in read.formulaires]
    else:
        # An envelope anomaly may come alone: it is then the message.
        wanted = [m.name for m in members if by_root.get(m.name) == AnomalieEnveloppe.ROOT]
        if not wanted:
            raise EnvelopeError(
                problems
                or [Problem("archive", "no envelope (EnveloppeCLMISILL or EnveloppeMISILLCL)")]
            )
    by_name = {m.name: m for m in members}
    messages = []
    for name in wanted:
        if name in unreadable:
            problems += unreadable[name]
            continue
        if name not in roots:
            problems.append(Problem(name, "listed in the envelope but not an XML member here"))
            continue
        try:
            messages.append(
                ReceivedMessage(name, by_name[name].path, read_member(by_name[name], roots[name]))
            )
        except EnvelopeError as exc:
            problems += exc.problems
    if problems:
        raise EnvelopeError(problems)
    taken = {*wanted, *(m.name for m in envelopes)}
    return ArchiveContents(
        envelope_name=envelopes[0].name if envelopes else None,
        envelope=envelope,
        messages=messages,
        files=[m for m in members if m.name not in taken],
        members=members,
    )
