"""``actes`` end to end: acts signed, transmitted, acknowledged, archived, refused, cancelled.

* Two slow runs of 50 acts each, with the parapheur, TdT and As@lae simulators as
  real processes while the TdT fails 10% of calls and a broker process is SIGKILLed
  mid-run: on embedded + SQLite (``demat serve``) and on RabbitMQ + PostgreSQL
  (``demat api``, ``demat relay``, two ``demat worker``).
* Each peer's refusal ends the act ``rejected`` with the peer's own words.
* Bad input is refused at the API with the field named, and nothing is stored;
  hostile archives and XML are refused by ``demat validate actes``.
* An acknowledged act is cancelled with the action ``annuler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import re
import signal
import sqlite3
import tarfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from click.testing import CliRunner

from broker import accounts
from broker import engine as eng
from broker.cli import main as demat_cli
from broker.flows.actes import SIGNATURE_POLLS
from broker.runtime import Runtime
from broker.settings import Settings
from broker.store import documents as stored_documents
from broker.wiring import catalog
from tests.api_client import served as api_served
from tests.e2e.actes_stack import (
    ENTITY,
    SHORT_SETTINGS,
    Peers,
    act_metadata,
    act_pdf,
    api_client,
    check_completed_act,
    check_signed_pdf,
    download,
    post_act,
    refresh_classification,
    start_peers,
    stop_procs,
    submit_act,
    trust_roots,
    wait_state,
    write_config,
)
from tests.e2e.harness import (
    TERMINAL,
    Api,
    Probe,
    Proc,
    WorkerPool,
    demat_env,
    free_port,
    isolated_amqp,
    prepare_store,
    run_cli,
    start_demat,
    start_split_layout,
    submit_all,
    wait_all_ended,
    wait_mid_run,
)
from tests.unit.actes import factory

# --- processes ------------------------------------------------------------------------


@dataclass
class Served:
    """``demat serve`` (embedded + SQLite) on the actes peers."""

    api: Api
    peers: Peers
    env: dict[str, str]
    data_dir: Path
    port: int
    procs: list[Proc]
    log: Path

    async def restart(self) -> None:
        serve, url = await start_demat("serve", self.env, self.log)
        assert url == f"http://127.0.0.1:{self.port}", url
        self.procs.append(serve)

    @property
    def serve(self) -> Proc:
        return self.procs[-1]


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path,
    *,
    parapheur: tuple[str, ...] = (),
    tdt: tuple[str, ...] = (),
    sae: tuple[str, ...] = (),
) -> AsyncIterator[Served]:
    """Simulators, a fresh data dir and ``demat serve`` on a fixed port; classification fetched."""
    peers = await start_peers(tmp_path, parapheur=parapheur, tdt=tdt, sae=sae)
    port = free_port()
    data_dir = tmp_path / "data"
    env = demat_env(
        data_dir,
        DEMAT_CONFIG=str(write_config(tmp_path / "demat.toml", peers)),
        DEMAT_PORT=str(port),
        **SHORT_SETTINGS,
    )
    data_dir.mkdir(parents=True)
    procs: list[Proc] = []
    try:
        token = await prepare_store(Settings(data_dir=data_dir).db_url)
        stack = Served(
            Api(f"http://127.0.0.1:{port}", token),
            peers,
            env,
            data_dir,
            port,
            procs,
            tmp_path / "serve.log",
        )
        try:
            await stack.restart()
            # As an operator would: the CLI submits the fetch and waits for it to be kept.
            said = await asyncio.to_thread(
                run_cli, {**env, "DEMAT_API_URL": stack.api.url, "DEMAT_TOKEN": token},
                "classification", "refresh", ENTITY)
            assert re.fullmatch(rf"{ENTITY}: classification of \d{{4}}-\d\d-\d\d kept "
                                r"\(document \w{26}\)\n", said), said
            yield stack
        finally:
            await stack.api.close()
    finally:
        await stop_procs(procs)
        await stop_procs(peers.all())


# --- 50 acts through crashes and faults -----------------------------------------------

ACTS = 50
# The first ``KILL_AFTER`` acts are accepted before a process is killed (mid-run).
KILL_AFTER = 15
SUBMIT_RATE = 10.0  # acts per second
SUBMIT_CONCURRENCY = 5
END_TIMEOUT = 150.0
# 10% of the TdT's calls fail: creates lose their answer after the TdT stored the act
# (the broker must adopt the transaction, never post twice); other calls get a 503.
CREATE = "/modules/actes/actes_transac_create.php"
TDT_FAULTS: list[dict[str, Any]] = [
    {"kind": "reset", "phase": "after", "ratio": 0.1, "path": CREATE},
    {"kind": "503", "ratio": 0.1, "retry_after": 0, "method": "GET", "path": "/modules/actes/"},
]


def plan_of(n: int) -> tuple[bool, bool]:
    """(signature, archive) of act ``n``: every combination, over and over."""
    return n % 2 == 0, n % 3 == 0


def numero_of(n: int) -> str:
    return f"E2E_{n:03d}"


@dataclass
class Intake:
    accepted: dict[int, str] = field(default_factory=dict)
    # Tries that got no answer or a 5xx (the API was down or restarting).
    tries_failed: int = 0
    # Of the acts tried again, those an unanswered try had stored (found by the
    # Idempotency-Key, or refused for the act number that try used).
    found_stored: int = 0


_USED_BY = re.compile(r"already used by document (\S+) of entity")


async def submit_until_accepted(api: Api, n: int, intake: Intake, deadline: float) -> None:
    signature, archive = plan_of(n)
    numero = numero_of(n)
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = await post_act(
                api, numero, signature=signature, archive=archive, key=f"e2e-{numero}"
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            intake.tries_failed += 1
            last = exc
            await asyncio.sleep(0.2)
            continue
        if status in (200, 201):
            # 200: an unanswered try was stored; its Idempotency-Key says which document.
            intake.accepted[n] = str(body["id"])
            intake.found_stored += status == 200
            return
        if status == 422 and last is not None:
            # A try before got no answer, yet was stored: the number points to it.
            used = [
                _USED_BY.search(p["message"])
                for p in body["problems"]
                if p["field"] == "metadata.numero"
            ]
            assert used and used[0], (n, body)
            intake.accepted[n] = used[0].group(1)
            intake.found_stored += 1
            return
        assert status >= 500, (n, status, body)
        intake.tries_failed += 1
        last = (status, body)
        await asyncio.sleep(0.2)
    raise AssertionError(f"act {n} never accepted; last answer {last!r}")


def submit_acts(api: Api, intake: Intake) -> Awaitable[float]:
    return submit_all(ACTS, lambda n, deadline: submit_until_accepted(api, n, intake, deadline),
                      rate=SUBMIT_RATE, concurrency=SUBMIT_CONCURRENCY, timeout=END_TIMEOUT)


def mid_run(intake: Intake, probe: Probe) -> Awaitable[tuple[int, int]]:
    return wait_mid_run(lambda: len(intake.accepted), KILL_AFTER, probe)


@dataclass
class RunReport:
    variant: str
    kills: int
    started: float
    jobs_at_kill: int
    # Counts the store's ``recovery`` journal entries: jobs a dead process held, taken back.
    recoveries: Callable[[], Awaitable[int]]
    # Counts the jobs not finished (scheduled, published, running).
    unfinished: Callable[[], Awaitable[int]]


async def check_run(
    api: Api, peers: Peers, env: dict[str, str], intake: Intake, report: RunReport
) -> str:
    """Everything the issue asks of the 50-act run; returns the summary line."""
    ids = [intake.accepted[n] for n in range(1, ACTS + 1)]
    assert len(set(ids)) == ACTS, "two acts became one document"
    docs = await wait_all_ended(api, ids, END_TIMEOUT)
    seconds = time.monotonic() - report.started
    failed = [
        (d["metadata"]["numero"], d["state"], d["last_error"])
        for d in docs
        if d["state"] != "completed"
    ]
    assert failed == [], failed
    ca = trust_roots(await peers.ca_pem())[0]
    for doc in docs:
        await check_completed_act(api, doc, ca)
    # The TdT holds each act once, as the transaction the broker follows.
    await peers.tdt_faults([])
    stats = await peers.tdt_stats()
    assert stats["duplicates"] == 0, stats
    assert stats["transmissions"] == ACTS, stats
    assert stats["acknowledged"] == ACTS and stats["anomalies"] == 0, stats
    assert stats["faults"] > 0, stats
    at_tdt = {
        t["number"]: t for t in await peers.tdt_get("/_control/transactions") if t["type"] == "1"
    }
    assert sorted(at_tdt) == sorted(numero_of(n) for n in range(1, ACTS + 1))
    for doc in docs:
        held = at_tdt[doc["metadata"]["numero"]]
        assert doc["refs"]["tdt_transaction"] == str(held["id"]), (doc["refs"], held)
        assert held["status"] == 4 and held["unique_id"] == doc["metadata"]["id_acte"]
    signed = sum(1 for d in docs if d["metadata"]["signature"])
    archived = sum(1 for d in docs if d["metadata"]["archive"])
    para = await _plain_stats(peers.parapheur.url)
    sae = await _plain_stats(peers.sae.url)
    assert para["signed"] == signed and para["duplicates"] == 0, para
    assert sae["accepted"] == archived and sae["duplicates"] == 0, sae
    assert "journal OK" in run_cli(env, "journal", "verify")
    assert await report.unfinished() == 0, "jobs left unfinished"
    # The killed process held claimed jobs: they were taken back.
    recoveries = await report.recoveries()
    assert recoveries >= report.kills, recoveries
    retries = 0
    for doc in docs:
        journal = await api.get(f"/api/v1/documents/{doc['id']}/journal")
        retries += sum(
            1
            for e in journal
            if e["kind"] == "attempt" and "error" in e and e.get("step") == "transmit"
        )
    return (
        f"actes e2e {report.variant}: {ACTS} acts ({signed} signed, {archived} archived), "
        f"kills={report.kills} (claimed jobs at the kill={report.jobs_at_kill}, "
        f"jobs recovered={recoveries}), TdT faults={stats['faults']} "
        f"(503={stats['faults_503']}, lost create answers={stats['faults_reset']} -> adopted), "
        f"TdT calls={stats['requests']}, transmit tries that failed={retries}, "
        f"submission tries refused or unanswered during the restart={intake.tries_failed} "
        f"(acts found stored by such a try={intake.found_stored}), "
        f"duplicates tdt/parapheur/sae={stats['duplicates']}/{para['duplicates']}/"
        f"{sae['duplicates']}, seconds={seconds:.1f}"
    )


async def _plain_stats(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/stats") as resp:
        stats: dict[str, int] = await resp.json()
        return stats


UNFINISHED = "('scheduled', 'published', 'running')"


def _sqlite_count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        value: int = conn.execute(sql).fetchone()[0]
        return value
    finally:
        conn.close()


@pytest.mark.slow
async def test_50_acts_on_embedded_and_sqlite_with_serve_killed(tmp_path: Path) -> None:
    async with served(tmp_path) as stack:
        await stack.peers.tdt_faults(TDT_FAULTS)
        db = stack.data_dir / "demat.db"
        intake = Intake()

        async def probe() -> dict[int, int]:
            running = await asyncio.to_thread(
                _sqlite_count, db, "SELECT count(*) FROM jobs WHERE state = 'running'"
            )
            proc = stack.serve.proc
            return {proc.pid: running} if running and proc is not None else {}

        async def kill_once() -> int:
            _pid, jobs = await mid_run(intake, probe)
            stack.serve.kill(signal.SIGKILL)
            assert stack.serve.proc is not None
            await stack.serve.proc.wait()
            await stack.restart()
            return jobs

        async def count(sql: str) -> int:
            return await asyncio.to_thread(_sqlite_count, db, sql)

        killing = asyncio.create_task(kill_once())
        started = await submit_acts(stack.api, intake)
        jobs_at_kill = await asyncio.wait_for(killing, END_TIMEOUT)
        report = RunReport(
            "embedded+sqlite",
            1,
            started,
            jobs_at_kill,
            lambda: count("SELECT count(*) FROM journal WHERE kind = 'recovery'"),
            lambda: count(f"SELECT count(*) FROM jobs WHERE state IN {UNFINISHED}"),
        )
        print("\n" + await check_run(stack.api, stack.peers, stack.env, intake, report))


@pytest.fixture
async def amqp_vhost(amqp_url: str) -> AsyncIterator[str]:
    async with isolated_amqp(amqp_url) as url:
        yield url


@pytest.mark.slow
async def test_50_acts_on_rabbitmq_and_postgresql_with_a_worker_killed(
    tmp_path: Path, amqp_vhost: str, pg_url: str
) -> None:
    peers = await start_peers(tmp_path)
    env = demat_env(
        tmp_path / "data",
        DEMAT_CONFIG=str(write_config(tmp_path / "demat.toml", peers)),
        DEMAT_AMQP_URL=amqp_vhost,
        DEMAT_DATABASE_URL=pg_url,
        DEMAT_PORT="0",
        **SHORT_SETTINGS,
    )
    procs: list[Proc] = []
    pg = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    workers = WorkerPool(env, tmp_path, pg, procs)

    try:
        token = await prepare_store(pg_url)
        url = await start_split_layout(env, workers, procs, tmp_path)
        async with api_client(url, token) as api:
            await refresh_classification(api)
            await peers.tdt_faults(TDT_FAULTS)
            intake = Intake()

            async def kill_once() -> int:
                pid, jobs = await mid_run(intake, workers.claimed)
                await workers.kill_and_replace(pid)
                return jobs

            async def count(sql: str) -> int:
                value: int = await pg.fetchval(sql)
                return value

            killing = asyncio.create_task(kill_once())
            started = await submit_acts(api, intake)
            jobs_at_kill = await asyncio.wait_for(killing, END_TIMEOUT)
            report = RunReport(
                "amqp+pg",
                1,
                started,
                jobs_at_kill,
                lambda: count("SELECT count(*) FROM journal WHERE kind = 'recovery'"),
                lambda: count(f"SELECT count(*) FROM jobs WHERE state IN {UNFINISHED}"),
            )
            print("\n" + await check_run(api, peers, env, intake, report))
    finally:
        await pg.close()
        await stop_procs(procs)
        await stop_procs(peers.all())


# --- each peer's refusal, in its own words ----------------------------------------------

ANNOTATION = "Montant erroné, à revoir"
# The parapheur rejects every dossier (after 2 s: the broker looks at least twice), the SAE
# refuses every transfer; the TdT accepts.
REFUSING = {
    "parapheur": (
        "--auto-sign-after",
        "2",
        "--reject-ratio",
        "1",
        "--reject-annotation",
        ANNOTATION,
    ),
    "sae": ("--refuse-ratio", "1", "--refuse-code", "302"),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def refusing(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    """One stack for the tests below: each submits acts of its own numbers."""
    async with served(tmp_path_factory.mktemp("refusing"), **REFUSING) as stack:
        yield stack


async def transactions_of(stack: Served, numero: str) -> list[dict[str, Any]]:
    listing = await stack.peers.tdt_get("/_control/transactions")
    return [t for t in listing if t["number"] == numero]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_parapheur_rejection_ends_rejected_with_its_annotation(
    refusing: Served,
) -> None:
    doc_id = await submit_act(refusing.api, "REJ_001", signature=True, archive=True)
    doc = await wait_state(refusing.api, doc_id, TERMINAL, 30)
    assert doc["state"] == "rejected", doc
    assert doc["step"] == "sign"
    assert ANNOTATION in doc["last_error"], doc["last_error"]
    assert doc["metadata"]["parapheur"]["annotation"] == ANNOTATION
    assert "id_acte" not in doc["metadata"]
    # Nothing went further: never transmitted.
    assert await transactions_of(refusing, "REJ_001") == []
    journal = await refusing.api.get(f"/api/v1/documents/{doc_id}/journal")
    assert any(
        e["kind"] == "attempt" and e.get("rejected") == doc["last_error"] for e in journal
    ), journal


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_parapheur_is_polled_at_the_cadence_of_the_sign_step(refusing: Served) -> None:
    doc_id = await submit_act(refusing.api, "CAD_001", signature=True)
    doc = await wait_state(refusing.api, doc_id, TERMINAL, 30)
    assert doc["state"] == "rejected", doc
    journal = await refusing.api.get(f"/api/v1/documents/{doc_id}/journal")
    polls = [e for e in journal if e["kind"] == "poll" and e["step"] == "sign"]
    assert len(polls) >= 2, journal
    assert [e["poll"] for e in polls] == list(range(1, len(polls) + 1)), polls
    waits = [_epoch(e["next_poll_at"]) - _epoch(e["at"]) for e in polls]
    # 1 s, then 1.5 s...: a signature a few seconds in is seen within half its age.
    expected = [SIGNATURE_POLLS.interval(n) for n in range(len(polls))]
    assert waits == pytest.approx(expected, abs=0.01), (waits, expected)


@pytest.mark.asyncio(loop_scope="module")
async def test_an_sae_refusal_ends_rejected_with_its_reply_code(refusing: Served) -> None:
    doc_id = await submit_act(refusing.api, "SAE_001", archive=True)
    doc = await wait_state(refusing.api, doc_id, TERMINAL, 30)
    assert doc["state"] == "rejected", doc
    assert doc["step"] == "archive"
    # The code, what it means in the SEDA list, then the SAE's own words.
    assert doc["last_error"].startswith(
        "SAE refused the transfer: 302 producer not in the agreement: "), doc["last_error"]
    assert "accord de versement" in doc["last_error"], doc["last_error"]
    assert doc["metadata"]["archive"]["reply_code"] == "302"
    # Acknowledged before the SAE refused: the IDActe stays.
    assert doc["metadata"]["id_acte"].endswith("-SAE_001-DE")
    assert sorted(f["role"] for f in doc["files"]) == ["acte", "aracte", "atr"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def outdated(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    """The TdT stamps its classification (2024-01-15); the préfecture has a newer one."""
    later = ("--prefecture-classification-date", "2024-06-01")
    async with served(tmp_path_factory.mktemp("outdated"), tdt=later) as stack:
        yield stack


@pytest.mark.asyncio(loop_scope="module")
async def test_an_anomaly_for_an_outdated_classification_ends_rejected(outdated: Served) -> None:
    doc_id = await submit_act(outdated.api, "ANO_001")
    doc = await wait_state(outdated.api, doc_id, TERMINAL, 30)
    assert doc["state"] == "rejected", doc
    assert doc["step"] == "transmit"
    error = doc["last_error"]
    assert error.startswith("AnomalieActe 002 : ODT-VERIF-01"), error
    assert "date de classification qui n'est pas à jour" in error, error
    assert doc["metadata"]["tdt"]["anomalie"]["nature"] == "002"
    assert sorted(f["role"] for f in doc["files"]) == ["acte", "anomalie"]
    [held] = await transactions_of(outdated, "ANO_001")
    assert held["status"] == -1, held
    # A rejected act cannot be cancelled: it was never acknowledged.
    status, body = await outdated.api.post(f"/api/v1/documents/{doc_id}/actions/annuler")
    assert status == 409 and "annuler needs a completed document" in body["error"], body


@pytest.mark.asyncio(loop_scope="module")
async def test_a_pdf_declared_as_octet_stream_still_comes_back_signed(outdated: Served) -> None:
    # The act is a PDF by its content (the intake sniffs it); the part's header says otherwise.
    doc_id = await submit_act(
        outdated.api, "OCT_001", signature=True, content_type="application/octet-stream"
    )
    # The préfecture then refuses it (outdated classification): the signature is what counts.
    doc = await wait_state(outdated.api, doc_id, TERMINAL, 30)
    ca = trust_roots(await outdated.peers.ca_pem())[0]
    await check_signed_pdf(await download(outdated.api, doc, "acte_signe"), ca)


# --- French file names -----------------------------------------------------------------

ACT_NAME = "délibération_€ n°12 – vœu.pdf"
ANNEX_NAME = "plan d’aménagement – œuvre.pdf"


@pytest.mark.parametrize("encoding", ["raw", "percent"], ids=["raw-utf8", "percent-encoded"])
async def test_an_act_with_french_file_names_goes_all_the_way_keeping_them(
        tmp_path: Path, encoding: str) -> None:
    async with served(tmp_path) as stack:
        api = stack.api
        numero = "NOMS_01" if encoding == "raw" else "NOMS_02"
        meta = act_metadata(numero, signature=True, archive=True)
        meta["type_pj"] = ["99_DE"]
        parts = [("acte", ACT_NAME, act_pdf(numero)), ("annexe", ANNEX_NAME, PDF)]
        if encoding == "raw":  # as browsers and curl send them (RFC 7578)
            boundary = "b0und4ry"
            raw = b"".join(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{role}"; '
                f'filename="{name}"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
                + data + b"\r\n" for role, name, data in parts)
            fields = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"'
                              f"\r\n\r\n{v}\r\n".encode() for k, v in (
                                  ("flow", "actes"), ("entity", ENTITY),
                                  ("metadata", json.dumps(meta))))
            body: Any = fields + raw + f"--{boundary}--\r\n".encode()
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        else:  # aiohttp percent-encodes them
            body = aiohttp.FormData()
            for k, v in (("flow", "actes"), ("entity", ENTITY), ("metadata", json.dumps(meta))):
                body.add_field(k, v)
            for role, name, data in parts:
                body.add_field(role, data, filename=name, content_type="application/pdf")
            headers = {}
        async with api.http.post(f"{api.url}/api/v1/documents", data=body,
                                 headers=headers) as resp:
            accepted = await resp.json()
            assert resp.status == 201, accepted
        doc = await wait_state(api, accepted["id"], TERMINAL, 60)
        await check_completed_act(api, doc, trust_roots(await stack.peers.ca_pem())[0])

        # The store and the API keep the names exactly; so does the journal's intake entry.
        names = {f["role"]: f["name"] for f in doc["files"]}
        assert (names["acte"], names["annexe"]) == (ACT_NAME, ANNEX_NAME)
        journal = await api.get(f"/api/v1/documents/{doc['id']}/journal")
        assert journal[0]["files"] == [{"role": "acte", "name": ACT_NAME},
                                       {"role": "annexe", "name": ANNEX_NAME}]
        acte = next(f for f in doc["files"] if f["role"] == "acte")
        async with api.http.get(f"{api.url}/api/v1/documents/{doc['id']}/files/{acte['id']}"
                                ) as resp:
            assert resp.content_disposition is not None
            assert resp.content_disposition.filename == ACT_NAME
        # The parapheur shows the act under its name; its annex names follow the WSDL's
        # DossierID grammar, so the annex goes there under a name made of allowed characters.
        async with aiohttp.ClientSession() as http, http.get(
                f"{stack.peers.parapheur.url}/_control/dossiers") as resp:
            (dossier,) = (await resp.json())["created"].values()
        assert dossier["nom_doc"] == ACT_NAME
        assert len(dossier["annexes"]) == 1 and dossier["annexes"][0].endswith(".pdf")
        # The SAE's bordereau gives every file the name it had (SEDA Filename).
        async with aiohttp.ClientSession() as http, http.get(
                f"{stack.peers.sae.url}/_control/transfers") as resp:
            (transfer,) = (await resp.json())["transfers"]
        archived = {f["filename"] for f in transfer["files"]}
        assert {ANNEX_NAME, names["acte_signe"]} <= archived, archived


# --- cancellation -----------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_an_acknowledged_act_is_cancelled_and_others_cannot_be(refusing: Served) -> None:
    api = refusing.api
    doc_id = await submit_act(api, "ANN_001")
    # Signed first (and the parapheur here rejects): never acknowledged.
    other_id = await submit_act(api, "ANN_002", signature=True)
    status, body = await api.post(f"/api/v1/documents/{other_id}/actions/annuler")
    assert status == 409, body
    assert "needs a completed document with id_acte" in body["error"], body
    doc = await wait_state(api, doc_id, TERMINAL, 30)
    assert doc["state"] == "completed", doc
    id_acte = doc["metadata"]["id_acte"]
    status, body = await api.post(f"/api/v1/documents/{doc_id}/actions/annuler")
    assert status == 200, body
    assert body["state"] == "queued" and body["step"] == "cancel", body
    doc = await wait_state(api, doc_id, {"completed", "rejected", "failed"}, 30)
    assert doc["state"] == "completed", doc
    annulation = doc["metadata"]["annulation"]
    assert annulation["id_acte"] == id_acte
    assert annulation["date_reception"] == dt.date.today().isoformat()
    assert sorted(f["role"] for f in doc["files"]) == ["acte", "aracte", "arannulation"]
    act, cancelled = sorted(await transactions_of(refusing, "ANN_001"), key=lambda t: t["type"])
    assert (act["type"], act["status"]) == ("1", 0), act  # the act: annulé
    assert (cancelled["type"], cancelled["status"], cancelled["related"]) == ("6", 4, act["id"])
    other = await wait_state(api, other_id, TERMINAL, 30)
    assert other["state"] == "rejected", other
    status, body = await api.post(f"/api/v1/documents/{other_id}/actions/annuler")
    assert status == 409, body


# --- bad input: refused, the field named, nothing stored --------------------------------

UNREGISTERED = "123456782"


@dataclass
class Intaker:
    client: TestClient[Any, Any]
    rt: Runtime
    token: str

    async def submit(
        self,
        metadata: dict[str, Any] | str,
        files: list[tuple[str, str, Any]],
        entity: str = ENTITY,
    ) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("flow", "actes")
        form.add_field("entity", entity)
        form.add_field("metadata", metadata if isinstance(metadata, str) else json.dumps(metadata))
        for role, name, data in files:
            form.add_field(role, data, filename=name)
        resp = await self.client.post(
            "/api/v1/documents", data=form, headers={"Authorization": f"Bearer {self.token}"}
        )
        return resp.status, await resp.json()

    async def snapshot(self) -> tuple[list[str], list[str], list[str]]:
        resp = await self.client.get(
            "/api/v1/documents", headers={"Authorization": f"Bearer {self.token}"}
        )
        assert resp.status == 200
        ids = sorted(d["id"] for d in (await resp.json())["items"])
        settings = self.rt.settings

        def files(folder: Path) -> list[str]:
            return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

        return ids, files(settings.blob_dir), files(settings.tmp_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def intaker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Intaker]:
    """The API in this process, the entity's classification stored as if fetched."""
    data_dir = tmp_path_factory.mktemp("intake") / "data"
    rt = await Runtime.open(Settings(data_dir=data_dir), catalog())
    current = factory.classification(dt.date(2024, 1, 15))
    async with rt.db.begin() as conn:
        await accounts.upsert_entity(conn, ENTITY, "Commune de Test", {}, catalog().settings)
        token = await accounts.create_token(conn, accounts.OPERATOR)
        # As its fetch leaves it: a completed document of flow classification.
        fetched = eng.Doc(stored_documents.new_id(), "classification", eng.QUEUED, None, 0,
                          {"of": "actes"})
        kept = eng.Transition(eng.COMPLETED, "fetch", 1, metadata={
            "version_date": current.date.isoformat(),
            "classification": json.loads(current.to_json())})
        await stored_documents.insert_documents(conn, [stored_documents.NewDocument(
            stored_documents.TransitionWrite(fetched, ENTITY, kept), [])], time.time())
    async with api_served(rt) as client:
        yield Intaker(client, rt, token)


