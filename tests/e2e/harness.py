"""Real processes for end-to-end tests: `demat serve|worker|relay|api` and simulators."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg

from broker import accounts
from broker.store.db import make_engine
from broker.store.migrate import upgrade
from broker.transport import DEFAULT_PREFIX
from broker.wiring import catalog

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"completed", "rejected", "failed", "cancelled"}


@dataclass
class Proc:
    """A child process whose stdout KEY=VALUE / LISTENING lines are collected."""

    args: list[str]
    env: dict[str, str]
    log: Path
    proc: asyncio.subprocess.Process | None = None
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def start(self, ready_prefix: str, timeout: float = 30.0) -> str:
        err = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, env=self.env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err
        )
        err.close()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), deadline - time.monotonic())
            if not raw:
                raise RuntimeError(
                    f"{self.args} exited early; see {self.log}:\n{self.log.read_text()[-3000:]}"
                )
            line = raw.decode().strip()
            self.lines.append(line)
            if line.startswith(ready_prefix):
                self._reader = asyncio.create_task(self._drain())
                return line[len(ready_prefix) :]
        raise TimeoutError(f"{self.args} did not print {ready_prefix!r}")

    async def _drain(self) -> None:
        assert self.proc and self.proc.stdout
        while raw := await self.proc.stdout.readline():
            self.lines.append(raw.decode().strip())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if not self.proc:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader:
            self._reader.cancel()
        return self.proc.returncode


def demat_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMAT_")}
    env.update(
        {"DEMAT_DATA_DIR": str(data_dir), "DEMAT_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    )
    env.update(extra)
    return env


def demat(*args: str) -> list[str]:
    return [sys.executable, "-m", "broker", *args]


async def start_simulator(module: str, log: Path, *args: str) -> tuple[Proc, str]:
    proc = Proc(
        [sys.executable, "-m", f"simulators.{module}", "--port", "0", *args],
        {**os.environ, "PYTHONUNBUFFERED": "1"},
        log,
    )
    url = await proc.start("LISTENING ")
    return proc, url


async def start_demat(role: str, env: dict[str, str], log: Path, *args: str) -> tuple[Proc, str]:
    """Start a demat process; returns it and its API_URL (empty for worker/relay)."""
    proc = Proc(demat(role, *args), env, log)
    if role in ("serve", "api"):
        return proc, await proc.start("API_URL=")
    proc.proc = await asyncio.create_subprocess_exec(
        *proc.args, env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab")
    )
    return proc, ""


class WorkerPool:
    """`demat worker` processes on PostgreSQL, killed and replaced by a test.

    ``claimed()`` tells how many running jobs each live worker holds, from the
    ``jobs`` table, so a kill can be aimed at a worker in the middle of a step.
    ``pg`` is a connection, or a DSN to connect to for each look (the store may restart).
    """

    def __init__(self, env: dict[str, str], logs: Path, pg: Any, procs: list[Proc]) -> None:
        self._env, self._logs, self._pg, self._procs = env, logs, pg, procs
        self._live: dict[int, Proc] = {}
        self._started = 0

    async def start(self) -> Proc:
        self._started += 1
        worker, _ = await start_demat("worker", self._env,
                                      self._logs / f"worker-{self._started}.log")
        assert worker.proc is not None
        self._live[worker.proc.pid] = worker
        self._procs.append(worker)
        return worker

    async def claimed(self) -> dict[int, int]:
        sql = "SELECT worker_id, count(*) AS n FROM jobs WHERE state = 'running' GROUP BY 1"
        if isinstance(self._pg, str):
            try:
                conn = await asyncpg.connect(self._pg, timeout=2)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                return {}
            try:
                rows = await conn.fetch(sql)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return {}
            finally:
                await conn.close()
        else:
            rows = await self._pg.fetch(sql)
        # Worker ids are host:pid:suffix.
        running = {int(r["worker_id"].rsplit(":", 2)[1]): int(r["n"]) for r in rows}
        return {pid: n for pid, n in running.items() if pid in self._live}

    async def kill_any(self) -> int:
        """SIGKILL the oldest live worker and start another; its pid."""
        pid = next(iter(self._live))
        await self.kill_and_replace(pid)
        return pid

    async def kill_and_replace(self, pid: int) -> None:
        """SIGKILL worker ``pid``, wait for it to die, start another."""
        victim = self._live.pop(pid)
        victim.kill(signal.SIGKILL)
        assert victim.proc is not None
        await victim.proc.wait()
        await self.start()


async def start_split_layout(env: dict[str, str], workers: WorkerPool, procs: list[Proc],
                             logs: Path, worker_count: int = 2) -> str:
    """`demat api`, `demat relay` and ``worker_count`` workers (as in docker-compose): API URL."""
    api, url = await start_demat("api", env, logs / "api.log")
    procs.append(api)
    relay, _ = await start_demat("relay", env, logs / "relay.log")
    procs.append(relay)
    for _ in range(worker_count):
        await workers.start()
    return url


def run_cli(env: dict[str, str], *args: str) -> str:
    import subprocess

    done = subprocess.run(
        demat(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"demat {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


class Api:
    """A thin client of the broker's HTTP API."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})

    async def close(self) -> None:
        await self.http.close()

    async def submit(
        self,
        entity: str,
        files: Iterable[tuple[str, str, bytes]],
        metadata: dict[str, Any] | None = None,
        flow: str = "depot",
        key: str | None = None,
    ) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("flow", flow)
        form.add_field("entity", entity)
        form.add_field("metadata", json.dumps(metadata or {}))
        for role, name, data in files:
            form.add_field(role, data, filename=name)
        headers = {"Idempotency-Key": key} if key else {}
        async with self.http.post(
            f"{self.url}/api/v1/documents", data=form, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}{path}", params=params) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            return await resp.json()

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}{path}", json=body) as resp:
            return resp.status, await resp.json()

    async def wait_terminal(self, ids: Iterable[str], timeout: float) -> dict[str, Any]:
        """Poll until every document ended; returns them by id."""
        pending, done = set(ids), {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for doc_id in list(pending):
                try:
                    doc = await self.get(f"/api/v1/documents/{doc_id}")
                except (aiohttp.ClientError, AssertionError):
                    break  # the server is restarting
                if doc["state"] in TERMINAL:
                    done[doc_id] = doc
                    pending.discard(doc_id)
            if pending:
                await asyncio.sleep(0.3)
        if pending:
            raise AssertionError(f"{len(pending)} documents did not end within {timeout}s")
        return done


async def sim_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def set_faults(url: str, rules: list[dict[str, Any]]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/_control/faults", json={"rules": rules}) as resp,
    ):
        assert resp.status == 200, await resp.text()


# --- RabbitMQ isolation ----------------------------------------------------------------


def _rabbitmqctl(*args: str) -> bool:
    try:
        done = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


async def delete_demat_queues(url: str) -> None:
    """The broker's queues and exchanges (``demat.*``) in the URL's virtual host."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in [*catalog().connectors, "parking"]:
            await channel.queue_delete(f"{DEFAULT_PREFIX}.{name}")
        for exchange in ("parking", "events"):
            await channel.exchange_delete(f"{DEFAULT_PREFIX}.{exchange}")
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def isolated_amqp(amqp_url: str) -> AsyncIterator[str]:
    """A virtual host of the test's own; without ``rabbitmqctl``, ``demat.*`` purged around."""
    parts = urlsplit(amqp_url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    vhost = f"demat-test-{uuid.uuid4().hex[:10]}"
    if local and shutil.which("rabbitmqctl") and _rabbitmqctl("add_vhost", vhost):
        try:
            user = parts.username or "guest"
            assert _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            yield urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", parts.query, ""))
        finally:
            _rabbitmqctl("delete_vhost", vhost)
        return
    await delete_demat_queues(amqp_url)
    try:
        yield amqp_url
    finally:
        await delete_demat_queues(amqp_url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def prepare_store(db_url: str) -> str:
    """Migrate the store and make an operator token (in this process: no CLI start-up)."""
    await upgrade(db_url)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            token: str = await accounts.create_token(conn, accounts.OPERATOR, label="e2e")
    finally:
        await engine.dispose()
    return token


async def wait_all_ended(api: Api, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    docs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            docs = [await api.get(f"/api/v1/documents/{i}") for i in ids]
            if all(d["state"] in TERMINAL for d in docs):
                return docs
        await asyncio.sleep(0.5)
    states = Counter(d["state"] for d in docs)
    raise AssertionError(f"documents did not all end within {timeout}s: {dict(states)}")


async def submit_all(count: int, submit_one: Callable[[int, float], Awaitable[None]], *,
                     rate: float = 10.0, concurrency: int = 5, timeout: float = 150.0) -> float:
    """``submit_one(n, deadline)`` for n in 1..count at ``rate`` per second, ``concurrency``
    at a time; returns when all were accepted (the time it started)."""
    started = time.monotonic()
    deadline = started + timeout
    numbers = iter(range(1, count + 1))

    async def submitter() -> None:
        for n in numbers:
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            await submit_one(n, deadline)

    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return started


Probe = Callable[[], Awaitable[dict[int, int]]]


async def wait_mid_run(accepted: Callable[[], int], after: int, probe: Probe,
                       timeout: float = 60.0) -> tuple[int, int]:
    """Once ``after`` documents were accepted, a process holding claimed jobs: (pid, jobs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if accepted() >= after:
            running = await probe()
            if running:
                pid = max(running, key=lambda p: running[p])
                return pid, running[pid]
        await asyncio.sleep(0.02)
    raise AssertionError("no process ever held a claimed job")
