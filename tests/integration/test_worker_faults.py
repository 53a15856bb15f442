"""A worker and a relay on RabbitMQ and PostgreSQL, cut off from either mid-step.

Each step writes to the store while it runs (``save_ref``, as the ACTES, parapheur and
SAE connectors do) and takes long enough for the cut to land in the middle of many
of them. Neither fault may end a step half-way, run it twice, count a crash or park
anything:

* a lost AMQP connection cancels the transport's handlers (aiormq cancels a closed
  channel's consumer tasks); the steps go on to their commits and the redeliveries
  find them done;
* a store that stops answering pauses claims, commits and writes, which go on once it
  is back: no delivery is rejected back to the broker meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.catalog import Catalog
from broker.flows.depot import DEPOT
from broker.outcomes import Done, Outcome
from broker.relay import Relay
from broker.runtime import Runtime
from broker.store.schema import documents, jobs, journal
from broker.worker import Worker
from connectors.base import StepContext
from connectors.depot.settings import DepotSettings
from tests.e2e.harness import isolated_amqp
from tests.integration.store_helpers import new_documents, open_runtime
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.amqp, pytest.mark.postgres]

DOCUMENTS = 40
ROUNDS = 15
FINISH_WITHIN = 30.0  # far below the 5 min lease: nothing may wait for a lease to run out


class SavingStep:
    """The depot step, replaced by one that saves a reference every 20 ms, ROUNDS times."""

    name = "depot"
    steps = frozenset({"deliver"})
    settings_key = "depot"
    settings = DepotSettings
    serves = frozenset({("depot", "deliver")})

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()

    async def run(self, ctx: StepContext) -> Outcome:
        self.started[ctx.document_id] += 1
        assert ctx.save_ref is not None
        for i in range(ROUNDS):
            await ctx.save_ref(f"r{i}", str(i))
            await asyncio.sleep(0.02)
        self.finished[ctx.document_id] += 1
        return Done(metadata={"saved": ROUNDS})

    def in_flight(self) -> int:
        return sum(self.started.values()) - sum(self.finished.values())


@dataclass
class Stack:
    rt: Runtime
    step: SavingStep
    amqp: TcpProxy
    pg: TcpProxy


@pytest.fixture
async def stack(amqp_url: str, pg_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with isolated_amqp(amqp_url) as vhost_url:
        amqp, pg = TcpProxy(vhost_url), TcpProxy(pg_url, 5432)
        await amqp.start()
        await pg.start()
        rt = await open_runtime(pg.url, tmp_path / "data",
                                amqp_url=f"{amqp.url}?reconnect_interval=0.2",
                                worker_stale="3s")
        step = SavingStep()
        rt.catalog = Catalog.build([DEPOT], [step])
        relay, worker = Relay(rt), Worker(rt, ["depot"])
        await relay.start()
        await worker.start()
        try:
            yield Stack(rt, step, amqp, pg)
        finally:
            await worker.stop()
            await relay.stop()
            await rt.close()
            await amqp.cut()
            await pg.cut()


async def until(condition: Callable[[], bool | Awaitable[bool]], within: float,
                what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        met = condition()
        if await met if inspect.isawaitable(met) else met:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {within}s: {what}")


async def check_every_step_ran_once(stack: Stack, ids: list[str]) -> None:
    async def all_completed() -> bool:
        async with stack.rt.db.connect() as conn:
            done = await conn.scalar(sa.select(sa.func.count()).where(
                documents.c.id.in_(ids), documents.c.state == "completed"))
        return done == len(ids)

    await until(all_completed, FINISH_WITHIN, f"all {len(ids)} documents completed")
    assert set(stack.step.started) == set(ids)
    assert [d for d, n in stack.step.started.items() if n != 1] == [], "a step ran twice"
    async with stack.rt.db.connect() as conn:
        job_states = Counter((await conn.execute(sa.select(jobs.c.state, jobs.c.crashes)
                                                 .where(jobs.c.document_id.in_(ids)))).all())
        given_back = await conn.scalar(sa.select(sa.func.count()).where(
            journal.c.kind == "recovery"))
    assert job_states == Counter({("done", 0): len(ids)}), job_states
    assert given_back == 0


async def test_a_lost_broker_connection_mid_step_neither_cuts_nor_repeats_steps(
        stack: Stack) -> None:
    ids = [doc for doc, _ in await new_documents(stack.rt, DOCUMENTS)]
    stack.rt.notifier.notify()
    await until(lambda: stack.step.in_flight() >= DOCUMENTS // 2, 10, "steps under way")

    await stack.amqp.reset()

    await check_every_step_ran_once(stack, ids)


async def test_a_store_outage_mid_step_pauses_work_and_it_goes_on_after(stack: Stack) -> None:
    ids = [doc for doc, _ in await new_documents(stack.rt, DOCUMENTS)]
    stack.rt.notifier.notify()
    await until(lambda: stack.step.in_flight() >= DOCUMENTS // 2, 10, "steps under way")

    await stack.pg.refuse()
    await asyncio.sleep(2.0)
    assert not stack.rt.gate.up, "the worker did not notice the outage"
    stack.pg.accept()

    await check_every_step_ran_once(stack, ids)
    assert stack.rt.gate.up and stack.rt.gate.outages >= 1
