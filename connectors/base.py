"""Helpers for connectors, and the connector contract they implement (``broker.connector``).

A connector speaks one peer's wire protocol (``client.py``) and turns a step
into an outcome (``connector.py``).
"""

from __future__ import annotations

import asyncio

import aiohttp

# The contract, re-exported: connectors import it from here with their helpers.
from broker.connector import *  # noqa: F403
from broker.connector import PermanentError, TransientError
from broker.connector import __all__ as _contract
from broker.retry import parse_retry_after

__all__ = [*_contract, "error_for_status", "transient_from"]


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def error_for_status(resp: aiohttp.ClientResponse, what: str) -> None:
    """Raise the right step error for a non-2xx answer; return on 2xx.

    408, 425, 429 and 5xx are transient (with the peer's Retry-After); other
    4xx are permanent and quote the peer's answer so a person can act on it.
    """
    if resp.status < 300:
        return
    body = _excerpt(await resp.text(errors="replace"))
    message = f"{what}: HTTP {resp.status} {resp.reason or ''}".rstrip()
    if body:
        message = f"{message}: {body}"
    if resp.status in (408, 425, 429) or resp.status >= 500:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise TransientError(message, retry_after=retry_after)
    raise PermanentError(message)


def transient_from(exc: BaseException, what: str) -> TransientError:
    """A TransientError for a connection-level failure (refused, reset, timeout)."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return TransientError(f"{what}: timed out")
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")
