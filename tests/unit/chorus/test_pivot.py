"""PIVOT invoices read and judged: good ones read exactly, bad and hostile ones refused with
their reason, in bounded memory, with nothing written outside the work dir."""

from __future__ import annotations

import base64
import io
import random
import stat
import tracemalloc
import zipfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.chorus.pivot import Reading, read_pivot
from simulators.chorus_samples import Spec, cii_xml, invoice_pdf, pivot, pivot_xml, siret, unit_xml

DEBTOR = siret(7)


def spec(**changes: object) -> Spec:
    base = Spec(number="F-2026-0042", debtor_siret=DEBTOR, debtor_name="Commune de Plouha")
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def read(data: bytes, tmp_path: Path) -> Reading:
    source = tmp_path / "facture.xml"
    source.write_bytes(data)
    return read_pivot(source, tmp_path / "work")


def test_a_good_invoice_is_read_exactly(tmp_path: Path) -> None:
    given = spec(facturx=True, engagement="EJ-77", marche="M-2026-3", chorus_id=4242,
                 lines=[("Papier", Decimal("4.20"), Decimal("10")),
                        ("Encre", Decimal("31.05"), Decimal("3"))],
                 extra=[("devis.pdf", b"%PDF-1.4 devis signe")])
    reading = read(pivot(given), tmp_path)
    assert reading.problems == []
    [invoice] = reading.invoices
    assert (invoice.number, invoice.kind, invoice.chorus_id) == ("F-2026-0042", "380", 4242)
    assert invoice.debtor == {"siret": DEBTOR, "name": "Commune de Plouha",
                              "service_code": "FACTURES", "service_name": None}
    assert invoice.supplier["id"] == "32682006500083"
    assert invoice.amounts == {"ht": "135.15", "ttc": "162.18", "net": "162.18"}
    assert invoice.vat == [{"rate": "20", "base": "135.15", "amount": "27.03"}]
    assert invoice.commitment == {"numero_marche": "M-2026-3", "numero_engagement": "EJ-77"}
    assert [line["ht"] for line in invoice.lines] == ["42.00", "93.15"]
    document = invoice.document
    assert document is not None and document.path.read_bytes()[:5] == b"%PDF-"
    assert document.path.is_relative_to(tmp_path / "work")
    extra = invoice.attachments[1]
    assert (extra.kind, extra.files[0].name) == ("02", "devis.pdf")
    assert extra.files[0].path.read_bytes() == b"%PDF-1.4 devis signe"
    reading_cii = invoice.attachments[0].facturx
    assert reading_cii is not None and reading_cii.level == "minimum"
    assert (reading_cii.number, reading_cii.total) == ("F-2026-0042", Decimal("162.18"))
    data = invoice.data()
    assert data["attachments"][0]["facturx"]["total"] == "162.18"
    assert "path" not in str(data["attachments"])


def _zip(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return out.getvalue()


def _with_content(zip_bytes: bytes) -> bytes:
    """The good invoice whose first attachment's content is ``zip_bytes``."""
    text = pivot(spec()).decode()
    start = text.index("<Contenu>") + len("<Contenu>")
    end = text.index("</Contenu>")
    return (text[:start] + base64.b64encode(zip_bytes).decode() + text[end:]).encode()


def _replace(old: str, new: str, given: Spec | None = None) -> Callable[[], bytes]:
    def make() -> bytes:
        text = pivot(given or spec()).decode()
        assert old in text, old
        return text.replace(old, new, 1).encode()
    return make


def _symlink_zip() -> bytes:
    info = zipfile.ZipInfo("facture.pdf")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip([(info, b"/etc/passwd")])


def _lying_sizes_zip() -> bytes:
    """A member whose header says 10 bytes while it inflates to 10 MB."""
    raw = bytearray(_zip([("facture.pdf", b"\0" * 10_000_000)]))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature)
        raw[at + offset:at + offset + 4] = (10).to_bytes(4, "little")
    return bytes(raw)


XXE = ('<?xml version="1.0"?><!DOCTYPE CPPFacturePivot [<!ENTITY x SYSTEM '
       '"file:///etc/passwd">]><CPPFacturePivot>&x;</CPPFacturePivot>')
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;'
          '&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><CPPFacturePivot>&c;'
          '</CPPFacturePivot>')

