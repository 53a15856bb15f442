"""The API of a runtime served in the test's own loop (aiohttp's test server)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from broker.api.app import build_app
from broker.runtime import Runtime


@contextlib.asynccontextmanager
async def served(rt: Runtime) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of ``rt``'s API; the runtime is closed after it."""
    client = TestClient(TestServer(build_app(rt)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await rt.close()
