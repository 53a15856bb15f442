"""Retries and polls: the two kinds of "try again later", kept apart.

* In-call retries: a few quick tries of one peer call for transient faults
  (tenacity), honouring a peer's ``Retry-After`` when it is short.
* Scheduled retries: once the quick tries are spent, the step is run again
  later following a backoff ladder with jitter, then the document fails and is
  parked with the last error.
* Polls: the peer is working; checks follow their own cadence up to a deadline
  and never consume the retry budget.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from broker.outcomes import TransientError

T = TypeVar("T")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    """``"500ms"``, ``"5s"``, ``"2m"``, ``"1h"``, ``"30d"`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 5s, 2m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_ladder(text: str) -> tuple[float, ...]:
    """A comma-separated backoff ladder, e.g. ``"10s,1m,5m,30m"``."""
    steps = tuple(parse_duration(part) for part in text.split(",") if part.strip())
    if not steps:
        raise ValueError("a backoff ladder needs at least one delay")
    return steps


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    reference = now or datetime.now(when.tzinfo)
    return max(0.0, (when - reference).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step is tried again."""

    # Quick tries inside one run of the step (1 = no in-call retry).
    in_call_attempts: int = 3
    in_call_initial: float = 0.2
    in_call_max: float = 2.0
    # A Retry-After longer than this is not slept in-call but scheduled.
    in_call_max_retry_after: float = 5.0
    # Delays before scheduled runs 2, 3, ...; its length is the retry budget.
    ladder: tuple[float, ...] = (10.0, 60.0, 300.0, 1800.0, 3600.0, 3 * 3600.0)
    jitter: float = 0.2

    @property
    def max_runs(self) -> int:
        return len(self.ladder) + 1

    def delay_before_run(self, run: int, rng: random.Random | None = None,
                         retry_after: float | None = None) -> float:
        """Delay before scheduled run ``run`` (2-based), jittered, never below Retry-After."""
        base = self.ladder[min(run - 2, len(self.ladder) - 1)]
        spread = base * self.jitter
        delay = base + (rng or random).uniform(-spread, spread)
        return max(delay, retry_after or 0.0, 0.0)


@dataclass(frozen=True)
class PollPolicy:
    """Cadence and deadline of the checks on a peer that is working."""

    first: float = 2.0
    factor: float = 1.5
    max_interval: float = 600.0
    deadline: float = 30 * 86400.0

    def interval(self, polls_done: int, asked: float | None = None) -> float:
        """Interval before the next check; a peer's own hint wins when shorter."""
        cadence = min(self.first * self.factor**polls_done, self.max_interval)
        return min(cadence, asked) if asked is not None and asked > 0 else cadence


@dataclass(frozen=True)
class AttemptRecord:
    """One failed in-call try, for the journal."""

    try_number: int
    error: str
    next_try_in: float


AttemptRecorder = Callable[[AttemptRecord], None]


@dataclass
class _RetryAfterWait:
    """Wait a peer's Retry-After when it gave one, else exponential with jitter."""

    fallback: wait_exponential_jitter
    cap: float

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, self.cap)
        return float(self.fallback(state))


@dataclass
class InCallRetry:
    """Runs one peer call with the policy's quick tries, recording each failure."""

    policy: RetryPolicy
    record: AttemptRecorder = field(default=lambda _record: None)

    async def __call__(self, call: Callable[[], Awaitable[T]]) -> T:
        policy = self.policy
        wait = _RetryAfterWait(
            wait_exponential_jitter(multiplier=policy.in_call_initial, max=policy.in_call_max,
                                    jitter=policy.in_call_initial),
            cap=policy.in_call_max_retry_after,
        )

        def stop(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            too_long = (
                isinstance(exc, TransientError)
                and exc.retry_after is not None
                and exc.retry_after > policy.in_call_max_retry_after
            )
            not_again = isinstance(exc, TransientError) and not exc.retry_in_call
            return too_long or not_again or bool(
                stop_after_attempt(policy.in_call_attempts)(state))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            sleep = state.next_action.sleep if state.next_action else 0.0
            self.record(AttemptRecord(state.attempt_number, str(exc), float(sleep)))

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception_type(TransientError),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def next_due(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
