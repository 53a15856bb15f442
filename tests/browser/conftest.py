"""Headless Chromium (Debian's package, driven by Playwright) and the checks every page
passes: a screenshot kept as an artefact, and axe-core run in the page."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("DEMAT_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))
SCREENSHOTS = ARTIFACTS / "screenshots"


def chromium_path() -> str:
    found = os.environ.get("DEMAT_CHROMIUM") or shutil.which("chromium") or ""
    if not found or not Path(found).exists():
        message = "Chromium not found (apt-get install chromium, or set DEMAT_CHROMIUM)"
        if os.environ.get("DEMAT_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message} and DEMAT_REQUIRE_SERVICES=1")
        pytest.skip(f"SKIPPED, not passed: {message}")
    return found


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    path = chromium_path()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


SERIOUS = ("serious", "critical")


async def check_page(page: Any, name: str, *, scripted: Any = None,
                     origin: str = "") -> None:
    """Save a screenshot of the page, then run axe-core in it: no serious or critical
    violation allowed. A page without script is checked as its HTML, loaded in
    ``scripted`` (a page of ``origin`` that runs script)."""
    from axe_playwright_python.async_playwright import Axe

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]+', '-', name)}.png"),
                          full_page=True)
    if scripted is not None:
        html = await page.content()
        await scripted.goto(f"{origin}/ui/connexion")
        await scripted.set_content(html)
        page = scripted
    results = await Axe().run(page)
    bad = [v for v in results.response["violations"] if v.get("impact") in SERIOUS]
    assert not bad, f"{name}: " + "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        f"{[n['target'] for n in v['nodes']][:3]}" for v in bad)
