"""The entities API: an operator's CRUD with settings checked when saved, write-only
secrets, tenant rules, and a check that asks each real peer (simulator) a harmless question."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from broker import accounts
from broker.api.openapi import build as openapi
from broker.runtime import Runtime
from broker.settings import Settings
from broker.wiring import catalog
from tests.api_client import served
from tests.e2e.actes_stack import start_peers, stop_procs
from tests.e2e.harness import start_simulator

ENTITY = "214000150"
NEW = "200000008"


class Client:
    def __init__(self, client: TestClient[Any, Any], rt: Runtime, tokens: dict[str, str]) -> None:
        self.client, self.rt, self.tokens = client, rt, tokens

    async def call(self, method: str, path: str, body: Any = None,
                   who: str = "operator") -> tuple[int, Any]:
        resp = await self.client.request(method, path, json=body, headers={
            "Authorization": f"Bearer {self.tokens[who]}"})
        text = await resp.text()
        return resp.status, (await resp.json() if text else None)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    rt = await Runtime.open(Settings(data_dir=tmp_path / "data"), catalog())
    async with rt.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune A", {}, rt.catalog.settings)
        tokens = {"operator": await accounts.create_token(conn, accounts.OPERATOR),
                  "entity": await accounts.create_token(conn, accounts.ENTITY, ENTITY)}
    async with served(rt) as client:
        yield Client(client, rt, tokens)


SAE = {"url": "https://sae.example", "login": "demat", "password": "hunter2",
       "archival_agency": "FRAD040", "transferring_agency": NEW, "originating_agency": NEW}


async def test_an_operator_adds_reads_changes_and_removes_an_entity(api: Client) -> None:
    status, made = await api.call("POST", "/api/v1/entities", {
        "siren": NEW, "name": "Commune B",
        "connectors": {"depot": {"url": "http://gf/inbox", "timeout": "30"}, "sae": SAE}})
    assert status == 201, made
    assert made["siren"] == NEW and made["connectors"]["depot"]["timeout"] == 30.0
    assert made["connectors"]["sae"]["password"] == "********"
    status, again = await api.call("POST", "/api/v1/entities", {"siren": NEW, "name": "B"})
    assert status == 409, again

    # A change merges: the secret left out is kept, a field set to null goes.
    status, changed = await api.call("PATCH", f"/api/v1/entities/{NEW}", {
        "name": "Commune de B", "connectors": {"sae": {"login": "demat2"},
                                               "depot": {"timeout": None}}})
    assert status == 200, changed
    assert changed["name"] == "Commune de B"
    assert changed["connectors"]["sae"]["login"] == "demat2"
    assert changed["connectors"]["depot"]["timeout"] == 30.0  # back to the default
    async with api.rt.db.connect() as conn:
        row = await accounts.get_entity(conn, NEW)
    assert row.connectors["sae"]["password"] == "hunter2"
    assert "timeout" not in row.connectors["depot"]

    status, page = await api.call("GET", "/api/v1/entities?limit=1")
    assert status == 200 and [e["siren"] for e in page["items"]] == [NEW]
    status, rest = await api.call("GET", f"/api/v1/entities?cursor={page['next_cursor']}")
    assert [e["siren"] for e in rest["items"]] == [ENTITY] and rest["next_cursor"] is None

    status, _ = await api.call("DELETE", f"/api/v1/entities/{NEW}")
    assert status == 204
    status, gone = await api.call("GET", f"/api/v1/entities/{NEW}")
    assert status == 404, gone


async def test_bad_settings_are_refused_naming_connector_and_field(api: Client) -> None:
    status, body = await api.call("PATCH", f"/api/v1/entities/{ENTITY}", {
        "connectors": {"depot": {"url": "gf.example", "timeout": -1},
                       "sae": {**SAE, "chunk_treshold": 5}}})
    assert status == 422, body
    assert body["problems"] == [
        {"field": "connectors.depot.url", "message": "must be an http(s) URL (got 'gf.example')"},
        {"field": "connectors.depot.timeout", "message": "Input should be greater than 0 (got -1)"},
        {"field": "connectors.sae.chunk_treshold", "message": "unknown setting"},
    ]
    status, body = await api.call("POST", "/api/v1/entities", {"siren": "200000009",
                                                                "name": "x"})
    assert status == 422 and body["problems"][0]["field"] == "siren", body
    async with api.rt.db.connect() as conn:
        assert (await accounts.get_entity(conn, ENTITY)).connectors == {}


async def test_secrets_never_come_back(api: Client) -> None:
    await api.call("PATCH", f"/api/v1/entities/{ENTITY}", {"connectors": {
        "sae": SAE, "depot": {"url": "http://gf/inbox", "token": "tok-secret-1"}}})
    for path in (f"/api/v1/entities/{ENTITY}", "/api/v1/entities"):
        status, body = await api.call("GET", path)
        assert status == 200
        assert "hunter2" not in str(body) and "tok-secret-1" not in str(body)


async def test_an_entity_token_can_neither_read_nor_change_entities(api: Client) -> None:
    for method, path, body in (("GET", "/api/v1/entities", None),
                               ("GET", f"/api/v1/entities/{ENTITY}", None),
                               ("PATCH", f"/api/v1/entities/{ENTITY}", {"name": "x"}),
                               ("POST", "/api/v1/entities", {"siren": NEW, "name": "x"}),
                               ("DELETE", f"/api/v1/entities/{ENTITY}", None),
                               ("POST", f"/api/v1/entities/{ENTITY}/connectors/depot/check",
                                None)):
        status, answer = await api.call(method, path, body, who="entity")
        assert status == 403, (method, path, answer)


async def test_an_entity_with_documents_not_ended_cannot_be_removed(api: Client) -> None:
    await api.call("PATCH", f"/api/v1/entities/{ENTITY}",
                   {"connectors": {"depot": {"url": "http://127.0.0.1:9/inbox"}}})
    form = aiohttp.FormData()
    for name, value in (("flow", "depot"), ("entity", ENTITY), ("metadata", "{}")):
        form.add_field(name, value)
    form.add_field("document", b"<a/>", filename="a.xml")
    form_status = await api.client.post("/api/v1/documents", data=form, headers={
        "Authorization": f"Bearer {api.tokens['operator']}"})
    assert form_status.status == 201, await form_status.text()
    status, body = await api.call("DELETE", f"/api/v1/entities/{ENTITY}")
    assert status == 409 and "1 document(s) not ended" in body["error"], body


def test_the_openapi_document_describes_the_entities_api() -> None:
    paths = openapi(catalog().flows)["paths"]
    assert set(paths["/api/v1/entities"]) == {"get", "post"}
    assert set(paths["/api/v1/entities/{siren}"]) == {"get", "patch", "delete"}
    assert "post" in paths["/api/v1/entities/{siren}/connectors/{name}/check"]


async def test_each_connector_check_asks_its_real_peer(api: Client, tmp_path: Path) -> None:
    peers = await start_peers(tmp_path)
    gf, gf_url = await start_simulator("gf", tmp_path / "gf.log")
    try:
        settings = {**peers.connectors(), "depot": {"url": f"{gf_url}/inbox"}}
        status, body = await api.call("PATCH", f"/api/v1/entities/{ENTITY}",
                                      {"connectors": settings})
        assert status == 200, body
        found = {}
        for name in ("depot", "parapheur", "tdt", "sae"):
            status, found[name] = await api.call(
                "POST", f"/api/v1/entities/{ENTITY}/connectors/{name}/check")
            assert status == 200, found[name]
        assert all(f["ok"] for f in found.values()), found
        assert "answered HTTP" in found["depot"]["detail"]
        assert "sous-type 'Deliberation' found" in found["parapheur"]["detail"]
        assert "answered the listing" in found["tdt"]["detail"]
        assert "answered the ping" in found["sae"]["detail"]

        # A wrong circuit or password is found out without sending anything.
        await api.call("PATCH", f"/api/v1/entities/{ENTITY}", {"connectors": {
            "parapheur": {"sous_type": "Arrete-inconnu"}, "sae": {"password": "wrong"}}})
        _, para = await api.call("POST", f"/api/v1/entities/{ENTITY}/connectors/parapheur/check")
        _, sae = await api.call("POST", f"/api/v1/entities/{ENTITY}/connectors/sae/check")
        assert not para["ok"] and "no sous-type 'Arrete-inconnu'" in para["detail"], para
        assert not sae["ok"] and "HTTP 401" in sae["detail"], sae
    finally:
        await stop_procs([gf, *peers.all()])
