"""The OpenAPI document tells the truth: a schemathesis run against a real server.

Every check (``schemathesis.toml`` beside this file says which operations skip one, and
why), a few examples per operation, a fixed seed: no server error, no status code, header
or body the document does not list, no request the document forbids that the server
accepts, and no request it allows that the server refuses.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.e2e.conftest import Stack

CONFIG = Path(__file__).with_name("schemathesis.toml")
ST = Path(sys.executable).with_name("st")


async def test_the_server_does_what_its_openapi_document_says(stack: Stack) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(ST), "--no-color", "--config-file", str(CONFIG), "run",
        f"{stack.url}/api/v1/openapi.json", "-H", f"Authorization: Bearer {stack.token}",
        "--max-examples", "5", "--seed", "1", "--workers", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(300):
        out, _ = await proc.communicate()
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    summary = report.split("SUMMARY")[-1]
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    assert selected and selected[1] == selected[2], summary  # every operation of the document
    assert f"Tested: {selected[1]}" in summary, summary
    assert "failure" not in summary and " passed" in summary, summary
