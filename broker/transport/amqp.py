"""RabbitMQ transport (aio-pika): quorum work queues, publisher confirms, a parking queue.

Work queues are quorum queues with a delivery limit; over the limit RabbitMQ
dead-letters the message (at-least-once) through the fanout exchange
``<prefix>.parking`` to the queue of the same name. Consumers ack only once the
handler returned and reject with requeue when it raised, which on RabbitMQ 3.10
counts toward the limit, as do lost channels.

The connection is robust: after a loss it reconnects and restores the
consumers; a publish meanwhile waits for it, at most ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    AbstractRobustQueue,
    FieldValue,
    HeadersType,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError

from broker.transport.base import (
    DEFAULT_PREFIX,
    PARKED_FROM,
    PARKED_REASON,
    Consumer,
    Delivery,
    EventHandler,
    Handler,
    Message,
    QueueNames,
    TransportError,
    Unroutable,
)

log = logging.getLogger(__name__)

# Confirm throughput stops improving past about 100 publishes in flight.
PUBLISH_WINDOW = 100
_FAILURES = (*CONNECTION_EXCEPTIONS, TimeoutError)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except _FAILURES as exc:
        raise TransportError(f"{action}: {exc!r}") from exc


class AmqpTransport(QueueNames):
    name = "amqp"

    def __init__(
        self,
        url: str,
        delivery_limit: int = 50,
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(prefix)
        self.delivery_limit = delivery_limit
        self._url = url
        # Some robust operations wait for a reconnection without limit: bound every wait.
        self._timeout = timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._events: AbstractRobustExchange | None = None
        # Strong references: robust objects only weakly held are not restored (aio-pika #536).
        self._keep: list[AbstractRobustExchange | AbstractRobustQueue] = []
        self._consumers: set[_AmqpConsumer] = set()
        self._subscriptions: set[_EventSubscription] = set()

    async def start(self) -> None:
        with _translated("cannot connect to RabbitMQ"):
            self._connection = await aio_pika.connect_robust(self._url, timeout=self._timeout)
        try:
            with _translated("cannot declare the parking queue and the events exchange"):
                self._channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                parking = await self._channel.declare_exchange(
                    self.parking_queue, aio_pika.ExchangeType.FANOUT, durable=True
                )
                queue = await self._declare(self._channel, self.parking_queue)
                await queue.bind(parking)
                self._events = await self._channel.declare_exchange(
                    self.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                self._keep += [parking, queue, self._events]
        except TransportError:
            await self.close()
            raise

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.cancel()
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        connection, self._connection = self._connection, None
        self._channel = self._events = None
        self._keep.clear()
        if connection is not None:
            with contextlib.suppress(*_FAILURES):
                await asyncio.wait_for(connection.close(), self._timeout)

    async def declare(self, queue: str) -> None:
        with _translated(f"cannot declare {queue!r}"):
            self._keep.append(await self._declare(self._publisher(), queue))

    async def publish(self, queue: str, message: Message) -> None:
        headers: HeadersType = {**message.headers}
        amqp_message = aio_pika.Message(
            message.body,
            message_id=message.message_id,
            headers=headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        channel = self._publisher()

        async def send() -> None:
            # Rides out a reconnection instead of failing on the lost channel.
            await channel.ready()
            await channel.default_exchange.publish(amqp_message, routing_key=queue, mandatory=True)

        try:
            async with asyncio.timeout(self._timeout):
                await send()
        except PublishError as exc:
            raise Unroutable(f"no queue {queue!r} for {message.message_id}") from exc
        except DeliveryError as exc:
            raise TransportError(f"broker refused {message.message_id} on {queue!r}") from exc
        except _FAILURES as exc:
            raise TransportError(f"{message.message_id} on {queue!r} not confirmed") from exc

    async def publish_many(self, queue: str, messages: list[Message]) -> None:
        window = asyncio.Semaphore(PUBLISH_WINDOW)

        async def one(message: Message) -> None:
            async with window:
                await self.publish(queue, message)

        results = await asyncio.gather(*map(one, messages), return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            failures[0].add_note(f"{len(failures)} of {len(messages)} publishes failed")
            raise failures[0]

    async def publish_event(self, routing_key: str, body: bytes) -> None:
        if self._events is None:
            raise TransportError("amqp transport is not started")
        event = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        with _translated(f"event {routing_key!r} not confirmed"):
            # Not mandatory: an event nobody listens to is not an error.
            async with asyncio.timeout(self._timeout):
                await self._events.publish(event, routing_key, mandatory=False)

    async def subscribe(self, pattern: str, handler: EventHandler) -> Consumer:
        if self._connection is None or self._events is None:
            raise TransportError("amqp transport is not started")
        # A queue of this subscriber's own, gone with its connection. Named here, not by the
        # server: a robust channel declares it again under the same name after a reconnect.
        name = f"{self.events_exchange}.{uuid.uuid4().hex}"
        with _translated(f"cannot subscribe to {pattern!r}"):
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=100)
            queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.bind(self.events_exchange, routing_key=pattern)
        subscription = _EventSubscription(channel, queue, handler, self._timeout,
                                          self._subscriptions.discard)
        with _translated(f"cannot subscribe to {pattern!r}"):
            await subscription.start()
        self._subscriptions.add(subscription)
        return subscription

    async def consume(self, queue: str, handler: Handler, prefetch: int = 10) -> Consumer:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")  # 0 would mean unlimited to AMQP
        if self._connection is None:
            raise TransportError("amqp transport is not started")
        with _translated(f"cannot consume {queue!r}"):
            # Its own channel: closing it is what requeues the consumer's unacked deliveries.
            channel = await self._connection.channel()
        consumer = _AmqpConsumer(channel, handler, self._timeout, self._consumers.discard)
        try:
            with _translated(f"cannot consume {queue!r}"):
                await channel.set_qos(prefetch_count=prefetch)
                # Passive: consuming must not create a queue with other arguments.
                await consumer.start(await channel.declare_queue(queue, passive=True))
        except TransportError:
            await consumer.cancel()
            raise
        self._consumers.add(consumer)
        return consumer

    async def ready(self) -> bool:
        connection, channel = self._connection, self._channel
        # The channel reopens only after the connection is back.
        return (
            connection is not None
            and connection.connected.is_set()
            and channel is not None
            and not channel.is_closed
        )

    async def depth(self, queue: str) -> int | None:
        connection = self._connection
        if connection is None or not connection.connected.is_set():
            return None
        try:
            # A channel of its own: a passive declare of a missing queue closes it.
            async with connection.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
        except (*CONNECTION_EXCEPTIONS, aio_pika.exceptions.AMQPError):
            return None
        return declared.declaration_result.message_count

    def _publisher(self) -> AbstractRobustChannel:
        if self._channel is None:
            raise TransportError("amqp transport is not started")
        return self._channel

    async def _declare(self, channel: AbstractRobustChannel, queue: str) -> AbstractRobustQueue:
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if queue != self.parking_queue:
            arguments |= {
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.parking_queue,
                "x-dead-letter-strategy": "at-least-once",
                # at-least-once dead-lettering requires reject-publish.
                "x-overflow": "reject-publish",
            }
        return await channel.declare_queue(queue, durable=True, arguments=arguments)


class _AmqpConsumer:
    def __init__(
        self,
        channel: AbstractRobustChannel,
        handler: Handler,
        timeout: float,
        forget: Callable[[_AmqpConsumer], None],
    ) -> None:
        self._channel = channel
        self._handler = handler
        self._timeout = timeout
        self._forget = forget
        self._queue: AbstractRobustQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._cancelled = False

    async def start(self, queue: AbstractRobustQueue) -> None:
        self._queue = queue
        self._tag = await queue.consume(self._on_message)

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._forget(self)
        if self._queue is not None and self._tag is not None:
            await self._quietly(self._queue.cancel(self._tag))
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Even when lost: a closed robust channel is not reopened on reconnection.
        with contextlib.suppress(*_FAILURES):
            await asyncio.wait_for(self._channel.close(), self._timeout)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._cancelled or self._queue is None:
            return  # left unacked: closing the channel requeues it
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._handler(_delivery(message, self._queue.name))
        except asyncio.CancelledError:
            await self._quietly(message.reject(requeue=True))
            raise
        except Exception:
            log.warning(
                "handler failed on %s from %s, requeued",
                message.message_id,
                self._queue.name,
                exc_info=True,
            )
            await self._quietly(message.reject(requeue=True))
        else:
            await self._quietly(message.ack())
        finally:
            self._in_flight.discard(task)

    async def _quietly(self, operation: Coroutine[Any, Any, Any]) -> None:
        # On a lost channel the broker has already requeued what was not acked,
        # and a robust channel would wait for the reconnection.
        if self._channel.is_closed:
            operation.close()
            return
        try:
            async with asyncio.timeout(self._timeout):
                await operation
        except _FAILURES as exc:
            log.info("ignored on a lost channel: %r", exc)


class _EventSubscription:
    """State events matching one pattern, handled one at a time in order, at most once."""

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: AbstractRobustQueue,
        handler: EventHandler,
        timeout: float,
        forget: Callable[[_EventSubscription], None],
    ) -> None:
        self._channel, self._queue, self._handler = channel, queue, handler
        self._timeout, self._forget = timeout, forget
        self._tag: str | None = None
        self._order = asyncio.Lock()

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_event, no_ack=True)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        async with self._order:
            try:
                await self._handler(message.routing_key or "", message.body)
            except Exception:
                log.warning("event handler failed on %s", message.routing_key, exc_info=True)

    async def cancel(self) -> None:
        self._forget(self)
        with contextlib.suppress(*_FAILURES):
            if self._tag is not None and not self._channel.is_closed:
                await asyncio.wait_for(self._queue.cancel(self._tag), self._timeout)
            await asyncio.wait_for(self._channel.close(), self._timeout)


def _delivery(message: AbstractIncomingMessage, queue: str) -> Delivery:
    raw = message.headers
    headers = {
        key: text
        for key, value in raw.items()
        if not key.startswith("x-") and (text := _text(value)) is not None
    }
    headers.update(_parked(raw))
    # Quorum queues count earlier deliveries in x-delivery-count, absent on the first one.
    earlier = raw.get("x-delivery-count")
    return Delivery(
        body=message.body,
        message_id=message.message_id or "",
        queue=queue,
        redelivered=bool(message.redelivered),
        delivery_count=earlier + 1 if isinstance(earlier, int) else 1,
        headers=headers,
    )


def _parked(raw: HeadersType) -> dict[str, str]:
    deaths = raw.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return {}
    # The most recent dead-lettering comes first.
    last = deaths[0]
    return {PARKED_FROM: str(last.get("queue", "")), PARKED_REASON: str(last.get("reason", ""))}


def _text(value: FieldValue) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, int | float):
        return str(value)
    return None
