"""Crash tests: processes SIGKILLed mid-step while the finance software fails 20% of requests.

Every document must end ``completed`` and be stored exactly once by the inbox
(which deduplicates by ``Idempotency-Key``): a run interrupted after the inbox
stored the document, or whose answer was lost, comes back as a 409 ``replay``.

* RabbitMQ + PostgreSQL: ``demat api``, ``demat relay`` and two ``demat
  worker`` processes; workers are killed while they hold claimed jobs, the
  relay's sweep gives those jobs back, a restarted worker takes over.
* embedded + SQLite: ``demat serve`` alone, killed and restarted on the same
  data directory; at start it re-dispatches what the last process left.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.e2e.conftest import ENTITY, write_config
from tests.e2e.harness import (
    TERMINAL,
    Api,
    Proc,
    WorkerPool,
    demat_env,
    isolated_amqp,
    run_cli,
    set_faults,
    sim_stats,
    start_demat,
    start_simulator,
    start_split_layout,
)

pytestmark = pytest.mark.slow

DOCUMENTS = 200
KILLS = 6
# Rules are tried in order: 0.08 + 0.92 * 0.07 + 0.92 * 0.93 * 0.065 = 20% of requests fail.
# ``reset@after``: the inbox stores the document, then the connection is reset.
FAULTS = ("503:0.08,retry_after=0", "reset:0.07@after", "500:0.065")
SEED = "4242"
SUBMIT_CONCURRENCY = 20
# Documents submitted per second: spreads the run over several kills.
SUBMIT_RATE = 25.0
# Least time between a restart and the next kill.
KILL_SPACING = 1.0
END_TIMEOUT = 120.0
COMMON_SETTINGS = {
    "DEMAT_RETRY_LADDER": "200ms,500ms,1s,1s,1s,1s,1s,1s",
    "DEMAT_RETRY_IN_CALL": "3",
    "DEMAT_WORKER_STALE": "3s",
    # Six kills a second apart may hit one job more than the default three times: these
    # tests kill on purpose, they are not about poison steps (tests/e2e/test_chaos.py is).
    "DEMAT_CRASH_LIMIT": "10",
}


# --- RabbitMQ isolation -----------------------------------------------------------------


@pytest.fixture
async def isolated_amqp_url(amqp_url: str) -> AsyncIterator[str]:
    """The broker's queue names are fixed (``demat.*``): a virtual host of this test's own."""
    async with isolated_amqp(amqp_url) as url:
        yield url


# --- submitting -------------------------------------------------------------------------


@dataclass
class Intake:
    """What the submitters saw: accepted ids and the submissions tried again."""

    accepted: dict[int, str] = field(default_factory=dict)
    # The connection was refused: nothing was sent.
    refused: int = 0
    # Sent, but the answer never came (the server died): maybe stored, tried again.
    unanswered: int = 0
    # A 5xx answer: not stored, tried again.
    errors: int = 0


def _body(n: int) -> bytes:
    return f"<mandat n='{n}'>{'x' * 512}</mandat>".encode()


async def _submit_until_accepted(api: Api, n: int, intake: Intake, deadline: float) -> None:
    """Submit document ``n`` until accepted; resent with the same Idempotency-Key, a
    submission whose answer was lost returns the document it created (200)."""
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = await api.submit(
                ENTITY,
                [("document", f"mandat-{n:04d}.xml", _body(n))],
                {"crash_test": n},
                key=f"crash-{n}",
            )
        except aiohttp.ClientConnectorError as exc:
            intake.refused += 1
            last = exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            intake.unanswered += 1
            last = exc
        else:
            if status in (200, 201):
                intake.accepted[n] = str(body["id"])
                return
            assert status >= 500, f"submission {n} refused: {status} {body}"
            intake.errors += 1
            last = (status, body)
        await asyncio.sleep(0.2)
    raise AssertionError(f"submission {n} was never accepted; last answer: {last!r}")


async def submit_while(api: Api, intake: Intake, more_wanted: Callable[[], bool]) -> None:
    """Submit at least ``DOCUMENTS`` documents, paced, and more while ``more_wanted()``."""
    started = time.monotonic()
    deadline = started + END_TIMEOUT
    numbers = iter(range(10 * DOCUMENTS))

    async def submitter() -> None:
        for n in numbers:
            if n >= DOCUMENTS and not more_wanted():
                return
            await asyncio.sleep(max(0.0, started + n / SUBMIT_RATE - time.monotonic()))
            await _submit_until_accepted(api, n, intake, deadline)
        raise AssertionError(f"still submitting after {10 * DOCUMENTS} documents")

    await asyncio.gather(*(submitter() for _ in range(SUBMIT_CONCURRENCY)))


# --- waiting and checking ---------------------------------------------------------------


async def all_documents(api: Api) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        page = await api.get("/api/v1/documents", **params)
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def wait_all_ended(api: Api, at_least: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    docs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            docs = await all_documents(api)
            if len(docs) >= at_least and all(d["state"] in TERMINAL for d in docs):
                return docs
        await asyncio.sleep(0.5)
    states = Counter(d["state"] for d in docs)
    raise AssertionError(f"documents did not all end within {timeout}s: {dict(states)}")


async def wait_no_open_jobs(count_open: Callable[[], Awaitable[int]], timeout: float) -> None:
    """A job given back while its document ended anyway is closed by its next delivery."""
    deadline = time.monotonic() + timeout
    left = await count_open()
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        left = await count_open()
    assert left == 0, f"{left} jobs left unfinished (scheduled, published or running)"


OPEN_JOBS = "SELECT count(*) FROM jobs WHERE state IN ('scheduled', 'published', 'running')"


async def inbox_receipts(gf_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{gf_url}/inbox") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return list(body["receipts"])


async def describe_failures(api: Api, docs: list[dict[str, Any]]) -> str:
    lines = []
    for doc in [d for d in docs if d["state"] != "completed"][:5]:
        journal = await api.get(f"/api/v1/documents/{doc['id']}/journal")
        lines.append(f"{doc['id']} {doc['state']} {doc['last_error']!r}\n  journal: {journal}")
    return "\n".join(lines)


async def check_delivered_once(
    api: Api, gf_url: str, docs: list[dict[str, Any]], intake: Intake
) -> dict[str, Any]:
    """Every document completed and stored once by the inbox; returns the inbox's stats."""
    not_completed = [d for d in docs if d["state"] != "completed"]
    assert not not_completed, (
        f"{len(not_completed)} of {len(docs)} documents did not complete:\n"
        + await describe_failures(api, docs)
    )
    ids = {d["id"] for d in docs}
    assert set(intake.accepted.values()) == ids, "a document is missing or was created twice"
    assert len(ids) == len(intake.accepted), "one submission made two documents"
    stats = await sim_stats(gf_url)
    # Reading the inbox's list goes through the fault injection too.
    await set_faults(gf_url, [])
    receipts = await inbox_receipts(gf_url)
    keys = Counter(r["key"] for r in receipts)
    assert stats["duplicates"] == 0, stats
    assert stats["faults_reset"] > 0, "no answer was lost after storing: nothing to replay"
    assert stats["received"] == len(docs) == len(receipts), (stats, len(docs), len(receipts))
    assert [k for k, n in keys.items() if n > 1] == [], "documents stored twice"
    assert set(keys) == ids, "stored keys differ from the documents"
    by_key = {r["key"]: r["receipt"] for r in receipts}
    wrong = [d["id"] for d in docs if d["metadata"]["depot"]["receipt"] != by_key[d["id"]]]
    assert wrong == [], f"documents holding another receipt than the inbox's: {wrong[:5]}"
    return stats


