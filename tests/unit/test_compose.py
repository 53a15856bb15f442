"""docker-compose.yml: every command it runs exists in the CLI, every setting is known."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any

import click
import yaml

from broker.cli import main
from broker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _rest(ctx: click.Context) -> list[str]:
    # click keeps a subcommand's name apart from its arguments until it is resolved.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*ctx.protected_args, *ctx.args]


def _resolves(args: list[str]) -> click.Command:
    """Walk the click tree as `demat ARGS` would, checking options on the way."""
    ctx = main.make_context("demat", list(args), resilient_parsing=True)
    command: click.Command = main
    rest = _rest(ctx)
    while isinstance(command, click.Group) and rest:
        name, *rest = rest
        sub = command.get_command(ctx, name)
        assert sub is not None, f"`demat {' '.join(args)}`: no command {name!r}"
        ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=False)
        command, rest = sub, _rest(ctx)
    return command


def test_every_compose_command_exists_in_the_cli() -> None:
    services = _compose()["services"]
    commands = {name: s["command"] for name, s in services.items() if "command" in s}
    assert {"api", "relay", "worker", "gf", "parapheur", "tdt", "asalae", "migrate"} <= set(
        commands)
    for name, command in commands.items():
        assert command[0] == "demat", name
        leaf = _resolves(command[1:])
        assert not isinstance(leaf, click.Group), f"{name}: `{' '.join(command)}` is a group"


def test_the_cli_check_catches_a_wrong_command() -> None:
    import pytest

    with pytest.raises(AssertionError, match="no command 'wrok'"):
        _resolves(["wrok"])


def test_compose_shape_and_settings() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"rabbitmq", "postgres"} <= set(services)
    assert "management" in services["rabbitmq"]["image"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    known = {f"DEMAT_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        for key in service.get("environment", {}):
            if key.startswith("DEMAT_"):
                assert key in known, f"{name}: unknown setting {key}"
    env = services["api"]["environment"]
    assert env["DEMAT_AMQP_URL"].startswith("amqp://")
    assert env["DEMAT_DATABASE_URL"].startswith("postgresql+asyncpg://")


def test_example_config_declares_valid_entities(tmp_path: Path) -> None:
    from broker.ids import siren_problem
    from broker.wiring import catalog

    config = tomllib.loads((ROOT / "docs/examples/demat.toml").read_text())
    assert config["entities"]
    for siren, table in config["entities"].items():
        assert siren_problem(siren) is None
        assert "depot" in table["connectors"]
        connectors = dict(table["connectors"])
        # Certificate and secret files live on the operator's machine: stand-ins here.
        pem = tmp_path / "stand-in.pem"
        pem.write_text("-----BEGIN CERTIFICATE-----\n")
        secret = tmp_path / "stand-in-secret"
        secret.write_text("s3cret\n")
        if "tdt" in connectors:
            connectors["tdt"] = {**connectors["tdt"], **{
                k: str(pem) for k in ("cert", "key", "ca") if k in connectors["tdt"]}}
        connectors = {name: {k: (str(secret) if k.endswith("_file") else v)
                             for k, v in values.items()}
                      for name, values in connectors.items()}
        catalog().settings.validate(siren, connectors)
