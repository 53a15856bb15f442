"""An As@lae SAE over its REST API, as Pastell (and the sae connector) use it.

* ``POST /sedaMessages`` multipart: ``seda_message`` (the SEDA 2.1 bordereau) and
  ``attachments`` (tar.gz of the files, named as the bordereau's ``Uri``); or
  ``send_chunked_attachments=true`` without attachment, answered with a chunk
  session, then ``POST /sedaAttachmentsChunkFiles`` once per chunk.
* ``GET /sedaMessages/sequence:ArchiveTransfer/message:{Acknowledgement|
  ArchiveTransferReply}/originOrganizationIdentification:<agency>/
  originMessageIdentifier:<transfer id>``: 200 with the XML, 202 while the
  message is not produced yet, 404 for a transfer it does not know.
* HTTP Basic: the login and the hex SHA-256 of the password.

Each transfer is checked as an SAE would: the bordereau against the project's
SEDA 2.1 subset (400 when invalid), every file's SHA-256 and size against the
bordereau (refusal ``207``), a missing file (refusal ``211``). Healthy transfers
are refused at ``--refuse-ratio`` (seeded) with ``--refuse-code``.

Run: ``python -m simulators.asalae --port 0 [--ack-after 1] [--atr-after 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import secrets
import shutil
import tarfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import BasicAuth, BodyPartReader, hdrs, web
from lxml import etree

from broker import xmlsafe
from simulators.common import Stats, add_common_arguments, create_app, run_simulator, store_dir_of
from simulators.faults import FaultRule

SEDA = "fr:gouv:culture:archivesdefrance:seda:v2.1"
SHA256_URI = "http://www.w3.org/2001/04/xmlenc#sha256"
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "seda" / "seda-2.1-archive-transfer.xsd"
COUNTERS = ("transfers", "accepted", "refused", "duplicates", "chunks", "invalid")
DEFAULT_REFUSAL = "Le transfert ne respecte pas l'accord de versement"
_CHUNK = 256 * 1024
_FIELD_LIMIT = 4096
_BORDEREAU_LIMIT = 16 * 1024 * 1024


class BadRequest(Exception):
    """Not a transfer this SAE can take; the message says why (HTTP ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- the bordereau --------------------------------------------------------------------------


@dataclass(frozen=True)
class Declared:
    """A file as the bordereau declares it."""

    uri: str
    sha256: str
    algorithm: str
    size: int | None
    filename: str | None = None  # FileInfo/Filename: the name the file had


@dataclass(frozen=True)
class Bordereau:
    message_id: str
    transferring: str
    archival: str
    agreement: str | None
    unit_id: str | None
    level: str | None
    title: str | None
    files: tuple[Declared, ...]


def _q(*steps: str) -> str:
    return "/".join(f"{{{SEDA}}}{step}" for step in steps)


def _text(element: etree._Element, path: str) -> str | None:
    found = element.find(_q(*path.split("/")))
    if found is None or found.text is None:
        return None
    return " ".join(found.text.split()) or None


def read_bordereau(data: bytes, schema: etree.XMLSchema) -> Bordereau:
    """The transfer's identity and declared files; BadRequest when not valid."""
    try:
        root = xmlsafe.parse_bytes(data, max_bytes=_BORDEREAU_LIMIT)
    except xmlsafe.XmlError as exc:
        raise BadRequest(f"seda_message: XML illisible : {exc}") from exc
    problems = xmlsafe.schema_problems(schema, root)
    if problems:
        raise BadRequest("seda_message: bordereau non conforme : " + "; ".join(problems[:5]))
    files = []
    for node in root.iterfind(_q("DataObjectPackage", "BinaryDataObject")):
        digest = node.find(_q("MessageDigest"))
        assert digest is not None  # required by the schema
        size = _text(node, "Size")
        files.append(
            Declared(
                uri=_text(node, "Uri") or "",
                sha256=" ".join((digest.text or "").split()).lower(),
                algorithm=digest.get("algorithm", ""),
                size=int(size) if size else None,
                filename=node.findtext(_q("FileInfo", "Filename")),
            )
        )
    top = root.find(_q("DataObjectPackage", "DescriptiveMetadata", "ArchiveUnit"))
    return Bordereau(
        message_id=_text(root, "MessageIdentifier") or "",
        transferring=_text(root, "TransferringAgency/Identifier") or "",
        archival=_text(root, "ArchivalAgency/Identifier") or "",
        agreement=_text(root, "ArchivalAgreement"),
        unit_id=top.get("id") if top is not None else None,
        level=_text(top, "Content/DescriptionLevel") if top is not None else None,
        title=_text(top, "Content/Title") if top is not None else None,
        files=tuple(files),
    )


def _digest_members(archive: Path) -> dict[str, tuple[str, int]]:
    """sha256 and size of every file in the tar.gz, streamed."""
    found: dict[str, tuple[str, int]] = {}
    with tarfile.open(archive, mode="r|gz") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            digest, size = hashlib.sha256(), 0
            while data := handle.read(_CHUNK):
                digest.update(data)
                size += len(data)
            found[member.name] = (digest.hexdigest(), size)
    return found


def check_archive(archive: Path, files: Sequence[Declared]) -> tuple[str, str] | None:
    """The refusal (reply code, reason) the archive deserves, or None (blocking)."""
    try:
        members = _digest_members(archive)
    except (tarfile.TarError, OSError, EOFError) as exc:
        return "101", f"L'archive jointe est illisible : {exc}"
    for declared in files:
        if declared.uri not in members:
            return "211", f"Pièce jointe absente de l'archive : {declared.uri}"
        sha256, size = members[declared.uri]
        if declared.algorithm != SHA256_URI:
            return "207", f"Algorithme d'empreinte non pris en charge : {declared.algorithm}"
        if sha256 != declared.sha256:
            return "207", (
                f"Empreinte invalide pour {declared.uri} : "
                f"déclarée {declared.sha256}, calculée {sha256}"
            )
        if declared.size is not None and size != declared.size:
            return "207", (
                f"Taille invalide pour {declared.uri} : déclarée {declared.size}, reçue {size}"
            )
    return None


# -- the answers ----------------------------------------------------------------------------


def _el(parent: etree._Element | None, tag: str, text: str | None = None) -> etree._Element:
    qname = f"{{{SEDA}}}{tag}"
    node = (
        etree.Element(qname, nsmap={None: SEDA})  # type: ignore[dict-item]
        if parent is None
        else etree.SubElement(parent, qname)
    )
    if text is not None:
        node.text = text
    return node


def _xml(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def acknowledgement_xml(b: Bordereau, ack_id: str, when: datetime) -> bytes:
    root = _el(None, "Acknowledgement")
    _el(root, "Comment", f"Accusé de réception du transfert {b.message_id}")
    _el(root, "Date", when.isoformat(timespec="seconds"))
    _el(root, "MessageIdentifier", ack_id)
    _el(root, "MessageReceivedIdentifier", b.message_id)
    _el(_el(root, "Sender"), "Identifier", b.archival)
    _el(_el(root, "Receiver"), "Identifier", b.transferring)
    return _xml(root)


def transfer_reply_xml(
    b: Bordereau, atr_id: str, when: datetime, code: str, comment: str, archive_id: str | None
) -> bytes:
    root = _el(None, "ArchiveTransferReply")
    _el(root, "Comment", comment)
    _el(root, "Date", when.isoformat(timespec="seconds"))
    _el(root, "MessageIdentifier", atr_id)
    if b.agreement:
        _el(root, "ArchivalAgreement", b.agreement)
    _el(root, "CodeListVersions")
    if archive_id is not None:  # accepted: echo the top unit with its id in the SAE
        package = _el(root, "DataObjectPackage")
        unit = _el(_el(package, "DescriptiveMetadata"), "ArchiveUnit")
        unit.set("id", b.unit_id or "unit-0")
        content = _el(unit, "Content")
        if b.level:
            _el(content, "DescriptionLevel", b.level)
        if b.title:
            _el(content, "Title", b.title)
        _el(content, "ArchivalAgencyArchiveUnitIdentifier", archive_id)
        _el(package, "ManagementMetadata")
    _el(root, "ReplyCode", code)
    _el(root, "MessageRequestIdentifier", b.message_id)
    if archive_id is not None:
        _el(root, "GrantDate", when.isoformat(timespec="seconds"))
    _el(_el(root, "ArchivalAgency"), "Identifier", b.archival)
    _el(_el(root, "TransferringAgency"), "Identifier", b.transferring)
    return _xml(root)


# -- state ----------------------------------------------------------------------------------


@dataclass
class Record:
    """A transfer the SAE received, and its verdict (revealed after the delays)."""

    bordereau: Bordereau
    received: float
    code: str
    reason: str
    archive_id: str | None
    ack: bytes
    atr: bytes

    def describe(self) -> dict[str, Any]:
        return {
            "message_identifier": self.bordereau.message_id,
            "transferring_agency": self.bordereau.transferring,
            "reply_code": self.code,
            "reason": self.reason,
            "archive_id": self.archive_id,
            "files": [
                {"uri": f.uri, "filename": f.filename, "sha256": f.sha256, "size": f.size}
                for f in self.bordereau.files
            ],
        }


@dataclass
class ChunkSession:
    security: str
    bordereau: Bordereau
    folder: Path
    count: int | None = None
    chunks: set[int] = field(default_factory=set)
    answer: dict[str, Any] | None = None  # set once the last chunk completed it


@dataclass
class Settings:
    login: str = "demat"
    password: str = "demat"
    ack_after: float = 0.0
    atr_after: float = 0.0  # after the acknowledgement
    refuse_ratio: float = 0.0
    refuse_code: str = "300"
    refuse_reason: str = DEFAULT_REFUSAL
    max_attachment: int = 2 * 1024**3


def _open_for_write(path: Path) -> BinaryIO:
    return path.open("wb")


async def _save_part(part: BodyPartReader, path: Path, limit: int) -> int:
    size = 0
    out = await asyncio.to_thread(_open_for_write, path)
    try:
        while data := await part.read_chunk(_CHUNK):
            size += len(data)
            if size > limit:
                raise BadRequest(f"part {part.name!r} exceeds {limit} bytes", status=413)
            await asyncio.to_thread(out.write, data)
    finally:
        await asyncio.to_thread(out.close)
    return size


async def _read_small(part: BodyPartReader, limit: int) -> bytes:
    raw = bytearray()
    while data := await part.read_chunk(_CHUNK):
        raw += data
        if len(raw) > limit:
            raise BadRequest(f"part {part.name!r} exceeds {limit} bytes", status=413)
    return bytes(raw)


def _concatenate(chunks: list[Path], target: Path) -> None:
    with target.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)


class Sae:
    """The SAE's state: transfers received (by transferring agency and id), chunk sessions."""

    def __init__(
        self, settings: Settings, schema: etree.XMLSchema, root: Path, seed: int, stats: Stats
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.root = root
        self.seed = seed
        self.stats = stats
        self.transfers: dict[tuple[str, str], Record] = {}
        self.sessions: dict[str, ChunkSession] = {}
        self.rng = random.Random(f"refuse/{seed}")
        self.serial = 0

    # -- access ---------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        try:
            auth = BasicAuth.decode(request.headers.get(hdrs.AUTHORIZATION, ""))
        except ValueError:
            return False
        expected = hashlib.sha256(self.settings.password.encode()).hexdigest()
        return auth.login == self.settings.login and secrets.compare_digest(auth.password, expected)

    def _denied(self) -> web.Response:
        return web.json_response(
            {"error": "authentification requise"},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="asalae"'},
        )

    @staticmethod
    def _error(exc: BadRequest) -> web.Response:
        return web.json_response({"error": str(exc)}, status=exc.status)

    # -- receiving ------------------------------------------------------------------------

    async def post_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        incoming = self.root / f".incoming-{uuid.uuid4().hex}"
        await asyncio.to_thread(incoming.mkdir, parents=True)
        try:
            try:
                return await self._receive(request, incoming)
            except ValueError as exc:  # malformed multipart framing
                raise BadRequest(f"corps multipart invalide : {exc}") from exc
        except BadRequest as exc:
            if exc.status == 400:
                self.stats.incr("invalid")
            return self._error(exc)
        finally:
            await asyncio.to_thread(shutil.rmtree, incoming, ignore_errors=True)

    async def _receive(self, request: web.Request, incoming: Path) -> web.Response:
        bordereau: bytes | None = None
        archive: Path | None = None
        chunked = False
        if not request.content_type.startswith("multipart/"):
            raise BadRequest("multipart attendu : seda_message, attachments")
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("parties multipart imbriquées refusées")
            if part.name == "seda_message":
                bordereau = await _read_small(part, _BORDEREAU_LIMIT)
            elif part.name == "attachments":
                archive = incoming / "archive.tar.gz"
                await _save_part(part, archive, self.settings.max_attachment)
            elif part.name == "send_chunked_attachments":
                chunked = (await _read_small(part, _FIELD_LIMIT)).strip().lower() == b"true"
            else:
                raise BadRequest(f"partie inattendue : {part.name!r}")
        if bordereau is None:
            raise BadRequest("partie seda_message absente")
        parsed = read_bordereau(bordereau, self.schema)
        if chunked:
            if archive is not None:
                raise BadRequest("send_chunked_attachments=true : pas de partie attachments")
            return web.json_response(await self._open_session(parsed))
        if archive is None:
            raise BadRequest("partie attachments absente")
        return web.json_response(await self._register(parsed, archive))

    async def _open_session(self, bordereau: Bordereau) -> dict[str, str]:
        session_id = uuid.uuid4().hex
        folder = self.root / f"session-{session_id}"
        await asyncio.to_thread(folder.mkdir, parents=True)
        session = ChunkSession(secrets.token_hex(16), bordereau, folder)
        self.sessions[session_id] = session
        return {
            "chunk_session_identifier": session_id,
            "chunk_security_identifier": session.security,
        }

    async def _register(self, b: Bordereau, archive: Path) -> dict[str, Any]:
        """Take a complete transfer: verify it and decide its reply."""
        self.stats.incr("transfers")
        key = (b.transferring, b.message_id)
        draw = self.rng.random()  # drawn for every transfer: the same seed, the same run
        if key in self.transfers:
            self.stats.incr("duplicates")
            return {"message_identifier": b.message_id, "status": "duplicate"}
        refusal = await asyncio.to_thread(check_archive, archive, b.files)
        if refusal is None and draw < self.settings.refuse_ratio:
            refusal = (self.settings.refuse_code, self.settings.refuse_reason)
        self.serial += 1
        now = datetime.now(UTC)
        if refusal is None:
            code, reason, archive_id = "000", "Transfert accepté", f"{b.archival}_{self.serial:05d}"
            self.stats.incr("accepted")
        else:
            (code, reason), archive_id = refusal, None
            self.stats.incr("refused")
        self.transfers[key] = Record(
            bordereau=b,
            received=asyncio.get_running_loop().time(),
            code=code,
            reason=reason,
            archive_id=archive_id,
            ack=acknowledgement_xml(b, f"ACK_{self.serial}", now),
            atr=transfer_reply_xml(b, f"ATR_{self.serial}", now, code, reason, archive_id),
        )
        return {"message_identifier": b.message_id, "status": "received"}

    # -- chunks ---------------------------------------------------------------------------

    async def post_chunk(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        incoming = self.root / f".chunk-{uuid.uuid4().hex}"
        try:
            try:
                fields = await self._read_chunk(request, incoming)
            except ValueError as exc:  # malformed multipart framing
                raise BadRequest(f"corps multipart invalide : {exc}") from exc
            return web.json_response(await self._take_chunk(fields, incoming))
        except BadRequest as exc:
            return self._error(exc)
        finally:
            await asyncio.to_thread(incoming.unlink, missing_ok=True)

    async def _read_chunk(self, request: web.Request, incoming: Path) -> dict[str, str]:
        if not request.content_type.startswith("multipart/"):
            raise BadRequest("multipart attendu")
        fields: dict[str, str] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("parties multipart imbriquées refusées")
            if part.name == "chunk_content":
                await _save_part(part, incoming, self.settings.max_attachment)
                fields["chunk_content"] = "1"
            elif part.name:
                raw = await _read_small(part, _FIELD_LIMIT)
                fields[part.name] = raw.decode("utf-8", "replace").strip()
        if "chunk_content" not in fields:
            raise BadRequest("partie chunk_content absente")
        return fields

    async def _take_chunk(self, fields: dict[str, str], incoming: Path) -> dict[str, Any]:
        session = self.sessions.get(fields.get("session_identifier", ""))
        if session is None:
            raise BadRequest("session de dépôt par morceaux inconnue", status=404)
        if not secrets.compare_digest(fields.get("security_identifier", ""), session.security):
            raise BadRequest("identifiant de sécurité invalide", status=403)
        if session.answer is not None:  # the last chunk again: its answer was lost
            return session.answer
        try:
            count, index = int(fields["number_of_chunks"]), int(fields["chunk_index"])
            if int(fields["number_of_files"]) != 1 or int(fields["file_index"]) != 1:
                raise BadRequest("un seul fichier attendu par session")
        except (KeyError, ValueError) as exc:
            raise BadRequest(f"champ absent ou invalide : {exc}") from exc
        if fields.get("compression_algorithm", "").upper() != "TARGZ":
            raise BadRequest("compression_algorithm doit valoir TARGZ")
        if session.count not in (None, count) or not 1 <= index <= count:
            raise BadRequest(f"morceau {index}/{count} incohérent avec la session")
        session.count = count
        await asyncio.to_thread(incoming.replace, session.folder / f"{index:06d}")
        session.chunks.add(index)
        self.stats.incr("chunks")
        if len(session.chunks) < count:
            return {"chunk_index": index, "status": "chunk received"}
        archive = session.folder / "archive.tar.gz"
        parts = [session.folder / f"{i:06d}" for i in range(1, count + 1)]
        await asyncio.to_thread(_concatenate, parts, archive)
        session.answer = await self._register(session.bordereau, archive)
        await asyncio.to_thread(shutil.rmtree, session.folder, ignore_errors=True)
        return session.answer

    # -- answering ------------------------------------------------------------------------

    async def get_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        info = request.match_info
        record = self.transfers.get((info["agency"], info["ident"]))
        if (
            info["sequence"] != "ArchiveTransfer"
            or record is None
            or info["message"] not in ("Acknowledgement", "ArchiveTransferReply")
        ):
            return web.json_response({"error": "transfert inconnu"}, status=404)
        ready_at = record.received + self.settings.ack_after
        body = record.ack
        if info["message"] == "ArchiveTransferReply":
            ready_at += self.settings.atr_after
            body = record.atr
        if asyncio.get_running_loop().time() < ready_at:
            return web.json_response({"status": "en cours de traitement"}, status=202)
        return web.Response(body=body, content_type="application/xml")

    async def ping(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        return web.json_response({"ping": "pong"})

    async def listing(self, _request: web.Request) -> web.Response:
        return web.json_response({"transfers": [r.describe() for r in self.transfers.values()]})

    async def forget(self) -> None:
        folders = [s.folder for s in self.sessions.values()]
        self.transfers.clear()
        self.sessions.clear()
        self.rng = random.Random(f"refuse/{self.seed}")
        self.serial = 0
        for folder in folders:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)


def build_app(
    *,
    settings: Settings | None = None,
    schema_path: Path = SCHEMA,
    store_dir: Path | None = None,
    faults: list[FaultRule] | None = None,
    seed: int = 0,
) -> web.Application:
    """The SAE app; without ``store_dir`` uploads go to a temp dir removed at cleanup."""
    root, remove_store = store_dir_of(store_dir, "asalae")
    stats = Stats(COUNTERS)
    sae = Sae(settings or Settings(), xmlsafe.load_schema(schema_path), root, seed, stats)
    app = create_app(stats=stats, faults=faults or (), seed=seed, on_reset=sae.forget)
    app.router.add_get("/ping", sae.ping)
    app.router.add_post("/sedaMessages", sae.post_message)
    app.router.add_post("/sedaAttachmentsChunkFiles", sae.post_chunk)
    app.router.add_get(
        "/sedaMessages/sequence:{sequence}/message:{message}"
        "/originOrganizationIdentification:{agency}/originMessageIdentifier:{ident}",
        sae.get_message,
    )
    app.router.add_get("/_control/transfers", sae.listing)
    app.on_cleanup.append(remove_store)
    return app


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio between 0 and 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.asalae", description="As@lae SAE simulator (SEDA 2.1 transfers)."
    )
    add_common_arguments(parser)
    defaults = Settings()
    parser.add_argument("--login", default=defaults.login, help="HTTP Basic login")
    parser.add_argument(
        "--password", default=defaults.password, help="password (clients send its hex SHA-256)"
    )
    parser.add_argument(
        "--ack-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay before the Acknowledgement is available (default 0)",
    )
    parser.add_argument(
        "--atr-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay after the Acknowledgement before the reply (default 0)",
    )
    parser.add_argument(
        "--refuse-ratio",
        type=_ratio,
        default=0.0,
        help="share of sound transfers refused (seeded by --seed; default 0)",
    )
    parser.add_argument(
        "--refuse-code",
        default=defaults.refuse_code,
        help=f"ReplyCode of those refusals (default {defaults.refuse_code})",
    )
    parser.add_argument(
        "--refuse-reason", default=defaults.refuse_reason, help="comment of those refusals"
    )
    parser.add_argument(
        "--max-attachment",
        type=int,
        default=defaults.max_attachment,
        metavar="BYTES",
        help="largest attachment or chunk taken (default 2 GiB)",
    )
    parser.add_argument(
        "--schema", type=Path, default=SCHEMA, help="XSD the bordereaux are checked against"
    )
    parser.add_argument("--store-dir", type=Path, help="where uploads go (default: a temp dir)")
    args = parser.parse_args(argv)
    settings = Settings(
        login=args.login,
        password=args.password,
        ack_after=args.ack_after,
        atr_after=args.atr_after,
        refuse_ratio=args.refuse_ratio,
        refuse_code=args.refuse_code,
        refuse_reason=args.refuse_reason,
        max_attachment=args.max_attachment,
    )
    app = build_app(
        settings=settings,
        schema_path=args.schema,
        store_dir=args.store_dir,
        faults=args.faults,
        seed=args.seed,
    )
    run_simulator(app, args.host, args.port)


if __name__ == "__main__":
    main()