def summary(
    variant: str, docs: int, kills: int, stats: dict[str, Any], seconds: float, extra: str
) -> str:
    # Each reset after storing costs one replay; the other replays followed a crash.
    after_crashes = stats["replays"] - stats["faults_reset"]
    return (
        f"crash-test {variant}: {docs} docs, {kills} kills, replays={stats['replays']}, "
        f"faults={stats['faults']}, seconds={seconds:.1f} "
        f"(replays after crashes={after_crashes}, after lost answers={stats['faults_reset']}; "
        f"requests={stats['requests']}; {extra})"
    )


# --- killing mid-step -------------------------------------------------------------------


Probe = Callable[[], Awaitable[dict[int, int]]]


@dataclass
class Kill:
    pid: int
    running_jobs: int
    inbox_requests: int


async def wait_mid_step(
    probe: Probe, gf_url: str, since: int, stop: asyncio.Event
) -> tuple[int, int, int] | None:
    """Wait until the inbox saw new requests and a process holds claimed jobs.

    Returns (pid, running jobs, inbox requests), or None once ``stop`` is set.
    """
    while not stop.is_set():
        requests = (await sim_stats(gf_url))["requests"]
        if requests > since:
            running = await probe()
            if running:
                pid = max(running, key=lambda p: running[p])
                return pid, running[pid], requests
        await asyncio.sleep(0.02)
    return None


