"""The transport contract: every test runs on each adapter (see ``conftest.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
import pytest

from broker.transport import (
    PARKED_FROM,
    PARKED_REASON,
    Delivery,
    Message,
    Transport,
    TransportError,
    Unroutable,
    make_transport,
)
from broker.transport.amqp import AmqpTransport
from broker.transport.base import topic_matches
from tests.contract.conftest import DELIVERY_LIMIT, WAIT, Depth, Recorder, TcpProxy, started


async def eventually(condition: Callable[[], Awaitable[bool]], step: float = 0.01) -> None:
    for _ in range(int(WAIT / step)):
        if await condition():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"{condition.__name__} still false after {WAIT}s")


async def not_ready(transport: Transport) -> bool:
    return not await transport.ready()


def messages(count: int) -> list[Message]:
    return [
        Message(body=f"body {n}".encode(), message_id=f"m-{n}", headers={"flow": "actes"})
        for n in range(count)
    ]


async def test_every_message_is_delivered_at_least_once(transport: Transport, queue: str) -> None:
    sent = messages(200)
    await transport.publish_many(queue, sent)
    got = Recorder()
    await transport.consume(queue, got.handler, prefetch=20)

    expected = {message.message_id for message in sent}
    await got.until(lambda _: set(got.ids()) >= expected)

    assert expected - set(got.ids()) == set()
    assert all(d.body == f"body {d.message_id[2:]}".encode() for d in got.deliveries)
    assert all(d.headers == {"flow": "actes"} and d.queue == queue for d in got.deliveries)
    assert [d for d in got.deliveries if d.redelivered or d.delivery_count != 1] == []


async def test_prefetch_bounds_the_deliveries_in_flight(transport: Transport, queue: str) -> None:
    await transport.publish_many(queue, messages(12))
    release = asyncio.Event()
    held = Recorder(hold=release)
    await transport.consume(queue, held.handler, prefetch=5)

    await held.count(5)
    await asyncio.sleep(0.2)  # room for a sixth delivery if prefetch leaked
    assert len(held.deliveries) == 5

    release.set()
    await held.count(12)
    assert sorted(held.ids()) == sorted(m.message_id for m in messages(12))


async def test_consumers_of_one_queue_share_the_work(transport: Transport, queue: str) -> None:
    await transport.publish_many(queue, messages(2))
    release = asyncio.Event()
    first, second = Recorder(hold=release), Recorder(hold=release)
    await transport.consume(queue, first.handler, prefetch=1)
    await transport.consume(queue, second.handler, prefetch=1)

    await first.count(1)
    await second.count(1)
    assert sorted(first.ids() + second.ids()) == ["m-0", "m-1"]
    release.set()


@pytest.mark.parametrize("failure", [RuntimeError, asyncio.CancelledError])
async def test_a_failed_delivery_is_requeued(
    transport: Transport, queue: str, failure: type[BaseException]
) -> None:
    await transport.publish_many(queue, messages(10))
    seen, done = Recorder(), Recorder()

    async def fail_once_on_m3(delivery: Delivery) -> None:
        seen.add(delivery)
        if delivery.message_id == "m-3" and delivery.delivery_count == 1:
            raise failure("first try fails")
        done.add(delivery)

    await transport.consume(queue, fail_once_on_m3, prefetch=5)
    await done.count(10)

    assert sorted(done.ids()) == sorted(m.message_id for m in messages(10))
    retried = [(d.redelivered, d.delivery_count) for d in seen.deliveries if d.message_id == "m-3"]
    assert retried == [(False, 1), (True, 2)]
    others = [(d.redelivered, d.delivery_count) for d in seen.deliveries if d.message_id != "m-3"]
    assert others == [(False, 1)] * 9


async def test_a_cancelled_consumer_gives_its_delivery_back(
    transport: Transport, queue: str
) -> None:
    await transport.publish(queue, Message(b"job", "m-0"))
    stuck = Recorder(hold=asyncio.Event())
    dying = await transport.consume(queue, stuck.handler, prefetch=1)
    await stuck.count(1)

    await asyncio.wait_for(dying.cancel(), WAIT)
    got = Recorder()
    await transport.consume(queue, got.handler)
    await got.count(1)

    assert stuck.summary() == [("m-0", 1, False)]
    assert got.summary() == [("m-0", 2, True)]


async def test_a_lost_connection_gives_its_delivery_back(
    amqp_transport: AmqpTransport, proxy: TcpProxy
) -> None:
    queue = amqp_transport.work_queue("jobs")
    await amqp_transport.declare(queue)
    await amqp_transport.publish(queue, Message(b"job", "m-0"))
    remote = AmqpTransport(
        proxy.url, delivery_limit=DELIVERY_LIMIT, prefix=amqp_transport.prefix, timeout=WAIT
    )
    await remote.start()
    try:
        stuck = Recorder(hold=asyncio.Event())
        await remote.consume(queue, stuck.handler, prefetch=1)
        await stuck.count(1)

        await proxy.cut()
        got = Recorder()
        await amqp_transport.consume(queue, got.handler)
        await got.count(1)

        assert got.summary() == [("m-0", 2, True)]
        assert not await remote.ready()
    finally:
        await asyncio.wait_for(remote.close(), WAIT)


async def test_the_transport_recovers_after_a_lost_connection(
    amqp_url: str, amqp_prefix: str, proxy: TcpProxy
) -> None:
    # Reconnect quickly; aio-pika waits 5 s by default.
    via = f"{proxy.url}?reconnect_interval=0.2"
    async with started("amqp", amqp_prefix, amqp_url, via=via) as transport:
        queue = transport.work_queue("jobs")
        await transport.declare(queue)
        got = Recorder()
        await transport.consume(queue, got.handler)

        await proxy.reset()
        await eventually(lambda: not_ready(transport))
        # Waits for the reconnection, then is confirmed.
        await transport.publish(queue, Message(b"meanwhile", "m-0"))
        assert await transport.ready()

        await got.count(1)
        assert got.summary() == [("m-0", 1, False)]


async def test_a_poison_message_is_parked(transport: Transport, queue: str, depth: Depth) -> None:
    await transport.publish(queue, Message(b"poison", "m-0", {"flow": "helios"}))
    tries, parked = Recorder(), Recorder()

    async def always_fail(delivery: Delivery) -> None:
        tries.add(delivery)
        raise ValueError("cannot parse")

    await transport.consume(queue, always_fail, prefetch=1)
    await transport.consume(transport.parking_queue, parked.handler)
    await parked.count(1)
    await asyncio.sleep(0.3)  # a further delivery to the work consumer would show up now

    attempts = [(d.delivery_count, d.redelivered) for d in tries.deliveries]
    assert attempts == [(n, n > 1) for n in range(1, DELIVERY_LIMIT + 2)]
    assert [(d.message_id, d.body, d.queue) for d in parked.deliveries] == [
        ("m-0", b"poison", transport.parking_queue)
    ]
    [parked_delivery] = parked.deliveries
    assert parked_delivery.headers == {
        "flow": "helios",
        PARKED_FROM: queue,
        PARKED_REASON: "delivery_limit",
    }
    assert (parked_delivery.delivery_count, parked_delivery.redelivered) == (1, False)
    assert await depth(queue) == 0


async def test_publish_returns_once_the_message_is_stored(
    transport: Transport, queue: str, depth: Depth
) -> None:
    first, *rest = messages(50)
    await transport.publish(queue, first)
    assert await depth(queue) == 1
    for message in rest:
        await transport.publish(queue, message)
    assert await depth(queue) == 50

    got = Recorder()
    await transport.consume(queue, got.handler, prefetch=50)
    await got.count(50)
    assert sorted(got.ids()) == sorted(m.message_id for m in messages(50))


async def test_an_unroutable_publish_raises_and_stores_nothing(
    transport: Transport, queue: str, depth: Depth
) -> None:
    nowhere = transport.work_queue("never-declared")
    with pytest.raises(Unroutable):
        await transport.publish(nowhere, Message(b"lost", "m-0"))
    with pytest.raises(Unroutable):
        await transport.publish_many(nowhere, messages(3))

    assert await depth(nowhere) is None
    assert await depth(queue) == 0
    assert await depth(transport.parking_queue) == 0
    # The failure leaves the transport usable.
    await transport.publish(queue, Message(b"kept", "m-1"))
    assert await depth(queue) == 1


async def test_consuming_an_undeclared_queue_fails(transport: Transport, depth: Depth) -> None:
    nowhere = transport.work_queue("never-declared")
    with pytest.raises(TransportError):
        await transport.consume(nowhere, Recorder().handler)
    assert await depth(nowhere) is None


async def test_an_event_nobody_listens_to_is_dropped(transport: Transport) -> None:
    await transport.publish_event("depot.completed", b"{}")


async def test_events_reach_queues_bound_by_topic(
    amqp_transport: AmqpTransport, amqp_url: str
) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        listener = await channel.declare_queue(exclusive=True)
        await listener.bind(amqp_transport.events_exchange, routing_key="depot.#")

        await amqp_transport.publish_event("depot.completed", b'{"id": "d-1"}')
        await amqp_transport.publish_event("parapheur.signed", b'{"id": "d-2"}')

        event = await listener.get(timeout=WAIT)
        await event.ack()
        assert (event.routing_key, event.body) == ("depot.completed", b'{"id": "d-1"}')
        assert await listener.get(fail=False, timeout=WAIT) is None


class Events:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    async def handler(self, routing_key: str, body: bytes) -> None:
        self.got.append((routing_key, body))

    async def count(self, n: int) -> None:
        async def enough() -> bool:
            return len(self.got) >= n

        await eventually(enough)


async def test_subscribers_get_the_events_their_pattern_matches_in_order(
    transport: Transport,
) -> None:
    depot, everything, signed = Events(), Events(), Events()
    await transport.subscribe("depot.*", depot.handler)
    await transport.subscribe("#", everything.handler)
    await transport.subscribe("*.signed", signed.handler)
    sent = [("depot.completed", b"1"), ("actes.failed", b"2"), ("parapheur.signed", b"3"),
            ("depot.retrying", b"4"), ("depot.retrying.again", b"5")]
    for key, body in sent:
        await transport.publish_event(key, body)

    await everything.count(len(sent))
    await depot.count(2)
    await signed.count(1)
    await asyncio.sleep(0.2)  # a wrongly matched event would have arrived by now
    assert everything.got == sent
    assert depot.got == [("depot.completed", b"1"), ("depot.retrying", b"4")]
    assert signed.got == [("parapheur.signed", b"3")]


async def test_a_cancelled_subscription_gets_nothing_more(transport: Transport) -> None:
    events = Events()
    subscription = await transport.subscribe("#", events.handler)
    await transport.publish_event("depot.completed", b"1")
    await events.count(1)
    await subscription.cancel()
    await transport.publish_event("depot.completed", b"2")
    await asyncio.sleep(0.2)
    assert events.got == [("depot.completed", b"1")]


def test_topic_patterns_match_as_on_rabbitmq() -> None:
    assert topic_matches("#", "a.b") and topic_matches("a.#", "a") and topic_matches("a.#", "a.b.c")
    assert topic_matches("*.b", "a.b") and not topic_matches("*.b", "a.b.c")
    assert topic_matches("a.*.c", "a.x.c") and not topic_matches("a.*.c", "a.c")
    assert topic_matches("#.c", "c") and not topic_matches("a.b", "a.b.c")


async def test_ready_until_closed(transport: Transport) -> None:
    assert await transport.ready()
    await transport.close()
    assert not await transport.ready()


def test_make_transport_picks_the_adapter() -> None:
    assert make_transport(None).name == "embedded"
    assert make_transport("").name == "embedded"
    amqp = make_transport("amqp://guest:guest@127.0.0.1/", delivery_limit=3, prefix="x")
    assert (amqp.name, amqp.parking_queue, amqp.events_exchange) == (
        "amqp",
        "x.parking",
        "x.events",
    )


async def test_depth_counts_the_messages_waiting(transport: Transport, queue: str,
                                                 depth: Depth) -> None:
    for i in range(3):
        await transport.publish(queue, Message(b"x", f"depth-{i}"))
    assert await transport.depth(queue) == await depth(queue) == 3
    assert await transport.depth(f"{queue}.missing") is None
