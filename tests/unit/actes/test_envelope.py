from __future__ import annotations

import datetime as dt
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from connectors.actes.envelope import (
    Attachment,
    BuiltArchive,
    EnvelopeError,
    Limits,
    build_acte_archive,
    build_archive,
    metadata_from,
    read_archive,
    uploaded_files,
    write_archive,
)
from connectors.actes.messages import (
    Acte,
    Annulation,
    AnomalieEnveloppe,
    CourrierSimple,
    DemandeClassification,
    EnveloppeCLMISILL,
    EnveloppeMISILLCL,
    FichierSigne,
    PieceComplementaire,
    ReponseCourrierSimple,
    ServiceId,
    to_xml,
)
from connectors.actes.xmlbind import ActesModel
from tests.unit.actes.factory import (
    CLASSIFICATION_DAY,
    EXE,
    ID_ACTE,
    PDF,
    PNG,
    XML,
    Entry,
    acte,
    entry,
    every_message,
    meta,
    sender,
    tar_gz,
    write,
)

DAY = dt.date(2024, 3, 2)
SMALL = Limits(
    max_members=8, max_member_bytes=64 * 1024, max_total_bytes=256 * 1024, max_xml_bytes=32 * 1024
)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def act_archive(tmp_path: Path) -> BuiltArchive:
    act = write(tmp_path, "deliberation.pdf", PDF)
    annexes = [write(tmp_path, "plan.png", PNG), write(tmp_path, "budget.xml", XML)]
    return build_acte_archive(
        tmp_path,
        sender=sender(),
        meta=meta(type_pj=["32_DP", "99_DE"]),
        classification_date=CLASSIFICATION_DAY,
        act=act,
        annexes=annexes,
        serial=7,
        day=DAY,
    )


# -- building ------------------------------------------------------------------------------


def test_act_archive_names_and_order(tmp_path: Path) -> None:
    built = act_archive(tmp_path)
    base = "044-214400152-20240301-2024_042-DE-1-1"
    assert built.path.name == "SLO-EACT--214400152--20240302-7.tar.gz"
    assert built.id_acte == "044-214400152-20240301-2024_042-DE"
    assert built.members == [
        "EACT--214400152--20240302-7.xml",
        f"{base}_0.xml",
        f"99_DE-{base}_1.pdf",
        f"32_DP-{base}_2.png",
        f"99_DE-{base}_3.xml",
    ]
    with tarfile.open(built.path, "r:gz") as tar:
        assert tar.getnames() == built.members
    assert built.path.read_bytes()[:2] == b"\x1f\x8b"
    assert not list(tmp_path.glob("*.part"))


