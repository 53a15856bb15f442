"""A Chorus Pro PIVOT invoice (``CPPFacturePivot``) read and judged.

The file passes the XML gate (``broker.xmlsafe``: encoding, no DTD, no entity, no
XInclude), its attachments are taken out as it streams (``contents``), the rest is checked
against the project's schema (``schemas/chorus/pivot.xsd``) and then against the rules a
recipient relies on: the debtor's and a French supplier's SIRET checksums, amounts that
add up (lines, VAT, totals), one invoice document per invoice, attachments that are
base64 of a ZIP (or of a file) which unpacks safely, and, for a Factur-X PDF, its
embedded CII XML valid and agreeing with the PIVOT. Every problem names the file, the
line and the element, and says what was expected.
"""

from __future__ import annotations

import hashlib
import mimetypes
import shutil
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import IO, Any

from lxml import etree

from broker.flows.base import Problem
from broker.ids import siret_problem
from broker.xmlsafe import XmlError, encoding_of, load_schema, parse_bytes, schema_problems
from connectors.chorus import facturx
from connectors.chorus.contents import Content, ContentsError, split
from connectors.safezip import ZipLimits, ZipRefused, is_zip, name_problem, unpack
from connectors.schema_files import schema_dir

MAX_PIVOT_BYTES = 130 * 1024 * 1024  # Chorus Pro sends at most 120 MB per download
MAX_SKELETON_BYTES = 16 * 1024 * 1024
MAX_ATTACHMENT_BYTES = 120 * 1024 * 1024
ENCODINGS = ("UTF-8", "ISO-8859-1")
# Rounding each term to the cent may leave a cent per term.
CENT = Decimal("0.01")
ZIP_LIMITS = ZipLimits()
INVOICE_DOCUMENT = "01"
ATTACHMENT = "02"


@cache
def schema() -> etree.XMLSchema:
    return load_schema(schema_dir("chorus", "pivot.xsd") / "pivot.xsd")


@dataclass(frozen=True)
class File:
    """An attachment's file, unpacked under the reading's work dir."""

    name: str
    path: Path
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class Attachment:
    rank: int
    kind: str  # 01 the invoice document, 02 a further attachment
    name: str
    mime_type: str
    files: tuple[File, ...]
    # The CII XML of a Factur-X invoice document, and what it says.
    facturx: facturx.Reading | None = None


@dataclass(frozen=True)
class Status:
    date: str
    code: int
    complement: str | None


@dataclass
class Invoice:
    """What the finance software is given of one invoice (``data()``)."""

    rank: int
    number: str
    kind: str  # 380 invoice, 381 credit note
    frame: str
    issued: str
    received: str
    currency: str
    supplier: dict[str, Any]
    debtor: dict[str, Any]
    amounts: dict[str, str]
    vat: list[dict[str, str]]
    commitment: dict[str, str | None]
    lines: list[dict[str, Any]]
    statuses: list[Status]
    attachments: list[Attachment] = field(default_factory=list)
    chorus_id: int | None = None
    original_number: str | None = None
    payment_means: int | None = None

    def data(self) -> dict[str, Any]:
        """The invoice as JSON-ready data (attachments by name and digest, no paths)."""
        out = asdict(self)
        out["attachments"] = [
            {"kind": a.kind, "name": a.name, "mime_type": a.mime_type,
             "files": [{"name": f.name, "size": f.size, "sha256": f.sha256,
                        "content_type": f.content_type} for f in a.files],
             **({"facturx": a.facturx.summary()} if a.facturx else {})}
            for a in self.attachments]
        return out

    @property
    def document(self) -> File | None:
        """The invoice document itself (TypePJ 01), first file."""
        for attachment in self.attachments:
            if attachment.kind == INVOICE_DOCUMENT and attachment.files:
                return attachment.files[0]
        return None


@dataclass
class Reading:
    name: str
    invoices: list[Invoice]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


