"""Benchmark: `depot` documents per second end to end, against bare aio-pika on the same broker.

End to end: N small documents (1 KiB file each) are submitted through the HTTP
API with bounded concurrency; the clock runs from the first submission until
the last document is ``completed``, i.e. delivered to the gf simulator's inbox
through the relay, RabbitMQ and a worker. Completion is counted in the
database (one ``count(*)`` per poll, the API is not loaded by the watching),
and the end time is the last document's own ``updated_at``.

Baseline, in the same run and on the same RabbitMQ: N persistent 1 KiB messages
published with confirms (100 in flight) to a fresh quorum queue while a
consumer with manual acks (prefetch 100) takes them; the clock runs from the
first publish until the last ack.

Run: ``.venv/bin/python bench/depot.py [--documents 1000] [--concurrency 32]``
(``--help`` for the options). By default it makes a fresh PostgreSQL database
and, when ``rabbitmqctl`` is at hand, a RabbitMQ virtual host of its own, and
removes both at the end. ``DEMAT_*`` variables of the caller's environment are
passed to the broker processes (e.g. ``DEMAT_WORKER_PREFETCH=64``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg
from children import ROOT, Child
from live_pages import live_pages

from broker.transport import DEFAULT_PREFIX
from broker.wiring import catalog

ENTITY = "214000150"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
FILE_SIZE = 1024
WARMUP = 20
TARGET = 100.0  # documents per second end to end on a 2-core machine
BASELINE_WINDOW = 100
BASELINE_PREFETCH = 100


# --- processes --------------------------------------------------------------------------


def demat(*args: str) -> list[str]:
    return [sys.executable, "-m", "broker", *args]


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        demat(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"demat {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


# --- RabbitMQ and PostgreSQL scratch space ----------------------------------------------


def _rabbitmqctl(*args: str) -> bool:
    try:
        done = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextlib.asynccontextmanager
async def scratch_vhost(url: str, wanted: bool) -> AsyncIterator[tuple[str, str]]:
    """A fresh virtual host when rabbitmqctl can make one; yields (url, description)."""
    parts = urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    vhost = f"demat-bench-{uuid.uuid4().hex[:8]}"
    if wanted and local and shutil.which("rabbitmqctl") and _rabbitmqctl("add_vhost", vhost):
        try:
            user = parts.username or "guest"
            if not _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
                raise RuntimeError(f"cannot grant {user} the virtual host {vhost}")
            yield (
                urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", parts.query, "")),
                f"virtual host {vhost} (removed at the end)",
            )
        finally:
            _rabbitmqctl("delete_vhost", vhost)
        return
    queues = [f"{DEFAULT_PREFIX}.{name}" for name in catalog().connectors]
    queues.append(f"{DEFAULT_PREFIX}.parking")
    exchanges = [f"{DEFAULT_PREFIX}.parking", f"{DEFAULT_PREFIX}.events"]
    new_queues = [q for q in queues if not await exists(url, "queue", q)]
    new_exchanges = [e for e in exchanges if not await exists(url, "exchange", e)]
    try:
        yield url, f"virtual host of {url} (shared; what the run declares is deleted at the end)"
    finally:
        await delete(url, new_queues, new_exchanges)


async def exists(url: str, kind: str, name: str) -> bool:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        try:
            if kind == "queue":
                await channel.declare_queue(name, passive=True)
            else:
                await channel.declare_exchange(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True
    finally:
        await connection.close()


async def delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database, dropped at the end; yields its SQLAlchemy URL."""
    name = f"demat_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    try:
        yield f"postgresql+asyncpg://{parts.netloc}/{name}"
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def sqlalchemy_url(url: str) -> str:
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


# --- counting completed documents -------------------------------------------------------


CountCompleted = Callable[[float], Awaitable[tuple[int, float | None]]]


@contextlib.asynccontextmanager
async def completed_counter(db_url: str, data_dir: Path) -> AsyncIterator[CountCompleted]:
    """``count(since)``: completed documents created since then, and the last one's end."""
    sql = (
        "SELECT count(*), max(updated_at) FROM documents "
        "WHERE state = 'completed' AND created_at >= {}"
    )
    if db_url.startswith("postgresql"):
        conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))

        async def count_pg(since: float) -> tuple[int, float | None]:
            row = await conn.fetchrow(sql.format("$1"), since)
            assert row is not None
            return int(row[0]), row[1]

        try:
            yield count_pg
        finally:
            await conn.close()
        return

    path = data_dir / "demat.db"

    def count_sqlite(since: float) -> tuple[int, float | None]:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            done, last = db.execute(sql.format("?"), (since,)).fetchone()
            return int(done), last
        finally:
            db.close()

    async def count_async(since: float) -> tuple[int, float | None]:
        return await asyncio.to_thread(count_sqlite, since)

    yield count_async