async def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            await proc.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_gf(tmp_path: Path) -> tuple[Proc, str]:
    faults = [arg for spec in FAULTS for arg in ("--fault", spec)]
    return await start_simulator("gf", tmp_path / "gf.log", *faults, "--seed", SEED)


# --- RabbitMQ + PostgreSQL --------------------------------------------------------------


async def test_workers_killed_mid_step_on_rabbitmq_and_postgresql(
    tmp_path: Path, isolated_amqp_url: str, pg_url: str
) -> None:
    gf, gf_url = await start_gf(tmp_path)
    env = demat_env(
        tmp_path / "data",
        DEMAT_CONFIG=str(write_config(tmp_path / "demat.toml", gf_url)),
        DEMAT_AMQP_URL=isolated_amqp_url,
        DEMAT_DATABASE_URL=pg_url,
        DEMAT_PORT="0",
        **COMMON_SETTINGS,
    )
    run_cli(env, "db", "upgrade")
    token = run_cli(env, "token", "create", "--operator").strip()
    pg = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    procs: list[Proc] = [gf]
    workers = WorkerPool(env, tmp_path, pg, procs)

    try:
        url = await start_split_layout(env, workers, procs, tmp_path)
        api = Api(url, token)
        intake = Intake()
        kills: list[Kill] = []
        stop = asyncio.Event()

        async def killer() -> None:
            since = 0
            while len(kills) < KILLS:
                await asyncio.sleep(KILL_SPACING)
                found = await wait_mid_step(workers.claimed, gf_url, since, stop)
                if found is None:
                    return
                pid, running, since = found
                await workers.kill_and_replace(pid)
                kills.append(Kill(pid, running, since))

        started = time.monotonic()
        try:
            killing = asyncio.create_task(killer())
            await submit_while(api, intake, lambda: len(kills) < KILLS)
            await asyncio.wait_for(killing, END_TIMEOUT)
            docs = await wait_all_ended(api, len(intake.accepted), END_TIMEOUT)
            seconds = time.monotonic() - started
            stats = await check_delivered_once(api, gf_url, docs, intake)
            assert "journal OK" in run_cli(env, "journal", "verify")
            await wait_no_open_jobs(lambda: pg.fetchval(OPEN_JOBS), 20)
            recoveries = await pg.fetchval("SELECT count(*) FROM journal WHERE kind = 'recovery'")
            assert len(kills) >= KILLS
            # Each kill took jobs with it: they came back through the relay's sweep.
            assert recoveries >= len(kills), (recoveries, kills)
            print(
                "\n"
                + summary(
                    "amqp+pg",
                    len(docs),
                    len(kills),
                    stats,
                    seconds,
                    f"jobs recovered={recoveries}, "
                    f"claimed jobs at each kill={[k.running_jobs for k in kills]}",
                )
            )
        finally:
            stop.set()
            await api.close()
    finally:
        await pg.close()
        await stop_all(procs)


