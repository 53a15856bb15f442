"""An S²LOW-style TdT (tiers de télétransmission) for ACTES and HELIOS, over HTTPS with client
certificates (HELIOS: ``simulators.tdt_helios``, with the DGFiP behind it).

The API is the one S²LOW's ``api=1`` scripts offer under ``/modules/actes/`` (text
answers ``OK``/``KO`` then the payload, in ISO-8859-1; JSON for ``api/*``). Each act
posted becomes a transaction: the TdT builds the ACTES archive from the fields and
files (as S²LOW does) and walks it through 1 posté → 2 → 3 transmis; after
``--ack-after`` seconds the préfecture behind it (``simulators.prefecture``) answers
an ARActe (status 4) or an AnomalieActe (status -1). Cancellations (6-1) are
acknowledged the same way (ARAnnulation: the cancellation goes to 4, the act to 0).

Like S²LOW, a second act with an internal number already used is refused
(``KO`` "Un acte portant le même numéro interne existe déjà…"); ``--accept-duplicates``
accepts it. Either way ``duplicates`` counts acts posted with an IDActe already known.

TLS: the server asks for a client certificate signed by the test CA and refuses the
handshake without one. ``--cert-dir`` keeps the CA, server and client PEM files (created
when missing); their paths are printed as ``TDT_*=path`` lines before ``LISTENING`` and
served by ``GET /_control/certs``.

Control routes (besides ``/stats`` and ``/_control/faults``):
``POST /_control/courrier`` ``{"id_acte": ..., "type": "2-1"|"3-1"|"4-1"|"5-1"}`` makes
the préfecture send a letter about an acknowledged act (listed by
``api/list_document_prefecture.php``); ``POST /_control/classification``
``{"date": "YYYY-MM-DD", "tdt": false}`` publishes a new classification at the
préfecture (and at the TdT too with ``"tdt": true``); ``GET /_control/transactions``.

Run: ``python -m simulators.tdt --port 0 [--cert-dir DIR] [--ack-after 0.5]
[--acquit-after 0.5] [--unknown-post 999999]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from pydantic import ValidationError

from connectors.actes.natures import find_nature
from connectors.actes.problems import problems_from
from simulators.common import Stats, add_common_arguments, create_app, store_dir_of
from simulators.faults import FaultRule
from simulators.pki import TestCA
from simulators.prefecture import (
    COURRIER_TYPES,
    Authority,
    Prefecture,
    SubmittedAct,
    Verdict,
    build_act_archive,
    build_cancel_archive,
)
from simulators.tdt_helios import COUNTERS as HELIOS_COUNTERS
from simulators.tdt_helios import HELIOS, UNKNOWN_POST, Helios, HeliosOptions

COUNTERS = ("transmissions", "duplicates", "acknowledged", "anomalies", "cancellations",
            *HELIOS_COUNTERS)
ACTES = "/modules/actes"
NUMBER_RE = re.compile(r"[0-9A-Z_]{1,15}")
MINISTRY = "MIOCT"  # how S²LOW names @CTES in its messages
_UPLOAD_LIMIT = 150 * 1024 * 1024
_CHUNK = 256 * 1024

# -- certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class CertFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def describe(self) -> dict[str, str]:
        return {name: str(path) for name, path in self.__dict__.items()}


def ensure_certs(directory: Path) -> CertFiles:
    """The PEM files in ``directory``, created (CA, server, client ``collectivite``) if missing."""
    files = CertFiles(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )
    if all(path.exists() for path in files.__dict__.values()):
        return files
    ca = TestCA.create("Demat TdT Test CA")
    ca.write(directory, "ca")
    ca.issue_tls_server().write(directory, "server")
    ca.issue_client("collectivite").write(directory, "client")
    return files


def server_context(certs: CertFiles) -> ssl.SSLContext:
    """TLS server context that demands a client certificate signed by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# -- transactions ------------------------------------------------------------------------


