"""The finance-software inbox simulator over real HTTP, with its faults."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulators.common import serving
from simulators.faults import FaultRule
from simulators.gf import build_app

ROOT = Path(__file__).resolve().parents[2]
DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)

Inbox = Callable[..., AbstractAsyncContextManager[str]]


@asynccontextmanager
async def _inbox(**options: Any) -> AsyncIterator[str]:
    async with serving(build_app(**options)) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def form(files: dict[str, bytes] | None = None, metadata: Any = None) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, content in (files or {}).items():
        data.add_field("document", content, filename=name, content_type="application/pdf")
    if metadata is not None:
        data.add_field("metadata.json", json.dumps(metadata), content_type="application/json")
    return data


async def post(
    http: aiohttp.ClientSession,
    url: str,
    key: str | None = "doc-1",
    files: dict[str, bytes] | None = None,
    metadata: Any = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    data = form({"a.pdf": b"%PDF-1 a"} if files is None else files, metadata or {"n": 1})
    async with http.post(f"{url}/inbox", data=data, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        return await resp.json()


async def stats(http: aiohttp.ClientSession, url: str) -> dict[str, int]:
    result: dict[str, int] = await get_json(http, f"{url}/stats")
    return result


async def set_faults(http: aiohttp.ClientSession, url: str, *rules: dict[str, Any]) -> Any:
    async with http.post(f"{url}/_control/faults", json={"rules": list(rules)}) as resp:
        return resp.status, await resp.json()


async def test_stores_files_and_metadata(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    files = {"a.pdf": b"first file", "b.xml": b"<x/>" * 1000}
    async with _inbox(store_dir=tmp_path) as url:
        status, body = await post(http, url, "doc-1", files, {"flow": "factures"})
        assert status == 201
        assert body["files"] == 2
        receipt = await get_json(http, f"{url}/inbox/doc-1")
        assert receipt["receipt"] == body["receipt"]
        assert receipt["metadata"] == {"flow": "factures"}
        assert receipt["files"] == [
            {"name": n, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
            for n, c in files.items()
        ]
        stored = sorted((tmp_path / body["receipt"]).iterdir())
        assert [p.read_bytes() for p in stored] == list(files.values())
        listing = await get_json(http, f"{url}/inbox")
        assert [r["key"] for r in listing["receipts"]] == ["doc-1"]
        async with http.get(f"{url}/inbox/unknown") as resp:
            assert resp.status == 404
        counts = await stats(http, url)
    assert counts["received"] == 1 and counts["files"] == 2 and counts["replays"] == 0


async def test_box_path_is_recorded(http: aiohttp.ClientSession) -> None:
    async with (
        _inbox() as url,
        http.post(
            f"{url}/inbox/mandats", data=form({"m.pdf": b"m"}, {}), headers={"Idempotency-Key": "k"}
        ) as resp,
    ):
        assert resp.status == 201
        assert (await get_json(http, f"{url}/inbox/k"))["box"] == "mandats"


async def test_replayed_key_answers_409_and_stores_nothing(http: aiohttp.ClientSession) -> None:
    async with _inbox() as url:
        first = await post(http, url, "doc-1")
        status, body = await post(http, url, "doc-1")
        assert status == 409
        assert body == {"error": "already received", "key": "doc-1", "receipt": first[1]["receipt"]}
        counts = await stats(http, url)
        assert len((await get_json(http, f"{url}/inbox"))["receipts"]) == 1
    assert counts["replays"] == 1 and counts["received"] == 1 and counts["requests"] == 2


async def test_without_idempotency_stores_every_copy(http: aiohttp.ClientSession) -> None:
    async with _inbox(idempotent=False) as url:
        assert (await post(http, url, "doc-1"))[0] == 201
        assert (await post(http, url, "doc-1"))[0] == 201
        assert (await post(http, url, None, {"z.pdf": b"z"}))[0] == 201
        counts = await stats(http, url)
        assert len((await get_json(http, f"{url}/inbox"))["receipts"]) == 3
    assert counts["received"] == 3 and counts["duplicates"] == 1 and counts["replays"] == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (form({}, {"n": 1}), "document"),
        (form({"a.pdf": b"a"}, [1, 2]), "metadata.json"),
        (form({"a.pdf": b"a"}), "metadata.json"),
        ({"document": "not multipart"}, "multipart"),
    ],
    ids=["no-document", "metadata-not-object", "no-metadata", "not-multipart"],
)
async def test_bad_request_names_the_part(
    http: aiohttp.ClientSession, data: Any, expected: str
) -> None:
    async with _inbox() as url, http.post(f"{url}/inbox", data=data) as resp:
        assert resp.status == 400
        assert expected in (await resp.json())["error"]
        assert (await stats(http, url))["received"] == 0


@pytest.mark.parametrize(
    ("kind", "error"),
    # refuse closes (FIN) without answering; reset aborts with RST.
    [("refuse", aiohttp.ServerDisconnectedError), ("reset", aiohttp.ClientOSError)],
)
async def test_dropped_connection(
    http: aiohttp.ClientSession, kind: str, error: type[Exception]
) -> None:
    async with _inbox(faults=[FaultRule(kind=kind, count=1)]) as url:
        with pytest.raises(error):
            await post(http, url)
        counts = await stats(http, url)
        assert counts[f"faults_{kind}"] == 1 and counts["faults"] == 1
        assert counts["received"] == 0  # phase "before": not processed
        assert (await post(http, url))[0] == 201  # count=1: the next one passes


async def test_hang_until_the_client_gives_up(http: aiohttp.ClientSession) -> None:
    async with _inbox(faults=[FaultRule(kind="hang")]) as url:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await post(http, url, timeout=aiohttp.ClientTimeout(total=0.3))
        assert 0.3 <= time.monotonic() - started < 2
        assert (await stats(http, url))["faults_hang"] == 1


async def test_hang_is_bounded(http: aiohttp.ClientSession) -> None:
    async with _inbox(faults=[FaultRule(kind="hang", hang=0.2)]) as url:
        started = time.monotonic()
        with pytest.raises(DROPPED):
            await post(http, url, timeout=aiohttp.ClientTimeout(total=5))
        assert time.monotonic() - started < 2


@pytest.mark.parametrize(("kind", "retry_after"), [("503", "7"), ("429", "1"), ("500", None)])
async def test_error_status(
    http: aiohttp.ClientSession, kind: str, retry_after: str | None
) -> None:
    rule = FaultRule(kind=kind, retry_after=7) if kind == "503" else FaultRule(kind=kind)
    async with _inbox(faults=[rule]) as url:
        async with http.post(f"{url}/inbox", data=form({"a": b"a"}, {})) as resp:
            assert resp.status == int(kind)
            assert resp.headers.get("Retry-After") == retry_after
        assert (await stats(http, url))["received"] == 0


async def test_slow_body_arrives_slowly_but_completely(http: aiohttp.ClientSession) -> None:
    async with _inbox(faults=[FaultRule(kind="slow", chunk=4, interval=0.02)]) as url:
        started = time.monotonic()
        async with http.post(
            f"{url}/inbox", data=form({"a": b"a"}, {}), headers={"Idempotency-Key": "k"}
        ) as resp:
            pieces = [piece async for piece in resp.content.iter_any()]
        elapsed = time.monotonic() - started
        body = json.loads(b"".join(pieces))
        assert resp.status == 201 and body["files"] == 1
        assert len(pieces) > 3
        assert elapsed >= 0.02 * len(b"".join(pieces)) / 4 * 0.8
        assert (await stats(http, url))["faults_slow"] == 1


@pytest.mark.parametrize("kind", ["reset", "refuse", "500"])
async def test_phase_after_stores_then_loses_the_answer(
    http: aiohttp.ClientSession, kind: str
) -> None:
    async with _inbox(faults=[FaultRule(kind=kind, phase="after", count=1)]) as url:
        if kind == "500":
            assert (await post(http, url, "doc-9"))[0] == 500
        else:
            with pytest.raises(DROPPED):
                await post(http, url, "doc-9")
        assert (await get_json(http, f"{url}/inbox/doc-9"))["key"] == "doc-9"
        assert (await post(http, url, "doc-9"))[0] == 409
        counts = await stats(http, url)
    assert counts["received"] == 1 and counts["replays"] == 1


async def _statuses(http: aiohttp.ClientSession, url: str, n: int) -> list[int]:
    statuses = []
    for _ in range(n):
        async with http.get(f"{url}/inbox") as resp:
            statuses.append(resp.status)
    return statuses


async def test_ratio_with_seed_is_reproducible(http: aiohttp.ClientSession) -> None:
    rule = {"kind": "503", "ratio": 0.5, "seed": 42}
    async with _inbox() as url:
        await set_faults(http, url, rule)
        first = await _statuses(http, url, 30)
        await set_faults(http, url, rule)
        again = await _statuses(http, url, 30)
        await set_faults(http, url, {**rule, "seed": 7})
        other = await _statuses(http, url, 30)
    assert first == again
    assert set(first) == {200, 503}
    assert other != first


async def test_schedule_after_and_count(http: aiohttp.ClientSession) -> None:
    rule = FaultRule(kind="503", after=2, count=2)
    async with _inbox(faults=[rule]) as url:
        assert await _statuses(http, url, 6) == [200, 200, 503, 503, 200, 200]
        await http.post(f"{url}/_control/reset")  # re-arms the schedule
        assert await _statuses(http, url, 3) == [200, 200, 503]


async def test_path_and_method_filters(http: aiohttp.ClientSession) -> None:
    rule = FaultRule(kind="503", path="/inbox", method="post")
    async with _inbox(faults=[rule]) as url:
        assert await _statuses(http, url, 2) == [200, 200]
        assert (await post(http, url))[0] == 503


async def test_control_api_replaces_rules(http: aiohttp.ClientSession) -> None:
    async with _inbox(faults=[FaultRule(kind="refuse")]) as url:
        # Control and stats paths are never faulted.
        assert (await stats(http, url))["faults"] == 0
        status, body = await set_faults(http, url, {"kind": "429", "retry_after": 3})
        assert status == 200 and [r["kind"] for r in body["rules"]] == ["429"]
        async with http.get(f"{url}/inbox") as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
        current = await get_json(http, f"{url}/_control/faults")
        assert current["state"] == [{"seen": 1, "applied": 1}]
        async with http.delete(f"{url}/_control/faults") as resp:
            assert (await resp.json())["rules"] == []
        assert await _statuses(http, url, 1) == [200]
        status, body = await set_faults(http, url, {"kind": "teapot"})
        assert status == 400 and "kind" in body["error"]
        assert await _statuses(http, url, 1) == [200]  # a refused update changes nothing


async def test_reset_forgets_counters_and_documents(http: aiohttp.ClientSession) -> None:
    async with _inbox() as url:
        await post(http, url, "doc-1")
        async with http.post(f"{url}/_control/reset") as resp:
            assert (await resp.json())["received"] == 0
        assert (await get_json(http, f"{url}/inbox"))["receipts"] == []
        assert (await post(http, url, "doc-1"))[0] == 201  # the key is forgotten too


async def test_command_line_simulator(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.gf",
        "--port",
        "0",
        "--store-dir",
        str(tmp_path),
        "--fault",
        "503,count=1,retry_after=2",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("LISTENING http://127.0.0.1:")
        url = line.split()[1]
        async with aiohttp.ClientSession() as http:
            assert (await post(http, url))[0] == 503
            assert (await post(http, url))[0] == 201
            counts = await stats(http, url)
        assert counts["requests"] == 2 and counts["received"] == 1 and counts["faults_503"] == 1
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert await proc.stdout.read() == b""  # the LISTENING line is the only output
