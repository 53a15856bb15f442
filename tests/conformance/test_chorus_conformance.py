"""Chorus Pro PIVOT invoices against the AIFE's official schemas and Pastell's real samples
(``../shared/reference/chorus/``).

Every sample is read and its fields match what an independent reading of the file says;
the project's verdict agrees with the official V2_02 schema's on every sample and on
variants of them: what the official schema refuses is refused, what it accepts is
accepted (none of these variants breaks a business rule).
"""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from connectors.base import PermanentError
from connectors.chorus.models import (
    History,
    ProcessAnswer,
    ProcessRequest,
    SearchPage,
    SearchRequest,
    loads,
)
from connectors.chorus.pivot import read_pivot
from simulators.chorus_samples import Spec, pivot, siret

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "chorus"
SAMPLES = REFERENCE / "samples-pastell"
XSD = REFERENCE / "xsd-pivot"

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(),
    reason=f"SKIPPED, not passed: the Chorus reference folder {REFERENCE} is absent")

PIVOTS = ["CPPFichierFormatPivot.xml", "facture_1221.xml", "facture_1222.xml",
          "facture_1223.xml"]


def official(version: str = "V2_02") -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD / f"CPPFacturePivot_{version}.xsd")))


@pytest.mark.parametrize("name", PIVOTS)
def test_every_sample_is_read_as_the_file_says(tmp_path: Path, name: str) -> None:
    path = SAMPLES / name
    tree = etree.parse(str(path))
    for version in ("V1_22", "V2_02"):
        assert official(version).validate(tree)
    reading = read_pivot(path, tmp_path / "work")
    assert reading.problems == []
    units = tree.findall("CPPFactures/CPPFacturePivotUnitaire")
    assert len(reading.invoices) == len(units)
    for unit, invoice in zip(units, reading.invoices, strict=True):
        data = unit.find("DonneesFacture")
        assert invoice.number == data.findtext("Id")
        assert invoice.debtor["siret"] == unit.findtext("Debiteur/Identifiant")
        assert invoice.debtor["service_code"] == unit.findtext("Debiteur/CodeService")
        assert invoice.supplier["id"] == unit.findtext("Fournisseur/Identifiant")
        assert Decimal(invoice.amounts["ttc"]) == Decimal(data.findtext("Montants/MontantTTC"))
        assert Decimal(invoice.amounts["ht"]) == Decimal(data.findtext("Montants/MontantHT"))
        assert invoice.commitment["numero_engagement"] == data.findtext(
            "Engagement/NumeroEngagement")
        assert len(invoice.lines) == len(data.findall("Lignes/Ligne"))
        assert [s.code for s in invoice.statuses] == [
            int(c.text) for c in unit.iterfind("CycleDeValidation/ValidationUnitaire/CodeStatut")]
        pjs = unit.findall("PJ")
        assert [(a.kind, a.mime_type) for a in invoice.attachments] == [
            (p.findtext("TypePJ"), p.findtext("MimeTypePJ")) for p in pjs]
        for pj, attachment in zip(pjs, invoice.attachments, strict=True):
            # Each Contenu is base64 of a ZIP: the files are its members, byte for byte.
            archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(pj.findtext("Contenu"))))
            assert {f.name: f.path.read_bytes() for f in attachment.files} == {
                member: archive.read(member) for member in archive.namelist()}


Mutation = Callable[[etree._Element], None]


def _remove(path: str) -> Mutation:
    def mutate(root: etree._Element) -> None:
        found = root.find(path)
        assert found is not None, path
        found.getparent().remove(found)
    return mutate


def _set(path: str, text: str) -> Mutation:
    def mutate(root: etree._Element) -> None:
        found = root.find(path)
        assert found is not None, path
        found.text = text
    return mutate


def _insert_after(path: str, tag: str, text: str) -> Mutation:
    def mutate(root: etree._Element) -> None:
        found = root.find(path)
        assert found is not None, path
        new = etree.Element(tag)
        new.text = text
        found.addnext(new)
    return mutate


