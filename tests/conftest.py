"""Shared fixtures: real RabbitMQ and PostgreSQL when they answer.

A test that needs a server skips, saying which and why, when the server does
not answer; with ``DEMAT_REQUIRE_SERVICES=1`` (set by CI) it fails instead, so a
skipped server test can never pass as green in CI.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

AMQP_URL = os.environ.get("DEMAT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN_URL = os.environ.get("DEMAT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        address = (parts.hostname or "127.0.0.1", parts.port or default_port)
        with socket.create_connection(address, 1):
            return True
    except OSError:
        return False


def _need(server: str, url: str, port: int) -> None:
    if _answers(url, port):
        return
    message = f"{server} does not answer at {url}"
    if os.environ.get("DEMAT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and DEMAT_REQUIRE_SERVICES=1")
    pytest.skip(f"SKIPPED, not passed: {message}")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    _need("RabbitMQ", AMQP_URL, 5672)
    return AMQP_URL


@pytest.fixture
def amqp_prefix() -> str:
    """A queue/exchange prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    _need("PostgreSQL", PG_ADMIN_URL, 5432)
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (SQLAlchemy asyncpg URL)."""
    import asyncpg

    name = f"demat_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(pg_server)
    netloc = parts.netloc
    yield f"postgresql+asyncpg://{netloc}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def unused_port() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    yield port
