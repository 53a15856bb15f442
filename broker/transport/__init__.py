"""Message transport: the port (``base``) and its two adapters."""

from __future__ import annotations

from broker.transport.base import (
    DEFAULT_PREFIX,
    PARKED_FROM,
    PARKED_REASON,
    REASON_DELIVERY_LIMIT,
    Consumer,
    Delivery,
    Handler,
    Message,
    Transport,
    TransportError,
    Unroutable,
)
from broker.transport.embedded import EmbeddedTransport

__all__ = [
    "DEFAULT_PREFIX",
    "PARKED_FROM",
    "PARKED_REASON",
    "REASON_DELIVERY_LIMIT",
    "Consumer",
    "Delivery",
    "EmbeddedTransport",
    "Handler",
    "Message",
    "Transport",
    "TransportError",
    "Unroutable",
    "make_transport",
]


def make_transport(
    amqp_url: str | None, *, delivery_limit: int = 50, prefix: str = DEFAULT_PREFIX
) -> Transport:
    """The AMQP adapter when a broker URL is configured, the embedded one otherwise."""
    if not amqp_url:
        return EmbeddedTransport(delivery_limit=delivery_limit, prefix=prefix)
    # Imported here so the embedded mode does not load aio-pika.
    from broker.transport.amqp import AmqpTransport

    return AmqpTransport(amqp_url, delivery_limit=delivery_limit, prefix=prefix)
