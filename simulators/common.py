"""What every simulator shares: counters, fault injection, control routes, serving.

Each simulator builds its app with :func:`create_app`, adds its own routes and
runs with :func:`run_simulator`, which prints one line ``LISTENING http://HOST:PORT``
once the port is bound, so a test or the CLI can find it when port 0 was asked.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from simulators.faults import (
    FAULT_KINDS,
    FaultInjector,
    FaultRule,
    add_fault_routes,
    fault_middleware,
    is_control_path,
    parse_fault,
)

ResetHook = Callable[[], Awaitable[None]]


class Stats:
    """Named counters, all shown (zeros included) by ``GET /stats``."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._names = ("requests", *names)
        self._counts: Counter[str] = Counter()

    def incr(self, name: str, by: int = 1) -> None:
        self._counts[name] += by

    def __getitem__(self, name: str) -> int:
        return self._counts[name]

    def reset(self) -> None:
        self._counts.clear()

    def snapshot(self) -> dict[str, int]:
        counts = {name: 0 for name in self._names}
        counts.update(self._counts)
        return counts


STATS = web.AppKey("stats", Stats)
FAULTS = web.AppKey("faults", FaultInjector)


def stats_body(stats: Stats, injector: FaultInjector) -> dict[str, int]:
    body = stats.snapshot()
    body["faults"] = sum(injector.counts.values())
    body.update({f"faults_{kind}": injector.counts[kind] for kind in FAULT_KINDS})
    return body


def stats_of(app: web.Application) -> dict[str, int]:
    """What ``GET /stats`` answers, for code that holds the app."""
    return stats_body(app[STATS], app[FAULTS])


def create_app(
    *,
    stats: Stats | None = None,
    faults: Iterable[FaultRule] = (),
    seed: int = 0,
    on_reset: ResetHook | None = None,
) -> web.Application:
    """An app with request counting, fault injection, ``/stats`` and ``/_control/*``.

    ``POST /_control/reset`` zeroes the counters, re-arms the fault rules and
    calls ``on_reset`` so the simulator forgets what it stored.
    """
    stats = stats or Stats()
    injector = FaultInjector(seed=seed)
    injector.replace(faults)

    @web.middleware
    async def count_requests(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not is_control_path(request.path):
            stats.incr("requests")
        return await handler(request)

    app = web.Application(middlewares=[count_requests, fault_middleware(injector)])
    app[STATS] = stats
    app[FAULTS] = injector

    async def get_stats(_request: web.Request) -> web.Response:
        return web.json_response(stats_body(stats, injector))

    async def reset(_request: web.Request) -> web.Response:
        stats.reset()
        injector.counts.clear()
        injector.rearm()
        if on_reset is not None:
            await on_reset()
        return web.json_response(stats_body(stats, injector))

    async def stop_hanging(_app: web.Application) -> None:
        injector.closing.set()

    app.router.add_get("/stats", get_stats)
    app.router.add_post("/_control/reset", reset)
    add_fault_routes(app, injector)
    app.on_shutdown.append(stop_hanging)
    return app


def store_dir_of(given: Path | None, name: str
                 ) -> tuple[Path, Callable[[web.Application], Awaitable[None]]]:
    """A simulator's files: ``given``, or a temporary dir that the returned cleanup removes."""
    root = Path(tempfile.mkdtemp(prefix=f"demat-{name}-")) if given is None else given
    root.mkdir(parents=True, exist_ok=True)

    async def remove(_app: web.Application) -> None:
        if given is None:
            await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)

    return root, remove


def _url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@asynccontextmanager
async def serving(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` in the running loop; yields its base URL (real port when 0)."""
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield _url(runner.addresses[0])
    finally:
        await runner.cleanup()


async def _serve_until_signalled(app: web.Application, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serving(app, host, port) as url:
        sys.stdout.write(f"LISTENING {url}\n")
        sys.stdout.flush()
        await stop.wait()


def run_simulator(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until SIGINT or SIGTERM, after printing ``LISTENING http://HOST:PORT``."""
    asyncio.run(_serve_until_signalled(app, host, port))


def _fault_argument(spec: str) -> FaultRule:
    try:
        return parse_fault(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--host``, ``--port``, ``--fault`` (repeatable) and ``--seed``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free)")
    parser.add_argument(
        "--fault",
        dest="faults",
        action="append",
        type=_fault_argument,
        default=[],
        metavar="KIND[:RATIO][@PHASE][,key=value...]",
        help=f"inject a fault; KIND in {', '.join(FAULT_KINDS)}; PHASE before (default) or after",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws (default 0)")
