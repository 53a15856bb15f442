"""HELIOS intake through the API: a PES judged while it uploads, its fields indexed, a refused
one answered 422 with each problem located and nothing stored; and the same verdicts from
``demat validate pes``."""

from __future__ import annotations

import base64
import gzip
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


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(data_dir=tmp_path / "data")
    rt = await Runtime.open(settings, catalog())
    async with rt.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune A", {}, catalog().settings)
        token = await accounts.create_token(conn, accounts.OPERATOR)
    async with served(rt) as client:
        yield Api(client, rt, token)


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


def _gz64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data)).decode()


OK_BORDEREAU = bordereau(piece("55.22"))
DECL = '<?xml version="1.0" encoding="ISO-8859-1"?>'


def _with(old: bytes, new: bytes, data: bytes | None = None) -> bytes:
    source = data if data is not None else pes(OK_BORDEREAU)
    assert old in source, old
    return source.replace(old, new, 1)


def _hostile(prolog: str) -> bytes:
    return pes(OK_BORDEREAU).replace(b"\n<n:PES_Aller", f"\n{prolog}\n<n:PES_Aller".encode(), 1)


# (case, the PES, the words its refusal must hold, the line it names or None)
BAD: list[tuple[str, bytes, str, int | None]] = [
    ("utf8-declared", pes(OK_BORDEREAU, declaration='<?xml version="1.0" encoding="UTF-8"?>'),
     'encoding="ISO-8859-1"', 1),
    ("no-declaration", pes(OK_BORDEREAU, declaration=""), 'encoding="ISO-8859-1"', 1),
    ("late-declaration", pes(OK_BORDEREAU, declaration='<?xml version="1.0"' + " " * 40
                             + 'encoding="ISO-8859-1"?>'), "first 50 bytes", 1),
    ("utf8-bytes", _with("Commune de démo".encode("latin-1"), "Commune de démo".encode()),
     "UTF-8", 4),
    ("c1-byte", _with("démo".encode("latin-1"), b"d\x80mo"), "no ISO-8859-1 character", 4),
    ("nomfic-missing", _with(b'<NomFic V="mandats_2026_12"/>', b""), "NomFic is missing", None),
    ("nomfic-accents", pes(OK_BORDEREAU, nom_fic="mandats_décembre"), "accents", 3),
    ("idcoll-checksum", pes(OK_BORDEREAU, id_coll="21400015000019"), "not a valid SIRET", 4),
    ("idcoll-short", pes(OK_BORDEREAU, id_coll="2140001500001"), "not a valid SIRET", 4),
    ("idcoll-letters", pes(OK_BORDEREAU, id_coll="2140001500001A"), "not a valid SIRET", 4),
    ("codcol-zero", pes(OK_BORDEREAU, cod_col="000"), "all-zero", 4),
    ("codcol-long", pes(OK_BORDEREAU, cod_col="4000"), "CodCol '4000'", 4),
    ("codcol-empty", pes(OK_BORDEREAU, cod_col=""), "CodCol ''", 4),
    ("codbud-short", pes(OK_BORDEREAU, cod_bud="1"), "CodBud '1'", 4),
    ("codbud-long", pes(OK_BORDEREAU, cod_bud="001"), "CodBud '001'", 4),
    ("idpost-short", pes(OK_BORDEREAU, id_post="12345"), "IdPost '12345'", 4),
    ("idpost-letters", pes(OK_BORDEREAU, id_post="ABCDEF"), "IdPost 'ABCDEF'", 4),
    ("bordereau-no-id", pes(bordereau(piece("55.22"), ident=None)), "needs an Id", 6),
    ("bordereau-same-id", pes(OK_BORDEREAU, OK_BORDEREAU), "already the Id", 7),
    ("nbrpce-wrong", pes(bordereau(piece("55.22"), count=3)), "says 3 pièce(s)", 6),
    ("mtbordht-wrong", pes(bordereau(piece("55.22"), total="60.00")), "add up to 55.22", 6),
    ("amount-nan", pes(bordereau(piece("cinq"), total="0")), "'cinq' is not an amount", 6),
    ("demat-unsigned", pes(OK_BORDEREAU, demat="1"), "needs a signed flow", None),
    ("signed-not-demat", pes(bordereau(piece("55.22"), signed=True), demat="0"),
     "must say 1", None),
    ("pj-not-base64", pes(OK_BORDEREAU, pjs=(pj("PJ1", raw="pas du base64 !"),)),
     "not base64", 8),
    ("pj-not-gzip", pes(OK_BORDEREAU, pjs=(pj("PJ1", raw=base64.b64encode(b"%PDF").decode()),)),
     "not gzip", 8),
    ("pj-cut", pes(OK_BORDEREAU, pjs=(pj("PJ1", raw=base64.b64encode(
        gzip.compress(b"%PDF-1.4 " * 500)[:40]).decode()),)), "cut short", 8),
    ("pjref-unresolved", pes(bordereau(piece("55.22", ref="PJ9")), pjs=(pj("PJ1"),)),
     "points at no PJ", 6),
    ("empty-pes", pes(), "an empty PES", None),
    ("doctype", _hostile("<!DOCTYPE n:PES_Aller>"), "DOCTYPE", 2),
    ("billion-laughs", _hostile('<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'),
     "DOCTYPE", 2),
    ("external-entity", _hostile('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'),
     "DOCTYPE", 2),
    ("parameter-entity", _hostile('<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x">'
                                  '%p;]>'), "DOCTYPE", 2),
    ("stylesheet", _hostile('<?xml-stylesheet type="text/xsl" href="http://127.0.0.1:9/x"?>'),
     "stylesheet", 2),
    ("xinclude", _with(b"<EnTetePES>", b'<EnTetePES xmlns:xi="http://www.w3.org/2001/XInclude">'
                       b'<xi:include href="file:///etc/passwd"/>'), "XInclude", None),
    ("utf16-doctype", ('<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE x [<!ENTITY e '
                       'SYSTEM "file:///etc/passwd">]>\n<a>&e;</a>').encode("utf-16"),
     "UTF-16", 1),
    ("not-well-formed", _with(b"</EnTetePES>", b""), "mismatch", None),
    ("cut-file", pes(OK_BORDEREAU)[:-60], "", None),
    ("garbage", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "", None),
    ("json", b'{"PES_Aller": {}}', "", None),
]


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
