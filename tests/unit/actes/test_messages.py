from __future__ import annotations

import datetime as dt

import pytest

from broker.xmlsafe import XmlError, parse_bytes
from connectors.actes.messages import (
    BY_ROOT,
    MESSAGE_TYPES,
    Acte,
    AnomalieActe,
    AnomalieEnveloppe,
    ARActe,
    DonneesActe,
    EnveloppeMISILLCL,
    read_message,
    to_xml,
)
from connectors.actes.problems import MessageError
from connectors.actes.schema import violations
from connectors.actes.xmlbind import ACTES_NS, ENCODINGS, INSEE_NS, ActesModel
from tests.unit.actes.factory import ID_ACTE, acte, every_message

MESSAGES = every_message()


def test_every_message_type_is_covered() -> None:
    assert {type(m) for m in MESSAGES} == set(MESSAGE_TYPES)
    assert set(BY_ROOT) == {cls.ROOT for cls in MESSAGE_TYPES}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("encoding", ["ISO-8859-1", "UTF-8"])
def test_build_then_read_gives_the_same_message(message: ActesModel, encoding: str) -> None:
    data = to_xml(message, encoding)
    assert data.startswith(f"<?xml version='1.0' encoding='{encoding}'?>".encode())
    assert read_message(data) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_what_is_built_passes_the_project_schema(message: ActesModel) -> None:
    assert violations(parse_bytes(to_xml(message), encodings=ENCODINGS)) == []


def test_namespaces_and_qualified_attributes() -> None:
    root = parse_bytes(to_xml(every_message()[-4]), encodings=ENCODINGS)  # EnveloppeCLMISILL
    assert root.tag == f"{{{ACTES_NS}}}EnveloppeCLMISILL"
    idcl = root.find(f"{{{ACTES_NS}}}Emetteur/{{{ACTES_NS}}}IDCL")
    assert idcl is not None
    assert idcl.get(f"{{{INSEE_NS}}}SIREN") == "214400152"
    assert idcl.get(f"{{{ACTES_NS}}}Departement") == "044"
    assert root.nsmap["actes"] == ACTES_NS


def test_text_outside_latin1_survives_iso_8859_1() -> None:
    data = to_xml(acte(objet="Œuvre d’art – 10 €"), "ISO-8859-1")
    assert b"&#338;uvre" in data
    read = read_message(data)
    assert isinstance(read, Acte) and read.objet == "Œuvre d’art – 10 €"


def test_document_papier_none_is_nil() -> None:
    data = to_xml(acte(document_papier=None))
    assert b'<actes:DocumentPapier xsi:nil="true"/>' in data
    read = read_message(data)
    assert isinstance(read, Acte) and read.document_papier is None


def test_act_codes_and_count() -> None:
    read = acte(nombre_annexes=None)
    assert read.nombre_annexes == 1
    assert read.classification == "1.1.2" and read.codes == (1, 1, 2)
    assert DonneesActe.matiere_fields((7, 10, 2)) == {"matiere1": 7, "matiere2": 10, "matiere3": 2}


def _anomaly(nature: str, detail: str) -> bytes:
    return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<actes:AnomalieEnveloppe xmlns:actes="{ACTES_NS}" xmlns:insee="{INSEE_NS}">
  <actes:Date>2024-03-20</actes:Date>
  <actes:Nature>{nature}</actes:Nature>
  <actes:Detail>{detail}</actes:Detail>
  <actes:EnveloppeRecue>
    <actes:Emetteur>
      <actes:IDCL actes:Arrondissement="1" actes:Departement="044" actes:Nature="31"
                  insee:SIREN="214400152"/>
    </actes:Emetteur>
    <actes:AdressesRetour><actes:Email>a@b.fr</actes:Email></actes:AdressesRetour>
    <actes:FormulairesEnvoyes>
      <actes:Formulaire><actes:NomFichier>x.xml</actes:NomFichier></actes:Formulaire>
    </actes:FormulairesEnvoyes>
  </actes:EnveloppeRecue>
</actes:AnomalieEnveloppe>""".encode("iso-8859-1")


def test_codes_outside_the_schema_are_kept() -> None:
    read = read_message(_anomaly("999", "ODT-VERIF-17 : transaction envoyée inconnue"))
    assert isinstance(read, AnomalieEnveloppe)
    assert read.nature == "999" and read.detail_code == "ODT-VERIF-17"
    assert read.detail and "envoyée" in read.detail
    assert read.enveloppe_recue and read.enveloppe_recue.emetteur.siren == "214400152"


def test_lenient_reading() -> None:
    # Unqualified attributes, an acknowledgement echoing Acte instead of ActeRecu, an
    # empty date, a skipped matière level and unknown elements.
    data = f"""<?xml version="1.0" encoding="UTF-8"?>
