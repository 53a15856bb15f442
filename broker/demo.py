"""``demat demo``: the broker with its simulators, a sample entity and sample documents."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from broker import registry
from broker.serve import Roles, run
from broker.settings import Settings
from broker.store.db import make_engine
from broker.store.migrate import upgrade

SAMPLE_ENTITY = "214000150"
SAMPLE_NAME = "Commune d'exemple"


def _say(key: str, value: str) -> None:
    print(f"{key}={value}", flush=True)


async def start_simulator(module: str, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``python -m simulators.<module>`` on a free port; return it and its URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"simulators.{module}", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"simulator {module} did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


async def _prepare(settings: Settings, gf_url: str) -> tuple[str, str]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        async with engine.begin() as conn:
            await registry.upsert_entity(conn, SAMPLE_ENTITY, SAMPLE_NAME,
                                         {"depot": {"url": f"{gf_url}/inbox"}})
            operator = await registry.create_token(conn, registry.OPERATOR, label="demo")
            entity = await registry.create_token(conn, registry.ENTITY, SAMPLE_ENTITY, "demo")
    finally:
        await engine.dispose()
    return operator, entity


async def _submit_samples(api_url: str, token: str, count: int) -> list[str]:
    ids = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for n in range(1, count + 1):
            form = aiohttp.FormData()
            form.add_field("flow", "depot")
            form.add_field("entity", SAMPLE_ENTITY)
            form.add_field("metadata", json.dumps({"objet": f"Mandat de démonstration {n}",
                                                   "exercice": 2026}))
            form.add_field("document", f"<demo n='{n}'/>".encode(), filename=f"demo-{n}.xml",
                           content_type="application/xml")
            async with http.post(f"{api_url}/api/v1/documents", data=form) as resp:
                body: dict[str, Any] = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"sample submission refused: {body}")
                ids.append(body["id"])
    return ids


async def run_demo(settings: Settings, documents: int) -> None:
    async with AsyncExitStack() as stack:
        gf, gf_url = await start_simulator("gf")
        stack.callback(gf.terminate)
        operator, entity_token = await _prepare(settings, gf_url)
        api_url: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def announce(key: str, value: str) -> None:
            if key == "API_URL" and not api_url.done():
                api_url.set_result(value)
            _say(key, value)

        server = asyncio.create_task(run(settings, Roles(api=True, relay=True, worker=True),
                                         announce=announce))
        url = await asyncio.wait_for(asyncio.shield(api_url), 60)
        _say("TOKEN", operator)
        _say("ENTITY", SAMPLE_ENTITY)
        _say("ENTITY_TOKEN", entity_token)
        _say("GF_URL", gf_url)
        _say("DATA_DIR", str(settings.data_dir.resolve()))
        ids = await _submit_samples(url, operator, documents)
        _say("DOCUMENTS", ",".join(ids))
        await server
