from __future__ import annotations

import datetime as dt
from pathlib import Path

from broker.flows.base import Problem
from connectors.actes.envelope import build_acte_archive, write_archive
from connectors.actes.messages import EnveloppeCLMISILL, FichierSigne, to_xml
from connectors.actes.validate import validate_path
from tests.unit.actes.factory import (
    CLASSIFICATION_DAY,
    PDF,
    TODAY,
    acte,
    classification,
    entry,
    idcl,
    meta,
    sender,
    tar_gz,
    write,
    zip_bytes,
)

BASE = "044-214400152-20240301-2024_042-DE-1-1"
MESSAGE = f"{BASE}_0.xml"
DOCUMENT = f"99_DE-{BASE}_1.pdf"


def archive(
    tmp_path: Path,
    message: bytes,
    document: bytes = PDF,
    *,
    name: str = MESSAGE,
    siren: str = "214400152",
) -> Path:
    """An archive written as given, without the builder's checks."""
    envelope = EnveloppeCLMISILL(
        emetteur=idcl(siren=siren),
        adresses_retour=["a@b.fr"],
        formulaires=[FichierSigne(nom_fichier=name)],
    )
    path = tmp_path / "SLO-EACT--214400152--20240302-1.tar.gz"
    write_archive(
        path,
        [
            ("EACT--214400152--20240302-1.xml", to_xml(envelope)),
            (name, message),
            (DOCUMENT, document),
        ],
    )
    return path


def act_xml(**changes: object) -> bytes:
    fields: dict[str, object] = {"annexes": [], "document": FichierSigne(nom_fichier=DOCUMENT),
                                 **changes}
    return to_xml(acte(**fields))


def test_a_built_archive_is_valid(tmp_path: Path) -> None:
    built = build_acte_archive(
        tmp_path,
        sender=sender(),
        meta=meta(),
        act=write(tmp_path, "a.pdf", PDF),
        classification_date=CLASSIFICATION_DAY,
        serial=1,
        day=dt.date(2024, 3, 2),
    )
    assert validate_path(built.path, today=TODAY) == []
    assert validate_path(built.path, today=TODAY, classification=classification()) == []
    assert validate_path(archive(tmp_path, act_xml()), today=TODAY) == []


def test_a_file_missing_from_the_archive_is_named_where_the_message_names_it(
        tmp_path: Path) -> None:
    message = act_xml(document=FichierSigne(nom_fichier=f"99_DE-{BASE}_9.pdf"))
    problems = validate_path(archive(tmp_path, message), today=TODAY)
    line = next(n for n, text in enumerate(message.decode("iso8859-1").splitlines(), 1)
                if f"99_DE-{BASE}_9.pdf" in text)
    assert Problem(
        f"{MESSAGE}:{line}",
        f"Document: '99_DE-{BASE}_9.pdf' is named in the message but not in the archive",
    ) in problems
    # The file that came instead is one no message names.
    assert Problem(DOCUMENT, "in the archive but neither the envelope, a message it lists "
                   "nor a file a message names") in problems
    assert not any("at least 1" in p.message for p in problems), problems


def test_schema_violations_have_lines(tmp_path: Path) -> None:
    path = write(tmp_path, MESSAGE, act_xml(objet="x" * 501, code_nature=9))
    problems = validate_path(path, today=TODAY)
    assert [p.field for p in problems] == [f"{MESSAGE}:2", f"{MESSAGE}:6"]
    assert "actes:CodeNatureActe" in problems[0].message and "6" in problems[0].message
    assert "actes:Objet" in problems[1].message and "500" in problems[1].message


def test_business_rules_are_located(tmp_path: Path) -> None:
    path = write(tmp_path, MESSAGE, act_xml(numero_interne="delib_12", date=dt.date(2025, 1, 1)))
    problems = validate_path(path, today=TODAY)
    assert problems == [
        Problem(
            f"{MESSAGE}:2",
            "@NumeroInterne: the act number 'delib_12' contains 'b', 'd', "
            "'e', 'i', 'l': only A-Z, 0-9 and _ are allowed (write 'DELIB_12')",
        ),
    ]
    path = write(tmp_path, MESSAGE, act_xml(date=dt.date(2025, 1, 1)))
    assert validate_path(path, today=TODAY) == [
        Problem(
            f"{MESSAGE}:2",
            "@Date: the decision date 2025-01-01 is in the future (today is 2024-03-15)",
        )
    ]


