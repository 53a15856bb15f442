"""Chaos on the split layout: workers killed, RabbitMQ stopped, PostgreSQL restarted.

``demat api``, ``demat relay`` and two ``demat worker`` on RabbitMQ + PostgreSQL move
ACTES acts (half signed, all archived) and depot documents while the TdT and the
finance-software inbox fail 10 % of their calls, and a fault plan runs: a worker
SIGKILLed mid-step, RabbitMQ stopped (``rabbitmqctl stop_app``) and started again,
PostgreSQL restarted (``pg_ctlcluster … restart``). The checker, in the spirit of
RabbitMQ's Jepsen checks, then asserts the three promises: every document
``completed``, none parked, 0 duplicates at every simulator, every acknowledged act
holding its ARActe, the journal verifying. For each fault it reports how long the
broker took to recover: from the fault's end to the next document completed.

Used by ``tests/e2e/test_chaos.py`` (short form, in CI) and ``bench/soak.py`` (long).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.e2e.actes_stack import (
    ENTITY,
    SHORT_SETTINGS,
    Peers,
    act_metadata,
    act_pdf,
    check_completed_act,
    refresh_classification,
    start_peers,
    stop_procs,
    trust_roots,
    write_config,
)
from tests.e2e.harness import (
    TERMINAL,
    Api,
    Proc,
    WorkerPool,
    demat_env,
    run_cli,
    sim_stats,
    start_simulator,
    start_split_layout,
)

# 10 % of the TdT's calls fail: a create whose answer is lost after the TdT stored the
# act (the broker must adopt it), other calls a 503.
TDT_CREATE = "/modules/actes/actes_transac_create.php"
TDT_FAULTS: list[dict[str, Any]] = [
    {"kind": "reset", "phase": "after", "ratio": 0.1, "path": TDT_CREATE},
    {"kind": "503", "ratio": 0.1, "retry_after": 0, "method": "GET", "path": "/modules/actes/"},
]
# 10 % of the inbox's calls fail: half lose their answer after storing, half get a 503.
GF_FAULTS = ("reset:0.05@after", "503:0.053,retry_after=0")
SETTINGS = {
    **SHORT_SETTINGS,
    "DEMAT_RELAY_INTERVAL": "100ms",
}
LOST_CONNECTION_WORDS = ("another operation is in progress",)


@dataclass(frozen=True)
class Plan:
    acts: int = 60
    depot: int = 200
    # Fault rounds: each kills a worker, stops RabbitMQ twice and restarts PostgreSQL twice.
    # None: round after round while documents are being submitted.
    rounds: int | None = 1
    # Seconds between the end of a fault and the start of the next one.
    spacing: float = 6.0
    broker_down: float = 5.0
    # Submissions are spread over this many seconds.
    submit_over: float = 40.0
    end_timeout: float = 240.0
    seed: int = 7


@dataclass
class Fault:
    kind: str
    started: float
    ended: float = 0.0
    # From the fault's end to the next document completed.
    recovered_in: float | None = None
    detail: str = ""


@dataclass
class Report:
    documents: int
    acts: int
    depot: int
    faults: list[Fault]
    seconds: float
    crashes_counted: int
    recoveries: int
    parked: int
    tdt: dict[str, int]
    parapheur: dict[str, int]
    sae: dict[str, int]
    gf: dict[str, int]
    submissions_retried: int

    def summary(self) -> str:
        times = ", ".join(
            f"{f.kind} ({f.detail}) {f.recovered_in:.1f}s" if f.recovered_in is not None
            else f"{f.kind} -" for f in self.faults
        )
        worst = max((f.recovered_in or 0.0 for f in self.faults), default=0.0)
        return (
            f"chaos: {self.documents} documents ({self.acts} acts, {self.depot} depot) completed "
            f"in {self.seconds:.1f}s; faults={len(self.faults)} "
            f"({Counter(f.kind for f in self.faults)}); recovery after each: {times} "
            f"(worst {worst:.1f}s); parked={self.parked}; crashes counted="
            f"{self.crashes_counted}; jobs given back={self.recoveries}; "
            f"duplicates tdt/parapheur/sae/gf={self.tdt['duplicates']}/"
            f"{self.parapheur['duplicates']}/{self.sae['duplicates']}/{self.gf['duplicates']}; "
            f"replays: gf={self.gf['replays']}, TdT lost create answers adopted="
            f"{self.tdt['faults_reset']}; peer faults tdt={self.tdt['faults']} "
            f"gf={self.gf['faults']}; submissions retried={self.submissions_retried}"
        )


# --- the servers the faults hit -----------------------------------------------------------


async def _run(*args: str, timeout: float = 120.0) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {out.decode()[-2000:]}")


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def postgres_version() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    return versions[-1]


async def stop_rabbitmq() -> None:
    await _run("rabbitmqctl", "stop_app")


async def start_rabbitmq() -> None:
    await _run("rabbitmqctl", "start_app")
    await _run("rabbitmqctl", "await_startup", "--timeout", "60")


async def restart_postgres() -> None:
    await _run("pg_ctlcluster", "--skip-systemctl-redirect", postgres_version(), "main",
               "restart", "-m", "fast")


async def ensure_servers() -> None:
    """Both servers up again, whatever a failed run left (never leaves them down)."""
    with contextlib.suppress(Exception):
        await start_rabbitmq()
    if not _answers(5432):
        with contextlib.suppress(Exception):
            await _run("pg_ctlcluster", "--skip-systemctl-redirect", postgres_version(),
                       "main", "start")


# --- submitting ---------------------------------------------------------------------------


@dataclass
class Intake:
    accepted: dict[str, str] = field(default_factory=dict)  # submission key -> document id
    retried: int = 0
    # Depot documents submitted after each fault, to time the recovery.
    canaries: list[str] = field(default_factory=list)


async def _post(api: Api, form: aiohttp.FormData, key: str) -> tuple[int, Any]:
    async with api.http.post(
        f"{api.url}/api/v1/documents", data=form, headers={"Idempotency-Key": key}
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def submit_until_accepted(
    api: Api, key: str, form: Callable[[], aiohttp.FormData], intake: Intake, deadline: float
) -> None:
    """Resent with the same Idempotency-Key until accepted: an unanswered try that was
    stored comes back as 200 with its document."""
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = await _post(api, form(), key)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            last = exc
        else:
            if status in (200, 201):
                intake.accepted[key] = str(body["id"])
                return
            assert status >= 500, (key, status, body)
            last = (status, body)
        intake.retried += 1
        await asyncio.sleep(0.3)
    raise AssertionError(f"{key} never accepted; last answer {last!r}")


def act_form(n: int) -> Callable[[], aiohttp.FormData]:
    numero = f"CHAOS_{n:04d}"

    def build() -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("flow", "actes")
        form.add_field("entity", ENTITY)
        meta = act_metadata(numero, signature=n % 2 == 0, archive=True)
        form.add_field("metadata", json.dumps(meta))
        form.add_field("acte", act_pdf(numero), filename=f"deliberation-{numero}.pdf",
                       content_type="application/pdf")
        return form

    return build


def depot_form(n: int | str) -> Callable[[], aiohttp.FormData]:
    def build() -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("flow", "depot")
        form.add_field("entity", ENTITY)
        form.add_field("metadata", json.dumps({"chaos": n}))
        form.add_field("document", f"<mandat n='{n}'>{'x' * 256}</mandat>".encode(),
                       filename=f"mandat-{n}.xml", content_type="application/xml")
        return form

    return build


async def submit_all(api: Api, plan: Plan, intake: Intake) -> None:
    """Acts and depot documents interleaved, paced over ``plan.submit_over`` seconds."""
    work = [(f"act-{n}", act_form(n)) for n in range(plan.acts)]
    work += [(f"depot-{n}", depot_form(n)) for n in range(plan.depot)]
    random.Random(plan.seed).shuffle(work)
    started = time.monotonic()
    deadline = started + plan.submit_over + plan.end_timeout
    pace = plan.submit_over / max(1, len(work))
    queue = iter(enumerate(work))

    async def submitter() -> None:
        for i, (key, form) in queue:
            await asyncio.sleep(max(0.0, started + i * pace - time.monotonic()))
            await submit_until_accepted(api, key, form, intake, deadline)

    await asyncio.gather(*(submitter() for _ in range(8)))


# --- faults and their recovery ------------------------------------------------------------


async def recovered_after(api: Api, fault: Fault, intake: Intake, timeout: float) -> None:
    """A canary document submitted once the fault ended: how long until it completed."""
    key = f"canary-{len(intake.canaries)}"
    deadline = time.monotonic() + timeout
    await submit_until_accepted(api, key, depot_form(key), intake, deadline)
    intake.canaries.append(key)
    doc_id = intake.accepted[key]
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            doc = await api.get(f"/api/v1/documents/{doc_id}")
            if doc["state"] == "completed":
                fault.recovered_in = time.monotonic() - fault.ended
                return
            assert doc["state"] not in TERMINAL, doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"the canary after {fault.kind} did not complete within {timeout}s")


async def run_faults(plan: Plan, api: Api, workers: WorkerPool, intake: Intake,
                     submitting: Callable[[], bool],
                     seen: Callable[[Fault], None] = lambda _fault: None) -> list[Fault]:
    faults: list[Fault] = []

    async def one(kind: str, act: Callable[[], Awaitable[str]]) -> None:
        await asyncio.sleep(plan.spacing)
        fault = Fault(kind, time.monotonic())
        fault.detail = await act()
        fault.ended = time.monotonic()
        faults.append(fault)
        await recovered_after(api, fault, intake, plan.end_timeout)
        seen(fault)

    async def kill_worker() -> str:
        """SIGKILL the worker holding the most claimed jobs (any, if none is seen soon)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            claimed = await workers.claimed()
            if claimed:
                pid = max(claimed, key=lambda p: claimed[p])
                await workers.kill_and_replace(pid)
                return f"pid {pid} held {claimed[pid]} claimed jobs"
            await asyncio.sleep(0.01)
        pid = await workers.kill_any()
        return f"pid {pid} held no claimed job"

    async def broker_outage() -> str:
        await stop_rabbitmq()
        await asyncio.sleep(plan.broker_down)
        await start_rabbitmq()
        return f"down {plan.broker_down:.0f}s"

    async def store_restart() -> str:
        await restart_postgres()
        return "restarted"

    rounds = 0
    while (rounds < plan.rounds) if plan.rounds is not None else (rounds == 0 or submitting()):
        rounds += 1
        await one("worker-kill", kill_worker)
        await one("rabbitmq-stop", broker_outage)
        await one("postgresql-restart", store_restart)
        await one("rabbitmq-stop", broker_outage)
        await one("postgresql-restart", store_restart)
    return faults


