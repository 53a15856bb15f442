"""Group commit: concurrent callers share one database transaction.

Each caller hands one item and awaits its own result; one flush at a time runs
the batch function on every item waiting, so while a transaction is in flight
the next callers gather for the following one. Under load that turns N small
transactions into a few large ones; alone, a caller waits for nothing extra.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from broker.metrics import BATCH_ITEMS

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, name: str, flush: Callable[[list[T]], Awaitable[Sequence[R]]],
                 max_size: int = 64) -> None:
        self._items = BATCH_ITEMS.labels(name)
        self._flush = flush
        self._max = max_size
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # Read the outcome even if the caller has gone, so no error goes unretrieved.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        # A caller that gives up does not stop the batch: its item is written anyway,
        # as it would be had it been cancelled just after its own commit.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:self._max]
                del self._waiting[:self._max]
                self._items.observe(len(batch))
                try:
                    results = await self._flush([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"a flush gave {len(results)} results for "
                                           f"{len(batch)} items")
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
            # Cancelled mid-flush (shutdown): later callers must not wait forever.
            for _, future in self._waiting:
                if not future.done():
                    future.cancel()
            self._waiting.clear()
