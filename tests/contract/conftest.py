"""Fixtures of the transport contract suite: every test runs on each adapter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import aio_pika
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity

from broker.transport import Delivery, EmbeddedTransport, Transport, TransportError
from broker.transport.amqp import AmqpTransport
from tests.tcpproxy import TcpProxy

DELIVERY_LIMIT = 3
WAIT = 5.0
# The work queues tests may declare; the amqp teardown deletes them.
WORK_QUEUES = ("jobs", "never-declared")


class Recorder:
    """Collects deliveries and waits, with a deadline, for a condition on them.

    With ``hold``, the handler keeps each delivery unacked until that event is set.
    """

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = asyncio.Event()
        self._hold = hold

    def add(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._changed.set()

    async def handler(self, delivery: Delivery) -> None:
        self.add(delivery)
        if self._hold is not None:
            await self._hold.wait()

    def ids(self) -> list[str]:
        return [delivery.message_id for delivery in self.deliveries]

    async def until(
        self, condition: Callable[[list[Delivery]], bool], within: float = WAIT
    ) -> None:
        async def wait() -> None:
            while not condition(self.deliveries):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"condition not met in {within}s; deliveries: {self.summary()}"
            ) from None

    async def count(self, n: int, within: float = WAIT) -> None:
        await self.until(lambda deliveries: len(deliveries) >= n, within)

    def summary(self) -> list[tuple[str, int, bool]]:
        return [(d.message_id, d.delivery_count, d.redelivered) for d in self.deliveries]


Depth = Callable[[str], Awaitable[int | None]]


def embedded_depth(transport: EmbeddedTransport) -> Depth:
    async def depth(queue: str) -> int | None:
        try:
            return transport.queue_size(queue)
        except TransportError:
            return None

    return depth


def amqp_depth(connection: aio_pika.abc.AbstractConnection) -> Depth:
    """Seen from a connection of its own, so nothing of the adapter is trusted."""

    async def depth(queue: str) -> int | None:
        # A channel per check: a failed passive declare closes it.
        async with connection.channel() as channel:
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except ChannelNotFoundEntity:
                return None
            return declared.declaration_result.message_count

    return depth


async def drop(url: str, queues: Iterable[str], exchanges: Iterable[str]) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


@contextlib.asynccontextmanager
async def started(
    kind: str, prefix: str, url: str = "", *, via: str | None = None
) -> AsyncIterator[Transport]:
    """A started transport; an AMQP one connects through ``via`` when given."""
    transport: Transport
    if kind == "embedded":
        transport = EmbeddedTransport(delivery_limit=DELIVERY_LIMIT, prefix=prefix)
    else:
        transport = AmqpTransport(
            via or url, delivery_limit=DELIVERY_LIMIT, prefix=prefix, timeout=WAIT
        )
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()
        if kind == "amqp":
            names = [transport.work_queue(name) for name in WORK_QUEUES]
            await drop(
                url,
                [*names, transport.parking_queue],
                [transport.parking_queue, transport.events_exchange],
            )


@pytest.fixture(params=["embedded", pytest.param("amqp", marks=pytest.mark.amqp)])
async def transport(request: pytest.FixtureRequest, amqp_prefix: str) -> AsyncIterator[Transport]:
    url = request.getfixturevalue("amqp_url") if request.param == "amqp" else ""
    async with started(request.param, amqp_prefix, url) as transport:
        yield transport


@pytest.fixture
async def amqp_transport(amqp_url: str, amqp_prefix: str) -> AsyncIterator[AmqpTransport]:
    async with started("amqp", amqp_prefix, amqp_url) as transport:
        assert isinstance(transport, AmqpTransport)
        yield transport


@pytest.fixture
async def depth(transport: Transport, request: pytest.FixtureRequest) -> AsyncIterator[Depth]:
    """Messages ready on a queue (``None`` when it does not exist)."""
    if isinstance(transport, EmbeddedTransport):
        yield embedded_depth(transport)
        return
    # Opened beforehand so that a check right after a publish takes a single round trip.
    async with await aio_pika.connect(request.getfixturevalue("amqp_url")) as connection:
        yield amqp_depth(connection)


@pytest.fixture
async def queue(transport: Transport) -> str:
    name = transport.work_queue("jobs")
    await transport.declare(name)
    return name


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(amqp_url)
    await proxy.start()
    yield proxy
    await proxy.cut()
