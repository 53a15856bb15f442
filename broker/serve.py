"""Process roles: API, relay and workers, alone or together."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import structlog
from aiohttp import web

from broker import accounts
from broker.api.app import build_app
from broker.catalog import CatalogError
from broker.entity_settings import SettingsError
from broker.fetch import Fetcher
from broker.ingest import Ingestor
from broker.relay import Relay
from broker.runtime import Runtime
from broker.settings import Settings
from broker.wiring import catalog
from broker.worker import Worker

log = structlog.get_logger("demat.serve")


@dataclass(frozen=True)
class Roles:
    api: bool = False
    relay: bool = False
    worker: bool = False
    connectors: tuple[str, ...] = ()


async def ensure_operator_token(rt: Runtime) -> str | None:
    """On an empty store, create a first operator token and save it (0600) in the data dir."""
    async with rt.db.begin() as conn:
        if await accounts.has_tokens(conn):
            return None
        token = await accounts.create_token(conn, accounts.OPERATOR, label="bootstrap")
    path = rt.settings.data_dir / "operator.token"
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return str(path)


async def run(settings: Settings, roles: Roles, *,
              announce: Callable[[str, str], None] = lambda k, v: print(f"{k}={v}", flush=True),
              stop: asyncio.Event | None = None) -> None:
    """Run the given roles until SIGINT/SIGTERM (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if settings.amqp_url is None and not (roles.api and roles.relay and roles.worker):
        raise SystemExit("separate api/worker/relay processes need a shared transport: "
                         "set DEMAT_AMQP_URL (and DEMAT_DATABASE_URL)")
    try:
        rt = await Runtime.open(settings, catalog())
    except (CatalogError, SettingsError, accounts.InvalidEntity) as exc:
        # A flow step without its connector, or an entity's bad settings: say which, stop.
        raise SystemExit(f"cannot start: {exc}") from exc
    async with AsyncExitStack() as stack:
        stack.push_async_callback(rt.close)
        if roles.relay:
            relay = Relay(rt)
            await relay.start()
            stack.push_async_callback(relay.stop)
            ingestor = Ingestor(rt)
            await ingestor.start()
            stack.push_async_callback(ingestor.stop)
            fetcher = Fetcher(rt)
            await fetcher.start()
            stack.push_async_callback(fetcher.stop)
        if roles.worker:
            worker = Worker(rt, list(roles.connectors) or None)
            await worker.start()
            stack.push_async_callback(worker.stop)
        if roles.api:
            runner = web.AppRunner(build_app(rt), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            stack.push_async_callback(runner.cleanup)
            port = runner.addresses[0][1] if runner.addresses else settings.port
            announce("API_URL", f"http://{settings.host}:{port}")
            token_file = await ensure_operator_token(rt)
            if token_file:
                announce("OPERATOR_TOKEN_FILE", token_file)
        log.info("running", api=roles.api, relay=roles.relay, worker=roles.worker,
                 transport=rt.transport.name)
        await stop.wait()
        log.info("stopping")
