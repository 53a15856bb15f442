from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from broker.flows.base import Problem, UploadedFile
from connectors.actes import rules
from connectors.actes.problems import problems_from
from connectors.actes.rules import MAX_TOTAL_BYTES, ActeMetadata, check_act
from tests.unit.actes.factory import (
    EXE,
    JPEG,
    PDF,
    PNG,
    TODAY,
    XML,
    classification,
    meta,
    upload,
    zip_bytes,
)

GOOD = {
    "nature": "DE",
    "numero": "2024_042",
    "date": "2024-03-01",
    "objet": "Vente d'un terrain communal",
    "classification": "1.1.2",
}
ACT = upload("acte", "acte.pdf", PDF)


def metadata_problems(**changes: Any) -> list[Problem]:
    try:
        ActeMetadata.model_validate({**GOOD, **changes})
    except ValidationError as exc:
        return problems_from(exc)
    return []


# -- the metadata model: each bad input names its field ------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"nature": 7}, "nature", "nature must be 1 to 6 or DE/AR/AI/CC/BF/AU, got 7"),
        ({"nature": "XY"}, "nature", "nature must be 1 to 6 or DE/AR/AI/CC/BF/AU, got 'XY'"),
        ({"nature": None}, "nature", "nature must be 1 to 6 or DE/AR/AI/CC/BF/AU, got None"),
        (
            {"numero": "12-3"},
            "numero",
            "the act number '12-3' contains '-': only A-Z, 0-9 and _ are allowed",
        ),
        (
            {"numero": "delib_12"},
            "numero",
            "contains 'b', 'd', 'e', 'i', 'l': only A-Z, 0-9 and _ are allowed (write 'DELIB_12')",
        ),
        ({"numero": "A" * 16}, "numero", "the act number has 16 characters, at most 15"),
        ({"numero": ""}, "numero", "the act number is empty: 1 to 15 characters"),
        ({"numero": "N° 12"}, "numero", "contains ' ', '°'"),
        ({"objet": "x" * 501}, "objet", "the subject has 501 characters, at most 500 are allowed"),
        ({"objet": "  \n"}, "objet", "the subject (objet) is empty"),
        ({"objet": "Vente\x07"}, "objet", "the subject contains the control character U+0007"),
        ({"date": "2024-13-01"}, "date", "valid date"),
        ({"date": "01/03/2024"}, "date", "date must be YYYY-MM-DD, got '01/03/2024'"),
        ({"date": 1709251200}, "date", "date must be YYYY-MM-DD, got 1709251200"),
        (
            {"classification": "1"},
            "classification",
            "classification code '1' has 1 level(s): 2 to 5 are expected",
        ),
        (
            {"classification": "1.a"},
            "classification",
            "classification code '1.a' is not made of numbers separated by dots",
        ),
        ({"classification": "1.1.1.1.1.1"}, "classification", "has 6 level(s)"),
        (
            {"type_piece": "DE"},
            "type_piece",
            "typology code must be two digits, _, then 2 to 5 capitals or digits, like 99_DE, "
            "got 'DE'",
        ),
        ({"type_pj": ["99_DE", "annexe"]}, "type_pj[1]", "typology code must be two digits"),
        ({"signature": "maybe"}, "signature", "valid boolean"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_bad_metadata_names_the_field(changes: dict[str, Any], field: str, message: str) -> None:
    problems = metadata_problems(**changes)
    assert [p.field for p in problems] == [field]
    assert message in problems[0].message


def test_missing_metadata_is_required() -> None:
    with pytest.raises(ValidationError) as caught:
        ActeMetadata.model_validate({"nature": 1})
    problems = problems_from(caught.value)
    assert {p.field for p in problems} == {"numero", "date", "objet", "classification"}
    assert {p.message for p in problems} == {"is required"}


def test_good_metadata_and_defaults() -> None:
    assert metadata_problems() == []
    act = meta(nature="5", numero="BP_2024", objet="x" * 500)
    assert act.nature == 5 and act.nature_info.abbr == "BF"
    assert act.piece_type == "99_BU" and act.annex_types(2) == ["99_BU", "99_BU"]
    assert meta(type_pj=["70_DE"]).annex_types(1) == ["70_DE"]


# -- what needs the files, the classification or today -------------------------------------


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize(
    ("changes", "files", "field", "message"),
    [
        (
            {"date": "2024-03-16"},
            [ACT],
            "date",
            "the decision date 2024-03-16 is in the future (today is 2024-03-15)",
        ),
        (
            {"classification": "9.9"},
            [ACT],
            "classification",
            "classification code 9.9: 9 does not exist in the classification of 2023-06-01",
        ),
        (
            {"classification": "1.3"},
            [ACT],
            "classification",
            "classification code 1.3 does not exist in the classification of 2023-06-01 "
            "(under 1: 1.1, 1.2)",
        ),
        (
            {"classification": "1.1.9"},
            [ACT],
            "classification",
            "classification code 1.1.9 does not exist in the classification of 2023-06-01 "
            "(under 1.1: 1.1.1, 1.1.2)",
        ),
        (
            {"classification": "1.2.1"},
            [ACT],
            "classification",
            "classification code 1.2.1 has one level too many: 1.2 has no sub-level in the "
            "classification of 2023-06-01",
        ),
        (
            {"classification": "1.1.2.4.5"},
            [ACT],
            "classification",
            "classification code 1.1.2.4.5: 1.1.2.4 does not exist",
        ),
        (
            {"type_piece": "99_AU"},
            [ACT],
            "type_piece",
            "typology code 99_AU is not allowed for nature DE by the classification of 2023-06-01 "
            "(allowed: 32_DP, 99_DE, 99_SE)",
        ),
        (
            {"type_pj": ["43_NC"]},
            [ACT, upload("annexe", "a.pdf", PDF)],
            "type_pj[0]",
            "typology code 43_NC is not allowed for nature DE",
        ),
        (
            {"type_pj": ["99_SE", "99_SE"]},
            [ACT, upload("annexe", "a.pdf", PDF)],
            "type_pj",
            "type_pj has 2 code(s) for 1 annex(es): give one code per annex",
        ),
        (
            {},
            [upload("acte", "acte.pdf", zip_bytes())],
            "files.acte",
            "by its content, the act document 'acte.pdf' is ZIP: an act of nature DE must be "
            "PDF, JPEG or PNG",
        ),
        (
            {},
            [ACT, upload("annexe", "annexe.pdf", EXE)],
            "files.annexe",
            "by its content, the annex 'annexe.pdf' is of no recognised type: an annex must be "
            "PDF, XML, JPEG or PNG",
        ),
        (
            {"nature": "BF", "classification": "7.1"},
            [upload("acte", "budget.jpg", JPEG)],
            "files.acte",
            "by its content, the act document 'budget.jpg' is JPEG: an act of nature BF must be "
            "PDF or XML",
        ),
        (
            {"nature": "AU", "classification": "7.1"},
            [upload("acte", "acte.xml", XML)],
            "files.acte",
            "an act of nature AU must be PDF, JPEG or PNG",
        ),
        (
            {},
            [
                upload("acte", "a.pdf", PDF, size=MAX_TOTAL_BYTES - 9),
                upload("annexe", "b.png", PNG, size=10),
            ],
            "files",
            "the act and its annexes total 157,286,401 bytes, more than the 157,286,400 bytes "
            "(150 MiB) allowed",
        ),
    ],
)
def test_bad_act_names_the_field(
    changes: dict[str, Any], files: list[UploadedFile], field: str, message: str
) -> None:
    problem = only(check_act(meta(**changes), files, classification(), TODAY))
    assert problem.field == field
    assert message in problem.message


def test_a_code_of_an_outdated_classification() -> None:
    # 1.1.2 was in the 2023 classification, the current one (2024) dropped it.
    current = classification(dt.date(2024, 1, 1), matieres={"1": "", "1.1": "", "1.1.1": ""})
    problem = only(check_act(meta(classification="1.1.2"), [ACT], current, TODAY))
    assert problem == Problem(
        "classification",
        "classification code 1.1.2 does not exist in "
        "the classification of 2024-01-01 (under 1.1: 1.1.1)",
    )
    assert rules.classification_date_problem(dt.date(2023, 6, 1), dt.date(2024, 1, 1)) == (
        "the classification of 2023-06-01 is not the current one (2024-01-01): update the "
        "classification before sending"
    )
    assert rules.classification_date_problem(dt.date(2024, 1, 1), dt.date(2024, 1, 1)) is None


def test_without_typology_the_defaults_apply() -> None:
    old = classification(typology=False)
    assert check_act(meta(type_piece="99_SE"), [ACT], old, TODAY) == []
    problem = only(check_act(meta(type_piece="32_DP"), [ACT], old, TODAY))
    assert problem == Problem(
        "type_piece",
        "typology code 32_DP is not allowed for nature DE by the defaults (allowed: 99_DE, 99_SE)",
    )
    assert check_act(meta(type_piece="32_DP"), [ACT], classification(), TODAY) == []


def test_a_nature_missing_from_the_classification() -> None:
    current = classification()
    current = current.model_copy(update={"natures": {1: current.natures[1]}})
    problem = only(check_act(meta(nature="AU", classification="7.1"), [ACT], current, TODAY))
    assert problem == Problem("nature", "nature AU is not in the classification of 2023-06-01")


def test_a_good_act_has_no_problem() -> None:
    files = [
        ACT,
        upload("annexe", "a.png", PNG),
        upload("annexe", "b.jpg", JPEG),
        upload("annexe", "c.xml", XML),
    ]
    assert (
        check_act(meta(type_pj=["99_SE", "32_DP", "99_DE"]), files, classification(), TODAY) == []
    )
    assert check_act(meta(date=TODAY), [upload("acte", "a.jpg", JPEG)], None, TODAY) == []
    budget = meta(nature=5, classification="7.10.2")
    assert check_act(budget, [upload("acte", "budget.xml", XML)], classification(), TODAY) == []


# -- the sender ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("siren", "departement", "arrondissement", "field", "message"),
    [
        ("214400153", "044", "1", "siren", "SIREN 214400153 fails its checksum (Luhn)"),
        ("21440015", "044", "1", "siren", "SIREN must be 9 digits, got '21440015'"),
        ("214400152", "34", "1", "departement", "département must be 3 characters"),
        ("214400152", "02C", "1", "departement", "got '02C'"),
        ("214400152", "13A", "1", "departement", "got '13A'"),
        ("214400152", "123", "1", "departement", "got '123'"),
        ("214400152", "044", "12", "arrondissement", "arrondissement must be 1 digit, got '12'"),
        ("214400152", "044", "", "arrondissement", "arrondissement must be 1 digit, got ''"),
    ],
)
def test_bad_sender_names_the_field(
    siren: str, departement: str, arrondissement: str, field: str, message: str
) -> None:
    problem = only(rules.entity_problems(siren, departement, arrondissement))
    assert problem.field == field
    assert message in problem.message


@pytest.mark.parametrize("departement", ["001", "034", "02A", "02B", "974", "095"])
def test_good_departements(departement: str) -> None:
    assert rules.departement_problem(departement) is None


def test_sender_extras() -> None:
    assert only(rules.entity_problems("214400152", "044", "1", "3")) == Problem(
        "nature", "authority type (IDCL Nature) must be 2 digits, got '3'"
    )
    assert rules.email_problem("actes@mairie-exemple.fr") is None
    assert "is not an e-mail address" in (rules.email_problem("a+b@mairie.fr") or "")


def test_duplicate_number_rule() -> None:
    problem = rules.duplicate_numero("2024_042")
    assert problem.field == "numero"
    assert problem.message.startswith(
        "the act number '2024_042' is already used: an act number is used once per entity"
    )