def test_act_archive_reads_back(tmp_path: Path, out: Path) -> None:
    built = act_archive(tmp_path)
    contents = read_archive(built.path, out)
    assert contents.envelope_name == built.members[0]
    envelope = contents.envelope
    assert isinstance(envelope, EnveloppeCLMISILL)
    assert envelope.emetteur == sender().idcl
    assert envelope.adresses_retour == ["actes@mairie-exemple.fr"]
    assert [f.nom_fichier for f in envelope.formulaires] == [built.message_name]
    [received] = contents.messages
    assert received.message == built.message
    assert isinstance(received.message, Acte)
    assert received.message.nombre_annexes == 2 and received.message.document_papier == "N"
    assert [f.name for f in contents.files] == built.members[2:]
    assert (out / built.members[2]).read_bytes() == PDF
    assert metadata_from(received.message) == meta(type_piece="99_DE", type_pj=["32_DP", "99_DE"])
    uploads, missing = uploaded_files(received.message, contents.members)
    assert [(u.role, u.size) for u in uploads] == [
        ("acte", len(PDF)),
        ("annexe", len(PNG)),
        ("annexe", len(XML)),
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("message", "attachments", "name"),
    [
        (Annulation(id_acte=ID_ACTE), 0, "044-214400152-20240301-2024_042-DE-6-1_0.xml"),
        (
            DemandeClassification(date_classification=CLASSIFICATION_DAY),
            0,
            "044-214400152----7-1_0.xml",
        ),
        (
            ReponseCourrierSimple(
                id_acte=ID_ACTE, date_courrier_pref=DAY, document=FichierSigne(nom_fichier="-")
            ),
            1,
            "044-214400152-20240301-2024_042-DE-2-2_0.xml",
        ),
        (
            PieceComplementaire(id_acte=ID_ACTE, date_courrier_pref=DAY, documents=[]),
            2,
            "044-214400152-20240301-2024_042-DE-3-4_0.xml",
        ),
    ],
)
def test_other_sendings(
    tmp_path: Path, out: Path, message: ActesModel, attachments: int, name: str
) -> None:
    files = [Attachment(write(tmp_path, f"doc{i}.pdf", PDF)) for i in range(attachments)]
    built = build_archive(
        tmp_path,
        sender=sender(),
        message=message,
        attachments=files,
        serial=1,
        day=DAY,
        encoding="UTF-8",
    )
    assert built.message_name == name
    contents = read_archive(built.path, out)
    assert [m.message for m in contents.messages] == [built.message]
    assert len(contents.files) == attachments
    assert [f.name.rsplit("_", 1)[-1] for f in contents.files] == [
        f"{i}.pdf" for i in range(1, attachments + 1)
    ]


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"siren": "214400153"}, "siren", "fails its checksum"),
        ({"departement": "44"}, "departement", "département must be 3 characters"),
        ({"nature": "3"}, "nature", "must be 2 digits"),
    ],
)
def test_building_refuses_a_bad_sender(
    tmp_path: Path, changes: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(EnvelopeError) as caught:
        build_archive(
            tmp_path,
            sender=sender(**changes),
            message=Annulation(id_acte=ID_ACTE),
            serial=1,
            day=DAY,
        )
    [problem] = caught.value.problems
    assert problem.field == field and message in problem.message
    assert list(tmp_path.iterdir()) == []


def test_building_refuses_bad_files_and_messages(tmp_path: Path) -> None:
    exe = write(tmp_path, "annexe.pdf", EXE)
    with pytest.raises(
        EnvelopeError, match=r"annexe\.pdf: by its content, this file is of no recognised type"
    ):
        build_archive(
            tmp_path,
            sender=sender(),
            message=acte(),
            serial=1,
            day=DAY,
            attachments=[Attachment(write(tmp_path, "a.pdf", PDF)), Attachment(exe)],
        )
    with pytest.raises(EnvelopeError, match="CourrierSimple carries exactly one document, got 0"):
        build_archive(
            tmp_path,
            sender=sender(),
            serial=1,
            day=DAY,
            message=CourrierSimple(
                id_acte=ID_ACTE, date_courrier_pref=DAY, document=FichierSigne(nom_fichier="x")
            ),
        )
    # Checked against the schema before anything is written: the line says where.
    too_long = acte(objet="x" * 501)
    with pytest.raises(EnvelopeError) as caught:
        build_archive(
            tmp_path,
            sender=sender(),
            message=too_long,
            serial=1,
            day=DAY,
            attachments=[Attachment(tmp_path / "a.pdf")],
        )
    [problem] = caught.value.problems
    assert problem.field == "044-214400152-20240301-2024_042-DE-1-1_0.xml:6"
    assert "actes:Objet" in problem.message and "500" in problem.message
    assert not list(tmp_path.glob("*.tar.gz"))


def test_building_streams_large_files(tmp_path: Path) -> None:
    big = tmp_path / "big.pdf"
    with big.open("wb") as stream:
        stream.write(PDF)
        stream.truncate(24 * 1024 * 1024)
    tracemalloc.start()
    try:
        build_acte_archive(
            tmp_path,
            sender=sender(),
            meta=meta(),
            act=big,
            serial=1,
            day=DAY,
            classification_date=CLASSIFICATION_DAY,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


# -- reading what the préfecture sends -----------------------------------------------------


def prefecture_archive(tmp_path: Path, *members: tuple[str, bytes]) -> Path:
    return tar_gz(tmp_path / "reply.tar.gz", [entry(name, data) for name, data in members])


def envelope_for(*names: str) -> bytes:
    return to_xml(
        EnveloppeMISILLCL(
            sous_prefecture=ServiceId(departement="044", arrondissement="1"),
            formulaires=[FichierSigne(nom_fichier=n) for n in names],
            destinataire_siren="214400152",
        )
    )


def test_reply_read_whatever_the_order_and_suffixes(tmp_path: Path, out: Path) -> None:
    name = "044-214400152-20240301-2024_042-DE-2-1_10.xml"
    letter = CourrierSimple(
        id_acte=ID_ACTE, date_courrier_pref=DAY, document=FichierSigne(nom_fichier="courrier_3.pdf")
    )
    path = prefecture_archive(
        tmp_path,
        (name, to_xml(letter)),
        ("courrier_3.pdf", PDF),
        ("EACT--SPREF0441-214400152-20240302-9.xml", envelope_for(name)),
    )
    contents = read_archive(path, out)
    assert contents.envelope_name == "EACT--SPREF0441-214400152-20240302-9.xml"
    assert isinstance(contents.envelope, EnveloppeMISILLCL)
    assert [(m.name, m.message) for m in contents.messages] == [(name, letter)]
    assert [f.name for f in contents.files] == ["courrier_3.pdf"]


def test_a_bare_envelope_anomaly(tmp_path: Path, out: Path) -> None:
    anomaly = every_message()[-1]
    path = prefecture_archive(tmp_path, ("ANO_EACT--214400152--20240302-1.xml", to_xml(anomaly)))
    contents = read_archive(path, out)
    assert contents.envelope is None
    assert [m.message for m in contents.messages] == [anomaly]
    assert isinstance(contents.messages[0].message, AnomalieEnveloppe)


def test_a_broken_xml_annex_is_only_a_file(tmp_path: Path, out: Path) -> None:
    name = "044-214400152-20240301-2024_042-DE-6-2_1.xml"
    ar = to_xml(every_message()[18])
    path = prefecture_archive(
        tmp_path,
        ("env.xml", envelope_for(name)),
        (name, ar),
        ("annexe.xml", b"<?xml version='1.0'?><a><b></a>"),
    )
    contents = read_archive(path, out)
    assert [f.name for f in contents.files] == ["annexe.xml"]


# -- hostile or broken archives: every problem, named by member ----------------------------


def _link(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info, _ = entry(name, kind=kind, link="/etc/passwd")
    return info, None


@pytest.mark.parametrize(
    ("entries", "member", "message"),
    [
        ([entry("/etc/cron.d/evil", b"x")], "/etc/cron.d/evil", "absolute path"),
        ([entry("C:\\evil.xml", b"x")], "C:\\evil.xml", "absolute path"),
        ([entry("../../evil.xml", b"x")], "../../evil.xml", "path with '..'"),
        ([entry("a/../../evil.xml", b"x")], "a/../../evil.xml", "path with '..'"),
        (
            [_link("passwd.pdf", tarfile.SYMTYPE)],
            "passwd.pdf",
            "symbolic link to '/etc/passwd': links are refused",
        ),
        (
            [_link("passwd.pdf", tarfile.LNKTYPE)],
            "passwd.pdf",
            "hard link to '/etc/passwd': links are refused",
        ),
        ([entry("null", kind=tarfile.CHRTYPE)], "null", "device or FIFO"),
        ([entry("disk", kind=tarfile.BLKTYPE)], "disk", "device or FIFO"),
        ([entry("pipe", kind=tarfile.FIFOTYPE)], "pipe", "device or FIFO"),
        ([entry("folder", kind=tarfile.DIRTYPE)], "folder", "directory"),
        ([entry("sub/acte.pdf", PDF)], "sub/acte.pdf", "file in a sub-folder"),
        (
            [entry("big.pdf", bytes(70 * 1024))],
            "big.pdf",
            "71,680 bytes, more than the 65,536 allowed per file",
        ),
        (
            [entry(f"f{i}.pdf", PDF) for i in range(9)],
            "f8.pdf",
            "the archive has more than 8 members",
        ),
        (
            [entry(f"f{i}.pdf", bytes(60 * 1024)) for i in range(5)],
            "f4.pdf",
            "the archive expands to more than 262,144 bytes",
        ),
        (
            [entry("a.pdf", PDF), entry("a.pdf", PDF)],
            "a.pdf",
            "this name appears twice in the archive",
        ),
        ([entry("a.pdf", PDF)], "archive", "no envelope (EnveloppeCLMISILL or EnveloppeMISILLCL)"),
        (
            [entry("env.xml", envelope_for("missing.xml"))],
            "missing.xml",
            "listed in the envelope but not an XML member here",
        ),
        (
            [entry("env.xml", envelope_for("m.xml")), entry("m.xml", b"<a>\n<b>\n</a>")],
            "m.xml:3",
            "Opening and ending tag mismatch",
        ),
        (
            [
                entry("env.xml", envelope_for("m.xml")),
                entry("m.xml", b'<!DOCTYPE a [<!ENTITY x "x">]><a>&x;</a>'),
            ],
            "m.xml:1",
            "DOCTYPE declaration not accepted",
        ),
        (
            [entry("env.xml", envelope_for("m.xml")), entry("m.xml", b"<Facture/>")],
            "m.xml:Facture",
            "unknown ACTES message",
        ),
        (
            [entry("env.xml", envelope_for("m.xml")), entry("env2.xml", envelope_for("m.xml"))],
            "env2.xml",
            "a second envelope in the same archive",
        ),
    ],
)
def test_hostile_archives_are_refused(
    tmp_path: Path,
    out: Path,
    entries: list[Entry],
    member: str,
    message: str,
) -> None:
    path = tar_gz(tmp_path / "hostile.tar.gz", entries)
    with pytest.raises(EnvelopeError) as caught:
        read_archive(path, out, SMALL)
    assert any(p.field == member and message in p.message for p in caught.value.problems), (
        caught.value.problems
    )
    assert list(out.iterdir()) == []  # nothing left behind
    assert not (tmp_path / "evil.xml").exists() and not Path("/etc/cron.d/evil").exists()


def test_a_gzip_bomb_stops_at_the_cap(tmp_path: Path, out: Path) -> None:
    # Each member is refused from its header, but skipping it still means inflating it:
    # the inflated bytes are counted, whatever the headers say.
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("/zeros")
        info.size = 16 * 1024 * 1024
        with (tmp_path / "zeros").open("wb") as stream:
            stream.truncate(info.size)
        with (tmp_path / "zeros").open("rb") as stream:
            tar.addfile(info, stream)
    assert path.stat().st_size < 100 * 1024
    with pytest.raises(EnvelopeError) as caught:
        read_archive(path, out, SMALL)
    messages = {p.field: p.message for p in caught.value.problems}
    assert messages["/zeros"].startswith("absolute path")
    assert messages["bomb.tar.gz"] == "the archive expands to more than 262,144 bytes (gzip bomb?)"


def test_inflating_past_the_cap_mid_member_leaves_nothing(tmp_path: Path, out: Path) -> None:
    skipped = 4 * 1024 * 1024 + 100 * 1024  # refused, but inflated to be skipped
    path = tar_gz(
        tmp_path / "late.tar.gz",
        [entry("/skipped", bytes(skipped)), entry("b.pdf", PDF + bytes(200 * 1024))],
    )
    limits = Limits(max_member_bytes=8 * 1024 * 1024, max_total_bytes=256 * 1024)
    with pytest.raises(EnvelopeError, match="expands to more than 262,144 bytes"):
        read_archive(path, out, limits)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04" + bytes(30), "not a gzip-compressed archive (content: ZIP)"),
        (PDF, "not a gzip-compressed archive (content: PDF)"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", "unreadable archive"),
    ],
)
def test_what_is_no_archive(tmp_path: Path, out: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, "x.tar.gz", content)
    with pytest.raises(EnvelopeError) as caught:
        read_archive(path, out)
    [problem] = caught.value.problems
    assert problem.field == "x.tar.gz" and message in problem.message


def test_a_truncated_archive(tmp_path: Path, out: Path) -> None:
    whole = act_archive(tmp_path).path.read_bytes()
    path = write(tmp_path, "cut.tar.gz", whole[: len(whole) // 2])
    with pytest.raises(EnvelopeError, match=r"cut\.tar\.gz: unreadable archive"):
        read_archive(path, out)
    assert list(out.iterdir()) == []


def test_write_archive_is_plain(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    assert write_archive(path, [("b.xml", XML), ("a.pdf", write(tmp_path, "x", PDF))]) == [
        "b.xml",
        "a.pdf",
    ]
    with tarfile.open(path) as tar:
        assert [(m.name, m.size, m.isreg()) for m in tar] == [
            ("b.xml", len(XML), True),
            ("a.pdf", len(PDF), True),
        ]
