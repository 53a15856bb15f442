"""Lost claims on SQLite and PostgreSQL: crashes are counted on the job, not deliveries.

A job whose worker disappeared is given back with one more crash; at the crash limit
it is parked with the count in its reason. A worker that stops on purpose releases
its claims without a count; right after a store outage nobody is judged dead; a claim
tried again after an unanswered commit is taken up with its own token.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from broker import engine as eng
from broker.relay import Relay
from broker.runtime import Runtime
from broker.store.schema import documents, jobs, journal
from broker.worker import Worker
from tests.integration.store_helpers import new_documents, states


async def job_row(rt: Runtime, job_id: str) -> sa.Row[tuple[object, ...]]:
    async with rt.db.connect() as conn:
        row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()
    assert row is not None
    return row


async def doc_row(rt: Runtime, doc_id: str) -> sa.Row[tuple[object, ...]]:
    async with rt.db.connect() as conn:
        row = (await conn.execute(sa.select(documents).where(documents.c.id == doc_id))).first()
    assert row is not None
    return row


async def recoveries(rt: Runtime, doc_id: str) -> list[dict[str, object]]:
    async with rt.db.connect() as conn:
        rows = (await conn.execute(sa.select(journal.c.data).where(
            journal.c.document_id == doc_id, journal.c.kind == "recovery",
        ).order_by(journal.c.id))).scalars().all()
    return list(rows)


async def crash_once(rt: Runtime, job_id: str) -> Worker:
    """A worker (never registered: its heartbeat is missing) claims the job and dies."""
    dead = Worker(rt, ["depot"])
    (claim,) = await dead._claim_many([job_id])
    assert claim is not None
    return dead


async def test_a_job_whose_worker_died_runs_again_with_one_crash_counted(rt: Runtime) -> None:
    [(doc_id, job_id)] = await new_documents(rt, 1)
    dead = await crash_once(rt, job_id)
    assert await Relay(rt).sweep() == 1

    job = await job_row(rt, job_id)
    assert (job.state, job.crashes, job.claim_token, job.worker_id) == ("scheduled", 1, None, None)
    doc = await doc_row(rt, doc_id)
    assert (doc.state, doc.step, doc.run) == (eng.QUEUED, "deliver", 1)
    [entry] = await recoveries(rt, doc_id)
    assert entry["crashes"] == 1
    assert entry["reason"] == (f"worker {dead.id} stopped mid-step (crash 1 of at most 2 "
                               "before parking); step will run again")


async def test_a_step_that_crashes_its_worker_at_the_limit_is_parked_saying_so(
        rt: Runtime) -> None:
    [(doc_id, job_id)] = await new_documents(rt, 1)
    limit = rt.settings.crash_limit
    for _ in range(limit - 1):
        await crash_once(rt, job_id)
        assert await Relay(rt).sweep() == 1
    last = await crash_once(rt, job_id)
    assert await Relay(rt).sweep() == 1

    job = await job_row(rt, job_id)
    reason = (f"step deliver crashed its worker {limit} times (last: worker {last.id} stopped "
              f"mid-step); parked after {limit} crashes")
    assert (job.state, job.crashes, job.last_error) == ("parked", limit, reason)
    doc = await doc_row(rt, doc_id)
    assert (doc.state, doc.last_error) == (eng.FAILED, reason)
    assert [e["crashes"] for e in await recoveries(rt, doc_id)] == list(range(1, limit))


async def test_a_lease_that_ran_out_counts_as_a_hung_worker(rt: Runtime) -> None:
    [(_, job_id)] = await new_documents(rt, 1)
    hung = Worker(rt, ["depot"])
    await hung.start()
    try:
        assert (await hung._claim_many([job_id]))[0] is not None
        async with rt.db.begin() as conn:
            await conn.execute(jobs.update().where(jobs.c.id == job_id).values(lease_until=0))
        assert await Relay(rt).sweep() == 1
        assert (await job_row(rt, job_id)).crashes == 1
    finally:
        await hung.stop()


async def test_a_live_worker_keeps_its_claim(rt: Runtime) -> None:
    [(_, job_id)] = await new_documents(rt, 1)
    live = Worker(rt, ["depot"])
    await live.start()
    try:
        assert (await live._claim_many([job_id]))[0] is not None
        assert await Relay(rt).sweep() == 0
        assert (await job_row(rt, job_id)).state == "running"
    finally:
        await live.stop()


async def test_no_worker_is_judged_dead_right_after_a_store_outage(rt: Runtime) -> None:
    [(_, job_id)] = await new_documents(rt, 1)
    await crash_once(rt, job_id)
    # The store just came back: heartbeats missed during the outage prove nothing yet.
    rt.gate.back_at = time.monotonic()
    assert await Relay(rt).sweep() == 0
    assert (await job_row(rt, job_id)).state == "running"
    rt.gate.back_at = time.monotonic() - rt.settings.seconds("worker_stale")
    assert await Relay(rt).sweep() == 1


async def test_a_worker_stopping_releases_its_claims_without_a_crash(rt: Runtime) -> None:
    [(doc_id, job_id)] = await new_documents(rt, 1)
    worker = Worker(rt, ["depot"])
    await worker.start()
    assert (await worker._claim_many([job_id]))[0] is not None
    await worker.stop()

    job = await job_row(rt, job_id)
    assert (job.state, job.crashes, job.claim_token) == ("scheduled", 0, None)
    assert await states(rt, documents, [doc_id]) == [eng.QUEUED]
    [entry] = await recoveries(rt, doc_id)
    assert entry["reason"] == f"worker {worker.id} stopped on request; step will run again"


async def test_a_claim_tried_again_with_its_token_is_taken_up(rt: Runtime) -> None:
    """An outage at COMMIT: the claim went through, its answer did not; the retry adopts it."""
    [(doc_id, job_id)] = await new_documents(rt, 1)
    worker = Worker(rt, ["depot"])
    (first,) = await worker._claim_with([job_id], "01TOKEN0000000000000000001")
    (again,) = await worker._claim_with([job_id], "01TOKEN0000000000000000001")
    assert first is not None and again is not None
    assert again.job.id == job_id and again.doc.id == doc_id
    # Another token gets nothing: the job is held.
    assert await worker._claim_with([job_id], "01TOKEN0000000000000000002") == [None]
