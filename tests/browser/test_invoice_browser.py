"""An invoice's statuses sent from the dashboard in a real browser, against `demat serve`
and the Chorus Pro and finance software simulators as processes: the form says which
statuses are possible, a refusal names what is missing and keeps what was typed, the
status sent reaches Chorus Pro; the page passes axe-core."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from simulators.chorus_samples import siret
from tests.browser.conftest import check_page
from tests.e2e.actes_stack import _table, stop_procs
from tests.e2e.harness import Api, demat_env, run_cli, start_demat, start_simulator

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

CODE = siret(61)


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(locale="fr-FR")
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def test_an_operator_sends_an_invoices_status_from_its_page(
        page: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    chorus, chorus_url = await start_simulator("chorus", tmp_path / "chorus.log")
    gf, gf_url = await start_simulator("gf", tmp_path / "gf.log")
    procs = [chorus, gf]
    config = tmp_path / "demat.toml"
    config.write_text("\n".join([
        f"[entities.{CODE[:9]}]", 'name = "Commune aux factures"',
        *_table(f"entities.{CODE[:9]}.connectors.chorus", {
            "oauth_url": f"{chorus_url}/api/oauth/token", "api_url": chorus_url,
            "client_id": "demat-broker", "client_secret": "piste-secret",
            "login": "TECH_DEMAT", "password": "cpro-password", "siret": CODE,
            "poll_every": "1"}),
        *_table(f"entities.{CODE[:9]}.connectors.depot", {"url": f"{gf_url}/inbox"}),
    ]) + "\n", encoding="utf-8")
    env = demat_env(tmp_path / "data", DEMAT_CONFIG=str(config), DEMAT_PORT="0",
                    DEMAT_FETCH_TICK="200ms", DEMAT_POLL_FIRST="300ms")
    run_cli(env, "db", "upgrade")
    token = run_cli(env, "token", "create", "--operator").strip()
    api: Api | None = None
    try:
        serve, url = await start_demat("serve", env, tmp_path / "serve.log")
        procs.append(serve)
        api = Api(url, token)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{chorus_url}/_control/invoices",
                                 json={"siret": CODE}) as resp:
                [invoice] = (await resp.json())["ids"]
            document = await _waiting_for_status(api)

            await page.goto(f"{url}/")
            await page.get_by_label("Jeton d'API").fill(token)
            await page.get_by_role("button", name="Se connecter").click()
            await page.wait_for_url(re.compile(r".*/ui/$"))
            await page.goto(f"{url}/ui/documents/{document}")
            form = page.get_by_role("region", name="Statuts de la facture (Chorus Pro)")
            await expect(form).to_contain_text("Statuts possibles ensuite : A_RECYCLER")
            await check_page(page, "facture-statuts")

            # The page follows the document live; what is being typed stays.
            entries = page.locator("ol.timeline > li")
            before = await entries.count()
            await form.get_by_label("Motif").fill("en cours de frappe")
            status, _ = await api.post(f"/api/v1/documents/{document}/retry")
            assert status == 200
            await expect(entries).not_to_have_count(before, timeout=15_000)
            await expect(form.get_by_label("Motif")).to_have_value("en cours de frappe")
            await form.get_by_label("Motif").fill("")

            await form.get_by_label("Statuts (obligatoire)").fill("REJETEE")
            await form.get_by_role("button", name="Envoyer").click()
            alert = form.get_by_role("alert")
            await expect(alert).to_contain_text("rien n'a été envoyé")
            await expect(alert).to_contain_text("REJETEE needs a motif")
            await expect(form.get_by_label("Statuts (obligatoire)")).to_have_value("REJETEE")
            await check_page(page, "facture-statuts-refus")

            await form.get_by_label("Motif").fill("Facture en double")
            await form.get_by_role("button", name="Envoyer").click()
            await expect(page.locator("p.notice")).to_contain_text(
                "Demande « Statuts de la facture (Chorus Pro) » enregistrée")
            history = await _history_until(http, chorus_url, invoice, "REJETEE")
            assert history[-1]["commentaire"] == "Facture en double"
            assert [h["statut"] for h in history].count("REJETEE") == 1
    finally:
        if api is not None:
            await api.close()
        await stop_procs(procs)


async def _waiting_for_status(api: Api, timeout: float = 60.0) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        items = (await api.get("/api/v1/documents", flow="facture"))["items"]
        ready = [d for d in items if d["state"] == "waiting" and d["step"] == "status"]
        if ready:
            return str(ready[0]["id"])
        assert asyncio.get_running_loop().time() < deadline, items
        await asyncio.sleep(0.2)


async def _history_until(http: aiohttp.ClientSession, chorus_url: str, invoice: int,
                         status: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with http.get(f"{chorus_url}/_control/invoices/{invoice}") as resp:
            found = await resp.json()
        if found["history"][-1]["statut"] == status:
            return list(found["history"])
        assert asyncio.get_running_loop().time() < deadline, found["history"]
        await asyncio.sleep(0.2)
