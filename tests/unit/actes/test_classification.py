from __future__ import annotations

import datetime as dt
import json

import pytest

from connectors.actes.classification import Classification, format_code, parse_code
from connectors.actes.messages import read_message, to_xml
from tests.unit.actes.factory import CLASSIFICATION_DAY, classification


def test_codes() -> None:
    assert parse_code("7.10.2") == (7, 10, 2)
    assert format_code((7, 10, 2)) == "7.10.2"
    with pytest.raises(ValueError, match="is not made of numbers separated by dots"):
        parse_code("1.x")
    with pytest.raises(ValueError, match="has 1 level\\(s\\): 2 to 5 are expected"):
        parse_code("1", min_levels=2)


def test_lookups() -> None:
    current = classification()
    assert current.has_code("1.1") and current.has_code("1.1.2") and current.has_code("7.10.2")
    assert not current.has_code("1.3") and not current.has_code("1.1.2.1")
    assert not current.has_code("nonsense")
    assert current.children((1, 1)) == [(1, 1, 1), (1, 1, 2)]
    assert current.label("7.10") == "Divers"
    assert current.typology(5) == {
        "99_BU": "Document budgétaire",
        "70_DE": "Délibération",
        "99_SE": "Signature",
    }
    assert classification(typology=False).typology(5) is None


def test_json_round_trip() -> None:
    current = classification()
    text = current.to_json()
    stored = json.loads(text)
    assert stored["date"] == "2023-06-01"
    assert stored["matieres"][:3] == [[1], [1, 1], [1, 1, 1]]  # sorted, stable
    assert Classification.from_json(text) == current


def test_xml_round_trip_in_both_encodings() -> None:
    current = classification()
    for encoding in ("ISO-8859-1", "UTF-8"):
        data = to_xml(current, encoding)
        assert data.startswith(f"<?xml version='1.0' encoding='{encoding}'?>".encode())
        assert read_message(data) == current


def test_an_old_classification_without_typology_is_read() -> None:
    old = classification(dt.date(2004, 4, 1), typology=False)
    read = read_message(to_xml(old))
    assert isinstance(read, Classification)
    assert read.natures[5].abbr == "BF" and read.natures[5].pj_types == {}
    assert read.date == dt.date(2004, 4, 1)


def test_the_nature_code_falls_back_on_the_abbreviation() -> None:
    data = to_xml(classification()).replace(b' actes:CodeNatureActe="5"', b"")
    read = read_message(data)
    assert isinstance(read, Classification)
    assert read.natures[5].abbr == "BF"
    assert read.date == CLASSIFICATION_DAY
