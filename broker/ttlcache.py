"""A small per-process cache of answers that change rarely (a token's owner, an entity)."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    """Keeps each answer ``seconds``; forgets everything past ``size`` entries."""

    def __init__(self, seconds: float = 10.0, size: int = 10_000) -> None:
        self._seconds = seconds
        self._size = size
        self._seen: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        hit = self._seen.get(key)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self._seen[key]
            return None
        return hit[1]

    def has(self, key: str) -> bool:
        hit = self._seen.get(key)
        return hit is not None and hit[0] > time.monotonic()

    def put(self, key: str, value: V) -> None:
        if len(self._seen) >= self._size:
            self._seen.clear()
        self._seen[key] = (time.monotonic() + self._seconds, value)

    def forget(self, key: str) -> None:
        """Drop ``key`` (its answer changed in this process)."""
        self._seen.pop(key, None)
