from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import Api, Proc, demat_env, run_cli, start_demat, start_simulator

ENTITY = "214000150"
OTHER_ENTITY = "200000008"


@dataclass
class Stack:
    api: Api
    url: str
    gf_url: str
    serve: Proc
    gf: Proc
    env: dict[str, str]
    data_dir: Path
    token: str


def write_config(path: Path, gf_url: str, depot_path: str = "/inbox") -> Path:
    path.write_text(
        f'[entities.{ENTITY}]\nname = "Commune de Test"\n'
        f'[entities.{ENTITY}.connectors.depot]\nurl = "{gf_url}{depot_path}"\n'
        f'[entities.{OTHER_ENTITY}]\nname = "Autre commune"\n'
        f'[entities.{OTHER_ENTITY}.connectors.depot]\nurl = "{gf_url}/no-such-inbox"\n')
    return path


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """`demat serve` (embedded + SQLite) and a gf simulator, as real processes."""
    gf, gf_url = await start_simulator("gf", tmp_path / "gf.log")
    env = demat_env(tmp_path / "data", DEMAT_CONFIG=str(write_config(tmp_path / "demat.toml",
                                                                      gf_url)),
                    DEMAT_RETRY_LADDER="300ms,300ms,300ms", DEMAT_RETRY_IN_CALL="3",
                    DEMAT_PORT="0")
    run_cli(env, "db", "upgrade")
    token = run_cli(env, "token", "create", "--operator").strip()
    serve, url = await start_demat("serve", env, tmp_path / "serve.log")
    api = Api(url, token)
    try:
        yield Stack(api, url, gf_url, serve, gf, env, tmp_path / "data", token)
    finally:
        await api.close()
        await serve.stop()
        await gf.stop()
