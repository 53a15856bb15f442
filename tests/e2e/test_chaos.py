"""Broker and store restarts are not poison; a step that keeps killing its worker is.

* The chaos run (``tests/e2e/chaos.py``, short form): 60 acts and 200 depot documents on
  the split layout while a worker is SIGKILLed, RabbitMQ is stopped twice and PostgreSQL
  restarted twice: every document completes, none is parked, no peer holds a duplicate.
* A document whose step takes its worker down every time it runs (the test kills
  whichever worker holds that step, as a crash in a native library on that one file
  would) is parked after the crash limit, its reason counting the crashes, while the
  other documents complete.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.e2e import chaos
from tests.e2e.conftest import ENTITY, OTHER_ENTITY, write_config
from tests.e2e.harness import (
    Api,
    Proc,
    WorkerPool,
    demat_env,
    isolated_amqp,
    run_cli,
    set_faults,
    start_simulator,
    start_split_layout,
)

pytestmark = [pytest.mark.slow, pytest.mark.amqp, pytest.mark.postgres]


@pytest.fixture
async def amqp_vhost(amqp_url: str) -> AsyncIterator[str]:
    async with isolated_amqp(amqp_url) as url:
        yield url


async def test_acts_and_deliveries_survive_broker_and_store_restarts(
    tmp_path: Path, amqp_vhost: str, pg_url: str
) -> None:
    report = await chaos.run(tmp_path, amqp_vhost, pg_url, chaos.Plan())
    print("\n" + report.summary())
    assert report.parked == 0
    assert report.acts == 60 and report.depot >= 200
    kinds = [f.kind for f in report.faults]
    assert kinds.count("worker-kill") == 1
    assert kinds.count("rabbitmq-stop") == 2 and kinds.count("postgresql-restart") == 2
    # Only the kill can count crashes (the restarts count none), each on a job it took down
    # and the sweep gave back. (Whether it took one depends on whether the claim it aimed
    # at was committed first: tests/e2e/test_crash.py and the poison test count those.)
    assert report.crashes_counted == report.recoveries


CRASH_LIMIT = 3


async def test_a_step_that_kills_its_worker_every_time_is_parked_after_the_limit(
    tmp_path: Path, amqp_vhost: str, pg_url: str
) -> None:
    gf, gf_url = await start_simulator("gf", tmp_path / "gf.log")
    env = demat_env(
        tmp_path / "data",
        DEMAT_CONFIG=str(write_config(tmp_path / "demat.toml", gf_url)),
        DEMAT_AMQP_URL=amqp_vhost,
        DEMAT_DATABASE_URL=pg_url,
        DEMAT_PORT="0",
        DEMAT_WORKER_STALE="2s",
        DEMAT_CRASH_LIMIT=str(CRASH_LIMIT),
    )
    run_cli(env, "db", "upgrade")
    token = run_cli(env, "token", "create", "--operator").strip()
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    procs: list[Proc] = [gf]
    workers = WorkerPool(env, tmp_path, dsn, procs)
    pg = await asyncpg.connect(dsn)
    try:
        url = await start_split_layout(env, workers, procs, tmp_path)
        api = Api(url, token)
        try:
            # The poison's inbox never answers: its step runs until its worker is killed,
            # every time, however fast the machine (the others' inbox answers at once).
            await set_faults(gf_url, [{"kind": "hang", "path": "/no-such-inbox"}])
            status, poison = await api.submit(OTHER_ENTITY,
                                              [("document", "poison.xml", b"<p/>")])
            assert status == 201, poison
            kills: list[int] = []

            async def kill_whoever_runs_it() -> None:
                while True:
                    holder = await pg.fetchval(
                        "SELECT worker_id FROM jobs WHERE document_id = $1 AND state = "
                        "'running'", poison["id"])
                    if holder is not None:
                        pid = int(holder.rsplit(":", 2)[1])
                        with contextlib.suppress(KeyError):
                            await workers.kill_and_replace(pid)
                            kills.append(pid)
                    await asyncio.sleep(0.01)

            killer = asyncio.create_task(kill_whoever_runs_it())
            others = []
            for n in range(10):
                status, doc = await api.submit(ENTITY, [("document", f"d{n}.xml", b"<d/>")])
                assert status == 201, doc
                others.append(doc["id"])
            try:
                ended = await api.wait_terminal([poison["id"], *others], timeout=90)
            finally:
                killer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await killer
            parked = ended[poison["id"]]
            assert parked["state"] == "failed", parked
            assert parked["last_error"].startswith(
                f"step deliver crashed its worker {CRASH_LIMIT} times (last: worker "), parked
            assert parked["last_error"].endswith(f"parked after {CRASH_LIMIT} crashes"), parked
            assert len(kills) == CRASH_LIMIT
            assert [ended[i]["state"] for i in others] == ["completed"] * len(others)
            listed = await api.get("/api/v1/parking")
            parked_now = [(p["id"], p["connector"]) for p in listed["items"]]
            assert parked_now == [(poison["id"], "depot")], listed
            job = await pg.fetchrow("SELECT state, crashes FROM jobs WHERE document_id = $1",
                                    poison["id"])
            assert (job["state"], job["crashes"]) == ("parked", CRASH_LIMIT)
        finally:
            await api.close()
    finally:
        await pg.close()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                await proc.stop()

