"""Benchmark: the dashboard with a million documents in the store, and what live pages cost.

1. For each store (SQLite, PostgreSQL): N documents (default 1,000,000) over 45 days, for
   560 entities, with the domain's keys (IDActe and act numbers, NomFic) indexed as the
   store indexes them, are loaded in bulk; an API process serves the dashboard on them. An
   operator signs in, then the overview (``GET /ui/``) and searches by IDActe
   (``GET /ui/documents?ref=…``) are asked one at a time. The server's own time
   (``Server-Timing``) and the client's are reported, p50 and p95, against a baseline
   measured in the same run on the same process: ``GET /healthz`` (the HTTP round trip) and
   the bare indexed key lookup in SQL.
2. ``bench/depot.py`` (RabbitMQ + PostgreSQL, 1000 documents) is run in pairs, without and
   with 100 dashboard pages listening live, interleaved; the throughput ratio is reported.

Run: ``.venv/bin/python bench/dashboard.py [--documents 1000000] [--store sqlite|postgresql|both]
[--no-live]``. Targets: overview and search p95 < 300 ms server time; live pages cost < 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from children import ROOT, Child

from broker import accounts
from broker.store.db import make_engine
from broker.store.migrate import upgrade

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ENTITIES = 560
DAYS = 45
CHUNK = 20_000
TARGET_MS = 300.0
LIVE_COST = 0.10
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
COLUMNS = ("id", "flow", "entity", "state", "step", "run", "next_due_at", "last_error",
           "metadata", "refs", "created_at", "updated_at", "unique_key", "submission_key",
           "step_since")


def ulid(ms: int, rand: int) -> str:
    value = (ms << 80) | rand
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


@dataclass
class Generated:
    documents: list[tuple[Any, ...]]
    keys: list[tuple[str, str, str]]


def generate(count: int, seed: int = 7) -> Iterator[Generated]:
    """Documents oldest first, in chunks: mostly ended, a few active, parked or refused."""
    rnd = random.Random(seed)
    sirens = [f"{200000000 + i * 1777:09d}" for i in range(ENTITIES)]
    now = time.time()
    start = now - DAYS * 86_400
    step = (now - start) / count
    docs: list[tuple[Any, ...]] = []
    keys: list[tuple[str, str, str]] = []
    for n in range(count):
        created = start + n * step
        doc_id = ulid(int(created * 1000), rnd.getrandbits(80))
        entity = rnd.choice(sirens)
        roll = rnd.random()
        flow = "actes" if roll < 0.45 else "helios" if roll < 0.8 else "depot"
        fate = rnd.random()
        recent = now - created < 3 * 86_400
        if recent and fate < 0.05:
            state = rnd.choice(["waiting", "retrying", "queued"])
        elif fate < 0.015:
            state = "rejected"
        elif fate < 0.02:
            state = "failed"
        elif fate < 0.025:
            state = "cancelled"
        else:
            state = "completed"
        step_name = {"actes": "transmit", "helios": "transmit", "depot": "deliver"}[flow]
        updated = created + rnd.uniform(5, 900)
        metadata: dict[str, Any] = {}
        if flow == "actes":
            numero = f"{2026}D{n:07d}"
            metadata = {"numero": numero, "nature": "DE", "objet": "Délibération"}
            if state == "completed":
                metadata["id_acte"] = f"040-{entity}-20261202-{numero}-DE"
        elif flow == "helios":
            metadata = {"nom_fic": f"PES_{entity}_{n:08d}.xml"}
        for name in ("id_acte", "numero", "nom_fic"):
            if name in metadata:
                keys.append((doc_id, name, metadata[name]))
        docs.append((doc_id, flow, entity, state, step_name, 1,
                     updated + 600 if state == "retrying" else None,
                     "HTTP 503 from the peer" if state in ("failed", "retrying") else None,
                     json.dumps(metadata), "{}", created, updated, None, None, updated))
        if len(docs) >= CHUNK:
            yield Generated(docs, keys)
            docs, keys = [], []
    if docs:
        yield Generated(docs, keys)


def load_sqlite(path: Path, count: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    marks = ",".join("?" * len(COLUMNS))
    for chunk in generate(count):
        db.executemany(f"INSERT INTO documents ({','.join(COLUMNS)}) VALUES ({marks})",
                       chunk.documents)
        db.executemany("INSERT INTO document_keys (document_id, name, value) VALUES (?,?,?)",
                       chunk.keys)
        db.commit()
    db.execute("ANALYZE")
    db.commit()
    db.close()


async def load_postgresql(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for chunk in generate(count):
            await conn.copy_records_to_table("documents", records=chunk.documents,
                                             columns=list(COLUMNS))
            await conn.copy_records_to_table("document_keys", records=chunk.keys,
                                             columns=["document_id", "name", "value"])
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def some_keys(count: int, wanted: int) -> list[str]:
    """IDActes that exist in the generated store (same seed)."""
    found: list[str] = []
    for chunk in generate(count):
        found += [value for _doc, name, value in chunk.keys if name == "id_acte"]
    return random.Random(1).sample(found, min(wanted, len(found)))


# --- the server -----------------------------------------------------------------------

async def serve(data_dir: str, db_url: str) -> None:
    """The API (and its dashboard) alone on the store: what operators' browsers reach."""
    from aiohttp import web

    from broker.api.app import build_app
    from broker.runtime import Runtime
    from broker.settings import Settings
    from broker.wiring import catalog

    settings = Settings(data_dir=Path(data_dir), database_url=db_url or None)
    rt = await Runtime.open(settings, catalog(), migrate=False)
    runner = web.AppRunner(build_app(rt), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"API_URL=http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


# --- measuring ------------------------------------------------------------------------

@dataclass
class Timings:
    server: list[float]
    client: list[float]

    def line(self, name: str) -> str:
        return (f"{name:<22} server p50 {pct(self.server, 50):7.1f} ms  p95 "
                f"{pct(self.server, 95):7.1f} ms | client p50 {pct(self.client, 50):7.1f} ms "
                f" p95 {pct(self.client, 95):7.1f} ms")


def pct(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


async def timed(http: aiohttp.ClientSession, url: str, paths: list[str]) -> Timings:
    server, client = [], []
    for path in paths:
        began = time.perf_counter()
        async with http.get(url + path) as resp:
            await resp.read()
            assert resp.status == 200, (path, resp.status)
            client.append((time.perf_counter() - began) * 1000)
            found = re.search(r"dur=([0-9.]+)", resp.headers.get("Server-Timing", ""))
            if found:
                server.append(float(found.group(1)))
    return Timings(server, client)


async def raw_lookup_ms(store: str, target: str, values: list[str]) -> list[float]:
    """The bare indexed key lookup, in SQL, per value: the floor of a search."""
    spent = []
    if store == "sqlite":
        db = sqlite3.connect(target)
        for value in values:
            began = time.perf_counter()
            db.execute("SELECT document_id FROM document_keys WHERE value = ?",
                       (value,)).fetchall()
            spent.append((time.perf_counter() - began) * 1000)
        db.close()
        return spent
    conn = await asyncpg.connect(target)
    try:
        for value in values:
            began = time.perf_counter()
            await conn.fetch("SELECT document_id FROM document_keys WHERE value = $1", value)
            spent.append((time.perf_counter() - began) * 1000)
    finally:
        await conn.close()
    return spent


async def one_store(store: str, count: int, requests: int, work: Path) -> list[str]:
    data_dir = work / store
    data_dir.mkdir()
    admin = None
    name = f"demat_bench_{uuid.uuid4().hex[:10]}"
    if store == "sqlite":
        db_url = f"sqlite+aiosqlite:///{(data_dir / 'demat.db').resolve()}"
    else:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        await admin.execute(f'CREATE DATABASE "{name}"')
        db_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    dsn = db_url.replace("+asyncpg", "")
    server: Child | None = None
    try:
        # Loaded as a store of the release before the counts, then migrated: the counts
        # are what migration 0009 makes of the documents, as on an upgraded platform.
        await upgrade(db_url, "0008")
        began = time.perf_counter()
        if store == "sqlite":
            await asyncio.to_thread(load_sqlite, data_dir / "demat.db", count)
        else:
            await load_postgresql(dsn, count)
        loaded = time.perf_counter() - began
        began = time.perf_counter()
        await upgrade(db_url)
        migrated = time.perf_counter() - began
        engine = make_engine(db_url)
        async with engine.begin() as conn:
            token = await accounts.create_token(conn, accounts.OPERATOR, label="bench")
        await engine.dispose()
        server = Child("api", [sys.executable, str(Path(__file__)), "--serve", str(data_dir),
                               "--db", "" if store == "sqlite" else db_url],
                       {**os.environ, "PYTHONUNBUFFERED": "1", "DEMAT_LOG_FORMAT": "json"},
                       work / f"api-{store}.log")
        url = await server.start("API_URL=")
        ids = some_keys(count, requests * 2)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.post(f"{url}/ui/connexion", data={"jeton": token},
                                 headers={"Origin": url}, allow_redirects=False) as resp:
                assert resp.status == 303, await resp.text()
            await timed(http, url, ["/ui/"] * 3 + [f"/ui/documents?ref={i}" for i in ids[:3]])
            health = await timed(http, url, ["/healthz"] * requests)
            overview = await timed(http, url, ["/ui/"] * requests)
            search = await timed(http, url, [f"/ui/documents?ref={i}" for i in ids[-requests:]])
        raw = await raw_lookup_ms(store, str(data_dir / "demat.db") if store == "sqlite"
                                  else dsn, ids[-requests:])
        verdict = ("met" if max(pct(overview.server, 95), pct(search.server, 95)) < TARGET_MS
                   else "NOT met")
        return [
            f"--- {store}: {count} documents, {ENTITIES} entities, loaded in {loaded:.0f} s, "
            f"counts made by migration 0009 in {migrated:.1f} s ---",
            f"{'GET /healthz':<22} client p50 {pct(health.client, 50):7.1f} ms  p95 "
            f"{pct(health.client, 95):7.1f} ms (the HTTP baseline)",
            f"{'bare key lookup (SQL)':<22} p50 {pct(raw, 50):7.2f} ms  p95 {pct(raw, 95):7.2f} ms",
            overview.line("overview GET /ui/"),
            search.line("search by IDActe"),
            f"ratio overview/healthz p95 (client): "
            f"{pct(overview.client, 95) / pct(health.client, 95):.1f}; search/healthz: "
            f"{pct(search.client, 95) / pct(health.client, 95):.1f}",
            f"target p95 < {TARGET_MS:.0f} ms server time (overview and search): {verdict}",
        ]
    finally:
        if server is not None:
            await server.stop()
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


def depot_rate(live_pages: int, documents: int) -> tuple[float, str]:
    args = [sys.executable, str(ROOT / "bench" / "depot.py"), "--documents", str(documents)]
    if live_pages:
        args += ["--live-pages", str(live_pages)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    rate = float(re.search(r"depot end-to-end: ([0-9.]+) docs/s", done.stdout).group(1))
    pages = re.search(r"live pages: .*", done.stdout)
    return rate, pages.group(0) if pages else ""


def live_cost(pairs: int, pages: int, documents: int) -> list[str]:
    without, with_pages, seen = [], [], ""
    for _ in range(pairs):
        without.append(depot_rate(0, documents)[0])
        rate, seen = depot_rate(pages, documents)
        with_pages.append(rate)
    ratio = statistics.mean(with_pages) / statistics.mean(without)
    verdict = "met" if ratio > 1 - LIVE_COST else "NOT met"
    return [
        f"--- depot throughput with {pages} live pages (RabbitMQ + PostgreSQL, "
        f"{documents} documents, {pairs} interleaved pairs) ---",
        f"without: {', '.join(f'{r:.1f}' for r in without)} docs/s",
        f"with:    {', '.join(f'{r:.1f}' for r in with_pages)} docs/s ({seen})",
        f"ratio with/without: {ratio:.3f}; target cost < {LIVE_COST:.0%}: {verdict}",
    ]


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/dashboard.py", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument("--no-live", action="store_true", help="skip the live pages' cost")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--db", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        await serve(args.serve, args.db)
        return
    work = Path(tempfile.mkdtemp(prefix="demat-bench-dashboard-"))
    print(f"machine: {os.cpu_count()} cores", flush=True)
    try:
        stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
        for store in stores:
            print("\n".join(await one_store(store, args.documents, args.requests, work)),
                  flush=True)
        if not args.no_live:
            print("\n".join(await asyncio.to_thread(live_cost, args.pairs, 100, 1000)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
