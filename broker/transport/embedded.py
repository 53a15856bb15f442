"""In-process transport: asyncio queues with the delivery semantics of RabbitMQ.

Nothing here survives the process; the store re-dispatches unfinished work at
start. Everything else behaves as on the AMQP adapter, so the contract suite
can hold both to the same rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from broker.transport.base import (
    DEFAULT_PREFIX,
    PARKED_FROM,
    PARKED_REASON,
    REASON_DELIVERY_LIMIT,
    Consumer,
    Delivery,
    EventHandler,
    Handler,
    Message,
    QueueNames,
    TransportError,
    Unroutable,
    topic_matches,
)

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    message: Message
    deliveries: int = 0


_Settle = Callable[[str, _Entry, bool], None]


class EmbeddedTransport(QueueNames):
    name = "embedded"

    def __init__(self, delivery_limit: int = 50, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(prefix)
        self.delivery_limit = delivery_limit
        self._queues: dict[str, asyncio.Queue[_Entry]] = {}
        self._consumers: set[_EmbeddedConsumer] = set()
        self._subscriptions: set[_Subscription] = set()
        self._open = False

    async def start(self) -> None:
        self._open = True
        self._queues.setdefault(self.parking_queue, asyncio.Queue())

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.cancel()
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        self._open = False

    async def declare(self, queue: str) -> None:
        self._check_open()
        self._queues.setdefault(queue, asyncio.Queue())

    async def publish(self, queue: str, message: Message) -> None:
        self._existing(queue, Unroutable).put_nowait(_Entry(message))

    async def publish_many(self, queue: str, messages: list[Message]) -> None:
        for message in messages:
            await self.publish(queue, message)

    async def publish_event(self, routing_key: str, body: bytes) -> None:
        # Like a topic exchange: to every matching subscription, dropped if there is none.
        self._check_open()
        for subscription in self._subscriptions:
            if topic_matches(subscription.pattern, routing_key):
                subscription.put(routing_key, body)

    async def subscribe(self, pattern: str, handler: EventHandler) -> Consumer:
        self._check_open()
        subscription = _Subscription(pattern, handler, self._subscriptions.discard)
        self._subscriptions.add(subscription)
        return subscription

    async def consume(self, queue: str, handler: Handler, prefetch: int = 10) -> Consumer:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        source = self._existing(queue, TransportError)
        consumer = _EmbeddedConsumer(
            queue, source, handler, prefetch, settle=self._settle, forget=self._consumers.discard
        )
        self._consumers.add(consumer)
        return consumer

    async def ready(self) -> bool:
        return self._open

    async def depth(self, queue: str) -> int | None:
        queued = self._queues.get(queue) if self._open else None
        return None if queued is None else queued.qsize()

    def queue_size(self, queue: str) -> int:
        """Messages waiting on ``queue``, deliveries in flight excluded."""
        return self._existing(queue, TransportError).qsize()

    def _check_open(self) -> None:
        if not self._open:
            raise TransportError("embedded transport is not started")

    def _existing(self, queue: str, error: type[TransportError]) -> asyncio.Queue[_Entry]:
        self._check_open()
        try:
            return self._queues[queue]
        except KeyError:
            raise error(f"no queue {queue!r}") from None

    def _settle(self, queue: str, entry: _Entry, acked: bool) -> None:
        if acked:
            return
        # As on a quorum queue: the parking queue itself has no delivery limit.
        if entry.deliveries > self.delivery_limit and queue != self.parking_queue:
            headers = {
                **entry.message.headers,
                PARKED_FROM: queue,
                PARKED_REASON: REASON_DELIVERY_LIMIT,
            }
            parked = replace(entry.message, headers=headers)
            self._queues[self.parking_queue].put_nowait(_Entry(parked))
        else:
            self._queues[queue].put_nowait(entry)


class _EmbeddedConsumer:
    def __init__(
        self,
        name: str,
        source: asyncio.Queue[_Entry],
        handler: Handler,
        prefetch: int,
        *,
        settle: _Settle,
        forget: Callable[[_EmbeddedConsumer], None],
    ) -> None:
        self._name = name
        self._source = source
        self._handler = handler
        self._settle = settle
        self._forget = forget
        self._slots = asyncio.Semaphore(prefetch)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._receiver = asyncio.create_task(self._receive(), name=f"consume {name}")

    async def cancel(self) -> None:
        self._receiver.cancel()
        tasks = [self._receiver, *self._in_flight]
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._forget(self)

    async def _receive(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                entry = await self._source.get()
            except BaseException:
                self._slots.release()
                raise
            entry.deliveries += 1
            task = asyncio.create_task(self._run(self._delivery(entry)))
            self._in_flight.add(task)
            # Settling in a done callback also covers a task cancelled before it ever ran.
            task.add_done_callback(partial(self._finished, entry))

    async def _run(self, delivery: Delivery) -> None:
        await self._handler(delivery)

    def _finished(self, entry: _Entry, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        acked = not task.cancelled() and task.exception() is None
        if not acked and not task.cancelled():
            log.warning(
                "handler failed on %s from %s (delivery %d), requeued",
                entry.message.message_id,
                self._name,
                entry.deliveries,
                exc_info=task.exception(),
            )
        self._settle(self._name, entry, acked)

    def _delivery(self, entry: _Entry) -> Delivery:
        message = entry.message
        return Delivery(
            body=message.body,
            message_id=message.message_id,
            queue=self._name,
            redelivered=entry.deliveries > 1,
            delivery_count=entry.deliveries,
            headers=dict(message.headers),
        )


class _Subscription:
    """Events for one subscriber, handled in order by one task; a bounded backlog."""

    BACKLOG = 10_000

    def __init__(self, pattern: str, handler: EventHandler,
                 forget: Callable[[_Subscription], None]) -> None:
        self.pattern = pattern
        self._handler = handler
        self._forget = forget
        self._events: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(self.BACKLOG)
        self._task = asyncio.create_task(self._run(), name=f"events {pattern}")

    def put(self, routing_key: str, body: bytes) -> None:
        try:
            self._events.put_nowait((routing_key, body))
        except asyncio.QueueFull:
            # At most once, as on AMQP: the subscriber catches up from the store.
            log.warning("event subscriber %s is behind; event %s dropped", self.pattern,
                        routing_key)

    async def cancel(self) -> None:
        self._forget(self)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            routing_key, body = await self._events.get()
            try:
                await self._handler(routing_key, body)
            except Exception:
                log.warning("event handler for %s failed on %s", self.pattern, routing_key,
                            exc_info=True)
