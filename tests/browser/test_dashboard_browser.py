"""The dashboard in a real browser, against `demat serve` and the simulators as processes:
an operator signs in, finds an act by its IDActe, watches a document change state live,
replays parked documents one by one and by group, exports a CSV; an entity sees its own
documents only; every page is screenshotted and passes axe-core."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.browser.conftest import check_page
from tests.e2e.actes_stack import (
    ENTITY,
    Peers,
    refresh_classification,
    start_peers,
    stop_procs,
    submit_act,
    wait_state,
    write_config,
)
from tests.e2e.harness import (
    Api,
    Proc,
    WorkerPool,
    demat_env,
    isolated_amqp,
    prepare_store,
    run_cli,
    set_faults,
    start_demat,
    start_simulator,
    start_split_layout,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

OTHER = "200000008"
SECRET = "depot-token-Kq93-never-shown"
# Long enough to open the act's page while the parapheur still holds it.
SIGN_AFTER = "4"


@dataclass
class Site:
    url: str
    api: Api
    gf_url: str
    tokens: dict[str, str]
    peers: Peers | None
    procs: list[Proc]


def _config(path: Path, peers: Peers, gf_url: str) -> Path:
    write_config(path, peers, extra={"depot": {"url": f"{gf_url}/inbox", "token": SECRET}})
    with path.open("a", encoding="utf-8") as out:
        out.write(f'[entities.{OTHER}]\nname = "Autre commune"\n'
                  f'[entities.{OTHER}.connectors.depot]\nurl = "{gf_url}/inbox"\n')
    return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard")
    peers = await start_peers(tmp, parapheur=("--auto-sign-after", SIGN_AFTER))
    gf, gf_url = await start_simulator("gf", tmp / "gf.log")
    procs = [*peers.all(), gf]
    env = demat_env(tmp / "data", DEMAT_CONFIG=str(_config(tmp / "demat.toml", peers, gf_url)),
                    DEMAT_RETRY_LADDER="400ms,400ms", DEMAT_RETRY_IN_CALL="1",
                    DEMAT_PORT="0", DEMAT_POLL_FIRST="300ms", DEMAT_POLL_MAX="1s")
    run_cli(env, "db", "upgrade")
    tokens = {"operator": run_cli(env, "token", "create", "--operator").strip(),
              "entity": run_cli(env, "token", "create", "--entity", ENTITY).strip(),
              "other": run_cli(env, "token", "create", "--entity", OTHER).strip()}
    serve, url = await start_demat("serve", env, tmp / "serve.log")
    procs.append(serve)
    api = Api(url, tokens["operator"])
    try:
        await refresh_classification(api)
        yield Site(url, api, gf_url, tokens, peers, procs)
    finally:
        await api.close()
        await stop_procs(procs)


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(accept_downloads=True, locale="fr-FR")
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def sign_in(page: Any, site: Site, who: str = "operator") -> None:
    await page.goto(f"{site.url}/")
    await page.get_by_label("Jeton d'API").fill(site.tokens[who])
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(re.compile(r".*/ui/$"))


async def submit_depot(site: Site, entity: str = ENTITY, **metadata: Any) -> str:
    form = aiohttp.FormData()
    form.add_field("flow", "depot")
    form.add_field("entity", entity)
    form.add_field("metadata", json.dumps(metadata or {"objet": "mandat"}))
    form.add_field("document", b"<mandat/>", filename="mandat.xml")
    async with site.api.http.post(f"{site.url}/api/v1/documents", data=form) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])


async def replay_depot_group(page: Any) -> Any:
    """Press "Rejouer le groupe" on the parking page's depot group; that group's form."""
    group = page.locator("form.replay-group").filter(
        has=page.locator('input[name="flux"][value="depot"]')).first
    await group.get_by_role("button").click()
    return group


def state_of(page: Any, doc_id: str) -> Any:
    return page.locator(f'[data-state-of="{doc_id}"]').first


async def until(page: Any, script: str, timeout: float = 20.0) -> None:
    """Poll ``script`` in the page until it is true (the page's CSP forbids the string
    evaluation ``wait_for_function`` relies on)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await page.evaluate(script):
        assert asyncio.get_running_loop().time() < deadline, f"still false: {script}"
        await asyncio.sleep(0.1)