def _swap(path: str) -> Mutation:
    """The element moved after its next sibling (order broken)."""
    def mutate(root: etree._Element) -> None:
        found = root.find(path)
        assert found is not None, path
        following = found.getnext()
        following.addnext(found)
    return mutate


U = "CPPFactures/CPPFacturePivotUnitaire"
MUTATIONS: dict[str, Mutation] = {
    "no envelope": _remove("Enveloppe"),
    "no supplier": _remove(f"{U}/Fournisseur"),
    "no invoice data": _remove(f"{U}/DonneesFacture"),
    "no attachment": lambda r: [r.find(U).remove(p) for p in r.find(U).findall("PJ")],
    "one parameter": _remove("Enveloppe/EnveloppeUnitaire/Parametres/ParametreIndiv"),
    "parameter code of 3": _set("Enveloppe/EnveloppeUnitaire/Parametres/ParametreIndiv/Code",
                                "Dat"),
    "partner id too long": _set("Enveloppe/EnveloppeUnitaire/Partenaires/Recepteur/Id",
                                "SEI0000001"),
    "supplier id type 8": _set(f"{U}/Fournisseur/TypeIdentifiant", "8"),
    "country of 3": _set(f"{U}/Fournisseur/CodePays", "FRA"),
    "emission mode unknown": _set(f"{U}/Fournisseur/ModeEmission", "courrier"),
    "debtor id type 2": _set(f"{U}/Debiteur/TypeIdentifiant", "2"),
    "debtor SIRET of 13": _set(f"{U}/Debiteur/Identifiant", "2193005300001"),
    "number of 21": _set(f"{U}/DonneesFacture/Id", "A" * 21),
    "type 382": _set(f"{U}/DonneesFacture/Type", "382"),
    "frame A11": _set(f"{U}/DonneesFacture/Cadre", "A11"),
    "frame A26": _set(f"{U}/DonneesFacture/Cadre", "A26"),
    "date not a date": _set(f"{U}/DonneesFacture/DateEmissionFacture", "2015-13-45"),
    "payment means 11": _set(f"{U}/DonneesFacture/ModePaiement/Code", "11"),
    "currency of 2": _set(f"{U}/DonneesFacture/Devise", "EU"),
    "amount not decimal": _set(f"{U}/DonneesFacture/Montants/MontantHT", "3 245"),
    "no TTC": _remove(f"{U}/DonneesFacture/Montants/MontantTTC"),
    "order broken": _swap(f"{U}/DonneesFacture/Type"),
    "unknown element": _insert_after(f"{U}/DonneesFacture/Devise", "Remise", "10"),
    "engagement of 51": _set(f"{U}/DonneesFacture/Engagement/NumeroEngagement", "9" * 51),
    "attachment kind 03": _set(f"{U}/PJ/TypePJ", "03"),
    "attachment name of 51": _set(f"{U}/PJ/NomPJ", "a" * 47 + ".pdf"),
    "status code negative": _set(f"{U}/CycleDeValidation/ValidationUnitaire/CodeStatut", "-1"),
    "line without its number": lambda r: r.find(f"{U}/DonneesFacture/Lignes/Ligne").attrib.pop(
        "NumOrdre"),
    # Accepted by the official schema: accepted here too.
    "with IdCPRO": _insert_after(f"{U}/DonneesFacture/Id", "IdCPRO", "1221"),
    "with DateLivraison": _insert_after(f"{U}/DonneesFacture/DateEmissionFacture",
                                        "DateLivraison", "2015-08-18"),
    "resent as completed": _insert_after(f"{U}/DonneesFacture/Id", "Renvoi", "Complétée"),
    "without validation cycle": _remove(f"{U}/CycleDeValidation"),
    "without lines": _remove(f"{U}/DonneesFacture/Lignes"),
    "without engagement": _remove(f"{U}/DonneesFacture/Engagement"),
    "frame A25": _set(f"{U}/DonneesFacture/Cadre", "A25"),
    "credit note": _set(f"{U}/DonneesFacture/Type", "381"),
    "payment by card": _set(f"{U}/DonneesFacture/ModePaiement/Code", "48"),
}