PDF = act_pdf("X")
ACTE = ("acte", "deliberation.pdf", PDF)
PNG_ANNEXE = ("annexe", "plan.png", factory.PNG)
TODAY = dt.date.today()


def case(
    name: str,
    field: str,
    words: str,
    *,
    meta: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    raw: str | None = None,
    files: list[tuple[str, str, bytes]] | None = None,
    entity: str = ENTITY,
    status: int = 422,
) -> Any:
    """One bad submission: what changes from a good one, the field and words expected."""
    metadata: dict[str, Any] | str
    if raw is not None:
        metadata = raw
    else:
        metadata = {
            k: v
            for k, v in {**act_metadata("BAD_1", classification="1.1.2"), **(meta or {})}.items()
            if k not in drop
        }
    return pytest.param(
        metadata, [ACTE] if files is None else files, entity, status, field, words, id=name
    )


BAD = [
    case("siren-checksum", "entity", "fails its checksum", entity="214000151"),
    case("siren-short", "entity", "9 digits", entity="21400015"),
    case("entity-unknown", "entity", "unknown entity", entity=UNREGISTERED),
    case("numero-dash", "metadata.numero", "'-'", meta={"numero": "12-3"}),
    case("numero-lowercase", "metadata.numero", "write 'ABC_1'", meta={"numero": "abc_1"}),
    case("numero-16-chars", "metadata.numero", "16 characters", meta={"numero": "A" * 16}),
    case("numero-empty", "metadata.numero", "empty", meta={"numero": ""}),
    case("numero-not-text", "metadata.numero", "string", meta={"numero": 42}),
    case("nature-7", "metadata.nature", "7", meta={"nature": 7}),
    case("nature-unknown-abbr", "metadata.nature", "XX", meta={"nature": "XX"}),
    case(
        "classification-unknown",
        "metadata.classification",
        "9 does not exist",
        meta={"classification": "9.1"},
    ),
    case(
        "classification-not-in-current",
        "metadata.classification",
        "under 1.1: 1.1.1, 1.1.2",
        meta={"classification": "1.1.9"},
    ),
    case(
        "classification-malformed", "metadata.classification", "abc", meta={"classification": "abc"}
    ),
    case("objet-501", "metadata.objet", "501 characters", meta={"objet": "x" * 501}),
    case("objet-blank", "metadata.objet", "empty", meta={"objet": "   "}),
    case("objet-control-char", "metadata.objet", "U+0007", meta={"objet": "bip\x07"}),
    case(
        "date-future",
        "metadata.date",
        "in the future",
        meta={"date": (TODAY + dt.timedelta(days=1)).isoformat()},
    ),
    case("date-french", "metadata.date", "YYYY-MM-DD", meta={"date": "01/03/2024"}),
    case("date-with-time", "metadata.date", "YYYY-MM-DD", meta={"date": "2024-03-01T10:00:00"}),
    case("type_piece-shape", "metadata.type_piece", "two digits", meta={"type_piece": "DE"}),
    case(
        "type_piece-other-nature",
        "metadata.type_piece",
        "not allowed for nature DE",
        meta={"type_piece": "99_AR"},
    ),
    case(
        "type_pj-count",
        "metadata.type_pj",
        "2 code(s) for 1 annex",
        meta={"type_pj": ["99_DE", "99_DE"]},
        files=[ACTE, PNG_ANNEXE],
    ),
    case(
        "type_pj-shape",
        "metadata.type_pj.0",
        "two digits",
        meta={"type_pj": ["xx"]},
        files=[ACTE, PNG_ANNEXE],
    ),
    case("unknown-key", "metadata.montant", "Extra inputs", meta={"montant": 1200}),
    case("missing-objet", "metadata.objet", "required", drop=("objet",)),
    case("signature-not-bool", "metadata.signature", "boolean", meta={"signature": "peut-être"}),
    case("metadata-not-json", "metadata", "line 1", raw='{"nature": "DE",'),
    case("zip-as-pdf", "files.acte", "is ZIP", files=[("acte", "acte.pdf", factory.zip_bytes())]),
    case(
        "exe-as-acte",
        "files.acte",
        "of no recognised type",
        files=[("acte", "acte.pdf", factory.EXE)],
    ),
    case(
        "exe-as-annexe",
        "files.annexe",
        "of no recognised type: an annex must be",
        files=[ACTE, ("annexe", "annexe.pdf", factory.EXE)],
    ),
    case("acte-missing", "files.acte", "at least 1", files=[PNG_ANNEXE]),
    case("acte-twice", "files.acte", "at most 1", files=[ACTE, ("acte", "b.pdf", PDF)]),
    case("acte-empty", "files.acte", "is empty", files=[("acte", "vide.pdf", b"")]),
    case("unknown-part", "files.piece", "unknown file part", files=[ACTE, ("piece", "p.pdf", PDF)]),
]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("metadata", "files", "entity", "status", "field", "words"), BAD)
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
    intaker: Intaker,
    metadata: dict[str, Any] | str,
    files: list[tuple[str, str, bytes]],
    entity: str,
    status: int,
    field: str,
    words: str,
) -> None:
    before = await intaker.snapshot()
    got, body = await intaker.submit(metadata, files, entity)
    assert got == status, body
    named = [p for p in body["problems"] if p["field"] == field]
    assert named, (field, body["problems"])
    assert any(words in p["message"] for p in named), (words, named)
    assert await intaker.snapshot() == before