async def shown_state(page: Any, doc_id: str, wanted: str, timeout: float = 20.0) -> None:
    from playwright.async_api import expect

    await expect(state_of(page, doc_id)).to_have_text(wanted, timeout=timeout * 1000)


async def test_an_operator_signs_in_and_sees_the_overview(page: Any, site: Site) -> None:
    await page.goto(f"{site.url}/")
    await page.wait_for_url(re.compile(r".*/ui/connexion"))
    await check_page(page, "connexion")
    await page.get_by_label("Jeton d'API").fill("dmt_wrong")
    await page.get_by_role("button", name="Se connecter").click()
    await page.get_by_role("alert").filter(has_text="Jeton inconnu").wait_for()
    await sign_in(page, site)
    await page.get_by_role("heading", name="Vue d'ensemble").wait_for()
    await page.get_by_role("heading", name="Santé des connecteurs").wait_for()
    await check_page(page, "vue-d-ensemble")
    # Keyboard: the skip link is the first stop and leads to the content.
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.textContent")
    assert focused == "Aller au contenu"


async def test_an_act_is_found_by_its_idacte_and_its_files_downloaded(
        page: Any, site: Site) -> None:
    doc_id = await submit_act(site.api, "2026B101")
    doc = await wait_state(site.api, doc_id, {"completed"}, 30)
    id_acte = doc["metadata"]["id_acte"]
    await sign_in(page, site)
    await page.get_by_role("link", name="Documents", exact=True).click()
    await page.get_by_label("Référence").fill(id_acte)
    await page.get_by_role("button", name="Rechercher").click()
    rows = page.locator("table.documents tbody tr")
    await rows.first.wait_for()
    assert await rows.count() == 1
    await check_page(page, "documents-recherche")
    await rows.first.get_by_role("link", name=doc_id).click()
    await page.get_by_role("heading", name=re.compile(doc_id)).wait_for()
    assert await state_of(page, doc_id).text_content() == "terminé"
    timeline = await page.locator(".timeline").text_content()
    assert "télétransmission (TdT)" in timeline and "changement d'état" in timeline
    await check_page(page, "document-acte")
    async with page.expect_download() as download:
        await page.get_by_role("link", name=re.compile(r"-1-2\.xml$")).click()
    saved = await (await download.value).path()
    assert b"ARActe" in Path(saved).read_bytes()


async def test_a_document_changes_state_live_on_its_page(page: Any, site: Site) -> None:
    doc_id = await submit_act(site.api, "2026B102", signature=True)
    await sign_in(page, site)
    await page.goto(f"{site.url}/ui/documents/{doc_id}")
    state = state_of(page, doc_id)
    await until(page, "document.body.dataset.liveOpen === '1'")
    assert await state.text_content() != "terminé"
    await page.evaluate("window.stayedOnThePage = true")
    await shown_state(page, doc_id, "terminé", 30)
    assert await page.evaluate("window.stayedOnThePage === true")  # no reload
    assert "signature (parapheur)" in await page.locator(".timeline").text_content()


async def _parked(site: Site, count: int) -> list[str]:
    await set_faults(site.gf_url, [{"kind": "500"}])
    ids = [await submit_depot(site, objet=f"mandat {i}") for i in range(count)]
    for doc_id in ids:
        await wait_state(site.api, doc_id, {"failed"}, 30)
    await set_faults(site.gf_url, [])
    return ids


