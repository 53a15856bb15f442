"""A Factur-X invoice document: the CII XML its PDF embeds, taken out and checked.

The ``factur-x`` package finds the embedded file (``factur-x.xml``, or ZUGFeRD's) and
knows the official XSDs of each profile; the XML first passes the broker's XML gate, so
an embedded file can no more reach a DTD or the network than any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import facturx
from lxml import etree
from pypdf import PdfReader

from broker.xmlsafe import XmlError, parse_bytes

MAX_XML_BYTES = 16 * 1024 * 1024
_EMBEDDED = frozenset({"factur-x.xml", "zugferd-invoice.xml"})
_NS = {"rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
       "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"}
_SUMMATION = ("rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeSettlement/"
              "ram:SpecifiedTradeSettlementHeaderMonetarySummation/")

# The package logs every step (a PDF without XML as a warning); what matters is returned.
logging.getLogger("factur-x").setLevel(logging.ERROR)


@dataclass
class Reading:
    file_name: str
    level: str | None = None
    number: str | None = None
    total: Decimal | None = None
    currency: str | None = None
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"file": self.file_name, "level": self.level, "number": self.number,
                "total": None if self.total is None else str(self.total),
                "currency": self.currency}

    def disagreements(self, number: str, total: Decimal, currency: str) -> list[str]:
        said = []
        if self.number is not None and self.number != number:
            said.append(f"the CII invoice number {self.number!r} is not the PIVOT's {number!r}")
        if self.total is not None and abs(self.total - total) > Decimal("0.01"):
            said.append(f"the CII grand total {self.total} is not the PIVOT's MontantTTC "
                        f"{total}")
        if self.currency is not None and self.currency != currency:
            said.append(f"the CII currency {self.currency} is not the PIVOT's {currency}")
        return said


def _embedded_xml(pdf: Path) -> tuple[str, bytes] | None:
    """The embedded Factur-X (or ZUGFeRD) file's name and bytes, taken out with pypdf
    (its streams' inflation is bounded) rather than by the package, which would parse
    them with lxml's default parser before the gate sees them."""
    with pdf.open("rb") as stream:
        for attachment in PdfReader(stream).attachment_list:
            if attachment.name.lower() in _EMBEDDED and attachment.content:
                return attachment.name, attachment.content
    return None


def read(pdf: Path) -> Reading | None:
    """The embedded CII of ``pdf``, checked; None when the PDF embeds none."""
    try:
        found = _embedded_xml(pdf)
    except Exception:  # pypdf raises many kinds on a broken PDF
        return None  # not a PDF that can be read: no Factur-X in it to judge
    if found is None:
        return None
    name, xml = found
    reading = Reading(str(name))
    try:
        root = parse_bytes(xml, max_bytes=MAX_XML_BYTES)
    except XmlError as exc:
        at = f"line {exc.line}: " if exc.line else ""
        reading.problems.append(f"{name}: {at}{exc}")
        return reading
    try:
        flavor = facturx.get_flavor(root)
        reading.level = facturx.get_level(root, flavor)
        facturx.xml_check_xsd(root, flavor=flavor, level=reading.level)
    except Exception as exc:  # the package raises plain Exception for an invalid file
        reading.problems.append(f"{name}: {' '.join(str(exc).split())}")
        return reading
    reading.number = _text(root, "rsm:ExchangedDocument/ram:ID")
    reading.currency = _text(root, "rsm:SupplyChainTradeTransaction/"
                                   "ram:ApplicableHeaderTradeSettlement/ram:InvoiceCurrencyCode")
    total = _text(root, _SUMMATION + "ram:GrandTotalAmount")
    try:
        reading.total = Decimal(total) if total is not None else None
    except InvalidOperation:
        reading.problems.append(f"{name}: GrandTotalAmount {total!r} is not a number")
    return reading


def _text(root: etree._Element, path: str) -> str | None:
    found = root.find(path, _NS)
    return found.text.strip() if found is not None and found.text else None
