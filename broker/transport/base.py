"""The queue port: what the relay and the workers need from a message transport.

Two adapters implement it (``embedded`` and ``amqp``) and one contract suite
(``tests/contract/test_transport.py``) runs against both. The semantics every
adapter must keep:

* ``publish`` returns only once the transport holds the message (publisher
  confirm on AMQP) and raises :class:`Unroutable` when no queue would get it;
* a consumer's handler runs for each delivery; the delivery is acked only when
  the handler returns, and requeued when it raises or the consumer dies, with
  ``redelivered`` set and ``delivery_count`` increased;
* a message delivered more than ``delivery_limit`` times is dead-lettered to
  the parking queue (``<prefix>.parking``) instead of being delivered again,
  with the headers ``parked_from`` (the work queue) and ``parked_reason``;
* a state event published once a subscription exists reaches its handler when
  its routing key matches the subscription's topic pattern (``*`` one word,
  ``#`` any number), in publishing order; events are at most once here (a
  subscriber that was away catches up from the store's recent events).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_PREFIX = "demat"

# Headers of a delivery from the parking queue.
PARKED_FROM = "parked_from"
PARKED_REASON = "parked_reason"
REASON_DELIVERY_LIMIT = "delivery_limit"


class TransportError(Exception):
    """The transport could not do what was asked (connection, confirm, ...)."""


class Unroutable(TransportError):
    """A published message would reach no queue; it was not stored."""


@dataclass(frozen=True)
class Message:
    """A message as published: an opaque body plus a stable id."""

    body: bytes
    message_id: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """A message as received by a consumer."""

    body: bytes
    message_id: str
    queue: str
    redelivered: bool
    # 1 on the first delivery; counts every delivery, crashes included.
    # A parked message starts again at 1 on the parking queue.
    delivery_count: int
    # The published headers; transport-internal ones (``x-...``) are left out.
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Delivery], Awaitable[None]]
# A state event: (routing key, body).
EventHandler = Callable[[str, bytes], Awaitable[None]]


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: words split on dots, ``*`` is one word, ``#`` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


class Consumer(Protocol):
    async def cancel(self) -> None:
        """Stop receiving; deliveries not yet acked go back to the queue."""


class Transport(Protocol):
    name: str
    # Names: work queues ``<prefix>.<connector>``, ``<prefix>.parking``, ``<prefix>.events``.
    prefix: str
    parking_queue: str
    events_exchange: str

    def work_queue(self, connector: str) -> str:
        """The work queue of one connector, e.g. ``demat.depot``."""

    async def start(self) -> None:
        """Connect and declare the parking queue and the events exchange."""

    async def close(self) -> None:
        """Cancel the consumers (their deliveries are requeued) and disconnect."""

    async def declare(self, queue: str) -> None:
        """Declare a work queue (idempotent) dead-lettering to the parking queue."""

    async def publish(self, queue: str, message: Message) -> None:
        """Persist ``message`` on ``queue``; raise :class:`Unroutable` if it does not exist."""

    async def publish_many(self, queue: str, messages: list[Message]) -> None:
        """Publish several messages with confirms in flight together.

        Returns once every message is held; raises the first failure otherwise,
        after all publishes have settled (some messages may then be stored).
        """

    async def publish_event(self, routing_key: str, body: bytes) -> None:
        """Publish a state event to the topic exchange (dropped if nobody listens)."""

    async def subscribe(self, pattern: str, handler: EventHandler) -> Consumer:
        """Run ``handler(routing_key, body)`` for each state event matching ``pattern``."""

    async def consume(self, queue: str, handler: Handler, prefetch: int = 10) -> Consumer:
        """Run ``handler`` for each delivery, at most ``prefetch`` at a time.

        Ack on return, requeue on raise or cancellation.
        """

    async def ready(self) -> bool:
        """True when the transport can publish now."""

    async def depth(self, queue: str) -> int | None:
        """Messages waiting on ``queue`` (deliveries in flight excluded); None when the
        queue does not exist or the broker does not answer."""


class QueueNames:
    """The names every adapter derives from its prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.parking_queue = f"{prefix}.parking"
        self.events_exchange = f"{prefix}.events"

    def work_queue(self, connector: str) -> str:
        return f"{self.prefix}.{connector}"
