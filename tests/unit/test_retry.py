from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from broker.outcomes import TransientError
from broker.retry import (
    AttemptRecord,
    InCallRetry,
    RetryPolicy,
    parse_duration,
    parse_ladder,
    parse_retry_after,
)


def test_durations_and_ladders() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2m") == 120.0
    assert parse_ladder("1s, 1m,1h") == (1.0, 60.0, 3600.0)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_retry_after_delta_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    now = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Mon, 23 Nov 2026 10:00:30 GMT", now) == 30.0
    assert parse_retry_after("garbage") is None


def test_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(ladder=(100.0,), jitter=0.1)
    rng = random.Random(7)
    delays = {policy.delay_before_run(2, rng) for _ in range(200)}
    assert min(delays) >= 90.0 and max(delays) <= 110.0 and len(delays) > 100


async def test_in_call_retries_record_each_failure_and_honour_retry_after() -> None:
    records: list[AttemptRecord] = []
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("HTTP 503", retry_after=0.05)
        return "ok"

    policy = RetryPolicy(in_call_attempts=3, in_call_initial=0.01, in_call_max=0.02)
    assert await InCallRetry(policy, records.append)(flaky) == "ok"
    assert [r.try_number for r in records] == [1, 2]
    assert all(r.next_try_in == pytest.approx(0.05) for r in records)


async def test_long_retry_after_is_not_slept_in_call() -> None:
    records: list[AttemptRecord] = []

    async def busy() -> None:
        raise TransientError("HTTP 429", retry_after=600)

    with pytest.raises(TransientError):
        await InCallRetry(RetryPolicy(in_call_attempts=5), records.append)(busy)
    assert records == []


async def test_a_call_that_may_have_done_its_work_is_not_tried_again_within_the_step(
        ) -> None:
    from broker.outcomes import TransientError
    from broker.retry import InCallRetry, RetryPolicy

    class Lost(TransientError):
        retry_in_call = False

    calls = []

    async def call() -> None:
        calls.append(1)
        raise Lost("the answer was lost")

    with pytest.raises(Lost):
        await InCallRetry(RetryPolicy(in_call_attempts=5, in_call_initial=0.01))(call)
    assert len(calls) == 1
