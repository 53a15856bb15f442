"""The HELIOS module of an S²LOW-style TdT: PES under ``<url>/modules/helios/``.

The account, TLS and conventions are ``connectors.s2low.client``'s. The HELIOS scripts
answer small XML documents (``<import>``, ``<transaction>``, ``<liste>``) whose
``resultat`` is ``OK`` or ``KO`` with a ``message``; the acquit and the PES_Retour come
as the files themselves.

Reconcile before resend: ``api/list_pes_aller.php`` lists the authority's PES by
status. Rows that carry the file's ``sha1`` (as a TdT may) let a lost deposit be found;
S²LOW itself refuses a file it already has ("doublon détecté"), so a PES is never
deposited twice either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import aiohttp
from lxml import etree

from broker.xmlsafe import XmlError, parse_bytes
from connectors.base import PermanentError, TransientError
from connectors.s2low.client import Attachment, OpenFiles, S2lowClient, excerpt

HELIOS = "/modules/helios"

STATUS_LABELS: Mapping[int, str] = {
    -1: "Erreur",
    0: "Annulé",
    1: "Posté",
    2: "En attente de transmission",
    3: "Transmis",
    4: "Acquitté",
    5: "Validé",
    6: "Refusé",
    7: "En traitement",
    8: "Information disponible",
    9: "Envoyé au SAE",
    10: "Accepté par le SAE",
    11: "Refusé par le SAE",
    13: "Attente signée",
    14: "Attente postée",
    19: "En attente de transmission au SAE",
    20: "Erreur lors de l'envoi au SAE",
    22: "Détruite",
    24: "Transmis sans ack",
}
# On its way to the DGFiP, or there without an answer yet.
IN_PROGRESS = frozenset({1, 2, 3, 7, 13, 14})
# An answer from the DGFiP is there: an acquit (4, 8) or a PES_NONACQUIT (6).
ANSWERED = frozenset({4, 6, 8})
# Where a PES may be right after a deposit, most likely first (the look-up scans them).
LOOKUP_STATUSES = (1, 2, 3, 7, 4, 8, 6, -1, 13, 14)
# S²LOW's words when it already has the file (same SHA-1 for the authority).
DUPLICATE_KO = "doublon"
# S²LOW writes its answers in UTF-8 (DOMDocument) or ISO-8859-1 (older scripts).
_ANSWER_ENCODINGS = ("UTF-8", "ISO-8859-1")
# The HELIOS scripts' messages that say the TdT itself failed.
_TRANSIENT = ("Erreur d'initialisation du module", "Erreur de l'initialisaton",
              "Erreur consultation statut", "Erreur de journalisation")


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class HeliosStatus:
    transaction: str
    code: int
    message: str = ""

    @property
    def label(self) -> str:
        return STATUS_LABELS.get(self.code, "statut inconnu")


@dataclass(frozen=True)
class Deposit:
    """A row of ``api/list_pes_aller.php``."""

    id: str
    status: int
    filename: str = ""
    sha1: str = ""


@dataclass(frozen=True)
class RetourListed:
    """A PES_Retour the TdT holds for the authority, not read yet."""

    id: str
    name: str
    date: str


def _text(root: etree._Element, name: str) -> str:
    found = root.find(name)
    return (found.text or "").strip() if found is not None else ""


class HeliosClient(S2lowClient):
    """The HELIOS module of one TdT account."""

    def _answer(self, body: bytes, what: str) -> etree._Element:
        """The script's XML answer; ``KO`` raises with the TdT's message."""
        try:
            root = parse_bytes(body, max_bytes=1024 * 1024, encodings=_ANSWER_ENCODINGS)
        except XmlError as exc:
            raise PermanentError(f"{self.what} {what}: the answer is not the XML expected "
                                 f"({exc}): {excerpt(body) or '(empty)'}") from exc
        if _text(root, "resultat") != "OK":
            message = " ".join(_text(root, "message").split()) or "(no message)"
            error = TransientError if message.startswith(_TRANSIENT) else PermanentError
            raise error(f"{self.what} {what}: the TdT answered KO: {message}")
        return root

    async def deposit(self, pes: Attachment) -> str:
        """Post a PES (``api/helios_importer_fichier.php``, file field ``enveloppe``)."""
        what = f"deposit of {pes.name}"
        with OpenFiles() as files:
            form = aiohttp.MultipartWriter("form-data")
            await files.attach(form, "enveloppe", pes)
            body = await self._request(
                "POST", f"{HELIOS}/api/helios_importer_fichier.php", what, data=form)
        ident = _text(self._answer(body, what), "id")
        if not ident.isdigit():
            raise PermanentError(f"{self.what} {what}: expected a transaction id, got "
                                 f"{ident!r}")
        return ident

    async def get_status(self, transaction: str) -> HeliosStatus:
        what = f"status of PES transaction {transaction}"
        body = await self._request("GET", f"{HELIOS}/api/helios_transac_get_status.php", what,
                                   params={"transaction": transaction})
        root = self._answer(body, what)
        code = _text(root, "status")
        if not code.lstrip("-").isdigit():
            raise PermanentError(f"{self.what} {what}: expected a numeric status, got {code!r}")
        return HeliosStatus(transaction, int(code), " ".join(_text(root, "message").split()))

    async def get_acquit(self, transaction: str) -> bytes:
        """``helios_download_acquit.php``: the DGFiP's answer (PES_ACQUIT or PES_NONACQUIT)."""
        what = f"acquit of PES transaction {transaction}"
        body = await self._request("GET", f"{HELIOS}/helios_download_acquit.php", what,
                                   params={"id": transaction})
        if not body.lstrip().startswith(b"<"):
            raise PermanentError(f"{self.what} {what}: not an XML file: {excerpt(body)}")
        return body

    async def list_deposits(self, status: int, *, min_date: date | None = None,
                            offset: int = 0, limit: int = 100) -> list[Deposit]:
        params = {"status_id": str(status), "offset": str(offset), "limit": str(limit)}
        if min_date is not None:
            params["min_date"] = min_date.isoformat()
        what = f"list of PES in status {status}"
        body = await self._json(f"{HELIOS}/api/list_pes_aller.php", what, params)
        rows = body.get("transactions") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise PermanentError(f"{self.what} {what}: no 'transactions' list in the answer")
        return [Deposit(str(row.get("id", "")), status, str(row.get("filename") or ""),
                        str(row.get("sha1") or "")) for row in rows if isinstance(row, dict)]

    async def find_deposit(self, sha1: str, *, min_date: date | None,
                           statuses: Iterable[int] = LOOKUP_STATUSES) -> Deposit | None:
        """The authority's PES whose content has this SHA-1, if the TdT says so."""
        for status in statuses:
            offset = 0
            while True:
                page = await self.list_deposits(status, min_date=min_date, offset=offset)
                for row in page:
                    if row.sha1 and row.sha1 == sha1:
                        return row
                if len(page) < 100:
                    break
                offset += len(page)
        return None

    # -- PES_Retour -----------------------------------------------------------------------

    async def list_retours(self) -> list[RetourListed]:
        """``api/helios_get_list.php``: the unread PES_Retour of the authority."""
        what = "list of PES_Retour"
        body = await self._request("GET", f"{HELIOS}/api/helios_get_list.php", what)
        root = self._answer(body, what)
        return [RetourListed(_text(e, "id"), _text(e, "nom"), _text(e, "date"))
                for e in root.findall("pes_retour")]

    async def get_retour(self, ident: str, dest: Path) -> None:
        """``api/helios_get_retour.php``: the PES_Retour written to ``dest``."""
        with dest.open("wb") as sink:
            await self._request("GET", f"{HELIOS}/api/helios_get_retour.php",
                                f"PES_Retour {ident}", params={"id": ident}, sink=sink)

    async def mark_retour_read(self, ident: str) -> None:
        what = f"marking PES_Retour {ident} as read"
        body = await self._request("GET", f"{HELIOS}/api/helios_change_status.php", what,
                                   params={"id": ident})
        self._answer(body, what)