@pytest.mark.asyncio(loop_scope="module")
async def test_a_number_used_by_a_live_act_is_refused(intaker: Intaker) -> None:
    good = act_metadata("LIVE_1", classification="1.1.2")
    status, first = await intaker.submit(good, [ACTE])
    assert status == 201, first
    before = await intaker.snapshot()
    assert first["id"] in before[0]
    other_pdf = act_pdf("LIVE_1 bis")
    status, body = await intaker.submit(
        {**good, "objet": "Autre acte, même numéro"}, [("acte", "autre.pdf", other_pdf)]
    )
    assert status == 422, body
    [problem] = body["problems"]
    assert problem["field"] == "metadata.numero"
    assert f"'LIVE_1' is already used by document {first['id']}" in problem["message"]
    assert await intaker.snapshot() == before
    resp = await intaker.client.get(
        f"/api/v1/documents/{first['id']}", headers={"Authorization": f"Bearer {intaker.token}"}
    )
    assert resp.status == 200 and (await resp.json())["metadata"]["numero"] == "LIVE_1"


OVERSIZE = 150 * 1024 * 1024 + 1


async def _zeros(total: int, chunk: int = 1024 * 1024) -> AsyncIterator[bytes]:
    block = bytes(chunk)
    sent = 0
    while sent < total:
        yield block[: min(chunk, total - sent)]
        sent += chunk


