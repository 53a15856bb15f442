"""Entity settings through the command line and the TOML file: checked when saved."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from tests.e2e.harness import ROOT, demat, demat_env, run_cli

ENTITY = "214000150"


def stored_settings(data_dir: Path) -> dict[str, object]:
    db = sqlite3.connect(data_dir / "demat.db")
    try:
        (raw,) = db.execute("SELECT connectors FROM entities WHERE siren = ?", (ENTITY,)).fetchone()
    finally:
        db.close()
    value: dict[str, object] = json.loads(raw)
    return value


def test_numbers_given_on_the_command_line_are_taken_as_numbers(tmp_path: Path) -> None:
    env = demat_env(tmp_path / "data")
    out = run_cli(env, "entity", "add", ENTITY, "--name", "Commune de Test",
                  "--set", "depot.url=http://gf.example/inbox", "--set", "depot.timeout=30")
    assert f"entity {ENTITY} saved" in out
    assert stored_settings(tmp_path / "data") == {
        "depot": {"url": "http://gf.example/inbox", "timeout": 30.0}}


def test_a_bad_value_is_refused_when_saved_naming_entity_connector_and_field(
        tmp_path: Path) -> None:
    env = demat_env(tmp_path / "data")
    done = subprocess.run(
        demat("entity", "add", ENTITY, "--name", "Commune de Test",
              "--set", "depot.url=http://gf.example/inbox", "--set", "depot.timeout=soon"),
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert (f"entity {ENTITY}: connectors.depot.timeout: Input should be a valid number, "
            "unable to parse string as a number (got 'soon')") in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_value_in_the_toml_file_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "demat.toml"
    config.write_text(f'[entities.{ENTITY}]\nname = "Commune"\n'
                      f'[entities.{ENTITY}.connectors.depot]\nurl = "gf.example"\n')
    env = demat_env(tmp_path / "data", DEMAT_CONFIG=str(config), DEMAT_PORT="0")
    done = subprocess.run(demat("serve"), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert (f"cannot start: entity {ENTITY}: connectors.depot.url: must be an http(s) URL "
            "(got 'gf.example')") in done.stderr
