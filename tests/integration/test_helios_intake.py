"""HELIOS intake through the API: a PES judged while it uploads, its fields indexed, a refused
one answered 422 with each problem located and nothing stored; and the same verdicts from
``demat validate pes``."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from click.testing import CliRunner

from broker import accounts
from broker.cli import main as demat_cli
from broker.runtime import Runtime
from broker.settings import Settings
from broker.wiring import catalog
from simulators.pes_samples import bordereau, pes, piece, pj, sample_pes
from tests.api_client import served
from tests.pes_corpus import BAD, OK_BORDEREAU

ENTITY = "214000150"


class Api:
    def __init__(self, client: TestClient[Any, Any], rt: Runtime, token: str) -> None:
        self.client, self.rt, self.token = client, rt, token

    async def submit(self, data: bytes, *, name: str = "mandats.xml",
                     metadata: str | None = None, flow_first: bool = True,
                     parts: list[tuple[str, bytes]] | None = None) -> tuple[int, Any]:
        form = aiohttp.FormData()
        fields = [("flow", "helios"), ("entity", ENTITY)]
        if metadata is not None:
            fields.append(("metadata", metadata))
        files = parts if parts is not None else [("pes", data)]
        if flow_first:
            for key, value in fields:
                form.add_field(key, value)
        for role, content in files:
            form.add_field(role, content, filename=name, content_type="application/xml")
        if not flow_first:
            for key, value in fields:
                form.add_field(key, value)
        resp = await self.client.post("/api/v1/documents", data=form,
                                      headers={"Authorization": f"Bearer {self.token}"})
        return resp.status, await resp.json()

    async def get(self, path: str) -> Any:
        resp = await self.client.get(path, headers={"Authorization": f"Bearer {self.token}"})
        assert resp.status == 200, await resp.text()
        return await resp.json()


@contextlib.asynccontextmanager
async def api_on(tmp_path: Path, **settings: Any) -> AsyncIterator[Api]:
    rt = await Runtime.open(Settings(data_dir=tmp_path / "data", **settings), catalog())
    async with rt.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune A", {}, catalog().settings)
        token = await accounts.create_token(conn, accounts.OPERATOR)
    async with served(rt) as client:
        yield Api(client, rt, token)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with api_on(tmp_path) as made:
        yield made


async def nothing_stored(api: Api) -> None:
    assert (await api.get("/api/v1/documents"))["items"] == []
    settings = api.rt.settings
    assert [p for p in settings.blob_dir.rglob("*") if p.is_file()] == []
    assert [p for p in settings.tmp_dir.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("flow_first", [True, False], ids=["flow-first", "flow-after-file"])
async def test_a_pes_is_accepted_with_its_fields_indexed(api: Api, flow_first: bool) -> None:
    status, doc = await api.submit(sample_pes("PES_2026_001", bordereaux=2, pjs=1),
                                   metadata='{"archive": true}', flow_first=flow_first)
    assert status == 201, doc
    meta = doc["metadata"]
    assert (meta["nom_fic"], meta["cod_col"], meta["id_post"], meta["exercice"]) == (
        "PES_2026_001", "400", "086016", "2026")
    assert [(b["number"], b["pieces"], b["amount"]) for b in meta["bordereaux"]] == [
        ("1", 2, "202.00"), ("2", 2, "204.02")]
    assert (meta["pieces"], meta["pj"], meta["signed"], meta["archive"]) == (4, 1, False, True)
    assert doc["step"] == "transmit"
    found = await api.get("/api/v1/documents?flow=helios&nom_fic=PES_2026_001")
    assert [d["id"] for d in found["items"]] == [doc["id"]]
    assert (await api.get("/api/v1/documents?flow=helios&nom_fic=OTHER"))["items"] == []


async def test_a_nomfic_taken_for_its_codcol_is_refused_naming_the_first(api: Api) -> None:
    status, first = await api.submit(sample_pes("PES_SAME"))
    assert status == 201
    status, body = await api.submit(sample_pes("PES_SAME", first_number=9))
    assert status == 422, body
    assert body["problems"] == [{"field": "files.pes", "message": (
        f"'400/PES_SAME' is already used by document {first['id']} of entity {ENTITY}")}]
    # Another CodCol may use the same NomFic.
    status, _ = await api.submit(sample_pes("PES_SAME", cod_col="401", first_number=20))
    assert status == 201


# Each refused flow of the shared corpus: (case, the PES, the words its refusal must hold,
# the line it names or None).
@pytest.mark.parametrize(("case", "data", "words", "line"), BAD, ids=[b[0] for b in BAD])
async def test_a_bad_or_hostile_pes_is_refused_located_and_nothing_stored(
        api: Api, case: str, data: bytes, words: str, line: int | None) -> None:
    status, body = await api.submit(data)
    assert status == 422, body
    problems = [p for p in body["problems"] if p["field"] == "files.pes"]
    assert problems, body
    said = " | ".join(p["message"] for p in problems)
    assert words in said, said
    if line is not None:
        assert f"mandats.xml:{line}:" in said, said
    await nothing_stored(api)


async def test_a_pj_bomb_is_stopped_at_its_cap_and_nothing_stored(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("connectors.helios.pes.MAX_PJ_BYTES", 1024 * 1024)
    bomb = base64.b64encode(gzip.compress(b"\0" * (8 * 1024 * 1024))).decode()
    status, body = await api.submit(pes(OK_BORDEREAU, pjs=(pj("PJ1", raw=bomb),)))
    assert status == 422
    assert "inflates past the 1048576 bytes a PJ may hold" in body["problems"][0]["message"]
    await nothing_stored(api)


@pytest.mark.parametrize(("case", "parts", "metadata", "words"), [
    ("empty", [("pes", b"")], None, "is empty"),
    ("two-pes", [("pes", sample_pes("A")), ("pes", sample_pes("B"))], None, "at most 1"),
    ("no-pes", [("annexe", b"<a/>")], None, "unknown file part 'annexe'"),
    ("unknown-metadata", [("pes", sample_pes("A"))], '{"signataire": "x"}',
     "Extra inputs are not permitted"),
])
async def test_a_submission_not_shaped_for_helios_is_refused(
        api: Api, case: str, parts: list[tuple[str, bytes]], metadata: str | None,
        words: str) -> None:
    status, body = await api.submit(b"", parts=parts, metadata=metadata)
    assert status == 422
    assert words in body["error"], body
    await nothing_stored(api)


def test_validate_pes_says_the_same_with_lines_and_a_non_zero_exit(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(pes(bordereau(piece("55.22"), total="60.00"), id_post="12345"))
    result = CliRunner().invoke(demat_cli, ["validate", "pes", str(bad)])
    assert result.exit_code != 0
    assert "bad.xml:4:" in result.output and "IdPost '12345'" in result.output
    assert "bad.xml:6:" in result.output and "add up to 55.22" in result.output
    good = tmp_path / "good.xml"
    good.write_bytes(sample_pes("PES_OK"))
    ok = CliRunner().invoke(demat_cli, ["validate", "pes", str(good)])
    assert ok.exit_code == 0, ok.output


def said(body: Any) -> str:
    return " | ".join(p["message"] for p in body["problems"])


async def test_a_pes_sent_for_signature_says_it_is_dematerialised_and_is_not_signed_yet(
        api: Api) -> None:
    asked = json.dumps({"signature": True})
    status, doc = await api.submit(sample_pes("PES_SIGN_1", demat="1"), metadata=asked)
    assert status == 201, doc
    assert doc["metadata"]["dematerialised"] is True and doc["metadata"]["signed"] is False
    journal = await api.get(f"/api/v1/documents/{doc['id']}/journal")
    assert journal[0]["plan"] == ["sign", "transmit", "notify"]

    status, body = await api.submit(sample_pes("PES_SIGN_2"), metadata=asked)
    assert status == 422 and "a PES sent for signature says 1 already" in said(body), body
    # Without a signature asked for, the same file with InfoDematerialisee 1 is refused.
    status, body = await api.submit(sample_pes("PES_SIGN_3", demat="1"))
    assert status == 422 and "1 (dematerialised) needs a signed flow" in said(body), body


async def test_an_untrusted_signature_is_refused_or_let_through_with_a_journal_warning(
        tmp_path: Path) -> None:
    from simulators.pki import TestCA
    from simulators.xades import sign_pes

    signer = TestCA.create("AC de l'éditeur").issue_signing("Jean Dupont")
    trusted = TestCA.create("AC de la plateforme")
    anchors = tmp_path / "trust.pem"
    anchors.write_bytes(trusted.cert_pem)
    signed = sign_pes(sample_pes("PES_UNTRUSTED", demat="1"), "//Bordereau", signer.key_pem,
                      signer.cert_pem)
    async with api_on(tmp_path / "refusing", xades_trust=anchors) as api:
        status, body = await api.submit(signed)
        assert status == 422 and "ds:Signature: untrusted" in said(body), body
    async with api_on(tmp_path / "accepting", xades_trust=anchors,
                      xades_accept_untrusted=True) as api:
        status, doc = await api.submit(signed)
        assert status == 201, doc
        journal = await api.get(f"/api/v1/documents/{doc['id']}/journal")
        warnings = journal[0]["warnings"]  # one per bordereau
        assert len(warnings) == 2 and all("untrusted" in w and "Jean Dupont" in w
                                          for w in warnings), warnings