@pytest.mark.asyncio(loop_scope="module")
async def test_an_upload_over_150_mib_is_refused_naming_the_part_and_nothing_stored(
    intaker: Intaker,
) -> None:
    before = await intaker.snapshot()
    # The annex streams 150 MiB + 1 byte of zeros: never held in memory.
    form = aiohttp.FormData()
    form.add_field("flow", "actes")
    form.add_field("entity", ENTITY)
    form.add_field("metadata", json.dumps(act_metadata("BIG_1", classification="1.1.2")))
    form.add_field("acte", PDF, filename="acte.pdf")
    form.add_field(
        "annexe", _zeros(OVERSIZE), filename="enorme.pdf", content_type="application/pdf"
    )
    resp = await intaker.client.post(
        "/api/v1/documents", data=form, headers={"Authorization": f"Bearer {intaker.token}"}
    )
    body = await resp.json()
    assert resp.status == 413, body
    assert "157286400 bytes" in body["error"], body
    assert [p["field"] for p in body["problems"]] == ["files.annexe"], body
    assert "enorme.pdf" in body["problems"][0]["message"], body
    assert await intaker.snapshot() == before


# --- hostile archives and XML through ``demat validate actes`` ---------------------------


def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def _member(
    name: str, content: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, content if kind == tarfile.REGTYPE else None


def _gzip_bomb(path: Path, expanded: int = 200 * 1024 * 1024) -> Path:
    """One tar member of ``expanded`` zero bytes: about 200 KiB on disk."""
    info = tarfile.TarInfo("bombe.pdf")
    info.size = expanded
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    squeeze = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip wrapper
    block = bytes(1024 * 1024)
    with path.open("wb") as out:
        out.write(squeeze.compress(header))
        for _ in range(expanded // len(block)):
            out.write(squeeze.compress(block))
        out.write(squeeze.flush())
    assert path.stat().st_size < 1024 * 1024
    return path


def _laughs() -> bytes:
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    ]
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE lolz [{"".join(entities)}]>\n<lolz>&lol9;</lolz>\n'
    ).encode()


HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "absolute-path": (
        lambda d: _tar_gz(d / "abs.tar.gz", [_member("/etc/evil.xml")]),
        "/etc/evil.xml: absolute path",
    ),
    "dot-dot": (
        lambda d: _tar_gz(d / "up.tar.gz", [_member("../evil.xml")]),
        "../evil.xml: path with '..'",
    ),
    "symlink": (
        lambda d: _tar_gz(
            d / "ln.tar.gz", [_member("acte.pdf", kind=tarfile.SYMTYPE, link="/etc/passwd")]
        ),
        "acte.pdf: symbolic link to '/etc/passwd'",
    ),
    "too-many-members": (
        lambda d: _tar_gz(d / "many.tar.gz", [_member(f"f{i:03d}.pdf") for i in range(65)]),
        "more than 64 members",
    ),
    "gzip-bomb": (lambda d: _gzip_bomb(d / "bomb.tar.gz"), "(gzip bomb?)"),
    "entity-expansion": (
        lambda d: _write(d / "lol.xml", _laughs()),
        "lol.xml:2: DOCTYPE declaration not accepted: a document here carries no DTD and no "
        "entities",
    ),
    "malformed-xml": (
        lambda d: _write(d / "m.xml", b"<?xml version='1.0'?>\n<a>\n<b>\n</a>\n"),
        "m.xml:4: ",
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_validate_refuses_hostile_archives_and_xml(tmp_path: Path, kind: str) -> None:
    make, expected = HOSTILE[kind]
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(demat_cli, ["validate", "actes", str(path)])
    assert result.exit_code == 1, (result.output, result.exception)
    assert expected in result.output, result.output
    assert result.output.startswith(f"{path.name}:"), result.output  # the file comes first
    assert "valid actes" not in result.output
    # Nothing unpacked next to the file.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