# --- embedded + SQLite ------------------------------------------------------------------


async def test_serve_killed_mid_step_on_embedded_and_sqlite(tmp_path: Path) -> None:
    gf, gf_url = await start_gf(tmp_path)
    port = free_port()
    data_dir = tmp_path / "data"
    env = demat_env(
        data_dir,
        DEMAT_CONFIG=str(write_config(tmp_path / "demat.toml", gf_url)),
        DEMAT_PORT=str(port),
        **COMMON_SETTINGS,
    )
    run_cli(env, "db", "upgrade")
    token = run_cli(env, "token", "create", "--operator").strip()
    procs: list[Proc] = [gf]
    current: list[Proc] = []

    async def start_serve() -> None:
        serve, url = await start_demat("serve", env, tmp_path / "serve.log")
        assert url == f"http://127.0.0.1:{port}", url
        current[:] = [serve]
        procs.append(serve)

    def sqlite_count(sql: str) -> int:
        db = sqlite3.connect(f"file:{data_dir / 'demat.db'}?mode=ro", uri=True, timeout=10)
        try:
            value: int = db.execute(sql).fetchone()[0]
            return value
        finally:
            db.close()

    async def probe() -> dict[int, int]:
        sql = "SELECT count(*) FROM jobs WHERE state = 'running'"
        running = await asyncio.to_thread(sqlite_count, sql)
        proc = current[0].proc
        return {proc.pid: running} if running and proc is not None else {}

    try:
        await start_serve()
        api = Api(f"http://127.0.0.1:{port}", token)
        intake = Intake()
        kills: list[Kill] = []
        stop = asyncio.Event()
        pause = random.Random(SEED)

        async def killer() -> None:
            since = 0
            while len(kills) < KILLS:
                await asyncio.sleep(KILL_SPACING)
                found = await wait_mid_step(probe, gf_url, since, stop)
                if found is None:
                    return
                pid, running, since = found
                current[0].kill(signal.SIGKILL)
                assert current[0].proc is not None
                await current[0].proc.wait()
                kills.append(Kill(pid, running, since))
                # A restart takes a moment: submissions meanwhile are refused, then retried.
                await asyncio.sleep(pause.uniform(0.0, 0.5))
                await start_serve()

        started = time.monotonic()
        try:
            killing = asyncio.create_task(killer())
            await submit_while(api, intake, lambda: len(kills) < KILLS)
            await asyncio.wait_for(killing, END_TIMEOUT)
            docs = await wait_all_ended(api, len(intake.accepted), END_TIMEOUT)
            seconds = time.monotonic() - started
            stats = await check_delivered_once(api, gf_url, docs, intake)
            assert "journal OK" in run_cli(env, "journal", "verify")
            await wait_no_open_jobs(lambda: asyncio.to_thread(sqlite_count, OPEN_JOBS), 20)
            recoveries = sqlite_count("SELECT count(*) FROM journal WHERE kind = 'recovery'")
            assert len(kills) >= KILLS
            assert recoveries >= len(kills), (recoveries, kills)
            print(
                "\n"
                + summary(
                    "embedded+sqlite",
                    len(docs),
                    len(kills),
                    stats,
                    seconds,
                    f"jobs recovered={recoveries}, "
                    f"claimed jobs at each kill={[k.running_jobs for k in kills]}, "
                    f"submissions: {len(intake.accepted)} accepted, {intake.unanswered} "
                    f"unanswered then sent again, {intake.refused} refused, "
                    f"{intake.errors} 5xx; documents created by an unanswered submission="
                    f"{len(docs) - len({d['metadata']['crash_test'] for d in docs})}",
                )
            )
        finally:
            stop.set()
            await api.close()
    finally:
        await stop_all(procs)