async def test_a_parked_document_is_replayed_and_seen_completing(
        page: Any, site: Site) -> None:
    (doc_id,) = await _parked(site, 1)
    await sign_in(page, site)
    await page.get_by_role("link", name="Parking", exact=True).click()
    await page.get_by_role("link", name=doc_id).wait_for()
    await check_page(page, "parking")
    await page.get_by_role("link", name=doc_id).click()
    await page.get_by_role("link", name="Rejouer").click()
    await page.get_by_role("heading", name="Confirmer : Rejouer").wait_for()
    await check_page(page, "confirmation")
    await page.get_by_role("button", name="Confirmer").click()
    await page.get_by_role("status").filter(has_text="Rejouer").wait_for()
    await shown_state(page, doc_id, "terminé")


async def test_a_group_of_parked_documents_is_replayed_with_progress(
        page: Any, site: Site) -> None:
    ids = await _parked(site, 3)
    await sign_in(page, site)
    await page.goto(f"{site.url}/ui/parking")
    group = await replay_depot_group(page)
    await group.locator("output").filter(has_text=re.compile(r"rejoué\(s\), 0 restant")) \
        .wait_for(timeout=20_000)
    assert await group.locator("progress").get_attribute("value") == str(len(ids))
    for doc_id in ids:
        await wait_state(site.api, doc_id, {"completed"}, 20)


async def test_the_csv_export_holds_the_rows_searched(page: Any, site: Site) -> None:
    ids = [await submit_depot(site, numero=f"EXP-{i}") for i in range(3)]
    for doc_id in ids:
        await wait_state(site.api, doc_id, {"completed"}, 20)
    await sign_in(page, site)
    await page.goto(f"{site.url}/ui/documents?ref=EXP-1")
    await page.locator("table.documents tbody tr").first.wait_for()
    async with page.expect_download() as download:
        await page.get_by_role("link", name="Exporter en CSV").click()
    rows = list(csv.DictReader(io.StringIO(
        Path(await (await download.value).path()).read_text(encoding="utf-8"))))
    assert [(r["id"], r["reference"], r["etat"]) for r in rows] == [
        (ids[1], "EXP-1", "completed")]


async def test_the_entities_pages_hide_secrets_and_check_the_peers(
        page: Any, site: Site) -> None:
    await sign_in(page, site)
    await page.get_by_role("link", name="Entités", exact=True).click()
    await page.get_by_role("link", name=ENTITY).wait_for()
    await check_page(page, "entites")
    await page.get_by_role("link", name=ENTITY).click()
    await page.get_by_role("button", name="Vérifier les connecteurs").click()
    checks = page.locator("ul.checks li")
    await checks.first.wait_for(timeout=40_000)
    text = await page.locator("ul.checks").text_content()
    assert "depot" in text and "tdt" in text and "répond" in text
    await check_page(page, "entite")
    assert SECRET not in await page.content()


async def test_an_entity_reaches_nothing_of_another(browser: Any, site: Site) -> None:
    theirs = await submit_depot(site, OTHER)
    mine = await submit_depot(site, ENTITY)
    await wait_state(site.api, theirs, {"completed"}, 20)
    theirs_doc = await site.api.get(f"/api/v1/documents/{theirs}")
    file_id = theirs_doc["files"][0]["id"]
    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    try:
        await sign_in(page, site, "entity")
        await page.get_by_role("heading", name=re.compile(f"entité {ENTITY}")).wait_for()
        assert await page.get_by_role("link", name="Entités").count() == 0
        for path in (f"/ui/documents/{theirs}", f"/ui/documents/{theirs}/fichiers/{file_id}"):
            answer = await page.goto(f"{site.url}{path}")
            assert answer.status == 404, path
        await check_page(page, "introuvable")
        answer = await page.request.get(f"{site.url}/ui/documents.csv?entite={OTHER}")
        ids = [r["id"] for r in csv.DictReader(io.StringIO(await answer.text()))]
        assert mine in ids and theirs not in ids
        # The live feed: the other entity's changes never reach this page.
        await page.goto(f"{site.url}/ui/documents")
        await page.evaluate("""() => { window.seen = [];
            const s = new EventSource('/ui/live?apres=0');
            s.addEventListener('state', e => window.seen.push(JSON.parse(e.data))); }""")
        newer = await submit_depot(site, ENTITY)
        await submit_depot(site, OTHER)
        await until(page,
                    f"window.seen.some(e => e.id === '{newer}' && e.state === 'completed')")
        seen = await page.evaluate("window.seen")
        assert seen and {e["entity"] for e in seen} == {ENTITY}
        await check_page(page, "documents-entite")
        await page.get_by_role("button", name="Se déconnecter").click()
        await page.wait_for_url(re.compile(r".*/ui/connexion$"))
        answer = await page.goto(f"{site.url}/ui/documents/{mine}")
        assert "/ui/connexion" in page.url
        answer = await page.request.get(f"{site.url}/ui/live")
        assert answer.status == 401
    finally:
        await context.close()


