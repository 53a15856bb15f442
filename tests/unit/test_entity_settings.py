"""Entity settings are checked when saved, stored as validated values, secrets kept hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.entity_settings import MASK, SettingsError
from broker.wiring import catalog

SETTINGS = catalog().settings
ENTITY = "214000150"


def test_values_from_the_command_line_are_stored_as_what_they_mean() -> None:
    stored = SETTINGS.validate(ENTITY, {"depot": {"url": "http://gf/inbox", "timeout": "30"}})
    assert stored == {"depot": {"url": "http://gf/inbox", "timeout": 30.0}}


def test_every_problem_is_named_by_entity_connector_and_field() -> None:
    with pytest.raises(SettingsError) as caught:
        SETTINGS.validate(ENTITY, {
            "depot": {"url": "gf.example/inbox", "timeout": "-1"},
            "parapheur": {"url": "http://p", "type": "ACTES"},
            "ftp": {"url": "ftp://x"},
        })
    assert caught.value.problems == [
        (f"entity {ENTITY}: connectors.depot.url",
         "must be an http(s) URL (got 'gf.example/inbox')"),
        (f"entity {ENTITY}: connectors.depot.timeout", "Input should be greater than 0 (got '-1')"),
        (f"entity {ENTITY}: connectors.parapheur.sous_type", "required"),
        (f"entity {ENTITY}: connectors.ftp",
         "no connector has settings 'ftp' (known: callback, chorus, depot, parapheur, sae, tdt)"),
    ]


def test_files_that_must_exist_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        SETTINGS.validate(ENTITY, {"tdt": {"url": "https://tdt", "cert": str(tmp_path / "no.pem"),
                                           "key": "relative.pem"}})
    fields = [where.rsplit(".", 1)[1] for where, _ in caught.value.problems]
    assert fields == ["cert", "key"]
    assert "must be an existing PEM file's absolute path" in caught.value.problems[0][1]


def sae(**secret: str) -> dict[str, str]:
    return {"url": "https://sae", "login": "demat", "archival_agency": "FRAD040",
            "transferring_agency": ENTITY, "originating_agency": ENTITY, **secret}


def test_a_secret_is_given_in_clear_by_file_or_by_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "sae.pass"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("DEMAT_SAE_PASSWORD", "from-the-env")
    for given, expected in ((sae(password="in-clear"), "in-clear"),
                            (sae(password_file=str(secret_file)), "from-a-file"),
                            (sae(password_env="DEMAT_SAE_PASSWORD"), "from-the-env")):
        stored = SETTINGS.validate(ENTITY, {"sae": given})
        parsed = SETTINGS.parse(ENTITY, "sae", stored["sae"])
        assert parsed.secret("password") == expected
        if "password" not in given:
            # A reference is stored as a reference: the secret itself never reaches the store.
            assert "password" not in stored["sae"] and "from-" not in str(stored)


def test_a_secret_is_given_one_way_only_and_needed() -> None:
    with pytest.raises(SettingsError, match="give password one way only"):
        SETTINGS.validate(ENTITY, {"sae": sae(password="x", password_env="X")})
    with pytest.raises(SettingsError, match="a password is needed"):
        SETTINGS.validate(ENTITY, {"sae": sae()})


def test_what_a_person_sees_masks_secrets() -> None:
    stored = SETTINGS.validate(ENTITY, {"sae": sae(password="hunter2"),
                                        "depot": {"url": "http://gf", "token": "tok-123"}})
    shown = SETTINGS.show(ENTITY, stored)
    assert shown["sae"]["password"] == MASK and shown["depot"]["token"] == MASK
    assert "hunter2" not in str(shown) and "tok-123" not in str(shown)
    assert shown["depot"]["timeout"] == 30.0  # defaults shown too
