"""Group commit: callers that arrive together share one flush; failures reach each caller."""

from __future__ import annotations

import asyncio

import pytest

from broker.batch import Batcher
from broker.store.db import padded


async def test_concurrent_callers_share_flushes_and_get_their_own_results() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher("test", flush, max_size=8)
    results = await asyncio.gather(*(batcher(i) for i in range(20)))
    assert results == [i * 10 for i in range(20)]
    assert sorted(i for f in flushes for i in f) == list(range(20))
    assert len(flushes) < 20 and max(len(f) for f in flushes) <= 8


async def test_a_lone_caller_is_flushed_at_once() -> None:
    async def flush(items: list[str]) -> list[str]:
        return [s.upper() for s in items]

    batcher: Batcher[str, str] = Batcher("test", flush)
    assert await asyncio.wait_for(batcher("a"), 1) == "A"
    assert await asyncio.wait_for(batcher("b"), 1) == "B"


async def test_a_failed_flush_fails_its_callers_only() -> None:
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise RuntimeError("store down")
        return items

    batcher: Batcher[int, int] = Batcher("test", flush, max_size=2)
    first = await asyncio.gather(batcher(1), batcher(2), batcher(3), return_exceptions=True)
    assert isinstance(first[0], RuntimeError) and isinstance(first[1], RuntimeError)
    assert first[2] == 3
    assert await batcher(4) == 4


async def test_a_caller_that_gives_up_does_not_stop_the_flush() -> None:
    written: list[int] = []
    release = asyncio.Event()

    async def flush(items: list[int]) -> list[None]:
        await release.wait()
        written.extend(items)
        return [None] * len(items)

    batcher: Batcher[int, None] = Batcher("test", flush)
    waiting = asyncio.create_task(batcher(1))
    await asyncio.sleep(0.01)
    waiting.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await batcher(2)
    assert written == [1, 2]


def test_in_lists_are_padded_to_powers_of_two() -> None:
    assert padded([1]) == [1]
    assert padded([1, 2, 3]) == [1, 2, 3, 3]
    assert padded(range(5)) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert len(padded(range(64))) == 64


async def test_a_flush_cancelled_at_shutdown_cancels_its_callers() -> None:
    started = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(10)
        return items

    batcher: Batcher[int, int] = Batcher("test", flush)
    caller = asyncio.create_task(batcher(1))
    await started.wait()
    assert batcher._task is not None
    batcher._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert batcher._task is None