<ARActe xmlns="{ACTES_NS}" IDActe="{ID_ACTE}" DateReception="2024-03-20">
  <Acte Date="2024-03-01" NumeroInterne="2024_042" CodeNatureActe="1">
    <CodeMatiere1 CodeMatiere="1"/><CodeMatiere2 CodeMatiere="1"/>
    <CodeMatiere3 CodeMatiere="1"/><CodeMatiere5 CodeMatiere="4"/>
    <Objet>Délibération</Objet>
    <ClassificationDateVersion> 2023-06-01 </ClassificationDateVersion>
    <Document><NomFichier>a.pdf</NomFichier></Document>
    <Annexes Nombre="0"/>
    <Inconnu/>
  </Acte>
  <ClassificationDateVersionEnCours/>
</ARActe>""".encode()
    read = read_message(data)
    assert isinstance(read, ARActe)
    assert read.id_acte == ID_ACTE and read.date_reception == dt.date(2024, 3, 20)
    assert read.classification_date_en_cours is None
    assert read.acte_recu is not None
    assert read.acte_recu.classification == "1.1.1.4" and read.acte_recu.matiere4 is None
    assert read.acte_recu.objet == "Délibération"


def test_a_message_missing_what_its_type_needs_names_the_xml_path() -> None:
    data = to_xml(acte()).replace(b' actes:NumeroInterne="2024_042"', b"")
    data = data.replace(b"<actes:Objet>", b"<actes:Object>").replace(
        b"</actes:Objet>", b"</actes:Object>"
    )
    with pytest.raises(MessageError) as caught:
        read_message(data)
    assert {(p.field, p.message) for p in caught.value.problems} == {
        ("@NumeroInterne", "is required"),
        ("Objet", "is required"),
    }


def test_a_bad_value_names_the_nested_path() -> None:
    data = to_xml(every_message()[3]).replace(
        b'actes:CodeMatiere="1"/>', b'actes:CodeMatiere="x"/>', 1
    )
    with pytest.raises(MessageError) as caught:
        read_message(data)
    [problem] = caught.value.problems
    assert problem.field == "ActeRecu/CodeMatiere1/@CodeMatiere"
    assert "valid integer" in problem.message and "'x'" in problem.message


def test_nested_list_items_are_numbered() -> None:
    data = to_xml(every_message()[-3]).replace(b"<actes:NomFichier>", b"<actes:Name>", 1)
    data = data.replace(b"</actes:NomFichier>", b"</actes:Name>", 1)
    with pytest.raises(MessageError) as caught:
        read_message(data)
    assert caught.value.problems[0].field == "FormulairesEnvoyes/Formulaire[1]/NomFichier"


def test_unknown_root_is_refused() -> None:
    with pytest.raises(MessageError, match="unknown ACTES message: root element 'Facture'"):
        read_message(b"<Facture/>")


def test_hostile_xml_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">'
        b'<!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;">]><actes:Annulation/>'
    )
    with pytest.raises(XmlError, match="DOCTYPE declaration not accepted"):
        read_message(bomb)


def test_malformed_xml_says_the_line() -> None:
    data = b'<?xml version="1.0"?>\n<a:Annulation xmlns:a="x">\n<oops>\n</a:Annulation>\n'
    with pytest.raises(XmlError) as caught:
        read_message(data)
    assert caught.value.line == 4
    assert "line 4" in str(caught.value)


def test_encoding_must_be_one_acte_uses() -> None:
    with pytest.raises(ValueError, match="UTF-8, ISO-8859-1"):
        to_xml(acte(), "UTF-16")
    with pytest.raises(TypeError, match="not a message"):
        to_xml(acte().document)


def test_prefecture_envelope_emitter() -> None:
    read = read_message(to_xml(every_message()[-2]))
    assert isinstance(read, EnveloppeMISILLCL)
    assert read.emitter is not None and read.emitter.departement == "02A"


def test_anomaly_detail_code_is_optional() -> None:
    message = AnomalieActe(date=dt.date(2024, 1, 1), nature="001", detail="sans code")
    assert message.detail_code is None
