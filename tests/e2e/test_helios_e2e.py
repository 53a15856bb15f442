"""``helios`` end to end: PES deposited at the TdT, acquitted or refused by the DGFiP behind
it, archived, and the finance software told through its webhook.

Two slow runs of 50 PES each (several bordereaux, some with a PJ, some signed bordereau by
bordereau in the parapheur, some archived, some the DGFiP refuses for an unknown IdPost),
with the parapheur, the TdT, As@lae and the finance software's webhook as real processes,
while the TdT fails 10% of calls and a broker process is SIGKILLed mid-run: on embedded +
SQLite (``demat serve``) and on RabbitMQ + PostgreSQL (``demat api``, ``demat relay``, two
``demat worker``). Every PES ends as the DGFiP decided, none is deposited twice, and each
outcome reaches the webhook once, signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from broker.settings import Settings
from connectors.helios.acquit import read_acquit
from simulators.pes_samples import sample_pes
from simulators.tdt_helios import UNKNOWN_POST
from tests.e2e.actes_stack import (
    ENTITY,
    SHORT_SETTINGS,
    Peers,
    api_client,
    start_peers,
    stop_procs,
    write_config,
)
from tests.e2e.harness import (
    Api,
    Probe,
    Proc,
    WorkerPool,
    demat_env,
    free_port,
    isolated_amqp,
    prepare_store,
    run_cli,
    sim_stats,
    start_demat,
    start_simulator,
    start_split_layout,
    submit_all,
    wait_all_ended,
    wait_mid_run,
)

SECRET = "secret-du-logiciel-financier"
PES_COUNT = 50
KILL_AFTER = 15
SUBMIT_RATE = 10.0
SUBMIT_CONCURRENCY = 5
END_TIMEOUT = 150.0
DEPOSIT = "/modules/helios/api/helios_importer_fichier.php"
# 10% of the TdT's calls fail: deposits lose their answer after the TdT kept the file (the
# broker must find it, never deposit twice); other calls get a 503.
TDT_FAULTS: list[dict[str, Any]] = [
    {"kind": "reset", "phase": "after", "ratio": 0.1, "path": DEPOSIT},
    {"kind": "503", "ratio": 0.1, "retry_after": 0, "method": "GET", "path": "/modules/helios/"},
]


def nom_fic(n: int) -> str:
    return f"PES_E2E_{n:03d}"


def refused(n: int) -> bool:
    """The DGFiP refuses every seventh PES: its IdPost is unknown (ERREUR_CODIQUE)."""
    return n % 7 == 0


def signed(n: int) -> bool:
    """Every fourth PES is signed in the parapheur (XAdES per bordereau) before it goes."""
    return n % 4 == 2


def pes_of(n: int) -> bytes:
    # Sent for signature, a PES already says it is dematerialised (InfoDematerialisee 1).
    return sample_pes(nom_fic(n), bordereaux=1 + n % 3, pieces=2, pjs=n % 2,
                      first_number=n * 10, id_post=UNKNOWN_POST if refused(n) else "086016",
                      demat="1" if signed(n) else None)


def archived(n: int) -> bool:
    return n % 3 == 0 and not refused(n)


@dataclass
class Stack:
    api: Api
    peers: Peers
    gf: Proc
    gf_url: str
    env: dict[str, str]


def trusting(peers: Peers) -> dict[str, str]:
    """The platform trusts the parapheur's CA for the PES it signs."""
    return {"DEMAT_XADES_TRUST": peers.parapheur.info("CA_PEM")}


def config_of(tmp_path: Path, peers: Peers, gf_url: str) -> Path:
    return write_config(tmp_path / "demat.toml", peers, extra={
        "callback": {"url": f"{gf_url}/callbacks", "signing_secret": SECRET}})


async def start_gf(tmp_path: Path) -> tuple[Proc, str]:
    return await start_simulator("gf", tmp_path / "gf.log", "--callback-secret", SECRET)


@dataclass
class Intake:
    accepted: dict[int, str] = field(default_factory=dict)
    tries_failed: int = 0