@pytest.mark.parametrize("case", MUTATIONS)
def test_the_verdict_agrees_with_the_official_schema(tmp_path: Path, case: str) -> None:
    tree = etree.parse(str(SAMPLES / "facture_1221.xml"))
    MUTATIONS[case](tree.getroot())
    data = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    source = tmp_path / "facture.xml"
    source.write_bytes(data)
    expected = official().validate(etree.fromstring(data))
    reading = read_pivot(source, tmp_path / "work")
    assert reading.ok == expected, reading.problems


def test_both_verdicts_are_seen() -> None:
    """The variants are not all refused nor all accepted by the official schema."""
    verdicts = set()
    for mutate in MUTATIONS.values():
        tree = etree.parse(str(SAMPLES / "facture_1221.xml"))
        mutate(tree.getroot())
        verdicts.add(official().validate(tree))
    assert verdicts == {True, False}


def test_what_the_project_builds_the_official_schema_accepts(tmp_path: Path) -> None:
    built = pivot(Spec(number="F-1", debtor_siret=siret(3), facturx=True,
                       extra=[("bon.pdf", b"%PDF-1.4")]))
    for version in ("V1_22", "V2_02"):
        assert official(version).validate(etree.fromstring(built))


# Each JSON sample and the model the client reads it with.
JSON_SAMPLES = {
    "CPPListeFactures.json": SearchPage,
    "CPPHistoStatutFacture.json": History,
    "CPPResultStatutOK.json": ProcessAnswer,
    "Traiter-facture-recue-output.json": ProcessAnswer,
    "Traiter-facture-recue.json": ProcessRequest,
    "Rechercher-facture-par-recipiendaire.json": SearchRequest,
}


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {k[:1].lower() + k[1:]: _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


@pytest.mark.parametrize("name", JSON_SAMPLES)
def test_every_json_sample_is_parsed_exactly(name: str) -> None:
    text = (SAMPLES / name).read_text(encoding="utf-8")
    read = JSON_SAMPLES[name].model_validate(loads(text))
    # Every key the sample has, with its value (amounts as exact decimals), nothing else.
    assert read.model_dump(mode="python", exclude_unset=True) == _camel(loads(text))


def test_an_old_example_with_leading_zeros_is_read_as_its_numbers() -> None:
    request = SearchRequest.model_validate(loads(
        (SAMPLES / "Rechercher-facture-par-recipiendaire.json").read_text(encoding="utf-8")))
    assert (request.idFournisseur, request.idDestinataire) == (115552, 2015)
    assert request.statuses == ["MISE_EN_PAIEMENT"]
    assert request.nbResultatsParPage == 50


def test_the_error_samples_are_told_as_the_client_tells_them() -> None:
    from connectors.chorus.client import StatusInconsistent, _coded

    ko = loads((SAMPLES / "CPPResultStatutKO.json").read_text(encoding="utf-8"))
    with pytest.raises(StatusInconsistent, match="20002: Incohérence"):
        _coded(ko, "traiter/recue")
    functional = loads((SAMPLES / "Traiter-facture-recue-output-error.json")
                       .read_text(encoding="utf-8"))
    with pytest.raises(PermanentError, match=r"GDP_MSG_11\.008 La demande de paiement"):
        _coded(functional, "traiter/recue")
    listed = SearchPage.model_validate(loads((SAMPLES / "CPPListeFactures.json")
                                             .read_text(encoding="utf-8")))
    assert [(i.idFacture, i.statut) for i in listed.listeFactures] == [
        (1221, "MISE_A_DISPOSITION"), (1222, "MISE_A_DISPOSITION_COMPTABLE"),
        (1223, "COMPTABILISEE"), (1224, "DEPOSEE")]
    assert listed.listeFactures[0].montantAPayer == Decimal("9822.5")
