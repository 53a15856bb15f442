"""The SEDA 2.1 builder, the archive writer and the ACK/ATR readers, without a network."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from lxml import etree
from pydantic import ValidationError

from broker import xmlsafe
from connectors.sae.seda import (
    SEDA_21,
    SHA256_URI,
    Agencies,
    ArchiveDescription,
    ArchiveFile,
    SedaError,
    build_transfer,
    message_identifier,
    pack_objects,
    read_acknowledgement,
    read_transfer_reply,
    write_archive,
)

ROOT = Path(__file__).resolve().parents[2]
SUBSET = ROOT / "schemas" / "seda" / "seda-2.1-archive-transfer.xsd"
NS = {"s": SEDA_21}
WHEN = datetime(2024, 5, 2, 12, 30, tzinfo=UTC)
AGENCIES = Agencies(
    archival_agency="FRAD035",
    transferring_agency="SIREN213501234",
    originating_agency="213501234",
    archival_agreement="ACCORD-ACTES",
    archival_profile="ACTES_V1",
)
PDF = b"%PDF-1.7\n" + b"p" * 1000
XML = b"<ar/>"


def _file(
    folder: Path,
    name: str,
    content: bytes,
    role: str = "document",
    mime: str = "application/pdf",
    stored: bool = True,
) -> ArchiveFile:
    path = folder / f"blob-{hashlib.sha256(content + name.encode()).hexdigest()[:12]}"
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest() if stored else None
    return ArchiveFile(
        role=role,
        name=name,
        path=path,
        mime=mime,
        sha256=digest,
        size=len(content) if stored else None,
    )


def _description(folder: Path, document_id: str = "doc-42") -> ArchiveDescription:
    return ArchiveDescription(
        document_id=document_id,
        title="Délibération 2024-042",
        description="Budget supplémentaire",
        start_date=date(2024, 3, 1),
        end_date=date(2024, 3, 28),
        keywords=("Finances", "7.1"),
        files=(
            _file(folder, "deliberation.pdf", PDF),
            _file(folder, "ar.xml", XML, "acknowledgement", "application/xml"),
        ),
    )


def _texts(root: etree._Element, path: str) -> list[str]:
    return [e.text or "" for e in root.iterfind(path, NS)]


def test_bordereau_round_trip(tmp_path: Path) -> None:
    transfer = build_transfer(_description(tmp_path), AGENCIES, WHEN)
    root = xmlsafe.parse_bytes(transfer.bordereau)

    assert transfer.message_identifier == "demat-doc-42"
    assert [etree.QName(e).localname for e in root] == [
        "Date",
        "MessageIdentifier",
        "ArchivalAgreement",
        "CodeListVersions",
        "DataObjectPackage",
        "ArchivalAgency",
        "TransferringAgency",
    ]
    assert _texts(root, "s:Date") == ["2024-05-02T12:30:00+00:00"]
    assert _texts(root, "s:MessageIdentifier") == ["demat-doc-42"]
    assert _texts(root, "s:ArchivalAgreement") == ["ACCORD-ACTES"]
    assert _texts(root, "s:ArchivalAgency/s:Identifier") == ["FRAD035"]
    assert _texts(root, "s:TransferringAgency/s:Identifier") == ["SIREN213501234"]

    objects = root.findall("s:DataObjectPackage/s:BinaryDataObject", NS)
    assert [o.get("id") for o in objects] == ["obj-1", "obj-2"]
    pdf, xml = objects
    assert _texts(pdf, "s:Uri") == ["deliberation.pdf"]
    digest = pdf.find("s:MessageDigest", NS)
    assert digest is not None and digest.get("algorithm") == SHA256_URI
    assert digest.text == hashlib.sha256(PDF).hexdigest()
    assert _texts(pdf, "s:Size") == [str(len(PDF))]
    assert _texts(pdf, "s:FormatIdentification/s:MimeType") == ["application/pdf"]
    assert _texts(pdf, "s:FormatIdentification/s:FormatId") == ["fmt/276"]  # PDF 1.7
    assert _texts(pdf, "s:FileInfo/s:Filename") == ["deliberation.pdf"]
    assert _texts(xml, "s:FormatIdentification/s:FormatId") == ["fmt/101"]

    top = root.find("s:DataObjectPackage/s:DescriptiveMetadata/s:ArchiveUnit", NS)
    assert top is not None and top.get("id") == "unit-0"
    content = top.find("s:Content", NS)
    assert content is not None
    assert [(etree.QName(e).localname, e.text) for e in content if len(e) == 0] == [
        ("DescriptionLevel", "RecordGrp"),
        ("Title", "Délibération 2024-042"),
        ("OriginatingSystemId", "doc-42"),
        ("Description", "Budget supplémentaire"),
        ("Language", "fra"),
        ("DescriptionLanguage", "fra"),
        ("StartDate", "2024-03-01"),
        ("EndDate", "2024-03-28"),
    ]
    assert _texts(content, "s:Keyword/s:KeywordContent") == ["Finances", "7.1"]
    items = top.findall("s:ArchiveUnit", NS)
    assert [
        (
            i.get("id"),
            _texts(i, "s:Content/s:DescriptionLevel"),
            _texts(i, "s:Content/s:Title"),
            _texts(i, "s:Content/s:DocumentType"),
            _texts(i, "s:DataObjectReference/s:DataObjectReferenceId"),
        )
        for i in items
    ] == [
        ("unit-1", ["Item"], ["deliberation.pdf"], ["document"], ["obj-1"]),
        ("unit-2", ["Item"], ["ar.xml"], ["acknowledgement"], ["obj-2"]),
    ]
    management = root.find("s:DataObjectPackage/s:ManagementMetadata", NS)
    assert management is not None
    assert [(etree.QName(e).localname, e.text) for e in management] == [
        ("ArchivalProfile", "ACTES_V1"),
        ("OriginatingAgencyIdentifier", "213501234"),
        ("SubmissionAgencyIdentifier", "SIREN213501234"),
    ]


def test_bordereau_is_valid_against_the_project_subset(tmp_path: Path) -> None:
    schema = xmlsafe.load_schema(SUBSET)
    transfer = build_transfer(_description(tmp_path), AGENCIES, WHEN)
    assert xmlsafe.schema_problems(schema, xmlsafe.parse_bytes(transfer.bordereau)) == []


def test_same_document_same_transfer(tmp_path: Path) -> None:
    desc = _description(tmp_path)
    first, again = build_transfer(desc, AGENCIES, WHEN), build_transfer(desc, AGENCIES, WHEN)
    other = build_transfer(_description(tmp_path, "doc-43"), AGENCIES, WHEN)

    assert first == again
    assert message_identifier("doc-42") == first.message_identifier == "demat-doc-42"
    assert other.message_identifier == "demat-doc-43"


def test_stored_digest_is_used_without_reading_the_file(tmp_path: Path) -> None:
    stored = "ab" * 32
    missing = ArchiveFile(
        role="document",
        name="gone.bin",
        path=tmp_path / "absent",
        sha256=stored,
        size=12,
        mime="application/octet-stream",
    )
    [obj] = pack_objects([missing])
    assert (obj.sha256, obj.size, obj.format_id) == (stored, 12, None)


def test_missing_digest_is_computed_in_chunks(tmp_path: Path) -> None:
    content = bytes(range(256)) * 12_000  # 3 MB, several read chunks
    [obj] = pack_objects(
        [_file(tmp_path, "big.bin", content, mime="application/zip", stored=False)]
    )
    assert (obj.sha256, obj.size) == (hashlib.sha256(content).hexdigest(), len(content))


def test_archive_names_are_flat_and_unique(tmp_path: Path) -> None:
    names = ["a.pdf", "a.pdf", "a.pdf", "notes", "notes", "sub/dir.pdf", ".."]
    objects = pack_objects([_file(tmp_path, n, n.encode() + b"x", stored=False) for n in names])
    assert [o.uri for o in objects] == [
        "a.pdf",
        "a-2.pdf",
        "a-3.pdf",
        "notes",
        "notes-2",
        "sub_dir.pdf",
        "file",
    ]
    assert [o.filename for o in objects] == names


def test_empty_file_has_no_size(tmp_path: Path) -> None:
    desc = ArchiveDescription(
        document_id="d", title="t", files=(_file(tmp_path, "vide.txt", b"", mime="text/plain"),)
    )
    root = xmlsafe.parse_bytes(build_transfer(desc, AGENCIES, WHEN).bordereau)
    [obj] = root.findall("s:DataObjectPackage/s:BinaryDataObject", NS)
    assert _texts(obj, "s:Size") == []
    assert _texts(obj, "s:FormatIdentification/s:FormatId") == ["x-fmt/111"]


def test_archive_holds_each_file_under_its_uri(tmp_path: Path) -> None:
    objects = pack_objects(_description(tmp_path).files)
    size = write_archive(objects, tmp_path / "one.tar.gz")
    again = write_archive(objects, tmp_path / "two.tar.gz")

    assert size == again == (tmp_path / "one.tar.gz").stat().st_size
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "one.tar.gz", "r:gz") as tar:
        members = tar.getmembers()
        assert [(m.name, m.size, m.mtime, m.mode) for m in members] == [
            ("deliberation.pdf", len(PDF), 0, 0o644),
            ("ar.xml", len(XML), 0, 0o644),
        ]
        extracted = [tar.extractfile(m) for m in members]
        assert [f.read() if f else None for f in extracted] == [PDF, XML]


@pytest.mark.parametrize(
    "content",
    [b"%PDF-1.7\n" + b"q" * 1000, PDF[:-1], PDF + b"!"],
    ids=["changed", "shorter", "longer"],
)
def test_archive_refuses_a_file_that_changed(tmp_path: Path, content: bytes) -> None:
    objects = pack_objects(_description(tmp_path).files)
    objects[0].path.write_bytes(content)
    with pytest.raises(SedaError, match=re.escape("stored file 'deliberation.pdf' does not match")):
        write_archive(objects, tmp_path / "a.tar.gz")


def test_description_is_checked(tmp_path: Path) -> None:
    one = (_file(tmp_path, "a.pdf", PDF),)
    with pytest.raises(ValidationError, match="end_date 2024-01-01 is before start_date"):
        ArchiveDescription(
            document_id="d",
            title="t",
            files=one,
            start_date=date(2024, 2, 1),
            end_date=date(2024, 1, 1),
        )
    with pytest.raises(ValidationError, match="files"):
        ArchiveDescription(document_id="d", title="t", files=())
    with pytest.raises(ValidationError, match="sha256"):
        ArchiveFile(role="r", name="n", path=tmp_path, sha256="not-hex")
    with pytest.raises(SedaError, match="time zone"):
        build_transfer(
            ArchiveDescription(document_id="d", title="t", files=one),
            AGENCIES,
            datetime(2024, 1, 1),
        )


def _reply(body: str, ns: str = SEDA_21) -> bytes:
    return f'<ArchiveTransferReply xmlns="{ns}">{body}</ArchiveTransferReply>'.encode()


def test_refusal_reason_is_the_sae_comment_or_the_code_meaning() -> None:
    commented = read_transfer_reply(
        _reply(
            "<Comment>Empreinte invalide</Comment><Comment> pour a.pdf </Comment>"
            "<ReplyCode>207</ReplyCode><MessageRequestIdentifier>demat-d</MessageRequestIdentifier>"
        )
    )
    bare = read_transfer_reply(_reply("<ReplyCode>301</ReplyCode>"))

    assert (commented.accepted, commented.reply_code, commented.transfer_id) == (
        False,
        "207",
        "demat-d",
    )
    assert commented.reason == "invalid digest(s): Empreinte invalide pour a.pdf"
    assert (bare.accepted, bare.reason) == (False, "agreement quota exceeded")


def test_archive_id_is_the_top_unit_identifier() -> None:
    units = (
        "<DataObjectPackage><DescriptiveMetadata><ArchiveUnit id='u'><Content>"
        "<ArchivalAgencyArchiveUnitIdentifier> AE_1 </ArchivalAgencyArchiveUnitIdentifier>"
        "</Content><ArchiveUnit id='v'><Content><ArchivalAgencyArchiveUnitIdentifier>AE_1_1"
        "</ArchivalAgencyArchiveUnitIdentifier></Content></ArchiveUnit></ArchiveUnit>"
        "</DescriptiveMetadata></DataObjectPackage><ReplyCode>000</ReplyCode>"
    )
    reply = read_transfer_reply(_reply(units, "fr:gouv:culture:archivesdefrance:seda:v2.2"))
    assert (reply.version, reply.accepted, reply.archive_id) == ("2.2", True, "AE_1")


def test_acknowledgement_fields() -> None:
    ack = read_acknowledgement(
        f'<Acknowledgement xmlns="{SEDA_21}"><Date>2024-01-01T00:00:00Z</Date>'
        "<MessageIdentifier>ACK_9</MessageIdentifier>"
        "<MessageReceivedIdentifier>demat-d</MessageReceivedIdentifier>"
        "<Sender><Identifier>AD</Identifier></Sender>"
        "<Receiver><Identifier>TA</Identifier></Receiver></Acknowledgement>".encode()
    )
    assert (ack.message_identifier, ack.received_identifier, ack.sender, ack.receiver) == (
        "ACK_9",
        "demat-d",
        "AD",
        "TA",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<Acknowledgement xmlns='urn:other'/>", "expected a SEDA ArchiveTransferReply"),
        (
            _reply("").replace(b"ArchiveTransferReply", b"ArchiveTransfer"),
            "expected a SEDA ArchiveTransferReply",
        ),
        (b"<!DOCTYPE x [<!ENTITY a 'b'>]><x/>", "DOCTYPE declaration not accepted"),
        (b"<ArchiveTransferReply", "unreadable XML"),
    ],
)
def test_unreadable_replies_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(SedaError, match=message):
        read_transfer_reply(data)


def test_archive_written_from_a_stream_is_readable_by_tarfile(tmp_path: Path) -> None:
    # The simulator reads the archive in stream mode ("r|gz"): no seeking needed.
    objects = pack_objects(_description(tmp_path).files)
    write_archive(objects, tmp_path / "a.tar.gz")
    stream = io.BytesIO((tmp_path / "a.tar.gz").read_bytes())
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        assert [m.name for m in tar] == ["deliberation.pdf", "ar.xml"]