# --- CPU accounting ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), None when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def beam_pids() -> list[int]:
    """The local RabbitMQ node's Erlang VM, if it runs here."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if stat.read_text().strip() == "beam.smp":
                pids.append(int(stat.parent.name))
    return pids


async def postgres_backends(db_url: str) -> list[int]:
    if not db_url.startswith("postgresql"):
        return []
    parts = urlsplit(db_url)
    name = parts.path.lstrip("/")
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


@dataclass
class CpuMeter:
    """CPU seconds each group of processes spends between ``start`` and ``stop``."""

    groups: dict[str, list[int]]
    _before: dict[int, float] = field(default_factory=dict)
    _self_before: float = 0.0
    spent: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[int, float]:
        seen = {}
        for pids in self.groups.values():
            for pid in pids:
                if (cpu := cpu_seconds(pid)) is not None:
                    seen[pid] = cpu
        return seen

    def start(self) -> None:
        self._before = self._read()
        times = os.times()
        self._self_before = times.user + times.system

    def stop(self, joined: dict[str, list[int]] | None = None) -> None:
        """``joined``: processes that may have started since ``start`` (counted in full)."""
        for name, pids in (joined or {}).items():
            self.groups[name] = sorted({*self.groups.get(name, []), *pids})
        after = self._read()
        for name, pids in self.groups.items():
            self.spent[name] = sum(after[p] - self._before.get(p, 0.0) for p in pids if p in after)
        times = os.times()
        self.spent["this benchmark (client)"] = times.user + times.system - self._self_before


# --- the end-to-end run -----------------------------------------------------------------


@dataclass
class Options:
    documents: int
    concurrency: int
    amqp_url: str | None
    database_url: str | None
    sqlite: bool
    split: bool
    workers: int
    own_vhost: bool
    timeout: float
    live_pages: int = 0


@dataclass
class EndToEnd:
    documents: int
    seconds: float
    submit_seconds: float
    setup: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.documents / self.seconds


def document_body(n: int) -> bytes:
    head = f"<mandat n='{n}'>".encode()
    tail = b"</mandat>"
    return head + b"x" * (FILE_SIZE - len(head) - len(tail)) + tail


async def submit_all(url: str, token: str, first: int, count: int, concurrency: int) -> list[str]:
    """Submit ``count`` documents through the API, ``concurrency`` at a time; their ids."""
    ids: list[str] = []
    numbers = iter(range(first, first + count))
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:

        async def submitter() -> None:
            for n in numbers:
                form = aiohttp.FormData()
                form.add_field("flow", "depot")
                form.add_field("entity", ENTITY)
                form.add_field("metadata", f'{{"bench": {n}}}')
                form.add_field("document", document_body(n), filename=f"mandat-{n}.xml")
                async with http.post("/api/v1/documents", data=form) as resp:
                    body = await resp.json()
                    if resp.status != 201:
                        raise RuntimeError(f"submission {n} refused: {resp.status} {body}")
                    ids.append(body["id"])

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return ids


async def wait_completed(
    count: CountCompleted, since: float, expected: int, timeout: float
) -> float:
    """Wait for ``expected`` completed documents created since ``since``; the last one's end."""
    deadline = time.monotonic() + timeout
    done, last = 0, None
    while time.monotonic() < deadline:
        done, last = await count(since)
        if done >= expected and last is not None:
            return last
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{done} of {expected} documents completed within {timeout}s")