async def test_every_page_works_without_script(browser: Any, site: Site) -> None:
    (doc_id,) = await _parked(site, 1)
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    try:
        await sign_in(page, site)
        await page.goto(f"{site.url}/ui/parking")
        await replay_depot_group(page)
        await page.get_by_role("heading", name="Rejeu du groupe").wait_for()
        assert "Le groupe est vide" in await page.locator("main").text_content()
        scripted = await browser.new_page()
        try:
            await check_page(page, "rejeu-sans-script", scripted=scripted, origin=site.url)
        finally:
            await scripted.close()
        await wait_state(site.api, doc_id, {"completed"}, 20)
        await page.goto(f"{site.url}/ui/documents/{doc_id}")
        assert await state_of(page, doc_id).text_content() == "terminé"
    finally:
        await context.close()


@pytest.mark.amqp
@pytest.mark.postgres
async def test_live_over_rabbitmq_from_a_worker_process_to_the_page(
        browser: Any, tmp_path: Path, amqp_url: str, pg_url: str) -> None:
    """`demat api`, `demat relay` and `demat worker` apart: the state change made by the
    worker reaches the page through the events exchange and the API process."""
    gf, gf_url = await start_simulator("gf", tmp_path / "gf.log")
    procs: list[Proc] = [gf]
    config = tmp_path / "demat.toml"
    config.write_text(f'[entities.{ENTITY}]\nname = "Commune"\n'
                      f'[entities.{ENTITY}.connectors.depot]\nurl = "{gf_url}/inbox"\n')
    context = await browser.new_context()
    try:
        async with isolated_amqp(amqp_url) as vhost:
            env = demat_env(tmp_path / "data", DEMAT_CONFIG=str(config), DEMAT_AMQP_URL=vhost,
                            DEMAT_DATABASE_URL=pg_url, DEMAT_PORT="0",
                            DEMAT_RETRY_LADDER="400ms,400ms", DEMAT_RETRY_IN_CALL="1")
            token = await prepare_store(pg_url)
            workers = WorkerPool(env, tmp_path, pg_url.replace("+asyncpg", ""), procs)
            url = await start_split_layout(env, workers, procs, tmp_path, worker_count=1)
            api = Api(url, token)
            try:
                site = Site(url, api, gf_url, {"operator": token}, None, procs)
                (doc_id,) = await _parked(site, 1)
                page = await context.new_page()
                await sign_in(page, site)
                await page.goto(f"{url}/ui/documents/{doc_id}")
                await shown_state(page, doc_id, "en erreur (parqué)")
                await until(page, "document.body.dataset.liveOpen === '1'")
                await page.evaluate("window.stayedOnThePage = true")
                # The replay asked through the API: only the live feed tells the page.
                status, _ = await api.post("/api/v1/parking/replay", {"ids": [doc_id]})
                assert status == 200
                await shown_state(page, doc_id, "terminé")
                assert await page.evaluate("window.stayedOnThePage === true")
            finally:
                await api.close()
                await stop_procs(procs)
    finally:
        await context.close()
