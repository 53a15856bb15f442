"""Sending to a peer at most once, and keeping what it answers at once.

A create call whose answer is lost (a crash, a timeout) may have created. So an intent
mark (the day) is saved before the first call, and any run that finds the mark, or any
in-call retry, looks the object up at the peer first and adopts what it finds; a peer
that refuses a duplicate leads to the same look-up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Protocol

from connectors.base import NewFile, PermanentError, StepContext

# Without an intent mark (no save_ref), the look-up covers this many days.
LOOKUP_DAYS = 31


class Found(Protocol):
    @property
    def id(self) -> str: ...


async def keep_file(ctx: StepContext, role: str, name: str, data: bytes,
                    content_type: str = "application/xml") -> tuple[NewFile, ...]:
    """Store a peer's message at once; the files for the outcome when that is not possible."""
    path = ctx.scratch(name)
    await asyncio.to_thread(path.write_bytes, data)
    new = NewFile(role=role, name=name, path=path, content_type=content_type)
    if ctx.save_file is None:
        return (new,)
    await ctx.save_file(new)
    return ()


async def save_ref(ctx: StepContext, key: str, value: str) -> None:
    if ctx.save_ref is not None:
        await ctx.save_ref(key, value)


async def create_once(
    ctx: StepContext,
    mark: str,
    look_up: Callable[[dt.date | None], Awaitable[Found | None]],
    create: Callable[[], Awaitable[str]],
    duplicate_ko: str,
) -> str:
    """Create at the peer at most once: look up first whenever an earlier try may have created."""
    started = ctx.refs.get(mark)
    today = dt.date.today()
    # Without a way to record intent, every run may follow a lost create: always look up.
    earlier = started is not None or ctx.save_ref is None
    since = (
        dt.date.fromisoformat(started) - dt.timedelta(days=1)
        if started
        else today - dt.timedelta(days=LOOKUP_DAYS)
    )
    if started is None:
        await save_ref(ctx, mark, today.isoformat())
    tries = 0

    async def one_try() -> str:
        nonlocal tries
        tries += 1
        if earlier or tries > 1:
            found = await look_up(since)
            if found is not None:
                return found.id
        try:
            return await create()
        except PermanentError as exc:
            if duplicate_ko not in exc.message:
                raise
            found = await look_up(None)
            if found is None:
                raise
            return found.id

    return await ctx.call(one_try)
