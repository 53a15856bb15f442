"""The TdT simulator's HELIOS module, with the DGFiP behind it.

Scripts under ``/modules/helios/`` as S²LOW offers them: ``api/helios_importer_fichier.php``
(file field ``enveloppe``; a file already posted, same SHA-1, is refused "doublon détecté"),
``api/helios_transac_get_status.php``, ``helios_download_acquit.php``,
``api/list_pes_aller.php`` (rows with ``id``, ``filename``, ``sha1``), and for PES_Retour
``api/helios_get_list.php``, ``api/helios_get_retour.php``, ``api/helios_change_status.php``.

A PES posted goes 1 posté → the TdT's checks (S²LOW's: ISO-8859-1 declared, well-formed,
not empty, NomFic present and unique per CodCol; a failure is status -1 with the reason)
→ 2 → 3 transmis, renamed ``PESALR2_<SIREN>_<yymmdd>_<n>.xml`` on the way; after
``acquit_after`` seconds the DGFiP (``simulators.dgfip``) answers a PES_ACQUIT (status 4).
What the DGFiP decides follows the content, so a test knows it in advance: an ``IdPost``
among ``unknown_posts`` is ERREUR_CODIQUE, an ``IdColl`` among ``unknown_sirets``
ERREUR_SIRET, a bordereau (domain, CodCol, CodBud, exercice, number) already integrated
ERREUR_DOUBLON_BORDEREAU, a PJ IdUnique already integrated ERREUR_DOUBLON_PJ.

``/stats``: ``deposits``, ``duplicates`` (a NomFic deposited twice for a CodCol),
``acquits``, ``acquits_ko``, ``retours``. ``POST /_control/retour`` ``{"count": n}`` makes the
DGFiP send n PES_Retour for the authority.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from aiohttp import BodyPartReader, web
from lxml import etree

from broker.ids import luhn_ok
from connectors.helios.pes import PesSummary, check_pes
from connectors.helios.retour import RETOUR_NS
from simulators.common import Stats
from simulators.dgfip import (
    DUPLICATE_BORDEREAU,
    DUPLICATE_PJ,
    UNKNOWN_CODIQUE,
    UNKNOWN_SIRET,
    Refusal,
    acquit_for,
)

HELIOS = "/modules/helios"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COUNTERS = ("deposits", "acquits", "acquits_ko", "retours")
UNKNOWN_POST = "999999"
_UPLOAD_LIMIT = 150 * 1024 * 1024
_CHUNK = 256 * 1024


def _xml(root: str, **values: object) -> web.Response:
    element = etree.Element(root)
    for name, value in values.items():
        etree.SubElement(element, name).text = "" if value is None else str(value)
    body = etree.tostring(element, xml_declaration=True, encoding="ISO-8859-1")
    return web.Response(body=body, content_type="text/xml", charset="ISO-8859-1")


@dataclass
class PesTransaction:
    id: int
    filename: str
    sha1: str
    path: Path
    submitted: date
    status: int = 1
    message: str = "Fichier bien reçu par la plate-forme Helios"
    summary: PesSummary | None = None
    sent_as: str | None = None
    acquit: bytes | None = None


@dataclass
class Retour:
    id: int
    name: str
    received: str
    data: bytes
    read: bool = False


@dataclass
class HeliosOptions:
    siren: str
    acquit_after: float = 0.5
    unknown_posts: frozenset[str] = frozenset({UNKNOWN_POST})
    unknown_sirets: frozenset[str] = frozenset()


@dataclass
class Helios:
    """The module's transactions, and what the DGFiP has integrated."""

    options: HeliosOptions
    stats: Stats
    store: Path
    later: Callable[[float, Callable[[], None]], None]
    transactions: dict[int, PesTransaction] = field(default_factory=dict)
    retours: dict[int, Retour] = field(default_factory=dict)
    # (CodCol, NomFic) seen by the TdT; bordereaux and PJ integrated by the DGFiP.
    names: set[tuple[str, str]] = field(default_factory=set)
    bordereaux: set[tuple[str, ...]] = field(default_factory=set)
    pj: set[str] = field(default_factory=set)
    sent_today: int = 0

    def routes(self) -> Iterable[tuple[str, str, Handler]]:
        return (
            ("POST", "api/helios_importer_fichier.php", self.deposit),
            ("GET", "api/helios_transac_get_status.php", self.status),
            ("GET", "helios_transac_get_status.php", self.status),
            ("GET", "helios_download_acquit.php", self.download_acquit),
            ("GET", "api/list_pes_aller.php", self.list_pes_aller),
            ("GET", "api/helios_get_list.php", self.list_retours),
            ("GET", "api/helios_get_retour.php", self.get_retour),
            ("GET", "api/helios_change_status.php", self.mark_read),
        )

    # -- deposit --------------------------------------------------------------------------

    async def deposit(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return _xml("import", id="", resultat="KO", message="Requête multipart attendue")
        reader = await request.multipart()
        saved: tuple[str, Path, str] | None = None
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "enveloppe" and part.filename:
                saved = await self._save(part)
        if saved is None:
            return _xml("import", id="", resultat="KO",
                        message="Echec lors du téléchargement du fichier")
        name, path, sha1 = saved
        if sha1 == "":
            return _xml("import", id="", resultat="KO", message="Fichier trop volumineux")
        # No await from here: the duplicate check and the insert are one step.
        if any(t.sha1 == sha1 for t in self.transactions.values()):
            path.unlink(missing_ok=True)
            return _xml("import", id="", resultat="KO",
                        message="doublon détecté. Ce fichier a déjà été posté")
        tid = len(self.transactions) + 1
        transaction = PesTransaction(tid, name, sha1, path, date.today())
        self.transactions[tid] = transaction
        self.stats.incr("deposits")
        self.later(self.options.acquit_after / 4, lambda: self._check(transaction))
        return _xml("import", id=tid, resultat="OK", message="Téléchargement du fichier réussi.")

    async def _save(self, part: BodyPartReader) -> tuple[str, Path, str]:
        name = Path(part.filename or "").name or "pes.xml"
        path = self.store / f"pes-{uuid.uuid4().hex}.xml"
        digest, size = hashlib.sha1(usedforsecurity=False), 0
        with path.open("wb") as out:
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if size > _UPLOAD_LIMIT:
                    out.close()
                    path.unlink(missing_ok=True)
                    return name, path, ""
                digest.update(chunk)
                out.write(chunk)
        return name, path, digest.hexdigest()

    def _check(self, transaction: PesTransaction) -> None:
        """S²LOW's checks before sending (not the schema: it does not validate it)."""
        summary, problems = check_pes(transaction.path, transaction.filename)
        transaction.summary = summary
        key = (summary.cod_col or "", summary.nom_fic or "")
        if key in self.names:
            self.stats.incr("duplicates")
            transaction.status = -1
            transaction.message = (f"Le fichier {summary.nom_fic} (NomFic) a déjà été transmis "
                                   f"pour la collectivité {summary.cod_col}")
            return
        fatal = [p for p in problems if "signature" not in p.message.lower()]
        if fatal:
            transaction.status = -1
            transaction.message = "; ".join(f"{p.field}: {p.message}" for p in fatal[:5])
            return
        self.names.add(key)
        transaction.status = 2
        self.later(self.options.acquit_after / 4, lambda: self._send(transaction))

    def _send(self, transaction: PesTransaction) -> None:
        self.sent_today += 1
        day = date.today().strftime("%y%m%d")
        transaction.sent_as = f"PESALR2_{self.options.siren}_{day}_{self.sent_today}.xml"
        transaction.status = 3
        transaction.message = f"Transmis à la DGFiP sous le nom {transaction.sent_as}"
        self.later(self.options.acquit_after / 2, lambda: self._acquit(transaction))

    def refusals(self, summary: PesSummary) -> dict[str, list[Refusal]]:
        """What the DGFiP refuses in this PES (by bordereau number, ``*`` for all)."""
        refused: dict[str, list[Refusal]] = {}
        if summary.id_post in self.options.unknown_posts:
            refused.setdefault("*", []).append(UNKNOWN_CODIQUE)
        if summary.id_coll in self.options.unknown_sirets:
            refused.setdefault("*", []).append(UNKNOWN_SIRET)
        for b in summary.bordereaux:
            key = (b.domain, summary.cod_col or "", summary.cod_bud or "", b.exercice or "",
                   b.number or "")
            if key in self.bordereaux:
                refused.setdefault(b.number or "", []).append(DUPLICATE_BORDEREAU)
        return refused

    def _acquit(self, transaction: PesTransaction) -> None:
        summary = transaction.summary
        assert summary is not None
        refused = self.refusals(summary)
        duplicate_pj = [p for p in summary.pj_ids if p in self.pj]
        if duplicate_pj:
            refused.setdefault("*", []).append(DUPLICATE_PJ)
        if not refused:  # integrated: a second one would be a duplicate
            self.bordereaux.update(
                (b.domain, summary.cod_col or "", summary.cod_bud or "", b.exercice or "",
                 b.number or "") for b in summary.bordereaux)
            self.pj.update(summary.pj_ids)
        transaction.acquit = acquit_for(summary, refusals=refused, pj_ids=summary.pj_ids)
        transaction.status = 4
        transaction.message = "Acquittement reçu"
        self.stats.incr("acquits_ko" if refused else "acquits")

    # -- status, acquit, listing ------------------------------------------------------------

    def _find(self, request: web.Request, key: str) -> PesTransaction | None:
        value = request.query.get(key, "")
        return self.transactions.get(int(value)) if value.isdigit() else None

    async def status(self, request: web.Request) -> web.Response:
        found = self._find(request, "transaction")
        if found is None:
            return _xml("transaction", id=request.query.get("transaction", ""), resultat="KO",
                        message="Numéro de transaction invalide", status="")
        return _xml("transaction", id=found.id, resultat="OK", message=found.message,
                    status=found.status)

    async def download_acquit(self, request: web.Request) -> web.Response:
        found = self._find(request, "id")
        if found is None or found.acquit is None:
            return web.Response(status=404, text="Pas d'acquittement pour cette transaction")
        return web.Response(body=found.acquit, content_type="text/xml", charset="ISO-8859-1")

    async def list_pes_aller(self, request: web.Request) -> web.Response:
        status = request.query.get("status_id", "")
        since = request.query.get("min_date")
        offset = int(request.query.get("offset", "0") or 0)
        limit = int(request.query.get("limit", "100") or 100)
        rows = [t for t in self.transactions.values() if str(t.status) == status
                and (not since or t.submitted.isoformat() >= since)]
        page = [{"id": t.id, "filename": t.filename, "sha1": t.sha1,
                 "submission_date": t.submitted.isoformat()} for t in rows[offset:offset + limit]]
        return web.json_response({"status_id": status, "offset": offset, "limit": limit,
                                  "transactions": page})

    # -- PES_Retour -------------------------------------------------------------------------

    async def make_retours(self, request: web.Request) -> web.Response:
        asked = await request.json() if request.can_read_body else {}
        count = int(asked.get("count", 1))
        made = []
        for _ in range(count):
            rid = len(self.retours) + 1
            name = f"PES2R_{self.options.siren}_{date.today():%y%m%d}_{rid}.xml"
            self.retours[rid] = Retour(rid, name, datetime.now().isoformat(timespec="seconds"),
                                       retour_file(self.options.siren, rid))
            self.stats.incr("retours")
            made.append({"id": rid, "nom": name})
        return web.json_response(made)

    async def list_retours(self, _request: web.Request) -> web.Response:
        root = etree.Element("liste")
        etree.SubElement(root, "resultat").text = "OK"
        etree.SubElement(root, "message").text = ""
        for retour in self.retours.values():
            if retour.read:
                continue
            item = etree.SubElement(root, "pes_retour")
            for name, value in (("id", retour.id), ("nom", retour.name), ("date", retour.received)):
                etree.SubElement(item, name).text = str(value)
        body = etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1")
        return web.Response(body=body, content_type="text/xml", charset="ISO-8859-1")

    def _retour(self, request: web.Request) -> Retour | None:
        value = request.query.get("id", "")
        return self.retours.get(int(value)) if value.isdigit() else None

    async def get_retour(self, request: web.Request) -> web.Response:
        found = self._retour(request)
        if found is None:
            return web.Response(status=404, text="PES_Retour inconnu")
        return web.Response(body=found.data, content_type="text/xml", charset="ISO-8859-1")

    async def mark_read(self, request: web.Request) -> web.Response:
        found = self._retour(request)
        if found is None:
            return _xml("change", resultat="KO", message="PES_Retour inconnu")
        found.read = True
        return _xml("change", resultat="OK", message="")

    async def forget(self) -> None:
        for transaction in self.transactions.values():
            transaction.path.unlink(missing_ok=True)
        self.transactions.clear()
        self.retours.clear()
        self.names.clear()
        self.bordereaux.clear()
        self.pj.clear()
        self.sent_today = 0


def retour_file(siren: str, serial: int) -> bytes:
    """A small PES_Retour of the DGFiP for the authority: one mandat paid."""
    root = etree.Element(f"{{{RETOUR_NS}}}PES_Retour", nsmap={"n": RETOUR_NS})
    params = etree.SubElement(etree.SubElement(root, "Enveloppe"), "Parametres")
    etree.SubElement(params, "Version", V="2")
    etree.SubElement(params, "TypFic", V="PESRETOUR_DEP")
    etree.SubElement(params, "NomFic", V=f"PES2R_{siren}_{serial}")
    header = etree.SubElement(root, "EnTetePES")
    etree.SubElement(header, "DteStr", V=date.today().isoformat())
    etree.SubElement(header, "IdPost", V="044000")
    etree.SubElement(header, "IdColl", V=siret_of(siren))
    block = etree.SubElement(root, "PES_DepenseRetour")
    head = etree.SubElement(block, "EnTeteDepense")
    etree.SubElement(head, "TypRestit", V="1")
    etree.SubElement(head, "IdVer", V="1")
    bordereau = etree.SubElement(block, "Bordereau")
    etree.SubElement(etree.SubElement(bordereau, "BlocBordereau"), "IdBord", V=str(serial))
    data = etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1")
    assert isinstance(data, bytes)
    return data


def siret_of(siren: str) -> str:
    """The SIRET of the authority's first establishment whose checksum holds."""
    return next(f"{siren}{nic:05d}" for nic in range(10, 100000)
                if luhn_ok(f"{siren}{nic:05d}"))
