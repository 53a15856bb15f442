"""The ACTES consistency rules (docs/validation/actes.md), one test each, on files built here."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from broker.flows.base import Problem
from connectors.actes import messages as m
from connectors.actes.envelope import write_archive
from connectors.actes.messages import EnveloppeCLMISILL, FichierSigne, to_xml
from connectors.actes.validate import validate_path
from tests.unit.actes.factory import ID_ACTE, PDF, TODAY, acte, classification, idcl, write

BASE = "044-214400152-20240301-2024_042-DE-1-1"
MESSAGE = f"{BASE}_0.xml"
DOCUMENT = f"99_DE-{BASE}_1.pdf"
ENVELOPE = "EACT--214400152--20240302-1.xml"
ARCHIVE = "SLO-EACT--214400152--20240302-1.tar.gz"


def act_xml(**changes: object) -> bytes:
    fields: dict[str, object] = {"annexes": [], "document": FichierSigne(nom_fichier=DOCUMENT),
                                 **changes}
    return to_xml(acte(**fields))


def archive(tmp_path: Path, members: list[tuple[str, bytes]], *,
            name: str = ARCHIVE, envelope: str = ENVELOPE,
            listed: tuple[str, ...] = (MESSAGE,)) -> Path:
    env = EnveloppeCLMISILL(emetteur=idcl(), adresses_retour=["a@b.fr"],
                            formulaires=[FichierSigne(nom_fichier=n) for n in listed])
    path = tmp_path / name
    write_archive(path, [(envelope, to_xml(env)), *members])
    return path


def line_of(data: bytes, text: str) -> int:
    return next(n for n, line in enumerate(data.decode("iso8859-1").splitlines(), 1)
                if text in line)


def ar_acte(id_acte: str = ID_ACTE, **received: object) -> bytes:
    return to_xml(m.ARActe(id_acte=id_acte, date_reception=dt.date(2024, 3, 2),
                           acte_recu=acte(**received),
                           classification_date_en_cours=dt.date(2024, 1, 15)))


def test_a_well_made_archive_passes_every_rule(tmp_path: Path) -> None:
    path = archive(tmp_path, [(MESSAGE, act_xml()), (DOCUMENT, PDF)])
    assert validate_path(path, today=TODAY) == []


def test_the_siren_in_an_idacte_has_a_valid_checksum(tmp_path: Path) -> None:
    bad = "044-214400153-20240301-2024_042-DE"
    data = ar_acte(bad)
    assert validate_path(write(tmp_path, "ar.xml", data), today=TODAY) == [Problem(
        f"ar.xml:{line_of(data, bad)}",
        f"IDActe {bad}: its SIREN: SIREN 214400153 fails its checksum (Luhn)")]


def test_the_nature_in_an_idacte_is_one_of_the_six(tmp_path: Path) -> None:
    bad = "044-214400152-20240301-2024_042-XX"
    first, echo = validate_path(write(tmp_path, "ar.xml", ar_acte(bad)), today=TODAY)
    assert first.message == (f"IDActe {bad}: its nature 'XX' is none of DE, AR, AI, CC, "
                             "BF, AU")
    assert echo.message == "ActeRecu: the IDActe's nature XX but @CodeNatureActe 1"


def test_an_idacte_date_is_a_real_day(tmp_path: Path) -> None:
    bad = "044-214400152-20241301-2024_042-DE"
    (problem,) = validate_path(write(tmp_path, "ar.xml", ar_acte(bad)), today=TODAY)
    assert problem.message.startswith(f"IDActe {bad!r}: ")


def test_an_aracte_acknowledges_the_act_its_idacte_names(tmp_path: Path) -> None:
    data = ar_acte(numero_interne="2024_043", code_nature=2)
    problems = validate_path(write(tmp_path, "ar.xml", data), today=TODAY)
    at = f"ar.xml:{line_of(data, 'ActeRecu')}"
    assert problems == [
        Problem(at, "ActeRecu: the IDActe's number 2024_042 but @NumeroInterne 2024_043"),
        Problem(at, "ActeRecu: the IDActe's nature DE but @CodeNatureActe 2"),
    ]


def test_the_destinataire_siren_has_a_valid_checksum(tmp_path: Path) -> None:
    envelope = to_xml(m.EnveloppeMISILLCL(
        prefecture=m.ServiceId(departement="044"), destinataire_siren="214400153",
        formulaires=[FichierSigne(nom_fichier="x.xml")]))
    (problem,) = validate_path(write(tmp_path, "e.xml", envelope), today=TODAY)
    assert problem.message == "Destinataire SIREN: SIREN 214400153 fails its checksum (Luhn)"


def test_the_annex_count_is_the_number_of_annexes(tmp_path: Path) -> None:
    annex = FichierSigne(nom_fichier=f"99_DE-{BASE}_2.pdf")
    data = act_xml(annexes=[annex], nombre_annexes=3)
    problems = validate_path(write(tmp_path, MESSAGE, data), today=TODAY)
    assert Problem(f"{MESSAGE}:{line_of(data, 'Annexes')}",
                   "Annexes: @Nombre says 3, the message lists 1 annex(es) (more are allowed "
                   "only with DocumentPapier=O)") in problems
    paper = act_xml(annexes=[annex], nombre_annexes=3, document_papier="O")
    assert validate_path(write(tmp_path, MESSAGE, paper), today=TODAY) == []
    fewer = act_xml(annexes=[annex, annex], nombre_annexes=1)
    assert any("@Nombre says 1, the message lists 2" in p.message
               for p in validate_path(write(tmp_path, MESSAGE, fewer), today=TODAY))


def test_the_classification_date_is_the_current_one(tmp_path: Path) -> None:
    data = act_xml(classification_date=dt.date(2020, 1, 1))
    current = classification()
    problems = validate_path(write(tmp_path, MESSAGE, data), today=TODAY,
                             classification=current)
    assert Problem(f"{MESSAGE}:{line_of(data, 'ClassificationDateVersion')}",
                   f"ClassificationDateVersion 2020-01-01 is not the date of the entity's "
                   f"current classification ({current.date})") in problems


def test_the_envelope_name_carries_the_senders_siren(tmp_path: Path) -> None:
    other = "EACT--200000008--20240302-1.xml"
    path = archive(tmp_path, [(MESSAGE, act_xml()), (DOCUMENT, PDF)], envelope=other,
                   name=f"SLO-{other.removesuffix('.xml')}.tar.gz")
    assert Problem(other, "the name's SIREN 200000008 is not the IDCL SIREN 214400152") in (
        validate_path(path, today=TODAY))


def test_the_archive_is_named_after_its_envelope(tmp_path: Path) -> None:
    path = archive(tmp_path, [(MESSAGE, act_xml()), (DOCUMENT, PDF)], name="acte.tar.gz")
    assert validate_path(path, today=TODAY) == [Problem(
        "acte.tar.gz", "the archive must be named <TdT code>-EACT--214400152--20240302-1.tar.gz "
        "after its envelope")]


def test_the_archive_holds_no_member_nothing_names(tmp_path: Path) -> None:
    path = archive(tmp_path, [(MESSAGE, act_xml()), (DOCUMENT, PDF), ("notes.pdf", PDF)])
    assert validate_path(path, today=TODAY) == [Problem(
        "notes.pdf", "in the archive but neither the envelope, a message it lists nor a file "
        "a message names")]


def test_a_file_name_says_what_its_content_is(tmp_path: Path) -> None:
    named_xml = f"99_DE-{BASE}_1.xml"
    path = archive(tmp_path, [(MESSAGE, act_xml(document=FichierSigne(nom_fichier=named_xml))),
                              (named_xml, PDF)])
    assert Problem(named_xml, "its content is PDF but its name ends in .xml (expected .pdf)") in (
        validate_path(path, today=TODAY))


def test_the_acts_files_are_named_after_its_message(tmp_path: Path) -> None:
    loose = "deliberation.pdf"
    data = act_xml(document=FichierSigne(nom_fichier=loose))
    path = archive(tmp_path, [(MESSAGE, data), (loose, PDF)])
    assert validate_path(path, today=TODAY) == [Problem(
        f"{MESSAGE}:{line_of(data, loose)}",
        f"the act document 'deliberation.pdf' must be named [TYPE-]{BASE}_1.<ext> after its "
        "message")]