async def submit_until_accepted(api: Api, n: int, intake: Intake, deadline: float) -> None:
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = await api.submit(
                ENTITY, [("pes", f"{nom_fic(n)}.xml", pes_of(n))],
                {"archive": archived(n), "signature": signed(n)}, flow="helios",
                key=f"e2e-{nom_fic(n)}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            intake.tries_failed += 1
            last = exc
            await asyncio.sleep(0.2)
            continue
        if status in (200, 201):
            intake.accepted[n] = str(body["id"])
            return
        assert status >= 500, (n, status, body)
        intake.tries_failed += 1
        last = (status, body)
        await asyncio.sleep(0.2)
    raise AssertionError(f"PES {n} never accepted; last answer {last!r}")


def submit_pes(api: Api, intake: Intake) -> Awaitable[float]:
    return submit_all(PES_COUNT, lambda n, deadline: submit_until_accepted(api, n, intake,
                                                                           deadline),
                      rate=SUBMIT_RATE, concurrency=SUBMIT_CONCURRENCY, timeout=END_TIMEOUT)


def mid_run(intake: Intake, probe: Probe) -> Awaitable[tuple[int, int]]:
    return wait_mid_run(lambda: len(intake.accepted), KILL_AFTER, probe)


async def _callbacks(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/callbacks") as resp:
        received: dict[str, Any] = (await resp.json())["callbacks"]
        return received


async def check_run(stack: Stack, intake: Intake, variant: str, kills: int,
                    started: float) -> str:
    api, peers = stack.api, stack.peers
    ids = {n: intake.accepted[n] for n in range(1, PES_COUNT + 1)}
    assert len(set(ids.values())) == PES_COUNT, "two PES became one document"
    docs = {d["id"]: d for d in await wait_all_ended(api, list(ids.values()), END_TIMEOUT)}
    seconds = time.monotonic() - started
    wrong = [(n, docs[i]["state"], docs[i]["last_error"]) for n, i in ids.items()
             if docs[i]["state"] != ("rejected" if refused(n) else "completed")]
    assert wrong == [], wrong
    for n, doc_id in ids.items():
        doc = docs[doc_id]
        acquits = [f for f in doc["files"] if f["role"] == "acquit"]
        assert len(acquits) == 1, doc["files"]
        async with api.http.get(f"{api.url}/api/v1/documents/{doc_id}/files/"
                                f"{acquits[0]['id']}") as resp:
            acquit = read_acquit(await resp.read())
        assert acquit.nom_fic == nom_fic(n) and acquit.accepted is not refused(n)
        if refused(n):
            codes = {e["code"] for e in doc["metadata"]["errors"]}
            assert codes == {"ERREUR_CODIQUE"}, doc["metadata"]["errors"]
            assert "ERREUR_CODIQUE" in doc["last_error"]
        assert any(f["role"] == "atr" for f in doc["files"]) is archived(n), doc["files"]
        roles = [f["role"] for f in doc["files"]]
        # Signed: the signed PES, the parapheur's bordereau and the broker's signature report.
        assert (roles.count("pes_signe"), roles.count("bordereau_signature"),
                roles.count("rapport_signature")) == ((1, 1, 1) if signed(n) else (0, 0, 0)), roles
    await peers.tdt_faults([])
    tdt = await peers.tdt_stats()
    assert tdt["deposits"] == PES_COUNT and tdt["duplicates"] == 0, tdt
    assert tdt["acquits"] + tdt["acquits_ko"] == PES_COUNT, tdt
    assert tdt["acquits_ko"] == sum(refused(n) for n in ids), tdt
    # Each outcome once at the webhook, signed with the entity's secret.
    gf = await sim_stats(stack.gf_url)
    assert gf["callback_refused"] == 0, gf
    told = await _callbacks(stack.gf_url)
    assert sorted(told) == sorted(
        f"{doc_id}:notify:{'rejected' if refused(n) else 'completed'}"
        for n, doc_id in ids.items())
    for n, doc_id in ids.items():
        said = told[f"{doc_id}:notify:{'rejected' if refused(n) else 'completed'}"]
        assert said["nom_fic"] == nom_fic(n) and said["links"]["acquit"].startswith(
            f"/api/v1/documents/{doc_id}/files/")
    parapheur = await sim_stats(peers.parapheur.url)
    assert parapheur["signed"] == parapheur["created"] == sum(signed(n) for n in ids), parapheur
    assert parapheur["duplicates"] == 0, parapheur
    sae = await sim_stats(peers.sae.url)
    assert sae["accepted"] == sum(archived(n) for n in ids) and sae["duplicates"] == 0, sae
    assert "journal OK" in run_cli(stack.env, "journal", "verify")
    return (f"helios e2e {variant}: {PES_COUNT} PES ({sum(signed(n) for n in ids)} signed in "
            f"the parapheur, {sum(refused(n) for n in ids)} refused by the DGFiP, "
            f"{sum(archived(n) for n in ids)} archived), kills={kills}, TdT "
            f"faults={tdt['faults']} (lost deposit answers={tdt['faults_reset']}), "
            f"deposits={tdt['deposits']}, duplicates={tdt['duplicates']}, callbacks="
            f"{gf['callbacks']} (redelivered={gf['callback_duplicates']}), submission tries "
            f"failed={intake.tries_failed}, seconds={seconds:.1f}")


def _sqlite_count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        value: int = conn.execute(sql).fetchone()[0]
        return value
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def peers_and_gf(tmp_path: Path) -> AsyncIterator[tuple[Peers, Proc, str]]:
    peers = await start_peers(tmp_path, tdt=("--acquit-after", "0.3"))
    try:
        gf, gf_url = await start_gf(tmp_path)
    except BaseException:
        await stop_procs(peers.all())
        raise
    try:
        yield peers, gf, gf_url
    finally:
        await stop_procs([gf, *peers.all()])


@pytest.mark.slow
async def test_50_pes_on_embedded_and_sqlite_with_serve_killed(tmp_path: Path) -> None:
    async with peers_and_gf(tmp_path) as (peers, gf, gf_url):
        port = free_port()
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        env = demat_env(data_dir, DEMAT_CONFIG=str(config_of(tmp_path, peers, gf_url)),
                        DEMAT_PORT=str(port), **SHORT_SETTINGS, **trusting(peers))
        token = await prepare_store(Settings(data_dir=data_dir).db_url)
        procs: list[Proc] = []
        log = tmp_path / "serve.log"

        async def restart() -> None:
            serve, url = await start_demat("serve", env, log)
            assert url == f"http://127.0.0.1:{port}", url
            procs.append(serve)

        try:
            await restart()
            async with api_client(f"http://127.0.0.1:{port}", token) as api:
                stack = Stack(api, peers, gf, gf_url, env)
                await peers.tdt_faults(TDT_FAULTS)
                db = data_dir / "demat.db"
                intake = Intake()

                async def probe() -> dict[int, int]:
                    running = await asyncio.to_thread(
                        _sqlite_count, db, "SELECT count(*) FROM jobs WHERE state = 'running'")
                    proc = procs[-1].proc
                    return {proc.pid: running} if running and proc is not None else {}

                async def kill_once() -> None:
                    await mid_run(intake, probe)
                    procs[-1].kill(signal.SIGKILL)
                    assert procs[-1].proc is not None
                    await procs[-1].proc.wait()
                    await restart()

                killing = asyncio.create_task(kill_once())
                started = await submit_pes(api, intake)
                await asyncio.wait_for(killing, END_TIMEOUT)
                print("\n" + await check_run(stack, intake, "embedded+sqlite", 1, started))
        finally:
            await stop_procs(procs)


@pytest.fixture
async def amqp_vhost(amqp_url: str) -> AsyncIterator[str]:
    async with isolated_amqp(amqp_url) as url:
        yield url


@pytest.mark.slow
async def test_50_pes_on_rabbitmq_and_postgresql_with_a_worker_killed(
        tmp_path: Path, amqp_vhost: str, pg_url: str) -> None:
    async with peers_and_gf(tmp_path) as (peers, gf, gf_url):
        env = demat_env(tmp_path / "data", DEMAT_CONFIG=str(config_of(tmp_path, peers, gf_url)),
                        DEMAT_AMQP_URL=amqp_vhost, DEMAT_DATABASE_URL=pg_url, DEMAT_PORT="0",
                        **SHORT_SETTINGS, **trusting(peers))
        procs: list[Proc] = []
        pg = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        workers = WorkerPool(env, tmp_path, pg, procs)
        try:
            token = await prepare_store(pg_url)
            url = await start_split_layout(env, workers, procs, tmp_path)
            async with api_client(url, token) as api:
                stack = Stack(api, peers, gf, gf_url, env)
                await peers.tdt_faults(TDT_FAULTS)
                intake = Intake()

                async def kill_once() -> None:
                    pid, _jobs = await mid_run(intake, workers.claimed)
                    await workers.kill_and_replace(pid)

                killing = asyncio.create_task(kill_once())
                started = await submit_pes(api, intake)
                await asyncio.wait_for(killing, END_TIMEOUT)
                print("\n" + await check_run(stack, intake, "amqp+pg", 1, started))
        finally:
            await pg.close()
            await stop_procs(procs)
