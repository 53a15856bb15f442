"""Store outages told from refused statements, and waited out without a hot loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from broker.store.outage import StoreGate, is_conflict, is_outage


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def dbapi(cls: type[sa_exc.DBAPIError], orig: BaseException, *,
          invalidated: bool = False) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize("error", [
    ConnectionRefusedError(111, "Connect call failed"),
    TimeoutError(),
    sa_exc.TimeoutError("QueuePool limit reached"),
    dbapi(sa_exc.DBAPIError, Exception("boom"), invalidated=True),
    dbapi(sa_exc.OperationalError, PgError("57P01")),  # admin shutdown (a restart)
    dbapi(sa_exc.OperationalError, PgError("57P03")),  # the database system is starting up
    dbapi(sa_exc.InterfaceError, PgError("08006")),    # connection failure
    dbapi(sa_exc.InterfaceError, Exception("connection is closed")),
    dbapi(sa_exc.OperationalError, ConnectionResetError()),
], ids=lambda e: type(e).__name__)
def test_lost_or_refused_connections_are_outages(error: BaseException) -> None:
    assert is_outage(error)


@pytest.mark.parametrize("error", [
    dbapi(sa_exc.IntegrityError, PgError("23505")),     # unique violation
    dbapi(sa_exc.ProgrammingError, PgError("42P01")),   # no such table
    dbapi(sa_exc.OperationalError, PgError("40P01")),   # deadlock: a conflict, not an outage
    ValueError("bad value"),
], ids=lambda e: type(e).__name__)
def test_refused_statements_are_not_outages(error: BaseException) -> None:
    assert not is_outage(error)


def test_deadlocks_and_serialization_failures_are_conflicts() -> None:
    assert is_conflict(dbapi(sa_exc.OperationalError, PgError("40P01")))
    assert is_conflict(dbapi(sa_exc.OperationalError, PgError("40001")))
    assert not is_conflict(dbapi(sa_exc.IntegrityError, PgError("23505")))


class FlakyStore:
    """Stands in for the engine the gate probes: answers after ``down_for`` probes."""

    def __init__(self, down_for: int) -> None:
        self.down_for = down_for
        self.probes = 0

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        self.probes += 1
        if self.probes <= self.down_for:
            raise ConnectionRefusedError(111, "refused")
        yield self

    async def execute(self, _statement: Any) -> None:
        return None


async def test_work_waits_during_an_outage_and_runs_again_once_the_store_answers() -> None:
    store = FlakyStore(down_for=3)
    gate = StoreGate(store, first_delay=0.01, max_delay=0.04)  # type: ignore[arg-type]
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError(111, "refused")
        return "done"

    assert gate.steady_for() == float("inf")
    assert await asyncio.wait_for(gate.run(operation, "test"), 2) == "done"
    # Tried once, then again only after the probes found the store: no hot loop.
    assert calls == 2 and store.probes == 4
    assert gate.up and gate.outages == 1 and gate.steady_for() < 1.0
    await gate.close()


async def test_the_probe_backs_off_to_its_cap() -> None:
    store = FlakyStore(down_for=10**9)
    gate = StoreGate(store, first_delay=0.01, max_delay=0.05)  # type: ignore[arg-type]
    gate.down(ConnectionRefusedError(111, "refused"), "test")
    await asyncio.sleep(0.5)
    assert not gate.up and gate.steady_for() == 0.0
    # 0.01 + 0.02 + 0.04, then every 0.05 s: about 10 probes in half a second, not thousands.
    assert 5 <= store.probes <= 14, store.probes
    await gate.close()


async def test_a_deadlock_runs_the_transaction_again_and_other_errors_propagate() -> None:
    gate = StoreGate(FlakyStore(0))  # type: ignore[arg-type]
    tries = 0

    async def deadlocked_once() -> int:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise dbapi(sa_exc.OperationalError, PgError("40P01"))
        return tries

    assert await gate.run(deadlocked_once, "test") == 2

    async def refused() -> None:
        raise dbapi(sa_exc.IntegrityError, PgError("23505"))

    with pytest.raises(sa_exc.IntegrityError):
        await gate.run(refused, "test")
    assert gate.up and gate.outages == 0
