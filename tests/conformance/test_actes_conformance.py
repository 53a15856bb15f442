"""ACTES against the ministry's schema and real messages (read from ../shared/reference).

What the project builds must pass the official ``actesv1_1.xsd``; what real platforms
sent must be read, including the samples known to break that schema.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from broker.xmlsafe import XmlError, load_schema, schema_problems
from broker.xmlsafe import parse_bytes as parse_any_bytes
from broker.xmlsafe import parse_file as parse_any_file
from connectors.actes import messages as m
from connectors.actes.classification import Classification
from connectors.actes.envelope import (
    Attachment,
    BuiltArchive,
    Sender,
    build_acte_archive,
    build_archive,
    metadata_from,
    read_archive,
)
from connectors.actes.names import parse_name
from connectors.actes.natures import NATURES
from connectors.actes.rules import ActeMetadata, check_act
from connectors.actes.schema import violations
from connectors.actes.validate import validate_path
from connectors.actes.xmlbind import ENCODINGS, ActesModel
from tests.unit.actes.factory import JPEG, PDF, PNG, XML, every_message, upload

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "actes"
SAMPLES = REFERENCE / "samples"
PASTELL = SAMPLES / "pastell"
STELA = SAMPLES / "stela"

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(),
    reason=f"SKIPPED, not passed: the ACTES reference folder {REFERENCE} is absent",
)

DAY = dt.date(2024, 3, 2)
CLASSIFICATION_DAY = dt.date(2019, 3, 1)
SENDER = Sender(
    m.IDCL(siren="214400152", departement="044", arrondissement="1", nature="31"),
    ["actes@mairie-exemple.fr"],
)
ID_ACTE = "044-214400152-20240301-2024_042-DE"


def parse_bytes(data: bytes) -> etree._Element:
    return parse_any_bytes(data, encodings=ENCODINGS)


def parse_file(path: Path) -> etree._Element:
    return parse_any_file(path, encodings=ENCODINGS)


@pytest.fixture(scope="module")
def official() -> etree.XMLSchema:
    return load_schema(REFERENCE / "xsd" / "actesv1_1.xsd")


# -- what the project builds ---------------------------------------------------------------


def built_archives(folder: Path) -> Iterator[BuiltArchive]:
    pdf, png, jpeg, xml = (folder / n for n in ("a.pdf", "b.png", "c.jpg", "d.xml"))
    for path, data in ((pdf, PDF), (png, PNG), (jpeg, JPEG), (xml, XML)):
        path.write_bytes(data)
    for serial, nature in enumerate(NATURES, start=1):
        meta = ActeMetadata(
            nature=nature.code,
            numero=f"2024_{serial:03}",
            date="2024-03-01",
            objet=f"Acte de nature {nature.label} – séance du 1er mars",
            classification="7.1" if nature.abbr == "BF" else "1.1.2",
        )
        main = xml if nature.abbr == "BF" else pdf
        yield build_acte_archive(
            folder,
            sender=SENDER,
            meta=meta,
            act=main,
            serial=serial,
            classification_date=CLASSIFICATION_DAY,
            day=DAY,
        )
        yield build_acte_archive(
            folder,
            sender=SENDER,
            meta=meta,
            act=main,
            serial=serial + 10,
            annexes=[pdf, png, jpeg, xml],
            classification_date=CLASSIFICATION_DAY,
            day=DAY,
        )
    ref = {"id_acte": ID_ACTE, "date_courrier_pref": DAY}
    doc = m.FichierSigne(nom_fichier="-")
    for serial, (message, files) in enumerate(
        [
            (m.Annulation(id_acte=ID_ACTE), []),
            (m.DemandeClassification(), []),
            (m.DemandeClassification(date_classification=CLASSIFICATION_DAY), []),
            (m.ReponseCourrierSimple(**ref, document=doc), [pdf]),
            (m.ARDemandePieceComplementaire(**ref), []),
            (m.RefusPieceComplementaire(**ref, document=doc), [pdf]),
            (m.PieceComplementaire(**ref, documents=[]), [pdf, png]),
            (m.ARLettreObservations(**ref), []),
            (m.RejetLettreObservations(**ref, document=doc), [pdf]),
            (m.ReponseLettreObservations(**ref, document=doc), [pdf]),
        ],
        start=100,
    ):
        for offset, encoding in enumerate(("ISO-8859-1", "UTF-8")):
            yield build_archive(
                folder,
                sender=SENDER,
                message=message,
                serial=serial + 100 * offset,
                day=DAY,
                attachments=[Attachment(p) for p in files],
                encoding=encoding,
            )


def test_every_archive_built_passes_the_official_schema(
    tmp_path: Path, official: etree.XMLSchema
) -> None:
    checked = 0
    for built in built_archives(tmp_path):
        out = tmp_path / built.path.name.removesuffix(".tar.gz")
        out.mkdir()
        contents = read_archive(built.path, out)
        for name in (built.envelope_name, built.message_name):
            assert schema_problems(official, parse_file(out / name)) == [], name
            checked += 1
        assert [r.message for r in contents.messages] == [built.message]
        assert validate_path(built.path, today=DAY) == []
    assert checked == 2 * (12 + 20)


@pytest.mark.parametrize("message", every_message(), ids=lambda message: type(message).__name__)
@pytest.mark.parametrize("encoding", ["ISO-8859-1", "UTF-8"])
def test_every_message_built_passes_the_official_schema(
    message: ActesModel, encoding: str, official: etree.XMLSchema
) -> None:
    assert schema_problems(official, parse_bytes(m.to_xml(message, encoding))) == []


# -- what real platforms sent --------------------------------------------------------------

VALID_SAMPLES = [
    PASTELL / "test/PHPUnit/module/actes-preversement-seda/fixtures/"
    "034-491011698-20171207-CL20171227_06-DE-1-1_0.xml",
    PASTELL / "test/PHPUnit/module/actes-preversement-seda/fixtures/"
    "034-491011698-20171207-CL20171227_06-DE-1-2.xml",
    PASTELL / "test/PHPUnit/module/actes-generique/fixtures/aractes.xml",
    PASTELL / "test/PHPUnit/connecteur/s2low/fixtures/classification-exemple.xml",
    PASTELL / "test/PHPUnit/connecteur/s2low/fixtures/999-1234----7-2_1.xml",
    STELA / "044-214400152----1-3_1.xml",
    STELA / "044-214400152-20181106-TEST_DGCL_4-DE-6-2_10.xml",
    STELA / "EACT--SPREF0441-214400152-20181012-9.xml",
    STELA / "exemple_codes_matieres.xml",
]
INVALID_SAMPLES = [
    STELA / "ANO_EACT--214400152--20180925-1.xml",
    PASTELL / "connecteur/fakeTdt/fixtures/ar-actes.xml",
    PASTELL / "connecteur/fakeTdt/fixtures/classification.xml",
]


def read(path: Path) -> ActesModel:
    return m.read_message(path.read_bytes())


@pytest.mark.parametrize("path", VALID_SAMPLES, ids=lambda p: p.name)
def test_valid_samples_are_valid_for_both_schemas(path: Path, official: etree.XMLSchema) -> None:
    root = parse_file(path)
    assert schema_problems(official, root) == []
    assert violations(root) == []
    assert validate_path(path, today=DAY) == []


@pytest.mark.parametrize("path", INVALID_SAMPLES, ids=lambda p: p.name)
def test_invalid_samples_break_the_official_schema(path: Path, official: etree.XMLSchema) -> None:
    # Read as leniently as the official schema would (one of them is in windows-1252).
    root = parse_any_file(path, encodings=(*ENCODINGS, "windows-1252"))
    assert schema_problems(official, root) != []


def test_acte() -> None:
    path = VALID_SAMPLES[0]
    acte = read(path)
    assert isinstance(acte, m.Acte)
    assert (acte.date, acte.numero_interne, acte.code_nature) == (
        dt.date(2017, 12, 7),
        "CL20171227_06",
        1,
    )
    assert acte.classification == "3.2" and acte.classification_date == dt.date(2017, 11, 13)
    assert acte.objet == "Fichier signé parapheur"
    assert acte.document.nom_fichier == "32_DP-034-491011698-20171207-CL20171227_06-DE-1-1_1.pdf"
    assert (acte.nombre_annexes, acte.annexes, acte.document_papier) == (0, [], "N")
    meta = metadata_from(acte)
    assert (meta.type_piece, meta.nature_info.abbr) == ("32_DP", "DE")
    name = parse_name(path.name)
    assert str(getattr(name, "id_acte", None)) == "034-491011698-20171207-CL20171227_06-DE"


@pytest.mark.parametrize("path", [VALID_SAMPLES[1], VALID_SAMPLES[2]], ids=lambda p: p.name)
def test_aracte(path: Path) -> None:
    ar = read(path)
    assert isinstance(ar, m.ARActe)
    assert ar.id_acte == "034-491011698-20171207-CL20171227_06-DE"
    assert ar.date_reception == dt.date(2017, 12, 27)
    assert ar.classification_date_en_cours == dt.date(2017, 11, 13)
    assert ar.acte_recu is not None and ar.acte_recu.numero_interne == "CL20171227_06"
    assert ar.acte_recu.objet == "Fichier signé parapheur"  # from a character reference


def test_a_message_in_an_encoding_actes_does_not_allow_is_refused_naming_it() -> None:
    with pytest.raises(XmlError, match=r"^line 1: encoding WINDOWS-1252 \(its declaration\) is "
                       r"not accepted here: expected UTF-8 or ISO-8859-1$"):
        read(INVALID_SAMPLES[1])  # a hand-made ARActe declared windows-1252


def test_hand_made_aracte_with_acte_instead_of_acte_recu() -> None:
    latin1 = INVALID_SAMPLES[1].read_bytes().replace(b'encoding="windows-1252"',
                                                      b'encoding="ISO-8859-1"', 1)
    ar = m.read_message(latin1)
    assert isinstance(ar, m.ARActe)
    assert ar.id_acte == "069-123456789-20130601-20130623C-AI"
    assert ar.date_reception == dt.date(2013, 6, 23)
    assert ar.classification_date_en_cours == dt.date(2008, 12, 31)
    assert ar.acte_recu is not None
    assert (ar.acte_recu.numero_interne, ar.acte_recu.code_nature, ar.acte_recu.classification) == (
        "20130623C",
        3,
        "3.1",
    )


def test_anomalie_acte() -> None:
    anomaly = read(STELA / "044-214400152----1-3_1.xml")
    assert isinstance(anomaly, m.AnomalieActe)
    assert (anomaly.date, anomaly.nature, anomaly.detail_code) == (
        dt.date(2018, 10, 12),
        "002",
        "ODT-VERIF-01",
    )
    assert anomaly.detail and "date de classification qui n'est pas à jour" in anomaly.detail
    assert anomaly.classification_date_en_cours == dt.date(2018, 10, 10)
    acte = anomaly.acte_recu
    assert acte is not None
    # Level 4 is skipped in this real message.
    assert (acte.matiere3, acte.matiere4, acte.matiere5) == (1, None, 1)
    assert acte.classification_date == dt.date(2017, 4, 19) and acte.numero_interne == "123456"
    assert acte.annexes[0].nom_fichier == "01_01-044-214400152-20181012-123456-DE-1-1_2.xml"
    assert acte.document_papier == ""


def test_anomalie_enveloppe_outside_the_schema() -> None:
    anomaly = read(INVALID_SAMPLES[0])
    assert isinstance(anomaly, m.AnomalieEnveloppe)
    assert (anomaly.date, anomaly.nature, anomaly.detail_code) == (
        dt.date(2018, 9, 25),
        "999",
        "ODT-VERIF-17",
    )
    envelope = anomaly.enveloppe_recue
    assert envelope is not None
    assert envelope.emetteur == m.IDCL(
        siren="214400152", departement="044", arrondissement="1", nature="31"
    )
    assert envelope.referent and envelope.referent.email == "stelasictiam.test@gmail.com"
    assert [f.nom_fichier for f in envelope.formulaires] == [
        "044-214400152-20180905-4365-DE-4365-DE_0.xml"
    ]
    # The project's schema accepts the real platform's codes.
    assert violations(parse_file(INVALID_SAMPLES[0])) == []


def test_ar_annulation_and_envelope() -> None:
    ar = read(STELA / "044-214400152-20181106-TEST_DGCL_4-DE-6-2_10.xml")
    assert ar == m.ARAnnulation(
        id_acte="044-214400152-20181106-TEST_DGCL_4-DE", date_reception=dt.date(2018, 11, 28)
    )
    envelope = read(STELA / "EACT--SPREF0441-214400152-20181012-9.xml")
    assert isinstance(envelope, m.EnveloppeMISILLCL)
    assert envelope.sous_prefecture and envelope.emitter == envelope.sous_prefecture
    assert (envelope.sous_prefecture.departement, envelope.sous_prefecture.arrondissement) == (
        "044",
        "1",
    )
    assert envelope.destinataire_siren == "214400152"
    assert [f.nom_fichier for f in envelope.formulaires] == ["044-214400152----1-3_1.xml"]


def _count(path: Path, level: int) -> int:
    return sum(1 for e in parse_file(path).iter() if etree.QName(e).localname == f"Matiere{level}")


@pytest.mark.parametrize(
    ("path", "day", "typology"),
    [
        (
            STELA / "exemple_codes_matieres.xml",
            dt.date(2017, 12, 8),
            {"DE": 19, "AR": 9, "AI": 37, "CC": 48, "BF": 3, "AU": 2},
        ),
        (
            VALID_SAMPLES[3],
            dt.date(2019, 3, 1),
            {"DE": 18, "AR": 9, "AI": 36, "CC": 47, "BF": 3, "AU": 2},
        ),
        (
            VALID_SAMPLES[4],
            dt.date(2019, 4, 18),
            {"DE": 18, "AR": 9, "AI": 36, "CC": 47, "BF": 3, "AU": 2},
        ),
        (
            INVALID_SAMPLES[2],
            dt.date(2004, 4, 1),
            {"DE": 0, "AR": 0, "AI": 0, "CC": 0, "BF": 0, "AU": 0},
        ),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_classifications(path: Path, day: dt.date, typology: dict[str, int]) -> None:
    classification = read(path)
    assert isinstance(classification, Classification)
    assert classification.date == day
    assert {n.abbr: len(n.pj_types) for n in classification.natures.values()} == typology
    for level in (1, 2, 3, 4):
        assert sum(len(c) == level for c in classification.matieres) == _count(path, level)
    assert classification.has_code("1.1") and classification.has_code("7.1")
    assert classification.label("1.1") in ("Marchés publics", "Marches publics")
    assert not classification.has_code("10.1")
    assert Classification.from_json(classification.to_json()) == classification


def test_typology_of_a_real_classification() -> None:
    classification = read(VALID_SAMPLES[3])
    assert isinstance(classification, Classification)
    assert classification.typology(5) == {
        "70_DE": "Délibération",
        "99_BU": "Document budgétaire",
        "99_SE": "Fichier de signature électronique",
    }
    assert classification.has_code("1.1.1") and classification.children((1, 1)) == [
        (1, 1, 1),
        (1, 1, 2),
    ]
    meta = ActeMetadata(
        nature="BF",
        numero="BP_2019",
        date="2019-03-05",
        objet="Budget primitif",
        classification="7.1",
        type_piece="99_BU",
        type_pj=["70_DE"],
    )
    files = [upload("acte", "budget.xml", XML), upload("annexe", "deliberation.pdf", PDF)]
    assert check_act(meta, files, classification, dt.date(2019, 3, 6)) == []
    # The 2004 classification has no typology: the defaults apply.
    old = read(INVALID_SAMPLES[2])
    assert isinstance(old, Classification)
    assert [p.field for p in check_act(meta, files, old, dt.date(2019, 3, 6))] == ["type_pj[0]"]


def test_courrier_simple_archive(tmp_path: Path) -> None:
    path = PASTELL / "test/PHPUnit/fixtures/tar_ball/courrier_simple.tar.gz"
    contents = read_archive(path, tmp_path)
    assert [member.name for member in contents.members] == [
        "001-862614864-20150805-20150805B-AI-2-1_0.xml",
        "001-862614864-20150805-20150805B-AI-2-1_1.pdf",
        "TACT--SPREF0011-862614864-20150805-7.xml",
    ]
    assert contents.envelope_name == "TACT--SPREF0011-862614864-20150805-7.xml"
    envelope = contents.envelope
    assert isinstance(envelope, m.EnveloppeMISILLCL)
    assert envelope.destinataire_siren == "862614864"
    assert envelope.sous_prefecture and envelope.sous_prefecture.departement == "001"
    [received] = contents.messages
    assert received.message == m.CourrierSimple(
        id_acte="001-862614864-20150805-20150805B-AI",
        date_courrier_pref=dt.date(2015, 8, 5),
        document=m.FichierSigne(nom_fichier="001-862614864-20150805-20150805B-AI-2-1_1.pdf"),
    )
    [letter] = contents.files
    assert (letter.name, letter.size, letter.kind.value) == (
        "001-862614864-20150805-20150805B-AI-2-1_1.pdf",
        21803,
        "pdf",
    )
    assert validate_path(path) == []