@dataclass
class Transaction:
    id: int
    type: str  # 1 act, 2-5 préfecture documents, 6 cancellation
    number: str
    subject: str
    decision_date: str
    nature_code: int
    classification: str
    status: int
    id_acte: str | None = None
    related: int | None = None
    archive: Path | None = None
    envelope: int | None = None
    read: bool = False
    message: str = ""
    # status -> (date reached, the message that set it)
    history: dict[int, tuple[date, bytes | None]] = field(default_factory=dict)

    def set_status(self, status: int, flux: bytes | None = None, message: str = "") -> None:
        self.status = status
        self.history[status] = (date.today(), flux)
        if message:
            self.message = message

    def row(self) -> dict[str, Any]:
        """A row of ``api/list_actes.php``."""
        return {
            "id": self.id,
            "subject": self.subject,
            "number": self.number,
            "date": self.decision_date,
            "nature_descr": getattr(find_nature(self.nature_code), "label", ""),
            "classification": self.classification,
            "type": self.type,
        }


def text(body: str, status: int = 200) -> web.Response:
    return web.Response(
        body=body.encode("iso-8859-1", errors="replace"),
        status=status,
        content_type="text/plain",
        charset="ISO-8859-1",
    )


def ok(*lines: str) -> web.Response:
    return text("OK\n" + "".join(f"{line}\n" for line in lines))


def ko(message: str) -> web.Response:
    return text(f"KO\n{message}\n")