# --- the run ------------------------------------------------------------------------------


async def wait_all_ended(api: Api, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    ended: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for doc_id in [i for i in ids if i not in ended]:
            try:
                doc = await api.get(f"/api/v1/documents/{doc_id}")
            except (aiohttp.ClientError, AssertionError):
                break
            if doc["state"] in TERMINAL:
                ended[doc_id] = doc
        if len(ended) == len(ids):
            return [ended[i] for i in ids]
        await asyncio.sleep(0.5)
    raise AssertionError(f"{len(ids) - len(ended)} of {len(ids)} documents did not end "
                         f"within {timeout}s")


async def run(tmp_path: Path, amqp_url: str, pg_url: str, plan: Plan,
              seen: Callable[[Fault], None] = lambda _fault: None) -> Report:
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    peers: Peers = await start_peers(tmp_path)
    gf, gf_url = await start_simulator(
        "gf", tmp_path / "gf.log", *[a for spec in GF_FAULTS for a in ("--fault", spec)],
        "--seed", str(plan.seed))
    config = write_config(tmp_path / "demat.toml", peers,
                          {"depot": {"url": f"{gf_url}/inbox"}})
    env = demat_env(
        tmp_path / "data",
        DEMAT_CONFIG=str(config),
        # Reconnect within a second of RabbitMQ coming back (aio-pika waits 5 s by default).
        DEMAT_AMQP_URL=f"{amqp_url}?reconnect_interval=1",
        DEMAT_DATABASE_URL=pg_url,
        DEMAT_PORT="0",
        **SETTINGS,
    )
    procs: list[Proc] = [gf]
    # A connection for each look at the store: it restarts under the run.
    workers = WorkerPool(env, tmp_path, dsn, procs)
    try:
        run_cli(env, "db", "upgrade")
        token = run_cli(env, "token", "create", "--operator").strip()
        url = await start_split_layout(env, workers, procs, tmp_path)
        api = Api(url, token)
        try:
            await refresh_classification(api)
            await peers.tdt_faults(TDT_FAULTS)
            intake = Intake()
            started = time.monotonic()
            submitting = asyncio.create_task(submit_all(api, plan, intake))
            try:
                faults = await run_faults(plan, api, workers, intake,
                                          lambda: not submitting.done(), seen)
            finally:
                await submitting
            ids = list(intake.accepted.values())
            docs = await wait_all_ended(api, ids, plan.end_timeout)
            seconds = time.monotonic() - started
            return await check(api, peers, gf_url, env, dsn, tmp_path, plan, intake, docs,
                               faults, seconds)
        finally:
            await api.close()
    finally:
        await ensure_servers()
        await stop_procs(procs)
        await stop_procs(peers.all())


async def check(api: Api, peers: Peers, gf_url: str, env: dict[str, str], dsn: str,
                logs: Path, plan: Plan, intake: Intake, docs: list[dict[str, Any]],
                faults: list[Fault], seconds: float) -> Report:
    """The promises, each asserted; returns the figures."""
    depot = plan.depot + len(intake.canaries)
    assert len(intake.accepted) == plan.acts + depot
    assert len(set(intake.accepted.values())) == len(intake.accepted), "one document twice"
    not_completed = [(d["id"], d["flow"], d["state"], d["last_error"]) for d in docs
                     if d["state"] != "completed"]
    assert not_completed == [], not_completed[:10]
    acts = [d for d in docs if d["flow"] == "actes"]
    ca = trust_roots(await peers.ca_pem())[0]
    for doc in acts:
        # Acknowledged, holding its ARActe; archived with ATR 000; signed when asked.
        await check_completed_act(api, doc, ca)
    await peers.tdt_faults([])
    tdt = await peers.tdt_stats()
    assert tdt["duplicates"] == 0 and tdt["transmissions"] == plan.acts, tdt
    assert tdt["acknowledged"] == plan.acts, tdt
    parapheur = await sim_stats(peers.parapheur.url)
    sae = await sim_stats(peers.sae.url)
    signed = sum(1 for d in acts if d["metadata"]["signature"])
    assert parapheur["duplicates"] == 0 and parapheur["signed"] == signed, parapheur
    assert sae["duplicates"] == 0 and sae["accepted"] == plan.acts, sae
    gf = await sim_stats(gf_url)
    assert gf["duplicates"] == 0 and gf["received"] == depot, gf
    assert "journal OK" in run_cli(env, "journal", "verify")
    conn = await asyncpg.connect(dsn)
    try:
        parked = await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'parked'")
        open_jobs = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE state IN ('scheduled', 'published', 'running')"
            " AND document_id IN (SELECT id FROM documents WHERE flow <> 'actes-courrier')")
        crashes = await conn.fetchval("SELECT coalesce(sum(crashes), 0) FROM jobs")
        recoveries = await conn.fetchval(
            "SELECT count(*) FROM journal WHERE kind = 'recovery'")
    finally:
        await conn.close()
    assert parked == 0, f"{parked} jobs parked"
    assert open_jobs == 0, f"{open_jobs} jobs left open"
    for log in sorted(logs.glob("*.log")):
        text = log.read_text(errors="replace")
        for words in LOST_CONNECTION_WORDS:
            assert words not in text, f"{log.name}: {words!r}"
        assert "job parked" not in text, f"{log.name}: a job was parked"
    assert all(f.recovered_in is not None for f in faults)
    return Report(len(docs), len(acts), len(docs) - len(acts), faults, seconds, crashes,
                  recoveries, parked, tdt, parapheur, sae, gf, intake.retried)

