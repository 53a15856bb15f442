from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from connectors.actes import names
from connectors.actes.names import EnvelopeName, IdActe, MessageFileName

DAY = dt.date(2017, 12, 7)


def test_id_acte_is_built_from_the_act() -> None:
    assert names.id_acte("034", "491011698", DAY, "CL20171227_06", 1) == (
        "034-491011698-20171207-CL20171227_06-DE"
    )
    assert names.id_acte("02A", "214400152", DAY, "A1", "cc") == "02A-214400152-20171207-A1-CC"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("34", "491011698", DAY, "N1", 1), "département must be 3 characters"),
        (("034", "491011699", DAY, "N1", 1), "fails its checksum"),
        (("034", "491011698", DAY, "12-3", 1), "contains '-'"),
        (("034", "491011698", DAY, "N1", 7), "nature must be 1 to 6"),
    ],
)
def test_id_acte_refuses_bad_parts(args: tuple[str, str, dt.date, str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        names.id_acte(*args)


def test_id_acte_parses_back() -> None:
    parsed = names.parse_id_acte("044-214400152-20181106-TEST_DGCL_4-DE")
    assert parsed == IdActe("044", "214400152", dt.date(2018, 11, 6), "TEST_DGCL_4", "DE")
    assert str(parsed) == "044-214400152-20181106-TEST_DGCL_4-DE"
    with pytest.raises(ValueError, match="is not an IDActe"):
        names.parse_id_acte("044-214400152-2018-X-DE")


def test_names_of_a_sending() -> None:
    act = names.parse_id_acte("034-491011698-20171207-CL20171227_06-DE")
    base = names.message_base("034", "491011698", "1-1", act)
    assert names.file_name(base, 0, "xml") == "034-491011698-20171207-CL20171227_06-DE-1-1_0.xml"
    assert names.file_name(base, 1, "pdf", "32_DP") == (
        "32_DP-034-491011698-20171207-CL20171227_06-DE-1-1_1.pdf"
    )
    assert names.message_base("044", "214400152", "7-1") == "044-214400152----7-1"
    envelope = names.envelope_name("EACT", "214502494", dt.date(2017, 7, 17), 5)
    assert envelope == "EACT--214502494--20170717-5.xml"
    assert names.archive_name("SLO", envelope) == "SLO-EACT--214502494--20170717-5.tar.gz"
    assert names.prefecture_envelope_name(
        "EACT", "SPREF0441", "214400152", dt.date(2018, 10, 12), 9
    ) == ("EACT--SPREF0441-214400152-20181012-9.xml")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: names.archive_name("SL", "EACT--214502494--20170717-5.xml"), "3 capital letters"),
        (lambda: names.envelope_name("eact", "214502494", DAY, 1), "4 capital letters"),
        (
            lambda: names.prefecture_envelope_name("EACT", "PREF44", "214502494", DAY, 1),
            "SPREFdddd",
        ),
        (lambda: names.message_base("044", "214400152", "11"), "T-S"),
    ],
)
def test_name_builders_refuse_bad_parts(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "034-491011698-20171207-CL20171227_06-DE-1-1_0.xml",
            MessageFileName(None, "034", "491011698", DAY, "CL20171227_06", "DE", "1-1", 0, "xml"),
        ),
        (
            "32_DP-034-491011698-20171207-CL20171227_06-DE-1-1_1.pdf",
            MessageFileName(
                "32_DP", "034", "491011698", DAY, "CL20171227_06", "DE", "1-1", 1, "pdf"
            ),
        ),
        # Received suffixes are anything, or nothing.
        (
            "044-214400152-20181106-TEST_DGCL_4-DE-6-2_10.xml",
            MessageFileName(
                None,
                "044",
                "214400152",
                dt.date(2018, 11, 6),
                "TEST_DGCL_4",
                "DE",
                "6-2",
                10,
                "xml",
            ),
        ),
        (
            "034-491011698-20171207-CL20171227_06-DE-1-2.xml",
            MessageFileName(
                None, "034", "491011698", DAY, "CL20171227_06", "DE", "1-2", None, "xml"
            ),
        ),
        (
            "044-214400152----1-3_1.xml",
            MessageFileName(None, "044", "214400152", None, None, None, "1-3", 1, "xml"),
        ),
        (
            "999-1234----7-2_1.xml",
            MessageFileName(None, "999", "1234", None, None, None, "7-2", 1, "xml"),
        ),
        (
            "SLO-EACT--214502494--20170717-5.tar.gz",
            EnvelopeName(
                "EACT", "214502494", dt.date(2017, 7, 17), 5, None, "SLO", False, "tar.gz"
            ),
        ),
        (
            "EACT--SPREF0441-214400152-20181012-9.xml",
            EnvelopeName(
                "EACT", "214400152", dt.date(2018, 10, 12), 9, "SPREF0441", None, False, "xml"
            ),
        ),
        (
            "ANO_EACT--214400152--20180925-1.xml",
            EnvelopeName("EACT", "214400152", dt.date(2018, 9, 25), 1, None, None, True, "xml"),
        ),
    ],
)
def test_received_names_are_parsed(name: str, expected: object) -> None:
    assert names.parse_name(name) == expected


def test_parsed_name_gives_the_id_acte() -> None:
    parsed = names.parse_name("99_AI-001-862614864-20150805-20150805B-AI-2-1_1.pdf")
    assert isinstance(parsed, MessageFileName)
    assert str(parsed.id_acte) == "001-862614864-20150805-20150805B-AI"
    assert names.type_code("99_AI-001-862614864-20150805-20150805B-AI-2-1_1.pdf") == "99_AI"
    assert names.type_code("acte.pdf") is None


@pytest.mark.parametrize("name", ["acte.pdf", "034-491011698-20171207-N-DE-1-1_0", ""])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="follows neither"):
        names.parse_name(name)