def _why(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{p.field} : {p.message}" for p in problems_from(exc))
    return " ".join(str(exc).split())


class BadRequest(Exception):
    """A refused request; the message is what S²LOW would answer after ``KO``."""


@dataclass
class Posted:
    fields: dict[str, list[str]]
    files: dict[str, list[tuple[str, Path]]]

    def one(self, name: str) -> str:
        values = self.fields.get(name) or [""]
        return values[0].strip()


async def read_form(request: web.Request, folder: Path) -> Posted:
    """Multipart fields (ISO-8859-1 text, as S²LOW reads them) and files saved in ``folder``."""
    posted = Posted({}, {})
    if not request.content_type.startswith("multipart/"):
        form = await request.post()
        for key, value in form.items():
            posted.fields.setdefault(key, []).append(str(value))
        return posted
    reader = await request.multipart()
    size = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise BadRequest("Requête multipart invalide.")
        if part.filename is None:
            raw = await part.read()
            posted.fields.setdefault(part.name, []).append(bytes(raw).decode("iso-8859-1"))
            continue
        name = Path(part.filename).name or "fichier"
        path = folder / f"{sum(len(v) for v in posted.files.values()):03d}-{name}"
        with path.open("wb") as out:
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if size > _UPLOAD_LIMIT:
                    raise BadRequest(
                        f"La taille totale des fichiers est trop importante (max : {_UPLOAD_LIMIT})"
                    )
                out.write(chunk)
        posted.files.setdefault(part.name, []).append((name, path))
    return posted


@dataclass
class TdtOptions:
    authority: Authority
    ack_after: float = 0.5
    cancel_after: float | None = None
    classification_date: date = date(2024, 1, 15)
    prefecture_classification_date: date | None = None
    accept_duplicates: bool = False
    login: str | None = None
    password: str | None = None


class Tdt:
    """The TdT's transactions and the préfecture behind it."""

    def __init__(self, options: TdtOptions, stats: Stats, store: Path) -> None:
        self.options = options
        self.stats = stats
        self.store = store
        self.prefecture = Prefecture(
            options.authority,
            options.prefecture_classification_date or options.classification_date,
        )
        self.tdt_classification_date = options.classification_date
        self.transactions: dict[int, Transaction] = {}
        self.envelopes: dict[int, Path] = {}
        self.serial = 0  # the authority's envelope serial
        self.prefecture_serial = 0
        self.timers: list[asyncio.TimerHandle] = []

    # -- helpers -----------------------------------------------------------------------

    def _new(self, **values: Any) -> Transaction:
        tid = len(self.transactions) + 1
        transaction = Transaction(tid, **values)
        transaction.history[transaction.status] = (date.today(), None)
        self.transactions[tid] = transaction
        return transaction

    def _folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="env-", dir=self.store))

    def _register(self, archive: Path) -> int:
        """An envelope id for ``actes_download_file.php?env=``."""
        envelope = len(self.envelopes) + 1
        self.envelopes[envelope] = archive
        return envelope

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append(asyncio.get_running_loop().call_later(max(delay, 0.0), callback))

    def walk(self, transaction: Transaction, delay: float, answer: Callable[[], None]) -> None:
        """1 posté → 2 → 3 transmis, then the préfecture's answer after ``delay``."""
        self.later(delay / 4, lambda: transaction.set_status(2))
        self.later(delay / 2, lambda: transaction.set_status(3))
        self.later(delay, answer)

    def find(self, value: str | None) -> Transaction | None:
        if value and value.isdigit():
            return self.transactions.get(int(value))
        return None

    def by_id_acte(self, id_acte: str) -> Transaction | None:
        for transaction in self.transactions.values():
            if transaction.type == "1" and transaction.id_acte == id_acte:
                return transaction
        return None

    def acts(self) -> list[Transaction]:
        return [t for t in self.transactions.values() if t.type == "1"]

    # -- create ------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        folder = self._folder()
        incoming = folder / "posted"
        incoming.mkdir()
        try:
            posted = await read_form(request, incoming)
            act = self._submitted(posted)
            self.serial += 1
            id_acte, archive = await asyncio.to_thread(
                build_act_archive,
                self.options.authority,
                act,
                self.tdt_classification_date,
                self.serial,
                folder,
            )
        except BadRequest as exc:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
            return ko(str(exc))
        except ValueError as exc:  # the act cannot be made into a valid ACTES archive
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
            return ko(f"Erreur lors de la génération de l'acte : {_why(exc)}")
        finally:
            await asyncio.to_thread(shutil.rmtree, incoming, ignore_errors=True)
        # No await from here on: the uniqueness check and the insert are one step.
        if any(t.id_acte == id_acte for t in self.acts()):
            self.stats.incr("duplicates")
        if any(t.number == act.number for t in self.acts()) and not self.options.accept_duplicates:
            shutil.rmtree(folder, ignore_errors=True)
            return ko(
                "Un acte portant le même numéro interne existe déjà dans la base de données.\n"
                "Il faut peut-être ajouter un suffixe au numéro."
            )
        transaction = self._new(
            type="1",
            number=act.number,
            subject=act.subject,
            decision_date=act.decision_date.isoformat(),
            nature_code=act.nature_code,
            classification=".".join(act.classification),
            status=1,
            id_acte=id_acte,
            archive=archive,
            envelope=self._register(archive),
        )
        self.stats.incr("transmissions")
        if act.en_attente:
            transaction.set_status(17)
        else:
            self.walk(transaction, self.options.ack_after, lambda: self._answer(transaction))
        return ok(str(transaction.id))

    def _submitted(self, posted: Posted) -> SubmittedAct:
        nature_code = posted.one("nature_code")
        if nature_code not in {"1", "2", "3", "4", "5", "6"}:
            raise BadRequest("La nature de l'acte est incorrecte")
        number = posted.one("number")
        if not NUMBER_RE.fullmatch(number):
            raise BadRequest("Le numéro n'est pas correct")
        try:
            decision = date.fromisoformat(posted.one("decision_date"))
        except ValueError:
            raise BadRequest("La date de décision est incorrecte") from None
        if decision > date.today():
            raise BadRequest("La date de décision est une date dans le futur")
        subject = posted.one("subject")
        if not subject:
            raise BadRequest("L'objet de l'acte est obligatoire")
        classification = [posted.one(f"classif{i}") for i in range(1, 6)]
        classification = [c for c in classification if c]
        acte_files = posted.files.get("acte_pdf_file") or []
        if not acte_files:
            raise BadRequest("Aucun fichier acte n'a été posté ")
        type_acte = posted.one("type_acte")
        if not type_acte:
            raise BadRequest(
                f"Erreur lors de la réception du fichier {acte_files[0][0]} : typologie absente"
            )
        annexes = posted.files.get("acte_attachments[]") or []
        type_pj = [v.strip() for v in posted.fields.get("type_pj[]", [])]
        for rank, (name, _path) in enumerate(annexes):
            if rank >= len(type_pj) or not type_pj[rank]:
                raise BadRequest(
                    f"Erreur lors de la réception du fichier annexe {name} : typologie absente"
                )
        return SubmittedAct(
            nature_code=int(nature_code),
            number=number,
            subject=subject,
            decision_date=decision,
            classification=tuple(classification),
            type_acte=type_acte,
            acte=acte_files[0],
            annexes=tuple(annexes),
            type_pj=tuple(type_pj[: len(annexes)]),
            document_papier=posted.one("document_papier") in ("1", "on", "O"),
            en_attente=posted.one("en_attente") in ("1", "on"),
        )

    def _answer(self, transaction: Transaction) -> None:
        """The préfecture reads the archive and acknowledges it or reports an anomaly."""
        assert transaction.archive is not None
        verdict: Verdict = self.prefecture.examine(transaction.archive, date.today())
        if verdict.acknowledged:
            transaction.id_acte = verdict.id_acte or transaction.id_acte
            transaction.set_status(4, verdict.xml, f"Reçu par le {MINISTRY} le {date.today()}")
            self.stats.incr("acknowledged")
            return
        kind = "Enveloppe rejetée par le" if verdict.envelope else "Anomalie signalee par le"
        transaction.set_status(
            -1, verdict.xml, f"{kind} {MINISTRY} : {verdict.nature} - {verdict.detail}"
        )
        self.stats.incr("anomalies")

    # -- status, AR, list --------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        transaction = self.find(request.query.get("transaction"))
        unique_id = request.query.get("unique_id")
        if unique_id:
            transaction = self.by_id_acte(unique_id)
        if transaction is None:
            return ko("Numéro de transaction invalide.")
        _day, flux = transaction.history.get(transaction.status, (date.today(), None))
        body = f"OK\n{transaction.status}\n".encode("iso-8859-1") + (flux or b"")
        if transaction.status == -1:
            body += transaction.message.encode("iso-8859-1", errors="replace")
        return web.Response(body=body, content_type="text/plain", charset="ISO-8859-1")

    async def aracte(self, request: web.Request) -> web.Response:
        transaction = self.find(request.query.get("id"))
        entry = transaction.history.get(4) if transaction else None
        if transaction is None or entry is None or entry[1] is None:
            return text("Cette transaction n'existe pas", status=404)
        return web.Response(body=entry[1], content_type="application/xml")

    async def list_actes(self, request: web.Request) -> web.Response:
        try:
            status = int(request.query.get("status_id", "0"))
            offset = int(request.query.get("offset", "0"))
            limit = int(request.query.get("limit", "100"))
            min_date = request.query.get("min_date")
            since = date.fromisoformat(min_date) if min_date else None
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = [
            t.row()
            for t in sorted(self.transactions.values(), key=lambda t: -t.id)
            if t.status == status and (since is None or t.history[status][0] >= since)
        ]
        return web.json_response(
            {
                "status_id": status,
                "authority_id": 1,
                "offset": offset,
                "limit": limit,
                "transactions": rows[offset : offset + limit],
            }
        )

    # -- cancellation ------------------------------------------------------------------

    async def cancel(self, request: web.Request) -> web.Response:
        posted = await request.post()
        act = self.find(str(posted.get("id", "")))
        if act is None:
            return ko("Erreur d'initialisation de la transaction.")
        if act.type != "1":
            return ko("Ce type de transaction ne peut pas être annulé.")
        pending = [
            t
            for t in self.transactions.values()
            if t.type == "6" and t.related == act.id and t.status not in (-1, 0)
        ]
        if pending:
            return ko("Une demande d'annulation est déjà en cours pour cette transaction.")
        if act.status != 4 or act.id_acte is None:
            return ko(
                "Impossible d'annuler une transaction qui n'est pas en état « Acquittement reçu »."
            )
        self.serial += 1
        folder = self._folder()
        try:
            archive = await asyncio.to_thread(
                build_cancel_archive, self.options.authority, act.id_acte, self.serial, folder
            )
        except ValueError as exc:
            return ko(f"Erreur lors de la génération du message métier : {exc}")
        cancellation = self._new(
            type="6",
            number=act.number,
            subject=act.subject,
            decision_date=act.decision_date,
            nature_code=act.nature_code,
            classification=act.classification,
            status=1,
            id_acte=act.id_acte,
            related=act.id,
            archive=archive,
            envelope=self._register(archive),
        )
        self.stats.incr("cancellations")
        delay = self.options.cancel_after
        delay = self.options.ack_after if delay is None else delay
        self.walk(cancellation, delay, lambda: self._cancelled(act, cancellation))
        return ok(str(cancellation.id))

    def _cancelled(self, act: Transaction, cancellation: Transaction) -> None:
        assert cancellation.archive is not None
        _id_acte, xml = self.prefecture.ar_annulation(cancellation.archive, date.today())
        message = f"Annulation reçue par le {MINISTRY} le {date.today()}"
        act.set_status(0, xml, message)
        cancellation.set_status(4, xml, message)

    # -- classification ----------------------------------------------------------------

    async def classification(self, _request: web.Request) -> web.Response:
        xml = self.prefecture.retour_classification(self.tdt_classification_date)
        return web.Response(body=xml, content_type="application/xml")

    async def publish_classification(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            day = date.fromisoformat(str(body["date"]))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response(
                {"error": f"expected {{'date': 'YYYY-MM-DD'}}: {exc}"}, status=400
            )
        self.prefecture.classification_date = day
        if body.get("tdt"):
            self.tdt_classification_date = day
        return web.json_response(
            {
                "prefecture": self.prefecture.classification_date.isoformat(),
                "tdt": self.tdt_classification_date.isoformat(),
            }
        )

    # -- préfecture documents ----------------------------------------------------------

    async def send_courrier(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            id_acte, kind = str(body["id_acte"]), str(body.get("type", "2-1"))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response(
                {"error": f"expected {{'id_acte', 'type'}}: {exc}"}, status=400
            )
        if kind not in COURRIER_TYPES:
            return web.json_response(
                {"error": f"type must be one of {', '.join(COURRIER_TYPES)}"}, status=400
            )
        act = self.by_id_acte(id_acte)
        if act is None or act.status not in (4, 5):
            return web.json_response({"error": f"no acknowledged act {id_acte}"}, status=404)
        self.prefecture_serial += 1
        archive = await asyncio.to_thread(
            self.prefecture.courrier,
            id_acte,
            kind,
            date.today(),
            self.prefecture_serial,
            self._folder(),
        )
        # Letters that expect no answer arrive "reçu (pas d'AR)" (21), the others "reçu" (7).
        status = 21 if kind in ("2-1", "5-1") else 7
        document = self._new(
            type=kind[0],
            number=act.number,
            subject=act.subject,
            decision_date=act.decision_date,
            nature_code=act.nature_code,
            classification=act.classification,
            status=status,
            id_acte=id_acte,
            related=act.id,
            archive=archive,
            envelope=self._register(archive),
        )
        return web.json_response(
            {
                "transaction": document.id,
                "type": document.type,
                "status": status,
                "archive": archive.name,
            },
            status=201,
        )

    async def list_documents(self, _request: web.Request) -> web.Response:
        rows = [
            {
                "id": t.id,
                "type": t.type,
                "related_transaction_id": t.related,
                "number": t.number,
                "unique_id": t.id_acte,
                "last_status_id": t.status,
            }
            for t in self.transactions.values()
            if t.type in ("2", "3", "4", "5") and not t.read
        ]
        return web.json_response(rows)

    async def get_document(self, request: web.Request) -> web.StreamResponse:
        transaction = self.find(request.query.get("id"))
        unique_id = request.query.get("unique_id")
        if unique_id:
            transaction = self.by_id_acte(unique_id)
        if transaction is None:
            return text("KO\nNuméro de transaction invalide.")
        if transaction.type == "1":
            lines = [
                f"{t.type}-{t.status}-{t.id}\n"
                for t in self.transactions.values()
                if t.related == transaction.id and t.type in ("2", "3", "4", "5")
            ]
            return text("".join(lines))
        raise web.HTTPFound(f"{ACTES}/actes_download_file.php?env={transaction.envelope}")

    async def download(self, request: web.Request) -> web.StreamResponse:
        env = request.query.get("env", "")
        path = self.envelopes.get(int(env)) if env.isdigit() else None
        if path is None:
            return text("Fichier introuvable", status=404)
        return web.Response(
            body=path.read_bytes(),
            content_type="application/x-gzip",
            headers={"Content-Disposition": f'attachment; filename="{path.name}"'},
        )

    async def mark_read(self, request: web.Request) -> web.Response:
        transaction = self.find(request.query.get("transaction_id"))
        if transaction is not None:
            transaction.read = True
        return web.json_response({"result": "ok"})

    async def listing(self, _request: web.Request) -> web.Response:
        return web.json_response(
            [
                {**t.row(), "status": t.status, "unique_id": t.id_acte, "related": t.related}
                for t in self.transactions.values()
            ]
        )

    async def forget(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        self.transactions.clear()
        self.envelopes.clear()
        self.serial = self.prefecture_serial = 0
        for child in list(self.store.iterdir()):
            await asyncio.to_thread(shutil.rmtree, child, ignore_errors=True)


def _login_middleware(options: TdtOptions) -> Callable[..., Awaitable[web.StreamResponse]]:
    """With a login configured, the API also wants HTTP Basic credentials (as S²LOW can)."""
    expected = None
    if options.login is not None:
        pair = f"{options.login}:{options.password or ''}".encode()
        expected = "Basic " + base64.b64encode(pair).decode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        wrong = request.headers.get("Authorization") != expected
        if expected and request.path.startswith((ACTES, HELIOS)) and wrong:
            return ko("Échec de l'authentification")
        return await handler(request)

    return check


TDT = web.AppKey("tdt", Tdt)
HELIOS_MODULE = web.AppKey("helios", Helios)


def build_app(
    *,
    authority: Authority | None = None,
    ack_after: float = 0.5,
    cancel_after: float | None = None,
    classification_date: date = date(2024, 1, 15),
    prefecture_classification_date: date | None = None,
    accept_duplicates: bool = False,
    login: str | None = None,
    password: str | None = None,
    store_dir: Path | None = None,
    faults: list[FaultRule] | None = None,
    seed: int = 0,
    certs: CertFiles | None = None,
    acquit_after: float = 0.5,
    unknown_posts: frozenset[str] = frozenset({UNKNOWN_POST}),
) -> web.Application:
    """The TdT app (serve it with :func:`serving_tls`); ``app[TDT]`` is its state.

    With ``certs``, ``GET /_control/certs`` tells where the PEM files are.
    """
    options = TdtOptions(
        authority or Authority(),
        ack_after,
        cancel_after,
        classification_date,
        prefecture_classification_date,
        accept_duplicates,
        login,
        password,
    )
    root, remove_store = store_dir_of(store_dir, "tdt")
    stats = Stats(COUNTERS)
    tdt = Tdt(options, stats, root)
    helios_store = root / "helios"
    helios_store.mkdir(exist_ok=True)
    helios = Helios(HeliosOptions(options.authority.siren, acquit_after, unknown_posts),
                    stats, helios_store, tdt.later)

    async def forget() -> None:
        await tdt.forget()
        helios_store.mkdir(exist_ok=True)
        await helios.forget()

    app = create_app(stats=stats, faults=faults or (), seed=seed, on_reset=forget)
    app.middlewares.append(_login_middleware(options))
    app[TDT] = tdt
    routes = (
        ("POST", "actes_transac_create.php", tdt.create),
        ("GET", "actes_transac_get_status.php", tdt.status),
        ("GET", "actes_transac_get_ARActe.php", tdt.aracte),
        ("POST", "actes_transac_cancel.php", tdt.cancel),
        ("GET", "actes_classification_fetch.php", tdt.classification),
        ("GET", "api/list_actes.php", tdt.list_actes),
        ("GET", "api/list_document_prefecture.php", tdt.list_documents),
        ("GET", "actes_transac_get_document.php", tdt.get_document),
        ("GET", "actes_download_file.php", tdt.download),
        ("GET", "api/document_prefecture_mark_as_read.php", tdt.mark_read),
    )
    for method, script, handler in routes:
        app.router.add_route(method, f"{ACTES}/{script}", handler)
    for method, script, module_handler in helios.routes():
        app.router.add_route(method, f"{HELIOS}/{script}", module_handler)
    app.router.add_post("/_control/retour", helios.make_retours)
    app[HELIOS_MODULE] = helios
    app.router.add_post("/_control/courrier", tdt.send_courrier)
    app.router.add_post("/_control/classification", tdt.publish_classification)
    app.router.add_get("/_control/transactions", tdt.listing)
    if certs is not None:
        _certs_route(app, certs)

    async def stop(_app: web.Application) -> None:
        for timer in tdt.timers:
            timer.cancel()
        await remove_store(_app)

    app.on_cleanup.append(stop)
    return app


@asynccontextmanager
async def serving_tls(
    app: web.Application, certs: CertFiles, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` over HTTPS (client certificate required); yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=server_context(certs)).start()
        address = runner.addresses[0]
        bound = f"[{address[0]}]" if ":" in address[0] else address[0]
        yield f"https://{bound}:{address[1]}"
    finally:
        await runner.cleanup()


def _certs_route(app: web.Application, certs: CertFiles) -> None:
    async def show(_request: web.Request) -> web.Response:
        return web.json_response(certs.describe())

    app.router.add_get("/_control/certs", show)


async def _serve(app: web.Application, certs: CertFiles, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serving_tls(app, certs, host, port) as url:
        for key, path in (
            ("TDT_CA", certs.ca),
            ("TDT_CLIENT_CERT", certs.client_cert),
            ("TDT_CLIENT_KEY", certs.client_key),
        ):
            sys.stdout.write(f"{key}={path}\n")
        sys.stdout.write(f"LISTENING {url}\n")
        sys.stdout.flush()
        await stop.wait()


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {value!r}") from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.tdt",
        description="S²LOW-style TdT for ACTES and HELIOS, with a préfecture and the DGFiP "
        "behind it (HTTPS, client cert).",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--cert-dir",
        type=Path,
        help="where the CA, server and client PEM files are kept "
        "(created if missing; default: a temp dir)",
    )
    parser.add_argument("--store-dir", type=Path, help="where archives go (default: a temp dir)")
    parser.add_argument(
        "--ack-after",
        type=float,
        default=0.5,
        help="seconds before the préfecture answers an act (default 0.5)",
    )
    parser.add_argument(
        "--cancel-after",
        type=float,
        help="seconds before a cancellation is acknowledged (default: --ack-after)",
    )
    parser.add_argument(
        "--classification-date",
        type=_day,
        default=date(2024, 1, 15),
        help="date of the classification the TdT serves and stamps on acts",
    )
    parser.add_argument(
        "--prefecture-classification-date",
        type=_day,
        help="the préfecture's current classification (default: the TdT's); "
        "a later date makes every act an AnomalieActe 002",
    )
    parser.add_argument("--siren", default=Authority.siren, help="the authority's SIREN")
    parser.add_argument("--departement", default=Authority.departement)
    parser.add_argument("--arrondissement", default=Authority.arrondissement)
    parser.add_argument(
        "--authority-nature",
        default=Authority.nature,
        help="authority type code (2 digits) of the envelope",
    )
    parser.add_argument(
        "--acquit-after",
        type=float,
        default=0.5,
        help="seconds before the DGFiP answers a PES with its acquit (default 0.5)",
    )
    parser.add_argument(
        "--unknown-post",
        action="append",
        help=f"an IdPost the DGFiP does not know (ERREUR_CODIQUE; default {UNKNOWN_POST})",
    )
    parser.add_argument("--login", help="also require HTTP Basic with this login")
    parser.add_argument("--password", help="password of --login")
    parser.add_argument(
        "--accept-duplicates",
        action="store_true",
        help="accept an act whose internal number is already used",
    )
    args = parser.parse_args(argv)
    cert_dir = args.cert_dir or Path(tempfile.mkdtemp(prefix="demat-tdt-certs-"))
    try:
        _run(args, ensure_certs(cert_dir))
    finally:
        if args.cert_dir is None:  # made for this run: gone with it
            shutil.rmtree(cert_dir, ignore_errors=True)


def _run(args: argparse.Namespace, certs: CertFiles) -> None:
    app = build_app(
        authority=Authority(
            args.siren, args.departement, args.arrondissement, args.authority_nature
        ),
        ack_after=args.ack_after,
        cancel_after=args.cancel_after,
        classification_date=args.classification_date,
        prefecture_classification_date=args.prefecture_classification_date,
        accept_duplicates=args.accept_duplicates,
        login=args.login,
        password=args.password,
        store_dir=args.store_dir,
        faults=args.faults,
        seed=args.seed,
        certs=certs,
        acquit_after=args.acquit_after,
        unknown_posts=frozenset(args.unknown_post or [UNKNOWN_POST]),
    )
    asyncio.run(_serve(app, certs, args.host, args.port))


if __name__ == "__main__":
    main()
