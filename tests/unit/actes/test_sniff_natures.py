from __future__ import annotations

import io
import tarfile

import pytest

from broker.sniff import FileKind, sniff
from connectors.actes.natures import ANNEX_KINDS, NATURES, find_nature, nature
from tests.unit.actes.factory import EXE, JPEG, PDF, PNG, XML, zip_bytes


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (PDF, FileKind.PDF),
        (PNG, FileKind.PNG),
        (JPEG, FileKind.JPEG),
        (XML, FileKind.XML),
        (b"\xef\xbb\xbf  <?xml version='1.0'?><a/>", FileKind.XML),
        ("<?xml version='1.0'?><a/>".encode("utf-16"), FileKind.XML),
        (b"\n<actes:Acte xmlns:actes='x'/>", FileKind.XML),
        (zip_bytes(), FileKind.ZIP),
        (b"\x1f\x8b\x08\x00" + bytes(10), FileKind.GZIP),
        (_tar(), FileKind.TAR),
        (EXE, FileKind.UNKNOWN),
        (b"", FileKind.UNKNOWN),
        (b"plain text", FileKind.UNKNOWN),
    ],
)
def test_kind_is_recognised_by_content(head: bytes, kind: FileKind) -> None:
    assert sniff(head[:512]) is kind


def test_natures_table() -> None:
    assert [(n.code, n.abbr) for n in NATURES] == [
        (1, "DE"),
        (2, "AR"),
        (3, "AI"),
        (4, "CC"),
        (5, "BF"),
        (6, "AU"),
    ]
    assert [n.type_piece for n in NATURES] == ["99_DE", "99_AR", "99_AI", "99_DC", "99_BU", "99_AU"]
    assert nature("BF").label == "Documents budgétaires et financiers"


@pytest.mark.parametrize("value", [1, "1", " DE ", "de"])
def test_either_form_gives_the_nature(value: int | str) -> None:
    assert nature(value).abbr == "DE"


@pytest.mark.parametrize("value", [0, 7, "7", "XX", "", True])
def test_unknown_nature(value: int | str) -> None:
    assert find_nature(value) is None
    with pytest.raises(ValueError, match="nature must be 1 to 6 or DE/AR/AI/CC/BF/AU"):
        nature(value)


def test_file_kinds_per_nature() -> None:
    assert nature("BF").main_kinds == {FileKind.PDF, FileKind.XML}
    assert nature("DE").main_kinds == {FileKind.PDF, FileKind.JPEG, FileKind.PNG}
    assert {FileKind.PDF, FileKind.XML, FileKind.JPEG, FileKind.PNG} == ANNEX_KINDS
    assert nature("AU").default_pj_types == {
        "99_AU": "Autre document",
        "99_SE": "Fichier de signature électronique",
    }