async def end_to_end(opts: Options, amqp_url: str, db_url: str, work: Path) -> EndToEnd:
    gf = Child(
        "gf simulator",
        [sys.executable, "-m", "simulators.gf", "--port", "0"],
        {**os.environ, "PYTHONUNBUFFERED": "1"},
        work / "gf.log",
    )
    gf_url = await gf.start("LISTENING ")
    children = [gf]
    data_dir = work / "data"
    config = work / "demat.toml"
    config.write_text(
        f'[entities.{ENTITY}]\nname = "Commune de Banc"\n'
        f'[entities.{ENTITY}.connectors.depot]\nurl = "{gf_url}/inbox"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "DEMAT_DATA_DIR"}
    env.update(
        {
            "DEMAT_DATA_DIR": str(data_dir),
            "DEMAT_CONFIG": str(config),
            "DEMAT_AMQP_URL": amqp_url,
            "DEMAT_PORT": "0",
            "DEMAT_LOG_FORMAT": env.get("DEMAT_LOG_FORMAT", "json"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if not opts.sqlite:
        env["DEMAT_DATABASE_URL"] = db_url
    else:
        env.pop("DEMAT_DATABASE_URL", None)
    setup: list[str] = []
    try:
        run_cli(env, "db", "upgrade")
        token = run_cli(env, "token", "create", "--operator").strip()
        if opts.split:
            api = Child("api", demat("api"), env, work / "api.log")
            url = await api.start("API_URL=")
            relay = Child("relay", demat("relay"), env, work / "relay.log")
            await relay.start(None)
            workers = [
                Child(f"worker {i}", demat("worker"), env, work / f"worker-{i}.log")
                for i in range(opts.workers)
            ]
            for worker in workers:
                await worker.start(None)
            children += [api, relay, *workers]
            setup.append(
                f"processes: demat api (pid {api.pid}), relay (pid {relay.pid}), "
                f"{opts.workers} worker(s) (pids {', '.join(str(w.pid) for w in workers)}), "
                f"gf simulator (pid {gf.pid})"
            )
        else:
            serve = Child("serve", demat("serve"), env, work / "serve.log")
            url = await serve.start("API_URL=")
            children.append(serve)
            setup.append(f"processes: demat serve (pid {serve.pid}), gf simulator (pid {gf.pid})")
        async with completed_counter(db_url, data_dir) as count:
            # Warm-up: connections, caches and queues in place before the clock runs.
            since = time.time() - 1
            await submit_all(url, token, -WARMUP, WARMUP, min(WARMUP, opts.concurrency))
            await wait_completed(count, since, WARMUP, 60)
            groups = {c.name: [c.pid] for c in children}
            groups["postgresql (backends, approx.)"] = await postgres_backends(db_url)
            groups["rabbitmq (whole node)"] = beam_pids()
            async with live_pages(url, token, opts.live_pages) as pages:
                meter = CpuMeter(groups)
                meter.start()
                started = time.time()
                await submit_all(url, token, 0, opts.documents, opts.concurrency)
                submitted = time.time()
                last = await wait_completed(count, started, opts.documents, opts.timeout)
                # Connections opened past the pool size are opened and closed as needed.
                meter.stop({"postgresql (backends, approx.)": await postgres_backends(db_url)})
                await asyncio.sleep(1.0)  # the last events reach the pages
            if pages.events:
                setup.append(f"live pages: {len(pages.events)} open through the run, state "
                             f"events received per page: min {min(pages.events)}, "
                             f"max {max(pages.events)}")
        stats = await gf_stats(gf_url)
        expected = opts.documents + WARMUP
        if stats["received"] != expected or stats["duplicates"] != 0:
            raise RuntimeError(f"the inbox holds {stats} for {expected} documents")
        return EndToEnd(opts.documents, last - started, submitted - started, setup, meter.spent)
    finally:
        for child in reversed(children):
            await child.stop()


async def gf_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


# --- the bare aio-pika baseline ---------------------------------------------------------


async def bare_aio_pika(amqp_url: str, messages: int) -> float:
    """Publish ``messages`` persistent 1 KiB messages with confirms while consuming them.

    Returns messages per second from the first publish to the last ack.
    """
    queue_name = f"bench.baseline.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(amqp_url)
    try:
        publisher = await connection.channel(publisher_confirms=True)
        await publisher.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=BASELINE_PREFETCH)
        queue = await consumer.declare_queue(queue_name, passive=True)
        body = b"x" * FILE_SIZE
        acked = 0
        all_acked = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal acked
            await message.ack()
            acked += 1
            if acked >= messages:
                all_acked.set()

        window = asyncio.Semaphore(BASELINE_WINDOW)

        async def publish(n: int) -> None:
            async with window:
                await publisher.default_exchange.publish(
                    aio_pika.Message(
                        body, message_id=str(n), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key=queue_name,
                )

        try:
            tag = await queue.consume(on_message)
            started = time.perf_counter()
            await asyncio.gather(*(publish(n) for n in range(messages)))
            await asyncio.wait_for(all_acked.wait(), 300)
            seconds = time.perf_counter() - started
            await queue.cancel(tag)
        finally:
            await publisher.queue_delete(queue_name)
        return messages / seconds
    finally:
        await connection.close()


# --- main -------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/depot.py",
        description="depot documents/s end to end vs. bare aio-pika publish+consume",
    )
    parser.add_argument("--documents", type=int, default=1000, help="documents (default 1000)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="submissions in flight (default 32)"
    )
    parser.add_argument(
        "--amqp-url", help=f"RabbitMQ (default {AMQP_URL}, in a virtual host of its own)"
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL database to use as is (default: a fresh database created on "
        f"{PG_ADMIN_URL}, dropped at the end)",
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite in a scratch data dir")
    parser.add_argument(
        "--split", action="store_true", help="demat api + relay + worker(s) instead of serve"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes with --split (default 1)"
    )
    parser.add_argument(
        "--no-vhost",
        action="store_true",
        help="use the virtual host of the AMQP URL instead of a scratch one",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="longest wait for completion (s)"
    )
    parser.add_argument(
        "--live-pages", type=int, default=0,
        help="dashboard pages listening live (signed in, server-sent events) during the run",
    )
    args = parser.parse_args(argv)
    if args.sqlite and args.database_url:
        parser.error("--sqlite and --database-url exclude each other")
    if args.documents < 1 or args.concurrency < 1 or args.workers < 1:
        parser.error("--documents, --concurrency and --workers must be positive")
    return Options(
        documents=args.documents,
        concurrency=args.concurrency,
        amqp_url=args.amqp_url,
        database_url=args.database_url,
        sqlite=args.sqlite,
        split=args.split,
        workers=args.workers,
        own_vhost=not args.no_vhost,
        timeout=args.timeout,
        live_pages=args.live_pages,
    )


@contextlib.asynccontextmanager
async def database(opts: Options, work: Path) -> AsyncIterator[tuple[str, str]]:
    """(SQLAlchemy URL, description) of the database of the run."""
    if opts.sqlite:
        path = (work / "data" / "demat.db").resolve()
        yield f"sqlite+aiosqlite:///{path}", f"SQLite {path}"
    elif opts.database_url:
        url = sqlalchemy_url(opts.database_url)
        yield url, f"PostgreSQL {urlsplit(url).path.lstrip('/')} (given, kept)"
    else:
        async with scratch_database(PG_ADMIN_URL) as url:
            name = urlsplit(url).path.lstrip("/")
            yield url, f"PostgreSQL {name} (fresh, dropped at the end)"


async def main(argv: list[str] | None = None) -> None:
    opts = parse(argv)
    work = Path(tempfile.mkdtemp(prefix="demat-bench-"))
    ok = False
    try:
        async with (
            scratch_vhost(opts.amqp_url or AMQP_URL, opts.own_vhost) as (amqp_url, vhost),
            database(opts, work) as (db_url, db_description),
        ):
            baseline = await bare_aio_pika(amqp_url, opts.documents)
            e2e = await end_to_end(opts, amqp_url, db_url, work)
        ok = True
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)
    extra = {k: v for k, v in os.environ.items() if k.startswith("DEMAT_")}
    print("--- depot benchmark ---")
    print(f"transport: RabbitMQ, {vhost}")
    print(f"database: {db_description}")
    for line in e2e.setup:
        print(line)
    print(f"documents: {opts.documents} x {FILE_SIZE} B, {opts.concurrency} submissions in flight")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average at the end {load}")
    print(f"settings from the environment: {extra or 'none (defaults)'}")
    print(
        f"depot end-to-end: {e2e.rate:.1f} docs/s ({e2e.documents} docs in {e2e.seconds:.2f} s; "
        f"all submitted after {e2e.submit_seconds:.2f} s)"
    )
    if e2e.cpu:
        per_doc = ", ".join(
            f"{name} {1000 * seconds / e2e.documents:.1f}" for name, seconds in e2e.cpu.items()
        )
        total = 1000 * sum(e2e.cpu.values()) / e2e.documents
        print(f"CPU ms per document: {per_doc}; total {total:.1f}")
    print(f"bare aio-pika publish+consume: {baseline:.1f} msg/s")
    print(f"ratio: {e2e.rate:.1f}/{baseline:.1f} = {e2e.rate / baseline:.3f}")
    verdict = "met" if e2e.rate >= TARGET else "NOT met"
    print(f"target: {TARGET:.0f} docs/s end to end: {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
