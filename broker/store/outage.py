"""Store outages: telling them from other errors, and waiting them out.

A database that restarts or cannot be reached is not a reason to fail a job, to
reject a message back to the broker (each redelivery would count toward the
delivery limit) or to spin: the process stops taking work, probes the store with
a growing delay, and goes on once it answers. :class:`StoreGate` is that switch;
every loop that writes to the store goes through :meth:`StoreGate.run`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.store.db import ping

log = structlog.get_logger("demat.store")

T = TypeVar("T")

# PostgreSQL SQLSTATEs of a server going away or not there yet: class 08 (connection
# exception), admin/crash shutdown and "the database system is starting up".
_GONE_STATES = ("57P01", "57P02", "57P03")
# A deadlock or a serialization failure: the transaction may simply run again.
_RETRY_STATES = ("40P01", "40001")
# Lost or busy connections as the drivers report them, whatever their SQLSTATE.
_GONE_WORDS = ("connection is closed", "connection was closed", "terminating connection",
               "unable to open database", "server closed the connection")


def _sqlstate(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return ""


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says the store could not be reached (rather than refused a statement)."""
    if isinstance(error, OSError | TimeoutError | sa_exc.TimeoutError):
        return True  # refused or timed-out connections, an exhausted pool
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        state = _sqlstate(error)
        if state.startswith("08") or state in _GONE_STATES:
            return True
        if isinstance(error.orig, OSError | TimeoutError):
            return True
        if isinstance(error, sa_exc.InterfaceError | sa_exc.OperationalError):
            text = str(error).lower()
            return any(word in text for word in _GONE_WORDS)
    return False


def is_conflict(error: BaseException) -> bool:
    """A deadlock or serialization failure: nothing is wrong, run the transaction again."""
    return isinstance(error, sa_exc.DBAPIError) and _sqlstate(error) in _RETRY_STATES


class StoreGate:
    """Whether the store answers, as this process last saw it."""

    def __init__(self, db: AsyncEngine, *, first_delay: float = 0.1,
                 max_delay: float = 2.0) -> None:
        self._db = db
        self._first, self._max = first_delay, max_delay
        self._up = asyncio.Event()
        self._up.set()
        self._probe: asyncio.Task[None] | None = None
        self._down_at: float | None = None
        # When the store last came back (monotonic); 0.0 if this process never lost it.
        self.back_at = 0.0
        self.outages = 0

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def steady_for(self) -> float:
        """Seconds since the store last came back (infinite if it never went)."""
        if not self.up:
            return 0.0
        return float("inf") if self.back_at == 0.0 else time.monotonic() - self.back_at

    async def wait_up(self) -> None:
        await self._up.wait()

    def down(self, error: BaseException, what: str) -> None:
        """``what`` failed because the store is unreachable: hold work until it answers."""
        if not self.up:
            return
        self._up.clear()
        self._down_at = time.monotonic()
        self.outages += 1
        log.warning("store unreachable; work paused until it answers", during=what,
                    error=f"{type(error).__name__}: {error}"[:300])
        self._probe = asyncio.create_task(self._wait_for_store())

    async def run(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``operation`` (a whole transaction); while the store is unreachable, wait
        for it and run it again. A deadlock runs it again at once. Other errors propagate.

        ``operation`` must be safe to run again: its transaction either committed or
        not, and an outage at COMMIT leaves that unknown.
        """
        conflicts = 0
        while True:
            await self._up.wait()
            try:
                return await operation()
            except Exception as error:
                if is_outage(error):
                    self.down(error, what)
                elif is_conflict(error) and conflicts < 5:
                    conflicts += 1
                    await asyncio.sleep(0.01 * conflicts)
                else:
                    raise

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)

    async def _wait_for_store(self) -> None:
        delay = self._first
        while True:
            await asyncio.sleep(delay)
            try:
                await ping(self._db)
            except Exception as error:
                if not is_outage(error):
                    log.warning("store probe failed", error=str(error)[:300])
                delay = min(delay * 2, self._max)
                continue
            break
        down_for = time.monotonic() - (self._down_at or time.monotonic())
        self.back_at = time.monotonic()
        self._up.set()
        log.warning("store answers again; work resumes", down_seconds=round(down_for, 2))

