"""The HTTP API on an embedded runtime: intake checks, visibility, paging, operations."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker import accounts
from broker.api.app import build_app
from broker.runtime import Runtime
from broker.settings import Settings
from broker.wiring import catalog
from tests.api_client import served

ENTITY = "214000150"
OTHER = "200000008"
UNREGISTERED = "123456782"


class Client:
    def __init__(self, client: TestClient[Any, Any], rt: Runtime, tokens: dict[str, str]) -> None:
        self.client, self.rt, self.tokens = client, rt, tokens

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def submit(self, who: str = "operator", *, flow: str | None = "depot",
                     entity: str | None = ENTITY, metadata: str | None = '{"n": 1}',
                     files: list[tuple[str, str, Any]] | None = None) -> tuple[int, Any]:
        form = aiohttp.FormData()
        for name, value in (("flow", flow), ("entity", entity), ("metadata", metadata)):
            if value is not None:
                form.add_field(name, value)
        for role, filename, data in ([("document", "a.xml", b"<a/>")] if files is None
                                     else files):
            form.add_field(role, data, filename=filename)
        resp = await self.client.post("/api/v1/documents", data=form, headers=self.auth(who))
        return resp.status, await resp.json()

    async def get(self, path: str, who: str = "operator") -> tuple[int, Any]:
        resp = await self.client.get(path, headers=self.auth(who))
        return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(data_dir=tmp_path / "data", max_upload=1024 * 1024)
    rt = await Runtime.open(settings, catalog())
    async with rt.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune A", {}, catalog().settings)
        await accounts.upsert_entity(conn, OTHER, "Commune B", {}, catalog().settings)
        tokens = {"operator": await accounts.create_token(conn, accounts.OPERATOR),
                  "entity": await accounts.create_token(conn, accounts.ENTITY, ENTITY),
                  "other": await accounts.create_token(conn, accounts.ENTITY, OTHER)}
    async with served(rt) as client:
        yield Client(client, rt, tokens)


async def nothing_stored(api: Client) -> None:
    status, page = await api.get("/api/v1/documents")
    assert status == 200 and page["items"] == []
    settings = api.rt.settings
    assert [p for p in settings.blob_dir.rglob("*") if p.is_file()] == []
    assert [p for p in settings.tmp_dir.rglob("*") if p.is_file()] == []


BAD_INPUTS = [
    ("missing flow", {"flow": None}, 422, "flow", "flow is required"),
    ("unknown flow", {"flow": "telepathie"}, 422, "flow", "unknown flow 'telepathie'"),
    ("missing entity", {"entity": None}, 422, "entity", "entity (SIREN) is required"),
    ("bad SIREN", {"entity": "214000151"}, 422, "entity", "fails its checksum"),
    ("unknown entity", {"entity": UNREGISTERED}, 422, "entity", "unknown entity 123456782"),
    ("malformed metadata", {"metadata": '{"objet": "x",\n "n": }'}, 422, "metadata",
     "line 2 column"),
    ("metadata not an object", {"metadata": "[1, 2]"}, 422, "metadata", "JSON object"),
    ("no document part", {"files": [("annexe", "a.pdf", b"%PDF")]}, 422, "files.",
     "unknown file part 'annexe'"),
    ("empty file", {"files": [("document", "a.xml", b"")]}, 422, "files.document", "is empty"),
    ("oversize", {"files": [("document", "big.bin", b"x" * (1024 * 1024 + 1))]}, 413, None,
     "1048576 bytes"),
]


@pytest.mark.parametrize(("case", "fields", "status", "field", "words"), BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_is_refused_with_a_named_problem_and_nothing_stored(
        api: Client, case: str, fields: dict[str, Any], status: int, field: str | None,
        words: str) -> None:
    got, body = await api.submit(**fields)
    assert got == status, body
    assert words in body["error"]
    if field:
        assert any(p["field"].startswith(field) for p in body["problems"]), body
    await nothing_stored(api)


async def test_tokens_are_checked(api: Client) -> None:
    resp = await api.client.get("/api/v1/documents")
    assert resp.status == 401 and "bearer" in (await resp.json())["error"]
    resp = await api.client.get("/api/v1/documents",
                                headers={"Authorization": "Bearer dmt_forged"})
    assert resp.status == 401 and "unknown" in (await resp.json())["error"]
    status, body = await api.submit("entity", entity=OTHER)
    assert status == 403 and OTHER in body["error"]
    status, body = await api.submit("entity", entity=UNREGISTERED)
    assert status == 403  # no hint whether it exists
    await nothing_stored(api)


async def test_an_entity_token_sees_only_its_entity(api: Client) -> None:
    _, mine = await api.submit("entity", entity=None)  # entity taken from the token
    assert mine["entity"] == ENTITY
    _, theirs = await api.submit("other", entity=OTHER)
    status, _ = await api.get(f"/api/v1/documents/{theirs['id']}", "entity")
    assert status == 404
    status, body = await api.get(f"/api/v1/documents/{theirs['id']}/journal", "entity")
    assert status == 404 and "not found" in body["error"]
    status, page = await api.get("/api/v1/documents", "entity")
    assert [d["id"] for d in page["items"]] == [mine["id"]]
    status, _ = await api.get(f"/api/v1/documents?entity={OTHER}", "entity")
    assert status == 403
    status, page = await api.get("/api/v1/documents", "operator")
    assert {d["id"] for d in page["items"]} == {mine["id"], theirs["id"]}
    status, _ = await api.get("/api/v1/parking", "entity")
    assert status == 200
    resp = await api.client.post("/api/v1/parking/replay", json={"all": True},
                                 headers=api.auth("entity"))
    assert resp.status == 403


async def test_cursor_paging_walks_every_document_once(api: Client) -> None:
    ids = [(await api.submit())[1]["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        status, page = await api.get("/api/v1/documents?limit=2"
                                     + (f"&cursor={cursor}" if cursor else ""))
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    status, body = await api.get("/api/v1/documents?state=lost")
    assert status == 422 and body["problems"][0]["field"] == "state"


async def test_document_view_files_and_journal(api: Client) -> None:
    payload = os.urandom(5000)
    status, doc = await api.submit(files=[("document", "pièce 1.bin", payload),
                                          ("document", "b.xml", b"<b/>")])
    assert status == 201
    assert doc["state"] == "queued" and doc["step"] == "deliver" and doc["attempt"] == 1
    assert doc["metadata"] == {"n": 1} and len(doc["files"]) == 2
    first = doc["files"][0]
    assert first["sha256"] == hashlib.sha256(payload).hexdigest() and first["size"] == 5000
    resp = await api.client.get(f"/api/v1/documents/{doc['id']}/files/{first['id']}",
                                headers=api.auth("operator"))
    assert resp.status == 200 and await resp.read() == payload
    assert resp.headers["Content-Disposition"].endswith(quote(first["name"], safe=""))
    status, journal = await api.get(f"/api/v1/documents/{doc['id']}/journal")
    assert [e["kind"] for e in journal] == ["intake"] and journal[0]["plan"] == ["deliver"]


async def test_cancel_and_retry_follow_the_state(api: Client) -> None:
    _, doc = await api.submit()
    url = f"/api/v1/documents/{doc['id']}"
    resp = await api.client.post(f"{url}/retry", headers=api.auth("operator"))
    assert resp.status == 200 and (await resp.json())["state"] == "queued"
    resp = await api.client.post(f"{url}/cancel", headers=api.auth("entity"))
    assert resp.status == 200 and (await resp.json())["state"] == "cancelled"
    resp = await api.client.post(f"{url}/cancel", headers=api.auth("entity"))
    assert resp.status == 409 and "already cancelled" in (await resp.json())["error"]
    resp = await api.client.post(f"{url}/retry", headers=api.auth("operator"))
    assert resp.status == 409


async def test_replay_needs_a_selection(api: Client) -> None:
    resp = await api.client.post("/api/v1/parking/replay", json={},
                                 headers=api.auth("operator"))
    assert resp.status == 422 and "say what to replay" in (await resp.json())["error"]
    resp = await api.client.post("/api/v1/parking/replay", json={"all": True, "limit": 5000},
                                 headers=api.auth("operator"))
    assert resp.status == 422
    assert (await resp.json())["problems"][0]["field"] == "limit"


async def test_health_readiness_metrics_and_openapi(api: Client) -> None:
    await api.submit()
    assert (await api.client.get("/healthz")).status == 200
    ready = await api.client.get("/readyz")
    assert ready.status == 200 and (await ready.json()) == {
        "ready": True, "store": "ok", "transport": "ok"}
    metrics = await (await api.client.get("/metrics")).text()
    assert 'demat_documents_submitted_total{flow="depot"}' in metrics
    assert 'demat_documents{flow="depot",state="queued"} 1.0' in metrics
    spec = await (await api.client.get("/api/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/v1/documents", "/api/v1/documents/{id}", "/api/v1/documents/{id}/journal",
                 "/api/v1/documents/{id}/files/{file_id}", "/api/v1/parking/replay"):
        assert path in spec["paths"]
    assert "DocumentOut" in spec["components"]["schemas"]
    # Each flow's parts and metadata: HELIOS takes one PES and says whether to sign it.
    helios = spec["x-flows"]["helios"]
    assert helios["files"] == {"pes": {"min": 1, "max": 1,
                                       "description": "the PES_Aller (ISO-8859-1 XML)"}}
    metadata = spec["components"]["schemas"][helios["metadata"]["$ref"].rsplit("/", 1)[1]]
    assert {"signature", "archive", "callback_url"} <= set(metadata["properties"])
    assert "helios-retour" not in spec["x-flows"]  # ingested, never submitted
    json.dumps(spec)


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_a_150_mib_upload_streams_with_flat_memory(tmp_path: Path) -> None:
    size = 150 * 1024 * 1024
    settings = Settings(data_dir=tmp_path / "data")
    rt = await Runtime.open(settings, catalog())
    async with rt.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune A", {}, catalog().settings)
        token = await accounts.create_token(conn, accounts.OPERATOR)
    client = TestClient(TestServer(build_app(rt)))
    await client.start_server()

    async def body() -> AsyncIterator[bytes]:
        chunk = os.urandom(1024 * 1024)
        for _ in range(size // len(chunk)):
            yield chunk

    try:
        # Reset the peak-RSS counter so the figure is this upload's alone.
        Path("/proc/self/clear_refs").write_text("5")
        before = _peak_rss_kib()
        form = aiohttp.FormData()
        form.add_field("flow", "depot")
        form.add_field("entity", ENTITY)
        form.add_field("document", body(), filename="big.bin")
        resp = await client.post("/api/v1/documents", data=form,
                                 headers={"Authorization": f"Bearer {token}"})
        doc = await resp.json()
        assert resp.status == 201, doc
        assert doc["files"][0]["size"] == size
        growth_mib = (_peak_rss_kib() - before) / 1024
        assert growth_mib < 40, f"peak RSS grew by {growth_mib:.0f} MiB for a 150 MiB upload"
    finally:
        await client.close()
        await rt.close()


async def test_a_repeated_idempotency_key_returns_the_first_document(api: Client) -> None:
    async def send(key: str, body: bytes) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("flow", "depot")
        form.add_field("entity", ENTITY)
        form.add_field("document", body, filename="m.xml")
        resp = await api.client.post("/api/v1/documents", data=form,
                                     headers={**api.auth("operator"), "Idempotency-Key": key})
        return resp.status, await resp.json()

    status, first = await send("gf-export-42", b"<m n='1'/>")
    assert status == 201
    status, again = await send("gf-export-42", b"<m n='1'/>")
    assert status == 200 and again["id"] == first["id"]
    status, other = await send("gf-export-43", b"<m n='2'/>")
    assert status == 201 and other["id"] != first["id"]
    _, page = await api.get("/api/v1/documents")
    assert len(page["items"]) == 2
    blobs = [p for p in api.rt.settings.blob_dir.rglob("*") if p.is_file()]
    assert len(blobs) == 2 and [p for p in api.rt.settings.tmp_dir.rglob("*") if p.is_file()] == []
    status, body = await send("x" * 129, b"<m/>")
    assert status == 400 and "Idempotency-Key" in body["error"]


async def test_a_key_sent_twice_at_once_among_others_stores_one_document_for_it(
        api: Client) -> None:
    async def send(key: str, n: int) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("flow", "depot")
        form.add_field("entity", ENTITY)
        form.add_field("document", f"<m n='{n}'/>".encode(), filename="m.xml")
        resp = await api.client.post("/api/v1/documents", data=form,
                                     headers={**api.auth("operator"), "Idempotency-Key": key})
        return resp.status, await resp.json()

    # Sent together, they share intake transactions: the twin's conflict must not
    # refuse the others, and the twin must get the first one's document.
    answers = await asyncio.gather(*(send(f"k-{n}", n) for n in range(8)), send("k-3", 3))
    assert [status for status, _ in answers].count(201) == 8, answers
    twin, first = answers[-1][1], answers[3][1]
    assert twin["id"] == first["id"] and answers[-1][0] in (200, 201)
    assert {answers[-1][0], answers[3][0]} == {200, 201}
    _, page = await api.get("/api/v1/documents")
    assert len(page["items"]) == 8
