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
  the parking queue (``<prefix>.parking``) instead of being delivered again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_PREFIX = "demat"


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
    delivery_count: int
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Delivery], Awaitable[None]]


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

    async def close(self) -> None: ...

    async def declare(self, queue: str) -> None:
        """Declare a work queue (idempotent) dead-lettering to the parking queue."""

    async def publish(self, queue: str, message: Message) -> None:
        """Persist ``message`` on ``queue``; raise :class:`Unroutable` if it does not exist."""

    async def publish_many(self, queue: str, messages: list[Message]) -> None:
        """Publish several messages with confirms in flight together."""

    async def publish_event(self, routing_key: str, body: bytes) -> None:
        """Publish a state event to the topic exchange (dropped if nobody listens)."""

    async def consume(self, queue: str, handler: Handler, prefetch: int = 10) -> Consumer:
        """Run ``handler`` for each delivery; ack on return, requeue on raise."""

    async def ready(self) -> bool:
        """True when the transport can publish now."""