class _Where:
    """Problems said as ``file:line: element path: message``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[Problem] = []

    def say(self, element: etree._Element | None, message: str, line: int | None = None,
            path: str | None = None) -> None:
        if element is not None:
            line = line or element.sourceline  # type: ignore[assignment]
            path = path or _path(element)
        where = f"{self.name}:{line}" if line else self.name
        self.problems.append(Problem(f"{where}: {path}" if path else where, message))


def _path(element: etree._Element) -> str:
    parts = []
    node: etree._Element | None = element
    while node is not None:
        tag = str(node.tag)
        parent = node.getparent()
        if parent is not None and len(parent.findall(tag)) > 1:
            tag += f"[{parent.findall(tag).index(node) + 1}]"
        parts.append(tag)
        node = parent
    return "/".join(reversed(parts))


def read_pivot(source: Path | IO[bytes], workdir: Path, name: str | None = None,
               zip_limits: ZipLimits = ZIP_LIMITS) -> Reading:
    """Read a PIVOT file; ``workdir`` (made here) receives its attachments' files."""
    if isinstance(source, Path):
        name = name or source.name
        size = source.stat().st_size
        if size > MAX_PIVOT_BYTES:
            return Reading(name, [], [Problem(name, f"{size} bytes exceed the "
                                                    f"{MAX_PIVOT_BYTES} a PIVOT may take")])
        with source.open("rb") as stream:
            return read_pivot(stream, workdir, name, zip_limits)
    name = name or "pivot.xml"
    where = _Where(name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        head = source.read(256)
        encoding_of(head, ENCODINGS)
        parts = split(_Prefixed(head, source), workdir, max_skeleton=MAX_SKELETON_BYTES,
                      max_content=MAX_ATTACHMENT_BYTES)
        root = parse_bytes(parts.skeleton, max_bytes=MAX_SKELETON_BYTES, encodings=ENCODINGS)
    except ContentsError as exc:
        where.say(None, str(exc), exc.line)
        return Reading(name, [], where.problems)
    except XmlError as exc:
        where.say(None, str(exc), exc.line)
        return Reading(name, [], where.problems)
    if root.tag != "CPPFacturePivot":
        where.say(root, f"root element is {root.tag!r}; a PIVOT invoice is CPPFacturePivot "
                        f"(without namespace)")
        return Reading(name, [], where.problems)
    for problem in schema_problems(schema(), root):
        line, _, message = problem.partition(": ")
        where.say(None, message, int(line.removeprefix("line ") or 0) or None)
    if where.problems:
        return Reading(name, [], where.problems)
    invoices = _invoices(root, parts.contents, workdir, where, zip_limits)
    return Reading(name, invoices, where.problems)


class _Prefixed:
    """``head`` then the rest of ``stream``, as one readable stream."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head = head
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        return self.stream.read(size)


def _text(element: etree._Element, path: str) -> str | None:
    found = element.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _decimal(element: etree._Element, path: str) -> Decimal:
    # The schema has checked it is an xs:decimal.
    try:
        return Decimal(_text(element, path) or "0")
    except InvalidOperation:
        return Decimal(0)


def _invoices(root: etree._Element, contents: list[Content], workdir: Path, where: _Where,
              zip_limits: ZipLimits) -> list[Invoice]:
    batch = root.find("CPPFactures")
    assert batch is not None  # the schema requires it
    units = batch.findall("CPPFacturePivotUnitaire")
    counter = batch.get("Compteur")
    if counter is not None and int(counter) != len(units):
        where.say(batch, f"Compteur says {counter} invoice(s), the file holds {len(units)}")
    # The n-th Contenu of the file is the n-th taken out as it streamed.
    # (The list keeps lxml's proxies alive, so that ids stay theirs.)
    alive = list(root.iter("Contenu"))
    ranks = {id(element): n for n, element in enumerate(alive)}
    invoices = []
    for rank, unit in enumerate(units, 1):
        invoice = _invoice(rank, unit)
        _check_parties(unit, where)
        _check_amounts(unit, where)
        invoice.attachments = _attachments(unit, contents, ranks, workdir / f"facture-{rank}",
                                           where, zip_limits)
        _check_attachments(unit, invoice, where)
        invoices.append(invoice)
    return invoices


def _invoice(rank: int, unit: etree._Element) -> Invoice:
    supplier = unit.find("Fournisseur")
    debtor = unit.find("Debiteur")
    data = unit.find("DonneesFacture")
    assert supplier is not None and debtor is not None and data is not None
    chorus_id = _text(data, "IdCPRO")
    payment = _text(data, "ModePaiement/Code")
    return Invoice(
        rank=rank,
        number=_text(data, "Id") or "",
        kind=_text(data, "Type") or "",
        frame=_text(data, "Cadre") or "",
        issued=_text(data, "DateEmissionFacture") or "",
        received=_text(data, "DateReception") or "",
        currency=_text(data, "Devise") or "",
        supplier={"id_type": int(_text(supplier, "TypeIdentifiant") or 0),
                  "id": _text(supplier, "Identifiant"),
                  "name": _text(supplier, "RaisonSociale"),
                  "country": _text(supplier, "CodePays"),
                  "iban": _text(supplier, "ReferenceBancaire/Compte"),
                  "emission": _text(supplier, "ModeEmission")},
        debtor={"siret": _text(debtor, "Identifiant"), "name": _text(debtor, "Nom"),
                "service_code": _text(debtor, "CodeService"),
                "service_name": _text(debtor, "NomService")},
        amounts={"ht": str(_decimal(data, "Montants/MontantHT")),
                 "ttc": str(_decimal(data, "Montants/MontantTTC")),
                 "net": str(_decimal(data, "Montants/MontantNetAPayer"))},
        vat=[{"rate": str(_decimal(v, "Taux")), "base": str(_decimal(v, "BaseHt")),
              "amount": str(_decimal(v, "MontantTVA"))} for v in data.iterfind("TVAs/TVA")],
        commitment={"numero_marche": _text(data, "Engagement/NumeroMarche") or None,
                    "numero_engagement": _text(data, "Engagement/NumeroEngagement") or None},
        lines=[{"rank": int(line.get("NumOrdre", "0")),
                "product": _text(line, "ReferenceProduit"),
                "unit_price": str(_decimal(line, "PrixUnitaire")),
                "quantity": str(_decimal(line, "Quantite")),
                "ht": str(_decimal(line, "MontantHT")),
                "vat_rate": _text(line, "TauxTVA")} for line in data.iterfind("Lignes/Ligne")],
        statuses=[Status(_text(v, "DateStatut") or "", int(_text(v, "CodeStatut") or 0),
                         _text(v, "ComplementStatut"))
                  for v in unit.iterfind("CycleDeValidation/ValidationUnitaire")],
        chorus_id=int(chorus_id) if chorus_id else None,
        original_number=_text(data, "IdFactureOrigine"),
        payment_means=int(payment) if payment else None,
    )


def _check_parties(unit: etree._Element, where: _Where) -> None:
    debtor_id = unit.find("Debiteur/Identifiant")
    assert debtor_id is not None
    if said := siret_problem((debtor_id.text or "").strip()):
        where.say(debtor_id, f"the debtor's {said}")
    supplier = unit.find("Fournisseur")
    assert supplier is not None
    supplier_id = supplier.find("Identifiant")
    assert supplier_id is not None
    if _text(supplier, "TypeIdentifiant") == "1":
        if said := siret_problem((supplier_id.text or "").strip()):
            where.say(supplier_id, f"TypeIdentifiant 1 is a SIRET: the supplier's {said}")
    elif not (supplier_id.text or "").strip():
        where.say(supplier_id, "the supplier has no identifier")


def _off(a: Decimal, b: Decimal, terms: int = 1) -> bool:
    return abs(a - b) > CENT * max(terms, 1)


def _check_amounts(unit: etree._Element, where: _Where) -> None:
    data = unit.find("DonneesFacture")
    assert data is not None
    amounts = data.find("Montants")
    assert amounts is not None
    ht, ttc = _decimal(amounts, "MontantHT"), _decimal(amounts, "MontantTTC")
    net = _decimal(amounts, "MontantNetAPayer")
    vats = data.findall("TVAs/TVA")
    total_vat = Decimal(0)
    for vat in vats:
        base, rate = _decimal(vat, "BaseHt"), _decimal(vat, "Taux")
        amount = _decimal(vat, "MontantTVA")
        total_vat += amount
        expected = (base * rate / 100).quantize(Decimal("0.000001"))
        if _off(expected, amount):
            where.say(vat.find("MontantTVA"), f"MontantTVA {amount} is not BaseHt {base} × "
                                              f"Taux {rate} % = {expected}")
    if vats:
        bases = sum((_decimal(v, "BaseHt") for v in vats), Decimal(0))
        if _off(bases, ht, len(vats)):
            where.say(amounts.find("MontantHT"), f"MontantHT {ht} is not the sum of the VAT "
                                                 f"bases, {bases}")
        if _off(ht + total_vat, ttc, len(vats)):
            where.say(amounts.find("MontantTTC"), f"MontantTTC {ttc} is not MontantHT {ht} + "
                                                  f"VAT {total_vat} = {ht + total_vat}")
    elif _off(ht, ttc):
        where.say(amounts.find("MontantTTC"), f"MontantTTC {ttc} differs from MontantHT {ht} "
                                              f"and no VAT is given")
    if abs(net) > abs(ttc) + CENT:
        where.say(amounts.find("MontantNetAPayer"), f"MontantNetAPayer {net} exceeds "
                                                    f"MontantTTC {ttc}")
    lines = data.findall("Lignes/Ligne")
    for line in lines:
        price, quantity = _decimal(line, "PrixUnitaire"), _decimal(line, "Quantite")
        line_ht = _decimal(line, "MontantHT")
        if _off(price * quantity, line_ht):
            where.say(line.find("MontantHT"), f"MontantHT {line_ht} is not PrixUnitaire "
                                              f"{price} × Quantite {quantity} = "
                                              f"{price * quantity}")
    if lines:
        sum_lines = sum((_decimal(x, "MontantHT") for x in lines), Decimal(0))
        if _off(sum_lines, ht, len(lines)):
            where.say(amounts.find("MontantHT"), f"MontantHT {ht} is not the sum of the lines, "
                                                 f"{sum_lines}")


def _attachments(unit: etree._Element, contents: list[Content], ranks: dict[int, int],
                 folder: Path, where: _Where, zip_limits: ZipLimits) -> list[Attachment]:
    found = []
    for rank, pj in enumerate(unit.findall("PJ"), 1):
        name = (_text(pj, "NomPJ") or "").strip()
        kind = _text(pj, "TypePJ") or ""
        mime = (_text(pj, "MimeTypePJ") or "").strip()
        content_element = pj.find("Contenu")
        content = (contents[ranks[id(content_element)]]
                   if content_element is not None else None)
        target = folder / f"pj-{rank}"
        if content is None or content.size == 0:
            if not _text(pj, "IdUnique"):
                where.say(pj, "the attachment has neither Contenu nor IdUnique")
            found.append(Attachment(rank, kind, name, mime, ()))
            continue
        files = _unpacked(content, name, mime, target, where, content_element, zip_limits)
        reading = None
        if kind == INVOICE_DOCUMENT:
            reading = _facturx(files, where, content_element)
        found.append(Attachment(rank, kind, name, mime, tuple(files), reading))
    return found


def _unpacked(content: Content, name: str, mime: str, target: Path, where: _Where,
              element: etree._Element | None, zip_limits: ZipLimits) -> list[File]:
    with content.path.open("rb") as raw:
        head = raw.read(8)
    if is_zip(head):
        try:
            members = unpack(content.path, target, zip_limits)
        except ZipRefused as exc:
            where.say(element, f"the attachment {name!r} (a ZIP) is refused: {exc}")
            return []
        finally:
            content.path.unlink(missing_ok=True)
        return [File(m.name, m.path, m.size, m.sha256, _media_type(m.name, mime))
                for m in members]
    # Not wrapped: the file itself, under its declared name.
    if said := name_problem(name):
        where.say(element, f"the attachment's name {name!r} {said}")
        return []
    target.mkdir(parents=True, exist_ok=True)
    path = target / name
    shutil.move(content.path, path)
    return [File(name, path, content.size, _sha256(path), _media_type(name, mime))]


def _media_type(name: str, declared: str) -> str:
    guessed, _ = mimetypes.guess_type(name)
    return guessed or declared or "application/octet-stream"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _facturx(files: list[File], where: _Where,
             element: etree._Element | None) -> facturx.Reading | None:
    for file in files:
        if file.content_type != "application/pdf":
            continue
        reading = facturx.read(file.path)
        if reading is None:
            continue
        for problem in reading.problems:
            where.say(element, f"{file.name}: Factur-X: {problem}")
        return reading
    return None


def _check_attachments(unit: etree._Element, invoice: Invoice, where: _Where) -> None:
    documents = [a for a in invoice.attachments if a.kind == INVOICE_DOCUMENT]
    if len(documents) != 1:
        where.say(unit, f"an invoice has one invoice document (TypePJ 01), this one has "
                        f"{len(documents)}")
    for attachment in documents:
        cii = attachment.facturx
        if cii is None or cii.problems:
            continue
        for said in cii.disagreements(invoice.number, Decimal(invoice.amounts["ttc"]),
                                      invoice.currency):
            where.say(unit.find("DonneesFacture"), f"{attachment.name}: Factur-X: {said}")

