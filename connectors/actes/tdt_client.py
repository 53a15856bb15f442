"""The ACTES module of an S²LOW-style TdT: transactions under ``<url>/modules/actes/``.

The account, TLS and answer conventions are ``connectors.s2low.client``'s; here the
act's scripts: create, status, ARActe, cancel, listing and reconcile-before-resend,
classification, préfecture letters.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp

from connectors.base import (
    PermanentError,
)
from connectors.s2low.client import (
    Attachment,
    OpenFiles,
    S2lowClient,
    decode_text,
    excerpt,
    form_field,
    latin1,
)

ACTES = "/modules/actes"

STATUS_LABELS: Mapping[int, str] = {
    -1: "Erreur",
    0: "Annulé",
    1: "Posté",
    2: "En attente de transmission",
    3: "Transmis",
    4: "Acquittement reçu",
    5: "Validé",
    6: "Refusé",
    7: "Document reçu",
    8: "Acquittement envoyé",
    9: "Document envoyé",
    10: "Refus d'envoi",
    11: "Acquittement de document reçu",
    12: "Envoyé au SAE",
    13: "Archivé par le SAE",
    14: "Erreur lors de l'archivage",
    15: "Reçu par le SAE",
    16: "Détruite",
    17: "En attente d'être postée",
    18: "En attente d'être signée",
    19: "En attente de transmission au SAE",
    20: "Erreur lors de l'envoi au SAE",
    21: "Document reçu (pas d'AR)",
    22: "Impossible d'envoyer au SAE",
}

# Statuses an act transmission may be in, most likely first right after posting:
# what a look-up scans (the TdT lists transactions one status at a time).
LOOKUP_STATUSES = (1, 2, 3, 17, 18, 4, -1, 6, 10, 0, 5)

# S²LOW refuses a second act with the same internal number for an authority.
DUPLICATE_NUMBER_KO = "même numéro interne existe déjà"
# S²LOW refuses a second cancellation while one is pending.
PENDING_CANCEL_KO = "demande d'annulation est déjà en cours"

_ROOT = re.compile(rb"<([A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)[\s/>]")


@dataclass(frozen=True)
class ActeSubmission:
    """The fields and files of ``actes_transac_create.php``."""

    nature_code: int
    number: str
    subject: str
    decision_date: date
    classification: Sequence[str]  # "1.2.3" split: classif1..N
    type_acte: str
    acte: Attachment
    annexes: Sequence[Attachment] = ()
    type_pj: Sequence[str] = ()
    document_papier: bool = False
    en_attente: bool = False


@dataclass(frozen=True)
class TransactionStatus:
    """``actes_transac_get_status.php``: the status and the message it came with."""

    transaction: str
    code: int
    xml: bytes | None  # the message that set the status (ARActe, AnomalieActe...)
    message: str  # the TdT's own text after it (status -1)

    @property
    def label(self) -> str:
        return STATUS_LABELS.get(self.code, f"statut {self.code}")


@dataclass(frozen=True)
class TransactionSummary:
    """One row of ``api/list_actes.php``."""

    id: str
    status: int
    number: str
    subject: str
    decision_date: str
    nature: str
    classification: str
    type: str  # 1 transmission, 2-5 préfecture documents, 6 cancellation, 7 classification


@dataclass(frozen=True)
class PrefectureDocument:
    """An unread préfecture document (``api/list_document_prefecture.php``)."""

    id: str
    type: str  # 2 courrier simple, 3 pièces complémentaires, 4 lettre d'observations, 5 déféré
    related_transaction: str
    number: str
    id_acte: str
    status: int


@dataclass(frozen=True)
class RelatedDocument:
    """A line ``<type>-<status>-<id>`` of ``actes_transac_get_document.php?id=<act>``."""

    type: str
    status: int
    id: str


def _split_xml(data: bytes) -> tuple[bytes | None, bytes]:
    """The XML message at the start of ``data`` and what follows it (the TdT's text)."""
    start = data.find(b"<")
    if start < 0 or data[:start].strip():
        return None, data
    body_start = start
    while data.startswith((b"<?", b"<!--"), body_start):
        end = data.find(b"?>" if data.startswith(b"<?", body_start) else b"-->", body_start)
        if end < 0:
            return None, data
        body_start = data.find(b"<", end)
        if body_start < 0:
            return None, data
    root = _ROOT.match(data, body_start)
    if root is None:
        return None, data
    closing = b"</" + root.group(1) + b">"
    end = data.rfind(closing)
    if end >= 0:
        end += len(closing)
    else:
        head_end = data.find(b">", body_start)
        if head_end < 0 or data[head_end - 1 : head_end] != b"/":
            return None, data
        end = head_end + 1
    return data[start:end], data[end:]


class TdtClient(S2lowClient):
    """The ACTES module of one TdT account."""

    # -- acts -----------------------------------------------------------------------------

    async def create_transaction(self, act: ActeSubmission) -> str:
        """Post an act (``actes_transac_create.php``); the new transaction id."""
        with OpenFiles() as files:
            form = aiohttp.MultipartWriter("form-data")
            form_field(form, "api", "1")
            form_field(form, "nature_code", str(act.nature_code))
            form_field(form, "number", act.number)
            form_field(form, "subject", latin1(act.subject))
            form_field(form, "decision_date", act.decision_date.isoformat())
            form_field(form, "en_attente", "1" if act.en_attente else "0")
            form_field(form, "document_papier", "1" if act.document_papier else "0")
            form_field(form, "type_acte", act.type_acte)
            for code in act.type_pj:
                form_field(form, "type_pj[]", code)
            for rank, level in enumerate(act.classification, start=1):
                form_field(form, f"classif{rank}", level)
            await files.attach(form, "acte_pdf_file", act.acte)
            for annexe in act.annexes:
                await files.attach(form, "acte_attachments[]", annexe)
            body = await self._request(
                "POST", f"{ACTES}/actes_transac_create.php", "create", data=form
            )
        return self._transaction_id(self._payload(body, "create"), "create")

    async def get_status(self, transaction: str) -> TransactionStatus:
        """``actes_transac_get_status.php``: status, then the message that set it."""
        what = f"status of transaction {transaction}"
        body = await self._request(
            "GET",
            f"{ACTES}/actes_transac_get_status.php",
            what,
            params={"transaction": transaction},
        )
        lines = self._payload(body, what)
        code = lines[0].strip() if lines else b""
        if not re.fullmatch(rb"-?\d+", code):
            raise PermanentError(f"{self.what} {what}: expected a numeric status, got {code!r}")
        xml, rest = _split_xml(b"\n".join(lines[1:]))
        return TransactionStatus(transaction, int(code), xml, " ".join(decode_text(rest).split()))

    async def get_aracte(self, transaction: str) -> bytes:
        """``actes_transac_get_ARActe.php``: the ARActe of an acknowledged act."""
        what = f"ARActe of transaction {transaction}"
        body = await self._request(
            "GET", f"{ACTES}/actes_transac_get_ARActe.php", what, params={"id": transaction}
        )
        xml, _rest = _split_xml(body)
        if xml is None:
            raise PermanentError(f"{self.what} {what}: not an XML message: {excerpt(body)}")
        return xml

    async def cancel(self, transaction: str) -> str:
        """Ask the cancellation (6-1) of an acknowledged act; the cancellation's transaction."""
        what = f"cancellation of transaction {transaction}"
        form = aiohttp.MultipartWriter("form-data")
        form_field(form, "api", "1")
        form_field(form, "id", transaction)
        body = await self._request("POST", f"{ACTES}/actes_transac_cancel.php", what, data=form)
        return self._transaction_id(self._payload(body, what), what)

    async def list_transactions(
        self, status: int, *, min_date: date | None = None, offset: int = 0, limit: int = 100
    ) -> list[TransactionSummary]:
        """``api/list_actes.php``: one page of the authority's transactions in ``status``."""
        params = {"status_id": str(status), "offset": str(offset), "limit": str(limit)}
        if min_date is not None:
            params["min_date"] = min_date.isoformat()
        what = f"list of transactions in status {status}"
        body = await self._json(f"{ACTES}/api/list_actes.php", what, params)
        rows = body.get("transactions") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise PermanentError(f"{self.what} {what}: no 'transactions' list in the answer")
        return [_summary(row, status) for row in rows if isinstance(row, dict)]

    async def find_transaction(
        self,
        number: str,
        *,
        kind: str = "1",
        decision_date: date | None = None,
        min_date: date | None = None,
        statuses: Iterable[int] = LOOKUP_STATUSES,
    ) -> TransactionSummary | None:
        """The authority's transaction of type ``kind`` for the act ``number``, if any."""
        for status in statuses:
            offset = 0
            while True:
                page = await self.list_transactions(status, min_date=min_date, offset=offset)
                for row in page:
                    same_date = decision_date is None or row.decision_date in (
                        "",
                        decision_date.isoformat(),
                    )
                    if row.number == number and row.type == kind and same_date:
                        return row
                if len(page) < 100:
                    break
                offset += len(page)
        return None

    async def fetch_classification(self) -> bytes:
        """``actes_classification_fetch.php``: the authority's RetourClassification."""
        what = "classification"
        body = await self._request(
            "GET", f"{ACTES}/actes_classification_fetch.php", what, params={"api": "1"}
        )
        xml, _rest = _split_xml(body)
        if xml is None:
            self._payload(body, what)  # a KO explains itself
            raise PermanentError(f"{self.what} {what}: not an XML message: {excerpt(body)}")
        return xml

    # -- préfecture documents -------------------------------------------------------------

    async def list_prefecture_documents(self) -> list[PrefectureDocument]:
        """Unread courriers, demandes de pièces, lettres d'observations and déférés."""
        what = "list of préfecture documents"
        body = await self._json(f"{ACTES}/api/list_document_prefecture.php", what, {})
        if not isinstance(body, list):
            raise PermanentError(f"{self.what} {what}: expected a JSON list")
        return [_prefecture_document(row) for row in body if isinstance(row, dict)]

    async def list_related_documents(self, transaction: str) -> list[RelatedDocument]:
        """The préfecture documents about one act: ``type-status-id`` lines."""
        what = f"documents of transaction {transaction}"
        body = await self._request(
            "GET", f"{ACTES}/actes_transac_get_document.php", what, params={"id": transaction}
        )
        if body.lstrip().startswith(b"KO"):
            self._payload(body, what)
        found = []
        for line in decode_text(body).splitlines():
            match = re.fullmatch(r"\s*(\d+)-(-?\d+)-(\d+)\s*", line)
            if match:
                found.append(RelatedDocument(match[1], int(match[2]), match[3]))
        return found

    async def get_prefecture_document(self, document: str, dest: Path) -> None:
        """Write the document's archive (tar.gz: envelope, message, PDFs) to ``dest``."""
        what = f"préfecture document {document}"
        out = await asyncio.to_thread(dest.open, "wb")
        try:
            await self._request(
                "GET",
                f"{ACTES}/actes_transac_get_document.php",
                what,
                params={"id": document},
                sink=out,
            )
        finally:
            await asyncio.to_thread(out.close)
        with dest.open("rb") as stream:
            head = stream.read(64)
        if not head.startswith(b"\x1f\x8b"):
            text = await asyncio.to_thread(dest.read_bytes)
            self._payload(text, what)
            raise PermanentError(f"{self.what} {what}: not an archive: {excerpt(text)}")

    async def mark_prefecture_document_read(self, document: str) -> None:
        what = f"marking préfecture document {document} read"
        body = await self._json(
            f"{ACTES}/api/document_prefecture_mark_as_read.php",
            what,
            {"transaction_id": document},
        )
        if not (isinstance(body, dict) and body.get("result") == "ok"):
            raise PermanentError(f"{self.what} {what}: unexpected answer {body!r}")


def _summary(row: Mapping[str, Any], status: int) -> TransactionSummary:
    def text(key: str) -> str:
        value = row.get(key)
        return "" if value is None else str(value)

    return TransactionSummary(
        text("id"),
        status,
        text("number"),
        text("subject"),
        text("date") or text("decision_date"),
        text("nature_descr"),
        text("classification"),
        text("type"),
    )


def _prefecture_document(row: Mapping[str, Any]) -> PrefectureDocument:
    def text(key: str) -> str:
        value = row.get(key)
        return "" if value is None else str(value)

    status = text("last_status_id")
    return PrefectureDocument(
        text("id"),
        text("type"),
        text("related_transaction_id"),
        text("number"),
        text("unique_id"),
        int(status) if re.fullmatch(r"-?\d+", status) else 0,
    )