# (case, the file, what the refusal must say)
BAD: list[tuple[str, Callable[[], bytes], str]] = [
    ("not xml", lambda: b"%PDF-1.7 this is not a PIVOT", "line 1"),
    ("empty", lambda: b"  \n", "empty"),
    ("truncated", lambda: pivot(spec())[:-400], "ends"),
    ("xxe", lambda: XXE.encode(), "DOCTYPE"),
    ("xxe in utf-16", lambda: XXE.replace('version="1.0"', 'version="1.0" encoding="UTF-16"')
     .encode("utf-16"), "UTF-16"),
    ("billion laughs", lambda: LAUGHS.encode(), "DOCTYPE"),
    ("xinclude", _replace("<Enveloppe>", '<Enveloppe><xi:include xmlns:xi='
                          '"http://www.w3.org/2001/XInclude" href="/etc/passwd"/>'), "XInclude"),
    ("wrong root", lambda: b"<?xml version='1.0'?><Facture><Id>1</Id></Facture>", "root element"),
    ("no debtor", lambda: pivot(spec()).replace(
        pivot(spec()).split(b"<Debiteur>")[1].split(b"</Debiteur>")[0], b"")
     .replace(b"<Debiteur></Debiteur>", b""), "Debiteur"),
    ("unknown invoice type", _replace("<Type>380</Type>", "<Type>999</Type>"), "Type"),
    ("currency in lower case", _replace("<Devise>EUR</Devise>", "<Devise>eur</Devise>"),
     "Devise"),
    ("amount with a comma", _replace("<MontantHT>241.00</MontantHT>",
                                     "<MontantHT>241,00</MontantHT>"), "MontantHT"),
    ("date not ISO", _replace("<DateEmissionFacture>2026-11-02",
                              "<DateEmissionFacture>02/11/2026"), "DateEmissionFacture"),
    ("debtor SIRET checksum", _replace(f"<Identifiant>{DEBTOR}</Identifiant>",
                                       f"<Identifiant>{DEBTOR[:-1]}"
                                       f"{(int(DEBTOR[-1]) + 1) % 10}</Identifiant>"),
     "debtor's SIRET"),
    ("supplier SIRET checksum", _replace("<Identifiant>32682006500083</Identifiant>",
                                         "<Identifiant>32682006500084</Identifiant>"),
     "supplier's SIRET"),
    ("TTC is not HT + VAT", _replace("<MontantTTC>289.20</MontantTTC>",
                                     "<MontantTTC>299.20</MontantTTC>"), "MontantTTC 299.20"),
    ("VAT is not base × rate", _replace("<MontantTVA>48.20</MontantTVA>",
                                        "<MontantTVA>40.20</MontantTVA>"), "MontantTVA 40.20"),
    ("lines do not add up", _replace("<MontantHT>241.00</MontantHT><TauxTVA>",
                                     "<MontantHT>251.00</MontantHT><TauxTVA>"), "sum of the lines"),
    ("net above TTC", _replace("<MontantNetAPayer>289.20", "<MontantNetAPayer>389.20"),
     "MontantNetAPayer 389.20"),
    ("counter disagrees", _replace('Compteur="1"', 'Compteur="2"'), "Compteur"),
    ("base64 with a bad character", lambda: _with_content(b"x").replace(b"<Contenu>",
                                                                       b"<Contenu>ab$d"),
     "not base64"),
    ("base64 cut short", lambda: _with_content(b"x").replace(b"</Contenu>", b"A</Contenu>"),
     "multiple of 4"),
    ("markup inside an attachment", lambda: _with_content(b"x").replace(
        b"</Contenu>", b"<b>hi</b></Contenu>"), "holds markup"),
    ("zip bomb", lambda: _with_content(_zip([("facture.pdf", b"\0" * 60_000_000)])),
     "compression bomb"),
    ("zip bomb with lying sizes", lambda: _with_content(_lying_sizes_zip()), "refused"),
    ("path in an attachment", lambda: _with_content(_zip([("../../etc/cron.d/x", b"x")])),
     "is a path"),
    ("absolute path in an attachment", lambda: _with_content(_zip([("/tmp/x.pdf", b"x")])),
     "is a path"),
    ("link in an attachment", lambda: _with_content(_symlink_zip()),
     "symbolic link"),
    ("member twice", lambda: _with_content(_zip([("a.pdf", b"1"), ("A.pdf", b"2")])),
     "twice"),
    ("too many members", lambda: _with_content(_zip([(f"{n}.pdf", b"x") for n in range(150)])),
     "members"),
    ("not a zip behind the ZIP magic", lambda: _with_content(b"PK\x03\x04broken"), "ZIP"),
    ("a path as attachment name", lambda: _with_content(b"%PDF-1.4 raw").replace(
        b"<NomPJ>F-2026-0042.pdf", b"<NomPJ>../../x.pdf"), "is a path"),
    ("no invoice document", _replace("<TypePJ>01</TypePJ>", "<TypePJ>02</TypePJ>"),
     "one invoice document"),
    ("factur-x CII invalid", lambda: pivot_xml(unit_xml(spec(), pdf=invoice_pdf(
        spec(), cii_xml(spec()).replace(b"<ram:GrandTotalAmount>289.20",
                                        b"<ram:GrandTotalAmount>beaucoup")))),
     "Factur-X"),
    ("factur-x CII disagrees", lambda: pivot_xml(unit_xml(spec(), pdf=invoice_pdf(
        spec(), cii_xml(spec()).replace(b"<ram:GrandTotalAmount>289.20",
                                        b"<ram:GrandTotalAmount>1289.20")))),
     "grand total 1289.20"),
    ("factur-x CII with a DTD", lambda: pivot_xml(unit_xml(spec(), pdf=invoice_pdf(
        spec(), cii_xml(spec()).replace(b"<rsm:CrossIndustryInvoice\n",
                                        b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
                                        b"<rsm:CrossIndustryInvoice\n")))),
     "DOCTYPE"),
]


