"""Invoices as Chorus Pro serves them: PIVOT XML with ZIP-wrapped base64 attachments, the
invoice's PDF (plain or Factur-X with its CII XML), and valid SIRETs.

Written by the project (the simulator's invoice store and the tests build from here); the
AIFE's samples are only read by the conformance tests.
"""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from xml.sax.saxutils import escape

import facturx

from broker.ids import luhn_ok
from connectors.textpdf import simple_pdf

CENTS = Decimal("0.01")


def siret(n: int, siren: str | None = None) -> str:
    """A SIRET whose checksum holds, different for each ``n`` (and a SIREN when given)."""
    base = siren or f"2{n % 10**7:07d}"
    if siren is None:
        base += next(str(d) for d in range(10) if luhn_ok(base + str(d)))
    nic = f"{n % 10**4:04d}"
    return base + nic + next(str(d) for d in range(10) if luhn_ok(base + nic + str(d)))


def zipped(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return out.getvalue()


@dataclass
class Spec:
    """One invoice; amounts computed from its lines unless told otherwise."""

    number: str
    debtor_siret: str
    supplier_siret: str = "32682006500083"
    supplier_name: str = "SARL Fournitures de l'Ouest"
    debtor_name: str = "Commune"
    service_code: str | None = "FACTURES"
    lines: list[tuple[str, Decimal, Decimal]] = field(
        default_factory=lambda: [("Fournitures", Decimal("120.50"), Decimal("2"))])
    vat_rate: Decimal = Decimal("20")
    engagement: str | None = "EJ-2026-0001"
    marche: str | None = None
    issued: date = date(2026, 11, 2)
    kind: str = "380"
    chorus_id: int | None = None
    status_code: int = 3
    facturx: bool = False
    extra: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def ht(self) -> Decimal:
        return sum((price * qty for _, price, qty in self.lines), Decimal(0)).quantize(CENTS)

    @property
    def vat(self) -> Decimal:
        return (self.ht * self.vat_rate / 100).quantize(CENTS, ROUND_HALF_UP)

    @property
    def ttc(self) -> Decimal:
        return self.ht + self.vat


def cii_xml(spec: Spec) -> bytes:
    """A Factur-X MINIMUM CII of the invoice."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryInvoice
 xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
 xmlns:qdt="urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
 xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
 xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100">
<rsm:ExchangedDocumentContext><ram:GuidelineSpecifiedDocumentContextParameter>
<ram:ID>urn:factur-x.eu:1p0:minimum</ram:ID></ram:GuidelineSpecifiedDocumentContextParameter>
</rsm:ExchangedDocumentContext>
<rsm:ExchangedDocument><ram:ID>{escape(spec.number)}</ram:ID>
<ram:TypeCode>{spec.kind}</ram:TypeCode><ram:IssueDateTime>
<udt:DateTimeString format="102">{spec.issued:%Y%m%d}</udt:DateTimeString></ram:IssueDateTime>
</rsm:ExchangedDocument>
<rsm:SupplyChainTradeTransaction>
<ram:ApplicableHeaderTradeAgreement>
<ram:SellerTradeParty><ram:Name>{escape(spec.supplier_name)}</ram:Name>
<ram:SpecifiedLegalOrganization><ram:ID schemeID="0002">{spec.supplier_siret[:9]}</ram:ID>
</ram:SpecifiedLegalOrganization><ram:PostalTradeAddress><ram:CountryID>FR</ram:CountryID>
</ram:PostalTradeAddress></ram:SellerTradeParty>
<ram:BuyerTradeParty><ram:Name>{escape(spec.debtor_name)}</ram:Name></ram:BuyerTradeParty>
</ram:ApplicableHeaderTradeAgreement>
<ram:ApplicableHeaderTradeDelivery/>
<ram:ApplicableHeaderTradeSettlement>
<ram:InvoiceCurrencyCode>EUR</ram:InvoiceCurrencyCode>
<ram:SpecifiedTradeSettlementHeaderMonetarySummation>
<ram:TaxBasisTotalAmount>{spec.ht}</ram:TaxBasisTotalAmount>
<ram:TaxTotalAmount currencyID="EUR">{spec.vat}</ram:TaxTotalAmount>
<ram:GrandTotalAmount>{spec.ttc}</ram:GrandTotalAmount>
<ram:DuePayableAmount>{spec.ttc}</ram:DuePayableAmount>
</ram:SpecifiedTradeSettlementHeaderMonetarySummation>
</ram:ApplicableHeaderTradeSettlement>
</rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>""".encode()


def invoice_pdf(spec: Spec, cii: bytes | None = None) -> bytes:
    """The invoice as a person reads it; Factur-X (with ``cii``, else the spec's) when asked."""
    pdf = simple_pdf([f"Facture {spec.number}", f"Fournisseur {spec.supplier_name} "
                      f"({spec.supplier_siret})", f"Destinataire {spec.debtor_name} "
                      f"({spec.debtor_siret})", f"Montant HT {spec.ht} EUR",
                      f"TVA {spec.vat} EUR", f"Montant TTC {spec.ttc} EUR"])
    if not spec.facturx and cii is None:
        return pdf
    out: bytes = facturx.generate_from_binary(pdf, cii or cii_xml(spec), check_xsd=False)
    return out


def _pj(rank: int, name: str, kind: str, mime: str, data: bytes) -> str:
    content = base64.b64encode(zipped(name, data)).decode()
    wrapped = "\n".join(content[i:i + 76] for i in range(0, len(content), 76))
    return (f'<PJ NumOrdre="{rank}"><IdOriginal>{rank}</IdOriginal><Contenu>{wrapped}'
            f"</Contenu><NomPJ>{escape(name)}</NomPJ><TypePJ>{kind}</TypePJ>"
            f"<MimeTypePJ>{mime}</MimeTypePJ></PJ>")


def unit_xml(spec: Spec, rank: int = 1, pdf: bytes | None = None) -> str:
    lines = "".join(
        f'<Ligne NumOrdre="{n}"><ReferenceProduit>{escape(label)}</ReferenceProduit>'
        f"<PrixUnitaire>{price}</PrixUnitaire><Quantite>{qty}</Quantite>"
        f"<MontantHT>{(price * qty).quantize(CENTS)}</MontantHT>"
        f"<TauxTVA>{spec.vat_rate}</TauxTVA></Ligne>"
        for n, (label, price, qty) in enumerate(spec.lines, 1))
    engagement = ""
    if spec.engagement or spec.marche:
        engagement = ("<Engagement>"
                      + (f"<NumeroMarche>{escape(spec.marche)}</NumeroMarche>" if spec.marche
                         else "")
                      + (f"<NumeroEngagement>{escape(spec.engagement)}</NumeroEngagement>"
                         if spec.engagement else "") + "</Engagement>")
    service = (f"<CodeService>{escape(spec.service_code)}</CodeService>"
               if spec.service_code else "")
    chorus_id = f"<IdCPRO>{spec.chorus_id}</IdCPRO>" if spec.chorus_id else ""
    pjs = [_pj(1, f"{spec.number}.pdf", "01", "application/pdf",
               pdf if pdf is not None else invoice_pdf(spec))]
    pjs += [_pj(n, name, "02", "application/pdf", data)
            for n, (name, data) in enumerate(spec.extra, 2)]
    return f"""<CPPFacturePivotUnitaire NumOrdre="{rank}">
<Fournisseur><TypeIdentifiant>1</TypeIdentifiant><Identifiant>{spec.supplier_siret}</Identifiant>
<RaisonSociale>{escape(spec.supplier_name)}</RaisonSociale><CodePays>FR</CodePays>
<ReferenceBancaire Type="IBAN"><Compte>FR7630001007941234567890185</Compte></ReferenceBancaire>
<ModeEmission>flux</ModeEmission></Fournisseur>
<Debiteur><TypeIdentifiant>1</TypeIdentifiant><Identifiant>{spec.debtor_siret}</Identifiant>
<Nom>{escape(spec.debtor_name)}</Nom>{service}</Debiteur>
<DonneesFacture><Id>{escape(spec.number)}</Id>{chorus_id}<Type>{spec.kind}</Type><Cadre>A1</Cadre>
<DateEmissionFacture>{spec.issued.isoformat()}</DateEmissionFacture>
<ModePaiement><Code>30</Code><Libelle>Virement</Libelle></ModePaiement>
<DateReception>{spec.issued.isoformat()}</DateReception><Devise>EUR</Devise>
<Montants><MontantHT>{spec.ht}</MontantHT><MontantTTC>{spec.ttc}</MontantTTC>
<MontantNetAPayer>{spec.ttc}</MontantNetAPayer></Montants>
<TVAs><TVA><Taux>{spec.vat_rate}</Taux><BaseHt>{spec.ht}</BaseHt><MontantTVA>{spec.vat}</MontantTVA>
</TVA></TVAs>
{engagement}<Lignes>{lines}</Lignes></DonneesFacture>
{"".join(pjs)}
<CycleDeValidation><ValidationUnitaire><DateStatut>{spec.issued.isoformat()}</DateStatut>
<CodeStatut>{spec.status_code:02d}</CodeStatut>
<ComplementStatut>Mise à disposition</ComplementStatut><ProducteurStatut>
<TypeIdentifiant>1</TypeIdentifiant><Id>11000201100044</Id><RaisonSociale>AIFE</RaisonSociale>
<CodePays>FR</CodePays></ProducteurStatut></ValidationUnitaire></CycleDeValidation>
</CPPFacturePivotUnitaire>"""


def pivot_xml(*units: str, flow_id: str = "CPP0020036000000000000001",
              produced: date = date(2026, 11, 2)) -> bytes:
    """A CPPFacturePivot holding the given ``unit_xml`` invoices."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<CPPFacturePivot>
<Enveloppe><EnveloppeUnitaire NumOrdre="1">
<Parametres><ParametreIndiv NumOrdre="0001"><Code>DtPrd</Code>
<Valeurparametre>{produced.isoformat()}</Valeurparametre></ParametreIndiv>
<ParametreIndiv NumOrdre="0002"><Code>IdFlx</Code><Valeurparametre>{flow_id}</Valeurparametre>
</ParametreIndiv></Parametres>
<Partenaires><Recepteur><Id>DEMAT</Id><Libelle>demat-broker</Libelle></Recepteur><Emetteur>
<Id>CPP001</Id><Libelle>Application Chorus Portail Pro</Libelle></Emetteur></Partenaires>
</EnveloppeUnitaire></Enveloppe>
<CPPFactures Compteur="{len(units)}">
{"".join(units)}
</CPPFactures>
</CPPFacturePivot>""".encode()


def pivot(spec: Spec) -> bytes:
    return pivot_xml(unit_xml(spec))
