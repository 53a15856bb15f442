"""A flow and a connector written in this test alone run a document on both transports.

Nothing else is edited: the catalog built here is the only place that names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from broker import accounts, views
from broker import engine as eng
from broker.accounts import Principal
from broker.catalog import Catalog
from broker.connector import ConnectorSettings, Done, Outcome, Pending, StepContext
from broker.flows.base import FileRule, Flow, Step
from broker.relay import Relay
from broker.runtime import Runtime, now
from broker.settings import Settings
from broker.store import documents as docs
from broker.store.schema import documents
from broker.worker import Worker
from tests.e2e.harness import isolated_amqp

ENTITY = "214000150"


class Meta(BaseModel):
    greeting: str


class EchoSettings(ConnectorSettings):
    suffix: str = "!"


class Echo:
    """Says the greeting back, after one poll (so the wait path runs too)."""

    name = "echo"
    steps = frozenset({"say"})
    settings_key = "echo"
    settings = EchoSettings
    serves = frozenset({("echoes", "say")})

    async def run(self, ctx: StepContext) -> Outcome:
        if ctx.kind != "poll":
            return Pending(0.05, note="thinking")
        suffix = EchoSettings.model_validate(dict(ctx.config)).suffix
        return Done(metadata={"echo": f"{ctx.metadata['greeting']}{suffix}"})


ECHOES = Flow(name="echoes", description="says it back", files={"document": FileRule(min=1)},
              metadata_model=Meta, steps=[Step("say", "echo")])


@pytest.fixture(params=["embedded+sqlite", pytest.param("amqp+postgresql", marks=[
    pytest.mark.amqp, pytest.mark.postgres])])
def servers(request: pytest.FixtureRequest) -> tuple[str | None, str | None]:
    """(AMQP URL, database URL): none for the embedded transport on SQLite."""
    if request.param == "embedded+sqlite":
        return None, None
    return request.getfixturevalue("amqp_url"), request.getfixturevalue("pg_url")


@pytest.fixture
async def rt(servers: tuple[str | None, str | None], tmp_path: Path) -> AsyncIterator[Runtime]:
    built = Catalog.build([ECHOES], [Echo()])
    amqp_url, database_url = servers
    async with contextlib.AsyncExitStack() as stack:
        vhost = await stack.enter_async_context(isolated_amqp(amqp_url)) if amqp_url else None
        runtime = await Runtime.open(Settings(data_dir=tmp_path / "data", amqp_url=vhost,
                                              database_url=database_url), built)
        stack.push_async_callback(runtime.close)
        yield runtime


async def test_a_new_flow_and_connector_run_a_document_end_to_end(rt: Runtime) -> None:
    async with rt.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune", {"echo": {"suffix": " !"}},
                                     rt.catalog.settings)
    doc = eng.Doc(docs.new_id(), "echoes", eng.QUEUED, None, 0, {"greeting": "bonjour"})
    start = eng.start(ECHOES, doc, now(), "test")
    async with rt.db.begin() as conn:
        await docs.insert_documents(conn, [docs.NewDocument(
            docs.TransitionWrite(doc, ENTITY, start),
            [docs.StoredFile("document", "a.txt", "text/plain", 3, "0" * 64)])], now())
    seen: list[tuple[str, dict[str, object]]] = []
    both = asyncio.Event()

    async def subscriber(routing_key: str, body: bytes) -> None:
        seen.append((routing_key, json.loads(body)))
        if len(seen) >= 2:
            both.set()

    await rt.transport.subscribe("echoes.#", subscriber)
    relay, worker = Relay(rt), Worker(rt)
    await relay.start()
    await worker.start()
    try:
        deadline = time.monotonic() + 20
        row = None
        while time.monotonic() < deadline:
            async with rt.db.connect() as conn:
                row = (await conn.execute(sa.select(documents).where(
                    documents.c.id == doc.id))).first()
            if row is not None and row.state in eng.TERMINAL:
                break
            await asyncio.sleep(0.05)
        assert row is not None and row.state == eng.COMPLETED, row
        assert row.metadata["echo"] == "bonjour !"
        # State events reach subscribers on this transport, and stay readable afterwards.
        await asyncio.wait_for(both.wait(), 10)
        # Claims are journaled, not published: the events say what each step led to.
        assert [(key, body["id"], body["state"]) for key, body in seen] == [
            ("echoes.waiting", doc.id, "waiting"), ("echoes.completed", doc.id, "completed")]
        operator = Principal("t", accounts.OPERATOR, None)
        other = Principal("t", accounts.ENTITY, "200000008")
        recent = await views.recent_events(rt, operator, flow="echoes")
        assert [e["routing_key"] for e in recent["items"]] == ["echoes.waiting",
                                                               "echoes.completed"]
        assert (await views.recent_events(rt, other))["items"] == []
        later = await views.recent_events(rt, operator, after=recent["items"][0]["id"])
        assert [(e["document"], e["state"]) for e in later["items"]] == [(doc.id, "completed")]
    finally:
        await worker.stop()
        await relay.stop()


async def test_its_settings_are_checked_when_saved(rt: Runtime) -> None:
    with pytest.raises(ValueError, match=rf"entity {ENTITY}: connectors.echo.sufix: unknown"):
        async with rt.db.begin() as conn:
            await accounts.upsert_entity(conn, ENTITY, "Commune", {"echo": {"sufix": "?"}},
                                         rt.catalog.settings)