def test_classification_is_checked_when_given(tmp_path: Path) -> None:
    path = write(tmp_path, MESSAGE, act_xml(matiere1=9, matiere2=9, matiere3=None))
    assert validate_path(path, today=TODAY) == []
    assert validate_path(path, today=TODAY, classification=classification()) == [
        Problem(
            f"{MESSAGE}:3",
            "CodeMatiere: classification code 9.9: 9 does not exist in the "
            "classification of 2023-06-01",
        )
    ]


def test_malformed_and_hostile_xml(tmp_path: Path) -> None:
    path = write(tmp_path, "m.xml", b"<?xml version='1.0'?>\n<a>\n<b>\n</a>\n")
    [problem] = validate_path(path)
    assert problem.field == "m.xml:4" and "mismatch" in problem.message
    path = write(tmp_path, "e.xml", b'<!DOCTYPE a [<!ENTITY x "x">]><a>&x;</a>')
    assert validate_path(path) == [Problem("e.xml:1", "DOCTYPE declaration not accepted: a "
                                           "document here carries no DTD and no entities")]


def test_neither_archive_nor_xml(tmp_path: Path) -> None:
    assert validate_path(write(tmp_path, "a.pdf", PDF)) == [
        Problem(
            "a.pdf",
            "neither an ACTES archive (tar.gz) nor an ACTES message (XML): its content is PDF",
        )
    ]
    assert validate_path(write(tmp_path, "b.xml", b"<b/>")) == [Problem(
        "b.xml:1", "element b: namespace http://www.interieur.gouv.fr/ACTES#v1.1-20040216 "
        "expected, found none")]
    other = b'<a:Acte xmlns:a="http://www.interieur.gouv.fr/ACTES#v1.0"/>'
    assert validate_path(write(tmp_path, "c.xml", other))[0].message.endswith(
        "expected, found http://www.interieur.gouv.fr/ACTES#v1.0")
    assert validate_path(write(tmp_path, "e.xml", b"")) == [Problem(
        "e.xml", "empty file: an ACTES archive (tar.gz) or message (XML) was expected")]
    unknown = b'<a:Facture xmlns:a="http://www.interieur.gouv.fr/ACTES#v1.1-20040216"/>'
    assert "Facture is no ACTES message (messages: " in validate_path(
        write(tmp_path, "f.xml", unknown))[0].message


def test_a_truncated_message_is_said_to_be_cut_short(tmp_path: Path) -> None:
    whole = act_xml()
    (problem,) = validate_path(write(tmp_path, "t.xml", whole[: len(whole) // 2]))
    assert problem.message.startswith("the file ends before the document does (truncated?)"), (
        problem)


def test_file_content_in_an_archive(tmp_path: Path) -> None:
    problems = validate_path(archive(tmp_path, act_xml(), zip_bytes()), today=TODAY)
    assert problems == [
        Problem(
            f"{MESSAGE}:8",
            "Document: by its content, the act document "
            f"'{DOCUMENT}' is ZIP: an act of nature DE must be PDF, JPEG or PNG",
        )
    ]


def test_name_and_sender_in_an_archive(tmp_path: Path) -> None:
    wrong = f"{BASE.replace('-DE-', '-AI-')}_0.xml"
    problems = validate_path(
        archive(tmp_path, act_xml(), name=wrong, siren="214400153"), today=TODAY
    )
    assert problems == [
        Problem(
            "EACT--214400152--20240302-1.xml",
            "IDCL siren: SIREN 214400153 fails its checksum (Luhn)",
        ),
        Problem("EACT--214400152--20240302-1.xml",
                "the name's SIREN 214400152 is not the IDCL SIREN 214400153"),
        Problem(f"{wrong}:9", f"the act document {DOCUMENT!r} must be named "
                f"[TYPE-]{wrong.removesuffix('_0.xml')}_1.<ext> after its message"),
        Problem(
            wrong,
            "the name does not match the act and its envelope (expected "
            "044-214400153-2024-03-01-2024_042-DE-1-1)",
        ),
    ]


def test_hostile_archive(tmp_path: Path) -> None:
    path = tar_gz(tmp_path / "x.tar.gz", [entry("../evil.xml", b"x")])
    assert validate_path(path) == [
        Problem("../evil.xml", "path with '..': members may not leave the archive's folder")
    ]