def test_at_least_twenty_bad_invoices() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize(("case", "make", "said"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_invoice_is_refused_with_its_reason(tmp_path: Path, case: str,
                                                  make: Callable[[], bytes], said: str) -> None:
    reading = read(make(), tmp_path)
    assert reading.problems, f"{case}: not refused"
    text = "\n".join(f"{p.field}: {p.message}" for p in reading.problems)
    assert said in text, text
    assert all(p.field.startswith("facture.xml") for p in reading.problems)
    # Nothing written outside the work dir.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facture.xml", "work"]


def test_a_refusal_names_the_line_and_the_element(tmp_path: Path) -> None:
    data = _replace("<MontantTTC>289.20</MontantTTC>", "<MontantTTC>299.20</MontantTTC>")()
    line = data[:data.index(b"<MontantTTC>")].count(b"\n") + 1
    [problem] = read(data, tmp_path).problems
    assert problem.field == (f"facture.xml:{line}: CPPFacturePivot/CPPFactures/"
                             f"CPPFacturePivotUnitaire/DonneesFacture/Montants/MontantTTC")


def test_lines_are_kept_past_an_attachment(tmp_path: Path) -> None:
    """The skeleton keeps the line breaks of the base64 it leaves out."""
    data = _replace("<Devise>EUR</Devise>", "<Devise>eur</Devise>",
                    spec(extra=[("annexe.pdf", random.Random(1).randbytes(500_000))]))()
    # The PJ come after the Devise in the file: move the fault after them.
    data = data.replace(b"<Devise>eur</Devise>", b"<Devise>EUR</Devise>").replace(
        b"<TypeIdentifiant>1</TypeIdentifiant><Id>1100", b"<TypeIdentifiant>9</TypeIdentifiant>"
        b"<Id>1100")
    line = data[:data.index(b"<TypeIdentifiant>9")].count(b"\n") + 1
    assert line > 100
    [problem] = read(data, tmp_path).problems
    assert problem.field.startswith(f"facture.xml:{line}")


def test_memory_stays_flat_with_a_large_attachment(tmp_path: Path) -> None:
    big = spec(extra=[("plans.pdf", random.Random(2).randbytes(40 * 1024 * 1024))])
    source = tmp_path / "facture.xml"
    source.write_bytes(pivot(big))
    assert source.stat().st_size > 50_000_000
    tracemalloc.start()
    try:
        reading = read_pivot(source, tmp_path / "work")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reading.problems == []
    assert reading.invoices[0].attachments[1].files[0].size == 40 * 1024 * 1024
    assert peak < 24 * 1024 * 1024, peak


def test_a_pivot_on_one_line_keeps_each_attachment_its_own(tmp_path: Path) -> None:
    given = spec(extra=[("annexe-1.pdf", b"%PDF-1.4 one"), ("annexe-2.pdf", b"%PDF-1.4 two")])
    data = b"".join(pivot(given).split(b"\n"))
    reading = read(data, tmp_path)
    assert reading.problems == []
    files = [a.files[0] for a in reading.invoices[0].attachments]
    assert [f.name for f in files] == ["F-2026-0042.pdf", "annexe-1.pdf", "annexe-2.pdf"]
    assert [f.path.read_bytes() for f in files[1:]] == [b"%PDF-1.4 one", b"%PDF-1.4 two"]
