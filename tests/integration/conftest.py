"""Fixtures of the integration tests on the store: a runtime on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.runtime import Runtime
from tests.integration.store_helpers import open_runtime


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest.fixture
async def rt(database_url: str | None, tmp_path: Path) -> AsyncIterator[Runtime]:
    runtime = await open_runtime(database_url, tmp_path / "data")
    try:
        yield runtime
    finally:
        await runtime.close()
